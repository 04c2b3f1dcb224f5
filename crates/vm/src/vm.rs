//! A running microVM: boot, the control channel's reader, execs, shutdown.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use msb_agent_protocol::{
    ExecId, ExecRequest, Frame, FrameError, GuestMessage, GuestPlan, HostMessage, MAX_DATA_CHUNK,
    read_message,
};

use crate::assets::{AssetsError, GUEST_MODULES, Kernel, assets_dir};
use crate::initramfs::{self, InitramfsEntry, InitramfsError};
use crate::qemu::{Accel, Disk, Launch, QemuError, RunAs, Share};

/// How to build and start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// KVM, TCG, or KVM only where proven to work.
    pub accel: Accel,
    /// virtio-fs shares (tag and vhost-user socket of a running server).
    pub shares: Vec<Share>,
    /// Disks attached as virtio-blk.
    pub disks: Vec<Disk>,
    /// More files in the initramfs (for guests without a root share).
    pub initramfs_extra: Vec<InitramfsEntry>,
    /// More kernel command line arguments.
    pub extra_cmdline: Vec<String>,
    /// More kernel modules to load after [`GUEST_MODULES`] (with their
    /// dependencies), such as `xfs` for a disk of that type; ext4 is built in.
    pub extra_modules: Vec<String>,
    /// The asset cache; `None` uses [`assets_dir`].
    pub assets_dir: Option<PathBuf>,
    /// Where the console log, QEMU's log and the initramfs go; `None`
    /// makes a temporary directory removed with the [`Vm`].
    pub run_dir: Option<PathBuf>,
    /// The QEMU binary; `None` uses `$MSB_QEMU` or `qemu-system-x86_64`.
    pub qemu: Option<PathBuf>,
    /// How long the guest may take to be ready.
    pub boot_timeout: Duration,
    /// The most console output kept in the log (the guest is hostile and
    /// could otherwise fill the disk); the rest is counted and dropped.
    pub console_cap: u64,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            cpus: 1,
            memory_mib: 512,
            accel: Accel::Auto,
            shares: Vec::new(),
            disks: Vec::new(),
            initramfs_extra: Vec::new(),
            extra_cmdline: Vec::new(),
            extra_modules: Vec::new(),
            assets_dir: None,
            run_dir: None,
            qemu: None,
            boot_timeout: Duration::from_secs(60),
            console_cap: 1 << 20,
        }
    }
}

/// Errors of a VM's life.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The kernel could not be found or fetched.
    #[error("guest kernel unavailable")]
    Assets(#[from] AssetsError),
    /// The initramfs could not be built.
    #[error("building the initramfs failed")]
    Initramfs(#[from] InitramfsError),
    /// QEMU could not be started.
    #[error("starting QEMU failed")]
    Qemu(#[from] QemuError),
    /// No host ids were free for QEMU to run as.
    #[error("no unprivileged ids for QEMU")]
    Lease(#[source] msb_runtime::LeaseError),
    /// A local file or socket operation failed.
    #[error("{0} failed")]
    Io(&'static str, #[source] io::Error),
    /// The guest kernel panicked.
    #[error("the guest kernel panicked: {message}")]
    KernelPanic {
        /// The panic line from the console.
        message: String,
        /// The console log, for more.
        console_log: PathBuf,
    },
    /// QEMU ended before the guest was ready.
    #[error(
        "the VM exited ({status}) before the guest agent was ready; QEMU said:\n{qemu_tail}\nlast console lines:\n{console_tail}"
    )]
    DiedBeforeReady {
        /// QEMU's exit status.
        status: String,
        /// The end of QEMU's own output (its errors).
        qemu_tail: String,
        /// The end of the console log.
        console_tail: String,
    },
    /// The guest was not ready in time.
    #[error(
        "the guest agent was not ready within {timeout:?}; last console lines:\n{console_tail}"
    )]
    BootTimeout {
        /// The timeout.
        timeout: Duration,
        /// The end of the console log.
        console_tail: String,
    },
    /// The agent refused the plan.
    #[error("the guest could not apply the plan: {0}")]
    Configure(String),
    /// The agent answered something unexpected.
    #[error("unexpected answer from the guest agent: {0}")]
    Protocol(String),
    /// Sending on the control channel failed.
    #[error("sending to the guest failed")]
    Send(#[source] FrameError),
    /// The VM is gone (QEMU exited or the channel closed).
    #[error("the VM is no longer running")]
    Gone,
    /// A command could not start.
    #[error("the command could not start (exit status {code}): {message}")]
    StartFailed {
        /// The status a shell would give (127 not found, 126 otherwise).
        code: i32,
        /// The guest's reason.
        message: String,
    },
    /// The guest did not answer in time.
    #[error("the guest did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a running command produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes on stdout (or the terminal).
    Stdout(Vec<u8>),
    /// Bytes on stderr.
    Stderr(Vec<u8>),
    /// The command ended: exit code, or 128+N when killed by signal N. The
    /// last event of a command.
    Exited(i32),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to the plan's environment.
    pub env: Vec<String>,
    /// Working directory; `None` uses the plan's.
    pub workdir: Option<String>,
    /// A pseudo-terminal of (rows, columns) instead of pipes.
    pub tty: Option<(u16, u16)>,
    /// Whether stdin is sent ([`ExecControl::write_stdin`]); otherwise it is
    /// /dev/null.
    pub stdin: bool,
}

impl ExecSpec {
    /// Runs `argv` on pipes without stdin.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecSpec {
        ExecSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecSpec::default()
        }
    }
}

