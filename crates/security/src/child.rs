//! Steps a helper process (QEMU, qemu-storage-daemon) takes between fork
//! and exec to leave the supervisor's privileges behind. Each is
//! async-signal-safe: raw system calls on plain data, no allocation.

use std::io;

/// Takes `uid` and `gid` for good, with no supplementary groups. Raw calls:
/// they change the calling thread's ids only (the child has no other).
/// Leaving uid 0 for good clears the permitted, effective and ambient
/// capability sets.
pub fn take_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: system calls on integers and a null list.
    let failed = unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Has the kernel kill the caller when its parent, `parent`, ends. Call it
/// after any change of ids, which clears that signal. Exits at once if the
/// parent already ended before the signal was armed.
pub fn die_with(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; getppid and _exit have no
    // preconditions.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}
