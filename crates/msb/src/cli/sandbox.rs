//! Named sandboxes: `msb create`, `ls`, `inspect`, `rm`, `start`, `exec`,
//! `stop`, a thin layer over [`msb::Sandbox`] and [`msb::SandboxStore`]
//! (which document the lifecycle). `msb start NAME --supervise` is the
//! detached supervisor a start spawns.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use msb::{
    BackendKind, ExecError, LifecycleError, Sandbox, SandboxConfig, SandboxState, SandboxStore,
    Security, VolumeName, WindowSize,
};
use serde::Serialize;

use super::CliResult;
use super::text::escape;

/// Arguments of `msb create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The sandbox's name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Root filesystem directory, under a private writable layer (see `msb
    /// run --help`).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Working directory of every command run in the sandbox.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable K=V of every command run in the sandbox
    /// (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// default, restricted or privileged (see `msb run --help`).
    #[arg(long, default_value = "default", value_parser = parse_security)]
    pub security: Security,
    /// namespace, vm or auto (see `msb run --help`).
    #[arg(long, default_value = "namespace", value_parser = super::run::parse_backend)]
    pub backend: BackendKind,
    #[command(flatten)]
    pub resources: super::run::ResourceFlags,
    #[command(flatten)]
    pub mounts: super::run::MountFlags,
    /// Only record the sandbox; `msb start` starts it later.
    #[arg(long)]
    pub no_start: bool,
}

/// Arguments of `msb ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print names only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `msb inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The sandbox's name.
    pub name: String,
    /// Output format (json is the form `msb ls --format json` lists).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Arguments of `msb stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The sandboxes' names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Seconds its commands get between SIGTERM and SIGKILL.
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 5)]
    pub time: u32,
}

/// Arguments of `msb rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The sandboxes' names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Stop a sandbox first if it is running.
    #[arg(short, long)]
    pub force: bool,
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
    /// Run the command on a terminal (a pseudo-terminal in the sandbox; the
    /// caller's terminal, if any, is put in raw mode meanwhile).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable K=V for this command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of this command.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Pass descriptors 3 to 3+N-1 on to the command (every other one
    /// above 2 is closed, as is any by default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The command and its arguments; without one, /bin/sh (add -t for an
    /// interactive shell). Everything from the command on is its own, flags
    /// included, so no `--` is needed; an unknown flag before it is still
    /// a usage error rather than the command.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// Output format of `msb ls` and `msb inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people: aligned columns, or one field a line.
    Table,
    /// JSON: an array (`ls`), an object (`inspect`).
    Json,
}

/// A sandbox as `ls` and `inspect` show it.
#[derive(Debug, Serialize)]
struct View<'a> {
    name: &'a str,
    /// `running` while a supervisor holds the sandbox, else `stopped`.
    state: SandboxState,
    created_at: String,
    volumes: &'a [VolumeName],
    config: &'a SandboxConfig,
}

fn view(sb: &Sandbox) -> View<'_> {
    View {
        name: sb.name(),
        state: sb.state(),
        created_at: super::rfc3339(sb.created_at()),
        volumes: sb.volumes(),
        config: sb.config(),
    }
}

fn parse_security(s: &str) -> Result<Security, String> {
    s.parse()
}

/// A usage error: printed, exit 2.
fn usage(msg: impl std::fmt::Display) -> CliResult {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

/// Runs the library's async calls; the blocking work happens on its pool.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, std::io::Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(f))
}

/// `K=V` strings as pairs.
fn env_pairs(env: &[String]) -> Result<Vec<(String, String)>, String> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("invalid --env {e:?}: expected K=V")),
        })
        .collect()
}

