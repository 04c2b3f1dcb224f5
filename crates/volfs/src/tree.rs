//! Directory walks on descriptors: listing one level, and emptying a tree
//! without following symlinks or leaving the filesystem.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use rustix::fs::{self, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::fs::{DirEntry, FileKind, freed_by_unlink};

/// The entries of an open directory, unsorted, without `.` and `..`.
pub(crate) fn read_dir(fd: OwnedFd) -> Result<Vec<DirEntry>, Errno> {
    let mut out = Vec::new();
    for (name, t) in names(fd.try_clone().map_err(|_| Errno::BADF)?)? {
        let kind = if t == FileType::Unknown {
            fs::statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .unwrap_or(FileType::Unknown)
        } else {
            t
        };
        out.push(DirEntry {
            name: OsString::from_vec(name.into_bytes()),
            kind: FileKind::from_type(kind),
        });
    }
    Ok(out)
}

/// Names and `d_type`s of a directory, read in full before anything is
/// changed in it.
pub(crate) fn names(fd: OwnedFd) -> Result<Vec<(CString, FileType)>, Errno> {
    let mut dir = Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(e) = dir.read() {
        let e = e?;
        let name = e.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push((name.to_owned(), e.file_type()));
    }
    Ok(out)
}

struct Frame {
    fd: OwnedFd,
    /// Name in the parent frame.
    name: Option<CString>,
    subdirs: Vec<CString>,
}

/// Removes everything inside `top`, adding the usage freed to `freed`
/// when counted (see [`freed_by_unlink`]). Depth is handled with an
/// explicit stack. Entries are opened with `O_NOFOLLOW`, so a directory
/// swapped for a symlink is unlinked, not followed.
pub(crate) fn empty_dir(
    top: OwnedFd,
    root_dev: u64,
    mut freed: Option<&mut u64>,
) -> Result<(), Errno> {
    let subdirs = clear_files(&top, &mut freed)?;
    let mut stack = vec![Frame {
        fd: top,
        name: None,
        subdirs,
    }];
    while let Some(frame) = stack.last_mut() {
        if let Some(name) = frame.subdirs.pop() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match fs::openat(&frame.fd, name.as_c_str(), flags, Mode::empty()) {
                Ok(fd) => {
                    if fs::fstat(&fd)?.st_dev != root_dev {
                        return Err(Errno::XDEV);
                    }
                    let subdirs = clear_files(&fd, &mut freed)?;
                    stack.push(Frame {
                        fd,
                        name: Some(name),
                        subdirs,
                    });
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    unlink(&frame.fd, &name, AtFlags::empty(), &mut freed)?;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        } else {
            let done = stack.pop().expect("non-empty stack");
            if let (Some(parent), Some(name)) = (stack.last(), done.name) {
                drop(done.fd);
                unlink(&parent.fd, &name, AtFlags::REMOVEDIR, &mut freed)?;
            }
        }
    }
    Ok(())
}

/// Unlinks every non-directory in `dir`; returns its subdirectories.
fn clear_files(dir: &OwnedFd, freed: &mut Option<&mut u64>) -> Result<Vec<CString>, Errno> {
    let mut subdirs = Vec::new();
    for (name, _) in names(dir.try_clone().map_err(|_| Errno::BADF)?)? {
        let st = match fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            subdirs.push(name);
        } else {
            unlink_stat(dir, &name, &st, AtFlags::empty(), freed)?;
        }
    }
    Ok(subdirs)
}

/// Removes `name` of `dir`, counting what it frees when counted. A
/// directory is measured emptied, just before it goes.
fn unlink(
    dir: &OwnedFd,
    name: &CStr,
    flags: AtFlags,
    freed: &mut Option<&mut u64>,
) -> Result<(), Errno> {
    let st = fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    unlink_stat(dir, name, &st, flags, freed)
}

fn unlink_stat(
    dir: &OwnedFd,
    name: &CStr,
    st: &Stat,
    flags: AtFlags,
    freed: &mut Option<&mut u64>,
) -> Result<(), Errno> {
    let bytes = freed
        .as_ref()
        .map(|_| freed_by_unlink(dir.as_fd(), name, st));
    fs::unlinkat(dir, name, flags)?;
    if let (Some(f), Some(b)) = (freed.as_deref_mut(), bytes) {
        *f += b;
    }
    Ok(())
}
