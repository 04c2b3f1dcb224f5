//! msb: sandboxes with real storage.
//!
//! This crate is the public Rust API. Volumes are managed through
//! [`Volume`] (async, using the home at `$MSB_HOME` or `~/.microsandbox`) or
//! through a [`VolumeStore`] opened on an explicit home, which tests and
//! embedders use so they never touch the real one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msb::Error> {
//! use msb::Volume;
//! let vol = Volume::builder("cache").quota_mib(512).label("team", "ci").create().await?;
//! println!("{} at {}", vol.name(), vol.path().display());
//! for h in Volume::list().await? {
//!     println!("{} uses {} bytes", h.name(), h.used_bytes());
//! }
//! Volume::remove("cache").await?;
//! # Ok(()) }
//! ```

mod error;
mod files;
mod mount;
mod sandbox;
mod volume;

pub use error::Error;
pub use files::VolumeFiles;
pub use mount::{
    BindExpect, DiskFormat, DiskOptions, GuestPath, HostPerms, Mount, MountError, MountOptions,
    NamedMode, NamedVolumeOptions, StatVirt, TmpfsOptions,
};
pub use msb_spec::{LabelFilter, Labels, VolumeConfig, VolumeKind, VolumeName};
pub use msb_volfs::{FsError, VolumeFs};
pub use sandbox::{
    ExecBuilder, ExecError, ExecEvent, ExecOutput, ExecPty, ExecStream, LifecycleError, RunBuilder,
    RunOutput, Sandbox, SandboxBuilder, SandboxConfig, SandboxError, SandboxState, SandboxStore,
    Security, WindowSize, sandbox_init_hook, supervise_sandbox,
};
pub use volume::{Volume, VolumeBuilder, VolumeHandle, VolumeStore};

/// Result of the msb API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
