//! msb sandboxes as microVMs, behind the runtime's [`Backend`] trait: the
//! resolved [`InitPlan`] becomes a VM whose directories the volume
//! filesystem server (`PolicyFs`) serves over vhost-user virtio-fs, whose
//! disks QEMU attaches as virtio-blk, and whose command runs through the
//! guest agent. Other processes run commands in a kept VM sandbox through
//! [`VmSandbox::serve_execs`], which speaks the agent's protocol on a unix
//! socket and renumbers their commands onto the VM's control channel.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msb_agent_protocol::{
    ExecRequest, GuestMessage, GuestMount, GuestPlan, HostMessage, MountSource, RootPlan,
    read_message, write_message,
};
use msb_runtime::{
    Backend, InitPlan, InitRoot, InitSource, RootEntry, Running, SandboxStdio, fresh_root_entries,
};

use crate::qemu::{Accel, Disk, Share};
use crate::vm::{Exec, ExecControl, ExecEvent, ExecSpec, Vm, VmConfig, VmError};

mod one_file;

/// Request threads per served directory.
const SERVER_THREADS: usize = 4;

/// Why a VM sandbox could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A directory's virtio-fs server could not start.
    #[error("cannot serve {what} to the microVM")]
    Serve {
        /// The share.
        what: String,
        /// Why.
        #[source]
        source: msb_virtiofs::ServerError,
    },
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The fresh root could not be described.
    #[error("cannot describe the fresh root")]
    Root(#[source] io::Error),
    /// A local file or socket operation failed.
    #[error("{0} failed")]
    Io(&'static str, #[source] io::Error),
    /// The plan was resolved for the namespace backend.
    #[error("mount at {0}: resolved for the namespace backend, not a microVM")]
    NotForVm(String),
    /// The plan has no share for the root.
    #[error("the plan has no root share")]
    NoRootShare,
}

impl From<SandboxError> for msb_runtime::RunError {
    fn from(e: SandboxError) -> Self {
        msb_runtime::RunError::Vm(Box::new(e))
    }
}

/// Starts sandboxes as microVMs.
#[derive(Debug, Clone, Default)]
pub struct VmBackend {
    /// KVM, TCG, or KVM where a probe boot proved it works.
    pub accel: Accel,
}

/// What a sandbox's command is in the VM.
enum Main {
    /// It runs.
    Running(Exec),
    /// It could not start: the status a shell gives and why.
    Failed(i32, String),
    /// None: the sandbox is kept until it is asked to stop.
    None,
}

/// A running VM sandbox. Dropping it ends the VM and its servers.
pub struct VmSandbox {
    main: Main,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    // Drop order: the VM first (its QEMU is the servers' only client).
    vm: Arc<Vm>,
    _servers: Vec<msb_virtiofs::Server>,
    // Last: the servers' sockets live in it.
    _run_dir: RunDir,
}

impl std::fmt::Debug for VmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmSandbox")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        self.vm.kill();
    }
}

/// The VM's private directory, removed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tag(index: usize) -> String {
    format!("msb{index}")
}

/// The guest's root: share 0 under a writable layer, or (a fresh root) a
/// tmpfs with share 0 as its `/usr` and the entries msb generates.
fn root_plan(plan: &InitPlan) -> Result<RootPlan, SandboxError> {
    let mut root = RootPlan {
        tag: tag(0),
        upper_size_mib: u64::from(plan.resources.memory_mib),
        lower_at: String::new(),
        dirs: Vec::new(),
        symlinks: Vec::new(),
        files: Vec::new(),
    };
    if let InitRoot::Fresh = plan.root {
        root.lower_at = "/usr".into();
        for entry in fresh_root_entries(&plan.hostname).map_err(SandboxError::Root)? {
            match entry {
                RootEntry::Dir { path, mode } => root.dirs.push((format!("/{path}"), mode)),
                RootEntry::Symlink { path, target } => root
                    .symlinks
                    .push((format!("/{path}"), target.to_string_lossy().into_owned())),
                RootEntry::File { path, data, mode } => root.files.push(crate::GuestFile {
                    path: format!("/{path}"),
                    contents: data,
                    mode,
                }),
            }
        }
    }
    Ok(root)
}

