//! Unpacks onto the host a tar stream that a sandbox made (`msb cp
//! SANDBOX:PATH HOSTPATH`). The stream comes from hostile root, so every
//! entry is checked before anything is written:
//!
//! - its name must lie inside the copied tree (no `..`, no absolute name,
//!   no other top than the one asked for);
//! - it is written relative to directory descriptors opened without
//!   following symlinks, so a symlink in the archive is never walked
//!   through, and hard links may name only entries already unpacked;
//! - permission bits are kept without setuid, setgid and sticky; owners
//!   are not kept; devices, FIFOs and sockets are skipped with a notice;
//! - a file's declared size must leave a reserve of the host filesystem
//!   free (and each entry a reserve of its inodes).
//!
//! Everything lands first in a private staging directory beside the
//! target (mode 0700, so nothing else on the host can race it) and moves
//! into place by rename once the whole archive was read; a failure or a
//! stop signal removes the staging directory and leaves the target as it
//! was (merging into an existing directory moves entry by entry).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps};

use super::text::escape;

/// Bytes of the host filesystem a copy leaves free: 1/20 of it, at most
/// this much.
const RESERVE_BYTES: u64 = 1 << 30;
/// Inodes a copy leaves free: 1/20 of them, at most this many.
const RESERVE_INODES: u64 = 10_000;

/// Why unpacking a sandbox's archive failed. Nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum UntarError {
    #[error("the sandbox sent an entry {} outside the copied tree", .0.display())]
    Outside(PathBuf),
    #[error(
        "the sandbox sent {} without its directory before it (or under a symlink)",
        .0.display()
    )]
    NoParent(PathBuf),
    #[error(
        "the sandbox sent a hard link {} to {}, which is not a file unpacked before it",
        .link.display(),
        .to.display()
    )]
    BadLink { link: PathBuf, to: PathBuf },
    #[error("the sandbox sent {} over a directory of the same name", .0.display())]
    OverDir(PathBuf),
    #[error(
        "copying {} ({size} bytes) would leave the host filesystem under its reserve ({available} bytes available); free space or copy less",
        .path.display()
    )]
    NoSpace {
        path: PathBuf,
        size: u64,
        available: u64,
    },
    #[error("copying {} would leave the host filesystem under its reserve of inodes", .0.display())]
    NoInodes(PathBuf),
    #[error("the sandbox's archive was empty")]
    Empty,
    #[error("cannot read the sandbox's archive")]
    Read(#[source] io::Error),
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot put a directory over {}, which is not one", .0.display())]
    DirOverFile(PathBuf),
    #[error("cannot put a non-directory over the directory {}", .0.display())]
    FileOverDir(PathBuf),
    #[error("{} has no name to copy to; name the destination itself", .0.display())]
    NoName(PathBuf),
}

/// An archive unpacked into its staging directory, to be moved into place
/// with [`Staged::land`]; dropped, it is removed.
pub struct Staged {
    stage: Stage,
    parent: PathBuf,
    name: OsString,
}

/// Unpacks `archive`, whose entries all start with `top` (`.` for a
/// sandbox's root), into a staging directory beside the host path
/// `target`. `keep_times` keeps modification times, else they are the
/// time of the copy.
pub fn stage(
    archive: impl Read,
    top: &OsStr,
    target: &Path,
    keep_times: bool,
) -> Result<Staged, UntarError> {
    let name = target
        .file_name()
        .ok_or_else(|| UntarError::NoName(target.to_owned()))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stage = Stage::create(parent)?;
    stage.fill(archive, top, keep_times)?;
    Ok(Staged {
        stage,
        parent: parent.to_owned(),
        name: name.to_owned(),
    })
}

impl Staged {
    /// Moves the copy to the target: created, or replacing a file, or
    /// merged into a directory when both are directories.
    pub fn land(self) -> Result<(), UntarError> {
        self.stage.land(&self.parent, &self.name)
    }
}

