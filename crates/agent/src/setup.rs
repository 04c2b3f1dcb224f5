//! Bringing the guest up: the kernel filesystems, the modules from the
//! initramfs, and the plan's root and mounts.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_agent_protocol::{FILE_SHARE_ENTRY, GuestMount, GuestPlan, MountSource, RootPlan};

use crate::sys;

/// The list of modules to load, one initramfs path per line, in order.
const MODULE_LIST: &str = "/msb/modules";
/// Where the new root is assembled before it replaces the initramfs.
const STAGING: &str = "/msb/stage";

/// Errors setting the guest up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A mount failed.
    #[error("mounting {what} on {target} failed")]
    Mount {
        what: String,
        target: PathBuf,
        source: io::Error,
    },
    /// Creating a directory or file failed.
    #[error("creating {path} failed")]
    Create { path: PathBuf, source: io::Error },
    /// A module failed to load.
    #[error("loading module {path} failed")]
    Module { path: String, source: io::Error },
    /// No disk has the serial the plan names.
    #[error("no disk with serial {0:?} appeared")]
    NoDisk(String),
    /// A plan path that is not absolute or climbs with `..`.
    #[error("plan path {0:?} is not a plain absolute path")]
    BadPath(String),
    /// Switching to the new root failed.
    #[error("switching to the new root failed")]
    SwitchRoot(#[source] io::Error),
    /// Setting the hostname failed.
    #[error("setting the hostname failed")]
    Hostname(#[source] io::Error),
}

fn mount(
    what: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), SetupError> {
    sys::mount(what, target, fstype, flags, data).map_err(|source| SetupError::Mount {
        what: format!("{fstype} {what}"),
        target: target.to_owned(),
        source,
    })
}

fn mkdir_p(path: &Path, mode: u32) -> Result<(), SetupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| SetupError::Create {
            path: path.to_owned(),
            source,
        })
}

