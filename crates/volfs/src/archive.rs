//! Export and import of a volume as a tar archive.
//!
//! **Export** walks the tree with directory descriptors (never following a
//! symlink, never leaving the filesystem), in name order, and writes GNU tar
//! with: permission bits, owner ids and modification times; symlinks as
//! links; hard links within the volume as link entries (each inode's data
//! once); FIFOs and device nodes as headers; and every `user.msb.*` xattr
//! (the filesystem server's metadata record) as a PAX `SCHILY.xattr.*`
//! record, which GNU tar and bsdtar also understand. Sockets cannot be
//! archived and are counted as skipped.
//!
//! **Import** extracts only through [`VolumeFs`]'s confined resolution, so
//! no entry can land outside the volume: absolute names and `..` leaving
//! the root are path escapes, an entry under a symlink (one already in the
//! volume or one the archive created) is held to the same beneath-the-root
//! rule, a hard link must name a file already in the volume, and device
//! nodes are refused. An existing file or symlink at an entry's name is
//! replaced, never written through. Permission bits are restored without
//! setuid/setgid/sticky (the guest-visible mode lives in the metadata
//! record, which is restored); the archive's owners are not: what import
//! creates is owned, like everything [`VolumeFs`] makes, by the owner of
//! the volume's root (see the crate docs).
//! Only `user.msb.*` xattrs are restored (never `security.*` or
//! `trusted.*`). Everything it makes is charged to the volume's quota
//! budget as [`VolumeFs`] charges it: names, data, directory growth and
//! xattrs (a file whose name, data and xattrs do not fit is not made). The
//! first bad entry stops the import; the error carries an [`ImportReport`]
//! of what was written. An archive that ends without tar's end-of-archive
//! block (cut short at an entry boundary) is refused as truncated.
//!
//! [`import`] adds to what the volume holds, entry by entry, so a failure
//! leaves part of the archive imported. [`import_into_empty`] is all or
//! nothing: it extracts into a hidden staging directory inside the volume
//! (charged to the budget like anything else), and only once the whole
//! archive has been read moves the entries into place by renaming them; on
//! failure the staging directory is removed, crediting back what it held.
//!
//! [`export_to_path`] writes through a temporary file beside the target
//! (`.NAME.msb-partial-XXXXXXXX`), synced and renamed over it only on
//! success, so the target never holds a partial archive.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::{EntryType, Header};

use msb_quota::ENTRY_COST;
use msb_quota::usage::xattr_cost;

use crate::fs::{BLOCK, NEW_OBJECT, round_up, to_i64};
use crate::path::Clean;
use crate::{FsError, VolumeFs};

/// Prefix of the xattrs an archive carries.
const KEPT_XATTRS: &[u8] = b"user.msb.";
/// PAX record prefix for xattrs (the name GNU tar and bsdtar use).
const PAX_XATTR: &str = "SCHILY.xattr.";
/// Copy buffer: large enough to keep syscalls off the profile.
const BUF: usize = 256 * 1024;

