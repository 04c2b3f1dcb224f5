//! The launcher: a child of the agent that confined itself once with the
//! plan's security profile and starts every command of a confined guest.
//! Installing a profile's system call filter costs about 10 ms per command
//! under emulation; a command forked from a process that already has it
//! inherits it for nothing.
//!
//! The launcher starts each command with `CLONE_PARENT`, so the command is
//! the agent's child as an unconfined one is: the agent reaps it and keeps
//! its pid away from its reaper while it waits for the launcher's answer.
//! The launcher is not dumpable, so a confined command (which lacks
//! `CAP_SYS_PTRACE`) cannot trace it; killing it only costs the guest its
//! later commands until the agent starts another.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use msb_security::{Confinement, Security};
use serde::{Deserialize, Serialize};

use crate::sys::{self, ChildStdio};

/// The argument that makes the agent binary run as the launcher.
const LAUNCHER_ARG: &str = "--msb-launcher";
/// The descriptor the launcher finds its socket at.
const SOCKET_FD: RawFd = 3;
/// The largest request: argv and environment of one command.
const MAX_REQUEST: usize = 1 << 20;

/// One command to start, as the launcher receives it; its three stdio
/// descriptors (none with a terminal) travel beside it.
#[derive(Serialize, Deserialize)]
struct Request {
    program: Vec<u8>,
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    /// The terminal to open as 0, 1 and 2, if any.
    terminal: Option<Vec<u8>>,
}

/// Runs the launcher if this process was started as one; never returns
/// then.
pub fn main_if_launcher() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(LAUNCHER_ARG) {
        return;
    }
    let code = match args.next().map(|s| s.parse::<Security>()) {
        Some(Ok(security)) => match serve(security) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("msb-agent launcher: {e}");
                1
            }
        },
        _ => 2,
    };
    std::process::exit(code);
}

fn serve(security: Security) -> io::Result<()> {
    let confinement = Confinement::new(security).map_err(io::Error::other)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    confinement.apply()?;
    // SAFETY: descriptor 3 was handed to us as the socket and is ours alone.
    let socket = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, fds) = recv(&socket, &mut buf)?;
        if len == 0 {
            // The agent is gone.
            return Ok(());
        }
        let answer: i64 = match start(&buf[..len], &fds) {
            Ok(pid) => i64::from(pid),
            Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EINVAL)),
        };
        drop(fds);
        send(&socket, &answer.to_ne_bytes(), &[])?;
    }
}

/// Starts one command as a sibling (the agent's child).
fn start(request: &[u8], fds: &[OwnedFd]) -> io::Result<libc::pid_t> {
    let r: Request = serde_json::from_slice(request).map_err(io::Error::other)?;
    let stdio = match (&r.terminal, fds) {
        (Some(path), []) => ChildStdio::Terminal(sys::cstr(path)?),
        (None, [a, b, c]) => ChildStdio::Fds([a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()]),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    use std::os::unix::ffi::OsStrExt;
    let program = std::ffi::OsStr::from_bytes(&r.program);
    sys::spawn_sibling(program.as_ref(), &r.argv, &r.env, &r.cwd, &stdio)
}

/// The agent's end: starts the launcher and asks it for commands.
pub struct Launcher {
    security: Security,
    /// The socket to the launcher; replaced if the launcher died.
    conn: Mutex<Option<OwnedFd>>,
}

impl Launcher {
    /// Starts a launcher confined with `security` (now, so that the first
    /// command does not wait for it).
    pub fn start(security: Security) -> io::Result<Launcher> {
        let launcher = Launcher {
            security,
            conn: Mutex::new(None),
        };
        *launcher.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(launcher.launch()?);
        Ok(launcher)
    }

    fn launch(&self) -> io::Result<OwnedFd> {
        let (ours, theirs) = socketpair()?;
        let theirs_fd = theirs.as_raw_fd();
        let name = serde_json::to_value(self.security)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args([LAUNCHER_ARG, &name]);
        // SAFETY: dup2 and fcntl only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_fd == SOCKET_FD {
                    if libc::fcntl(SOCKET_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The agent's reaper reaps it whenever it ends.
        cmd.spawn()?;
        drop(theirs);
        Ok(ours)
    }

    /// Starts `program` in the launcher as [`sys::spawn`] would with the
    /// launcher's confinement; returns the pid of the agent's new child.
    pub fn spawn(
        &self,
        program: &std::path::Path,
        argv: &[String],
        env: &[String],
        cwd: &str,
        stdio: &ChildStdio,
    ) -> io::Result<libc::pid_t> {
        use std::os::unix::ffi::OsStrExt;
        let (terminal, fds) = match stdio {
            ChildStdio::Fds(fds) => (None, fds.to_vec()),
            ChildStdio::Terminal(path) => (Some(path.as_bytes().to_vec()), Vec::new()),
        };
        let request = serde_json::to_vec(&Request {
            program: program.as_os_str().as_bytes().to_vec(),
            argv: argv.to_vec(),
            env: env.to_vec(),
            cwd: cwd.to_owned(),
            terminal,
        })
        .map_err(io::Error::other)?;
        if request.len() > MAX_REQUEST {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // One retry with a fresh launcher if the old one is gone.
        for _ in 0..2 {
            if conn.is_none() {
                *conn = Some(self.launch()?);
            }
            let socket = conn.as_ref().expect("just set");
            let mut answer = [0u8; 8];
            let asked = send(socket, &request, &fds)
                .and_then(|()| recv(socket, &mut answer))
                .and_then(|(n, _)| match n {
                    8 => Ok(i64::from_ne_bytes(answer)),
                    _ => Err(io::Error::from_raw_os_error(libc::EPIPE)),
                });
            match asked {
                Ok(pid) if pid > 0 => return Ok(pid as libc::pid_t),
                Ok(errno) => return Err(io::Error::from_raw_os_error(-errno as i32)),
                Err(_) => *conn = None,
            }
        }
        Err(io::Error::other("the command launcher is gone"))
    }
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is valid for two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us both.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of up to three descriptors.
const CMSG_ROOM: usize = 64;

fn send(socket: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    // SAFETY: msghdr is plain data; every pointer set below points into
    // buffers that outlive the sendmsg call, and the control message is
    // written within the room CMSG_SPACE says it needs.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds);
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        if libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; CMSG_ROOM / 8];
    let mut fds = Vec::new();
    // SAFETY: as in `send`; descriptors the kernel passed are taken over
    // exactly once each.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM;
        let n = loop {
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count =
                    ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok((n, fds))
    }
}
