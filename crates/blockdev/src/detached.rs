//! Mounts that are attached nowhere: the new mount API (`fsopen`,
//! `fsconfig`, `fsmount`) yields a mount only reachable through its
//! descriptor, so nothing appears in any mount table and the mount goes away
//! with the last descriptor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_flag,
    fsconfig_set_string, fsmount, fsopen,
};

/// Why a detached mount failed.
#[derive(Debug, thiserror::Error)]
pub enum DetachedError {
    #[error("cannot {step} {fstype} filesystem on {device}")]
    Mount {
        step: &'static str,
        fstype: String,
        device: String,
        #[source]
        source: io::Error,
    },
}

/// A detached mount; its descriptor is the root directory of the mounted
/// filesystem, usable with `openat` and friends or attachable with
/// `move_mount`.
#[derive(Debug)]
pub struct DetachedMount {
    root: OwnedFd,
}

impl DetachedMount {
    /// The mount's root directory.
    pub fn into_fd(self) -> OwnedFd {
        self.root
    }
}

impl AsFd for DetachedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Mounts the `fstype` filesystem on `device` without attaching it anywhere.
/// `attrs` are the per-mount flags (read-only, nosuid, ...); `readonly` also
/// opens the filesystem itself read-only so no journal replay writes.
pub fn mount_detached(
    device: &Path,
    fstype: &str,
    readonly: bool,
    attrs: MountAttrFlags,
) -> Result<DetachedMount, DetachedError> {
    let err = |step: &'static str| {
        move |e: rustix::io::Errno| DetachedError::Mount {
            step,
            fstype: fstype.to_string(),
            device: device.display().to_string(),
            source: e.into(),
        }
    };
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("open"))?;
    fsconfig_set_string(&fs, "source", device).map_err(err("configure"))?;
    if readonly {
        fsconfig_set_flag(&fs, "ro").map_err(err("configure"))?;
    }
    fsconfig_create(&fs).map_err(err("mount"))?;
    let attrs = if readonly {
        attrs | MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        attrs
    };
    let root = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("mount"))?;
    Ok(DetachedMount { root })
}
