use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, ResolveFlags};
use rustix::io::Errno;

use crate::usage::{ENTRY_COST, xattr_bytes_at};

/// Errors of a usage scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot scan {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Directories below the root kept open along the current path: deeper
/// ones are closed and opened again when the walk comes back to them, so a
/// tree of any depth or width takes a bounded number of descriptors.
const OPEN_LEVELS: usize = 32;

/// Longest path handed to one `openat2` when opening a directory again.
const PATH_MAX: usize = 4096;

/// The usage of everything below the directory `root` (not counting `root`
/// itself), as [`crate::usage`] defines it: [`ENTRY_COST`] per name, plus
/// `st_blocks * 512` and the counted xattrs of every inode, hard-linked
/// files once. Never follows symlinks and never leaves the filesystem of
/// `root`. Holds at most a few dozen descriptors whatever the tree's shape;
/// names that vanish during the scan count nothing.
pub fn scan(root: impl AsFd) -> Result<u64, ScanError> {
    Walk::run(root.as_fd(), OPEN_LEVELS)
}

/// One directory on the current path.
struct Level {
    /// Open while among the deepest levels, and the root always.
    fd: Option<OwnedFd>,
    /// Its name in its parent (empty for the root).
    name: CString,
    /// Inode number: a directory opened again must be the same one.
    ino: u64,
    /// Subdirectories still to visit.
    pending: Vec<Subdir>,
}

/// A subdirectory to visit: its name and inode number.
type Subdir = (CString, u64);

/// A failure while counting a directory, at one of its entries if named.
type CountError = (Option<CString>, Errno);

struct Walk {
    dev: u64,
    /// Hard-linked files already counted.
    seen: HashSet<u64>,
    total: u64,
    levels: Vec<Level>,
    /// How many levels below the root keep their descriptor.
    open_levels: usize,
    buf: Vec<MaybeUninit<u8>>,
}