/// The private directory an archive is unpacked into, removed when
/// dropped (`remove_dir_all` does not follow symlinks).
struct Stage {
    path: PathBuf,
    fd: OwnedFd,
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The staged copy's name inside the stage.
const DATA: &str = "data";

impl Stage {
    fn create(parent: &Path) -> Result<Self, UntarError> {
        let write_err = |source| UntarError::Write {
            path: parent.to_owned(),
            source,
        };
        for n in 0u32.. {
            let path = parent.join(format!(".msb-cp-{}-{n}", std::process::id()));
            match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    let fd = open_dir(rustix::fs::CWD, &path).map_err(write_err)?;
                    return Ok(Self { path, fd });
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(write_err(e.into())),
            }
        }
        unreachable!("some staging name is free")
    }

    fn fill(&self, archive: impl Read, top: &OsStr, keep_times: bool) -> Result<(), UntarError> {
        let mut archive = tar::Archive::new(archive);
        // Directories get their final modes and times once filled, deepest
        // first, so a read-only one can still be filled.
        let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
        let mut files: HashSet<PathBuf> = HashSet::new();
        let mut any = false;
        for entry in archive.entries().map_err(UntarError::Read)? {
            let mut entry = entry.map_err(UntarError::Read)?;
            let raw = entry.path().map_err(UntarError::Read)?.into_owned();
            let rel = inside(&raw, top).ok_or_else(|| UntarError::Outside(raw.clone()))?;
            let staged = Path::new(DATA).join(&rel);
            let shown = Path::new(top).join(&rel);
            any = true;
            let head = entry.header();
            let mode = head.mode().map_err(UntarError::Read)? & 0o777;
            let mtime = head.mtime().map_err(UntarError::Read)?;
            let kind = head.entry_type();
            let (dir_fd, leaf) = self.parent_of(&staged, &shown)?;
            self.check_space(
                &shown,
                if kind.is_file() {
                    head.size().map_err(UntarError::Read)?
                } else {
                    0
                },
            )?;
            let write_err = |source: io::Error| UntarError::Write {
                path: shown.clone(),
                source,
            };
            let time = keep_times.then(|| timestamps(i64::try_from(mtime).unwrap_or(0)));
            match kind {
                k if k.is_file() || k == tar::EntryType::Continuous => {
                    clear(&dir_fd, &leaf, &shown)?;
                    let fd = rustix::fs::openat(
                        &dir_fd,
                        &leaf,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| write_err(e.into()))?;
                    let mut file = fs::File::from(fd);
                    io::copy(&mut entry, &mut file).map_err(|e| {
                        // The archive's reader fails as a read; the file as a write.
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            UntarError::Read(e)
                        } else {
                            write_err(e)
                        }
                    })?;
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
                        .map_err(|e| write_err(e.into()))?;
                    if let Some(t) = &time {
                        rustix::fs::futimens(&file, t).map_err(|e| write_err(e.into()))?;
                    }
                    files.insert(staged);
                }
                tar::EntryType::Directory => {
                    if file_type(&dir_fd, &leaf) != Some(FileType::Directory) {
                        clear(&dir_fd, &leaf, &shown)?;
                    }
                    match rustix::fs::mkdirat(&dir_fd, &leaf, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::EXIST)
                            if file_type(&dir_fd, &leaf) == Some(FileType::Directory) =>
                        {
                            rustix::fs::chmodat(
                                &dir_fd,
                                &leaf,
                                Mode::from_raw_mode(0o700),
                                AtFlags::empty(),
                            )
                            .map_err(|e| write_err(e.into()))?;
                        }
                        Err(e) => return Err(write_err(e.into())),
                    }
                    dirs.push((staged, mode, i64::try_from(mtime).unwrap_or(0)));
                }
                tar::EntryType::Symlink => {
                    let to = entry
                        .link_name()
                        .map_err(UntarError::Read)?
                        .map(|p| p.into_owned())
                        .unwrap_or_default();
                    clear(&dir_fd, &leaf, &shown)?;
                    rustix::fs::symlinkat(&to, &dir_fd, &leaf).map_err(|e| write_err(e.into()))?;
                    files.remove(&staged);
                }
                tar::EntryType::Link => {
                    let to_raw = entry
                        .link_name()
                        .map_err(UntarError::Read)?
                        .map(|p| p.into_owned())
                        .unwrap_or_default();
                    let bad = || UntarError::BadLink {
                        link: shown.clone(),
                        to: to_raw.clone(),
                    };
                    let to = Path::new(DATA).join(inside(&to_raw, top).ok_or_else(bad)?);
                    // Only regular files this archive unpacked: a link can
                    // then never reach anything else on the host.
                    if !files.contains(&to) {
                        return Err(bad());
                    }
                    let (to_dir, to_leaf) = self.parent_of(&to, &shown)?;
                    clear(&dir_fd, &leaf, &shown)?;
                    rustix::fs::linkat(&to_dir, &to_leaf, &dir_fd, &leaf, AtFlags::empty())
                        .map_err(|e| write_err(e.into()))?;
                    files.insert(staged);
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    eprintln!("skipped special file: {}", escape(&shown));
                }
                // Extension headers the reader has applied already, and
                // kinds a copy has no use for.
                other => {
                    if !matches!(
                        other,
                        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
                    ) {
                        eprintln!("skipped entry of unknown kind: {}", escape(&shown));
                    }
                }
            }
        }
        if !any {
            return Err(UntarError::Empty);
        }
        for (path, mode, mtime) in dirs.iter().rev() {
            let shown = path.clone();
            let write_err = |source: io::Error| UntarError::Write {
                path: shown.clone(),
                source,
            };
            let (dir_fd, leaf) = self.parent_of(path, path)?;
            let fd = open_dir(&dir_fd, &leaf).map_err(write_err)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(*mode)).map_err(|e| write_err(e.into()))?;
            if keep_times {
                rustix::fs::futimens(&fd, &timestamps(*mtime)).map_err(|e| write_err(e.into()))?;
            }
        }
        if file_type(&self.fd, DATA).is_none() {
            return Err(UntarError::Empty);
        }
        Ok(())
    }

    /// The directory that holds `staged` (opened component by component
    /// without following symlinks) and its last component.
    fn parent_of(&self, staged: &Path, shown: &Path) -> Result<(OwnedFd, OsString), UntarError> {
        let mut comps: Vec<&OsStr> = staged.iter().collect();
        let leaf = comps
            .pop()
            .expect("staged paths start with DATA")
            .to_owned();
        let mut dir = self.fd.try_clone().map_err(|source| UntarError::Write {
            path: shown.to_owned(),
            source,
        })?;
        for c in comps {
            dir = open_dir(&dir, c).map_err(|_| UntarError::NoParent(shown.to_owned()))?;
        }
        Ok((dir, leaf))
    }

    fn check_space(&self, shown: &Path, size: u64) -> Result<(), UntarError> {
        let st = rustix::fs::fstatvfs(&self.fd).map_err(|e| UntarError::Write {
            path: shown.to_owned(),
            source: e.into(),
        })?;
        let unit = st.f_frsize.max(1);
        let available = st.f_bavail.saturating_mul(unit);
        let reserve = (st.f_blocks.saturating_mul(unit) / 20).min(RESERVE_BYTES);
        if size.saturating_add(reserve) > available {
            return Err(UntarError::NoSpace {
                path: shown.to_owned(),
                size,
                available,
            });
        }
        // Filesystems without inode counts report zero files.
        if st.f_files > 0 && st.f_favail <= (st.f_files / 20).min(RESERVE_INODES) {
            return Err(UntarError::NoInodes(shown.to_owned()));
        }
        Ok(())
    }

    /// Moves the staged copy to `parent/name`: by one rename when nothing
    /// is there, else replacing a non-directory or merging directories.
    fn land(&self, parent: &Path, name: &OsStr) -> Result<(), UntarError> {
        let write_err = |source: io::Error| UntarError::Write {
            path: parent.to_owned(),
            source,
        };
        let parent_fd = open_dir(rustix::fs::CWD, parent).map_err(write_err)?;
        move_into(
            &self.fd,
            OsStr::new(DATA),
            &parent_fd,
            name,
            &parent.join(name),
        )
    }
}

