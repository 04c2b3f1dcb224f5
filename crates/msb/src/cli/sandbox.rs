//! Named sandboxes: `msb create`, `ls`, `inspect`, `rm`, `start`, `exec`,
//! `stop`. A sandbox is a record in the store holding the validated config
//! with absolute host paths, so it means the same mounts from any directory,
//! and keeps every named volume it references in use until it is removed.
//!
//! `start` spawns a detached supervisor (`msb start NAME --supervise`) that
//! holds `<home>/run/sandboxes/NAME.lock` for as long as the sandbox runs,
//! with the volume attachments and filesystem servers; the sandbox's init
//! dies with it (PR_SET_PDEATHSIG), so a killed supervisor simply means
//! stopped. `exec` joins the init's namespaces with the workload's
//! privileges ([`msb_runtime::join`]).

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use clap::ValueEnum;
use msb_runtime::{
    Backend, InitProgram, NamespaceBackend, Running, SandboxSpec, SandboxStdio, Security,
};
use msb_spec::{GuestPath, Mount, MountError, MountTable, NamedMode, VolumeName};
use msb_store::{SandboxRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::CliResult;

/// Arguments of `msb create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The sandbox's name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Root filesystem directory (default: the host's root, read-only).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// default or restricted (see `msb run --help`).
    #[arg(long, default_value = "default", value_parser = parse_security)]
    pub security: Security,
    #[command(flatten)]
    pub mounts: super::run::MountFlags,
}

/// Arguments of `msb ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Arguments of `msb inspect` and `msb rm`.
#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The sandbox's name.
    pub name: String,
}

/// Arguments of `msb rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The sandbox's name.
    pub name: String,
    /// Stop the sandbox first if it is running.
    #[arg(short, long)]
    pub force: bool,
}

/// Output format of `msb ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
}

/// What a sandbox record stores: everything `start` needs, validated, with
/// absolute host paths.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxConfig {
    rootfs: Option<PathBuf>,
    workdir: Option<GuestPath>,
    env: Vec<(String, String)>,
    security: Security,
    mounts: MountTable,
}

/// A sandbox as `ls` and `inspect` show it.
#[derive(Debug, Serialize)]
struct View {
    name: String,
    /// `running` while a supervisor holds the sandbox's lock, else `stopped`.
    state: &'static str,
    created_at: String,
    volumes: Vec<VolumeName>,
    config: SandboxConfig,
}

fn parse_security(s: &str) -> Result<Security, String> {
    s.parse()
}

/// A usage error: printed, exit 2.
fn usage(msg: impl std::fmt::Display) -> CliResult {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

fn sandbox_name(s: &str) -> Result<String, String> {
    VolumeName::new(s)
        .map(|n| n.as_str().to_string())
        .map_err(|e| format!("invalid sandbox name {s:?}: {e}"))
}

/// The arguments as a validated config, or a usage message.
fn config(args: &CreateArgs) -> Result<SandboxConfig, String> {
    let mounts = args.mounts.table()?;
    let workdir = match args.workdir.as_deref() {
        None | Some("/") => None,
        Some(w) => Some(GuestPath::new(w).map_err(|e| format!("invalid --workdir: {e}"))?),
    };
    let mut env = Vec::new();
    for e in &args.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => return Err(format!("invalid --env {e:?}: expected K=V")),
        }
    }
    let rootfs = match &args.rootfs {
        Some(r) => Some(
            std::fs::canonicalize(r)
                .map_err(|e| format!("invalid --rootfs {}: {e}", r.display()))?,
        ),
        None => None,
    };
    Ok(SandboxConfig {
        rootfs,
        workdir,
        env,
        security: args.security,
        mounts,
    })
}

