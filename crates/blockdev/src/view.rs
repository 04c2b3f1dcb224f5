//! Disk images as block devices: raw images directly on a loop device;
//! qcow2 and vmdk through a raw view that `qemu-storage-daemon` exports
//! over FUSE, with a loop device on that view.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msb_spec::DiskFormat;
use rustix::mount::MountAttrFlags;

use crate::{DetachedError, DetachedMount, DetectError, LoopDevice, LoopError};

/// Why a disk image could not be opened as a block device.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot open disk image {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("refusing disk image {0}")]
    Image(PathBuf, #[source] crate::ImageError),
    #[error("cannot start qemu-storage-daemon for {0} (install qemu-utils)")]
    Spawn(PathBuf, #[source] io::Error),
    #[error("qemu-storage-daemon cannot open {image} as {format}: {stderr}")]
    Daemon {
        image: PathBuf,
        format: DiskFormat,
        stderr: String,
    },
    #[error("qemu-storage-daemon did not export {0} within 10 s")]
    Timeout(PathBuf),
    #[error("cannot open the raw view of {0}")]
    OpenView(PathBuf, #[source] io::Error),
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
    /// detected from the superblock.
    pub fn open(
        image: &Path,
        format: DiskFormat,
        fstype: Option<&str>,
        readonly: bool,
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
                let daemon = QemuDaemon::start(&file, image, format, readonly)?;
                let view = daemon.open_view(image, readonly)?;
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
        self.daemon.as_ref().map(|d| d.child.id())
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

/// Where the daemon's export appears inside its private mount namespace.
const VIEW_DIR: &std::ffi::CStr = c"/tmp";
const VIEW_FILE: &std::ffi::CStr = c"/tmp/msb-view";
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

#[derive(Debug)]
struct QemuDaemon {
    child: Child,
}

impl QemuDaemon {
    fn start(
        image: &File,
        path: &Path,
        format: DiskFormat,
        readonly: bool,
    ) -> Result<Self, ViewError> {
        let ro = if readonly { ",read-only=on" } else { "" };
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file,filename=/proc/self/fd/3{ro}"
            ))
            // The header was checked to name no backing file; `null` makes
            // sure this QEMU would not open one anyway.
            .arg("--blockdev")
            .arg(format!(
                r#"{{"driver":"{format}","node-name":"fmt","file":"file","read-only":{readonly},"backing":null}}"#
            ))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=view,node-name=fmt,mountpoint={},writable={}",
                VIEW_FILE.to_str().expect("ascii"),
                if readonly { "off" } else { "on" }
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fd = image.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // The caller may block signals it forwards; the daemon must
                // still stop on SIGTERM.
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                if fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // A private mount namespace: the FUSE mount is never seen on
                // the host and vanishes with the daemon.
                if libc::unshare(libc::CLONE_NEWNS) < 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) < 0
                    || libc::mount(
                        c"tmpfs".as_ptr(),
                        VIEW_DIR.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"size=64k,mode=0700".as_ptr().cast(),
                    ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                let f = libc::open(
                    VIEW_FILE.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                );
                if f < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(f);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| ViewError::Spawn(path.to_path_buf(), e))?;
        let mut daemon = QemuDaemon { child };
        daemon.wait_ready(path, format)?;
        Ok(daemon)
    }

    fn view_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}",
            self.child.id(),
            VIEW_FILE.to_str().expect("ascii")
        ))
    }

    fn wait_ready(&mut self, image: &Path, format: DiskFormat) -> Result<(), ViewError> {
        let view = self.view_path();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(ViewError::Daemon {
                    image: image.to_path_buf(),
                    format,
                    stderr: stderr.trim().to_string(),
                });
            }
            if let Ok(st) = rustix::fs::statfs(&view)
                && st.f_type == FUSE_SUPER_MAGIC
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ViewError::Timeout(image.to_path_buf()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn open_view(&self, image: &Path, readonly: bool) -> Result<File, ViewError> {
        OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(self.view_path())
            .map_err(|e| ViewError::OpenView(image.to_path_buf(), e))
    }
}

impl Drop for QemuDaemon {
    fn drop(&mut self) {
        // SIGTERM lets qemu flush the image; SIGKILL if it hangs.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}
