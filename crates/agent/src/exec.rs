//! Running commands for the host: spawning on pipes or a pty, streaming
//! their output, reaping every process as PID 1, and shutting down.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::launcher::Launcher;
use msb_agent_protocol::{ExecId, ExecRequest, Frame, GuestMessage, MAX_DATA_CHUNK};

use crate::sys;

/// What the stdin thread of a command does next.
enum StdinOp {
    Data(Vec<u8>),
    Close,
}

/// A running command, as the request loop sees it.
struct ExecEntry {
    /// Names the process even after it is reaped and its pid reused.
    pidfd: OwnedFd,
    stdin: Option<Sender<StdinOp>>,
    /// The pty master, for window size changes.
    tty: Option<Arc<OwnedFd>>,
}

/// The agent's shared state.
pub struct Agent {
    port: Mutex<File>,
    execs: Mutex<HashMap<ExecId, ExecEntry>>,
    /// Children we started, which their output threads reap (through
    /// their pidfds) so the exit report needs no hop through the reaper.
    /// Held while spawning, so the reaper cannot take a child before it is
    /// registered (or one that glibc or `time_spawn` waits for itself).
    children: Mutex<HashSet<libc::pid_t>>,
    children_changed: Condvar,
    defaults: Mutex<Defaults>,
    shutting_down: AtomicBool,
    configured: AtomicBool,
    /// Worker threads waiting for a command to serve.
    idle: Mutex<Vec<Sender<Job>>>,
}

/// What a worker thread does for a command (pass on its output, feed its
/// input).
type Job = Box<dyn FnOnce() + Send>;

/// The most worker threads kept waiting: starting a thread for each
/// command is costly in an emulated guest.
const IDLE_WORKERS: usize = 8;