/// Output and status of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, or 128+N when killed by signal N.
    pub status: i32,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
}

/// Where a command's start (its pid or why it failed) goes, once.
type StartSender = Sender<Result<i32, VmError>>;

#[derive(Default)]
struct Routes {
    /// Per command: the pending start answer and the event stream.
    execs: HashMap<ExecId, (Option<StartSender>, SyncSender<ExecEvent>)>,
    /// Where the answer to the current control request goes.
    control: Option<Sender<GuestMessage>>,
    closed: bool,
}

/// QEMU's exit, published by the thread that waits for it.
#[derive(Default)]
struct QemuState {
    exited: Option<ExitStatus>,
}

struct Shared {
    writer: Mutex<UnixStream>,
    routes: Mutex<Routes>,
    /// One control request (ping, configure, time spawn) at a time.
    control_turn: Mutex<()>,
    next_id: AtomicU32,
    next_nonce: AtomicU64,
    qemu_pid: u32,
    qemu_pidfd: OwnedFd,
    qemu_state: Mutex<QemuState>,
    qemu_exited: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn send(&self, msg: &HostMessage) -> Result<(), VmError> {
        let frame = msg.to_frame().map_err(VmError::Send)?;
        let mut w = lock(&self.writer);
        io::Write::write_all(&mut *w, &frame).map_err(|e| VmError::Send(e.into()))
    }

