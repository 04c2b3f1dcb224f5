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
//!
//! Sandboxes run commands with those volumes and other mounts: once
//! ([`RunBuilder`]), or as named sandboxes that stay up between commands
//! and can be stopped and started again ([`Sandbox`], or a
//! [`SandboxStore`] on an explicit home). Running them needs root and a
//! helper program (see [`sandbox_init_hook`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use msb::{Mount, MountOptions, NamedMode, NamedVolumeOptions, Sandbox, VolumeName};
//! let ensure = NamedVolumeOptions { mode: NamedMode::EnsureExists, ..Default::default() };
//! let cache = Mount::named_with(VolumeName::new("cache")?, MountOptions::default(), ensure);
//! let sb = Sandbox::builder("dev").volume("/cache", cache).workdir("/cache").create().await?;
//! let out = sb.exec("sh", ["-c", "echo hi > f && cat f"]).await?;
//! assert_eq!((out.status, &out.stdout[..]), (0, &b"hi\n"[..]));
//! sb.stop().await?;
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
pub use msb_blockdev::ViewError;
pub use msb_spec::NameError;
pub use msb_spec::{LabelFilter, Labels, VolumeConfig, VolumeKind, VolumeName};
pub use msb_store::{CatalogError, StoreError};
pub use msb_volfs::{FsError, VolumeFs};
pub use sandbox::{
    BackendKind, CgroupError, ExecBuilder, ExecError, ExecEvent, ExecOutput, ExecPty,
    ExecSignaller, ExecStream, LifecycleError, Resources, RunBuilder, RunOutput, Sandbox,
    SandboxBuilder, SandboxConfig, SandboxError, SandboxState, SandboxStore, Security, WindowSize,
    sandbox_init_hook, supervise_sandbox, vm_relay_hook,
};
pub use volume::{Volume, VolumeBuilder, VolumeHandle, VolumeStore};

/// Result of the msb API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
