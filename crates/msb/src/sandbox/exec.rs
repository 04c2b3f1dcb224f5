//! Commands in a running named sandbox. A command joins the sandbox's
//! namespaces (like `nsenter`) with the workload's privileges, the
//! sandbox's environment and working directory, and then runs in one of
//! three ways: collected ([`ExecBuilder::output`]), streamed
//! ([`ExecBuilder::spawn`] and [`ExecStream`]), or on a terminal
//! ([`ExecBuilder::spawn_pty`] and [`ExecPty`]).
//!
//! ```no_run
//! # async fn demo(sb: msb::Sandbox) -> Result<(), msb::ExecError> {
//! use msb::ExecEvent;
//! let mut run = sb.exec_stream("sh", ["-c", "for i in 1 2 3; do echo $i; sleep 1; done"]).await?;
//! while let Some(event) = run.next().await {
//!     if let ExecEvent::Stdout(bytes) = event {
//!         print!("{}", String::from_utf8_lossy(&bytes));
//!     }
//! }
//! assert_eq!(run.wait().await?, 0);
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use msb_runtime::{JoinError, SandboxNamespaces};
use msb_spec::{GuestPath, MountError};
use tokio::sync::{mpsc, oneshot};

use super::Sandbox;
use super::relay;

/// How a command in a microVM sandbox is relayed.
enum VmRelay {
    /// By threads of this process.
    Threads(VmInput, VmOutput),
    /// By a relay process (whose streams are a terminal).
    Process,
}

/// A relayed command's input.
enum VmInput {
    /// None (the guest's `/dev/null`).
    None,
    /// This process's standard input.
    Ours,
    /// A pipe whose write side the caller gets.
    Pipe,
}

/// A relayed command's output.
enum VmOutput {
    /// This process's standard output and error.
    Ours,
    /// The stream's events.
    Events,
}

/// A command once started.
enum Started {
    /// A process of this host (in the sandbox, or a relay).
    Child(Child),
    /// A microVM sandbox's command relayed by threads of this process.
    Relayed(ExecStream),
}

impl Started {
    fn stream(self) -> Result<ExecStream> {
        match self {
            Started::Child(child) => ExecStream::new(child),
            Started::Relayed(stream) => Ok(stream),
        }
    }
}

