//! Block devices for msb sandboxes.
//!
//! * [`LoopDevice`]: a loop device over an image file, set up in one
//!   `LOOP_CONFIGURE` call with autoclear, so the kernel detaches it when its
//!   last user (our descriptor, or a mount) goes away, even if we are killed.
//! * [`detect_fstype`]: the filesystem in an image or device, from its
//!   superblock magic.
//! * [`DiskView`]: any supported image (raw, qcow2, vmdk) as a block device;
//!   qcow2 and vmdk go through `qemu-storage-daemon`'s FUSE export: the
//!   daemon runs as an unprivileged user, gets the image and the FUSE
//!   session as descriptors, and dies with msb; the FUSE mount is detached,
//!   in no mount table.
//! * [`check_self_contained`]: refuses qcow2 and VMDK images that name
//!   other files (backing files, external data, descriptor extents).
//! * [`mount_detached`]: a mount of a block device that is attached nowhere,
//!   returned as the descriptor of its root directory.
//! * [`id_map_namespace`]: a user namespace describing an id map, for
//!   idmapped mounts.

mod daemon;
mod detached;
mod detect;
mod image;
mod loopdev;
mod userns;
mod view;

pub use daemon::{DaemonError, DaemonUser};
pub use detached::{DetachedError, DetachedMount, mount_detached};
pub use detect::{DetectError, detect_fstype, detect_fstype_bytes};
pub use image::{ImageError, check_self_contained};
pub use loopdev::{LoopDevice, LoopError};
pub use userns::{id_map_namespace, set_mount_attrs};
pub use view::{DiskView, ViewError};