/// What went wrong exporting or importing.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] FsError),
    /// Writing the archive failed.
    #[error("cannot write the archive")]
    WriteArchive(#[source] io::Error),
    /// Reading the archive failed (or it is malformed).
    #[error("cannot read the archive")]
    ReadArchive(#[source] io::Error),
    /// A file's size changed while it was being exported.
    #[error("{path} changed while being exported; export again")]
    Changed {
        /// The volume-relative path.
        path: String,
    },
    /// An archive entry import refuses outright.
    #[error("archive entry {path} is a {kind}, which import refuses")]
    Refused {
        /// The entry's name.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The archive is compressed; import reads plain tar only.
    #[error(
        "the archive is {format}-compressed, and import reads plain (uncompressed) tar only; decompress it first (`{tool} -d`)"
    )]
    Compressed {
        /// The compression found (gzip, bzip2, xz, zstd, lz4, compress).
        format: &'static str,
        /// A program that decompresses it (with `-d`).
        tool: &'static str,
    },
    /// The archive ended before tar's end-of-archive block.
    #[error("the archive is truncated: it ends without tar's end-of-archive block")]
    Truncated,
    /// An all-or-nothing import into a volume that already holds files.
    #[error("the volume already holds files; an all-or-nothing import needs an empty volume")]
    NotEmpty,
    /// The export was stopped (by a signal) before it finished.
    #[error("the export was interrupted; {} was left as it was", path.display())]
    Interrupted {
        /// The archive file asked for.
        path: PathBuf,
    },
    /// The archive file cannot be made or put in place.
    #[error("cannot {op} {}", path.display())]
    Target {
        /// What failed.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A hard-link entry whose target is not a file in the volume.
    #[error("archive entry {path} links to {target}, which is not a file in the volume")]
    BadLink {
        /// The entry's name.
        path: String,
        /// Its link target.
        target: String,
    },
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Entries written (directories, files, links, special files).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Sockets left out (tar has no way to store them).
    pub skipped: Vec<PathBuf>,
}

/// What an import wrote, in order. Kept on failure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Directories created or updated.
    pub dirs: u64,
    /// Regular files written.
    pub files: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hard_links: u64,
    /// FIFOs created.
    pub fifos: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Every path written, volume-relative, in archive order.
    pub paths: Vec<PathBuf>,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} file(s) ({} bytes), {} dir(s), {} symlink(s), {} hard link(s), {} fifo(s)",
            self.files, self.bytes, self.dirs, self.symlinks, self.hard_links, self.fifos
        )
    }
}

/// A failed import: the error, and what had been written before it.
#[derive(Debug, thiserror::Error)]
#[error("import stopped after writing {written}")]
pub struct ImportFailure {
    /// What had been written.
    pub written: ImportReport,
    /// Why it stopped.
    #[source]
    pub error: ArchiveError,
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal
/// and at most ten times a second.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    /// A bar for `total` bytes (if known), shown if stderr is a terminal.
    pub fn stderr(label: &'static str, total: Option<u64>) -> Progress {
        Progress {
            label,
            total,
            enabled: io::stderr().is_terminal(),
            last: None,
        }
    }

