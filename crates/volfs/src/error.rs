//! The error of every [`VolumeFs`](crate::VolumeFs) operation.

use std::io;
use std::path::{Path, PathBuf};

use msb_quota::QuotaError;
use rustix::io::Errno;

/// Why a [`VolumeFs`](crate::VolumeFs) operation failed. Paths in messages
/// are the volume-relative paths the caller gave.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path is absolute, its `..` leaves the root, or a symlink on the
    /// way leads outside the volume (or onto another mount, or through a
    /// `/proc` magic link).
    #[error("path escapes volume root: {path}")]
    PathEscape {
        /// The path as given.
        path: String,
    },
    /// The path cannot name anything: a NUL byte, an over-long component
    /// or an over-long whole.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The volume root is a symlink; it is refused, never followed.
    #[error("volume root {} is a symlink; refusing to follow it", root.display())]
    RootIsSymlink {
        /// The root path.
        root: PathBuf,
    },
    /// The volume root could not be opened.
    #[error("cannot open volume root {}", root.display())]
    OpenRoot {
        /// The root path.
        root: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Nothing exists at the path (or a parent is missing).
    #[error("no such file or directory: {path}")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// Something already exists at the path.
    #[error("already exists: {path}")]
    AlreadyExists {
        /// The path as given.
        path: String,
    },
    /// A component used as a directory is not one.
    #[error("not a directory: {path}")]
    NotADirectory {
        /// The path as given.
        path: String,
    },
    /// A file operation was given a directory.
    #[error("is a directory: {path}")]
    IsADirectory {
        /// The path as given.
        path: String,
    },
    /// The operation needs a regular file (FIFOs, sockets and device nodes
    /// are never opened for data).
    #[error("not a regular file: {path}")]
    NotAFile {
        /// The path as given.
        path: String,
    },
    /// A directory to remove still has entries.
    #[error("directory not empty: {path}")]
    DirectoryNotEmpty {
        /// The path as given.
        path: String,
    },
    /// Symlinks loop, or more than 40 were followed.
    #[error("too many levels of symbolic links: {path}")]
    SymlinkLoop {
        /// The path as given.
        path: String,
    },
    /// The operation would remove or move the volume root itself.
    #[error("refusing to {op} the volume root")]
    IsRoot {
        /// The refused operation.
        op: &'static str,
    },
    /// The file has more than one hard link; writing would change it under
    /// every name, possibly one outside the volume.
    #[error("{path} has {links} hard links; refusing to write through them (remove it first)")]
    HardLinked {
        /// The path as given.
        path: String,
        /// Its link count.
        links: u64,
    },
    /// The volume is read-only (a sandbox has it attached, or it was opened
    /// read-only).
    #[error("volume is read-only: cannot {op} {path}")]
    ReadOnly {
        /// The refused operation.
        op: &'static str,
        /// The path as given.
        path: String,
    },
    /// The write, or the new name, would pass the volume's quota.
    #[error("cannot write {path}")]
    QuotaExceeded {
        /// The path as given.
        path: String,
        /// The refused reservation.
        #[source]
        source: QuotaError,
    },
    /// `read_to_string` found bytes that are not UTF-8.
    #[error("{path} is not valid UTF-8")]
    NotUtf8 {
        /// The path as given.
        path: String,
    },
    /// `copy` was asked to copy a file onto itself.
    #[error("source and destination are the same file: {path}")]
    SameFile {
        /// The destination as given.
        path: String,
    },
    /// Any other failure of the kernel.
    #[error("cannot {op} {path}")]
    Io {
        /// The failed operation.
        op: &'static str,
        /// The path as given.
        path: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// Maps an errno from resolving or acting on `path`. `EXDEV` only ever
    /// comes from resolution here (one volume is one filesystem), where it
    /// means the path left the root.
    pub(crate) fn from_errno(op: &'static str, path: &Path, e: Errno) -> Self {
        let path = shown(path);
        match e {
            Errno::XDEV => FsError::PathEscape { path },
            Errno::NOENT => FsError::NotFound { path },
            Errno::EXIST => FsError::AlreadyExists { path },
            Errno::NOTDIR => FsError::NotADirectory { path },
            Errno::ISDIR => FsError::IsADirectory { path },
            Errno::NOTEMPTY => FsError::DirectoryNotEmpty { path },
            Errno::LOOP => FsError::SymlinkLoop { path },
            Errno::ROFS => FsError::ReadOnly { op, path },
            e => FsError::Io {
                op,
                path,
                source: e.into(),
            },
        }
    }

    /// Wraps a std I/O error of `op` on `path`.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(n) => Self::from_errno(op, path, Errno::from_raw_os_error(n)),
            None => FsError::Io {
                op,
                path: shown(path),
                source,
            },
        }
    }

    /// True for [`FsError::PathEscape`].
    pub fn is_path_escape(&self) -> bool {
        matches!(self, FsError::PathEscape { .. })
    }

    /// True for [`FsError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::NotFound { .. })
    }
}

/// How a caller's path appears in messages.
pub(crate) fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        return ".".into();
    }
    path.to_string_lossy().into_owned()
}