pub fn create(args: CreateArgs) -> CliResult {
    if let Err(e) = VolumeName::new(args.name.as_str()) {
        return usage(format!("invalid sandbox name {:?}: {e}", args.name));
    }
    let mounts = match args.mounts.table() {
        Ok(t) => t,
        Err(msg) => return usage(msg),
    };
    let env = match env_pairs(&args.env) {
        Ok(e) => e,
        Err(msg) => return usage(msg),
    };
    if let Some(r) = &args.rootfs
        && let Err(e) = std::fs::canonicalize(r)
    {
        return usage(format!("invalid --rootfs {}: {e}", r.display()));
    }
    super::run::warn_host_root(args.rootfs.as_deref());
    let mut builder = SandboxStore::default_home()?
        .builder(args.name.as_str())
        .security(args.security)
        .backend(args.backend)
        .resources(args.resources.resources())
        .mounts(
            mounts
                .entries()
                .iter()
                .map(|e| (e.guest.to_string(), e.mount.clone())),
        );
    if let Some(r) = args.rootfs {
        builder = builder.rootfs(r);
    }
    if let Some(w) = args.workdir {
        builder = builder.workdir(w);
    }
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let created = if args.no_start {
        block_on(builder.create_stopped())?
    } else {
        // As the library's create: a sandbox that cannot start is not kept.
        block_on(builder.create())?
    };
    match created {
        Ok(sb) => {
            println!("{}", sb.name());
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (LifecycleError::InvalidName { .. }
            | LifecycleError::Mount(_)
            | LifecycleError::Workdir(_)
            | LifecycleError::Env(_)
            | LifecycleError::Rootfs { .. }),
        ) => {
            super::report(&e);
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn ls(args: LsArgs) -> CliResult {
    let list = block_on(SandboxStore::default_home()?.list())??;
    let views: Vec<View> = list.iter().map(view).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.format {
        _ if args.quiet => {
            for v in &views {
                writeln!(out, "{}", v.name)?;
            }
        }
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?,
        Format::Table => {
            let width = views.iter().map(|v| v.name.len()).max().unwrap_or(0).max(4);
            writeln!(
                out,
                "{:width$}  {:8}  {:9}  {:6}  CREATED",
                "NAME", "STATE", "BACKEND", "MOUNTS"
            )?;
            for v in &views {
                writeln!(
                    out,
                    "{:width$}  {:8}  {:9}  {:6}  {}",
                    v.name,
                    v.state.to_string(),
                    v.config.backend().to_string(),
                    v.config.mounts().len(),
                    v.created_at
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: InspectArgs) -> CliResult {
    let sb = block_on(SandboxStore::default_home()?.get(&args.name))??;
    let v = view(&sb);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        Format::Table => print_details(&mut out, &v)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One field a line, as `msb volume inspect` prints a volume.
fn print_details(out: &mut impl Write, v: &View) -> std::io::Result<()> {
    let c = v.config;
    writeln!(out, "Name:      {}", v.name)?;
    writeln!(out, "State:     {}", v.state)?;
    writeln!(out, "Created:   {}", v.created_at)?;
    let rootfs = c
        .rootfs()
        .map_or_else(|| "(fresh: the host's /usr, read-only)".to_string(), escape);
    writeln!(out, "Rootfs:    {rootfs}")?;
    writeln!(
        out,
        "Workdir:   {}",
        c.workdir().map_or("/".to_string(), |w| w.to_string())
    )?;
    for (k, val) in c.env() {
        writeln!(out, "Env:       {}={}", escape(k), escape(val))?;
    }
    let security = serde_json::to_value(c.security()).unwrap_or_default();
    writeln!(out, "Security:  {}", security.as_str().unwrap_or("?"))?;
    writeln!(out, "Backend:   {}", c.backend())?;
    let r = c.resources();
    let cpus = r.cpus_milli.map_or("no limit".to_string(), |m| {
        format!("{}", f64::from(m) / 1000.0)
    });
    writeln!(
        out,
        "Limits:    memory {} MiB, cpus {cpus}, pids {}",
        r.memory_mib, r.pids
    )?;
    for e in c.mounts().entries() {
        writeln!(out, "Mount:     {} <- {}", e.guest, mount_source(&e.mount))?;
    }
    Ok(())
}

/// What a mount shows as its source in `msb inspect`.
fn mount_source(m: &msb::Mount) -> String {
    match m {
        msb::Mount::Bind { host_path, .. } => format!("bind {}", escape(host_path)),
        msb::Mount::Named { name, .. } => format!("volume {name}"),
        msb::Mount::Tmpfs { .. } => "tmpfs".to_string(),
        msb::Mount::Disk { host_path, .. } => format!("disk {}", escape(host_path)),
    }
}

pub fn rm(args: RmArgs) -> CliResult {
    let store = SandboxStore::default_home()?;
    each(&args.names, |name| {
        let removed = if args.force {
            block_on(store.force_remove(name))?
        } else {
            block_on(store.remove(name))?
        };
        match removed {
            Ok(()) => Ok(()),
            Err(LifecycleError::Running(name)) => {
                Err(format!("sandbox {name} is running; stop it first or pass --force").into())
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Applies `f` to every name (one failure does not spare the rest),
/// printing each name done and each error: exit 1 if any failed.
fn each(
    names: &[String],
    mut f: impl FnMut(&str) -> Result<(), Box<dyn std::error::Error>>,
) -> CliResult {
    let mut failed = false;
    for name in names {
        match f(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                super::report(e.as_ref());
                failed = true;
            }
        }
    }
    Ok(ExitCode::from(u8::from(failed)))
}

pub fn start(args: StartArgs) -> CliResult {
    if args.supervise {
        // Before anything can start a thread: signals must queue for forwarding.
        msb_runtime::block_signals();
        msb::supervise_sandbox(&args.name)?;
        return Ok(ExitCode::SUCCESS);
    }
    match block_on(SandboxStore::default_home()?.start(&args.name))? {
        Ok(sb) => println!("{}", sb.name()),
        // The wanted state is reached: scripts may start what create
        // already started.
        Err(LifecycleError::AlreadyRunning(name)) => {
            println!("{name}");
            eprintln!("sandbox {name} is already running");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(args: StopArgs) -> CliResult {
    let grace = std::time::Duration::from_secs(args.time.into());
    let store = SandboxStore::default_home()?;
    each(&args.names, |name| {
        Ok(block_on(store.stop_with_grace(name, grace))??)
    })
}

pub fn exec(args: ExecArgs) -> CliResult {
    let env = match env_pairs(&args.env) {
        Ok(e) => e,
        Err(msg) => return usage(msg),
    };
    // Checked before this process opens anything that could take their
    // numbers.
    drop(super::run::preserved_fds(args.preserve_fds)?);
    // Before any thread starts, so every thread inherits the mask: signals
    // sent to us queue for forwarding to the command.
    msb_runtime::block_signals();
    let store = SandboxStore::default_home()?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let sb = rt.block_on(store.get(&args.name))?;
    let mut command = args.command.into_iter();
    let mut cmd = sb
        .command(command.next().unwrap_or_else(|| "/bin/sh".to_string()))
        .args(command);
    if let Ok(term) = std::env::var("TERM") {
        cmd = cmd.env("TERM", term);
    }
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    if let Some(w) = args.workdir {
        cmd = cmd.workdir(w);
    }
    cmd = cmd.preserve_fds(args.preserve_fds);
    let status = if args.tty {
        rt.block_on(on_terminal(cmd))
    } else {
        rt.block_on(async {
            let run = cmd.spawn_attached().await?;
            relay_signals(run.signaller()?, None);
            run.wait().await
        })
    };
    match status {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(ExecError::NotRunning(name)) => {
            Err(format!("sandbox {name} is not running; start it with `msb start {name}`").into())
        }
        Err(e) => {
            super::report(&e);
            Ok(ExitCode::from(e.exit_code().clamp(1, 255) as u8))
        }
    }
}

/// For as long as the process lives, passes the signals other processes
/// send us (SIGTERM from `kill`, say) on to the command, and with a
/// `terminal` (the master of the command's), every change of our
/// terminal's size on to it; the kernel then signals the command.
fn relay_signals(to: msb::ExecSignaller, terminal: Option<std::fs::File>) {
    std::thread::spawn(move || {
        loop {
            let (sig, _) = msb_runtime::next_signal();
            if sig == libc::SIGWINCH
                && let Some(master) = &terminal
            {
                if let Some(size) = window_size() {
                    let ws = rustix::termios::Winsize {
                        ws_row: size.rows,
                        ws_col: size.cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(master, ws);
                }
            } else if to.signal(sig).is_err() {
                return;
            }
        }
    });
}

/// Restores the caller's terminal settings when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Puts standard input in raw mode if it is a terminal: keys go to the
    /// sandbox's terminal as typed (^C included), which handles them.
    fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)
            .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The caller's terminal size, from standard input or output.
fn window_size() -> Option<WindowSize> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    [stdin.as_fd(), stdout.as_fd()].into_iter().find_map(|fd| {
        let ws = rustix::termios::tcgetwinsize(fd).ok()?;
        (ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

/// Runs `cmd` on a new terminal in the sandbox, copying our standard
/// input to it and its output to our standard output.
async fn on_terminal(cmd: msb::ExecBuilder) -> Result<i32, ExecError> {
    let size = window_size();
    let mut pty = cmd.spawn_pty(size).await?;
    let io = ExecError::Io;
    let terminal = match size {
        Some(_) => Some(pty.master().try_clone().map_err(io)?),
        None => None,
    };
    relay_signals(pty.signaller()?, terminal);
    let raw = RawMode::enter();
    let is_tty = raw.is_some();
    let mut input = pty.master().try_clone().map_err(io)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        // Piped input ended: the terminal's end-of-file character tells
        // the command so.
        if !is_tty {
            let _ = input.write_all(&[0x04]);
        }
    });
    let mut output = pty.master().try_clone().map_err(io)?;
    let copier = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let stdout = std::io::stdout();
        loop {
            // EIO once the command and everything it started closed the
            // terminal.
            match output.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = stdout.lock();
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let status = pty.wait().await;
    let _ = copier.join();
    drop(raw);
    status
}
