//! Named sandboxes: created once, started and stopped any number of times,
//! running many commands in between, keeping their volumes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use msb::{Mount, MountOptions, NamedMode, NamedVolumeOptions, Sandbox, VolumeName};
//! // Created with the sandbox if missing, kept when the sandbox is removed.
//! let ensure = NamedVolumeOptions { mode: NamedMode::EnsureExists, ..Default::default() };
//! let data = Mount::named_with(VolumeName::new("data")?, MountOptions::default(), ensure);
//! let sb = Sandbox::builder("web").volume("/data", data).env("MODE", "dev").create().await?;
//! let out = sb.exec("sh", ["-c", "echo $MODE > /data/mode"]).await?;
//! assert_eq!(out.status, 0);
//! sb.stop().await?;
//! let sb = Sandbox::start("web").await?; // same mounts, same data
//! sb.stop().await?;
//! Sandbox::remove("web").await?; // releases the volume
//! # Ok(()) }
//! ```
//!
//! A sandbox is a record in the store holding its validated config with
//! absolute host paths, so it means the same mounts from any directory,
//! and keeps every named volume it references in use until it is removed.
//! Starting it spawns a detached supervisor that holds
//! `<home>/run/sandboxes/NAME.lock` for as long as the sandbox runs, with
//! the volume attachments and filesystem servers. The sandbox's init runs
//! no command: it waits, and commands join its namespaces
//! ([`Sandbox::exec`]). The init dies with the supervisor
//! (`PR_SET_PDEATHSIG`), so a killed supervisor simply means stopped.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use msb_runtime::{
    Backend, BackendKind, NamespaceBackend, PrepareError, Resources, RunError, Running,
    SandboxSpec, SandboxStdio, Security,
};
use msb_spec::{GuestPath, Mount, MountError, MountTable, NameError, NamedMode, VolumeName};
use msb_store::{SandboxRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::Helper;
use super::exec::ExecBuilder;

/// Errors of named sandboxes' lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The name is not a valid sandbox name.
    #[error("invalid sandbox name {name:?}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NameError,
    },
    /// A mount is invalid.
    #[error("invalid mount")]
    Mount(#[from] MountError),
    /// A memory, CPU or process limit is out of range.
    #[error("invalid resource limits")]
    Resources(#[source] msb_runtime::CgroupError),
    /// The working directory is not an absolute guest path.
    #[error("invalid working directory")]
    Workdir(#[source] MountError),
    /// An environment variable name is empty or holds `=` or NUL (or its
    /// value holds NUL).
    #[error("invalid environment variable name {0:?}")]
    Env(String),
    /// The root filesystem directory cannot be resolved.
    #[error("cannot use root filesystem {path}")]
    Rootfs {
        /// The directory as given.
        path: PathBuf,
        /// Why it cannot be resolved.
        #[source]
        source: std::io::Error,
    },
    /// No sandbox has this name.
    #[error("sandbox not found: {0}")]
    NotFound(String),
    /// The name is taken.
    #[error("sandbox already exists: {0}")]
    AlreadyExists(String),
    /// Start of a sandbox that runs.
    #[error("sandbox {0} is already running")]
    AlreadyRunning(String),
    /// Removal of a sandbox that runs (stop it, or force the removal).
    #[error("sandbox {0} is running; stop it first")]
    Running(String),
    /// A named volume could not be looked up or created.
    #[error("cannot provision volume {name} for {guest}")]
    Provision {
        /// The volume.
        name: VolumeName,
        /// Where it was to be mounted.
        guest: GuestPath,
        /// The store's reason.
        #[source]
        source: StoreError,
    },
    /// A named volume's creation settings are invalid.
    #[error("invalid settings for volume {name} at {guest}")]
    Settings {
        /// The volume.
        name: VolumeName,
        /// Where it was to be mounted.
        guest: GuestPath,
        /// What is wrong.
        #[source]
        source: MountError,
    },
    /// A bind or disk mount's host path is missing, of the wrong type, or
    /// a file where a policy needs a directory.
    #[error("cannot mount a host path")]
    HostPath(#[source] PrepareError),
    /// Something every start would need that this user lacks: on the
    /// namespace backend without root, a disk image (loop devices are
    /// root's) or `/dev/fuse` for a served mount. Refused at create.
    #[error(
        "this sandbox could never start for this user on the namespace backend (a microVM, --backend vm, needs no root)"
    )]
    Unstartable(#[source] PrepareError),
    /// An existing volume does not match its ensure-exists mount.
    #[error("cannot reuse an existing volume")]
    Incompatible(#[source] PrepareError),
    /// The recorded config cannot be read (or written).
    #[error("stored config of sandbox {name} is unreadable")]
    BadRecord {
        /// The sandbox.
        name: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error("the sandbox store failed")]
    Store(#[source] StoreError),
    /// No helper program was found (see [`crate::sandbox_init_hook`]).
    #[error(
        "cannot find the msb binary that runs sandboxes; set MSB_BIN to it, put it on PATH, or call msb::sandbox_init_hook() first in main"
    )]
    NoHelper,
    /// The supervisor process could not be started or talked to.
    #[error("cannot start the supervisor of sandbox {name}")]
    Supervisor {
        /// The sandbox.
        name: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor could not start the sandbox.
    #[error("sandbox {name} did not start: {reason}")]
    StartFailed {
        /// The sandbox.
        name: String,
        /// The supervisor's explanation.
        reason: String,
    },
    /// In the supervisor: the sandbox could not be set up.
    #[error("cannot set the sandbox up")]
    Setup(#[from] RunError),
    /// A file under `<home>/run/sandboxes` cannot be used.
    #[error("cannot use the runtime file {path}")]
    RunFile {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SandboxNotFound(n) => LifecycleError::NotFound(n),
            StoreError::SandboxExists(n) => LifecycleError::AlreadyExists(n),
            e => LifecycleError::Store(e),
        }
    }
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// What a sandbox record stores: everything `start` and `exec` need,
/// validated, with absolute host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    rootfs: Option<PathBuf>,
    workdir: Option<GuestPath>,
    env: Vec<(String, String)>,
    security: Security,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    backend: BackendKind,
    mounts: MountTable,
}

impl SandboxConfig {
    /// Root filesystem directory (under a private writable layer); `None` is
    /// a fresh root with the host's programs, `/` the host's root read-only.
    pub fn rootfs(&self) -> Option<&Path> {
        self.rootfs.as_deref()
    }

    /// Working directory of commands; `None` is `/`.
    pub fn workdir(&self) -> Option<&GuestPath> {
        self.workdir.as_ref()
    }

    /// Environment of commands, on top of PATH, HOME and HOSTNAME.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Privileges of commands.
    pub fn security(&self) -> Security {
        self.security
    }

    /// Memory, CPU and process limits of the whole sandbox.
    pub fn resources(&self) -> Resources {
        self.resources
    }

    /// The isolation its commands get.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The mounts, parents first.
    pub fn mounts(&self) -> &MountTable {
        &self.mounts
    }
}

/// Whether a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// A live supervisor holds it.
    Running,
    /// Recorded, not running (never started, stopped, or its supervisor died).
    Stopped,
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxState::Running => "running",
            SandboxState::Stopped => "stopped",
        })
    }
}