    fn kill_qemu(&self) {
        // SAFETY: pidfd_send_signal on our open pidfd; the pidfd keeps naming
        // QEMU even after it is reaped, so this never hits another process.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.qemu_pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    fn wait_qemu(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = lock(&self.qemu_state);
        loop {
            if let Some(status) = state.exited {
                return Some(status);
            }
            match deadline {
                None => {
                    state = self
                        .qemu_exited
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner())
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    state = self
                        .qemu_exited
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Sends a control request and waits for its answer.
    fn request(&self, msg: &HostMessage, timeout: Duration) -> Result<GuestMessage, VmError> {
        let _turn = lock(&self.control_turn);
        let (tx, rx) = mpsc::channel();
        {
            let mut routes = lock(&self.routes);
            if routes.closed {
                return Err(VmError::Gone);
            }
            routes.control = Some(tx);
        }
        self.send(msg)?;
        let answer = match rx.recv_timeout(timeout) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Timeout) => Err(VmError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(VmError::Gone),
        };
        lock(&self.routes).control = None;
        answer
    }

    /// Reads the guest's messages until the channel ends, routing each.
    fn read_loop(&self, mut reader: UnixStream) {
        while let Ok(Some(msg)) = read_message::<_, GuestMessage>(&mut reader) {
            let mut routes = lock(&self.routes);
            let (id, event) = match msg {
                GuestMessage::Started { id, pid } => {
                    if let Some(start) = routes.execs.get_mut(&id).and_then(|r| r.0.take()) {
                        let _ = start.send(Ok(pid));
                    }
                    continue;
                }
                GuestMessage::StartFailed { id, code, message } => {
                    if let Some((Some(start), _)) = routes.execs.remove(&id) {
                        let _ = start.send(Err(VmError::StartFailed { code, message }));
                    }
                    continue;
                }
                GuestMessage::Stdout { id, data } => (id, ExecEvent::Stdout(data)),
                GuestMessage::Stderr { id, data } => (id, ExecEvent::Stderr(data)),
                GuestMessage::Exited { id, status } => (id, ExecEvent::Exited(status)),
                // Errors about a command (a signal to one that just ended)
                // change nothing the host tracks.
                GuestMessage::Error { id: Some(_), .. } => continue,
                other => {
                    if let Some(control) = &routes.control {
                        let _ = control.send(other);
                    }
                    continue;
                }
            };
            let done = matches!(event, ExecEvent::Exited(_));
            let events = if done {
                routes.execs.remove(&id).map(|r| r.1)
            } else {
                routes.execs.get(&id).map(|r| r.1.clone())
            };
            // Not under the lock: a slow consumer may block this send, and
            // must not block everyone else's exec starts meanwhile.
            drop(routes);
            if let Some(events) = events {
                let _ = events.send(event);
            }
        }
        // Dropping every sender tells each waiter the VM is gone.
        let mut routes = lock(&self.routes);
        routes.closed = true;
        routes.execs.clear();
        routes.control = None;
    }
}

/// A running microVM.
pub struct Vm {
    shared: Arc<Shared>,
    accel: Accel,
    console_log: PathBuf,
    /// Removed on drop when we made it.
    temp_run_dir: Option<PathBuf>,
    /// Copies the console into its log until QEMU ends.
    console_thread: Option<JoinHandle<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("qemu_pid", &self.shared.qemu_pid)
            .field("accel", &self.accel)
            .finish()
    }
}

/// The end of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

static RUN_DIR_SEQ: AtomicU32 = AtomicU32::new(0);

/// Removes temporary run directories (`msb-vm-<pid>-<n>`) of processes
/// that are gone: a supervisor killed with SIGKILL cannot clean up its own.
fn remove_abandoned_run_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("msb-vm-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Events buffered per command before the channel reader waits for its
/// consumer; bounds what a guest flooding output can make the host hold.
const EVENT_BACKLOG: usize = 256;

impl Vm {
    /// Boots a VM, waits for the guest agent and applies `plan`.
    pub fn boot(config: &VmConfig, plan: &GuestPlan) -> Result<Vm, VmError> {
        let assets = config.assets_dir.clone().unwrap_or_else(assets_dir);
        let kernel = Kernel::ensure(&assets)?;
        let accel = match config.accel {
            Accel::Auto if crate::probe::kvm_works(&assets, &kernel, config) => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        };
        Vm::boot_with(config, plan, &kernel, accel)
    }

    /// Boots with a resolved accelerator (the KVM probe uses this directly).
    pub(crate) fn boot_with(
        config: &VmConfig,
        plan: &GuestPlan,
        kernel: &Kernel,
        accel: Accel,
    ) -> Result<Vm, VmError> {
        let (run_dir, temp_run_dir) = match &config.run_dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .map_err(|e| VmError::Io("creating the run directory", e))?;
                (dir.clone(), None)
            }
            None => {
                remove_abandoned_run_dirs();
                let dir = std::env::temp_dir().join(format!(
                    "msb-vm-{}-{}",
                    std::process::id(),
                    RUN_DIR_SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir(&dir).map_err(|e| VmError::Io("creating the run directory", e))?;
                (dir.clone(), Some(dir))
            }
        };
        let mut wanted: Vec<&str> = GUEST_MODULES.to_vec();
        wanted.extend(config.extra_modules.iter().map(String::as_str));
        let modules = kernel.module_files(&wanted)?;
        let image = initramfs::build(initramfs::AGENT, &modules, &config.initramfs_extra)?;
        let initramfs_path = run_dir.join("initramfs.cpio");
        fs::write(&initramfs_path, image).map_err(|e| VmError::Io("writing the initramfs", e))?;
        let console_log = run_dir.join("console.log");
        let qemu_log = run_dir.join("qemu.log");
        let qemu = config
            .qemu
            .clone()
            .or_else(|| std::env::var_os("MSB_QEMU").map(PathBuf::from))
            .unwrap_or_else(|| "qemu-system-x86_64".into());

        let (ours, theirs) =
            UnixStream::pair().map_err(|e| VmError::Io("creating the control socket", e))?;
        let (console_ours, console_theirs) =
            UnixStream::pair().map_err(|e| VmError::Io("creating the console socket", e))?;
        let console_thread = {
            let (log, cap) = (console_log.clone(), config.console_cap);
            std::thread::spawn(move || crate::qemu::pump_console(console_ours, &log, cap))
        };
        // As root, QEMU runs as ids of its own, leased for its lifetime.
        let lease = if rustix::process::geteuid().is_root() {
            Some(msb_runtime::IdLease::acquire_swept().map_err(VmError::Lease)?)
        } else {
            None
        };
        let run_as = lease.as_ref().map(|l| RunAs {
            uid: l.ids().root(),
            gid: l.ids().root(),
        });
        let launch_cfg = (
            qemu,
            config.cpus,
            config.memory_mib,
            kernel.image.clone(),
            initramfs_path,
            qemu_log,
            config.extra_cmdline.clone(),
            config.shares.clone(),
            config.disks.clone(),
            run_as,
        );
        // QEMU's parent-death signal follows the thread that forked it, so
        // a thread that lives until QEMU ends starts it and waits for it.
        let (started_tx, started_rx) = mpsc::channel();
        let (shared_tx, shared_rx) = mpsc::channel::<Arc<Shared>>();
        let waiter = std::thread::spawn(move || {
            let (qemu, cpus, memory_mib, kernel, initramfs, qemu_log, extra, shares, disks, run_as) =
                launch_cfg;
            let launch = Launch {
                qemu: &qemu,
                accel,
                cpus,
                memory_mib,
                kernel: &kernel,
                initramfs: &initramfs,
                qemu_log: &qemu_log,
                extra_cmdline: &extra,
                shares: &shares,
                disks: &disks,
                run_as: run_as.as_ref(),
            };
            let theirs = OwnedFd::from(theirs);
            let console = OwnedFd::from(console_theirs);
            let spawned = launch.spawn(&theirs, &console);
            // Only QEMU may hold these ends, so its exit ends our reads.
            drop((theirs, console));
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    let _ = started_tx.send(Err(VmError::from(e)));
                    return;
                }
            };
            // SAFETY: pidfd_open with the pid of our unreaped child.
            let pidfd =
                unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
            if pidfd < 0 {
                let _ = child.kill();
                let _ = child.wait();
                let _ = started_tx.send(Err(VmError::Io(
                    "opening a pidfd for QEMU",
                    io::Error::last_os_error(),
                )));
                return;
            }
            // SAFETY: the kernel just gave us this descriptor.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            let _ = started_tx.send(Ok((child.id(), pidfd)));
            let status = child.wait();
            // The ids are free again only once QEMU is gone.
            drop(lease);
            if let Ok(shared) = shared_rx.recv() {
                let mut state = lock(&shared.qemu_state);
                state.exited =
                    Some(status.unwrap_or_else(|_| {
                        std::os::unix::process::ExitStatusExt::from_raw(255 << 8)
                    }));
                shared.qemu_exited.notify_all();
            }
        });
        let (qemu_pid, qemu_pidfd) = match started_rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = waiter.join();
                return Err(e);
            }
            Err(_) => return Err(VmError::Gone),
        };
        let reader = ours
            .try_clone()
            .map_err(|e| VmError::Io("cloning the control socket", e))?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(ours),
            routes: Mutex::new(Routes::default()),
            control_turn: Mutex::new(()),
            next_id: AtomicU32::new(1),
            next_nonce: AtomicU64::new(1),
            qemu_pid,
            qemu_pidfd,
            qemu_state: Mutex::new(QemuState::default()),
            qemu_exited: Condvar::new(),
        });
        let _ = shared_tx.send(Arc::clone(&shared));

        // Ready is the agent's first word; route it like a control answer.
        let (ready_tx, ready_rx) = mpsc::channel();
        lock(&shared.routes).control = Some(ready_tx);
        let reader_thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || shared.read_loop(reader))
        };
        let mut vm = Vm {
            shared,
            accel,
            console_log,
            temp_run_dir,
            console_thread: Some(console_thread),
            threads: vec![waiter, reader_thread],
        };
        match ready_rx.recv_timeout(config.boot_timeout) {
            Ok(GuestMessage::Ready) => {}
            Ok(other) => return Err(VmError::Protocol(format!("{other:?} instead of Ready"))),
            Err(RecvTimeoutError::Timeout) => {
                vm.shared.kill_qemu();
                return Err(VmError::BootTimeout {
                    timeout: config.boot_timeout,
                    console_tail: tail(&vm.console_log, 20),
                });
            }
            Err(RecvTimeoutError::Disconnected) => return Err(vm.died_before_ready()),
        }
        lock(&vm.shared.routes).control = None;
        match vm
            .shared
            .request(&HostMessage::Configure(plan.clone()), config.boot_timeout)?
        {
            GuestMessage::Configured => Ok(vm),
            GuestMessage::Error { message, .. } => {
                vm.kill();
                Err(VmError::Configure(message))
            }
            other => {
                vm.kill();
                Err(VmError::Protocol(format!(
                    "{other:?} instead of Configured"
                )))
            }
        }
    }

    fn died_before_ready(&mut self) -> VmError {
        let status = self.shared.wait_qemu(Some(Duration::from_secs(10)));
        if status.is_some()
            && let Some(console) = self.console_thread.take()
        {
            // The whole console, panic message included, is in the log.
            let _ = console.join();
        }
        let console = fs::read_to_string(&self.console_log).unwrap_or_default();
        if let Some(line) = console.lines().find(|l| l.contains("Kernel panic")) {
            let message = line
                .split("Kernel panic - not syncing:")
                .nth(1)
                .unwrap_or(line)
                .trim()
                .to_owned();
            return VmError::KernelPanic {
                message,
                console_log: self.console_log.clone(),
            };
        }
        VmError::DiedBeforeReady {
            status: status.map_or_else(|| "still running".into(), |s| s.to_string()),
            qemu_tail: tail(&self.console_log.with_file_name("qemu.log"), 10),
            console_tail: tail(&self.console_log, 20),
        }
    }

    /// Starts a command; returns once it runs, or with
    /// [`VmError::StartFailed`] when it cannot.
    pub fn exec(&self, spec: ExecSpec) -> Result<Exec, VmError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (start_tx, start_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::sync_channel(EVENT_BACKLOG);
        {
            let mut routes = lock(&self.shared.routes);
            if routes.closed {
                return Err(VmError::Gone);
            }
            routes.execs.insert(id, (Some(start_tx), events_tx));
        }
        let req = ExecRequest {
            id,
            argv: spec.argv,
            env: spec.env,
            workdir: spec.workdir,
            tty: spec.tty,
            stdin: spec.stdin,
        };
        if let Err(e) = self.shared.send(&HostMessage::Exec(req)) {
            lock(&self.shared.routes).execs.remove(&id);
            return Err(e);
        }
        let pid = start_rx.recv().map_err(|_| VmError::Gone)??;
        Ok(Exec {
            control: ExecControl {
                id,
                shared: Arc::clone(&self.shared),
            },
            pid,
            events: events_rx,
        })
    }

    /// One request/response over the control channel; returns its round trip.
    pub fn ping(&self) -> Result<Duration, VmError> {
        let nonce = self.shared.next_nonce.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        match self
            .shared
            .request(&HostMessage::Ping { nonce }, Duration::from_secs(30))?
        {
            GuestMessage::Pong { nonce: n } if n == nonce => Ok(start.elapsed()),
            other => Err(VmError::Protocol(format!("{other:?} instead of Pong"))),
        }
    }

    /// Has the guest run `argv` `iterations` times (fork, exec, wait) and
    /// returns its mean time per run and the runs that failed.
    pub fn time_spawn(&self, argv: &[&str], iterations: u32) -> Result<(Duration, u32), VmError> {
        let msg = HostMessage::TimeSpawn {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            iterations,
        };
        match self.shared.request(&msg, Duration::from_secs(600))? {
            GuestMessage::SpawnTimed { mean_ns, failures } => {
                Ok((Duration::from_nanos(mean_ns), failures))
            }
            other => Err(VmError::Protocol(format!(
                "{other:?} instead of SpawnTimed"
            ))),
        }
    }

    /// Stops the guest: SIGTERM to its processes, SIGKILL after `grace`,
    /// power off. Waits for QEMU to end (killing it if the guest does not
    /// power off in time) and returns its exit status.
    pub fn shutdown(&self, grace: Duration) -> Result<ExitStatus, VmError> {
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        let sent = self.shared.send(&HostMessage::Shutdown { grace_ms });
        if let Some(status) = self.shared.wait_qemu(Some(grace + Duration::from_secs(15))) {
            return Ok(status);
        }
        self.kill();
        sent?;
        Err(VmError::Timeout(grace + Duration::from_secs(15)))
    }

    /// Kills QEMU at once and waits for it to end.
    pub fn kill(&self) {
        self.shared.kill_qemu();
        self.shared.wait_qemu(None);
    }

    /// Waits for QEMU to end (`None` waits forever); `None` if still running.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        self.shared.wait_qemu(timeout)
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> u32 {
        self.shared.qemu_pid
    }

    /// The accelerator the VM runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The guest console's log file.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        for t in self.threads.drain(..).chain(self.console_thread.take()) {
            let _ = t.join();
        }
        if let Some(dir) = &self.temp_run_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Stdin, signals and window size of one command; cheap to clone, usable
