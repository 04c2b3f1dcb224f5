//! The boundary between "what to run" and "how it is isolated". The
//! namespace backend is the first implementation; a microVM backend takes
//! the same [`InitPlan`] (its guest agent applies it) and returns a
//! [`Running`] sandbox.

use std::os::fd::OwnedFd;

use crate::plan::InitPlan;

/// Where the sandbox's standard streams go; `None` inherits ours.
#[derive(Debug, Default)]
pub struct SandboxStdio {
    /// Standard input.
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
    /// Descriptors handed to the sandbox's init as 4, 5, ... (see
    /// [`crate::Prepared::take_passed_fds`]).
    pub passed: Vec<OwnedFd>,
    /// Descriptors the command gets as 3, 4, ... (`--preserve-fds`).
    pub preserved: Vec<OwnedFd>,
    /// Directories the backend serves for the sandbox, from
    /// [`crate::Prepared::take_shares`]: a microVM's guest mounts them over
    /// virtio-fs; the namespace backend serves a rootless sandbox's
    /// [`InitSource::Fuse`](crate::InitSource::Fuse) mounts for as long as
    /// the sandbox runs.
    pub shares: Vec<crate::Share>,
}

/// Starts sandboxes from resolved plans.
pub trait Backend {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// A started sandbox.
    type Running: Running<Error = Self::Error>;

    /// Sets the sandbox up and starts its command. Returns once the command
    /// runs, or with the reason the sandbox could not start.
    fn start(&self, plan: &InitPlan, stdio: SandboxStdio) -> Result<Self::Running, Self::Error>;
}

/// A sandbox whose command runs.
pub trait Running {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends `signal` to the command.
    fn signal(&self, signal: i32) -> Result<(), Self::Error>;

    /// Waits for the command to end and returns its exit status (128+N when
    /// killed by signal N). With `forward_signals`, SIGINT, SIGTERM, SIGHUP
    /// and SIGQUIT sent to this process are passed on meanwhile; the caller
    /// must have called [`crate::block_signals`] before starting threads.
    fn wait(&mut self, forward_signals: bool) -> Result<i32, Self::Error>;
}
