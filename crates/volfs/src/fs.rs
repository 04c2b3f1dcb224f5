//! [`VolumeFs`]: the operations, each resolving its path beneath the root
//! descriptor and then acting on a descriptor, never on a path string.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msb_quota::usage::{xattr_bytes_at, xattr_bytes_of};
use msb_quota::{Budget, ENTRY_COST};
use rustix::fs::{self, AtFlags, FileType, Gid, Mode, OFlags, Stat, Uid};
use rustix::io::Errno;

use crate::FsError;
use crate::error::shown;
use crate::path::Clean;
use crate::resolve::{Resolver, open_beneath};
use crate::writer::VolumeWriter;

/// Result of a [`VolumeFs`] operation.
pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// Allocation unit assumed when reserving quota ahead of a write; the
/// reservation is settled against `st_blocks` right after.
pub(crate) const BLOCK: u64 = 4096;

/// Worst case a new object takes beyond its name's [`ENTRY_COST`] and its
/// content, as the filesystem server reserves it: a block of its own (a
/// directory's) and one its parent directory may grow by.
pub(crate) const NEW_OBJECT: u64 = 2 * BLOCK;

/// Symlinks followed from the end of a path being created, as the
/// kernel's MAXSYMLINKS; also the creations retried after losing a race.
const MAX_HOPS: usize = 40;

/// Confined file access to one volume. See the [crate docs](crate) for the
/// rules every operation follows.
pub struct VolumeFs {
    root: OwnedFd,
    root_dev: u64,
    /// The root's inode: its own growth is not counted (see
    /// [`msb_quota::usage`]).
    root_ino: u64,
    display_root: PathBuf,
    budget: Option<Arc<Budget>>,
    read_only: bool,
    resolver: Resolver,
    /// The root's owner, when it is not the calling user: what this
    /// process makes is given to it (see `adopt`).
    owner: Option<(Uid, Gid)>,
    /// The calling user, whose objects are the ones given away.
    euid: Uid,
}

impl std::fmt::Debug for VolumeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFs")
            .field("root", &self.display_root)
            .field("read_only", &self.read_only)
            .field("budget", &self.budget.as_ref().map(|b| b.limit()))
            .field("resolver", &self.resolver)
            .finish()
    }
}

/// A directory descriptor that is either the root (borrowed) or a
/// resolved subdirectory (owned).
pub(crate) enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Sub(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Sub(fd) => fd.as_fd(),
        }
    }
}