/// Errors of running a command in a named sandbox.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The sandbox is stopped.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The program name is empty.
    #[error("the command is empty")]
    NoCommand,
    /// An environment variable name is empty or holds `=` or NUL (or its
    /// value holds NUL).
    #[error("invalid environment variable name {0:?}")]
    Env(String),
    /// The working directory is not an absolute guest path.
    #[error("invalid working directory")]
    Workdir(#[source] MountError),
    /// Entering the sandbox or starting the command failed
    /// ([`ExecError::exit_code`] tells "not found" apart).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The terminal could not be set up.
    #[error("cannot allocate a terminal in the sandbox")]
    Pty(#[source] io::Error),
    /// The command's standard input could not be set up for writing.
    #[error("cannot open the command's input for writing")]
    Stdin(#[source] io::Error),
    /// The command's streams could not be read.
    #[error("cannot collect the command's output")]
    Io(#[source] io::Error),
    /// Waiting for the command failed.
    #[error("cannot wait for the command")]
    Wait(#[source] io::Error),
    /// Signalling the command failed.
    #[error("cannot signal the command")]
    Signal(#[source] io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
    /// `preserve_fds` asked of a microVM sandbox.
    #[error("descriptors cannot be passed into a microVM sandbox")]
    PreserveOnVm,
    /// No helper program was found (see [`crate::sandbox_init_hook`]).
    #[error(
        "cannot find the msb binary that relays commands into a microVM; set MSB_BIN to it, put it on PATH, or call msb::sandbox_init_hook() first in main"
    )]
    NoHelper,
    /// The command's relay (a connection to a microVM sandbox's
    /// supervisor, or a relay process) could not start.
    #[error("cannot start the command's relay")]
    Spawn(#[source] io::Error),
}

impl ExecError {
    /// The exit status a shell reports for this failure: 127 when the
    /// command does not exist, 126 when it cannot be executed, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Join(e) => e.exit_code(),
            _ => 1,
        }
    }
}

type Result<T, E = ExecError> = std::result::Result<T, E>;

/// What a command run with [`ExecBuilder::output`] (or [`Sandbox::exec`])
/// produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status: the code, or 128+N when killed by signal N.
    pub status: i32,
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The environment every command gets before the sandbox's and its own.
const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("HOSTNAME", "msb"),
];

/// A shell's exit status: the code, or 128+N when killed by signal N.
fn status_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Describes a command to run in a running named sandbox; see
/// [`Sandbox::command`].
#[derive(Debug, Clone)]
pub struct ExecBuilder {
    sandbox: Sandbox,
    command: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    preserve_fds: u32,
}

impl ExecBuilder {
    pub(super) fn new(sandbox: Sandbox, program: String) -> Self {
        Self {
            sandbox,
            command: vec![program],
            env: Vec::new(),
            preserve_fds: 0,
            workdir: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.command.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.command.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for this command, over the sandbox's.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Working directory of this command instead of the sandbox's.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Passes this process's descriptors 3 to 3+`n`-1 on to the command, at
    /// the same numbers (every other descriptor above 2 is closed, as is
    /// any by default). They must be open and not close-on-exec.
    pub fn preserve_fds(mut self, n: u32) -> Self {
        self.preserve_fds = n;
        self
    }

    /// Joins the sandbox and spawns the command with `stdio`; `setup`
    /// runs in the child first (with full privileges). In a microVM
    /// sandbox, `vm` says how the command is relayed instead.
    fn spawn_with(
        self,
        stdio: impl FnOnce(i32) -> Result<[Stdio; 3]>,
        setup: Option<fn() -> io::Result<()>>,
        vm: VmRelay,
    ) -> Result<Started> {
        let config = self.sandbox.config();
        if self.command[0].is_empty() {
            return Err(ExecError::NoCommand);
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(ExecError::Env(k.clone()));
            }
        }
        let workdir = match &self.workdir {
            Some(w) if w == "/" => "/".to_string(),
            Some(w) => GuestPath::new(w.as_str())
                .map_err(ExecError::Workdir)?
                .to_string(),
            None => config
                .workdir()
                .map_or_else(|| "/".to_string(), |w| w.to_string()),
        };
        let not_running = || ExecError::NotRunning(self.sandbox.name().to_string());
        let files = self.sandbox.files();
        if files.exec_socket.exists() {
            if !files.running() {
                return Err(not_running());
            }
            if self.preserve_fds > 0 {
                return Err(ExecError::PreserveOnVm);
            }
            return match vm {
                VmRelay::Process => self
                    .spawn_relay(&files.exec_socket, workdir, stdio, setup)
                    .map(Started::Child),
                VmRelay::Threads(input, output) => {
                    self.relay(&files.exec_socket, workdir, input, output)
                }
            };
        }
        let init = files.init_pid().ok_or_else(not_running)?;
        let namespaces = SandboxNamespaces::open(init);
        // The pid file is trusted only while the lock says the init is ours
        // (a sandbox stopping meanwhile is just not running).
        if !files.running() {
            return Err(not_running());
        }
        let namespaces = namespaces?;
        let [stdin, stdout, stderr] = stdio(init)?;
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_clear()
            .envs(BASE_ENV)
            .envs(config.env().iter().map(|(k, v)| (k, v)))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        if let Some(setup) = setup {
            // SAFETY: `setup` makes only async-signal-safe system calls.
            unsafe { cmd.pre_exec(setup) };
        }
        Ok(Started::Child(namespaces.spawn(
            &mut cmd,
            &workdir,
            config.security(),
            self.preserve_fds,
        )?))
    }

    /// The request that runs this command in a microVM sandbox.
    fn request(&self, workdir: String, tty: bool) -> msb_agent_protocol::ExecRequest {
        msb_agent_protocol::ExecRequest {
            id: 0,
            argv: self.command.clone(),
            env: self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            workdir: Some(workdir),
            // The relay gives the size of its terminal.
            tty: tty.then_some((0, 0)),
            stdin: true,
        }
    }

    /// A microVM sandbox's command relayed by threads of this process.
    fn relay(
        &self,
        socket: &std::path::Path,
        workdir: String,
        input: VmInput,
        output: VmOutput,
    ) -> Result<Started> {
        let request = self.request(workdir, false);
        let (input, stdin) = match input {
            VmInput::None => (relay::Input::None, None),
            VmInput::Ours if relay::stdin_is_null() => (relay::Input::None, None),
            VmInput::Ours => (relay::Input::Ours, None),
            VmInput::Pipe => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| ExecError::Stdin(e.into()))?;
                (relay::Input::Fd(r), Some(w))
            }
        };
        let (tx, events) = mpsc::channel(64);
        let output = match output {
            VmOutput::Ours => {
                drop(tx);
                relay::Output::Ours
            }
            VmOutput::Events => relay::Output::Chunks(Box::new(move |data, stderr| {
                let event = if stderr {
                    ExecEvent::Stderr(data)
                } else {
                    ExecEvent::Stdout(data)
                };
                tx.blocking_send(event).is_ok()
            })),
        };
        let (exit_tx, exit) = oneshot::channel();
        // As a process's status, which holds 8 bits of the code.
        let exited = move |code: i32| {
            let _ = exit_tx.send(Ok(ExitStatus::from_raw((code & 0xff) << 8)));
        };
        let control =
            relay::start(socket, request, input, output, exited).map_err(ExecError::Spawn)?;
        Ok(Started::Relayed(ExecStream {
            stdin,
            events,
            exit,
            signaller: ExecSignaller {
                target: SignalTarget::Vm(control),
            },
        }))
    }

    /// A microVM sandbox's command: a relay process on this side stands for
    /// it (see [`super::relay`]).
    fn spawn_relay(
        &self,
        socket: &std::path::Path,
        workdir: String,
        stdio: impl FnOnce(i32) -> Result<[Stdio; 3]>,
        setup: Option<fn() -> io::Result<()>>,
    ) -> Result<Child> {
        let helper = super::Helper::find().ok_or(ExecError::NoHelper)?;
        let order = relay::RelayOrder {
            socket: socket.to_path_buf(),
            request: self.request(workdir, setup.is_some()),
        };
        let order = serde_json::to_string(&order).map_err(|e| ExecError::Io(e.into()))?;
        let [stdin, stdout, stderr] = stdio(0)?;
        let mut cmd = Command::new(&helper.program);
        cmd.env(relay::RELAY_ENV, order)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        if let Some(setup) = setup {
            // SAFETY: `setup` makes only async-signal-safe system calls.
            unsafe { cmd.pre_exec(setup) };
        }
        cmd.spawn().map_err(ExecError::Spawn)
    }

    /// Runs the command with no input, collecting its exit status and
    /// output.
    pub async fn output(self) -> Result<ExecOutput> {
        // A process is waited for here; a relayed command's stream after.
        let started =
            tokio::task::spawn_blocking(move || -> Result<Result<ExecStream, ExecOutput>> {
                match self.spawn_with(
                    |_| Ok([Stdio::null(), Stdio::piped(), Stdio::piped()]),
                    None,
                    VmRelay::Threads(VmInput::None, VmOutput::Events),
                )? {
                    Started::Child(child) => {
                        let out = child.wait_with_output().map_err(ExecError::Io)?;
                        Ok(Err(ExecOutput {
                            status: status_code(out.status),
                            stdout: out.stdout,
                            stderr: out.stderr,
                        }))
                    }
                    Started::Relayed(stream) => Ok(Ok(stream)),
                }
            })
            .await??;
        match started {
            Ok(stream) => stream.output().await,
            Err(output) => Ok(output),
        }
    }

    /// Runs the command with this process's standard streams and returns
    /// its exit status.
    pub async fn status(self) -> Result<i32> {
        self.spawn_attached().await?.wait().await
    }

    /// Starts the command with this process's standard streams and returns
    /// at once, so it can be signalled while it runs (a CLI forwarding its
    /// own signals, say); [`ExecStream::next`] yields nothing.
    pub async fn spawn_attached(self) -> Result<ExecStream> {
        tokio::task::spawn_blocking(move || {
            self.spawn_with(
                |_| Ok([Stdio::inherit(), Stdio::inherit(), Stdio::inherit()]),
                None,
                VmRelay::Threads(VmInput::Ours, VmOutput::Ours),
            )?
            .stream()
        })
        .await?
    }

    /// Starts the command with piped standard streams and returns at once;
    /// its output arrives through [`ExecStream::next`].
    pub async fn spawn(self) -> Result<ExecStream> {
        tokio::task::spawn_blocking(move || {
            self.spawn_with(
                |_| Ok([Stdio::piped(), Stdio::piped(), Stdio::piped()]),
                None,
                VmRelay::Threads(VmInput::Pipe, VmOutput::Events),
            )?
            .stream()
        })
        .await?
    }

    /// Starts the command on a new terminal of the sandbox's own
    /// `/dev/pts` (so `tty` names it), as its controlling terminal, sized
    /// `size` if given. Input and output go through [`ExecPty::master`].
    pub async fn spawn_pty(self, size: Option<WindowSize>) -> Result<ExecPty> {
        tokio::task::spawn_blocking(move || {
            let mut master = None;
            // Allocated on the devpts of the very sandbox the command joins.
            let terminal = |init| {
                let (m, slave) = open_pty(init).map_err(ExecError::Pty)?;
                if let Some(size) = size {
                    resize(&m, size)?;
                }
                master = Some(m);
                let copy = || slave.try_clone().map(Stdio::from).map_err(ExecError::Pty);
                // The command holds the only slave descriptors once spawned,
                // so reading the master ends (EIO) when the command and its
                // children close them.
                Ok([copy()?, copy()?, Stdio::from(slave)])
            };
            // The relay process's standard streams are the terminal, whose
            // size changes reach it as SIGWINCH.
            let Started::Child(mut child) =
                self.spawn_with(terminal, Some(controlling_terminal), VmRelay::Process)?
            else {
                unreachable!("a terminal's command is relayed by a process")
            };
            let master = master.expect("the terminal was allocated");
            let signaller = ExecSignaller::open(&mut child)?;
            Ok(ExecPty {
                master,
                child: Some(child),
                signaller,
            })
        })
        .await?
    }
}