impl Walk {
    fn run(root: BorrowedFd<'_>, open_levels: usize) -> Result<u64, ScanError> {
        let first = rustix::fs::openat(
            root,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(".", e))?;
        let st = rustix::fs::fstat(&first).map_err(|e| err(".", e))?;
        let mut walk = Walk {
            dev: st.st_dev,
            seen: HashSet::new(),
            total: 0,
            levels: Vec::new(),
            open_levels: open_levels.max(1),
            buf: vec![MaybeUninit::uninit(); 32 << 10],
        };
        walk.enter(first, CString::default(), st.st_ino)?;
        // The descriptor of the level just left: its ".." is the way back.
        let mut left: Option<OwnedFd> = None;
        while let Some(top) = walk.levels.last_mut() {
            let Some((name, ino)) = top.pending.pop() else {
                left = walk.levels.pop().and_then(|l| l.fd);
                continue;
            };
            if top.fd.is_none() {
                let again = walk.reopen(left.take()).map_err(|e| walk.err_at(None, e))?;
                let top = walk.levels.last_mut().expect("the loop holds a level");
                match again {
                    Some(fd) => top.fd = Some(fd),
                    None => {
                        // Moved away meanwhile: what is left of it is
                        // counted wherever the scan meets it, if at all.
                        top.pending.clear();
                        continue;
                    }
                }
            }
            left = None;
            let parent = walk.levels.last().and_then(|l| l.fd.as_ref());
            let parent = parent.expect("opened above");
            let fd = match rustix::fs::openat(
                parent,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Removed or replaced since it was listed.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(walk.err_at(Some(&name), e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(|e| walk.err_at(Some(&name), e))?;
            if (st.st_dev, st.st_ino) != (walk.dev, ino) {
                continue;
            }
            walk.enter(fd, name, ino)?;
        }
        Ok(walk.total)
    }

    /// Counts the entries of the directory `fd` and makes it the current
    /// level, closing the descriptor of the level that falls out of the
    /// open window.
    fn enter(&mut self, fd: OwnedFd, name: CString, ino: u64) -> Result<(), ScanError> {
        self.levels.push(Level {
            fd: None,
            name,
            ino,
            pending: Vec::new(),
        });
        let pending = self
            .count(&fd)
            .map_err(|(at, e)| self.err_at(at.as_deref(), e))?;
        let level = self.levels.last_mut().expect("pushed above");
        level.pending = pending;
        level.fd = Some(fd);
        let depth = self.levels.len() - 1;
        if depth > self.open_levels {
            self.levels[depth - self.open_levels].fd = None;
        }
        Ok(())
    }

    /// Adds up the entries of the directory `dir`; gives its subdirectories
    /// (on the same file system) to visit. An error names the entry it
    /// concerns, if any.
    fn count(&mut self, dir: &OwnedFd) -> Result<Vec<Subdir>, CountError> {
        let mut subdirs = Vec::new();
        let mut entries = RawDir::new(dir, &mut self.buf);
        while let Some(entry) = entries.next() {
            let entry = entry.map_err(|e| (None, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed while we were scanning: it uses nothing any more.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err((Some(name.to_owned()), e)),
            };
            if st.st_dev != self.dev {
                continue;
            }
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind != FileType::Directory && st.st_nlink > 1 && !self.seen.insert(st.st_ino) {
                // Another name of an inode already counted.
                self.total += ENTRY_COST;
                continue;
            }
            // Host symlinks cannot carry user xattrs.
            let xattrs = if kind == FileType::Symlink {
                0
            } else {
                match xattr_bytes_at(dir.as_fd(), name) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        let errno = Errno::from_io_error(&e).unwrap_or(Errno::IO);
                        return Err((Some(name.to_owned()), errno));
                    }
                }
            };
            self.total += ENTRY_COST + st.st_blocks as u64 * 512 + xattrs;
            if kind == FileType::Directory {
                subdirs.push((name.to_owned(), st.st_ino));
            }
        }
        Ok(subdirs)
    }

    /// Opens the current level again: through the `..` of the level just
    /// left when it still leads there, else by its path beneath the nearest
    /// level still open (never through a symlink or onto another mount).
    /// `None` when the directory is no longer where it was.
    fn reopen(&self, left: Option<OwnedFd>) -> Result<Option<OwnedFd>, Errno> {
        let target = self.levels.len() - 1;
        let want = self.levels[target].ino;
        if let Some(child) = left
            && let Ok(fd) = open_dir_at(child.as_fd(), c"..")
            && self.is(&fd, want)
        {
            return Ok(Some(fd));
        }
        let base = (0..target)
            .rev()
            .find(|&i| self.levels[i].fd.is_some())
            .expect("the root stays open");
        let mut at = base;
        let mut fd: Option<OwnedFd> = None;
        while at < target {
            // As many names as fit in one path.
            let mut path = Vec::new();
            let mut next = at;
            while next < target {
                let name = self.levels[next + 1].name.as_bytes();
                if !path.is_empty() && path.len() + 1 + name.len() >= PATH_MAX {
                    break;
                }
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                next += 1;
            }
            let from = match &fd {
                Some(fd) => fd.as_fd(),
                None => self.levels[at].fd.as_ref().expect("found open").as_fd(),
            };
            let path = CString::new(path).expect("names hold no NUL");
            let opened = match rustix::fs::openat2(
                from,
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
            ) {
                Ok(opened) => opened,
                // Renamed, removed, replaced by a symlink or a mount.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV | Errno::AGAIN) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if !self.is(&opened, self.levels[next].ino) {
                return Ok(None);
            }
            fd = Some(opened);
            at = next;
        }
        Ok(fd)
    }

    /// Whether `fd` is the directory with inode `ino` on the scanned file
    /// system.
    fn is(&self, fd: &OwnedFd, ino: u64) -> bool {
        rustix::fs::fstat(fd).is_ok_and(|st| (st.st_dev, st.st_ino) == (self.dev, ino))
    }

    /// An error at the current level, or at its entry `name`.
    fn err_at(&self, name: Option<&CStr>, e: Errno) -> ScanError {
        let mut path: Vec<String> = self.levels[1..]
            .iter()
            .map(|l| l.name.to_string_lossy().into_owned())
            .collect();
        path.extend(name.map(|n| n.to_string_lossy().into_owned()));
        if path.is_empty() {
            err(".", e)
        } else {
            err(&path.join("/"), e)
        }
    }
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn err(path: &str, e: Errno) -> ScanError {
    ScanError::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let open = || std::fs::File::open(root).unwrap();
        assert_eq!(scan(open()).unwrap(), 0);
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(root.join("sub/a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        rustix::fs::setxattr(
            root.join("b"),
            "user.k",
            b"value",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let blocks: u64 = ["sub", "sub/a", "link"]
            .iter()
            .map(|p| std::fs::symlink_metadata(root.join(p)).unwrap().blocks() * 512)
            .sum();
        // Four names; the xattr is on the hard-linked inode, counted once.
        let expected = blocks + 4 * ENTRY_COST + 11;
        assert_eq!(scan(open()).unwrap(), expected);
        assert!(expected >= 100_000);
    }

    #[test]
    fn directories_opened_again_count_the_same() {
        // A deep tree with a branch every ten levels, walked with few open
        // levels: branching ones are opened again on the way back.
        // Long names: paths longer than one openat2 takes.
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let long = CString::new("n".repeat(200)).unwrap();
        let mut at = open_dir_at(root.as_fd(), c".").unwrap();
        for i in 0..60 {
            if i % 10 == 0 {
                rustix::fs::mkdirat(&at, c"side", Mode::from_raw_mode(0o755)).unwrap();
                let side = open_dir_at(at.as_fd(), c"side").unwrap();
                let f = rustix::fs::openat(
                    &side,
                    c"f",
                    OFlags::CREATE | OFlags::WRONLY,
                    Mode::from_raw_mode(0o644),
                )
                .unwrap();
                rustix::io::write(&f, &vec![1u8; i * 1000]).unwrap();
            }
            rustix::fs::mkdirat(&at, &long, Mode::from_raw_mode(0o755)).unwrap();
            at = open_dir_at(at.as_fd(), &long).unwrap();
        }
        let wide = Walk::run(root.as_fd(), OPEN_LEVELS + 100).unwrap();
        assert!(wide > 60 * ENTRY_COST);
        for open_levels in [1, 2, 5] {
            assert_eq!(Walk::run(root.as_fd(), open_levels).unwrap(), wide);
        }
    }

    /// A walk at `root` with one open level below it, entered down to
    /// nothing yet.
    fn walk_at(root: &std::fs::File) -> Walk {
        let st = rustix::fs::fstat(root).unwrap();
        let mut walk = Walk {
            dev: st.st_dev,
            seen: HashSet::new(),
            total: 0,
            levels: Vec::new(),
            open_levels: 1,
            buf: vec![MaybeUninit::uninit(); 4096],
        };
        let fd = open_dir_at(root.as_fd(), c".").unwrap();
        walk.enter(fd, CString::default(), st.st_ino).unwrap();
        walk
    }

    #[test]
    fn a_deep_directory_is_opened_again_by_a_path_longer_than_one_openat2_takes() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let mut walk = walk_at(&root);
        let long = CString::new("n".repeat(250)).unwrap();
        let mut inos = Vec::new();
        for _ in 0..60 {
            let at = walk.levels.last().unwrap().fd.as_ref().unwrap();
            rustix::fs::mkdirat(at, &long, Mode::from_raw_mode(0o755)).unwrap();
            let fd = open_dir_at(at.as_fd(), &long).unwrap();
            let ino = rustix::fs::fstat(&fd).unwrap().st_ino;
            inos.push(ino);
            walk.enter(fd, long.clone(), ino).unwrap();
        }
        // Only the root and the deepest level are open.
        let open = walk.levels.iter().filter(|l| l.fd.is_some()).count();
        assert_eq!(open, 2);
        walk.levels.pop();
        let again = walk.reopen(None).unwrap().expect("still there");
        assert_eq!(rustix::fs::fstat(&again).unwrap().st_ino, inos[58]);
    }

    #[test]
    fn a_directory_moved_during_the_walk_is_not_followed_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir(root.join("a/b/side")).unwrap();
        let fd = std::fs::File::open(root).unwrap();
        let mut walk = walk_at(&fd);
        let open = |p: &str| open_dir_at(fd.as_fd(), &CString::new(p).unwrap()).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        walk.enter(open("a"), c"a".to_owned(), ino("a")).unwrap();
        walk.enter(open("a/b"), c"b".to_owned(), ino("a/b"))
            .unwrap();
        // `a` fell out of the window; replace it by a symlink leading out.
        assert!(walk.levels[1].fd.is_none());
        std::fs::rename(root.join("a"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("a")).unwrap();
        walk.levels.pop();
        assert!(walk.reopen(None).unwrap().is_none());
        // A directory of another identity at the same path is refused too.
        std::fs::remove_file(root.join("a")).unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        assert!(walk.reopen(None).unwrap().is_none());
        std::fs::remove_dir(root.join("a")).unwrap();
        std::fs::rename(root.join("moved"), root.join("a")).unwrap();
        assert!(walk.reopen(None).unwrap().is_some());
    }
}
