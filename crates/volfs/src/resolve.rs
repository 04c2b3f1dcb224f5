//! Opening a path beneath the root descriptor.
//!
//! The kernel does it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`: every step, symlinks included, must stay beneath the
//! root, and the returned descriptor is the object that was checked. Where
//! `openat2` is missing (`ENOSYS`: kernels before 5.6, some seccomp filters)
//! the same rules are applied by a walk: one `openat(O_PATH | O_NOFOLLOW)`
//! per component from a held directory descriptor, symlinks expanded by
//! hand (absolute targets and `..` above the root refused, at most 40), and
//! no step onto another filesystem.
//!
//! Errors are plain errnos: `EXDEV` means "left the root" in both paths.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{self, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How paths are resolved beneath the root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH` when the kernel has it, else
    /// [`Resolver::Walk`].
    #[default]
    Auto,
    /// The component walk used when `openat2` is missing. Selectable so it
    /// can be exercised (and compared) on kernels that do have `openat2`.
    Walk,
}

/// Most symlinks followed in one resolution, as the kernel's MAXSYMLINKS.
const MAX_HOPS: usize = 40;
/// openat2 asks for a retry (EAGAIN) when a rename raced a `..` step; after
/// this many the walk, which needs no retry, takes over.
const MAX_RETRIES: usize = 64;

const UNKNOWN: u8 = 0;
const HAVE: u8 = 1;
const MISSING: u8 = 2;
static OPENAT2: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Opens `path` (validated, `.` for the root) beneath `root`. With
/// `follow == false` a final symlink is not followed (use `O_PATH` to get
/// the link itself).
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    root_dev: u64,
    resolver: Resolver,
    path: &CStr,
    oflags: OFlags,
    mode: Mode,
    follow: bool,
) -> Result<OwnedFd, Errno> {
    let oflags = oflags | OFlags::CLOEXEC;
    if resolver == Resolver::Auto && OPENAT2.load(Ordering::Relaxed) != MISSING {
        let flags = if follow {
            oflags
        } else {
            oflags | OFlags::NOFOLLOW
        };
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        for _ in 0..MAX_RETRIES {
            match fs::openat2(root, path, flags, mode, how) {
                Err(Errno::AGAIN | Errno::INTR) => continue,
                Err(Errno::NOSYS) => {
                    OPENAT2.store(MISSING, Ordering::Relaxed);
                    break;
                }
                r => {
                    OPENAT2.store(HAVE, Ordering::Relaxed);
                    return r;
                }
            }
        }
    }
    walk(root, root_dev, path.to_bytes(), oflags, mode, follow)
}

/// The portable resolution; see the module docs.
fn walk(
    root: BorrowedFd<'_>,
    root_dev: u64,
    path: &[u8],
    oflags: OFlags,
    mode: Mode,
    follow: bool,
) -> Result<OwnedFd, Errno> {
    // Components still to resolve, last one first so pop() yields the next.
    let mut todo: Vec<Vec<u8>> = Vec::new();
    push_components(&mut todo, path);
    if todo.is_empty() {
        return fs::openat(root, c".", oflags, mode);
    }
    // Directories entered below the root; `..` pops one.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        let cur = stack.last().map_or(root, |d| d.as_fd());
        if name == b".." {
            if stack.pop().is_none() {
                return Err(Errno::XDEV);
            }
            continue;
        }
        let last = todo.is_empty();
        if last && !follow {
            return fs::openat(cur, name.as_slice(), oflags | OFlags::NOFOLLOW, mode);
        }
        let probe = fs::openat(
            cur,
            name.as_slice(),
            OFlags::PATH | OFlags::NOFOLLOW,
            Mode::empty(),
        );
        let probe = match probe {
            Ok(fd) => fd,
            Err(Errno::NOENT) if last && oflags.contains(OFlags::CREATE) => {
                match fs::openat(cur, name.as_slice(), oflags | OFlags::NOFOLLOW, mode) {
                    // A symlink appeared since the probe: resolve again.
                    Err(Errno::LOOP) => {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(Errno::LOOP);
                        }
                        todo.push(name);
                        continue;
                    }
                    r => return r,
                }
            }
            Err(e) => return Err(e),
        };
        let st = fs::fstat(&probe)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(Errno::LOOP);
                }
                let target = fs::readlinkat(&probe, c"", Vec::new())?;
                let target = target.as_bytes();
                if target.first() == Some(&b'/') {
                    return Err(Errno::XDEV);
                }
                if target.is_empty() {
                    return Err(Errno::NOENT);
                }
                push_components(&mut todo, target);
            }
            _ if st.st_dev != root_dev => return Err(Errno::XDEV),
            FileType::Directory if !last => stack.push(probe),
            _ if !last => return Err(Errno::NOTDIR),
            FileType::Directory if oflags.contains(OFlags::PATH) => return Ok(probe),
            // O_PATH skips the kernel's own O_DIRECTORY check on reopen.
            t if t != FileType::Directory && oflags.contains(OFlags::DIRECTORY) => {
                return Err(Errno::NOTDIR);
            }
            _ => {
                if oflags.contains(OFlags::PATH) {
                    return Ok(probe);
                }
                match fs::openat(cur, name.as_slice(), oflags | OFlags::NOFOLLOW, mode) {
                    // Swapped for a symlink since the probe: resolve again.
                    Err(Errno::LOOP) => {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(Errno::LOOP);
                        }
                        todo.push(name);
                    }
                    r => return r,
                }
            }
        }
    }
    // Only reached when the path ended in `..` after a symlink: the
    // directory we stand in is the answer.
    let cur = stack.last().map_or(root, |d| d.as_fd());
    fs::openat(cur, c".", oflags, mode)
}

/// Pushes the components of `path` so that the first is popped first,
/// dropping empty and `.` components.
fn push_components(todo: &mut Vec<Vec<u8>>, path: &[u8]) {
    let start = todo.len();
    todo.extend(
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec),
    );
    todo[start..].reverse();
}