/// The sandboxes of one home directory (the same store as its volumes).
/// Cheap to clone.
#[derive(Clone)]
pub struct SandboxStore {
    store: Arc<Store>,
}

impl std::fmt::Debug for SandboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxStore")
            .field("home", &self.home())
            .finish()
    }
}

impl SandboxStore {
    /// Opens the store at `home` (created if missing).
    pub fn open(home: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store::open(home)?),
        })
    }

    /// The store at `$MSB_HOME`, else `~/.microsandbox`, opened once per
    /// process and home.
    pub fn default_home() -> Result<Self> {
        Ok(Self {
            store: crate::volume::default_store()?,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.store.layout().home()
    }

    /// Starts describing a new sandbox called `name` in this store.
    pub fn builder(&self, name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder {
            store: Some(self.clone()),
            ..SandboxBuilder::new(name.into())
        }
    }

    /// Looks a sandbox up.
    pub async fn get(&self, name: &str) -> Result<Sandbox> {
        let name = name.to_string();
        self.blocking(move |s| s.load(&name)).await
    }

    /// Every sandbox, newest first.
    pub async fn list(&self) -> Result<Vec<Sandbox>> {
        self.blocking(|s| {
            s.store
                .sandboxes()?
                .into_iter()
                .map(|rec| s.sandbox(rec))
                .collect()
        })
        .await
    }

    /// Starts a stopped sandbox with its recorded config and returns once
    /// it runs.
    pub async fn start(&self, name: &str) -> Result<Sandbox> {
        let name = name.to_string();
        self.blocking(move |s| s.start_blocking(&name)).await
    }

    /// Stops a sandbox if it runs and waits until it is down (its mounts,
    /// servers and locks gone). Commands still running in it get SIGTERM
    /// and five seconds to exit before they are killed.
    pub async fn stop(&self, name: &str) -> Result<()> {
        self.stop_with_grace(name, msb_runtime::DEFAULT_STOP_GRACE)
            .await
    }

    /// Like [`SandboxStore::stop`], with `grace` between SIGTERM and the
    /// kill instead of five seconds (zero kills at once).
    pub async fn stop_with_grace(&self, name: &str, grace: Duration) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |s| {
            let sb = s.load(&name)?;
            sb.files.halt(grace)
        })
        .await
    }

    /// Removes a stopped sandbox, releasing its volumes (the volumes and
    /// their data stay). A running one is refused.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |s| s.remove_blocking(&name, false))
            .await
    }

    /// Stops the sandbox if it runs, then removes it.
    pub async fn force_remove(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |s| s.remove_blocking(&name, true)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SandboxStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s)).await?
    }

    fn files(&self, name: &str) -> Result<RunFiles> {
        RunFiles::new(&self.store, name)
    }

    fn sandbox(&self, rec: SandboxRecord) -> Result<Sandbox> {
        let config =
            serde_json::from_str(&rec.config).map_err(|source| LifecycleError::BadRecord {
                name: rec.name.clone(),
                source,
            })?;
        Ok(Sandbox {
            files: self.files(&rec.name)?,
            store: self.clone(),
            name: rec.name,
            config,
            volumes: rec.volumes,
            created_at: rec.created_at,
        })
    }

    fn load(&self, name: &str) -> Result<Sandbox> {
        self.sandbox(self.store.sandbox(name)?)
    }

    /// Records a sandbox, provisioning its named volumes first; returns it
    /// and the volumes created for it.
    fn create_blocking(
        &self,
        name: &str,
        mut config: SandboxConfig,
    ) -> Result<(Sandbox, Vec<VolumeName>)> {
        let store = &*self.store;
        // Refuse a taken name before provisioning anything for it.
        match store.sandbox(name) {
            Ok(_) => return Err(LifecycleError::AlreadyExists(name.to_string())),
            Err(StoreError::SandboxNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // An existing ensure-exists volume must match what is asked, as at
        // start: refused now, before anything is recorded.
        let spec = SandboxSpec {
            mounts: config.mounts.clone(),
            backend: super::resolve_backend(config.backend),
            ..SandboxSpec::default()
        };
        match msb_runtime::dry_run(&spec, store) {
            // What this user could never start is refused before anything
            // is recorded or provisioned.
            Ok(dry) => {
                msb_runtime::check_user(&spec, &dry, store).map_err(LifecycleError::Unstartable)?
            }
            Err(e @ PrepareError::Incompatible { .. }) => {
                return Err(LifecycleError::Incompatible(e));
            }
            // A host path that start could not mount is refused now too.
            Err(
                e @ (PrepareError::HostPath { .. }
                | PrepareError::WrongType { .. }
                | PrepareError::PolicyOnFile { .. }),
            ) => return Err(LifecycleError::HostPath(e)),
            _ => {}
        }
        // A volume created here is the sandbox's from now on: later starts
        // use it rather than ask for a new one.
        let recorded_mounts = MountTable::new(
            config.mounts.entries().iter().map(|e| {
                let mut mount = e.mount.clone();
                if let Mount::Named { volume, .. } = &mut mount
                    && volume.mode == NamedMode::Create
                {
                    volume.mode = NamedMode::Existing;
                }
                (e.guest.clone(), mount)
            }),
            Path::new("/"),
        )?;
        let (used, created) = provision(store, &config.mounts)?;
        config.mounts = recorded_mounts;
        let recorded = serde_json::to_string(&config)
            .map_err(|source| LifecycleError::BadRecord {
                name: name.to_string(),
                source,
            })
            .and_then(|json| Ok(store.create_sandbox(name, &json, &used)?));
        match recorded {
            Ok(rec) => Ok((self.sandbox(rec)?, created)),
            Err(e) => {
                // Volumes made for this sandbox alone go with it.
                for v in &created {
                    let _ = store.remove(v);
                }
                Err(e)
            }
        }
    }

    fn start_blocking(&self, name: &str) -> Result<Sandbox> {
        let sb = self.load(name)?;
        if sb.files.running() {
            return Err(LifecycleError::AlreadyRunning(sb.name));
        }
        let helper = Helper::find().ok_or(LifecycleError::NoHelper)?;
        let supervisor_err = |source| LifecycleError::Supervisor {
            name: sb.name.clone(),
            source,
        };
        let log =
            std::fs::File::create(&sb.files.log).map_err(|source| LifecycleError::RunFile {
                path: sb.files.log.clone(),
                source,
            })?;
        let home = std::fs::canonicalize(self.home()).map_err(supervisor_err)?;
        let mut child = helper
            .supervisor(&sb.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group, so a terminal's Ctrl-C does not reach
            // it; and not holding the caller's directory busy.
            .process_group(0)
            .current_dir("/")
            .env("MSB_HOME", home)
            .spawn()
            .map_err(supervisor_err)?;
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        out.read_line(&mut line).map_err(supervisor_err)?;
        if line == "ready\n" {
            // Reaped whenever it ends, so a long-lived caller collects no zombies.
            std::thread::spawn(move || child.wait());
            return Ok(sb);
        }
        let _ = child.wait();
        let why = std::fs::read_to_string(&sb.files.log).unwrap_or_default();
        let why = why.trim().trim_start_matches("error: ");
        Err(LifecycleError::StartFailed {
            name: sb.name,
            reason: if why.is_empty() {
                "the supervisor ended without a reason".to_string()
            } else {
                why.to_string()
            },
        })
    }

    fn remove_blocking(&self, name: &str, force: bool) -> Result<()> {
        let sb = self.load(name)?;
        if force {
            sb.files.halt(msb_runtime::DEFAULT_STOP_GRACE)?;
        }
        // Holding the lock keeps the sandbox from starting meanwhile.
        let Some(lock) = sb.files.try_lock()? else {
            return Err(LifecycleError::Running(sb.name));
        };
        self.store.remove_sandbox(&sb.name)?;
        for p in [&sb.files.pid, &sb.files.log, &sb.files.lock] {
            let _ = std::fs::remove_file(p);
        }
        drop(lock);
        Ok(())
    }
}

/// Looks up or creates each named volume as its mode says; returns the
/// names referenced and those created here (to undo on failure).
fn provision(store: &Store, mounts: &MountTable) -> Result<(Vec<VolumeName>, Vec<VolumeName>)> {
    let mut used = Vec::new();
    let mut created = Vec::new();
    for entry in mounts.entries() {
        let Mount::Named { name, volume, .. } = &entry.mount else {
            continue;
        };
        let fail = |source: StoreError| LifecycleError::Provision {
            name: name.clone(),
            guest: entry.guest.clone(),
            source,
        };
        let undo = |created: &[VolumeName]| {
            for v in created {
                let _ = store.remove(v);
            }
        };
        let create = |created: &mut Vec<VolumeName>| -> Result<()> {
            let config = volume
                .volume_config(name)
                .map_err(|source| LifecycleError::Settings {
                    name: name.clone(),
                    guest: entry.guest.clone(),
                    source,
                })?;
            match store.create(&config) {
                Ok(_) => {
                    created.push(name.clone());
                    Ok(())
                }
                // Lost a race with another creator: ensure-exists reuses theirs.
                Err(StoreError::AlreadyExists(_)) if volume.mode == NamedMode::EnsureExists => {
                    store.get(name).map(drop).map_err(fail)
                }
                Err(e) => Err(fail(e)),
            }
        };
        let done = match volume.mode {
            NamedMode::Existing => store.get(name).map(drop).map_err(fail),
            NamedMode::Create => create(&mut created),
            NamedMode::EnsureExists => match store.get(name) {
                Ok(_) => Ok(()),
                Err(StoreError::NotFound(_)) => create(&mut created),
                Err(e) => Err(fail(e)),
            },
        };
        if let Err(e) = done {
            undo(&created);
            return Err(e);
        }
        used.push(name.clone());
    }
    Ok((used, created))
}

/// Runtime files of a named sandbox: a lock its supervisor holds while it
/// runs, the init's and supervisor's pids, written once the sandbox is up,
/// and the supervisor's log.
#[derive(Debug, Clone)]
pub(crate) struct RunFiles {
    lock: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    /// Where a microVM sandbox's supervisor takes commands (absent for a
    /// namespace sandbox).
    pub(crate) exec_socket: PathBuf,
}

impl RunFiles {
    fn new(store: &Store, name: &str) -> Result<Self> {
        let dir = store.layout().run_dir().join("sandboxes");
        std::fs::create_dir_all(&dir).map_err(|source| LifecycleError::RunFile {
            path: dir.clone(),
            source,
        })?;
        Ok(RunFiles {
            lock: dir.join(format!("{name}.lock")),
            pid: dir.join(format!("{name}.pid")),
            log: dir.join(format!("{name}.log")),
            exec_socket: dir.join(format!("{name}.sock")),
        })
    }

    /// Whether a live supervisor holds the lock. A dead one released it
    /// with its last descriptor, so the sandbox then counts as stopped.
    pub(crate) fn running(&self) -> bool {
        match std::fs::File::open(&self.lock) {
            Ok(f) => matches!(
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared),
                Err(rustix::io::Errno::WOULDBLOCK)
            ),
            Err(_) => false,
        }
    }

    /// The lock, taken exclusively, or `None` if a supervisor holds it.
    fn try_lock(&self) -> Result<Option<std::fs::File>> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|source| LifecycleError::RunFile {
                path: self.lock.clone(),
                source,
            })?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(lock)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(LifecycleError::RunFile {
                path: self.lock.clone(),
                source: e.into(),
            }),
        }
    }

    /// `(init pid, supervisor pid)` of a running sandbox.
    pub(crate) fn pids(&self) -> Option<(i32, i32)> {
        let s = std::fs::read_to_string(&self.pid).ok()?;
        let (a, b) = s.trim().split_once(' ')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// The init's pid, while the sandbox runs.
    pub(crate) fn init_pid(&self) -> Option<i32> {
        self.pids().filter(|_| self.running()).map(|(init, _)| init)
    }

    /// Stops the sandbox if it runs, its commands given `grace` to exit,
    /// and waits until its supervisor is gone.
    fn halt(&self, grace: Duration) -> Result<()> {
        let Some((_, supervisor)) = self.pids().filter(|_| self.running()) else {
            return Ok(());
        };
        let Some(pid) = rustix::process::Pid::from_raw(supervisor) else {
            return Ok(());
        };
        // The supervisor forwards the request to the init and cleans up as
        // the sandbox ends.
        let _ = msb_runtime::request_stop(supervisor, grace);
        // Past the grace period and a margin, the supervisor is killed (the
        // sandbox dies with it).
        let deadline = Instant::now().checked_add(grace.saturating_add(Duration::from_secs(5)));
        while self.running() {
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

/// Runs the supervisor of the named sandbox `name` of the store at
/// `$MSB_HOME` in this process, until the sandbox stops: what the helper
/// program does when a sandbox starts (`msb start NAME --supervise`, or a
/// program calling [`crate::sandbox_init_hook`]). Prints `ready` on
/// standard output once the sandbox runs. The caller must have called
/// `msb_runtime::block_signals` before starting any thread.
pub fn supervise_sandbox(name: &str) -> Result<()> {
    let store = Store::open_default()?;
    let rec = store.sandbox(name)?;
    let config: SandboxConfig =
        serde_json::from_str(&rec.config).map_err(|source| LifecycleError::BadRecord {
            name: rec.name.clone(),
            source,
        })?;
    let files = RunFiles::new(&store, name)?;
    let Some(lock) = files.try_lock()? else {
        return Err(LifecycleError::AlreadyRunning(name.to_string()));
    };
    let helper = Helper::find().ok_or(LifecycleError::NoHelper)?;
    let backend = super::resolve_backend(config.backend);
    let spec = SandboxSpec {
        rootfs: config.rootfs,
        workdir: config.workdir,
        env: config.env,
        security: config.security,
        resources: config.resources,
        backend,
        mounts: config.mounts,
        // No command: the init itself keeps the sandbox up.
        command: Vec::new(),
    };
    let mut prepared =
        msb_runtime::prepare(&spec, &store, &format!("sandbox:{name}")).map_err(RunError::from)?;
    let null = || {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|source| LifecycleError::RunFile {
                path: "/dev/null".into(),
                source,
            })
    };
    let mut stdio = SandboxStdio {
        stdin: Some(null()?),
        stdout: Some(null()?),
        stderr: Some(null()?),
        ..Default::default()
    };
    stdio.passed.extend(prepared.take_passed_fds());
    stdio.shares.extend(prepared.take_shares());
    if backend == BackendKind::Vm {
        return supervise_vm(prepared, stdio, &files, lock);
    }
    let backend = NamespaceBackend::new(helper.init());
    let mut sandbox = match backend.start(&prepared.plan, stdio) {
        Ok(s) => s,
        Err(e) => {
            prepared.rollback();
            return Err(RunError::from(e).into());
        }
    };
    std::fs::write(
        &files.pid,
        format!("{} {}\n", sandbox.pid(), std::process::id()),
    )
    .map_err(|source| LifecycleError::RunFile {
        path: files.pid.clone(),
        source,
    })?;
    println!("ready");
    let status = sandbox.wait(true);
    drop(sandbox);
    prepared.finish();
    let _ = std::fs::remove_file(&files.pid);
    drop(lock);
    status.map_err(RunError::from)?;
    Ok(())
}

/// The supervisor's work for a microVM sandbox: boots it, takes commands
/// on the exec socket, and stops it on request.
fn supervise_vm(
    prepared: msb_runtime::Prepared<'_>,
    stdio: SandboxStdio,
    files: &RunFiles,
    lock: std::fs::File,
) -> Result<()> {
    let run_file = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LifecycleError::RunFile { path, source }
    };
    let _ = std::fs::remove_file(&files.exec_socket);
    let listener = std::os::unix::net::UnixListener::bind(&files.exec_socket)
        .map_err(run_file(&files.exec_socket))?;
    // Only the owner may run commands in it.
    std::fs::set_permissions(
        &files.exec_socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(run_file(&files.exec_socket))?;
    let mut sandbox = match msb_vm::VmBackend::default().start(&prepared.plan, stdio) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&files.exec_socket);
            prepared.rollback();
            return Err(RunError::from(e).into());
        }
    };
    sandbox.serve_execs(listener);
    std::fs::write(
        &files.pid,
        format!("{} {}\n", sandbox.pid(), std::process::id()),
    )
    .map_err(run_file(&files.pid))?;
    println!("ready");
    let status = sandbox.wait(true);
    drop(sandbox);
    prepared.finish();
    let _ = std::fs::remove_file(&files.exec_socket);
    let _ = std::fs::remove_file(&files.pid);
    drop(lock);
    status.map_err(RunError::from)?;
    Ok(())
}