/// The guest's mounts, and the disks they need attached. `file_shares`
/// says which shares serve a single file.
fn mounts(
    plan: &InitPlan,
    file_shares: &[bool],
) -> Result<(Vec<GuestMount>, Vec<Disk>), SandboxError> {
    // As the namespace init gives them: a fresh /tmp always, a fresh /run
    // unless the root directory brings its own.
    let mut own = vec!["/tmp"];
    if !matches!(plan.root, InitRoot::Dir { .. }) {
        own.push("/run");
    }
    let mut mounts: Vec<GuestMount> = own
        .into_iter()
        .map(|path| GuestMount {
            guest_path: path.to_string(),
            source: MountSource::Tmpfs {
                size_mib: u64::from(plan.resources.memory_mib),
            },
            ro: false,
            noexec: false,
            nosuid: true,
            nodev: true,
        })
        .collect();
    let mut disks = Vec::new();
    for m in &plan.mounts {
        let source = match &m.source {
            InitSource::Share { index } if file_shares.get(*index) == Some(&true) => {
                MountSource::VirtioFsFile { tag: tag(*index) }
            }
            InitSource::Share { index } => MountSource::VirtioFs { tag: tag(*index) },
            InitSource::Image {
                path,
                format,
                fstype,
            } => {
                let serial = format!("msb-disk{}", disks.len());
                disks.push(Disk {
                    path: path.clone(),
                    format: *format,
                    readonly: m.flags.readonly,
                    serial: serial.clone(),
                });
                MountSource::Block {
                    serial,
                    fstype: fstype.clone().unwrap_or_default(),
                }
            }
            InitSource::Tmpfs { size_mib } => MountSource::Tmpfs {
                size_mib: u64::from(size_mib.unwrap_or(plan.resources.memory_mib)),
            },
            InitSource::Bind { .. } | InitSource::Detached { .. } | InitSource::Fuse { .. } => {
                return Err(SandboxError::NotForVm(m.guest.to_string()));
            }
        };
        mounts.push(GuestMount {
            guest_path: m.guest.to_string(),
            source,
            ro: m.flags.readonly,
            noexec: m.flags.noexec,
            nosuid: m.flags.nosuid,
            nodev: m.flags.nodev,
        });
    }
    Ok((mounts, disks))
}

/// A private directory for the VM's sockets and logs.
fn run_dir() -> Result<RunDir, SandboxError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "msb-sandbox-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| SandboxError::Io("creating the VM's run directory", e))?;
    Ok(RunDir(dir))
}

use std::os::unix::fs::DirBuilderExt;

impl Backend for VmBackend {
    type Error = SandboxError;
    type Running = VmSandbox;

    fn start(&self, plan: &InitPlan, stdio: SandboxStdio) -> Result<VmSandbox, SandboxError> {
        if stdio.shares.is_empty() {
            return Err(SandboxError::NoRootShare);
        }
        // Declared before the servers, so dropped after them on any early
        // return: their sockets live in it.
        let run_dir = run_dir()?;
        let mut servers = Vec::new();
        let mut shares = Vec::new();
        let file_shares: Vec<bool> = stdio.shares.iter().map(|s| s.file.is_some()).collect();
        for (i, share) in stdio.shares.into_iter().enumerate() {
            let serve_err = |source| SandboxError::Serve {
                what: if i == 0 {
                    "the root".to_string()
                } else {
                    format!("share {i}")
                },
                source,
            };
            let policy_fs =
                msb_virtiofs::policy_fs(&share.root, share.config).map_err(serve_err)?;
            let fs: Arc<dyn msb_fsserver::filesystem::FileSystem> = match share.file {
                Some(name) => Arc::new(
                    one_file::OneFile::new(policy_fs, share.root.as_fd(), name)
                        .map_err(|e| SandboxError::Io("checking a single-file mount's file", e))?,
                ),
                None => policy_fs,
            };
            let socket = run_dir.0.join(format!("fs{i}.sock"));
            // The root's lower layer (the host's /usr, a root directory) is
            // not changed under a running sandbox, so the guest may keep it
            // cached: programs then start from its page cache.
            let caching = if i == 0 {
                msb_virtiofs::Caching::Immutable
            } else {
                msb_virtiofs::Caching::Coherent
            };
            servers.push(
                msb_virtiofs::Server::start_with(&socket, fs, SERVER_THREADS, caching)
                    .map_err(serve_err)?,
            );
            shares.push(Share {
                tag: tag(i),
                socket,
            });
        }
        let (mounts, disks) = mounts(plan, &file_shares)?;
        let guest = GuestPlan {
            hostname: plan.hostname.clone(),
            root: Some(root_plan(plan)?),
            mounts,
            workdir: plan.workdir.clone(),
            env: plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            // Privileged: commands start as the guest's root, unconfined.
            security: Some(plan.security).filter(|s| *s != msb_runtime::Security::Privileged),
        };
        let config = VmConfig {
            cpus: plan
                .resources
                .cpus_milli
                .map_or(1, |m| m.div_ceil(1000).max(1)),
            memory_mib: plan.resources.memory_mib,
            accel: self.accel,
            shares,
            disks,
            run_dir: Some(run_dir.0.join("vm")),
            ..VmConfig::default()
        };
        let vm = Arc::new(Vm::boot(&config, &guest)?);
        let mut sandbox = VmSandbox {
            main: Main::None,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            vm,
            _servers: servers,
            _run_dir: run_dir,
        };
        if !plan.command.is_empty() {
            let spec = ExecSpec {
                argv: plan.command.clone(),
                stdin: true,
                ..ExecSpec::default()
            };
            sandbox.main = match sandbox.vm.exec(spec) {
                Ok(exec) => {
                    feed_stdin(stdio.stdin, exec.control());
                    Main::Running(exec)
                }
                Err(VmError::StartFailed { code, message }) => Main::Failed(code, message),
                Err(e) => return Err(e.into()),
            };
        }
        Ok(sandbox)
    }
}