/// Moves `from_dir/from` to `to_dir/to` (host path `shown`): a rename that
/// replaces nothing, or replaces a non-directory by a non-directory, or
/// merges a directory into a directory entry by entry. The host side is
/// looked at without following symlinks: a symlink there is replaced, not
/// written through.
fn move_into(
    from_dir: &OwnedFd,
    from: &OsStr,
    to_dir: &OwnedFd,
    to: &OsStr,
    shown: &Path,
) -> Result<(), UntarError> {
    let write_err = |source: io::Error| UntarError::Write {
        path: shown.to_owned(),
        source,
    };
    let from_dir_kind = file_type(from_dir, from) == Some(FileType::Directory);
    match file_type(to_dir, to) {
        None => rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE)
            .map_err(|e| write_err(e.into())),
        Some(FileType::Directory) if from_dir_kind => {
            let src = open_dir(from_dir, from).map_err(write_err)?;
            let dst = open_dir(to_dir, to).map_err(write_err)?;
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(&src).map_err(|e| write_err(e.into()))? {
                let e = e.map_err(|e| write_err(e.into()))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(OsStr::from_bytes(n).to_owned());
                }
            }
            names.sort();
            for n in names {
                move_into(&src, &n, &dst, &n, &shown.join(&n))?;
            }
            Ok(())
        }
        Some(_) if from_dir_kind => Err(UntarError::DirOverFile(shown.to_owned())),
        Some(FileType::Directory) => Err(UntarError::FileOverDir(shown.to_owned())),
        Some(_) => {
            rustix::fs::renameat(from_dir, from, to_dir, to).map_err(|e| write_err(e.into()))
        }
    }
}