/// Describes a new named sandbox; see [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    store: Option<SandboxStore>,
    name: String,
    rootfs: Option<PathBuf>,
    mounts: Vec<(String, Mount)>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    security: Security,
    resources: Resources,
    backend: BackendKind,
}

impl SandboxBuilder {
    fn new(name: String) -> Self {
        Self {
            store: None,
            name,
            rootfs: None,
            mounts: Vec::new(),
            env: Vec::new(),
            workdir: None,
            security: Security::default(),
            resources: Resources::default(),
            backend: BackendKind::default(),
        }
    }

    /// Uses `dir` as the root filesystem, written through a private layer
    /// (`/` shares the host's root, read-only) instead of a fresh root.
    /// A relative path is resolved now, against the current directory.
    pub fn rootfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rootfs = Some(dir.into());
        self
    }

    /// Mounts `mount` at `guest_path` (any order; parents are mounted first).
    pub fn volume(mut self, guest_path: impl Into<String>, mount: Mount) -> Self {
        self.mounts.push((guest_path.into(), mount));
        self
    }

    /// Adds mounts, from guest path to mount.
    pub fn mounts(mut self, mounts: impl IntoIterator<Item = (impl Into<String>, Mount)>) -> Self {
        self.mounts
            .extend(mounts.into_iter().map(|(g, m)| (g.into(), m)));
        self
    }

    /// Sets an environment variable for every command run in the sandbox.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Working directory of every command run in the sandbox.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Security profile of every command run in the sandbox.
    pub fn security(mut self, profile: Security) -> Self {
        self.security = profile;
        self
    }

    /// Memory, CPU and process limits of the whole sandbox (default:
    /// [`Resources::default`]).
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// The isolation (default: [`BackendKind::Namespace`]).
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Validates everything, once, at the edge.
    fn config(&self) -> Result<(String, SandboxConfig)> {
        let name = VolumeName::new(self.name.as_str())
            .map_err(|source| LifecycleError::InvalidName {
                name: self.name.clone(),
                source,
            })?
            .as_str()
            .to_string();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mounts = super::guest_mounts(&self.mounts)?;
        let workdir =
            super::guest_workdir(self.workdir.as_deref()).map_err(LifecycleError::Workdir)?;
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(LifecycleError::Env(k.clone()));
            }
            // The last setting of a name wins.
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        self.resources
            .validate()
            .map_err(LifecycleError::Resources)?;
        let rootfs = match &self.rootfs {
            Some(r) => Some(std::fs::canonicalize(cwd.join(r)).map_err(|source| {
                LifecycleError::Rootfs {
                    path: r.clone(),
                    source,
                }
            })?),
            None => None,
        };
        Ok((
            name,
            SandboxConfig {
                rootfs,
                workdir,
                env,
                security: self.security,
                resources: self.resources,
                backend: self.backend,
                mounts: MountTable::new(mounts, &cwd)?,
            },
        ))
    }

    fn store(&self) -> Result<SandboxStore> {
        match &self.store {
            Some(s) => Ok(s.clone()),
            None => SandboxStore::default_home(),
        }
    }

    /// Records the sandbox (provisioning its named volumes) and starts it.
    /// If it cannot start, it is removed again, with the volumes created
    /// for it.
    pub async fn create(self) -> Result<Sandbox> {
        let (name, config) = self.config()?;
        let store = self.store()?;
        store
            .blocking(move |s| {
                let (_, created) = s.create_blocking(&name, config)?;
                s.start_blocking(&name).inspect_err(|_| {
                    // Created and started as one: undone as one.
                    if s.remove_blocking(&name, true).is_ok() {
                        for v in &created {
                            let _ = s.store.remove(v);
                        }
                    }
                })
            })
            .await
    }

    /// Records the sandbox (provisioning its named volumes) without
    /// starting it; [`Sandbox::start`] starts it later.
    pub async fn create_stopped(self) -> Result<Sandbox> {
        let (name, config) = self.config()?;
        let store = self.store()?;
        store
            .blocking(move |s| s.create_blocking(&name, config).map(|(sb, _)| sb))
            .await
    }
}

