//! Commands in a microVM sandbox. The relay speaks the guest agent's
//! protocol to the sandbox's supervisor (which owns the VM's control
//! channel and renumbers the command) over its exec socket: it sends the
//! command's input and signals, and delivers its output and exit status.
//!
//! Most commands are relayed by threads of the calling process
//! ([`start`]), so running one costs no process start on this side. A
//! command on a terminal is relayed by a process instead (`msb exec -t`
//! on a VM starts one through `$MSB_VM_RELAY`): its standard streams are
//! a local pty whose size changes reach it as SIGWINCH, and its exit
//! status stands for the command's, so every way of running a command
//! works the same on both backends.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use msb_agent_protocol::{
    ExecRequest, Frame, GuestMessage, HostMessage, MAX_DATA_CHUNK, read_message,
};
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

/// Sends a relayed command's input, signals and window size changes; cheap
/// to clone, usable from any thread.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    writer: Arc<Mutex<UnixStream>>,
}

impl Control {
    fn send(&self, msg: &HostMessage) -> io::Result<()> {
        let frame = msg.to_frame().map_err(io::Error::other)?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&frame)
    }

    /// Sends signal `signo` to the command; one that already ended (its
    /// connection closed) is not an error. The supervisor knows the command
    /// by this connection alone, so a late signal never reaches another
    /// process.
    pub(crate) fn signal(&self, signo: i32) -> io::Result<()> {
        match self.send(&HostMessage::Signal { id: 0, signo }) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Tells the command's terminal its new size.
    fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        self.send(&HostMessage::Resize { id: 0, rows, cols })
    }
}

/// Where a relayed command's input comes from.
pub(crate) enum Input {
    /// None: the command's standard input is the guest's `/dev/null`.
    None,
    /// This process's standard input.
    Ours,
    /// A descriptor read until its end (a pipe's read side).
    Fd(OwnedFd),
}

/// Where a relayed command's output goes.
pub(crate) enum Output {
    /// This process's standard output and error.
    Ours,
    /// Each chunk handed to this function (with true when it came from
    /// standard error); once it returns false the rest is discarded, and
    /// the command keeps running.
    Chunks(Box<dyn FnMut(Vec<u8>, bool) -> bool + Send>),
}

/// Whether this process's standard input is `/dev/null`: a command then
/// needs no input relayed (the guest gives it its own `/dev/null`).
pub(crate) fn stdin_is_null() -> bool {
    let (Ok(ours), Ok(null)) = (
        rustix::fs::fstat(io::stdin().as_fd()),
        rustix::fs::stat("/dev/null"),
    ) else {
        return false;
    };
    let is_char = |st: &rustix::fs::Stat| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
    };
    is_char(&ours) && is_char(&null) && ours.st_rdev == null.st_rdev
}

/// Starts `request` through the supervisor at `socket` and relays it on
/// threads of this process; returns once the request is sent, with what
/// controls the command. Once it ended and all of its output was
/// delivered, `exited` gets its exit status: the code, or 128+N for
/// signal N; 126 or 127 when it could not start, [`LOST`] when the
/// sandbox went away.
pub(crate) fn start(
    socket: &Path,
    mut request: ExecRequest,
    input: Input,
    output: Output,
    exited: impl FnOnce(i32) + Send + 'static,
) -> io::Result<Control> {
    let stream = UnixStream::connect(socket)?;
    let control = Control {
        writer: Arc::new(Mutex::new(stream.try_clone()?)),
    };
    request.id = 0;
    request.stdin = !matches!(input, Input::None);
    control.send(&HostMessage::Exec(request))?;
    // Its write side is dropped when the command ends, which tells the
    // input thread to stop reading (input arriving later has no reader).
    let (ended_r, ended_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    match input {
        Input::None => drop(ended_r),
        Input::Ours => {
            let control = control.clone();
            std::thread::spawn(move || feed(io::stdin().as_fd(), &ended_r, &control));
        }
        Input::Fd(fd) => {
            let control = control.clone();
            std::thread::spawn(move || feed(fd.as_fd(), &ended_r, &control));
        }
    }
    std::thread::spawn(move || {
        let status = deliver(stream, output, None);
        drop(ended_w);
        exited(status);
    });
    Ok(control)
}

/// Copies `input` to the command until its end (then closes the
/// command's input) or until `ended` polls readable (the command ended).
fn feed(input: BorrowedFd<'_>, ended: &OwnedFd, control: &Control) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: input.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ended.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        match rustix::io::read(input, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let data = buf[..n].to_vec();
                if control.send(&HostMessage::Stdin { id: 0, data }).is_err() {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => break,
        }
    }
    let _ = control.send(&HostMessage::StdinClose { id: 0 });
}

