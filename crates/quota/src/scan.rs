use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

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

/// The usage of everything below the directory `root` (not counting `root`
/// itself), as [`crate::usage`] defines it: [`ENTRY_COST`] per name, plus
/// `st_blocks * 512` and the counted xattrs of every inode, hard-linked
/// files once. Never follows symlinks and never leaves the filesystem of
/// `root`.
pub fn scan(root: impl AsFd) -> Result<u64, ScanError> {
    let root = root.as_fd();
    let dev = rustix::fs::fstat(root).map_err(|e| err(".", e))?.st_dev;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let first = rustix::fs::openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(".", e))?;
    let mut stack: Vec<(OwnedFd, String)> = vec![(first, String::new())];
    while let Some((dir_fd, path)) = stack.pop() {
        let dir = Dir::read_from(&dir_fd).map_err(|e| err(&path, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| err(&path, e))?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let child = format!("{path}/{}", name.to_string_lossy());
            let st = match rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed while we were scanning: it uses nothing any more.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(err(&child, e)),
            };
            if st.st_dev != dev {
                continue;
            }
            let kind = FileType::from_raw_mode(st.st_mode);
            let is_dir = kind == FileType::Directory;
            if !is_dir && st.st_nlink > 1 && !seen.insert(st.st_ino) {
                // Another name of an inode already counted.
                total += ENTRY_COST;
                continue;
            }
            // Host symlinks cannot carry user xattrs.
            let xattrs = if kind == FileType::Symlink {
                0
            } else {
                match xattr_bytes_at(dir_fd.as_fd(), name) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(ScanError::Io {
                            path: child.trim_start_matches('/').to_string(),
                            source,
                        });
                    }
                }
            };
            total += ENTRY_COST + st.st_blocks as u64 * 512 + xattrs;
            if is_dir {
                match rustix::fs::openat(
                    &dir_fd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => stack.push((fd, child)),
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(err(&child, e)),
                }
            }
        }
    }
    Ok(total)
}

fn err(path: &str, e: rustix::io::Errno) -> ScanError {
    let path = if path.is_empty() {
        ".".to_string()
    } else {
        path.trim_start_matches('/').to_string()
    };
    ScanError::Io {
        path,
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
}