impl VolumeFs {
    /// Opens the volume rooted at `root`. The last component of `root` must
    /// be a directory, not a symlink ([`FsError::RootIsSymlink`]); the
    /// components above it belong to the host's layout and are trusted.
    pub fn open(root: impl AsRef<Path>) -> Result<VolumeFs> {
        let root = root.as_ref();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match fs::open(root, flags, Mode::empty()) {
            Ok(fd) => Self::from_root_fd(fd, root.to_path_buf()),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                let is_link = fs::lstat(root)
                    .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
                    .unwrap_or(false);
                Err(if is_link {
                    FsError::RootIsSymlink {
                        root: root.to_path_buf(),
                    }
                } else {
                    FsError::OpenRoot {
                        root: root.to_path_buf(),
                        source: e.into(),
                    }
                })
            }
            Err(e) => Err(FsError::OpenRoot {
                root: root.to_path_buf(),
                source: e.into(),
            }),
        }
    }

    /// Uses a directory the caller opened (for example the root of a
    /// detached mount of a disk volume's filesystem). `display_root` is only
    /// shown, never opened.
    pub fn from_root_fd(root: OwnedFd, display_root: PathBuf) -> Result<VolumeFs> {
        let st = fs::fstat(&root).map_err(|e| FsError::OpenRoot {
            root: display_root.clone(),
            source: e.into(),
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(FsError::OpenRoot {
                root: display_root,
                source: Errno::NOTDIR.into(),
            });
        }
        let euid = rustix::process::geteuid();
        Ok(VolumeFs {
            root,
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            display_root,
            budget: None,
            read_only: false,
            resolver: Resolver::Auto,
            owner: (st.st_uid != euid.as_raw())
                .then(|| (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid))),
            euid,
        })
    }

    /// The directory open at `dir`, on this volume's filesystem, as a volume
    /// of its own with this one's budget, owner and rules (an import stages
    /// there). Its own growth stays counted: to this volume's scanner it is
    /// an ordinary directory, not the root.
    pub(crate) fn beneath(&self, dir: OwnedFd, display_root: PathBuf) -> Result<VolumeFs> {
        let st = fs::fstat(&dir).map_err(|e| FsError::from_errno("stat", &display_root, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory || st.st_dev != self.root_dev
        {
            return Err(FsError::PathEscape {
                path: shown(&display_root),
            });
        }
        Ok(VolumeFs {
            root: dir,
            root_dev: self.root_dev,
            root_ino: self.root_ino,
            display_root,
            budget: self.budget.clone(),
            read_only: self.read_only,
            resolver: self.resolver,
            owner: self.owner,
            euid: self.euid,
        })
    }

    /// Charges changes to `budget` (a directory volume's quota) by the rule
    /// of [`msb_quota::usage`]: a write or a new name that would pass the
    /// limit fails with [`FsError::QuotaExceeded`] before anything is
    /// written, and removals credit what they free.
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Refuses every operation that would change the volume
    /// ([`FsError::ReadOnly`]).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Chooses how paths are resolved (normally [`Resolver::Auto`]).
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The host path of the root, as given when opening (for display).
    pub fn root(&self) -> &Path {
        &self.display_root
    }

    /// True when writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The quota budget writes are charged to, if any.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// Reads a whole regular file. A final symlink is followed while it
    /// stays inside the volume.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let (mut file, st) = self.open_regular(&Clean::parse(path)?, path)?;
        let mut buf = Vec::with_capacity(st.st_size as usize);
        file.read_to_end(&mut buf)
            .map_err(|e| FsError::io("read", path, e))?;
        Ok(buf)
    }

    /// Reads a whole regular file as UTF-8.
    pub fn read_to_string(&self, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        String::from_utf8(self.read(path)?).map_err(|_| FsError::NotUtf8 { path: shown(path) })
    }

    /// Opens a regular file for streaming reads.
    pub fn open_file(&self, path: impl AsRef<Path>) -> Result<File> {
        let path = path.as_ref();
        Ok(self.open_regular(&Clean::parse(path)?, path)?.0)
    }

    /// Writes `data` to a file, creating it (mode `0o644` less the umask) or
    /// truncating it. Missing parent directories are **not** created
    /// ([`FsError::NotFound`]); call [`mkdir`](Self::mkdir) first. A final
    /// symlink is followed while it stays inside the volume. A file with
    /// more than one hard link is refused ([`FsError::HardLinked`]).
    pub fn write(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Result<()> {
        let path = path.as_ref();
        let data = data.as_ref();
        let mut w = self.create_sized(path, Some(data.len() as u64))?;
        io::Write::write_all(&mut w, data).map_err(|e| writer_error(path, e))?;
        w.finish()
    }

    /// Opens a file for streaming, sequential writes, with the rules of
    /// [`write`](Self::write). Call [`VolumeWriter::finish`] to see errors
    /// from settling the quota.
    pub fn create(&self, path: impl AsRef<Path>) -> Result<VolumeWriter> {
        self.create_sized(path.as_ref(), None)
    }

    fn create_sized(&self, path: &Path, len: Option<u64>) -> Result<VolumeWriter> {
        self.writable("write", path)?;
        let fd = self.open_write_target(path)?;
        let st = self.check_writable_file(&fd, path)?;
        self.adopt(&fd, path)?;
        VolumeWriter::begin(fd, &st, len, self.budget.clone(), path)
    }

    /// Creates a directory and any missing parents (mode `0o755` less the
    /// umask). Succeeds when it already exists as a directory.
    pub fn mkdir(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.writable("create directory", path)?;
        let p = Clean::parse(path)?;
        match self.open_at(&p, OFlags::PATH | OFlags::DIRECTORY, Mode::empty(), true) {
            Ok(_) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(FsError::from_errno("create directory", path, e)),
        }
        // Usually only the last level is missing: start from the parent if
        // it exists, else from the root.
        let depth = p.components().count();
        let (mut parent, start) = match p.parent() {
            None => (DirFd::Root(self.root.as_fd()), 0),
            Some(pp) => {
                match self.open_at(&pp, OFlags::PATH | OFlags::DIRECTORY, Mode::empty(), true) {
                    Ok(fd) => (DirFd::Sub(fd), depth - 1),
                    Err(Errno::NOENT) => (DirFd::Root(self.root.as_fd()), 0),
                    Err(e) => return Err(FsError::from_errno("create directory", path, e)),
                }
            }
        };
        for (i, name) in p.components().enumerate().skip(start) {
            let name = CString::new(name).expect("validated component");
            match self.mkdir_in(&parent, &name, 0o755, path) {
                Ok(()) | Err(FsError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            // Re-resolve from the root so a symlink met on the way is held
            // to the same rules as any other path.
            let fd = self
                .open_at(
                    &p.prefix(i + 1),
                    OFlags::PATH | OFlags::DIRECTORY,
                    Mode::empty(),
                    true,
                )
                .map_err(|e| FsError::from_errno("create directory", path, e))?;
            parent = DirFd::Sub(fd);
        }
        Ok(())
    }

    /// Removes a file, a symlink (not its target) or an empty directory.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.writable("remove", path)?;
        let p = Clean::parse(path)?;
        if p.is_root() {
            return Err(FsError::IsRoot { op: "remove" });
        }
        let dir = self.parent_dir(&p, path)?;
        self.remove_leaf(&dir, p.leaf(), path)
    }

    /// Removes a file, a symlink, or a directory and everything in it.
    /// Never removes the root, never follows a symlink, never crosses into
    /// another filesystem. A missing path is [`FsError::NotFound`].
    pub fn remove_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.writable("remove", path)?;
        let p = Clean::parse(path)?;
        if p.is_root() {
            return Err(FsError::IsRoot { op: "remove" });
        }
        let dir = self.parent_dir(&p, path)?;
        let leaf = p.leaf();
        let st = fs::statat(&dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::from_errno("remove", path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return self.remove_leaf(&dir, leaf, path);
        }
        let sub = match fs::openat(
            &dir,
            leaf,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Replaced by a non-directory since the stat.
            Err(Errno::NOTDIR | Errno::LOOP) => return self.remove_leaf(&dir, leaf, path),
            Err(e) => return Err(FsError::from_errno("remove", path, e)),
        };
        let dir = dir.as_fd();
        let metered = self.budget.is_some();
        // What was removed is credited even when the walk stops half way.
        self.in_dirs(&[dir], 0, path, || {
            let mut freed = 0;
            let result = crate::tree::empty_dir(sub, self.root_dev, metered.then_some(&mut freed))
                .and_then(|()| {
                    // Measured emptied: what the directory holds now goes.
                    let st = fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW)?;
                    let top = if metered {
                        freed_by_unlink(dir, leaf, &st)
                    } else {
                        0
                    };
                    fs::unlinkat(dir, leaf, AtFlags::REMOVEDIR)?;
                    freed += top;
                    Ok(())
                })
                .map_err(|e| FsError::from_errno("remove", path, e));
            Ok((result, -to_i64(freed)))
        })?
    }

    /// True when something exists at `path`, following a final symlink
    /// while it stays inside. A dangling symlink is `false`; a symlink
    /// leading outside is [`FsError::PathEscape`].
    pub fn exists(&self, path: impl AsRef<Path>) -> Result<bool> {
        let path = path.as_ref();
        let p = Clean::parse(path)?;
        match self.open_at(&p, OFlags::PATH, Mode::empty(), true) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(FsError::from_errno("look up", path, e)),
        }
    }

    /// The entries of a directory (one level, sorted by name, without `.`
    /// and `..`). A final symlink is followed while it stays inside.
    pub fn list(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let path = path.as_ref();
        let p = Clean::parse(path)?;
        let fd = self
            .open_at(&p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty(), true)
            .map_err(|e| FsError::from_errno("list", path, e))?;
        let mut entries =
            crate::tree::read_dir(fd).map_err(|e| FsError::from_errno("list", path, e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Metadata of the object at `path`; a final symlink is described
    /// itself, not followed.
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<Metadata> {
        let path = path.as_ref();
        let p = Clean::parse(path)?;
        let st = if p.is_root() {
            fs::fstat(&self.root)
        } else {
            let dir = self.parent_dir(&p, path)?;
            fs::statat(&dir, p.leaf(), AtFlags::SYMLINK_NOFOLLOW)
        }
        .map_err(|e| FsError::from_errno("stat", path, e))?;
        Ok(Metadata::from_stat(&st))
    }

    /// The target of the symlink at `path`, as stored.
    pub fn read_link(&self, path: impl AsRef<Path>) -> Result<PathBuf> {
        let path = path.as_ref();
        let p = Clean::parse(path)?;
        if p.is_root() {
            return Err(FsError::from_errno("read link", path, Errno::INVAL));
        }
        let dir = self.parent_dir(&p, path)?;
        let target = fs::readlinkat(&dir, p.leaf(), Vec::new())
            .map_err(|e| FsError::from_errno("read link", path, e))?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    /// Creates a symlink at `link` holding `target` verbatim. Any target may
    /// be stored; it is only ever followed under the rules above.
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<()> {
        let link = link.as_ref();
        self.writable("create symlink", link)?;
        let target = target.as_ref();
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
        if bytes.is_empty() || bytes.contains(&0) {
            return Err(FsError::InvalidPath {
                path: shown(target),
                reason: "is not a usable symlink target",
            });
        }
        let p = Clean::parse(link)?;
        if p.is_root() {
            return Err(FsError::AlreadyExists { path: shown(link) });
        }
        let dir = self.parent_dir(&p, link)?;
        // A long target takes blocks of its own.
        let content = round_up(bytes.len() as u64);
        self.make_at(&dir, p.leaf(), content, link, |dir, leaf| {
            fs::symlinkat(bytes, dir, leaf)
        })?;
        self.adopt_at(&dir, p.leaf(), FileType::Symlink, link)
    }

    /// Adds the name `new` for the file at `existing`; both are inside the
    /// volume and a final symlink at `existing` is linked itself.
    pub fn hard_link(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> Result<()> {
        let (existing, new) = (existing.as_ref(), new.as_ref());
        self.writable("link", new)?;
        let (pe, pn) = (Clean::parse(existing)?, Clean::parse(new)?);
        if pe.is_root() || pn.is_root() {
            return Err(FsError::IsRoot { op: "link" });
        }
        let ed = self.parent_dir(&pe, existing)?;
        let nd = self.parent_dir(&pn, new)?;
        // A name costs the same whatever it names; its directory may grow.
        self.in_dirs(&[nd.as_fd()], ENTRY_COST + BLOCK, new, || {
            fs::linkat(&ed, pe.leaf(), &nd, pn.leaf(), AtFlags::empty())
                .map_err(|e| FsError::from_errno("link", new, e))?;
            Ok(((), to_i64(ENTRY_COST)))
        })
    }

    /// Renames `from` to `to`, replacing a file (or empty directory) at
    /// `to` as `rename(2)` does. Neither may be the root; symlinks are
    /// moved, not followed.
    pub fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        self.writable("rename", from)?;
        let (pf, pt) = (Clean::parse(from)?, Clean::parse(to)?);
        if pf.is_root() || pt.is_root() {
            return Err(FsError::IsRoot { op: "rename" });
        }
        let fd = self.parent_dir(&pf, from)?;
        let td = self.parent_dir(&pt, to)?;
        let replaced = fs::statat(&td, pt.leaf(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let moved = fs::statat(&fd, pf.leaf(), AtFlags::SYMLINK_NOFOLLOW).ok();
        // Renaming onto another name of the same inode removes nothing.
        let freed = match replaced {
            Some(st) if moved.is_none_or(|m| (m.st_dev, m.st_ino) != (st.st_dev, st.st_ino)) => {
                self.freed_by_removing(td.as_fd(), pt.leaf(), &st)
            }
            _ => 0,
        };
        self.in_dirs(&[fd.as_fd(), td.as_fd()], 0, from, || {
            fs::renameat(&fd, pf.leaf(), &td, pt.leaf())
                .map_err(|e| FsError::from_errno("rename", from, e))?;
            Ok(((), -to_i64(freed)))
        })
    }

    /// Copies a regular file's bytes and permission bits to `to` (created or
    /// truncated, with the rules of [`write`](Self::write)); returns the
    /// bytes copied. A final symlink at `from` is followed while inside.
    pub fn copy(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<u64> {
        let (from, to) = (from.as_ref(), to.as_ref());
        self.writable("copy to", to)?;
        let (src, sst) = self.open_regular(&Clean::parse(from)?, from)?;
        let fd = self.open_write_target(to)?;
        let dst = fs::fstat(&fd).map_err(|e| FsError::from_errno("stat", to, e))?;
        if dst.st_ino == sst.st_ino && dst.st_dev == sst.st_dev {
            return Err(FsError::SameFile { path: shown(to) });
        }
        let st = self.check_writable_file(&fd, to)?;
        self.adopt(&fd, to)?;
        let len = sst.st_size as u64;
        let mut w = VolumeWriter::begin(fd, &st, Some(len), self.budget.clone(), to)?;
        let copied = w.copy_from(&src, len).map_err(|e| writer_error(to, e))?;
        fs::fchmod(w.as_fd(), Mode::from_raw_mode(sst.st_mode & 0o777))
            .map_err(|e| FsError::from_errno("set mode of", to, e))?;
        w.finish()?;
        Ok(copied)
    }

    /// Opens (creating with mode 0o644 if missing) the file a write or copy
    /// lands in; never the root. A final symlink is followed, and a
    /// dangling one inside has its target created, as `open(2)` would; the
    /// new name is made by [`make_at`](Self::make_at) in the directory it
    /// lands in, so it and that directory's growth are charged.
    fn open_write_target(&self, path: &Path) -> Result<OwnedFd> {
        let p = Clean::parse(path)?;
        if p.is_root() {
            return Err(FsError::IsADirectory { path: shown(path) });
        }
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        for _ in 0..MAX_HOPS {
            match self.open_at(&p, flags, Mode::empty(), true) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(FsError::from_errno("create", path, e)),
            }
            let (dir, leaf) = self.create_site(&p, path)?;
            let created = self.make_at(&dir, &leaf, 0, path, |dir, leaf| {
                let excl = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                fs::openat(dir, leaf, flags | excl, Mode::from_raw_mode(0o644))
            });
            match created {
                // Made by someone else meanwhile: open what is there.
                Err(FsError::AlreadyExists { .. }) => continue,
                r => return r,
            }
        }
        Err(FsError::from_errno("create", path, Errno::LOOP))
    }

    /// Where creating the missing `p` puts its new name: its parent and
    /// leaf, or, when the leaf is a dangling symlink, where its target
    /// points (followed the way the kernel follows it, beneath the root).
    fn create_site(&self, p: &Clean, path: &Path) -> Result<(DirFd<'_>, CString)> {
        let err = |e| FsError::from_errno("create", path, e);
        let mut dir = self.parent_dir(p, path)?;
        let mut leaf = p.leaf().to_owned();
        // The directory's path as given, unfolded: the kernel resolves its
        // `..` after any symlink in it, as it would have in the target.
        let mut at = p
            .parent()
            .map_or_else(Vec::new, |pp| pp.as_cstr().to_bytes().to_vec());
        for _ in 0..MAX_HOPS {
            let st = match fs::statat(&dir, &leaf, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => return Ok((dir, leaf)),
                Err(e) => return Err(err(e)),
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                // Appeared meanwhile: the exclusive create says so.
                return Ok((dir, leaf));
            }
            let target = fs::readlinkat(&dir, &leaf, Vec::new()).map_err(err)?;
            let target = target.as_bytes();
            if target.first() == Some(&b'/') {
                return Err(FsError::PathEscape { path: shown(path) });
            }
            if !at.is_empty() {
                at.push(b'/');
            }
            at.extend_from_slice(target);
            let cut = at.iter().rposition(|&b| b == b'/');
            let name = at.split_off(cut.map_or(0, |i| i + 1));
            at.truncate(cut.unwrap_or(0));
            if matches!(&name[..], b"" | b"." | b"..") {
                // Ends in a directory, which a file write cannot create.
                return Err(FsError::IsADirectory { path: shown(path) });
            }
            leaf = CString::new(name).map_err(|_| err(Errno::INVAL))?;
            dir = if at.is_empty() {
                DirFd::Root(self.root.as_fd())
            } else {
                let dpath = CString::new(at.clone()).map_err(|_| err(Errno::INVAL))?;
                DirFd::Sub(
                    open_beneath(
                        self.root.as_fd(),
                        self.root_dev,
                        self.resolver,
                        &dpath,
                        OFlags::PATH | OFlags::DIRECTORY,
                        Mode::empty(),
                        true,
                    )
                    .map_err(err)?,
                )
            };
        }
        Err(err(Errno::LOOP))
    }

    // ---- helpers shared with the archive module ----

    /// Resolves `p` beneath the root.
    pub(crate) fn open_at(
        &self,
        p: &Clean,
        oflags: OFlags,
        mode: Mode,
        follow: bool,
    ) -> Result<OwnedFd, Errno> {
        open_beneath(
            self.root.as_fd(),
            self.root_dev,
            self.resolver,
            p.as_cstr(),
            oflags,
            mode,
            follow,
        )
    }

    /// The directory holding `p`'s last component, resolved beneath the root.
    pub(crate) fn parent_dir(&self, p: &Clean, shown_path: &Path) -> Result<DirFd<'_>> {
        match p.parent() {
            None => Ok(DirFd::Root(self.root.as_fd())),
            Some(parent) => self
                .open_at(
                    &parent,
                    OFlags::PATH | OFlags::DIRECTORY,
                    Mode::empty(),
                    true,
                )
                .map(DirFd::Sub)
                .map_err(|e| FsError::from_errno("open parent of", shown_path, e)),
        }
    }

    /// Fails with [`FsError::ReadOnly`] on a read-only volume.
    pub(crate) fn writable(&self, op: &'static str, path: &Path) -> Result<()> {
        if self.read_only {
            return Err(FsError::ReadOnly {
                op,
                path: shown(path),
            });
        }
        Ok(())
    }

    /// Opens a regular file for reading, refusing anything else before a
    /// byte is read. `O_NONBLOCK` keeps a FIFO from hanging the open.
    fn open_regular(&self, p: &Clean, path: &Path) -> Result<(File, Stat)> {
        let fd = self
            .open_at(
                p,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
                Mode::empty(),
                true,
            )
            .map_err(|e| FsError::from_errno("open", path, e))?;
        let st = fs::fstat(&fd).map_err(|e| FsError::from_errno("stat", path, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok((File::from(fd), st)),
            FileType::Directory => Err(FsError::IsADirectory { path: shown(path) }),
            _ => Err(FsError::NotAFile { path: shown(path) }),
        }
    }

    /// The checks made on a descriptor opened for writing, before it is
    /// truncated: a regular file with a single link.
    fn check_writable_file(&self, fd: &OwnedFd, path: &Path) -> Result<Stat> {
        let st = fs::fstat(fd).map_err(|e| FsError::from_errno("stat", path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(FsError::NotAFile { path: shown(path) });
        }
        if st.st_nlink > 1 {
            return Err(FsError::HardLinked {
                path: shown(path),
                links: st.st_nlink,
            });
        }
        Ok(st)
    }

    /// Creates directory `name` in `dir`, charged to the budget.
    pub(crate) fn mkdir_in(
        &self,
        dir: &impl AsFd,
        name: &CStr,
        mode: u32,
        path: &Path,
    ) -> Result<()> {
        self.make_at(dir, name, 0, path, |dir, leaf| {
            fs::mkdirat(dir, leaf, Mode::from_raw_mode(mode))
        })?;
        self.adopt_at(dir, name, FileType::Directory, path)
    }

    /// Gives the file open at `fd` (just opened for writing, so already
    /// checked to be a single-link regular file) to the root's owner when
    /// the caller owns it, so what the host writes for a sandbox (whose
    /// root owns the volume) stays the sandbox's to change.
    pub(crate) fn adopt(&self, fd: &impl AsFd, path: &Path) -> Result<()> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        let st = fs::fstat(fd).map_err(|e| FsError::from_errno("stat", path, e))?;
        if !self.adoptable(&st) {
            return Ok(());
        }
        chown_fd(fd, owner, path)
    }

    /// Gives `leaf` of `dir`, just made as a `kind`, to the root's owner
    /// (see [`adopt`](Self::adopt)). The name is opened again without
    /// following a symlink, and whatever holds it is only changed if it is
    /// of the kind made, the caller's, and its only link; and kept changed
    /// only if the name still holds it afterwards. Something swapped in
    /// under our feet (a hard link to a host file, unlinked again between
    /// the open and the check so that it shows one link) is given back.
    pub(crate) fn adopt_at(
        &self,
        dir: &impl AsFd,
        leaf: &CStr,
        kind: FileType,
        path: &Path,
    ) -> Result<()> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match fs::openat(dir, leaf, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Removed meanwhile: nothing of ours is left to give away.
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(FsError::from_errno("set owner of", path, e)),
        };
        let st = fs::fstat(&fd).map_err(|e| FsError::from_errno("stat", path, e))?;
        if FileType::from_raw_mode(st.st_mode) != kind || !self.adoptable(&st) {
            return Ok(());
        }
        chown_fd(&fd, owner, path)?;
        match fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) => Ok(()),
            _ => chown_fd(
                &fd,
                (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid)),
                path,
            ),
        }
    }

    /// True for an object the caller owns, on the volume's filesystem, and
    /// (unless a directory, which cannot be hard-linked) with no other
    /// name, which might be outside the volume.
    fn adoptable(&self, st: &Stat) -> bool {
        let dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        st.st_uid == self.euid.as_raw() && st.st_dev == self.root_dev && (dir || st.st_nlink == 1)
    }

    /// Creates `leaf` in `dir` with `make`, charged as the filesystem
    /// server charges a new object: [`ENTRY_COST`] for the name, what the
    /// object allocates and its directory's growth, with room for them
    /// ([`NEW_OBJECT`] and `content` more) reserved first.
    pub(crate) fn make_at<R>(
        &self,
        dir: &impl AsFd,
        leaf: &CStr,
        content: u64,
        path: &Path,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> Result<R, Errno>,
    ) -> Result<R> {
        let dir = dir.as_fd();
        self.in_dirs(&[dir], ENTRY_COST + NEW_OBJECT + content, path, || {
            let made = make(dir, leaf).map_err(|e| FsError::from_errno("create", path, e))?;
            // New, so no client xattrs yet: only its allocation.
            let bytes = match &self.budget {
                Some(_) => {
                    fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW).map_or(0, |st| allocated(&st))
                }
                None => 0,
            };
            Ok((made, to_i64(ENTRY_COST + bytes)))
        })
    }

    /// Removes `leaf` of `dir` (a directory only if empty) and credits what
    /// it freed.
    pub(crate) fn remove_leaf(&self, dir: &impl AsFd, leaf: &CStr, path: &Path) -> Result<()> {
        let dir = dir.as_fd();
        let st = fs::statat(dir, leaf, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::from_errno("remove", path, e))?;
        let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let freed = self.freed_by_removing(dir, leaf, &st);
        self.in_dirs(&[dir], 0, path, || {
            fs::unlinkat(dir, leaf, flags).map_err(|e| FsError::from_errno("remove", path, e))?;
            Ok(((), -to_i64(freed)))
        })
    }

    /// What removing `leaf` (of stat `st`) from `dir` would free, learnt
    /// while it is still there; nothing when unmetered, sparing the xattr
    /// reads.
    fn freed_by_removing(&self, dir: BorrowedFd<'_>, leaf: &CStr, st: &Stat) -> u64 {
        match &self.budget {
            Some(_) => freed_by_unlink(dir, leaf, st),
            None => 0,
        }
    }

    /// Runs `op`, which changes names in the directories `dirs`, with its
    /// usage settled as the filesystem server settles it: `reserve` bytes
    /// are taken first ([`FsError::QuotaExceeded`] when refused); `op`
    /// gives the usage it added (negative: freed) and the directories' own
    /// growth is added to it, the root's excepted (the scanner does not
    /// count it). A failed `op` changed no name.
    pub(crate) fn in_dirs<T, E: From<FsError>>(
        &self,
        dirs: &[BorrowedFd<'_>],
        reserve: u64,
        path: &Path,
        op: impl FnOnce() -> Result<(T, i64), E>,
    ) -> Result<T, E> {
        let Some(budget) = &self.budget else {
            return op().map(|(t, _)| t);
        };
        let mut before: Vec<(u64, BorrowedFd<'_>, u64)> = Vec::with_capacity(dirs.len());
        for &d in dirs {
            let st =
                fs::fstat(d).map_err(|e| FsError::from_errno("stat the parent of", path, e))?;
            let key = (st.st_dev, st.st_ino);
            if key != (self.root_dev, self.root_ino) && !before.iter().any(|b| b.0 == st.st_ino) {
                before.push((st.st_ino, d, allocated(&st)));
            }
        }
        budget
            .reserve(reserve)
            .map_err(|source| FsError::QuotaExceeded {
                path: shown(path),
                source,
            })?;
        let res = op();
        let grown: i64 = before
            .iter()
            .map(|&(_, d, was)| fs::fstat(d).map_or(0, |st| to_i64(allocated(&st)) - to_i64(was)))
            .sum();
        let made = res.as_ref().map_or(0, |(_, u)| *u);
        budget.adjust(made + grown - to_i64(reserve));
        res.map(|(t, _)| t)
    }

    /// Runs `op`, which changes the object open at `fd` (not a symlink),
    /// with its usage settled: `reserve` bytes are taken first
    /// ([`FsError::QuotaExceeded`] when refused), then settled against the
    /// change in what it holds, whether `op` failed or not.
    pub(crate) fn metered<T, E: From<FsError>>(
        &self,
        fd: BorrowedFd<'_>,
        reserve: u64,
        path: &Path,
        op: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let Some(budget) = &self.budget else {
            return op();
        };
        let before = self.held(fd);
        budget
            .reserve(reserve)
            .map_err(|source| FsError::QuotaExceeded {
                path: shown(path),
                source,
            })?;
        let res = op();
        budget.adjust(self.held(fd) - before - to_i64(reserve));
        res
    }

    /// What the object open at `fd` (not a symlink) holds beyond its
    /// names, as the scanner counts it: its allocation and its counted
    /// xattrs. Nothing when unmetered, sparing the reads.
    pub(crate) fn held(&self, fd: BorrowedFd<'_>) -> i64 {
        if self.budget.is_none() {
            return 0;
        }
        let bytes = fs::fstat(fd).map_or(0, |st| allocated(&st));
        to_i64(bytes + xattr_bytes_of(fd).unwrap_or(0))
    }

    /// The root's device number: resolution never leaves it.
    pub(crate) fn root_dev(&self) -> u64 {
        self.root_dev
    }

    /// The root descriptor.
    pub(crate) fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Sets the owner of the object open at `fd`, which may be an `O_PATH`
/// descriptor (of a symlink, say): with `AT_EMPTY_PATH` an empty path names
/// the descriptor itself, so no name is looked up.
fn chown_fd(fd: &impl AsFd, (uid, gid): (Uid, Gid), path: &Path) -> Result<()> {
    fs::chownat(fd, c"", Some(uid), Some(gid), AtFlags::EMPTY_PATH)
        .map_err(|e| FsError::from_errno("set owner of", path, e))
}

/// Turns a writer's I/O error back into the typed error it carries.
pub(crate) fn writer_error(path: &Path, e: io::Error) -> FsError {
    if e.get_ref().is_some_and(|i| i.is::<FsError>()) {
        return *e
            .into_inner()
            .expect("checked")
            .downcast::<FsError>()
            .expect("checked");
    }
    FsError::io("write", path, e)
}

/// Bytes an object allocates, as the quota scanner counts them.
pub(crate) fn allocated(st: &Stat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

/// Bytes rounded up to whole blocks, what writing them may allocate.
pub(crate) fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// A count of bytes as a signed change, saturating.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Usage freed by removing the name `leaf` (of stat `st`) from `dir`, as
/// the scanner counts it, learnt before it goes: the name's
/// [`ENTRY_COST`], and, when it is the object's last name, its allocation
/// and counted xattrs.
pub(crate) fn freed_by_unlink(dir: BorrowedFd<'_>, leaf: &CStr, st: &Stat) -> u64 {
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::Directory && st.st_nlink > 1 {
        return ENTRY_COST;
    }
    // Host symlinks cannot carry user xattrs.
    let xattrs = if kind == FileType::Symlink {
        0
    } else {
        xattr_bytes_at(dir, leaf).unwrap_or(0)
    };
    ENTRY_COST + allocated(st) + xattrs
}

/// What kind of object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// Anything the kernel reports that is none of the above.
    Unknown,
}

impl FileKind {
    pub(crate) fn from_type(t: FileType) -> FileKind {
        match t {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            _ => FileKind::Unknown,
        }
    }

    /// A short lowercase name (`file`, `dir`, `symlink`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "char-device",
            FileKind::BlockDevice => "block-device",
            FileKind::Unknown => "unknown",
        }
    }
}

/// One entry of [`VolumeFs::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub(crate) name: OsString,
    pub(crate) kind: FileKind,
}

impl DirEntry {
    /// The entry's name (one component).
    pub fn name(&self) -> &std::ffi::OsStr {
        &self.name
    }
    /// Its kind, not following a symlink.
    pub fn kind(&self) -> FileKind {
        self.kind
    }
}

/// What [`VolumeFs::stat`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    kind: FileKind,
    len: u64,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    allocated: u64,
    modified: SystemTime,
}

impl Metadata {
    pub(crate) fn from_stat(st: &Stat) -> Metadata {
        let secs = st.st_mtime;
        let nanos = st.st_mtime_nsec as u32;
        let modified = if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        };
        Metadata {
            kind: FileKind::from_type(FileType::from_raw_mode(st.st_mode)),
            len: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            allocated: allocated(st),
            modified,
        }
    }
    /// The kind of object.
    pub fn kind(&self) -> FileKind {
        self.kind
    }
    /// Size in bytes (a symlink's is its target's length).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True when [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Permission bits, with setuid/setgid/sticky (`0o7777` mask).
    pub fn mode(&self) -> u32 {
        self.mode
    }
    /// Number of hard links.
    pub fn nlink(&self) -> u64 {
        self.nlink
    }
    /// Host owner.
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// Host group.
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Bytes allocated on the host filesystem.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
    /// Last modification time.
    pub fn modified(&self) -> SystemTime {
        self.modified
    }
}