/// Errors of sandbox commands beyond the store's own.
#[derive(Debug, thiserror::Error)]
enum SandboxCliError {
    #[error("cannot provision volume {name} for {guest}")]
    Provision {
        name: VolumeName,
        guest: GuestPath,
        #[source]
        source: StoreError,
    },
    #[error("invalid settings for volume {name} at {guest}")]
    Settings {
        name: VolumeName,
        guest: GuestPath,
        #[source]
        source: MountError,
    },
    #[error("stored config of sandbox {name} is unreadable")]
    BadRecord {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Looks up or creates each named volume as its mode says; returns the
/// names referenced and those created here (to undo on failure).
fn provision(
    store: &Store,
    mounts: &MountTable,
) -> Result<(Vec<VolumeName>, Vec<VolumeName>), SandboxCliError> {
    let mut used = Vec::new();
    let mut created = Vec::new();
    for entry in mounts.entries() {
        let Mount::Named { name, volume, .. } = &entry.mount else {
            continue;
        };
        let fail = |source: StoreError| SandboxCliError::Provision {
            name: name.clone(),
            guest: entry.guest.clone(),
            source,
        };
        let create = |created: &mut Vec<VolumeName>| -> Result<(), SandboxCliError> {
            let config =
                volume
                    .volume_config(name)
                    .map_err(|source| SandboxCliError::Settings {
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
        match volume.mode {
            NamedMode::Existing => store.get(name).map(drop).map_err(fail)?,
            NamedMode::Create => create(&mut created)?,
            NamedMode::EnsureExists => match store.get(name) {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => create(&mut created)?,
                Err(e) => return Err(fail(e)),
            },
        }
        used.push(name.clone());
    }
    Ok((used, created))
}

pub fn create(args: CreateArgs) -> CliResult {
    let name = match sandbox_name(&args.name) {
        Ok(n) => n,
        Err(msg) => return usage(msg),
    };
    let config = match config(&args) {
        Ok(c) => c,
        Err(msg) => return usage(msg),
    };
    let store = Store::open_default()?;
    // Refuse a taken name before provisioning anything for it.
    match store.sandbox(&name) {
        Ok(_) => return Err(StoreError::SandboxExists(name).into()),
        Err(StoreError::SandboxNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (used, created) = provision(&store, &config.mounts)?;
    let json = serde_json::to_string(&config)?;
    if let Err(e) = store.create_sandbox(&name, &json, &used) {
        // Volumes made for this sandbox alone go with it.
        for v in &created {
            let _ = store.remove(v);
        }
        return Err(e.into());
    }
    println!("{name}");
    Ok(ExitCode::SUCCESS)
}

fn view(store: &Store, rec: SandboxRecord) -> Result<View, Box<dyn Error>> {
    let running = RunFiles::new(store, &rec.name)?.running();
    let config =
        serde_json::from_str(&rec.config).map_err(|source| SandboxCliError::BadRecord {
            name: rec.name.clone(),
            source,
        })?;
    Ok(View {
        name: rec.name,
        state: if running { "running" } else { "stopped" },
        created_at: super::rfc3339(rec.created_at),
        volumes: rec.volumes,
        config,
    })
}

pub fn ls(args: LsArgs) -> CliResult {
    let store = Store::open_default()?;
    let views = store
        .sandboxes()?
        .into_iter()
        .map(|rec| view(&store, rec))
        .collect::<Result<Vec<_>, _>>()?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Table => {
            let width = views.iter().map(|v| v.name.len()).max().unwrap_or(0).max(4);
            println!("{:width$}  {:8}  {:6}  CREATED", "NAME", "STATE", "MOUNTS");
            for v in &views {
                println!(
                    "{:width$}  {:8}  {:6}  {}",
                    v.name,
                    v.state,
                    v.config.mounts.len(),
                    v.created_at
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: NameArg) -> CliResult {
    let store = Store::open_default()?;
    let v = view(&store, store.sandbox(&args.name)?)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

pub fn rm(args: RmArgs) -> CliResult {
    let store = Store::open_default()?;
    let rec = store.sandbox(&args.name)?;
    let files = RunFiles::new(&store, &rec.name)?;
    if files.running() {
        if !args.force {
            return Err(format!(
                "sandbox {} is running; stop it first or pass --force",
                rec.name
            )
            .into());
        }
        halt(&files)?;
    }
    store.remove_sandbox(&args.name)?;
    println!("{}", args.name);
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `msb start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The sandbox's name.
    pub name: String,
    /// Internal: be the sandbox's supervisor (detached by `msb start`).
    #[arg(long, hide = true)]
    pub supervise: bool,
}

/// Arguments of `msb exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The sandbox's name.
    pub name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runtime files of a named sandbox: a lock its supervisor holds while it
/// runs, and the init's pid, written once the sandbox is up.
struct RunFiles {
    lock: PathBuf,
    pid: PathBuf,
}

impl RunFiles {
    fn new(store: &Store, name: &str) -> std::io::Result<Self> {
        let dir = store.layout().run_dir().join("sandboxes");
        std::fs::create_dir_all(&dir)?;
        Ok(RunFiles {
            lock: dir.join(format!("{name}.lock")),
            pid: dir.join(format!("{name}.pid")),
        })
    }

    /// Whether a live supervisor holds the lock. A dead one released it
    /// with its last descriptor, so the sandbox then counts as stopped.
    fn running(&self) -> bool {
        match std::fs::File::open(&self.lock) {
            Ok(f) => matches!(
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared),
                Err(rustix::io::Errno::WOULDBLOCK)
            ),
            Err(_) => false,
        }
    }

    /// `(init pid, supervisor pid)` of a running sandbox.
    fn pids(&self) -> Option<(i32, i32)> {
        let s = std::fs::read_to_string(&self.pid).ok()?;
        let (a, b) = s.trim().split_once(' ')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

/// What keeps a started sandbox alive until it is stopped.
const KEEP_ALIVE: [&str; 2] = ["sleep", "infinity"];

fn load(store: &Store, name: &str) -> Result<(SandboxRecord, SandboxConfig), Box<dyn Error>> {
    let rec = store.sandbox(name)?;
    let config =
        serde_json::from_str(&rec.config).map_err(|source| SandboxCliError::BadRecord {
            name: rec.name.clone(),
            source,
        })?;
    Ok((rec, config))
}

pub fn start(args: StartArgs) -> CliResult {
    if args.supervise {
        // Before anything can start a thread: signals must queue for forwarding.
        msb_runtime::block_signals();
    }
    let store = Store::open_default()?;
    let (rec, config) = load(&store, &args.name)?;
    let files = RunFiles::new(&store, &rec.name)?;
    if args.supervise {
        return supervise(&store, &rec.name, config, &files);
    }
    if files.running() {
        return Err(format!("sandbox {} is already running", rec.name).into());
    }
    let log_path = files.lock.with_extension("log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["start", &rec.name, "--supervise"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group, so the terminal's Ctrl-C does not reach it;
        // and not holding the caller's directory busy.
        .process_group(0)
        .current_dir("/")
        .env("MSB_HOME", std::fs::canonicalize(store.layout().home())?)
        .spawn()?;
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    out.read_line(&mut line)?;
    if line == "ready\n" {
        println!("{}", rec.name);
        return Ok(ExitCode::SUCCESS);
    }
    child.wait()?;
    let why = std::fs::read_to_string(&log_path).unwrap_or_default();
    let why = why.trim().trim_start_matches("error: ");
    Err(format!("sandbox {} did not start: {why}", rec.name).into())
}

/// The detached process that owns a running sandbox: holds its lock, its
/// volume attachments and filesystem servers, and tears all of it down
/// when the sandbox stops.
fn supervise(store: &Store, name: &str, config: SandboxConfig, files: &RunFiles) -> CliResult {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&files.lock)?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(format!("sandbox {name} is already running").into());
    }
    let spec = SandboxSpec {
        rootfs: config.rootfs,
        workdir: config.workdir,
        env: config.env,
        security: config.security,
        mounts: config.mounts,
        command: KEEP_ALIVE.iter().map(|s| s.to_string()).collect(),
    };
    let mut prepared = msb_runtime::prepare(&spec, store, &format!("sandbox:{name}"))?;
    let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
    let mut stdio = SandboxStdio {
        stdin: Some(null()?),
        stdout: Some(null()?),
        stderr: Some(null()?),
        passed: Vec::new(),
    };
    stdio.passed.extend(prepared.take_passed_fds());
    let backend = NamespaceBackend::new(InitProgram {
        program: std::env::current_exe()?,
        args: vec!["run".into(), "--sandbox-init".into()],
    });
    let mut sandbox = match backend.start(&prepared.plan, stdio) {
        Ok(s) => s,
        Err(e) => {
            prepared.rollback();
            return Err(e.into());
        }
    };
    if let Err(e) = prepared.start_servers() {
        drop(sandbox);
        prepared.rollback();
        return Err(e.into());
    }
    std::fs::write(
        &files.pid,
        format!("{} {}\n", sandbox.pid(), std::process::id()),
    )?;
    println!("ready");
    let status = sandbox.wait(true);
    drop(sandbox);
    prepared.finish();
    let _ = std::fs::remove_file(&files.pid);
    drop(lock);
    status?;
    Ok(ExitCode::SUCCESS)
}

pub fn stop(args: NameArg) -> CliResult {
    let store = Store::open_default()?;
    let (rec, _) = load(&store, &args.name)?;
    halt(&RunFiles::new(&store, &rec.name)?)?;
    println!("{}", rec.name);
    Ok(ExitCode::SUCCESS)
}

/// Stops the sandbox if it runs and waits until its supervisor is gone.
fn halt(files: &RunFiles) -> Result<(), Box<dyn Error>> {
    let Some((_, supervisor)) = files.pids().filter(|_| files.running()) else {
        return Ok(());
    };
    let pid = rustix::process::Pid::from_raw(supervisor).ok_or("invalid supervisor pid")?;
    // The supervisor forwards the signal and cleans up as the sandbox ends.
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while files.running() {
        if std::time::Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

pub fn exec(args: ExecArgs) -> CliResult {
    let store = Store::open_default()?;
    let (rec, config) = load(&store, &args.name)?;
    let files = RunFiles::new(&store, &rec.name)?;
    let not_running = || {
        format!(
            "sandbox {} is not running; start it with `msb start`",
            rec.name
        )
    };
    let Some((init, _)) = files.pids().filter(|_| files.running()) else {
        return Err(not_running().into());
    };
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    let workdir = config
        .workdir
        .as_ref()
        .map_or("/".to_string(), |w| w.to_string());
    msb_runtime::join(&mut cmd, init, &workdir, config.security)?;
    // The pid file is only trusted while the lock says the init is ours.
    if !files.running() {
        return Err(not_running().into());
    }
    let status = cmd.status()?;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
