//! User namespaces that describe idmapped mounts.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

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
