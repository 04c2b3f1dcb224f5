//! `qemu-storage-daemon`, confined: it parses hostile qcow2 and vmdk images,
//! so it runs as an unprivileged user of its own (no supplementary groups,
//! no capabilities) and dies with its parent.
//!
//! Whatever it opens by path, it opens with its own user's rights, a
//! stranger's: a header flipped after the check may still name a file any
//! host user may read, but no more. The image reaches it as a descriptor
//! (fd 3) on a detached
//! idmapped bind mount of exactly the checked file, on which that file
//! alone shows as the daemon's own; QEMU reopens it through
//! `/proc/self/fd/3`. Its owner's powers over that file, changing its mode
//! (a setuid bit), owner, ACLs or other attributes, are taken away by a
//! system call filter (and by a read-only mount for read-only views).
//!
//! A user may not mount FUSE, so msb mounts the raw view itself, detached
//! (in no mount table at all), and hands the daemon the `/dev/fuse`
//! descriptor as fd 4 with mountpoint `/dev/fd/4`, which libfuse takes as
//! an already mounted session. QEMU first checks that the mountpoint is a
//! regular file, so the daemon runs in a private mount namespace whose
//! `/dev` is a small tmpfs holding an empty `/dev/fd/4`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use linux_raw_sys::general as nr;
use msb_security::{child, seccomp};
use msb_spec::DiskFormat;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, OpenTreeFlags, fsconfig_create, fsconfig_set_flag,
    fsconfig_set_string, fsmount, fsopen, open_tree,
};
use seccompiler::{BackendError, BpfProgram};

/// The unprivileged host ids `qemu-storage-daemon` runs as. They must be
/// no other process's (a sandbox's above all): whoever shares them may
/// signal and trace the daemon. msb takes them from a leased id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonUser {
    /// The user id; never 0.
    pub uid: u32,
    /// The group id; never 0.
    pub gid: u32,
}