/// The entry's path below `top` (empty for `top` itself), or `None` if it
/// is not inside it. Leading `./` are ignored, as tar writes them.
fn inside(raw: &Path, top: &OsStr) -> Option<PathBuf> {
    let mut comps = raw.components().peekable();
    while comps.peek() == Some(&Component::CurDir) {
        comps.next();
    }
    if top != "." {
        match comps.next() {
            Some(Component::Normal(first)) if first == top => {}
            _ => return None,
        }
    }
    let mut rel = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(n) if !n.as_bytes().is_empty() => rel.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(rel)
}

/// Takes away a non-directory at `dir/leaf` so that a later entry of the
/// same name replaces it, as tar does.
fn clear(dir: &OwnedFd, leaf: &OsStr, shown: &Path) -> Result<(), UntarError> {
    match file_type(dir, leaf) {
        None => Ok(()),
        Some(FileType::Directory) => Err(UntarError::OverDir(shown.to_owned())),
        Some(_) => {
            rustix::fs::unlinkat(dir, leaf, AtFlags::empty()).map_err(|e| UntarError::Write {
                path: shown.to_owned(),
                source: e.into(),
            })
        }
    }
}

fn file_type(dir: impl AsFd, leaf: impl AsRef<OsStr>) -> Option<FileType> {
    rustix::fs::statat(dir, leaf.as_ref(), AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Opens the directory `dir/leaf`, refusing a symlink.
fn open_dir(dir: impl AsFd, leaf: impl AsRef<Path>) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        leaf.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

fn timestamps(mtime: i64) -> Timestamps {
    Timestamps {
        // The access time is left as it is.
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}
