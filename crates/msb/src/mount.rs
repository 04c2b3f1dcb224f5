//! Mount types of the public API: the seed's `Mount` factories
//! ([`Mount::bind`], [`Mount::named`], [`Mount::named_with`],
//! [`Mount::tmpfs`], [`Mount::disk`]) and their option structs. Validation
//! happens when a sandbox is built from them (see [`crate::RunBuilder`]).

pub use msb_spec::{
    BindExpect, DiskFormat, DiskOptions, GuestPath, HostPerms, Mount, MountError, MountOptions,
    NamedMode, NamedVolumeOptions, StatVirt, TmpfsOptions,
};
