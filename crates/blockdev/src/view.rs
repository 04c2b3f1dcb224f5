//! Disk images as block devices: raw images directly on a loop device;
//! qcow2 and vmdk through a raw view that `qemu-storage-daemon` exports
//! over FUSE, with a loop device on that view.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_spec::DiskFormat;
use rustix::mount::MountAttrFlags;

use crate::daemon::{DaemonError, DaemonUser, QemuDaemon};
use crate::{DetachedError, DetachedMount, DetectError, LoopDevice, LoopError};

/// Why a disk image could not be opened as a block device.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot open disk image {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("refusing disk image {0}")]
    Image(PathBuf, #[source] crate::ImageError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Mount(#[from] DetachedError),
}

/// A disk image attached as a block device. Dropping it detaches the loop
/// device (once no mount uses it) and stops the qemu daemon, if any.
#[derive(Debug)]
pub struct DiskView {
    // Always Some until dropped.
    device: Option<LoopDevice>,
    daemon: Option<QemuDaemon>,
    fstype: String,
    readonly: bool,
}

impl DiskView {
    /// Attaches `image` of `format`; the filesystem type is `fstype` or
    /// detected from the superblock. A qcow2 or vmdk image is read by
    /// `qemu-storage-daemon` running as `user`, which it needs.
    pub fn open(
        image: &Path,
        format: DiskFormat,
        fstype: Option<&str>,
        readonly: bool,
        user: Option<DaemonUser>,
    ) -> Result<Self, ViewError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(image)
            .map_err(|e| ViewError::Open(image.to_path_buf(), e))?;
        crate::check_self_contained(&file, format)
            .map_err(|e| ViewError::Image(image.to_path_buf(), e))?;
        let (device, daemon) = match format {
            DiskFormat::Raw => (LoopDevice::attach(&file, image, readonly)?, None),
            DiskFormat::Qcow2 | DiskFormat::Vmdk => {
                let user = user.ok_or_else(|| DaemonError::NoUser(image.to_path_buf()))?;
                let (daemon, view) = QemuDaemon::start(&file, image, format, readonly, user)?;
                (LoopDevice::attach(&view, image, readonly)?, Some(daemon))
            }
        };
        let fstype = match fstype {
            Some(t) => t.to_string(),
            // Named after the image the user gave, not the loop device.
            None => crate::detect_fstype(device.path())
                .map_err(|e| match e {
                    crate::DetectError::Unknown(_) => {
                        crate::DetectError::Unknown(image.display().to_string())
                    }
                    e => e,
                })?
                .to_string(),
        };
        Ok(Self {
            device: Some(device),
            daemon,
            fstype,
            readonly,
        })
    }

    /// The loop device node.
    pub fn device(&self) -> &Path {
        self.device.as_ref().expect("set until drop").path()
    }

    /// The filesystem type inside.
    pub fn fstype(&self) -> &str {
        &self.fstype
    }

    /// Whether the image is attached read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The pid of the qemu daemon serving a qcow2/vmdk view.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(QemuDaemon::pid)
    }

    /// Mounts the filesystem without attaching it anywhere (see
    /// [`crate::mount_detached`]). The view must outlive the mount's use.
    pub fn mount_detached(&self, attrs: MountAttrFlags) -> Result<DetachedMount, ViewError> {
        Ok(crate::mount_detached(
            self.device(),
            &self.fstype,
            self.readonly,
            attrs,
        )?)
    }
}

impl Drop for DiskView {
    fn drop(&mut self) {
        // The daemon must outlive every use of its view: the last unmount
        // flushes through it. Wait for the kernel to let go of the loop
        // device (sandbox mounts are released asynchronously) first.
        if let Some(device) = self.device.take() {
            device.close_and_wait(Duration::from_secs(10));
        }
        self.daemon.take();
    }
}