/// The plan's environment and working directory, applied to every exec,
/// and the launcher that starts commands confined by its profile.
#[derive(Default)]
pub struct Defaults {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// The security profile, compiled; `None` runs commands unconfined.
    pub launcher: Option<Arc<Launcher>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// An agent talking on `port`.
    pub fn new(port: File) -> Arc<Agent> {
        Arc::new(Agent {
            port: Mutex::new(port),
            execs: Mutex::new(HashMap::new()),
            children: Mutex::new(HashSet::new()),
            children_changed: Condvar::new(),
            defaults: Mutex::new(Defaults {
                env: Vec::new(),
                workdir: "/".into(),
                launcher: None,
            }),
            shutting_down: AtomicBool::new(false),
            configured: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends a message to the host; a failure is logged, since the host
    /// going away is handled by the read side.
    pub fn send(&self, msg: &GuestMessage) -> io::Result<()> {
        let frame = msg.to_frame().map_err(io::Error::other)?;
        let mut port = lock(&self.port);
        port.write_all(&frame)
    }

    /// Runs `job` on a waiting worker thread, or on a new one.
    fn run_on_worker(self: &Arc<Self>, mut job: Job) {
        while let Some(worker) = lock(&self.idle).pop() {
            match worker.send(job) {
                Ok(()) => return,
                // Its thread ended: try the next.
                Err(e) => job = e.0,
            }
        }
        let agent = Arc::clone(self);
        std::thread::spawn(move || {
            let (tx, rx) = channel::<Job>();
            loop {
                job();
                {
                    let mut idle = lock(&agent.idle);
                    if idle.len() >= IDLE_WORKERS {
                        return;
                    }
                    idle.push(tx.clone());
                }
                match rx.recv() {
                    Ok(next) => job = next,
                    Err(_) => return,
                }
            }
        });
    }

    /// True the first time only: a plan is applied once.
    pub fn start_configuring(&self) -> bool {
        !self.configured.swap(true, Ordering::SeqCst)
    }

    /// Replaces the plan defaults.
    pub fn set_defaults(&self, defaults: Defaults) {
        *lock(&self.defaults) = defaults;
    }

    /// Reaps every child forever but those of running commands, which
    /// their output threads reap.
    pub fn reap_forever(&self) {
        loop {
            // SAFETY: siginfo_t is plain data; zeroed is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: info is valid for writing; WNOWAIT leaves the child waitable
            // so that the pid cannot be reused before we decide who gets it.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ECHILD) {
                    let guard = lock(&self.children);
                    let _ = self
                        .children_changed
                        .wait_timeout(guard, Duration::from_secs(1));
                }
                continue;
            }
            // SAFETY: waitid filled info for an exited child.
            let pid = unsafe { info.si_pid() };
            let children = lock(&self.children);
            if children.contains(&pid) {
                // Its output thread reaps it; wait until it has rather than
                // finding the same zombie again at once.
                let _ = self.children_changed.wait_timeout_while(
                    children,
                    Duration::from_millis(200),
                    |c| c.contains(&pid),
                );
                continue;
            }
            let mut status = 0;
            // SAFETY: status is valid for writing; WNOHANG never blocks, and a
            // child someone else reaped meanwhile just gives ECHILD.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }

    /// Starts a command and reports `Started` or `StartFailed`.
    pub fn exec(self: &Arc<Self>, req: ExecRequest) {
        let id = req.id;
        if self.shutting_down.load(Ordering::SeqCst) {
            let _ = self.send(&GuestMessage::StartFailed {
                id,
                code: 126,
                message: "the guest is shutting down".into(),
            });
            return;
        }
        if lock(&self.execs).contains_key(&id) {
            let _ = self.send(&GuestMessage::Error {
                id: Some(id),
                message: "exec id already in use".into(),
            });
            return;
        }
        match self.spawn(&req) {
            Ok(()) => {}
            Err((code, message)) => {
                let _ = self.send(&GuestMessage::StartFailed { id, code, message });
            }
        }
    }

    fn spawn(self: &Arc<Self>, req: &ExecRequest) -> Result<(), (i32, String)> {
        let Some(name) = req.argv.first() else {
            return Err((127, "empty command".into()));
        };
        let (env, workdir, launcher) = {
            let d = lock(&self.defaults);
            let mut env = d.env.clone();
            env.extend(req.env.iter().cloned());
            let workdir = req.workdir.clone().unwrap_or_else(|| d.workdir.clone());
            (env, workdir, d.launcher.clone())
        };
        // A failed chdir would look like a failed exec; check first so the
        // two get their own messages.
        if !Path::new(&workdir).is_dir() {
            return Err((126, format!("working directory {workdir} does not exist")));
        }
        let program = resolve_program(name, &env)?;
        let io_err = |what: &str, e: io::Error| (126, format!("{what}: {e}"));

        // Our ends of the command's stdio, and the ends it gets (closed here
        // once it has them).
        let mut outs: Vec<(File, bool)> = Vec::new();
        let mut stdin_sink: Option<File> = None;
        let mut tty = None;
        let child_stdio;
        let mut child_ends: Vec<OwnedFd> = Vec::new();
        if let Some((rows, cols)) = req.tty {
            let (master, slave) =
                sys::openpty(rows, cols).map_err(|e| io_err("opening a pty", e))?;
            let path = sys::tty_path(&slave).map_err(|e| io_err("naming the pty", e))?;
            child_stdio = sys::ChildStdio::Terminal(path);
            // Held open until the command has its own, so the master does
            // not see the terminal hang up in between.
            child_ends.push(slave);
            let clone = |m: &OwnedFd| {
                m.try_clone()
                    .map(File::from)
                    .map_err(|e| io_err("duplicating the pty", e))
            };
            outs.push((clone(&master)?, false));
            if req.stdin {
                stdin_sink = Some(clone(&master)?);
            }
            tty = Some(Arc::new(master));
        } else {
            let pipe = || sys::pipe().map_err(|e| io_err("creating a pipe", e));
            let stdin = if req.stdin {
                let (r, w) = pipe()?;
                stdin_sink = Some(File::from(w));
                r
            } else {
                sys::dev_null().map_err(|e| io_err("opening /dev/null", e))?
            };
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            outs.push((File::from(out_r), false));
            outs.push((File::from(err_r), true));
            child_stdio =
                sys::ChildStdio::Fds([stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]);
            child_ends.extend([stdin, out_w, err_w]);
        }

        let (pid, pidfd) = {
            let mut children = lock(&self.children);
            // A confined command comes from the launcher, as our child too.
            let pid = match &launcher {
                Some(l) => l.spawn(&program, &req.argv, &env, &workdir, &child_stdio),
                None => sys::spawn(&program, &req.argv, &env, &workdir, &child_stdio, None),
            }
            .map_err(|e| {
                let code = if e.kind() == io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                (code, format!("{}: {e}", program.display()))
            })?;
            // The reaper waits for this lock, so the pid still names our child.
            let pidfd = sys::pidfd_open(pid).map_err(|e| io_err("opening a pidfd", e))?;
            children.insert(pid);
            self.children_changed.notify_all();
            (pid, pidfd)
        };
        drop(child_ends);
        let id = req.id;
        let _ = self.send(&GuestMessage::Started { id, pid });

        let is_tty = tty.is_some();
        let stdin = stdin_sink.map(|sink| {
            let (tx, rx) = channel();
            self.run_on_worker(Box::new(move || feed_stdin(sink, rx, is_tty)));
            tx
        });
        let exit = pidfd
            .try_clone()
            .map_err(|e| io_err("duplicating a pidfd", e))?;
        lock(&self.execs).insert(id, ExecEntry { pidfd, stdin, tty });
        let agent = Arc::clone(self);
        self.run_on_worker(Box::new(move || agent.pump(id, outs, pid, exit)));
        Ok(())
    }

    /// Forwards a command's output until it exits, then what is left in its
    /// pipes, then `Exited`. A background process that keeps the pipes open
    /// does not hold the exit report back.
    fn pump(&self, id: ExecId, mut outs: Vec<(File, bool)>, pid: libc::pid_t, exit: OwnedFd) {
        let mut buf = vec![0u8; MAX_DATA_CHUNK];
        let status = loop {
            let mut fds: Vec<libc::pollfd> = outs
                .iter()
                .map(|(f, _)| libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            fds.push(libc::pollfd {
                fd: exit.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: fds is a valid array of pollfd of the given length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                continue;
            }
            let mut closed = Vec::new();
            for (i, pfd) in fds[..outs.len()].iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                if !self.forward_once(id, &mut outs[i], &mut buf) {
                    closed.push(i);
                }
            }
            for i in closed.into_iter().rev() {
                outs.remove(i);
            }
            // A pidfd polls readable once its process has ended.
            if fds.last().is_some_and(|p| p.revents != 0) {
                let status = sys::reap_pidfd(&exit).unwrap_or(255);
                lock(&self.children).remove(&pid);
                self.children_changed.notify_all();
                break status;
            }
        };
        for out in &mut outs {
            if sys::set_nonblocking(out.0.as_raw_fd()).is_ok() {
                while self.forward_once(id, out, &mut buf) {}
            }
        }
        let _ = self.send(&GuestMessage::Exited { id, status });
        lock(&self.execs).remove(&id);
    }

    /// Reads once from an output and sends what came; false at its end.
    fn forward_once(&self, id: ExecId, (file, is_err): &mut (File, bool), buf: &mut [u8]) -> bool {
        match file.read(buf) {
            Ok(0) => false,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let msg = if *is_err {
                    GuestMessage::Stderr { id, data }
                } else {
                    GuestMessage::Stdout { id, data }
                };
                let _ = self.send(&msg);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            // EAGAIN when drained, EIO once a pty's last slave closed.
            Err(_) => false,
        }
    }

    /// Queues bytes for a command's stdin.
    pub fn stdin(&self, id: ExecId, data: Vec<u8>) {
        if let Some(tx) = lock(&self.execs).get(&id).and_then(|e| e.stdin.as_ref()) {
            let _ = tx.send(StdinOp::Data(data));
        }
    }

    /// Ends a command's stdin.
    pub fn stdin_close(&self, id: ExecId) {
        if let Some(tx) = lock(&self.execs).get_mut(&id).and_then(|e| e.stdin.take()) {
            let _ = tx.send(StdinOp::Close);
        }
    }

    /// Signals a command.
    pub fn signal(&self, id: ExecId, signo: i32) -> Result<(), String> {
        let execs = lock(&self.execs);
        let entry = execs.get(&id).ok_or("no such command")?;
        match sys::pidfd_send_signal(&entry.pidfd, signo) {
            // Already exited but not yet reported: nothing left to signal.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|e| format!("sending signal {signo}: {e}")),
        }
    }

    /// Resizes a tty command's terminal.
    pub fn resize(&self, id: ExecId, rows: u16, cols: u16) -> Result<(), String> {
        let execs = lock(&self.execs);
        let master = execs
            .get(&id)
            .ok_or("no such command")?
            .tty
            .as_ref()
            .ok_or("the command has no terminal")?;
        sys::set_winsize(master.as_raw_fd(), rows, cols)
            .map_err(|e| format!("setting the window size: {e}"))
    }

    /// Runs `argv` `iterations` times with no streams; returns the mean
    /// duration and the number of runs that did not exit 0.
    pub fn time_spawn(&self, argv: &[String], iterations: u32) -> (Duration, u32) {
        let Some(program) = argv.first() else {
            return (Duration::ZERO, iterations);
        };
        let env = lock(&self.defaults).env.clone();
        // Held so the reaper leaves these children to the wait below.
        let _children = lock(&self.children);
        let mut failures = 0;
        let Ok(program) = resolve_program(program, &env) else {
            return (Duration::ZERO, iterations);
        };
        // The bare cost: unconfined, the agent's own stdio inherited,
        // nothing opened.
        let stdio = sys::ChildStdio::Fds([0, 1, 2]);
        let start = Instant::now();
        for _ in 0..iterations {
            let ok = match sys::spawn(&program, argv, &env, "/", &stdio, None) {
                Ok(pid) => {
                    let mut status = 0;
                    // SAFETY: status is valid for writing; pid is our child, which
                    // the reaper leaves alone while we hold the children lock.
                    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
                    got == pid && sys::exit_status(status) == 0
                }
                Err(_) => false,
            };
            if !ok {
                failures += 1;
            }
        }
        (start.elapsed() / iterations.max(1), failures)
    }

    /// SIGTERM to every process, SIGKILL to what is left after `grace`, sync.
    pub fn stop_everything(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // SAFETY: kill(-1) signals every process but init; no pointers involved.
        unsafe { libc::kill(-1, libc::SIGTERM) };
        if !wait_no_children(grace) {
            // SAFETY: as above.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            wait_no_children(Duration::from_secs(2));
        }
        // SAFETY: sync has no arguments.
        unsafe { libc::sync() };
    }
}

impl Agent {
    /// Waits until every command's exit was reported, or `timeout`.
    pub fn wait_reported(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !lock(&self.execs).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Finds `program` as execvp would, in the command's own `PATH`: a name
/// with a slash is taken as it is; a missing one gives 127, one found only
/// without execute permission 126.
fn resolve_program(program: &str, env: &[String]) -> Result<PathBuf, (i32, String)> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut not_executable = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(p) => Err((126, format!("{}: permission denied", p.display()))),
        None => Err((127, format!("{program}: command not found"))),
    }
}

/// Waits until PID 1 has no children left (the reaper collects them);
/// false if some remain at the deadline.
fn wait_no_children(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is valid for writing; WNOHANG|WNOWAIT neither blocks nor reaps.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn feed_stdin(mut sink: File, rx: Receiver<StdinOp>, tty: bool) {
    let mut broken = false;
    for op in rx {
        match op {
            StdinOp::Data(data) if !broken => broken = sink.write_all(&data).is_err(),
            StdinOp::Data(_) => {}
            // A terminal has no end of input of its own: type the EOF character.
            StdinOp::Close if tty => {
                let _ = sink.write_all(&[4]);
                return;
            }
            StdinOp::Close => return,
        }
    }
}
