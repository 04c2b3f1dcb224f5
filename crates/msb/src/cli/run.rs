//! `msb run`: one command in a new sandbox with mounts applied.

use std::path::PathBuf;
use std::process::ExitCode;

use msb_runtime::{BackendKind, InitProgram, Resources, SandboxSpec, Security};
use msb_spec::{CliFlag, GuestPath, MountError, MountTable, parse_cli};
use msb_store::Store;

use super::CliResult;

/// Arguments of `msb run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Root filesystem directory, under a private writable layer (default:
    /// a fresh root with the host's /usr, read-only, and a generated /etc;
    /// `/` shares the host's root, read-only).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable K=V, or K to pass the host's value (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// default (root of the sandbox's user namespace without mount or
    /// device capabilities), restricted (no capabilities, no_new_privs, a
    /// stricter system call filter) or privileged (microVM only: every
    /// capability, no filter; the VM's own kernel is the boundary).
    #[arg(long, default_value = "default", value_parser = parse_security)]
    pub security: Security,
    /// namespace (Linux namespaces on this kernel), vm (a microVM with its
    /// own kernel) or auto (the microVM where hardware virtualization works
    /// here, else namespace).
    #[arg(long, default_value = "namespace", value_parser = parse_backend)]
    pub backend: BackendKind,
    #[command(flatten)]
    pub resources: ResourceFlags,
    /// Pass descriptors 3 to 3+N-1 on to the command (every other one
    /// above 2 is closed, as is any by default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Print the resolved plan as JSON and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub mounts: MountFlags,
    /// Internal: run as the init of a new sandbox.
    #[arg(long, hide = true)]
    pub sandbox_init: bool,
    /// The command and its arguments. Everything from the command on is its
    /// own, flags included, so no `--` is needed; an unknown flag before it
    /// is still a usage error rather than the command.
    #[arg(trailing_var_arg = true, required_unless_present = "sandbox_init")]
    pub command: Vec<String>,
}

fn parse_security(s: &str) -> Result<Security, String> {
    s.parse()
}

pub(crate) fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

/// A usage error: printed, exit 2.
fn usage(msg: impl std::fmt::Display) -> CliResult {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

/// The limits shared by `msb run` and `msb create`.
#[derive(Debug, clap::Args)]
pub struct ResourceFlags {
    /// Memory of the whole sandbox, tmpfs mounts included (e.g. 512M, 2G;
    /// a bare number is MiB) [default: 1G].
    #[arg(long, value_name = "SIZE", value_parser = Resources::parse_memory)]
    pub memory: Option<u32>,
    /// CPUs the sandbox may use, a decimal like 0.5 or 2 [default: no limit].
    #[arg(long, value_name = "N", value_parser = Resources::parse_cpus)]
    pub cpus: Option<u32>,
    /// Most processes the sandbox may hold at once [default: 1024].
    #[arg(long = "pids-limit", value_name = "N", value_parser = Resources::parse_pids)]
    pub pids_limit: Option<u32>,
}

impl ResourceFlags {
    /// The limits, defaults filled in.
    pub fn resources(&self) -> Resources {
        let d = Resources::default();
        Resources {
            memory_mib: self.memory.unwrap_or(d.memory_mib),
            cpus_milli: self.cpus.or(d.cpus_milli),
            pids: self.pids_limit.unwrap_or(d.pids),
        }
    }
}

/// Prints a warning when `rootfs` shares the host's root.
pub(super) fn warn_host_root(rootfs: Option<&std::path::Path>) {
    if rootfs == Some(std::path::Path::new("/")) {
        eprintln!(
            "warning: --rootfs / shares the host's root (read-only): the sandbox can read every file the host lets others read"
        );
    }
}

/// The mount flags shared by `msb run` and `msb create` (the peer's grammar).
#[derive(Debug, clap::Args)]
pub struct MountFlags {
    /// SRC:DEST[:OPTS]: a path-like SRC is bind-mounted, else it names a
    /// volume (created as a directory volume if missing).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DEST[:OPTS]")]
    pub volumes: Vec<String>,
    /// HOST_DIR:DEST[:OPTS]: bind-mount a host directory.
    #[arg(long = "mount-dir", value_name = "SRC:DEST[:OPTS]")]
    pub mount_dirs: Vec<String>,
    /// HOST_FILE:DEST[:OPTS]: bind-mount a single host file.
    #[arg(long = "mount-file", value_name = "SRC:DEST[:OPTS]")]
    pub mount_files: Vec<String>,
    /// NAME:DEST[:OPTS] with kind=, size=, quota=, mode=existing|create|ensure.
    #[arg(long = "mount-named", value_name = "NAME:DEST[:OPTS]")]
    pub mount_named: Vec<String>,
    /// IMG:DEST[:OPTS] with format=raw|qcow2|vmdk, fstype=.
    #[arg(long = "mount-disk", value_name = "IMG:DEST[:OPTS]")]
    pub mount_disks: Vec<String>,
    /// PATH[:SIZE][:OPTS]: a fresh tmpfs.
    #[arg(long = "tmpfs", value_name = "PATH[:SIZE][:OPTS]")]
    pub tmpfs: Vec<String>,
}

impl MountFlags {
    /// Parses every flag's specs into one validated table (relative host
    /// paths resolved against the current directory), or a usage message.
    pub fn table(&self) -> Result<MountTable, String> {
        let mut mounts = Vec::new();
        for (flag, specs) in [
            (CliFlag::Volume, &self.volumes),
            (CliFlag::MountDir, &self.mount_dirs),
            (CliFlag::MountFile, &self.mount_files),
            (CliFlag::MountNamed, &self.mount_named),
            (CliFlag::MountDisk, &self.mount_disks),
            (CliFlag::Tmpfs, &self.tmpfs),
        ] {
            for s in specs {
                mounts.push(parse_cli(flag, s).map_err(|e| chain(&e))?);
            }
        }
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot resolve relative host paths: current directory: {e}"))?;
        MountTable::new(mounts, &cwd).map_err(|e| chain(&e))
    }
}

pub(super) fn chain(e: &MountError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// Copies of descriptors `3..3 + n`, for `--preserve-fds`.
pub(super) fn preserved_fds(n: u32) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
    (0..n)
        .map(|i| {
            // SAFETY: a descriptor number the caller handed this process;
            // it is only duplicated, never closed here.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(3 + i as i32) };
            fd.try_clone_to_owned().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("--preserve-fds {n}: descriptor {} is not open: {e}", 3 + i),
                )
            })
        })
        .collect()
}

