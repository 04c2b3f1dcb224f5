//! Per-mount flags, shared by the supervisor (mounts it makes for the
//! sandbox) and the init (mounts it makes itself).

use std::os::fd::OwnedFd;

use msb_spec::MountFlags;
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

/// The kernel's per-mount flags for `f`.
pub(crate) fn attrs(f: MountFlags) -> MountAttrFlags {
    let mut a = MountAttrFlags::empty();
    if f.readonly {
        a |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if f.noexec {
        a |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
    }
    if f.nosuid {
        a |= MountAttrFlags::MOUNT_ATTR_NOSUID;
    }
    if f.nodev {
        a |= MountAttrFlags::MOUNT_ATTR_NODEV;
    }
    a
}

/// Sets per-mount flags on a detached tree, on its submounts too if
/// `recursive`.
pub(crate) fn set_attrs(fd: &OwnedFd, a: MountAttrFlags, recursive: bool) -> Result<(), Errno> {
    if a.is_empty() {
        return Ok(());
    }
    setattr(fd, a, None, recursive)
}

/// Makes the detached mount `fd` show ids mapped through the user
/// namespace `userns` (see [`crate::idmap`]).
pub(crate) fn set_idmap(fd: &OwnedFd, userns: &OwnedFd) -> Result<(), Errno> {
    // Recursive: a bind's submounts are stored under the same ids.
    setattr(fd, MountAttrFlags::MOUNT_ATTR_IDMAP, Some(userns), true)
}

fn setattr(
    fd: &OwnedFd,
    a: MountAttrFlags,
    userns: Option<&OwnedFd>,
    recursive: bool,
) -> Result<(), Errno> {
    msb_blockdev::set_mount_attrs(fd, a, userns, recursive)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::INVAL))
}