/// In the child: a new session with standard input, the pty slave, as its
/// controlling terminal.
fn controlling_terminal() -> io::Result<()> {
    rustix::process::setsid()?;
    // SAFETY: descriptor 0 is the slave, set up by the spawn.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    rustix::process::ioctl_tiocsctty(stdin)?;
    Ok(())
}

/// Opens a pty pair on the devpts instance of the sandbox whose init is
/// host pid `init`, so the slave exists under the sandbox's `/dev/pts`;
/// with `init` 0 (a microVM's relay, whose guest has a terminal of its
/// own) on the host's.
fn open_pty(init: i32) -> io::Result<(File, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let ptmx = if init > 0 {
        format!("/proc/{init}/root/dev/pts/ptmx")
    } else {
        "/dev/ptmx".to_string()
    };
    let master = rustix::fs::open(
        ptmx,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::pty::unlockpt(&master)?;
    // Opened through the master, not by a path looked up on the host.
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((File::from(master), slave))
}

fn resize(master: &File, size: WindowSize) -> Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws).map_err(|e| ExecError::Pty(e.into()))
}

/// A chunk of a streamed command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes the command wrote to standard output.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to standard error.
    Stderr(Vec<u8>),
}

/// A command started with [`ExecBuilder::spawn`] or
/// [`Sandbox::exec_stream`]: its output as a stream of events, its input,
/// its exit status. Dropping it leaves the command running, with its
/// standard input closed and its output discarded.
#[derive(Debug)]
pub struct ExecStream {
    stdin: Option<OwnedFd>,
    events: mpsc::Receiver<ExecEvent>,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
    signaller: ExecSignaller,
}

