use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mm::{MapFlags, ProtFlags};

/// Identifies a counter file and its version ("msbqta02"). Version 2
/// counts what [`crate::usage`] defines (a cost per name, client xattrs);
/// a version 1 counter counted allocation only, so it reads as damaged and
/// its owner rebuilds it with a scan.
const MAGIC: u64 = u64::from_le_bytes(*b"msbqta02");

/// The shared layout of a counter file.
#[repr(C)]
struct Counter {
    magic: AtomicU64,
    used: AtomicU64,
}

const SIZE: u64 = std::mem::size_of::<Counter>() as u64;

/// Errors of the usage budget.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("quota of {limit} bytes exceeded: {used} bytes in use, {wanted} more requested")]
    Exceeded { limit: u64, used: u64, wanted: u64 },
    #[error("usage counter {path} is damaged")]
    Damaged { path: String },
    #[error("usage counter {path} is missing")]
    Missing { path: String },
    #[error("usage counter {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A volume's byte budget, shared by every process that opens the same file.
pub struct Budget {
    // Keeps the mapping's file open for the mapping's lifetime.
    _file: File,
    counter: NonNull<Counter>,
    limit: Option<u64>,
}

// SAFETY: the mapping is only accessed through atomics, which are valid to
// share between threads (and processes).
unsafe impl Send for Budget {}
// SAFETY: as above; `&Budget` only performs atomic operations.
unsafe impl Sync for Budget {}

