//! One-shot sandboxes: run one command with mounts applied and wait for it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msb::SandboxError> {
//! use msb::{Mount, MountOptions, VolumeName};
//! let out = msb::RunBuilder::new("sh")
//!     .args(["-c", "echo hello > /data/greeting && cat /data/greeting"])
//!     .volume("/data", Mount::named(VolumeName::new("demo").unwrap(), MountOptions::default()))
//!     .output()
//!     .await?;
//! assert_eq!(out.status, 0);
//! # Ok(()) }
//! ```
//!
//! The sandbox's init is the helper program (see [`crate::sandbox_init_hook`]).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use msb_runtime::{BackendKind, Resources, RunError, SandboxSpec, SandboxStdio, Security};
use msb_spec::{Mount, MountError, MountTable};
use msb_store::{Store, StoreError};

use super::Helper;

/// Errors of one-shot sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A mount is invalid.
    #[error("invalid mount")]
    Mount(#[from] MountError),
    /// The working directory is not an absolute guest path.
    #[error("invalid working directory")]
    Workdir(#[source] MountError),
    /// The program name is empty.
    #[error("the command is empty")]
    NoCommand,
    /// A memory, CPU or process limit is out of range.
    #[error("invalid resource limits")]
    Resources(#[source] msb_runtime::CgroupError),
    /// The volume store cannot be opened.
    #[error("cannot open the volume store")]
    Store(#[source] StoreError),
    /// The sandbox could not be set up or run.
    #[error(transparent)]
    Run(#[from] RunError),
    /// No helper program was found (see [`crate::sandbox_init_hook`]).
    #[error(
        "cannot find the msb binary that starts sandboxes; set MSB_BIN to it, put it on PATH, or call msb::sandbox_init_hook() first in main"
    )]
    NoInit,
    /// The command's output could not be connected or read.
    #[error("cannot connect the command's output")]
    Io(#[source] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// What a command run with [`RunBuilder::output`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// Exit status: the code, or 128+N when killed by signal N.
    pub status: i32,
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
}

/// Describes a one-shot sandbox.
#[derive(Debug, Clone, Default)]
pub struct RunBuilder {
    command: Vec<String>,
    mounts: Vec<(String, Mount)>,
    rootfs: Option<PathBuf>,
    workdir: Option<String>,
    env: Vec<(String, String)>,
    security: Security,
    resources: Resources,
    backend: BackendKind,
    home: Option<PathBuf>,
}

impl RunBuilder {
    /// A sandbox that runs `program` (looked up on the sandbox's PATH).
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            command: vec![program.into()],
            ..Self::default()
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.command.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.command.extend(args.into_iter().map(Into::into));
        self
    }

    /// Mounts `mount` at `guest_path` (any order; parents are mounted first).
    pub fn volume(mut self, guest_path: impl Into<String>, mount: Mount) -> Self {
        self.mounts.push((guest_path.into(), mount));
        self
    }

    /// Uses `dir` as the root filesystem, written through a private layer
    /// (`/` shares the host's root, read-only) instead of a fresh root.
    pub fn rootfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rootfs = Some(dir.into());
        self
    }

    /// Working directory inside the sandbox.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Security profile.
    pub fn security(mut self, profile: Security) -> Self {
        self.security = profile;
        self
    }

    /// Memory, CPU and process limits (default: [`Resources::default`]).
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// The isolation (default: [`BackendKind::Namespace`]).
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Uses the volume store at `home` instead of `$MSB_HOME` or
    /// `~/.microsandbox`.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Validates everything, once, at the edge.
    fn spec(&self) -> Result<SandboxSpec, SandboxError> {
        if self.command.first().is_none_or(String::is_empty) {
            return Err(SandboxError::NoCommand);
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mounts = super::guest_mounts(&self.mounts)?;
        let workdir =
            super::guest_workdir(self.workdir.as_deref()).map_err(SandboxError::Workdir)?;
        self.resources.validate().map_err(SandboxError::Resources)?;
        Ok(SandboxSpec {
            rootfs: self.rootfs.as_ref().map(|r| absolute(r, &cwd)),
            workdir,
            env: self.env.clone(),
            security: self.security,
            resources: self.resources,
            backend: self.backend,
            mounts: MountTable::new(mounts, &cwd)?,
            command: self.command.clone(),
        })
    }

    fn execute(&self, stdio: SandboxStdio) -> Result<i32, SandboxError> {
        let mut spec = self.spec()?;
        spec.backend = super::resolve_backend(spec.backend);
        let init = Helper::find().ok_or(SandboxError::NoInit)?.init();
        let home = match &self.home {
            Some(h) => h.clone(),
            None => msb_store::default_home().map_err(SandboxError::Store)?,
        };
        let store = Store::open(home).map_err(SandboxError::Store)?;
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let holder = format!(
            "sandbox:run-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        Ok(super::run_once(&spec, &store, init, &holder, stdio, false)?)
    }

    /// Runs the command with this process's standard streams and returns
    /// its exit status.
    pub async fn status(self) -> Result<i32, SandboxError> {
        tokio::task::spawn_blocking(move || self.execute(SandboxStdio::default())).await?
    }

    /// Runs the command with no input, capturing its output.
    pub async fn output(self) -> Result<RunOutput, SandboxError> {
        tokio::task::spawn_blocking(move || {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let null = std::fs::File::open("/dev/null").map_err(SandboxError::Io)?;
            let readers = [out_r, err_r].map(|r| {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    std::fs::File::from(r).read_to_end(&mut buf).map(|_| buf)
                })
            });
            let status = self.execute(SandboxStdio {
                stdin: Some(null.into()),
                stdout: Some(out_w),
                stderr: Some(err_w),
                ..Default::default()
            });
            let [stdout, stderr] = readers.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("reader panicked")))
            });
            Ok(RunOutput {
                status: status?,
                stdout: stdout.map_err(SandboxError::Io)?,
                stderr: stderr.map_err(SandboxError::Io)?,
            })
        })
        .await?
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    msb_runtime::pipe().map_err(SandboxError::Io)
}

fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}
