//! User namespaces that describe idmapped mounts, and `mount_setattr`,
//! which applies them (and other per-mount flags) to mounts.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::mount::MountAttrFlags;

/// A user namespace with the given uid and gid maps (`uid_map` syntax),
/// held only to describe an idmapped mount to `mount_setattr`: a child
/// enters it and waits until its maps are written and the namespace is
/// open, then exits. Used for the daemon's image here and by the runtime
/// for sandbox storage.
pub fn id_map_namespace(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (hold_read, hold_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: clone without CLONE_VM behaves like fork; the child only
    // calls close, read and _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child: drops its copy of the write end, then
        // waits for the parent's to close.
        unsafe {
            libc::close(hold_write.as_raw_fd());
            let mut b = 0u8;
            libc::read(hold_read.as_raw_fd(), (&raw mut b).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(hold_read);
    let pid = pid as i32;
    let result = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        Ok(OwnedFd::from(File::open(format!("/proc/{pid}/ns/user"))?))
    })();
    drop(hold_write);
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    result
}

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `attrs` on the mount `mount` (a detached tree or an open mount
/// point), on its submounts too if `recursive`; with `MOUNT_ATTR_IDMAP`,
/// ids map through the user namespace `userns`. rustix has no
/// `mount_setattr`.
pub fn set_mount_attrs(
    mount: &OwnedFd,
    attrs: MountAttrFlags,
    userns: Option<&OwnedFd>,
    recursive: bool,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: u64::from(attrs.bits()),
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
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