/// from any thread while another reads the events.
#[derive(Clone)]
pub struct ExecControl {
    id: ExecId,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl").field("id", &self.id).finish()
    }
}

impl ExecControl {
    /// Sends bytes to the command's stdin (the exec must have asked for stdin).
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), VmError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.shared.send(&HostMessage::Stdin {
                id: self.id,
                data: chunk.to_vec(),
            })?;
        }
        Ok(())
    }

    /// Ends the command's stdin (on a terminal: types the EOF character).
    pub fn close_stdin(&self) -> Result<(), VmError> {
        self.shared.send(&HostMessage::StdinClose { id: self.id })
    }

    /// Sends signal `signo` to the command.
    pub fn signal(&self, signo: i32) -> Result<(), VmError> {
        self.shared
            .send(&HostMessage::Signal { id: self.id, signo })
    }

    /// Changes the command's terminal size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), VmError> {
        self.shared.send(&HostMessage::Resize {
            id: self.id,
            rows,
            cols,
        })
    }
}

/// A running command in the guest.
#[derive(Debug)]
pub struct Exec {
    control: ExecControl,
    pid: i32,
    events: Receiver<ExecEvent>,
}

impl std::ops::Deref for Exec {
    type Target = ExecControl;
    fn deref(&self) -> &ExecControl {
        &self.control
    }
}

impl Exec {
    /// The command's process id in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A handle for stdin, signals and resizing from other threads.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The next event; [`VmError::Gone`] if the VM ended first. After
    /// [`ExecEvent::Exited`] there are no more.
    pub fn next_event(&self) -> Result<ExecEvent, VmError> {
        self.events.recv().map_err(|_| VmError::Gone)
    }

    /// Like [`Exec::next_event`], `Ok(None)` after `timeout`.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<Option<ExecEvent>, VmError> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(VmError::Gone),
        }
    }

    /// Collects all output until the command ends.
    pub fn output(self) -> Result<ExecOutput, VmError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_event()? {
                ExecEvent::Stdout(d) => stdout.extend(d),
                ExecEvent::Stderr(d) => stderr.extend(d),
                ExecEvent::Exited(status) => {
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr,
                    });
                }
            }
        }
    }
}