    /// Records that `done` bytes are through.
    pub fn update(&mut self, done: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let line = match self.total {
            Some(total) if total > 0 => {
                let frac = (done as f64 / total as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                format!(
                    "{} [{}{}] {:3.0}% {:.1}/{:.1} MiB",
                    self.label,
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    frac * 100.0,
                    mib(done),
                    mib(total)
                )
            }
            _ => format!("{} {:.1} MiB", self.label, mib(done)),
        };
        eprint!("\r{line}\x1b[K");
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

// ---------------------------------------------------------------- export

/// Writes the whole volume to `out` as a tar archive. `progress` is told
/// the file bytes written so far.
pub fn export(
    vfs: &VolumeFs,
    out: impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportReport, ArchiveError> {
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out));
    builder.mode(tar::HeaderMode::Complete);
    let mut report = ExportReport::default();
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let root = fs::openat(
        vfs.root_fd(),
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::from_errno("open", Path::new("."), e))?;
    // Depth-first with an explicit stack: (directory, its path, names left).
    let names = sorted_names(&root, Path::new("."))?;
    let mut stack = vec![(root, PathBuf::new(), names)];
    while let Some((dir, prefix, names)) = stack.last_mut() {
        let Some(name) = names.pop() else {
            stack.pop();
            continue;
        };
        let rel = prefix.join(OsStr::from_bytes(name.to_bytes()));
        let st = match fs::statat(&*dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(FsError::from_errno("stat", &rel, e).into()),
        };
        let mut header = header_for(&st);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = open_nofollow(&*dir, &name, OFlags::DIRECTORY, &rel)?;
                if fs::fstat(&fd)
                    .map_err(|e| FsError::from_errno("stat", &rel, e))?
                    .st_dev
                    != vfs.root_dev()
                {
                    return Err(FsError::PathEscape {
                        path: rel.display().to_string(),
                    }
                    .into());
                }
                append_xattrs(&mut builder, &fd)?;
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                let mut dirname = rel.as_os_str().as_bytes().to_vec();
                dirname.push(b'/');
                builder
                    .append_data(&mut header, OsStr::from_bytes(&dirname), io::empty())
                    .map_err(ArchiveError::WriteArchive)?;
                let names = sorted_names(&fd, &rel)?;
                stack.push((fd, rel, names));
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = seen.get(&key) {
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        builder
                            .append_link(&mut header, &rel, first)
                            .map_err(ArchiveError::WriteArchive)?;
                        report.entries += 1;
                        continue;
                    }
                    seen.insert(key, rel.clone());
                }
                let fd = open_nofollow(&*dir, &name, OFlags::NONBLOCK | OFlags::NOCTTY, &rel)?;
                let fst = fs::fstat(&fd).map_err(|e| FsError::from_errno("stat", &rel, e))?;
                if fst.st_ino != st.st_ino || fst.st_size != st.st_size {
                    return Err(ArchiveError::Changed {
                        path: rel.display().to_string(),
                    });
                }
                append_xattrs(&mut builder, &fd)?;
                header.set_entry_type(EntryType::Regular);
                let size = st.st_size as u64;
                header.set_size(size);
                let mut data = Exact {
                    file: File::from(fd),
                    left: size,
                    path: &rel,
                };
                builder
                    .append_data(&mut header, &rel, &mut data)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => ArchiveError::Changed {
                            path: rel.display().to_string(),
                        },
                        _ => ArchiveError::WriteArchive(e),
                    })?;
                report.bytes += size;
                progress(report.bytes);
            }
            FileType::Symlink => {
                let target = fs::readlinkat(&*dir, name.as_c_str(), Vec::new())
                    .map_err(|e| FsError::from_errno("read link", &rel, e))?;
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, &rel, OsStr::from_bytes(target.to_bytes()))
                    .map_err(ArchiveError::WriteArchive)?;
            }
            t @ (FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice) => {
                header.set_entry_type(match t {
                    FileType::Fifo => EntryType::Fifo,
                    FileType::CharacterDevice => EntryType::Char,
                    _ => EntryType::Block,
                });
                header.set_size(0);
                let rdev = st.st_rdev;
                header
                    .set_device_major(fs::major(rdev))
                    .and_then(|()| header.set_device_minor(fs::minor(rdev)))
                    .map_err(ArchiveError::WriteArchive)?;
                builder
                    .append_data(&mut header, &rel, io::empty())
                    .map_err(ArchiveError::WriteArchive)?;
            }
            _ => {
                report.skipped.push(rel);
                continue;
            }
        }
        report.entries += 1;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ArchiveError::WriteArchive)?;
    Ok(report)
}