/// Sends signals to one command started in a sandbox, from any thread or
/// task, also while another awaits its end; see [`ExecStream::signaller`].
#[derive(Debug)]
pub struct ExecSignaller {
    target: SignalTarget,
}

#[derive(Debug)]
enum SignalTarget {
    // A pidfd names the process even after it is reaped, so a late signal
    // can never hit a recycled pid.
    Process(OwnedFd),
    // A microVM sandbox's command, through its relay's connection.
    Vm(relay::Control),
}

impl ExecSignaller {
    /// A pidfd for `child`, which is killed and reaped if there is none.
    fn open(child: &mut Child) -> Result<Self> {
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
            .ok_or(rustix::io::Errno::SRCH)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()));
        match pidfd {
            Ok(pidfd) => Ok(Self {
                target: SignalTarget::Process(pidfd),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ExecError::Signal(e.into()))
            }
        }
    }

    fn try_clone(&self) -> Result<Self> {
        let target = match &self.target {
            SignalTarget::Process(pidfd) => {
                SignalTarget::Process(pidfd.try_clone().map_err(ExecError::Signal)?)
            }
            SignalTarget::Vm(control) => SignalTarget::Vm(control.clone()),
        };
        Ok(Self { target })
    }

    /// Sends signal number `signal` (e.g. `libc::SIGTERM`) to the command; a
    /// command that already ended is not an error.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let sig = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| ExecError::Signal(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let pidfd = match &self.target {
            SignalTarget::Process(pidfd) => pidfd,
            SignalTarget::Vm(control) => return control.signal(signal).map_err(ExecError::Signal),
        };
        match rustix::process::pidfd_send_signal(pidfd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(ExecError::Signal(e.into())),
        }
    }
}

