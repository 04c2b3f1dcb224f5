//! The msb sandbox runtime.
//!
//! Data flows one way: a validated [`SandboxSpec`] is resolved by
//! [`prepare`] (store lookups and creations, in-use registration, disk
//! images attached as block devices) into an [`InitPlan`] of host paths and
//! devices; a [`Backend`] starts the sandbox from that plan. The first
//! backend, [`NamespaceBackend`], uses Linux namespaces; its init program
//! runs [`init::main`] inside the sandbox.
//!
//! Teardown is structural rather than best-effort: mounts exist only in the
//! sandbox's mount namespace, loop devices autoclear, helper daemons and the
//! sandbox's init die with the supervisor (`PR_SET_PDEATHSIG`), and in-use
//! registrations are locks that die with their holder.

mod backend;
mod cgroup;
mod fresh;
mod idmap;
pub mod init;
mod join;
mod lease;
mod mounts;
mod ns;
mod plan;
mod prepare;

pub use backend::{Backend, Running, SandboxStdio};
pub use cgroup::{CgroupEntry, CgroupError, Resources, SandboxCgroup};
pub use fresh::{RootEntry, fresh_root_entries};
pub use idmap::IdmapError;
pub use join::{JoinError, SandboxNamespaces};
pub use lease::{IdLease, LEASE_DIR, LeaseError};
/// The system call filters of the security profiles (moved to
/// `msb-security`, which the microVM guest agent shares).
pub use msb_security::seccomp;
pub use msb_store::sandbox_ids;
pub use ns::{InitProgram, NamespaceBackend, NsError, NsSandbox};
pub use plan::{BackendKind, InitMount, InitPlan, InitRoot, InitSource, SandboxSpec, Security};
pub use prepare::{
    DryRun, DryRunMount, PrepareError, Prepared, Share, check_user, dry_run, prepare,
};

use msb_security::caps;
use msb_store::Store;

/// Blocks the signals a supervisor forwards (SIGINT, SIGTERM, SIGHUP,
/// SIGQUIT, ...) and SIGCHLD in the calling thread. Call it first thing,
/// before any thread starts, when using [`Running::wait`] with forwarding.
pub fn block_signals() {
    init::block_signals();
}

/// Waits for the next signal blocked by [`block_signals`] other than
/// SIGCHLD and returns its number and whether another process sent it (as
/// opposed to the kernel, e.g. a terminal's ^C, which the whole foreground
/// process group got, or a change of its size).
pub fn next_signal() -> (i32, bool) {
    loop {
        if let Some(r) = init::wait_signal(60_000)
            && r.signo != libc::SIGCHLD
        {
            return (r.signo, r.sent);
        }
    }
}

/// Waits up to `timeout` for a signal blocked by [`block_signals`] other
/// than SIGCHLD; returns its number and the value it carries when sent
/// with sigqueue(3) (as [`request_stop`] sends the grace period).
pub fn poll_signal(timeout: std::time::Duration) -> Option<(i32, Option<usize>)> {
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    init::wait_signal(ms)
        .filter(|r| r.signo != libc::SIGCHLD)
        .map(|r| (r.signo, r.value))
}

/// How long a stopping kept sandbox gives its commands between SIGTERM and
/// SIGKILL unless [`request_stop`] says otherwise.
pub const DEFAULT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the supervisor `pid` of a kept sandbox (one started without a
/// command) to stop it: every process in it gets SIGTERM, and those left
/// after `grace` are killed.
pub fn request_stop(pid: i32, grace: std::time::Duration) -> std::io::Result<()> {
    let ms = usize::try_from(grace.as_millis()).unwrap_or(usize::MAX);
    // The supervisor passes the signal on as received, value included.
    if init::queue_signal(pid, libc::SIGTERM, ms) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec pipe `(read, write)`, e.g. to capture a sandbox's
/// output through [`SandboxStdio`].
pub fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Start(#[from] NsError),
    /// The microVM backend's failure (its own error type).
    #[error(transparent)]
    Vm(Box<dyn std::error::Error + Send + Sync>),
}

impl RunError {
    /// The exit status a CLI reports for this failure: 127 when the command
    /// does not exist, 126 when it cannot be executed, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Start(NsError::Setup { code, .. }) => *code,
            _ => 1,
        }
    }
}

/// Runs `spec` once in a sandbox of `backend`: prepares mounts, starts the
/// command, waits for it, tears everything down. A sandbox whose command
/// could not start removes the volumes it created. Returns the command's
/// exit status. `stdio` says where the command's streams go.
pub fn run<B: Backend>(
    spec: &SandboxSpec,
    store: &Store,
    backend: &B,
    holder: &str,
    mut stdio: SandboxStdio,
    forward_signals: bool,
) -> Result<i32, RunError>
where
    RunError: From<B::Error>,
{
    let mut prepared = prepare(spec, store, holder)?;
    stdio.passed.extend(prepared.take_passed_fds());
    stdio.shares.extend(prepared.take_shares());
    let mut sandbox = match backend.start(&prepared.plan, stdio) {
        Ok(s) => s,
        Err(e) => {
            prepared.rollback();
            return Err(e.into());
        }
    };
    let status = sandbox.wait(forward_signals);
    drop(sandbox);
    prepared.finish();
    Ok(status?)
}
