//! Commands in a microVM sandbox, seen from the host as ordinary child
//! processes: `msb exec` on a VM starts a relay process whose standard
//! streams, exit status and signals stand for the command's. The relay
//! speaks the guest agent's protocol to the sandbox's supervisor (which
//! owns the VM's control channel and renumbers the command), so every way
//! of running a command (`output`, streams, a pty, forwarded signals) works
//! the same on both backends.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use msb_agent_protocol::{ExecRequest, GuestMessage, HostMessage, read_message, write_message};
use serde::{Deserialize, Serialize};

/// Set in a relay process: a [`RelayOrder`] as JSON.
pub(crate) const RELAY_ENV: &str = "MSB_VM_RELAY";

/// What a relay process is asked to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RelayOrder {
    /// The supervisor's exec socket.
    pub socket: PathBuf,
    /// The command (its id is the relay's own, 0).
    pub request: ExecRequest,
}

/// The exit status a relay reports when the sandbox went away under it.
const LOST: i32 = 255;

/// Runs the relay described by `$MSB_VM_RELAY` and returns its exit
/// status: the command's, or 126/127 when it could not start. The caller
/// must have blocked the forwarded signals before starting any thread.
pub(crate) fn relay_main(order: &str) -> i32 {
    let order: RelayOrder = match serde_json::from_str(order) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: malformed relay order: {e}");
            return LOST;
        }
    };
    match relay(&order.socket, order.request) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: the sandbox's supervisor is gone: {e}");
            LOST
        }
    }
}

/// Puts a terminal into raw mode for the relay's lifetime: the guest's
/// terminal does the line editing and signal keys.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enter(fd: BorrowedFd<'_>) -> Option<Self> {
        let saved = rustix::termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(fd)
        .ok()
        .map(|w| (w.ws_row, w.ws_col))
}

fn relay(socket: &Path, mut request: ExecRequest) -> io::Result<i32> {
    let stream = UnixStream::connect(socket)?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let send = {
        let writer = writer.clone();
        move |msg: &HostMessage| -> io::Result<()> {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            write_message(&mut *w, msg).map_err(io::Error::other)
        }
    };
    request.id = 0;
    let tty = request.tty.is_some();
    let _raw = if tty {
        if let Some(size) = window_size(io::stdin().as_fd()) {
            request.tty = Some(size);
        }
        RawTerminal::enter(io::stdin().as_fd())
    } else {
        None
    };
    let wants_stdin = request.stdin;
    send(&HostMessage::Exec(request))?;
    if wants_stdin {
        let send = send.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        if send(&HostMessage::Stdin { id: 0, data }).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = send(&HostMessage::StdinClose { id: 0 });
        });
    }
    {
        let send = send.clone();
        std::thread::spawn(move || {
            loop {
                let (signo, _) = msb_runtime::next_signal();
                let msg = if signo == libc::SIGWINCH {
                    match window_size(io::stdin().as_fd()) {
                        Some((rows, cols)) if tty => HostMessage::Resize { id: 0, rows, cols },
                        _ => continue,
                    }
                } else {
                    HostMessage::Signal { id: 0, signo }
                };
                if send(&msg).is_err() {
                    return;
                }
            }
        });
    }
    let mut reader = io::BufReader::new(stream);
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    loop {
        let msg: Option<GuestMessage> = read_message(&mut reader).map_err(io::Error::other)?;
        match msg {
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(GuestMessage::Stdout { data, .. }) => {
                out.write_all(&data)?;
                out.flush()?;
            }
            Some(GuestMessage::Stderr { data, .. }) => {
                err.write_all(&data)?;
                err.flush()?;
            }
            Some(GuestMessage::Exited { status, .. }) => return Ok(status),
            Some(GuestMessage::StartFailed { code, message, .. }) => {
                drop(_raw);
                eprintln!("error: {message}");
                return Ok(code);
            }
            Some(GuestMessage::Error { message, .. }) => {
                drop(_raw);
                eprintln!("error: {message}");
                return Ok(LOST);
            }
            Some(_) => {}
        }
    }
}
