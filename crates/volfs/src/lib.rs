//! Confined host-side file access to a volume.
//!
//! [`VolumeFs`] reads and writes a volume's files from the host, without a
//! running sandbox, such that no path, symlink or race can make it touch
//! anything outside the volume.
//!
//! # Rules every operation follows
//!
//! - Paths are relative to the volume root. They are checked lexically once
//!   ([`FsError::InvalidPath`] for a NUL byte, a component over 255 bytes or
//!   a path over 4095 bytes) and `.`/`..` are folded the way Go's
//!   `filepath.Clean` does: `a/../b` is `b`. An absolute path, or a `..`
//!   that would leave the root, is [`FsError::PathEscape`].
//! - Resolution happens in the kernel with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` relative to a descriptor of
//!   the root, and the operation acts on the descriptor it got back, never
//!   on the path again (no check-then-use). Symlinks inside the volume are
//!   followed while every step stays beneath the root; an absolute target,
//!   a `..` above the root, a `/proc` magic link or a step onto another
//!   mount is [`FsError::PathEscape`]. Loops are [`FsError::SymlinkLoop`].
//!   Without `openat2` (kernels before 5.6) the same rules are enforced by a
//!   component-by-component walk ([`Resolver::Walk`]).
//! - Creating, removing and renaming open the *parent* beneath the root and
//!   then act on the last component with `*at()` calls, so the object acted
//!   on is the one named, not whatever a symlink there points to.
//! - The root is opened with `O_NOFOLLOW`: a volume folder replaced by a
//!   symlink is refused ([`FsError::RootIsSymlink`]). Once opened, the
//!   volume is the directory held, even if the folder is later moved.
//! - Data is only read from or written to regular files. FIFOs, sockets and
//!   device nodes found in a volume are refused ([`FsError::NotAFile`])
//!   before any byte moves; they are opened with `O_NONBLOCK | O_NOCTTY` so
//!   the check itself cannot hang or take a terminal.
//!
//! # Hard links
//!
//! A regular file with more than one hard link is **never opened for
//! writing** ([`FsError::HardLinked`]): a hard link planted in the volume can
//! share its inode with a file outside it, and nothing on the inode tells
//! where the other names live, so writing through it could change a host
//! file. Such a file may still be read, removed (which drops only the name
//! inside the volume) or renamed: its bytes are already stored in the volume
//! and counted against its quota, and with `fs.protected_hardlinks` (the
//! kernel default) only someone who owns the outside file, or may read and
//! write it, can have planted the link. To write it, remove it and write it
//! again (which makes a new, single-link file). This also applies to files
//! hard-linked to each other inside the volume, for example by the guest or
//! by an import.
//!
//! # Ownership
//!
//! Everything a `VolumeFs` makes (files written, created or copied,
//! directories, symlinks, imported entries) is owned by the user and group
//! that own the volume's root, not by the calling process: a sandbox runs
//! as an unprivileged host user that owns its volumes, and must be able to
//! change what the host put there. The owner is set on the new object's
//! descriptor (or on an `O_PATH | O_NOFOLLOW` one of the name just made),
//! never through a path a sandbox could redirect. Only single-link objects
//! the caller owns are handed over, and one made by name is given back if
//! the name no longer holds it afterwards (something was swapped in). A
//! file the caller owns that it rewrites is handed over too. When the
//! caller owns the root, nothing changes hands.
//!
//! # Writes
//!
//! [`VolumeFs::write`] creates or truncates a file but does **not** create
//! missing parent directories (like the seed API's `Write`); call
//! [`VolumeFs::mkdir`], which does create parents, first. With a quota
//! budget ([`VolumeFs::with_budget`]) usage is counted by the rule of
//! [`msb_quota::usage`], exactly as the filesystem server and the scanner
//! count it: every name made (file, directory, symlink, hard link, FIFO)
//! costs [`msb_quota::ENTRY_COST`] plus what its object allocates and what
//! its directory grows by, and xattrs an import sets are counted. Every
//! change reserves its worst case before touching the volume (refused with
//! [`FsError::QuotaExceeded`]) and settles against what really changed
//! after; removals and renames over a name credit what they free. A
//! [read-only](VolumeFs::read_only) volume refuses every changing
//! operation.
//!
//! ```no_run
//! # fn demo() -> Result<(), msb_volfs::FsError> {
//! let fs = msb_volfs::VolumeFs::open("/var/lib/msb/volumes/data")?;
//! fs.mkdir("etc/app")?;
//! fs.write("etc/app/config.toml", "debug = true\n")?;
//! assert_eq!(fs.read_to_string("etc/app/config.toml")?, "debug = true\n");
//! assert!(fs.read("../../etc/passwd").unwrap_err().is_path_escape());
//! # Ok(()) }
//! ```

pub mod archive;
mod error;
mod fs;
mod path;
mod resolve;
mod tree;
mod writer;

pub use error::FsError;
pub use fs::{DirEntry, FileKind, Metadata, Result, VolumeFs};
pub use resolve::Resolver;
pub use writer::VolumeWriter;
