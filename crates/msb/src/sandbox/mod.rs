//! Sandboxes: one-shot runs ([`RunBuilder`]) and named sandboxes that stay
//! up between commands ([`Sandbox`]).
//!
//! Both need a helper program: inside a new sandbox it is the init (pid 1),
//! and for a named sandbox it is also the detached supervisor that keeps the
//! sandbox's namespaces, volume attachments and filesystem servers alive.
//! The helper is the `msb` binary (found through `$MSB_BIN`, next to the
//! current program, or on `PATH`), or the current program itself if it
//! calls [`sandbox_init_hook`] first thing in `main`.

mod exec;
mod named;
mod relay;
mod run;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use msb_runtime::InitProgram;
use msb_spec::{GuestPath, Mount, MountError};

pub use exec::{
    ExecBuilder, ExecError, ExecEvent, ExecOutput, ExecPty, ExecSignaller, ExecStream, WindowSize,
};
pub use msb_runtime::{BackendKind, CgroupError, Resources, Security};
pub use named::{
    LifecycleError, Sandbox, SandboxBuilder, SandboxConfig, SandboxState, SandboxStore,
    supervise_sandbox,
};
pub use run::{RunBuilder, RunOutput, SandboxError};

/// The backend a sandbox starts on: `auto` resolved for this host.
pub(crate) fn resolve_backend(kind: BackendKind) -> BackendKind {
    match kind {
        BackendKind::Auto if msb_vm::auto_picks_vm() => BackendKind::Vm,
        BackendKind::Auto => BackendKind::Namespace,
        other => other,
    }
}

/// Runs `spec` (its backend resolved) once: see [`msb_runtime::run`].
pub(crate) fn run_once(
    spec: &msb_runtime::SandboxSpec,
    store: &msb_store::Store,
    init: InitProgram,
    holder: &str,
    stdio: msb_runtime::SandboxStdio,
    forward_signals: bool,
) -> Result<i32, msb_runtime::RunError> {
    match spec.backend {
        BackendKind::Vm => msb_runtime::run(
            spec,
            store,
            &msb_vm::VmBackend::default(),
            holder,
            stdio,
            forward_signals,
        ),
        _ => msb_runtime::run(
            spec,
            store,
            &msb_runtime::NamespaceBackend::new(init),
            holder,
            stdio,
            forward_signals,
        ),
    }
}

/// Checks the guest paths of builder mounts (given in any order).
fn guest_mounts(mounts: &[(String, Mount)]) -> Result<Vec<(GuestPath, Mount)>, MountError> {
    mounts
        .iter()
        .map(|(guest, mount)| Ok((GuestPath::new(guest.as_str())?, mount.clone())))
        .collect()
}

/// Checks a builder's working directory; `/` and none are the same.
fn guest_workdir(dir: Option<&str>) -> Result<Option<GuestPath>, MountError> {
    match dir {
        None | Some("/") => Ok(None),
        Some(w) => GuestPath::new(w).map(Some),
    }
}

/// Set in a hooked program started as a named sandbox's supervisor: the
/// sandbox's name (the home comes through `MSB_HOME`).
const SUPERVISE_ENV: &str = "MSB_SUPERVISE";

static HOOKED: AtomicBool = AtomicBool::new(false);

/// Lets the current program serve as the sandbox helper: call it first in
/// `main`, before any thread starts. Inside a new sandbox it runs the init,
/// and started as a named sandbox's supervisor it runs the supervisor; both
/// exit when done. Otherwise it returns at once, and later sandboxes
/// re-execute this program.
///
/// Sandboxes need a helper program: inside a new sandbox it is the init
/// (pid 1), and for a named sandbox it is also the detached supervisor. It
/// is, in this order: `$MSB_BIN`; the current program, if it called this
/// hook; the `msb` binary next to the current program or on `PATH`.
pub fn sandbox_init_hook() {
    if msb_runtime::init::is_init() {
        std::process::exit(msb_runtime::init::main());
    }
    vm_relay_hook();
    HOOKED.store(true, Ordering::Relaxed);
    if let Some(name) = std::env::var_os(SUPERVISE_ENV) {
        // Before any thread: the signals it forwards must queue.
        msb_runtime::block_signals();
        // SAFETY: single-threaded here (see above); nothing reads env concurrently.
        unsafe { std::env::remove_var(SUPERVISE_ENV) };
        let code = match supervise_sandbox(&name.to_string_lossy()) {
            Ok(()) => 0,
            Err(e) => {
                let mut msg = format!("error: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                eprintln!("{msg}");
                1
            }
        };
        std::process::exit(code);
    }
}

/// What the helper program does when started to stand for a command on a
/// terminal in a microVM sandbox (`msb exec -t` on one): relays the
/// command's pty, window size, signals and exit status, then exits.
/// Returns at once otherwise.
/// [`sandbox_init_hook`] calls it; the `msb` binary calls it first thing.
pub fn vm_relay_hook() {
    if let Some(order) = std::env::var_os(relay::RELAY_ENV) {
        // Before any thread: the signals it forwards must queue.
        msb_runtime::block_signals();
        std::process::exit(relay::relay_main(&order.to_string_lossy()));
    }
}

/// The program that serves as init and supervisor.
pub(crate) struct Helper {
    pub(crate) program: PathBuf,
    /// The `msb` binary (roles chosen by arguments), else a hooked program
    /// (roles chosen by environment).
    msb: bool,
}

impl Helper {
    /// Finds the helper, as the module documentation says.
    pub(crate) fn find() -> Option<Helper> {
        if let Some(bin) = std::env::var_os("MSB_BIN").filter(|b| !b.is_empty()) {
            return Some(Helper {
                program: bin.into(),
                msb: true,
            });
        }
        let exe = std::env::current_exe().ok()?;
        if HOOKED.load(Ordering::Relaxed) {
            return Some(Helper {
                program: exe,
                msb: false,
            });
        }
        let near = exe.ancestors().skip(1).take(2).map(|d| d.join("msb"));
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("msb"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        near.chain(on_path)
            .find(|p| p.is_file())
            .map(|program| Helper { program, msb: true })
    }

    /// How the backend starts it as a sandbox's init.
    pub(crate) fn init(&self) -> InitProgram {
        InitProgram {
            program: self.program.clone(),
            args: if self.msb {
                vec!["run".into(), "--sandbox-init".into()]
            } else {
                Vec::new()
            },
        }
    }

    /// A command that runs it as the supervisor of sandbox `name`.
    pub(crate) fn supervisor(&self, name: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        if self.msb {
            cmd.args(["start", name, "--supervise"]);
        } else {
            cmd.env(SUPERVISE_ENV, name);
        }
        cmd
    }
}
