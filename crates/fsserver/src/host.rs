//! Running a server as a host process (`msb volume mount`): stop signals and
//! detaching into the background.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// Signals that stop a foreground server.
const STOP: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialize and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// starts afterwards, so [`wait_stop_signal`] can take them. Call it before
/// starting a server.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_set();
    // SAFETY: changes only this thread's signal mask, with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGINT or SIGTERM (blocked by [`block_stop_signals`]) and
/// returns which arrived.
pub fn wait_stop_signal() -> libc::c_int {
    let set = stop_set();
    let mut sig = 0;
    // SAFETY: sigwait reads a valid set and writes one int.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    sig
}

/// Which side of [`detach`] this is.
pub enum Detached {
    /// The foreground process: the background one's report of its start.
    Parent(Result<(), String>),
    /// The background process, to report its start through.
    Child(Ready),
}

/// The background side's channel back to the waiting foreground process.
pub struct Ready(OwnedFd);

impl Ready {
    /// Reports a successful start and disconnects from the terminal.
    pub fn ok(self) {
        self.send("ok");
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: replaces the standard descriptors with /dev/null.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }

    /// Reports a failed start.
    pub fn fail(self, message: &str) {
        self.send(message);
    }

    fn send(&self, msg: &str) {
        // A lost report shows as "exited before it was ready" on the other side.
        if let Ok(fd) = self.0.try_clone() {
            let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
        }
    }
}

/// Forks into a background process in its own session. Must be called while
/// the process is single-threaded. The parent waits until the child calls
/// [`Ready::ok`] or [`Ready::fail`] (or dies).
pub fn detach() -> io::Result<Detached> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: the caller guarantees a single-threaded process, so the child
    // may keep running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(read);
            // SAFETY: starts a new session for this (child) process.
            unsafe { libc::setsid() };
            Ok(Detached::Child(Ready(write)))
        }
        _ => {
            drop(write);
            let mut msg = String::new();
            let _ = std::fs::File::from(read).read_to_string(&mut msg);
            Ok(Detached::Parent(match msg.as_str() {
                "ok" => Ok(()),
                "" => Err("the background server exited before it was ready".into()),
                _ => Err(msg),
            }))
        }
    }
}

/// The user who invoked the command (under sudo, the one who ran sudo): the
/// owner shown for files without a metadata record.
pub fn invoking_user() -> (u32, u32) {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    (
        var("SUDO_UID").unwrap_or_else(|| rustix::process::getuid().as_raw()),
        var("SUDO_GID").unwrap_or_else(|| rustix::process::getgid().as_raw()),
    )
}