/// The arguments as a validated sandbox spec, or a usage message.
fn spec(args: &RunArgs) -> Result<SandboxSpec, String> {
    let mounts = args.mounts.table()?;
    let workdir = match args.workdir.as_deref() {
        None | Some("/") => None,
        Some(w) => Some(GuestPath::new(w).map_err(|e| format!("invalid --workdir: {e}"))?),
    };
    let mut env = Vec::new();
    for e in &args.env {
        match e.split_once('=') {
            Some(("", _)) => return Err(format!("invalid --env {e:?}: empty name")),
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => match std::env::var(e) {
                Ok(v) => env.push((e.clone(), v)),
                Err(_) => return Err(format!("invalid --env {e:?}: not K=V and not set here")),
            },
        }
    }
    let rootfs = match &args.rootfs {
        Some(r) => Some(
            std::fs::canonicalize(r)
                .map_err(|e| format!("invalid --rootfs {}: {e}", r.display()))?,
        ),
        None => None,
    };
    warn_host_root(rootfs.as_deref());
    Ok(SandboxSpec {
        rootfs,
        workdir,
        env,
        security: args.security,
        resources: args.resources.resources(),
        backend: args.backend,
        mounts,
        command: args.command.clone(),
    })
}

pub fn run(args: RunArgs) -> CliResult {
    if args.sandbox_init {
        if !msb_runtime::init::is_init() {
            return usage("--sandbox-init is internal: msb starts it inside a new sandbox");
        }
        return Ok(ExitCode::from(msb_runtime::init::main() as u8));
    }
    // Before anything can start a thread: signals must queue for forwarding.
    msb_runtime::block_signals();
    let mut spec = match spec(&args) {
        Ok(s) => s,
        Err(msg) => return usage(msg),
    };
    let store = Store::open_default()?;
    if args.dry_run {
        let plan = msb_runtime::dry_run(&spec, &store)?;
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    if spec.backend == BackendKind::Auto {
        spec.backend = if msb_vm::auto_picks_vm() {
            BackendKind::Vm
        } else {
            BackendKind::Namespace
        };
        eprintln!("msb: backend auto: using {}", spec.backend);
    }
    if spec.backend == BackendKind::Vm && args.preserve_fds > 0 {
        return usage("--preserve-fds: descriptors cannot be passed into a microVM");
    }
    let init = InitProgram {
        program: std::env::current_exe()?,
        args: vec!["run".into(), "--sandbox-init".into()],
    };
    let holder = format!("sandbox:run-{}", std::process::id());
    let stdio = msb_runtime::SandboxStdio {
        preserved: preserved_fds(args.preserve_fds)?,
        ..Default::default()
    };
    let ran = match spec.backend {
        BackendKind::Vm => {
            let vm = msb_vm::VmBackend::default();
            msb_runtime::run(&spec, &store, &vm, &holder, stdio, true)
        }
        _ => {
            let ns = msb_runtime::NamespaceBackend::new(init);
            msb_runtime::run(&spec, &store, &ns, &holder, stdio, true)
        }
    };
    match ran {
        Ok(code) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Err(e) => {
            super::report(&e);
            Ok(ExitCode::from(e.exit_code().clamp(1, 255) as u8))
        }
    }
}