impl Budget {
    /// Creates (or resets) the counter at `path` with `used` bytes. The file is
    /// written whole and renamed into place, so readers never see it half made.
    pub fn create(path: &Path, used: u64) -> Result<(), QuotaError> {
        let io_err = |source| QuotaError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&used.to_le_bytes());
        std::fs::write(&tmp, &bytes).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }

    /// Reads the count at `path` without mapping it (for listings).
    pub fn peek(path: &Path) -> Result<u64, QuotaError> {
        Self::peek_at(rustix::fs::CWD, path)
    }

    /// Reads the count at `path` relative to the directory `dir`: one open,
    /// one read and one close, so listing many volumes stays cheap.
    pub fn peek_at(dir: impl std::os::fd::AsFd, path: &Path) -> Result<u64, QuotaError> {
        use rustix::fs::{Mode, OFlags};
        let name = || path.display().to_string();
        let io_err = |e: rustix::io::Errno| match e {
            rustix::io::Errno::NOENT => QuotaError::Missing { path: name() },
            e => QuotaError::Io {
                path: name(),
                source: e.into(),
            },
        };
        let fd = rustix::fs::openat(
            dir,
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        // One byte more than the layout: a longer file is damaged.
        let mut buf = [0u8; SIZE as usize + 1];
        let n = rustix::io::read(&fd, &mut buf).map_err(io_err)?;
        let word =
            |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if n as u64 != SIZE || word(0) != MAGIC {
            return Err(QuotaError::Damaged { path: name() });
        }
        Ok(word(1))
    }

    /// Maps the counter at `path`. `limit` is the quota in bytes, if any.
    pub fn open(path: &Path, limit: Option<u64>) -> Result<Self, QuotaError> {
        let name = || path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_o_nofollow())
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => QuotaError::Missing { path: name() },
                _ => QuotaError::Io {
                    path: name(),
                    source,
                },
            })?;
        let len = file
            .metadata()
            .map_err(|source| QuotaError::Io {
                path: name(),
                source,
            })?
            .len();
        if len != SIZE {
            return Err(QuotaError::Damaged { path: name() });
        }
        // SAFETY: we map SIZE bytes of a regular file we hold open; the kernel
        // chooses the address. The file is never shrunk by msb while mapped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                SIZE as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| QuotaError::Io {
            path: name(),
            source: e.into(),
        })?;
        let counter = NonNull::new(ptr.cast::<Counter>())
            .ok_or_else(|| QuotaError::Damaged { path: name() })?;
        let budget = Budget {
            _file: file,
            counter,
            limit,
        };
        if budget.counter().magic.load(Ordering::Acquire) != MAGIC {
            return Err(QuotaError::Damaged { path: name() });
        }
        Ok(budget)
    }

    fn counter(&self) -> &Counter {
        // SAFETY: the mapping is page aligned, SIZE bytes long and lives as
        // long as `self`; Counter is only made of atomics.
        unsafe { self.counter.as_ref() }
    }

    /// Bytes currently accounted to the volume.
    pub fn used(&self) -> u64 {
        self.counter().used.load(Ordering::Acquire)
    }

    /// The limit in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes that may still be written before the limit.
    pub fn available(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.used()))
    }

    /// Takes `bytes` from the budget, or fails without taking anything when
    /// that would pass the limit.
    pub fn reserve(&self, bytes: u64) -> Result<(), QuotaError> {
        let used = &self.counter().used;
        let mut cur = used.load(Ordering::Acquire);
        loop {
            let next = cur.saturating_add(bytes);
            if let Some(limit) = self.limit
                && next > limit
                && bytes > 0
            {
                return Err(QuotaError::Exceeded {
                    limit,
                    used: cur,
                    wanted: bytes,
                });
            }
            match used.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Adjusts usage by `delta` without checking the limit: used to settle a
    /// reservation against what was really allocated, and to credit frees.
    pub fn adjust(&self, delta: i64) {
        let used = &self.counter().used;
        let mut cur = used.load(Ordering::Acquire);
        loop {
            let next = if delta >= 0 {
                cur.saturating_add(delta as u64)
            } else {
                cur.saturating_sub(delta.unsigned_abs())
            };
            match used.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Replaces the count, after a full [`crate::scan`].
    pub fn set_used(&self, bytes: u64) {
        self.counter().used.store(bytes, Ordering::Release);
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `open`; no references to
        // it outlive `self`.
        let _ = unsafe { rustix::mm::munmap(self.counter.as_ptr().cast(), SIZE as usize) };
    }
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_respects_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        Budget::create(&p, 10).unwrap();
        let b = Budget::open(&p, Some(100)).unwrap();
        assert_eq!(b.used(), 10);
        b.reserve(90).unwrap();
        assert!(matches!(
            b.reserve(1),
            Err(QuotaError::Exceeded {
                limit: 100,
                used: 100,
                wanted: 1
            })
        ));
        b.adjust(-50);
        assert_eq!(b.available(), Some(50));
        b.adjust(-1000);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn shared_between_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        Budget::create(&p, 0).unwrap();
        let a = Budget::open(&p, Some(1000)).unwrap();
        let b = Budget::open(&p, Some(1000)).unwrap();
        a.reserve(600).unwrap();
        assert!(b.reserve(600).is_err());
        b.reserve(400).unwrap();
        assert_eq!(a.used(), 1000);
        assert_eq!(Budget::peek(&p).unwrap(), 1000);
    }

    #[test]
    fn concurrent_reservations_never_overshoot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        Budget::create(&p, 0).unwrap();
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let b = Budget::open(&p, Some(100_000)).unwrap();
                    for _ in 0..10_000 {
                        if b.reserve(7).is_ok() {
                            granted.fetch_add(7, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let b = Budget::open(&p, Some(100_000)).unwrap();
        assert_eq!(b.used(), granted.load(Ordering::Relaxed));
        assert!(b.used() <= 100_000);
        assert!(b.used() > 100_000 - 7);
    }

    #[test]
    fn damaged_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        assert!(matches!(
            Budget::open(&p, None),
            Err(QuotaError::Missing { .. })
        ));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            Budget::open(&p, None),
            Err(QuotaError::Damaged { .. })
        ));
        std::fs::write(&p, [0u8; 16]).unwrap();
        assert!(matches!(
            Budget::open(&p, None),
            Err(QuotaError::Damaged { .. })
        ));
        // A counter of the previous version counted less: it is rebuilt.
        let mut v1 = b"msbqta01".to_vec();
        v1.extend_from_slice(&4096u64.to_le_bytes());
        std::fs::write(&p, v1).unwrap();
        assert!(matches!(
            Budget::open(&p, None),
            Err(QuotaError::Damaged { .. })
        ));
        assert!(matches!(Budget::peek(&p), Err(QuotaError::Damaged { .. })));
    }
}