impl ExecStream {
    fn new(mut child: Child) -> Result<Self> {
        let signaller = ExecSignaller::open(&mut child)?;
        let (tx, events) = mpsc::channel(64);
        let readers = [
            child
                .stdout
                .take()
                .map(|r| (Box::new(r) as Box<dyn Read + Send>, true)),
            child
                .stderr
                .take()
                .map(|r| (Box::new(r) as Box<dyn Read + Send>, false)),
        ]
        .into_iter()
        .flatten()
        .map(|(mut r, out)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = buf[..n].to_vec();
                            let event = if out {
                                ExecEvent::Stdout(chunk)
                            } else {
                                ExecEvent::Stderr(chunk)
                            };
                            // A dropped stream discards the rest.
                            if tx.blocking_send(event).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect::<Vec<_>>();
        drop(tx);
        let (exit_tx, exit) = oneshot::channel();
        let stdin = child.stdin.take().map(OwnedFd::from);
        std::thread::spawn(move || {
            let status = child.wait();
            for r in readers {
                let _ = r.join();
            }
            let _ = exit_tx.send(status);
        });
        Ok(Self {
            stdin,
            events,
            exit,
            signaller,
        })
    }

    /// Takes the command's standard input, an asynchronous writer
    /// (`tokio::io::AsyncWriteExt` adds `write_all`); dropping it sends end
    /// of file. `None` once taken or closed, and for
    /// [`ExecBuilder::spawn_attached`]. Needs a Tokio runtime with I/O
    /// enabled.
    pub fn take_stdin(&mut self) -> Result<Option<tokio::net::unix::pipe::Sender>> {
        let Some(stdin) = self.stdin.take() else {
            return Ok(None);
        };
        tokio::net::unix::pipe::Sender::from_owned_fd(stdin)
            .map(Some)
            .map_err(ExecError::Stdin)
    }

    /// Closes the command's standard input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next chunk of output, in the order it was read; `None` once both
    /// streams are closed.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Sends `signal` (e.g. 15 for SIGTERM) to the command; a command that
    /// already ended is not an error.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.signaller.signal(signal)
    }

    /// A handle that signals the command independently of this stream, so
    /// it can be used while [`ExecStream::wait`] runs.
    pub fn signaller(&self) -> Result<ExecSignaller> {
        self.signaller.try_clone()
    }

    /// Closes standard input, discards output not yet read, and returns
    /// the exit status once the command ends.
    pub async fn wait(mut self) -> Result<i32> {
        self.stdin = None;
        while self.events.recv().await.is_some() {}
        self.exit_status().await
    }

    /// Closes standard input and collects the output not yet read and the
    /// exit status.
    pub async fn output(mut self) -> Result<ExecOutput> {
        self.stdin = None;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(event) = self.events.recv().await {
            match event {
                ExecEvent::Stdout(b) => stdout.extend(b),
                ExecEvent::Stderr(b) => stderr.extend(b),
            }
        }
        Ok(ExecOutput {
            status: self.exit_status().await?,
            stdout,
            stderr,
        })
    }

    async fn exit_status(self) -> Result<i32> {
        let status = self
            .exit
            .await
            .map_err(|_| ExecError::Wait(io::Error::other("the waiting thread ended")))?;
        Ok(status_code(status.map_err(ExecError::Wait)?))
    }
}

/// A command started on a terminal with [`ExecBuilder::spawn_pty`].
/// Dropping it hangs the terminal up (the command gets SIGHUP).
#[derive(Debug)]
pub struct ExecPty {
    master: File,
    child: Option<Child>,
    signaller: ExecSignaller,
}

impl ExecPty {
    /// The terminal's master side: what is written to it is the command's
    /// input, what is read from it the command's output. Reading fails
    /// (EIO) once every process of the command has closed the terminal.
    /// `try_clone` it to read and write from separate threads.
    pub fn master(&self) -> &File {
        &self.master
    }

    /// Tells the command the terminal's new size (it gets SIGWINCH).
    pub fn resize(&self, size: WindowSize) -> Result<()> {
        resize(&self.master, size)
    }

    /// A handle that signals the command, usable while
    /// [`ExecPty::wait`] runs.
    pub fn signaller(&self) -> Result<ExecSignaller> {
        self.signaller.try_clone()
    }

    /// Waits for the command to end and returns its exit status. The
    /// terminal stays open, so output still buffered in it can be read.
    pub async fn wait(&mut self) -> Result<i32> {
        let Some(mut child) = self.child.take() else {
            return Err(ExecError::Wait(io::Error::other("already waited for")));
        };
        let status = tokio::task::spawn_blocking(move || child.wait()).await?;
        Ok(status_code(status.map_err(ExecError::Wait)?))
    }
}

impl Drop for ExecPty {
    fn drop(&mut self) {
        // Reaped whenever it ends, so a long-lived caller collects no zombies.
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}
