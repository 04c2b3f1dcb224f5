//! Host-side access to a volume's files (the seed's `VolumeFs`), for both
//! kinds of volume.

use std::ops::Deref;
use std::sync::Arc;

use msb_blockdev::LoopDevice;
use msb_spec::{VolumeKind, VolumeName};
use msb_store::{AttachMode, Attachment, Store};
use msb_volfs::VolumeFs;
use rustix::mount::MountAttrFlags;

use crate::Error;

/// A volume's files opened on the host: a [`VolumeFs`] (through `Deref`)
/// plus what keeps it open.
///
/// A directory volume is its data directory, charged to its quota. A disk
/// volume is the ext4 filesystem inside its image, mounted detached (it
/// appears in no mount table, and `disk.raw` itself is never exposed); for
/// writing no sandbox may have it attached, and for reading none may have it
/// attached read-write.
pub struct VolumeFiles {
    fs: VolumeFs,
    // Dropped after `fs` (field order): the detached mount goes first, then
    // the loop device, then the attachment that kept sandboxes out.
    _loop: Option<LoopDevice>,
    _attachment: Option<Attachment>,
}

impl Deref for VolumeFiles {
    type Target = VolumeFs;
    fn deref(&self) -> &VolumeFs {
        &self.fs
    }
}

impl VolumeFiles {
    /// Opens the files of `name` in an already open store; `write` asks for
    /// write access (a disk volume is otherwise opened read-only).
    pub fn open(store: &Store, name: &VolumeName, write: bool) -> Result<Self, Error> {
        let info = store.get(name)?;
        match info.kind {
            VolumeKind::Dir => {
                let mut fs = VolumeFs::open(&info.path)?;
                if let Some(b) = store.budget(&info)? {
                    fs = fs.with_budget(Arc::new(b));
                }
                Ok(Self {
                    fs,
                    _loop: None,
                    _attachment: None,
                })
            }
            VolumeKind::Disk => {
                let mode = if write {
                    AttachMode::ReadWrite
                } else {
                    AttachMode::ReadOnly
                };
                let holder = format!("host:volume-files:{}", std::process::id());
                let attachment = store.attach(name, &holder, mode)?;
                let image = info
                    .disk_image
                    .clone()
                    .unwrap_or_else(|| store.layout().disk_image(name));
                let disk = |e: msb_blockdev::ViewError| Error::Disk(e);
                let dev = LoopDevice::attach_path(&image, !write).map_err(|e| disk(e.into()))?;
                let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC;
                if !write {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                }
                let mount = msb_blockdev::mount_detached(dev.path(), "ext4", !write, attrs)
                    .map_err(|e| disk(e.into()))?;
                let mut fs = VolumeFs::from_root_fd(mount.into_fd(), image)?;
                if !write {
                    fs = fs.read_only();
                }
                Ok(Self {
                    fs,
                    _loop: Some(dev),
                    _attachment: Some(attachment),
                })
            }
        }
    }
}