/// Why the daemon could not serve a view.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no unprivileged ids were given for the qemu-storage-daemon reading {0}")]
    NoUser(PathBuf),
    #[error("refusing to run qemu-storage-daemon as root (uid {0}, gid {1})")]
    Root(u32, u32),
    #[error(
        "cannot give qemu-storage-daemon access to {0} (its filesystem may not support idmapped mounts)"
    )]
    Access(PathBuf, #[source] io::Error),
    #[error("cannot mount the FUSE filesystem for the raw view of {0}")]
    Fuse(PathBuf, #[source] io::Error),
    #[error("cannot build qemu-storage-daemon's system call filter")]
    Filter(#[source] BackendError),
    #[error("cannot start qemu-storage-daemon for {0} (install qemu-utils)")]
    Spawn(PathBuf, #[source] io::Error),
    #[error("qemu-storage-daemon cannot open {image} as {format}: {stderr}")]
    Failed {
        image: PathBuf,
        format: DiskFormat,
        stderr: String,
    },
    #[error("qemu-storage-daemon did not export {0} within 10 s")]
    Timeout(PathBuf),
    #[error("cannot open the raw view of {0}")]
    OpenView(PathBuf, #[source] io::Error),
}

/// The numbers the daemon finds its descriptors at.
const IMAGE_FD: i32 = 3;
const FUSE_FD: i32 = 4;
/// Where descriptors are parked between fork and exec, above both.
const PARK_FDS_AT: i32 = 64;
/// How long the daemon has to open the image and serve the view.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Calls that change a file's metadata: on its image the daemon is the
/// owner, who may otherwise set a setuid bit (the host owner's), an ACL or
/// a time. `EPERM` for all; QEMU never needs them for an image it only
/// reads and writes.
const METADATA_CALLS: &[u32] = &[
    nr::__NR_fchmod,
    nr::__NR_fchmodat,
    nr::__NR_fchmodat2,
    nr::__NR_fchown,
    nr::__NR_fchownat,
    nr::__NR_setxattr,
    nr::__NR_lsetxattr,
    nr::__NR_fsetxattr,
    nr::__NR_setxattrat,
    nr::__NR_removexattr,
    nr::__NR_lremovexattr,
    nr::__NR_fremovexattr,
    nr::__NR_removexattrat,
    nr::__NR_file_setattr,
    nr::__NR_utimensat,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_chmod,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_chown,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_lchown,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_utime,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_utimes,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_futimesat,
];

/// A running daemon serving one image's raw view.
#[derive(Debug)]
pub(crate) struct QemuDaemon {
    child: Child,
}

impl QemuDaemon {
    /// Starts the daemon on `image` (open, checked; `path` names it in
    /// messages) as `user`; returns it with its raw view, opened.
    pub(crate) fn start(
        image: &File,
        path: &Path,
        format: DiskFormat,
        readonly: bool,
        user: DaemonUser,
    ) -> Result<(Self, File), DaemonError> {
        if user.uid == 0 || user.gid == 0 {
            return Err(DaemonError::Root(user.uid, user.gid));
        }
        let image_fd = own_image(image, readonly, user)
            .map_err(|e| DaemonError::Access(path.to_path_buf(), e))?;
        let (fuse, view_mount) =
            mount_view(readonly).map_err(|e| DaemonError::Fuse(path.to_path_buf(), e))?;
        let filter = metadata_filter().map_err(DaemonError::Filter)?;
        let mut cmd = command(format, readonly);
        let sources = [image_fd.as_raw_fd(), fuse.as_raw_fd()];
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || confine(sources, user, &filter, parent));
        }
        let child = cmd
            .spawn()
            .map_err(|e| DaemonError::Spawn(path.to_path_buf(), e))?;
        // Only the daemon holds /dev/fuse now: if it dies, the kernel ends
        // the FUSE connection and every request on the view fails instead
        // of waiting forever.
        drop(fuse);
        drop(image_fd);
        let mut daemon = QemuDaemon { child };
        let view = daemon.open_view(&view_mount, path, format, readonly)?;
        Ok((daemon, view))
    }

    /// The daemon's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens the view's file, which the kernel answers only once the daemon
    /// serves it; kills the daemon if that takes too long.
    fn open_view(
        &mut self,
        mount: &OwnedFd,
        image: &Path,
        format: DiskFormat,
        readonly: bool,
    ) -> Result<File, DaemonError> {
        let pid = self.child.id() as libc::pid_t;
        let (done, waiting) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let late = matches!(
                waiting.recv_timeout(READY_WITHIN),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if late {
                // SAFETY: a plain kill(2) of our child, not reaped before
                // this thread is joined.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            late
        });
        let opened = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(format!("/proc/self/fd/{}", mount.as_raw_fd()));
        drop(done);
        let late = watchdog.join().unwrap_or(true);
        let err = match opened {
            Ok(view) => return Ok(view),
            Err(e) => e,
        };
        if late {
            return Err(DaemonError::Timeout(image.to_path_buf()));
        }
        // The connection ended: the daemon has exited or is exiting.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(DaemonError::Failed {
                    image: image.to_path_buf(),
                    format,
                    stderr: stderr.trim().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(DaemonError::OpenView(image.to_path_buf(), err))
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

/// The daemon's command line: the image at fd 3, the export on the FUSE
/// session at fd 4.
fn command(format: DiskFormat, readonly: bool) -> Command {
    let ro = if readonly { ",read-only=on" } else { "" };
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file,filename=/proc/self/fd/{IMAGE_FD}{ro}"
        ))
        // The header was checked to name no backing file; `null` makes
        // sure this QEMU would not open one anyway.
        .arg("--blockdev")
        .arg(format!(
            r#"{{"driver":"{format}","node-name":"fmt","file":"file","read-only":{readonly},"backing":null}}"#
        ))
        .arg("--export")
        .arg(format!(
            "type=fuse,id=view,node-name=fmt,mountpoint=/dev/fd/{FUSE_FD},writable={}",
            if readonly { "off" } else { "on" }
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A descriptor of `image` for the daemon: a detached bind mount of that
/// one file (the inode checked, not whatever its path names now), idmapped
/// so that its owner and group show as `user`, who can then open it by
/// its owner's mode bits and nothing else on the host by its owner's.
fn own_image(image: &File, readonly: bool, user: DaemonUser) -> io::Result<OwnedFd> {
    let meta = image.metadata()?;
    // On an idmapped mount, an id on disk is looked up on the inside of
    // the map and shows as its outside.
    let userns = crate::id_map_namespace(
        &format!("{} {} 1\n", meta.uid(), user.uid),
        &format!("{} {} 1\n", meta.gid(), user.gid),
    )?;
    let tree = open_tree(
        image.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_IDMAP
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    if readonly {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    crate::set_mount_attrs(&tree, attrs, Some(&userns), false)?;
    Ok(tree)
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem on it, attached nowhere,
/// whose root is the view file. Only processes with msb's ids may use it
/// (no `allow_other`). Returns the session descriptor and the mount.
fn mount_view(readonly: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let fuse = OwnedFd::from(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?,
    );
    let fs = fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "fd", fuse.as_raw_fd().to_string())?;
    // A regular file, in octal.
    fsconfig_set_string(&fs, "rootmode", "100000")?;
    fsconfig_set_string(
        &fs,
        "user_id",
        rustix::process::geteuid().as_raw().to_string(),
    )?;
    fsconfig_set_string(
        &fs,
        "group_id",
        rustix::process::getegid().as_raw().to_string(),
    )?;
    fsconfig_set_flag(&fs, "default_permissions")?;
    fsconfig_create(&fs)?;
    let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    if readonly {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    let mount = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    Ok((fuse, mount))
}

/// The filter refusing [`METADATA_CALLS`]. Built before fork: it allocates.
fn metadata_filter() -> Result<BpfProgram, BackendError> {
    let rules: BTreeMap<i64, Vec<_>> = METADATA_CALLS
        .iter()
        .map(|&n| (i64::from(n), Vec::new()))
        .collect();
    seccomp::refusing(rules)
}

/// Between fork and exec: places the image and FUSE descriptors at 3 and
/// 4, closes the rest on exec, enters a private mount namespace with the
/// `/dev/fd/4` QEMU checks for, takes `user`'s ids (which clears every
/// capability), installs the filter and arms the parent-death signal.
///
/// # Safety
///
/// Only async-signal-safe calls, on data made before fork.
unsafe fn confine(
    sources: [i32; 2],
    user: DaemonUser,
    filter: &BpfProgram,
    parent: libc::pid_t,
) -> io::Result<()> {
    let fail = || Err(io::Error::last_os_error());
    // SAFETY: raw system calls on descriptors and strings that are live.
    unsafe {
        // The caller may block signals it forwards; the daemon must still
        // stop on SIGTERM.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Park first, so no dup2 below clobbers a source still to be placed.
        let mut parked = [0i32; 2];
        for (p, &fd) in parked.iter_mut().zip(&sources) {
            *p = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PARK_FDS_AT);
            if *p < 0 {
                return fail();
            }
        }
        for (&fd, to) in parked.iter().zip([IMAGE_FD, FUSE_FD]) {
            if libc::dup2(fd, to) < 0 {
                return fail();
            }
        }
        // Nothing else msb has open reaches the daemon; marking instead of
        // closing keeps std's exec error pipe working.
        libc::syscall(
            libc::SYS_close_range,
            FUSE_FD + 1,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        // A private mount namespace whose /dev holds only the empty
        // regular file QEMU checks its mountpoint to be, and /dev/null
        // (which QEMU probes for OFD locks).
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
                c"/dev".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"size=4k,nr_inodes=8,mode=0755".as_ptr().cast(),
            ) < 0
            || libc::mknod(c"/dev/null".as_ptr(), libc::S_IFCHR, libc::makedev(1, 3)) < 0
            || libc::chmod(c"/dev/null".as_ptr(), 0o666) < 0
            || libc::mkdir(c"/dev/fd".as_ptr(), 0o755) < 0
        {
            return fail();
        }
        let stub = libc::open(
            c"/dev/fd/4".as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o444,
        );
        if stub < 0 {
            return fail();
        }
        libc::close(stub);
        if libc::mount(
            std::ptr::null(),
            c"/dev".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
            std::ptr::null(),
        ) < 0
        {
            return fail();
        }
        child::take_ids(user.uid, user.gid)?;
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return fail();
        }
    }
    seccomp::install(filter)?;
    child::die_with(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_filter_refuses_a_setuid_bit_and_allows_writes() {
        let filter = metadata_filter().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: the child makes only system calls and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: the filter is live, fd is open.
            unsafe {
                let code = if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                    || seccomp::install(&filter).is_err()
                {
                    2
                } else if libc::pwrite(fd, b"data".as_ptr().cast(), 4, 0) != 4 {
                    3
                } else if libc::fchmod(fd, 0o4755) == 0 || *libc::__errno_location() != libc::EPERM
                {
                    4
                } else if libc::fchown(fd, 0, 0) == 0 {
                    5
                } else {
                    0
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0, "child step failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7000, 0, "the setuid bit was set");
    }
}
