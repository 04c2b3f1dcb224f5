//! Typed configuration for msb.
//!
//! Raw input (CLI strings, API arguments, JSON) is turned into the types of
//! this crate once, at the edge. Everything downstream (store, runtime,
//! filesystem server) trusts these types and does not validate again.
//! This crate performs no I/O.

mod ids;
mod label;
mod mount;
mod name;
mod policy;
mod size;
mod volume;

pub use ids::{IdMap, OVERFLOW_ID};
pub use label::{
    FilterSubject, LabelError, LabelFilter, LabelFilterError, Labels, VolumeFilter,
    VolumeFilterError,
};
pub use mount::{
    BindExpect, CliFlag, DiskFormat, DiskOptions, GuestPath, Mount, MountEntry, MountError,
    MountFlags, MountOptions, MountTable, NamedMode, NamedVolumeOptions, TmpfsOptions, parse_cli,
};
pub use name::{NameError, VolumeName};
pub use policy::{HostPerms, PolicyParseError, StatVirt};
pub use size::{SizeError, format_bytes, parse_size_bytes, parse_size_mib};
pub use volume::{
    DISK_MAX_MIB, DISK_MIN_MIB, VolumeConfig, VolumeConfigError, VolumeKind, VolumeKindError,
};
