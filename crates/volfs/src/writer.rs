//! [`VolumeWriter`]: sequential writes charged to the volume's quota.
//!
//! Quota protocol: the file's allocation before the write is already in
//! the budget (`covered`). Before bytes would take the file past `covered`
//! (rounded up to whole blocks), the difference is reserved; a refused
//! reservation fails the write with nothing written. When the writer is
//! finished (or dropped), `covered` is settled against the real
//! `st_blocks`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use msb_quota::Budget;
use rustix::fs::{self, Stat};
use rustix::io::Errno;

use crate::FsError;
use crate::error::shown;
use crate::fs::{allocated, round_up};

/// A file being written through [`VolumeFs::create`](crate::VolumeFs::create).
/// Writes are sequential from offset 0.
pub struct VolumeWriter {
    file: File,
    budget: Option<Arc<Budget>>,
    /// Bytes of allocation the budget holds for this file.
    covered: u64,
    len: u64,
    path: String,
    settled: bool,
}

impl std::fmt::Debug for VolumeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl VolumeWriter {
    /// Takes a checked descriptor; reserves for `len` bytes when known,
    /// then truncates.
    pub(crate) fn begin(
        fd: OwnedFd,
        st: &Stat,
        len: Option<u64>,
        budget: Option<Arc<Budget>>,
        path: &Path,
    ) -> Result<VolumeWriter, FsError> {
        let mut w = VolumeWriter {
            file: File::from(fd),
            covered: if budget.is_some() { allocated(st) } else { 0 },
            budget,
            len: 0,
            path: shown(path),
            settled: false,
        };
        if let Some(len) = len {
            w.reserve_for(len)
                .map_err(|source| FsError::QuotaExceeded {
                    path: shown(path),
                    source,
                })?;
        }
        if st.st_size > 0 {
            fs::ftruncate(&w.file, 0).map_err(|e| FsError::from_errno("truncate", path, e))?;
        }
        Ok(w)
    }

    /// Makes sure the budget covers a file of `len` bytes.
    fn reserve_for(&mut self, len: u64) -> Result<(), msb_quota::QuotaError> {
        if let Some(b) = &self.budget {
            let need = round_up(len);
            if need > self.covered {
                b.reserve(need - self.covered)?;
                self.covered = need;
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `len` bytes from `src` (kernel-side where possible).
    pub(crate) fn copy_from(&mut self, src: &File, len: u64) -> io::Result<u64> {
        self.reserve_for(self.len + len)
            .map_err(quota_io(&self.path))?;
        let mut done = 0u64;
        let mut fast = true;
        while done < len {
            let chunk = (len - done).min(1 << 30) as usize;
            let n = if fast {
                match fs::copy_file_range(src, None, &self.file, None, chunk) {
                    Ok(n) => n,
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        fast = false;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                let mut buf = vec![0u8; chunk.min(1 << 20)];
                let n = io::Read::read(&mut &*src, &mut buf)?;
                self.file.write_all(&buf[..n])?;
                n
            };
            if n == 0 {
                break;
            }
            done += n as u64;
            self.len += n as u64;
        }
        Ok(done)
    }

    /// Settles the quota and reports any error doing so.
    pub fn finish(mut self) -> Result<(), FsError> {
        self.settle()
    }

    fn settle(&mut self) -> Result<(), FsError> {
        if self.settled {
            return Ok(());
        }
        self.settled = true;
        if let Some(b) = &self.budget {
            let st = fs::fstat(&self.file).map_err(|e| FsError::Io {
                op: "stat",
                path: self.path.clone(),
                source: e.into(),
            })?;
            b.adjust(allocated(&st) as i64 - self.covered as i64);
            self.covered = allocated(&st);
        }
        Ok(())
    }
}

fn quota_io(path: &str) -> impl Fn(msb_quota::QuotaError) -> io::Error + '_ {
    move |source| {
        io::Error::new(
            io::ErrorKind::StorageFull,
            FsError::QuotaExceeded {
                path: path.to_string(),
                source,
            },
        )
    }
}

impl Write for VolumeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reserve_for(self.len + buf.len() as u64)
            .map_err(quota_io(&self.path))?;
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for VolumeWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for VolumeWriter {
    fn drop(&mut self) {
        // Unfinished writers still return what they did not use.
        let _ = self.settle();
    }
}