/// Mounts /proc, /sys, /dev (devtmpfs), /dev/pts and /dev/shm.
pub fn kernel_filesystems() -> Result<(), SetupError> {
    let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    for (dir, fstype, flags, data) in [
        ("/proc", "proc", nosuid_noexec, None),
        ("/sys", "sysfs", nosuid_noexec, None),
        (
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=0755"),
        ),
        (
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        ("/dev/shm", "tmpfs", nosuid_noexec, Some("mode=1777")),
    ] {
        mkdir_p(Path::new(dir), 0o755)?;
        mount(fstype, Path::new(dir), fstype, flags, data)?;
    }
    Ok(())
}

/// Loads the modules the initramfs lists, in order; one already present is fine.
pub fn load_modules() -> Result<(), SetupError> {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SetupError::Module {
                path: MODULE_LIST.into(),
                source,
            });
        }
    };
    for path in list.lines().filter(|l| !l.is_empty()) {
        let err = |source| SetupError::Module {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(err)?;
        match sys::finit_module(file.as_raw_fd()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Checks that a plan path is absolute without `..`, so it stays under the
/// root it is joined to.
fn plain_path(p: &str) -> Result<&Path, SetupError> {
    let path = Path::new(p);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if plain {
        Ok(path)
    } else {
        Err(SetupError::BadPath(p.to_owned()))
    }
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Applies the plan: root, hostname, mounts. Afterwards the process runs in
/// the plan's root.
pub fn apply(plan: &GuestPlan) -> Result<(), SetupError> {
    if let Some(root) = &plan.root {
        switch_to_overlay_root(root)?;
    }
    if !plan.hostname.is_empty() {
        // SAFETY: the pointer and length describe the hostname's bytes.
        let rc = unsafe { libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) };
        if rc < 0 {
            return Err(SetupError::Hostname(io::Error::last_os_error()));
        }
    }
    for m in &plan.mounts {
        apply_mount(m)?;
    }
    Ok(())
}

fn switch_to_overlay_root(root: &RootPlan) -> Result<(), SetupError> {
    let staging = Path::new(STAGING);
    let lower = staging.join("lower");
    let rw = staging.join("rw");
    let new_root = staging.join("root");
    for dir in [&lower, &rw, &new_root] {
        mkdir_p(dir, 0o755)?;
    }
    let size = if root.upper_size_mib > 0 {
        format!("size={}m,mode=0755", root.upper_size_mib)
    } else {
        "mode=0755".into()
    };
    let share_flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    if root.lower_at.is_empty() || root.lower_at == "/" {
        mount(&root.tag, &lower, "virtiofs", share_flags, None)?;
        mount("tmpfs", &rw, "tmpfs", 0, Some(&size))?;
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        mkdir_p(&upper, 0o755)?;
        mkdir_p(&work, 0o755)?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount("overlay", &new_root, "overlay", 0, Some(&opts))?;
    } else {
        // A fresh root: a tmpfs of its own, the host's programs read-only.
        mount("tmpfs", &new_root, "tmpfs", 0, Some(&size))?;
        let at = under(&new_root, plain_path(&root.lower_at)?);
        mkdir_p(&at, 0o755)?;
        mount(&root.tag, &at, "virtiofs", share_flags, None)?;
    }
    for (dir, mode) in &root.dirs {
        let target = under(&new_root, plain_path(dir)?);
        mkdir_p(&target, 0o755)?;
        // The umask must not narrow a sticky, world-writable mode.
        fs::set_permissions(&target, fs::Permissions::from_mode(*mode)).map_err(|source| {
            SetupError::Create {
                path: target.clone(),
                source,
            }
        })?;
    }
    for (link, dest) in &root.symlinks {
        let target = under(&new_root, plain_path(link)?);
        let _ = fs::remove_file(&target);
        std::os::unix::fs::symlink(dest, &target).map_err(|source| SetupError::Create {
            path: target.clone(),
            source,
        })?;
    }

    for file in &root.files {
        let target = under(&new_root, plain_path(&file.path)?);
        if let Some(parent) = target.parent() {
            mkdir_p(parent, 0o755)?;
        }
        let create = |source| SetupError::Create {
            path: target.clone(),
            source,
        };
        // A symlink in the lower layer must not redirect the write.
        let _ = fs::remove_file(&target);
        fs::write(&target, &file.contents).map_err(create)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(file.mode)).map_err(create)?;
    }

    for dir in ["/dev", "/proc", "/sys"] {
        let target = under(&new_root, Path::new(dir));
        mkdir_p(&target, 0o755)?;
        mount(dir, &target, "", libc::MS_MOVE, None)?;
    }
    // The initramfs cannot be pivoted away from: move the new root over it
    // and chroot, as switch_root does.
    std::env::set_current_dir(&new_root).map_err(SetupError::SwitchRoot)?;
    sys::mount(".", Path::new("/"), "", libc::MS_MOVE, None).map_err(SetupError::SwitchRoot)?;
    let dot = sys::cstr(".").map_err(SetupError::SwitchRoot)?;
    // SAFETY: dot is a valid C string.
    if unsafe { libc::chroot(dot.as_ptr()) } < 0 {
        return Err(SetupError::SwitchRoot(io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(SetupError::SwitchRoot)
}

fn apply_mount(m: &GuestMount) -> Result<(), SetupError> {
    let target = plain_path(&m.guest_path)?;
    if !matches!(m.source, MountSource::VirtioFsFile { .. }) {
        mkdir_p(target, 0o755)?;
    }
    let mut flags = 0;
    for (on, flag) in [
        (m.ro, libc::MS_RDONLY),
        (m.noexec, libc::MS_NOEXEC),
        (m.nosuid, libc::MS_NOSUID),
        (m.nodev, libc::MS_NODEV),
    ] {
        if on {
            flags |= flag;
        }
    }
    match &m.source {
        MountSource::VirtioFs { tag } => mount(tag, target, "virtiofs", flags, None),
        MountSource::VirtioFsFile { tag } => mount_file(tag, target, flags),
        MountSource::Block { serial, fstype } => {
            let dev = find_disk(serial)?;
            let dev = dev.to_string_lossy();
            if !fstype.is_empty() {
                return mount(&dev, target, fstype, flags, None);
            }
            // Unstated: the first of the common filesystems that takes it.
            let mut last = None;
            for candidate in ["ext4", "xfs", "btrfs", "vfat"] {
                match mount(&dev, target, candidate, flags, None) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("candidates were tried"))
        }
        MountSource::Tmpfs { size_mib } => {
            let data = if *size_mib > 0 {
                format!("size={size_mib}m,mode=1777")
            } else {
                "mode=1777".into()
            };
            mount("tmpfs", target, "tmpfs", flags, Some(&data))
        }
    }
}

/// Mounts the one file of the single-file share `tag` on `target` (made
/// an empty file if missing): the share goes on a private directory of
/// /dev, its file is bound onto `target`, and the share's own mount goes
/// again, so nothing but the file stays reachable.
fn mount_file(tag: &str, target: &Path, flags: libc::c_ulong) -> Result<(), SetupError> {
    if let Some(parent) = target.parent() {
        mkdir_p(parent, 0o755)?;
    }
    let create = |source| SetupError::Create {
        path: target.to_owned(),
        source,
    };
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {
            return Err(create(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(target)
                .map_err(create)?;
        }
        Err(e) => return Err(create(e)),
    }
    let staging = Path::new("/dev").join(format!(".msb-file-{tag}"));
    mkdir_p(&staging, 0o700)?;
    mount(tag, &staging, "virtiofs", flags, None)?;
    let file = staging.join(FILE_SHARE_ENTRY);
    let bound = mount(&file.to_string_lossy(), target, "", libc::MS_BIND, None).and_then(|()| {
        // A bind takes the flags only from a remount.
        let remount = libc::MS_REMOUNT | libc::MS_BIND | flags;
        mount("", target, "", remount, None)
    });
    let staging_c = sys::cstr(staging.as_os_str().as_encoded_bytes());
    if let Ok(staging_c) = staging_c {
        // SAFETY: a valid C string naming the staging mount.
        unsafe { libc::umount2(staging_c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_dir(&staging);
    bound
}

/// Finds the block device whose virtio serial is `serial`, waiting briefly
/// because disks are probed asynchronously after the driver loads.
fn find_disk(serial: &str) -> Result<PathBuf, SetupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let found = fs::read_to_string(entry.path().join("serial"))
                    .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial);
                if found {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(SetupError::NoDisk(serial.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
