//! Loop devices over image files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Why a loop device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot open /dev/loop-control (needs root and the loop module)")]
    Control(#[source] io::Error),
    #[error("no free loop device")]
    NoFree(#[source] io::Error),
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("cannot attach {0} to a loop device")]
    Configure(PathBuf, #[source] io::Error),
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4c82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4c0a;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Set up with autoclear: the kernel detaches it
/// once nothing holds it open or mounted, so dropping this (or dying) after
/// the last mount is gone leaves nothing behind.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` (an open image file) to a free loop device.
    /// `name` is recorded as the backing file name shown by `losetup`.
    pub fn attach(backing: &File, name: &Path, readonly: bool) -> Result<Self, LoopError> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(LoopError::Control)?;
        // Another process may take the device between GET_FREE and
        // CONFIGURE (EBUSY); then ask again.
        for _ in 0..64 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(LoopError::NoFree(io::Error::last_os_error()));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = match OpenOptions::new().read(true).write(!readonly).open(&path) {
                Ok(d) => d,
                Err(e) => return Err(LoopError::Open(path, e)),
            };
            let mut file_name = [0u8; LO_NAME_SIZE];
            let bytes = name.as_os_str().as_encoded_bytes();
            let len = bytes.len().min(LO_NAME_SIZE - 1);
            file_name[..len].copy_from_slice(&bytes[..len]);
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_AUTOCLEAR | if readonly { LO_FLAGS_READ_ONLY } else { 0 },
                    lo_file_name: file_name,
                    lo_crypt_name: [0; LO_NAME_SIZE],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: `config` is a fully initialized `struct loop_config`
            // that outlives the call; the kernel only reads it.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc == 0 {
                return Ok(Self { device, path });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoopError::Configure(name.to_path_buf(), err));
            }
        }
        Err(LoopError::Configure(
            name.to_path_buf(),
            io::Error::from_raw_os_error(libc::EBUSY),
        ))
    }

    /// Opens `image` and attaches it.
    pub fn attach_path(image: &Path, readonly: bool) -> Result<Self, LoopError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(image)
            .map_err(|e| LoopError::Open(image.to_path_buf(), e))?;
        Self::attach(&file, image, readonly)
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes our descriptor and waits up to `timeout` for the kernel to
    /// detach the device, which happens once no mount uses it any more (a
    /// mount namespace that just died releases its mounts asynchronously).
    /// Returns whether it was detached in time.
    pub fn close_and_wait(self, timeout: std::time::Duration) -> bool {
        let sys = self
            .path
            .file_name()
            .map(|n| Path::new("/sys/block").join(n).join("loop/backing_file"));
        // What backs it now: once that changes, another attach has already
        // reused the freed device number.
        let ours = sys.as_ref().and_then(|s| std::fs::read(s).ok());
        drop(self.device);
        let Some(sys) = sys else { return true };
        let deadline = std::time::Instant::now() + timeout;
        while std::fs::read(&sys).ok() == ours && ours.is_some() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }
}

impl AsFd for LoopDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}
