//! What a volume's usage counts, the same for the scanner and every live
//! counter: all the bytes the volume holds on its host file system.
//!
//! - Each name below the root costs [`ENTRY_COST`]: empty files,
//!   directories, symlinks, device nodes and every hard link pay for the
//!   inode and directory entry they take.
//! - Each inode (a hard-linked one once) adds its allocation,
//!   `st_blocks * 512`: file data, directory blocks, long symlink targets,
//!   xattr blocks.
//! - And the names and values of its `user.` xattrs ([`xattr_cost`]),
//!   except msb's own bookkeeping under [`OWN_XATTR_PREFIX`].
//!
//! The root directory itself is not counted, so an empty volume uses
//! nothing. Since every name in it costs a block, its own growth stays a
//! small fraction (an entry takes at most a few hundred bytes) of what is
//! counted.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::io::Errno;

/// Bytes charged for every name in a volume: one 4 KiB block, what an
/// inode and its directory entry take on a typical host file system.
pub const ENTRY_COST: u64 = 4096;

/// msb's own xattrs (metadata records); they are bookkeeping and not
/// counted.
pub const OWN_XATTR_PREFIX: &[u8] = b"user.msb.";

/// What an xattr counts: its name and value length for `user.` attributes
/// other than msb's own, nothing for any other (the host's, which clients
/// cannot set).
pub fn xattr_cost(name: &[u8], value_len: usize) -> u64 {
    if name.starts_with(b"user.") && !name.starts_with(OWN_XATTR_PREFIX) {
        (name.len() + value_len) as u64
    } else {
        0
    }
}

/// Counted xattr bytes of `name` in the directory `dir`, without following
/// it if it is a symlink.
pub fn xattr_bytes_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<u64> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).map_err(|_| Errno::INVAL)?;
    counted(
        || rustix::fs::llistxattr_query(&path),
        |buf| rustix::fs::llistxattr(&path, buf),
        |attr| rustix::fs::lgetxattr_query(&path, attr),
    )
}

/// Counted xattr bytes of the object behind `fd`, any descriptor of it
/// (`O_PATH` too) but one of a symlink.
pub fn xattr_bytes_of(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // The magic link reaches the inode itself, even an unlinked one.
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    counted(
        || rustix::fs::listxattr_query(&path),
        |buf| rustix::fs::listxattr(&path, buf),
        |attr| rustix::fs::getxattr_query(&path, attr),
    )
}

fn counted(
    size: impl Fn() -> rustix::io::Result<usize>,
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    value_len: impl Fn(&std::ffi::OsStr) -> rustix::io::Result<usize>,
) -> io::Result<u64> {
    let names = loop {
        let mut buf = match size() {
            Ok(0) | Err(Errno::NOTSUP) => return Ok(0),
            Ok(n) => vec![0u8; n],
            Err(e) => return Err(e.into()),
        };
        match list(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // Grew in between: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut total = 0;
    for name in names.split(|&b| b == 0) {
        if xattr_cost(name, 0) == 0 {
            continue;
        }
        match value_len(std::ffi::OsStr::from_bytes(name)) {
            Ok(len) => total += xattr_cost(name, len),
            // Removed in between.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_xattrs_count() {
        assert_eq!(xattr_cost(b"user.a", 10), 16);
        assert_eq!(xattr_cost(b"user.msb.meta", 20), 0);
        assert_eq!(xattr_cost(b"security.selinux", 30), 0);
        assert_eq!(xattr_cost(b"trusted.x", 1), 0);
    }

    #[test]
    fn xattr_bytes_of_a_file_by_name_and_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let none = rustix::fs::XattrFlags::empty();
        rustix::fs::setxattr(&f, "user.one", b"12345", none).unwrap();
        rustix::fs::setxattr(&f, "user.msb.meta", b"not counted", none).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let at = |n: &std::ffi::CStr| {
            use std::os::fd::AsFd;
            xattr_bytes_at(d.as_fd(), n).unwrap()
        };
        assert_eq!(at(c"f"), 13);
        let fd = rustix::fs::open(&f, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        use std::os::fd::AsFd;
        assert_eq!(xattr_bytes_of(fd.as_fd()).unwrap(), 13);
        // A symlink is not followed.
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        assert_eq!(at(c"l"), 0);
    }
}
