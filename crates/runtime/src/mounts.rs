//! Per-mount flags, shared by the supervisor (mounts it makes for the
//! sandbox) and the init (mounts it makes itself).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

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

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets per-mount flags on a whole detached tree (rustix has no
/// `mount_setattr`).
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
    let attr = MountAttr {
        attr_set: u64::from(a.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a fully initialized struct mount_attr whose size is
    // passed along; the empty path is a valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL))
    } else {
        Ok(())
    }
}