/// Copies `stdin` (ours when `None`) to the command until it ends.
fn feed_stdin(stdin: Option<OwnedFd>, control: ExecControl) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut input: Box<dyn Read> = match stdin {
            Some(fd) => Box::new(std::fs::File::from(fd)),
            None => Box::new(io::stdin()),
        };
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if control.write_stdin(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = control.close_stdin();
    });
}

/// Writes all of `data` to `fd`, or to our own stream `ours` when `None`.
fn write_to(fd: Option<&OwnedFd>, ours: BorrowedFd<'_>, data: &[u8]) {
    let fd = fd.map_or(ours, |f| f.as_fd());
    let mut rest = data;
    while !rest.is_empty() {
        match rustix::io::write(fd, rest) {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = &rest[n..],
        }
    }
}

impl VmSandbox {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.vm.qemu_pid()
    }

    /// How the guest's code runs.
    pub fn accel(&self) -> Accel {
        self.vm.accel()
    }

    /// Serves commands from other processes on `listener` (each
    /// connection: one command in the agent's protocol, numbered 0) until
    /// the VM ends. A client that disconnects before its command ended
    /// has its command killed.
    pub fn serve_execs(&self, listener: UnixListener) {
        let vm = Arc::clone(&self.vm);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let vm = Arc::clone(&vm);
                std::thread::spawn(move || {
                    let _ = proxy(&vm, conn);
                });
            }
        });
    }

    fn stop(&self, grace: Duration) -> i32 {
        match self.vm.shutdown(grace) {
            Ok(_) => 0,
            Err(_) => {
                self.vm.kill();
                0
            }
        }
    }
}