/// Writes all of `data` to one of our own streams.
fn write_ours(stderr: bool, data: &[u8]) -> io::Result<()> {
    if stderr {
        let mut err = io::stderr().lock();
        err.write_all(data)?;
        err.flush()
    } else {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
}

/// Delivers the command's output until it ends and returns its exit
/// status. Its start failure, or the sandbox going away, is told on its
/// standard error. `terminal` is restored before such a message.
fn deliver(stream: UnixStream, mut output: Output, terminal: Option<RawTerminal>) -> i32 {
    let mut reader = io::BufReader::new(stream);
    let mut open = true;
    let mut emit = |data: Vec<u8>, stderr: bool| -> io::Result<()> {
        match &mut output {
            Output::Ours => write_ours(stderr, &data),
            Output::Chunks(deliver) => {
                if open {
                    open = deliver(data, stderr);
                }
                Ok(())
            }
        }
    };
    let (code, message) = loop {
        let msg: GuestMessage = match read_message(&mut reader) {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                break (
                    LOST,
                    "the sandbox's supervisor is gone: the connection closed".to_string(),
                );
            }
            Err(e) => break (LOST, format!("the sandbox's supervisor is gone: {e}")),
        };
        let sent = match msg {
            GuestMessage::Stdout { data, .. } => emit(data, false),
            GuestMessage::Stderr { data, .. } => emit(data, true),
            GuestMessage::Exited { status, .. } => return status,
            GuestMessage::StartFailed { code, message, .. } => break (code, message),
            GuestMessage::Error { message, .. } => break (LOST, message),
            _ => Ok(()),
        };
        // Our own stream closed: nobody is left to read the output, so the
        // command is let go (the supervisor ends it when we disconnect).
        if let Err(e) = sent {
            break (LOST, format!("cannot pass the command's output on: {e}"));
        }
    };
    drop(terminal);
    let _ = emit(format!("error: {message}\n").into_bytes(), true);
    code
}

/// Runs the relay described by `$MSB_VM_RELAY` (a command on a terminal)
/// and returns its exit status: the command's, or 126/127 when it could
/// not start. The caller must have blocked the forwarded signals before
/// starting any thread.
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

/// The relay process: our standard streams stand for the command's, our
/// signals are passed on to it, a change of our terminal's size resizes
/// its terminal.
fn relay(socket: &Path, mut request: ExecRequest) -> io::Result<i32> {
    let stream = UnixStream::connect(socket)?;
    let control = Control {
        writer: Arc::new(Mutex::new(stream.try_clone()?)),
    };
    request.id = 0;
    let tty = request.tty.is_some();
    let raw = if tty {
        if let Some(size) = window_size(io::stdin().as_fd()) {
            request.tty = Some(size);
        }
        RawTerminal::enter(io::stdin().as_fd())
    } else {
        None
    };
    let wants_stdin = request.stdin;
    control.send(&HostMessage::Exec(request))?;
    // The process exits when the command ends: nothing needs to stop the
    // input thread, so the write side of `ended` is simply kept.
    let (ended, _keep) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    if wants_stdin {
        let control = control.clone();
        std::thread::spawn(move || feed(io::stdin().as_fd(), &ended, &control));
    }
    std::thread::spawn(move || {
        loop {
            let (signo, _) = msb_runtime::next_signal();
            let sent = if signo == libc::SIGWINCH {
                match window_size(io::stdin().as_fd()) {
                    Some((rows, cols)) if tty => control.resize(rows, cols),
                    _ => continue,
                }
            } else {
                control.signal(signo)
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(deliver(stream, Output::Ours, raw))
}
