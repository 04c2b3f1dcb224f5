//! Errors as they cross the boundary: a stable kind string (the Go SDK maps
//! each to an `ErrorKind`) and the Rust message with its sources.

use msb::{ExecError, FsError, LifecycleError};
use msb_store::StoreError;

/// A failed call, as the caller sees it.
#[derive(Debug)]
pub struct CallError {
    /// One of the stable kind names listed in `include/msb_capi.h`.
    pub kind: &'static str,
    /// The error's message followed by its sources, joined with ": ".
    pub message: String,
}

impl CallError {
    /// An error of the boundary itself (a bad argument, a panic).
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The error as the JSON object `{"kind":..,"message":..}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "kind": self.kind, "message": self.message }).to_string()
    }

    fn from_err(kind: &'static str, e: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            kind,
            message: chain(e),
        }
    }
}

/// The message of `e` and of every source below it.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // `#[error(transparent)]` layers repeat their source's message.
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn fs_kind(e: &FsError) -> &'static str {
    match e {
        FsError::PathEscape { .. } => "PathEscape",
        FsError::InvalidPath { .. } => "InvalidPath",
        FsError::RootIsSymlink { .. } | FsError::OpenRoot { .. } => "VolumeRoot",
        FsError::NotFound { .. } => "PathNotFound",
        FsError::AlreadyExists { .. } => "PathAlreadyExists",
        FsError::NotADirectory { .. } => "NotADirectory",
        FsError::IsADirectory { .. } => "IsADirectory",
        FsError::NotAFile { .. } => "NotAFile",
        FsError::DirectoryNotEmpty { .. } => "DirectoryNotEmpty",
        FsError::SymlinkLoop { .. } => "SymlinkLoop",
        FsError::IsRoot { .. } => "IsRoot",
        FsError::HardLinked { .. } => "HardLinked",
        FsError::ReadOnly { .. } => "ReadOnly",
        FsError::QuotaExceeded { .. } => "QuotaExceeded",
        FsError::NotUtf8 { .. } => "NotUTF8",
        FsError::Io { .. } => "IO",
        _ => "Filesystem",
    }
}

fn store_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound(_) => "VolumeNotFound",
        StoreError::AlreadyExists(_) => "VolumeAlreadyExists",
        StoreError::SandboxNotFound(_) => "SandboxNotFound",
        StoreError::SandboxExists(_) => "SandboxAlreadyExists",
        StoreError::InUse { .. } => "VolumeInUse",
        StoreError::Catalog(_) => "Database",
        StoreError::Disk(_) => "Disk",
        StoreError::Quota(_) => "QuotaExceeded",
        _ => "IO",
    }
}

impl From<msb::Error> for CallError {
    fn from(e: msb::Error) -> Self {
        let kind = match &e {
            msb::Error::VolumeNotFound(_) => "VolumeNotFound",
            msb::Error::VolumeAlreadyExists(_) => "VolumeAlreadyExists",
            msb::Error::VolumeInUse { .. } => "VolumeInUse",
            msb::Error::InvalidName { .. } => "InvalidName",
            msb::Error::InvalidConfig(_) => "InvalidConfig",
            msb::Error::Io(_) => "IO",
            msb::Error::Database(_) => "Database",
            msb::Error::Files(f) => fs_kind(f),
            msb::Error::Disk(_) => "Disk",
            msb::Error::Task(_) => "Internal",
        };
        Self::from_err(kind, &e)
    }
}

impl From<LifecycleError> for CallError {
    fn from(e: LifecycleError) -> Self {
        let kind = match &e {
            LifecycleError::InvalidName { .. } => "InvalidName",
            LifecycleError::Mount(_) | LifecycleError::Settings { .. } => "InvalidMount",
            LifecycleError::Resources(_) | LifecycleError::Workdir(_) | LifecycleError::Env(_) => {
                "InvalidConfig"
            }
            LifecycleError::Rootfs { .. } | LifecycleError::HostPath(_) => "HostPath",
            LifecycleError::NotFound(_) => "SandboxNotFound",
            LifecycleError::AlreadyExists(_) => "SandboxAlreadyExists",
            LifecycleError::AlreadyRunning(_) => "SandboxAlreadyRunning",
            LifecycleError::Running(_) => "SandboxStillRunning",
            LifecycleError::Provision { source, .. } | LifecycleError::Store(source) => {
                store_kind(source)
            }
            LifecycleError::Incompatible(_) => "IncompatibleVolume",
            LifecycleError::BadRecord { .. } => "Database",
            LifecycleError::NoHelper => "HelperNotFound",
            // Refused at create because every start would fail so.
            LifecycleError::Unstartable(_)
            | LifecycleError::Supervisor { .. }
            | LifecycleError::StartFailed { .. }
            | LifecycleError::Setup(_) => "SandboxStartFailed",
            LifecycleError::RunFile { .. } => "IO",
            LifecycleError::Task(_) => "Internal",
        };
        Self::from_err(kind, &e)
    }
}

impl From<ExecError> for CallError {
    fn from(e: ExecError) -> Self {
        let kind = match &e {
            ExecError::NotRunning(_) => "SandboxNotRunning",
            ExecError::NoCommand | ExecError::Env(_) | ExecError::Workdir(_) => "InvalidConfig",
            ExecError::Task(_) => "Internal",
            _ => "ExecFailed",
        };
        Self::from_err(kind, &e)
    }
}

impl From<msb::MountError> for CallError {
    fn from(e: msb::MountError) -> Self {
        Self::from_err("InvalidMount", &e)
    }
}