/// One client's command: its requests onto the VM, the VM's answers back.
fn proxy(vm: &Vm, conn: UnixStream) -> io::Result<()> {
    let mut reader = io::BufReader::new(conn.try_clone()?);
    let writer = Arc::new(Mutex::new(conn));
    let answer = |msg: &GuestMessage| -> io::Result<()> {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        write_message(&mut *w, msg).map_err(io::Error::other)
    };
    let request: ExecRequest = match read_message(&mut reader).map_err(io::Error::other)? {
        Some(HostMessage::Exec(r)) => r,
        _ => return Ok(()),
    };
    let spec = ExecSpec {
        argv: request.argv,
        env: request.env,
        workdir: request.workdir,
        tty: request.tty,
        stdin: request.stdin,
    };
    let exec = match vm.exec(spec) {
        Ok(e) => e,
        Err(VmError::StartFailed { code, message }) => {
            return answer(&GuestMessage::StartFailed {
                id: 0,
                code,
                message,
            });
        }
        Err(e) => {
            return answer(&GuestMessage::Error {
                id: Some(0),
                message: e.to_string(),
            });
        }
    };
    answer(&GuestMessage::Started {
        id: 0,
        pid: exec.pid(),
    })?;
    let done = Arc::new(AtomicBool::new(false));
    let control = exec.control();
    {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            loop {
                let msg = match read_message::<_, HostMessage>(&mut reader) {
                    Ok(Some(m)) => m,
                    // The client is gone: so is its command.
                    _ => {
                        if !done.load(Ordering::Relaxed) {
                            let _ = control.signal(libc::SIGKILL);
                        }
                        return;
                    }
                };
                let _ = match msg {
                    HostMessage::Stdin { data, .. } => control.write_stdin(&data),
                    HostMessage::StdinClose { .. } => control.close_stdin(),
                    HostMessage::Signal { signo, .. } => control.signal(signo),
                    HostMessage::Resize { rows, cols, .. } => control.resize(rows, cols),
                    _ => Ok(()),
                };
            }
        });
    }
    loop {
        let msg = match exec.next_event() {
            Ok(ExecEvent::Stdout(data)) => GuestMessage::Stdout { id: 0, data },
            Ok(ExecEvent::Stderr(data)) => GuestMessage::Stderr { id: 0, data },
            Ok(ExecEvent::Exited(status)) => {
                done.store(true, Ordering::Relaxed);
                return answer(&GuestMessage::Exited { id: 0, status });
            }
            Err(e) => {
                return answer(&GuestMessage::Error {
                    id: Some(0),
                    message: e.to_string(),
                });
            }
        };
        answer(&msg)?;
    }
}

impl Running for VmSandbox {
    type Error = SandboxError;

    fn signal(&self, signal: i32) -> Result<(), SandboxError> {
        match &self.main {
            Main::Running(exec) => Ok(exec.signal(signal)?),
            Main::Failed(..) => Ok(()),
            Main::None => {
                if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGKILL) {
                    self.vm.kill();
                }
                Ok(())
            }
        }
    }

    fn wait(&mut self, forward_signals: bool) -> Result<i32, SandboxError> {
        let exec = match &self.main {
            Main::Failed(code, message) => {
                let line = format!("error: {message}\n");
                write_to(self.stderr.as_ref(), io::stderr().as_fd(), line.as_bytes());
                return Ok(*code);
            }
            Main::None => return Ok(self.keep()),
            Main::Running(exec) => exec,
        };
        let done = Arc::new(AtomicBool::new(false));
        if forward_signals {
            let control = exec.control();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some((signo, _)) = msb_runtime::poll_signal(Duration::from_millis(100))
                        && control.signal(signo).is_err()
                    {
                        return;
                    }
                }
            });
        }
        let status = loop {
            match exec.next_event() {
                Ok(ExecEvent::Stdout(d)) => {
                    write_to(self.stdout.as_ref(), io::stdout().as_fd(), &d)
                }
                Ok(ExecEvent::Stderr(d)) => {
                    write_to(self.stderr.as_ref(), io::stderr().as_fd(), &d)
                }
                Ok(ExecEvent::Exited(status)) => break Ok(status),
                Err(e) => break Err(e),
            }
        };
        done.store(true, Ordering::Relaxed);
        let _ = io::stdout().flush();
        self.stop(Duration::ZERO);
        Ok(status?)
    }
}

impl VmSandbox {
    /// A kept sandbox: runs until a stop request (SIGTERM carrying the
    /// grace period in milliseconds, or any of SIGINT, SIGHUP, SIGQUIT) or
    /// until the VM ends by itself.
    fn keep(&self) -> i32 {
        loop {
            if self.vm.wait(Some(Duration::ZERO)).is_some() {
                return 0;
            }
            match msb_runtime::poll_signal(Duration::from_millis(200)) {
                Some((libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT, value)) => {
                    let grace = value.map_or(msb_runtime::DEFAULT_STOP_GRACE, |ms| {
                        Duration::from_millis(ms as u64)
                    });
                    return self.stop(grace);
                }
                _ => continue,
            }
        }
    }
}

/// Whether `--backend auto` takes the microVM here: only where a probe
/// boot proved KVM works (cached per host and guest kernel); under TCG a
/// VM is far slower than namespaces, so `auto` does not pick it.
pub fn auto_picks_vm() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let assets = crate::assets_dir();
    crate::Kernel::ensure(&assets)
        .is_ok_and(|kernel| crate::kvm_works(&assets, &kernel, &VmConfig::default()))
}