/// A named sandbox, as recorded when this handle was made; its state is
/// read live ([`Sandbox::state`]).
#[derive(Debug, Clone)]
pub struct Sandbox {
    store: SandboxStore,
    files: RunFiles,
    name: String,
    config: SandboxConfig,
    volumes: Vec<VolumeName>,
    created_at: SystemTime,
}

impl Sandbox {
    /// Starts describing a new sandbox called `name` in the default home
    /// (`$MSB_HOME` or `~/.microsandbox`); [`SandboxStore::builder`] uses
    /// another.
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder::new(name.into())
    }

    /// Starts a stopped sandbox of the default home.
    pub async fn start(name: &str) -> Result<Sandbox> {
        SandboxStore::default_home()?.start(name).await
    }

    /// Looks a sandbox of the default home up.
    pub async fn get(name: &str) -> Result<Sandbox> {
        SandboxStore::default_home()?.get(name).await
    }

    /// Every sandbox of the default home, newest first.
    pub async fn list() -> Result<Vec<Sandbox>> {
        SandboxStore::default_home()?.list().await
    }

    /// Removes a stopped sandbox of the default home, releasing its volumes.
    pub async fn remove(name: &str) -> Result<()> {
        SandboxStore::default_home()?.remove(name).await
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its recorded config.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Named volumes it references (in use while it exists), sorted.
    pub fn volumes(&self) -> &[VolumeName] {
        &self.volumes
    }

    /// When it was created.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// The store it belongs to.
    pub fn store(&self) -> &SandboxStore {
        &self.store
    }

    /// Whether it runs now.
    pub fn state(&self) -> SandboxState {
        if self.files.running() {
            SandboxState::Running
        } else {
            SandboxState::Stopped
        }
    }

    /// Stops it if it runs and waits until it is down (see
    /// [`SandboxStore::stop`]).
    pub async fn stop(&self) -> Result<()> {
        self.stop_with_grace(msb_runtime::DEFAULT_STOP_GRACE).await
    }

    /// Like [`Sandbox::stop`], with `grace` between SIGTERM and the kill
    /// (see [`SandboxStore::stop_with_grace`]).
    pub async fn stop_with_grace(&self, grace: Duration) -> Result<()> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.halt(grace)).await?
    }

    /// Describes a command to run in the running sandbox.
    pub fn command(&self, program: impl Into<String>) -> ExecBuilder {
        ExecBuilder::new(self.clone(), program.into())
    }

    /// Runs `program` with `args` in the running sandbox, with no input,
    /// and collects its exit status and output.
    pub async fn exec(
        &self,
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<super::ExecOutput, super::ExecError> {
        self.command(program).args(args).output().await
    }

    /// Starts `program` with `args` in the running sandbox and streams its
    /// output as it comes ([`super::ExecStream`]).
    pub async fn exec_stream(
        &self,
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<super::ExecStream, super::ExecError> {
        self.command(program).args(args).spawn().await
    }

    pub(crate) fn files(&self) -> &RunFiles {
        &self.files
    }
}