/// Writes the whole volume to the file `path` as [`export`] does, through a
/// temporary file beside it (`.NAME.msb-partial-XXXXXXXX`, made with
/// `O_EXCL`), which is synced and renamed over `path` only once the archive
/// is complete: on any failure, or once `stop` is set (a signal handler's
/// flag, checked at every write), the temporary file is removed and
/// `path` is left as it was. Only a process killed outright leaves the
/// temporary file behind. A file already at `path` is replaced, owner and
/// mode included.
pub fn export_to_path(
    vfs: &VolumeFs,
    path: &Path,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportReport, ArchiveError> {
    let target = |op, source| ArchiveError::Target {
        op,
        path: path.to_path_buf(),
        source,
    };
    let Some(name) = path.file_name() else {
        return Err(target(
            "write the archive to",
            io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        ));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (file, temp) = create_temp(dir, name).map_err(|e| target("create a file beside", e))?;
    let mut out = Stoppable { file, stop };
    let result = export(vfs, &mut out, progress)
        .map_err(|e| match e {
            _ if stop.load(Ordering::Relaxed) => ArchiveError::Interrupted {
                path: path.to_path_buf(),
            },
            e => e,
        })
        .and_then(|report| {
            // Durable before it is visible under its name: a crash after
            // the rename must not leave a file of zeros there.
            out.file
                .sync_all()
                .map_err(|e| target("write the archive to", e))?;
            std::fs::rename(&temp, path).map_err(|e| target("put in place", e))?;
            Ok(report)
        });
    match result {
        Ok(report) => {
            // The rename itself durable; a failure here loses nothing.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Creates `.NAME.msb-partial-XXXXXXXX` in `dir`, exclusively, with a
/// fresh suffix until one is free. Mode 0666 less the umask, as a plain
/// create of the target would have.
fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    // Room for the dot and suffix within a 255-byte name.
    let stem = &name.as_bytes()[..name.len().min(200)];
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut n = seed ^ (u64::from(std::process::id()) << 32);
    for _ in 0..100 {
        // A multiplicative step: successive tries differ in every digit.
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut leaf = b".".to_vec();
        leaf.extend_from_slice(stem);
        leaf.extend_from_slice(format!(".msb-partial-{:08x}", n >> 32).as_bytes());
        let temp = dir.join(OsStr::from_bytes(&leaf));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&temp)
        {
            Ok(f) => return Ok((f, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// A writer that fails once `stop` is set, so a signal ends an export at
/// its next write.
struct Stoppable<'a> {
    file: File,
    stop: &'a AtomicBool,
}

impl Write for Stoppable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("interrupted by a signal"));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A directory's entry names, last first (so `pop` yields name order).
fn sorted_names(dir: &OwnedFd, rel: &Path) -> Result<Vec<CString>, ArchiveError> {
    let fd = dir.try_clone().map_err(|e| FsError::io("list", rel, e))?;
    let mut names: Vec<CString> = crate::tree::names(fd)
        .map_err(|e| FsError::from_errno("list", rel, e))?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn open_nofollow(
    dir: &impl AsFd,
    name: &CStr,
    extra: OFlags,
    rel: &Path,
) -> Result<OwnedFd, FsError> {
    fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
    .map_err(|e| FsError::from_errno("open", rel, e))
}

fn header_for(st: &Stat) -> Header {
    let mut h = Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h
}

/// Adds the `user.msb.*` xattrs of `fd` as a PAX header for the next entry.
fn append_xattrs<W: Write>(
    builder: &mut tar::Builder<W>,
    fd: &OwnedFd,
) -> Result<(), ArchiveError> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match fs::flistxattr(fd, &mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let want = fs::flistxattr_query(fd).unwrap_or(list.len() * 2);
                list.resize(want.max(list.len() * 2), 0);
            }
            // No xattr support here: nothing to keep.
            Err(Errno::NOTSUP) => return Ok(()),
            Err(e) => return Err(ArchiveError::WriteArchive(e.into())),
        }
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for name in list[..n]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(KEPT_XATTRS))
    {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 256];
        let len = loop {
            match fs::fgetxattr(fd, name, &mut value[..]) {
                Ok(len) => break len,
                Err(Errno::RANGE) => {
                    let l = value.len();
                    value.resize(l * 4, 0);
                }
                Err(e) => return Err(ArchiveError::WriteArchive(e.into())),
            }
        };
        value.truncate(len);
        records.push((format!("{PAX_XATTR}{name}"), value));
    }
    builder
        .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(ArchiveError::WriteArchive)
}

/// Yields exactly `left` bytes of a file; a short file is an error, extra
/// bytes (the file grew) are left out.
struct Exact<'a> {
    file: File,
    left: u64,
    path: &'a Path,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------- import

/// Counts bytes read, for the progress callback.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Extracts a tar archive into the volume under the rules in the module
/// docs. `progress` is told the archive bytes consumed so far. Staging
/// directories left by all-or-nothing imports killed outright are removed
/// first (see [`remove_stale_staging`]).
pub fn import(
    vfs: &VolumeFs,
    input: impl Read,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, Box<ImportFailure>> {
    if let Err(error) = remove_stale_staging(vfs) {
        return Err(Box::new(ImportFailure {
            written: ImportReport::default(),
            error,
        }));
    }
    let mut report = ImportReport::default();
    match import_entries(vfs, input, progress, &mut report) {
        Ok(()) => Ok(report),
        Err(error) => Err(Box::new(ImportFailure {
            written: report,
            error,
        })),
    }
}

/// Extracts a tar archive into an empty volume, all or nothing, under the
/// rules in the module docs: the entries are extracted into a hidden
/// staging directory inside the volume and renamed into place only after
/// the whole archive has been read. On failure (a bad entry, a truncated
/// archive, a read error such as an interruption) the staging directory
/// is removed and its usage credited back, leaving the volume empty; the
/// failure's report is then empty too. A volume holding anything but an
/// empty `lost+found` (which mke2fs makes in a disk volume) is refused
/// with [`ArchiveError::NotEmpty`] before anything is written. Staging
/// directories left by imports killed outright (`.msb-import-PID-N`
/// whose process is gone) do not count, and are removed first.
pub fn import_into_empty(
    vfs: &VolumeFs,
    input: impl Read,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, Box<ImportFailure>> {
    let fail = |error| {
        Box::new(ImportFailure {
            written: ImportReport::default(),
            error,
        })
    };
    let staging = match stage(vfs) {
        Ok(s) => s,
        Err(e) => return Err(fail(e)),
    };
    let mut report = ImportReport::default();
    let result = staging
        .fd
        .try_clone()
        .map_err(|e| FsError::io("open", &staging.rel, e))
        .and_then(|fd| vfs.beneath(fd, vfs.root().join(&staging.rel)))
        .map_err(ArchiveError::from)
        .and_then(|inner| import_entries(&inner, input, progress, &mut report))
        .and_then(|()| move_into_place(vfs, &staging));
    // Whatever is left in staging goes (all of it on failure, nothing but
    // the empty directory on success), credited back to the budget.
    let cleaned = vfs.remove_all(&staging.rel);
    match result {
        Err(error) => Err(fail(error)),
        Ok(()) => match cleaned {
            Ok(()) => Ok(report),
            Err(e) => Err(Box::new(ImportFailure {
                written: report,
                error: e.into(),
            })),
        },
    }
}

/// A staging directory of an import, in the volume's root.
struct Staging {
    fd: OwnedFd,
    rel: PathBuf,
}

/// Checks that the volume is empty and makes the staging directory
/// `.msb-import-PID-N` in its root (mode 0700: nothing in a sandbox looks
/// in while it fills).
fn stage(vfs: &VolumeFs) -> Result<Staging, ArchiveError> {
    vfs.writable("import into", Path::new("."))?;
    let empty_lost_found = |e: &crate::DirEntry| {
        e.name() == "lost+found"
            && e.kind() == crate::FileKind::Dir
            && vfs.list("lost+found").is_ok_and(|l| l.is_empty())
    };
    let mut leftovers = Vec::new();
    for e in vfs.list(".")? {
        match stale_staging(&e) {
            Some(rel) => leftovers.push(rel),
            None if empty_lost_found(&e) => {}
            None => return Err(ArchiveError::NotEmpty),
        }
    }
    // The volume holds nothing else: what an import killed outright left
    // goes now, credited back, rather than needing a repair.
    for rel in leftovers {
        vfs.remove_all(&rel)?;
    }
    for i in 0..100u32 {
        let leaf = format!(".msb-import-{}-{i}", std::process::id());
        let rel = PathBuf::from(&leaf);
        let leaf = CString::new(leaf).expect("digits and letters only");
        match vfs.mkdir_in(&vfs.root_fd(), &leaf, 0o700, &rel) {
            Ok(()) => {}
            // Left by an import killed outright: not ours to reuse.
            Err(FsError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        let fd = open_nofollow(&vfs.root_fd(), &leaf, OFlags::DIRECTORY, &rel)?;
        return Ok(Staging { fd, rel });
    }
    Err(FsError::AlreadyExists {
        path: ".msb-import-*".into(),
    }
    .into())
}

/// Removes the staging directories that all-or-nothing imports killed
/// outright left in the volume's root (`.msb-import-PID-N` whose process
/// is gone), crediting their usage back, and returns their names. A live
/// import's staging is left alone.
pub fn remove_stale_staging(vfs: &VolumeFs) -> Result<Vec<PathBuf>, ArchiveError> {
    let stale: Vec<PathBuf> = vfs.list(".")?.iter().filter_map(stale_staging).collect();
    for rel in &stale {
        vfs.remove_all(rel)?;
    }
    Ok(stale)
}

/// The name of a staging directory whose import is gone (its process no
/// longer exists), if `e` is one.
fn stale_staging(e: &crate::DirEntry) -> Option<PathBuf> {
    let name = e.name().to_str()?;
    let (pid, _) = name.strip_prefix(".msb-import-")?.split_once('-')?;
    let pid = rustix::process::Pid::from_raw(pid.parse().ok()?)?;
    let gone = rustix::process::test_kill_process(pid) == Err(Errno::SRCH);
    (e.kind() == crate::FileKind::Dir && gone).then(|| PathBuf::from(name))
}

/// Renames every entry of the staging directory into the root, refusing
/// to replace anything that appeared there meanwhile. When one cannot be
/// moved, those already moved go back into staging, to be removed with
/// the rest.
fn move_into_place(vfs: &VolumeFs, staging: &Staging) -> Result<(), ArchiveError> {
    let names = sorted_names(&staging.fd, &staging.rel)?;
    let dirs = [staging.fd.as_fd(), vfs.root_fd()];
    let shift = |name: &CStr, back: bool| {
        let rel = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
        let (from, to) = if back {
            (dirs[1], dirs[0])
        } else {
            (dirs[0], dirs[1])
        };
        vfs.in_dirs(&dirs, 0, &rel, || {
            fs::renameat_with(from, name, to, name, fs::RenameFlags::NOREPLACE)
                .map_err(|e| FsError::from_errno("move into place", &rel, e))?;
            Ok::<_, FsError>(((), 0))
        })
    };
    // `names` is last first: moving from its end keeps name order.
    for (i, name) in names.iter().enumerate().rev() {
        if let Err(e) = shift(name, false) {
            for moved in &names[i + 1..] {
                let _ = shift(moved, true);
            }
            return Err(e.into());
        }
    }
    Ok(())
}

fn import_entries(
    vfs: &VolumeFs,
    input: impl Read,
    progress: &mut dyn FnMut(u64),
    report: &mut ImportReport,
) -> Result<(), ArchiveError> {
    vfs.writable("import into", Path::new("."))?;
    // tar reads a compressed stream as garbage headers or a short block;
    // its magic number says what it really is.
    let mut head = Vec::with_capacity(512);
    let mut input = input;
    (&mut input)
        .take(512)
        .read_to_end(&mut head)
        .map_err(ArchiveError::ReadArchive)?;
    if let Some((format, tool)) = compression(&head) {
        return Err(ArchiveError::Compressed { format, tool });
    }
    let reader = Counting {
        inner: io::BufReader::with_capacity(1 << 20, io::Cursor::new(head).chain(input)),
        count: 0,
    };
    let mut archive = tar::Archive::new(reader);
    let mut buf = vec![0u8; BUF];
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    // Where the last entry's data (padded to a block) ends: an archive
    // read to its end-of-archive block was consumed past it.
    let mut data_end = 0u64;
    let entries = archive.entries().map_err(ArchiveError::ReadArchive)?;
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::ReadArchive)?;
        data_end = (entry.raw_file_position() + entry.size()).next_multiple_of(512);
        let raw = entry.path_bytes().into_owned();
        let rel = PathBuf::from(OsStr::from_bytes(&raw));
        let p = Clean::parse(&rel)?;
        let mode = entry.header().mode().map_err(ArchiveError::ReadArchive)? & 0o777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let xattrs = pax_xattrs(&mut entry)?;
        let kind = entry.header().entry_type();
        if p.is_root() {
            // `./` entries describe the root itself, which import leaves alone.
            if kind == EntryType::Directory {
                continue;
            }
            return Err(FsError::IsRoot { op: "replace" }.into());
        }
        match kind {
            EntryType::Directory => {
                vfs.mkdir(&rel)?;
                let dir = vfs.parent_dir(&p, &rel)?;
                let fd = open_nofollow(&dir, p.leaf(), OFlags::DIRECTORY, &rel)?;
                vfs.metered(fd.as_fd(), xattr_room(&xattrs), &rel, || {
                    finish_object(&fd, mode, &xattrs, None, &rel)
                })?;
                // Entries added below would change it again: set it last.
                dir_times.push((rel.clone(), mtime));
                report.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous => {
                let dir = prepare_leaf(vfs, &p, &rel)?;
                // The name, the file, its data and its xattrs in one
                // reservation: an entry that does not fit leaves nothing.
                let room = ENTRY_COST + NEW_OBJECT + round_up(entry.size()) + xattr_room(&xattrs);
                let copied = vfs.in_dirs(&[dir.as_fd()], room, &rel, || {
                    let fd = fs::openat(
                        &dir,
                        p.leaf(),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| FsError::from_errno("create", &rel, e))?;
                    report.paths.push(rel.clone());
                    report.files += 1;
                    let mut file = File::from(fd);
                    let written = vfs
                        // Owner first: a chown may clear mode bits set before it.
                        .adopt(&file, &rel)
                        .map_err(ArchiveError::from)
                        .and_then(|()| copy_entry(&mut entry, &mut file, &mut buf, &rel))
                        .and_then(|copied| {
                            finish_object(&file, mode, &xattrs, Some(mtime), &rel)?;
                            Ok(copied)
                        });
                    // Made, whatever came of the rest: charged as it stands.
                    let usage = to_i64(ENTRY_COST) + vfs.held(file.as_fd());
                    Ok::<_, ArchiveError>((written, usage))
                })??;
                report.bytes += copied;
                progress(archive_pos(&entry));
                continue;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let dir = prepare_leaf(vfs, &p, &rel)?;
                drop(dir);
                vfs.symlink(OsStr::from_bytes(&target), &rel)?;
                let dir = vfs.parent_dir(&p, &rel)?;
                fs::utimensat(&dir, p.leaf(), &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| FsError::from_errno("set times of", &rel, e))?;
                report.symlinks += 1;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target = PathBuf::from(OsStr::from_bytes(&target));
                let bad = || ArchiveError::BadLink {
                    path: rel.display().to_string(),
                    target: target.display().to_string(),
                };
                match vfs.stat(&target) {
                    Ok(m) if m.kind() == crate::FileKind::File => {}
                    Ok(_) | Err(FsError::NotFound { .. }) => return Err(bad()),
                    Err(e) => return Err(e.into()),
                }
                drop(prepare_leaf(vfs, &p, &rel)?);
                vfs.hard_link(&target, &rel)?;
                report.hard_links += 1;
            }
            EntryType::Fifo => {
                let dir = prepare_leaf(vfs, &p, &rel)?;
                vfs.make_at(&dir, p.leaf(), 0, &rel, |dir, leaf| {
                    fs::mknodat(dir, leaf, FileType::Fifo, Mode::from_raw_mode(mode), 0)
                })?;
                vfs.adopt_at(&dir, p.leaf(), FileType::Fifo, &rel)?;
                report.fifos += 1;
            }
            EntryType::Char | EntryType::Block => {
                return Err(ArchiveError::Refused {
                    path: rel.display().to_string(),
                    kind: "device node",
                });
            }
            EntryType::XGlobalHeader => continue,
            _ => {
                return Err(ArchiveError::Refused {
                    path: rel.display().to_string(),
                    kind: "entry of an unsupported type",
                });
            }
        }
        report.paths.push(rel);
        progress(archive_pos(&entry));
    }
    // tar stops quietly at the end of its input when that falls between
    // entries; only a zero block read after the last entry shows that the
    // archive was whole.
    if archive.into_inner().count < data_end + 512 {
        return Err(ArchiveError::Truncated);
    }
    for (rel, mtime) in dir_times.iter().rev() {
        let p = Clean::parse(rel)?;
        let dir = vfs.parent_dir(&p, rel)?;
        let fd = open_nofollow(&dir, p.leaf(), OFlags::DIRECTORY, rel)?;
        fs::futimens(&fd, &times(*mtime))
            .map_err(|e| FsError::from_errno("set times of", rel, e))?;
    }
    Ok(())
}

/// The compression whose magic number starts `head`, and its tool. A tar
/// archive starts with an entry name, which none of these can begin.
fn compression(head: &[u8]) -> Option<(&'static str, &'static str)> {
    const MAGIC: &[(&[u8], &str, &str)] = &[
        (&[0x1f, 0x8b], "gzip", "gzip"),
        (b"BZh", "bzip2", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4"),
        (&[0x1f, 0x9d], "compress", "gzip"),
    ];
    MAGIC
        .iter()
        .find(|(magic, ..)| head.starts_with(magic))
        .map(|&(_, format, tool)| (format, tool))
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn archive_pos<R: Read>(entry: &tar::Entry<'_, R>) -> u64 {
    entry.raw_file_position() + entry.size()
}

/// Creates the parents of `p` and removes a non-directory already at its
/// name (a symlink or file is replaced, never written through); returns
/// the parent directory.
fn prepare_leaf<'a>(
    vfs: &'a VolumeFs,
    p: &Clean,
    rel: &Path,
) -> Result<crate::fs::DirFd<'a>, FsError> {
    if let Some(parent) = p.parent() {
        vfs.mkdir(Path::new(OsStr::from_bytes(parent.as_cstr().to_bytes())))
            .map_err(|e| match e {
                FsError::PathEscape { .. } => FsError::PathEscape {
                    path: rel.display().to_string(),
                },
                e => e,
            })?;
    }
    let dir = vfs.parent_dir(p, rel)?;
    match fs::statat(&dir, p.leaf(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            return Err(FsError::IsADirectory {
                path: rel.display().to_string(),
            });
        }
        Ok(_) => vfs.remove_leaf(&dir, p.leaf(), rel)?,
        Err(Errno::NOENT) => {}
        Err(e) => return Err(FsError::from_errno("replace", rel, e)),
    }
    Ok(dir)
}

fn copy_entry(
    entry: &mut impl Read,
    file: &mut File,
    buf: &mut [u8],
    rel: &Path,
) -> Result<u64, ArchiveError> {
    let mut total = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::ReadArchive(e)),
        };
        file.write_all(&buf[..n])
            .map_err(|e| ArchiveError::Volume(FsError::io("write", rel, e)))?;
        total += n as u64;
    }
}

/// Room to reserve for setting `xattrs` on an object: what they count and
/// a block they may take.
fn xattr_room(xattrs: &[(CString, Vec<u8>)]) -> u64 {
    if xattrs.is_empty() {
        return 0;
    }
    let counted: u64 = xattrs
        .iter()
        .map(|(name, value)| xattr_cost(name.to_bytes(), value.len()))
        .sum();
    counted + BLOCK
}

/// `user.msb.*` xattrs from the entry's PAX records.
fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<(CString, Vec<u8>)>, ArchiveError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(ArchiveError::ReadArchive)? {
        for ext in exts {
            let ext = ext.map_err(ArchiveError::ReadArchive)?;
            let Some(name) = ext.key_bytes().strip_prefix(PAX_XATTR.as_bytes()) else {
                continue;
            };
            if name.starts_with(KEPT_XATTRS)
                && let Ok(name) = CString::new(name)
            {
                out.push((name, ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Applies mode (without special bits), xattrs and mtime to a new object.
fn finish_object(
    fd: impl AsFd,
    mode: u32,
    xattrs: &[(CString, Vec<u8>)],
    mtime: Option<u64>,
    rel: &Path,
) -> Result<(), FsError> {
    fs::fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(|e| FsError::from_errno("set mode of", rel, e))?;
    for (name, value) in xattrs {
        fs::fsetxattr(&fd, name.as_c_str(), value, XattrFlags::empty())
            .map_err(|e| FsError::from_errno("set metadata record of", rel, e))?;
    }
    if let Some(m) = mtime {
        fs::futimens(&fd, &times(m)).map_err(|e| FsError::from_errno("set times of", rel, e))?;
    }
    Ok(())
}
