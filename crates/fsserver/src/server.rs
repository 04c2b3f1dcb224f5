//! Starting, mounting and stopping a server.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use rustix::fs::{CWD, Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use msb_spec::IdMap;

use crate::fuse::{FuseTransport, Running};
use crate::policy::{Policy, PolicyError, PolicyFs};

/// Request-handling threads, each reading its own cloned `/dev/fuse` fd.
const THREADS: usize = 4;
/// `statfs` magic of FUSE file systems.
const FUSE_SUPER_MAGIC: libc::__fsword_t = 0x6573_5546;
/// Where the kernel's FUSE control file system lives.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// What a server enforces: the policy of the served tree.
pub type ServeConfig = Policy;

/// Errors of starting or stopping a server.
#[derive(Debug, thiserror::Error)]
pub enum FsServerError {
    /// The served directory is unusable under the policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The root could not be opened.
    #[error("cannot open {path} as the served root")]
    OpenRoot {
        /// The root asked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `/dev/fuse` could not be opened.
    #[error("cannot open /dev/fuse")]
    OpenFuse(#[source] io::Error),
    /// mount(2) failed.
    #[error("cannot mount a FUSE file system on {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A detached FUSE mount could not be created.
    #[error("cannot create a FUSE mount")]
    MountDetached(#[source] io::Error),
    /// umount(2) failed.
    #[error("cannot unmount {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path is not a FUSE mount served by msb.
    #[error("{0} is not a volume mount of msb")]
    NotServed(PathBuf),
    /// The server threads could not start.
    #[error("cannot start the server threads")]
    Spawn(#[source] io::Error),
    /// The FUSE session ended with an error.
    #[error("the FUSE session failed")]
    Session(#[source] io::Error),
}

/// A host mount made by [`mount`].
struct HostMount {
    path: PathBuf,
    /// Child process that unmounts if this process dies first.
    watchdog: Option<libc::pid_t>,
    /// Its pipe: the watchdog wakes up when the write end closes.
    _wake: Option<OwnedFd>,
}

/// A running server. Dropping it stops it.
pub struct Server {
    thread: Option<JoinHandle<io::Result<()>>>,
    running: Running,
    mount: Option<HostMount>,
}

/// Opens `path` as a root to serve: a directory reached without following
/// a symlink in any component, unless `follow_symlinks`.
pub fn open_root(path: &Path, follow_symlinks: bool) -> Result<OwnedFd, FsServerError> {
    let resolve = if follow_symlinks {
        ResolveFlags::empty()
    } else {
        ResolveFlags::NO_SYMLINKS
    };
    rustix::fs::openat2(
        CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
    .map_err(|e| FsServerError::OpenRoot {
        path: path.into(),
        source: e.into(),
    })
}

/// The mount(2) data string for a FUSE mount backed by `fuse_fd`. The kernel
/// checks permissions against the attributes the server reports
/// (`default_permissions`), and every user may use the mount (`allow_other`).
pub fn mount_data(fuse_fd: RawFd) -> String {
    format!(
        "fd={fuse_fd},rootmode=40000,user_id={},group_id={},allow_other,default_permissions",
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// Creates a FUSE mount backed by `fuse` that is not attached anywhere
/// yet: the returned mount descriptor can be attached with `move_mount(2)`
/// by any process it is passed to, in its own mount namespace (a
/// sandbox's). It is always `nosuid,nodev`. Start the server with [`serve`]
/// at once: the kernel has sent its handshake, and the first access waits
/// for the answer.
pub fn mount_detached(fuse: &OwnedFd) -> Result<OwnedFd, FsServerError> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_flag,
        fsconfig_set_string, fsmount, fsopen,
    };
    let err = |e: rustix::io::Errno| FsServerError::MountDetached(e.into());
    let fs = fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err)?;
    fsconfig_set_string(&fs, "source", "msb").map_err(err)?;
    for option in mount_data(fuse.as_raw_fd()).split(',') {
        match option.split_once('=') {
            Some((key, value)) => fsconfig_set_string(&fs, key, value),
            None => fsconfig_set_flag(&fs, option),
        }
        .map_err(err)?;
    }
    fsconfig_create(&fs).map_err(err)?;
    // Device nodes and setuid bits come from records anyone able to write
    // the volume may plant: neither may take effect.
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err)
}

/// Raises the descriptor limit as far as allowed: the node cache of a
/// [`PolicyFs`] sizes itself from it, so call this before building one.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let want = Some(1 << 20);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: want,
            maximum: want,
        },
    )
    .or_else(|_| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        )
    });
}

fn start(fs: PolicyFs, fuse: OwnedFd, ids: IdMap) -> Result<Server, FsServerError> {
    let running: Running = Arc::new(AtomicBool::new(true));
    let transport = FuseTransport::new(Arc::new(fs), running.clone(), ids);
    let thread = std::thread::Builder::new()
        .name("msb-fsserver".into())
        .spawn(move || {
            let mut config = fuser::Config::default();
            config.acl = fuser::SessionACL::All;
            config.n_threads = Some(THREADS);
            config.clone_fd = true;
            fuser::Session::from_fd(transport, fuse, fuser::SessionACL::All, config)?.run()
        })
        .map_err(FsServerError::Spawn)?;
    Ok(Server {
        thread: Some(thread),
        running,
        mount: None,
    })
}

/// Serves the directory `root` on an already opened `/dev/fuse` descriptor.
/// The caller mounts it itself (before or after this call), with
/// [`mount_detached`] or mount(2) and data from [`mount_data`]. The server
/// runs on background threads; dropping the returned Server stops it
/// (requests then fail with ENOTCONN; the threads end when the mount goes
/// away).
///
/// `wire` maps guest ids to the ids on the FUSE wire, those of the mount's
/// user namespace (the host's): a sandbox's own range, which need not be
/// the range the policy stores host files under ([`ServeConfig::id_map`]).
pub fn serve(
    root: OwnedFd,
    fuse: OwnedFd,
    cfg: ServeConfig,
    wire: IdMap,
) -> Result<Server, FsServerError> {
    raise_fd_limit();
    let fs = PolicyFs::new(&root, cfg)?;
    start(fs, fuse, wire)
}

/// Serves `root` on a `/dev/fuse` descriptor that a sandbox's init opened
/// and mounted in the sandbox's own user namespace (a rootless sandbox,
/// whose caller may not make mounts in the host's). The kernel translates
/// ids at that namespace's edge, so requests and attributes already carry
/// guest ids; the policy still maps them through [`ServeConfig::id_map`]
/// for the owners of host files. Otherwise as [`serve`].
pub fn serve_guest(
    root: OwnedFd,
    fuse: OwnedFd,
    cfg: ServeConfig,
) -> Result<Server, FsServerError> {
    raise_fd_limit();
    let fs = PolicyFs::new(&root, cfg)?;
    start(fs, fuse, IdMap::IDENTITY)
}

/// Host convenience (used by `msb volume mount`): serves the directory `dir`
/// (reached without following symlinks) at `mountpoint` (nosuid, nodev;
/// read-only when the policy is); the Server unmounts on drop /
/// [`Server::unmount`]. The mount table names `dir` as the source (see
/// [`detach_mounts_of`]). A watchdog process removes the mount if this process
/// dies without unmounting.
pub fn mount(dir: &Path, mountpoint: &Path, cfg: ServeConfig) -> Result<Server, FsServerError> {
    let (readonly, ids) = (cfg.readonly, cfg.id_map);
    raise_fd_limit();
    let fs = PolicyFs::new(&open_root(dir, false)?, cfg)?;
    let source = CString::new(dir.as_os_str().as_bytes()).expect("a path holds no NUL");
    let fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| FsServerError::OpenFuse(e.into()))?;
    let data = CString::new(mount_data(fuse.as_raw_fd())).expect("no NUL in mount data");
    // Never devices or setuid, as for detached mounts.
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if readonly {
        flags |= MountFlags::RDONLY;
    }
    // The watchdog exists before the mount does, so no moment is left in
    // which this process could die and leave the mount behind.
    let watchdog = spawn_watchdog(mountpoint);
    let fail = |watchdog: Option<(libc::pid_t, OwnedFd)>| {
        if let Some((pid, _wake)) = watchdog {
            reap(pid);
        }
    };
    if let Err(e) = rustix::mount::mount(
        source.as_c_str(),
        mountpoint,
        "fuse.msb",
        flags,
        data.as_c_str(),
    ) {
        fail(watchdog);
        return Err(FsServerError::Mount {
            path: mountpoint.into(),
            source: e.into(),
        });
    }
    let mut server = match start(fs, fuse, ids) {
        Ok(s) => s,
        Err(e) => {
            fail(watchdog);
            let _ = rustix::mount::unmount(mountpoint, UnmountFlags::DETACH);
            return Err(e);
        }
    };
    let (watchdog, wake) = match watchdog {
        Some((pid, fd)) => (Some(pid), Some(fd)),
        None => (None, None),
    };
    server.mount = Some(HostMount {
        path: mountpoint.into(),
        watchdog,
        _wake: wake,
    });
    Ok(server)
}

/// Stops and reaps a watchdog that is no longer needed.
fn reap(pid: libc::pid_t) {
    // SAFETY: signals and reaps our own child process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The fusectl abort file of the FUSE mount at `path`, mounting fusectl
/// first if needed.
fn abort_file(path: &Path) -> Option<PathBuf> {
    let st = rustix::fs::stat(path).ok()?;
    let minor = rustix::fs::minor(st.st_dev);
    let file = PathBuf::from(format!("{FUSECTL}/{minor}/abort"));
    if !file.exists() {
        let _ = rustix::mount::mount(
            "fusectl",
            FUSECTL,
            "fusectl",
            MountFlags::empty(),
            None::<&std::ffi::CStr>,
        );
    }
    file.exists().then_some(file)
}

/// Starts a process that lazily unmounts `path` once this process is gone
/// (the pipe's write end closes), so a killed server never leaves a dead
/// mount behind. By then every `/dev/fuse` descriptor is closed and the
/// kernel has aborted the connection; the watchdog only unmounts a FUSE
/// file system (or a dead one) at `path`.
fn spawn_watchdog(path: &Path) -> Option<(libc::pid_t, OwnedFd)> {
    let target = CString::new(path.as_os_str().as_bytes()).ok()?;
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    // SAFETY: the child only makes async-signal-safe system calls on data
    // prepared before the fork, then exits with _exit; it never returns into
    // Rust code that could touch locks held by other threads.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain system calls in the forked child, see above.
        unsafe {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_IGN);
            }
            libc::dup2(read.as_raw_fd(), 0);
            // Drop every other descriptor, above all the /dev/fuse ones:
            // holding them would keep a dead server's connection alive.
            libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
            let mut b = 0u8;
            while libc::read(0, (&raw mut b).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            let mut st: libc::statfs = std::mem::zeroed();
            let rc = libc::statfs(target.as_ptr(), &mut st);
            let fuse = if rc == 0 {
                st.f_type == FUSE_SUPER_MAGIC
            } else {
                // A dead connection answers ENOTCONN, or ECONNABORTED once
                // the kernel aborted it.
                matches!(
                    *libc::__errno_location(),
                    libc::ENOTCONN | libc::ECONNABORTED
                )
            };
            if fuse {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
            libc::_exit(0);
        }
    }
    if pid < 0 {
        return None;
    }
    Some((pid, write))
}

/// Unmounts the msb volume mount at `path` (as `msb volume unmount` does):
/// detaches it and aborts its FUSE connection so nothing can hang on it.
pub fn unmount_path(path: &Path) -> Result<(), FsServerError> {
    if !is_served_mount(path) {
        return Err(FsServerError::NotServed(path.into()));
    }
    let abort = abort_file(path);
    rustix::mount::unmount(path, UnmountFlags::DETACH).map_err(|e| FsServerError::Unmount {
        path: path.into(),
        source: e.into(),
    })?;
    if let Some(abort) = abort {
        let _ = std::fs::write(abort, b"1");
    }
    Ok(())
}

/// Whether `path` is the root of a FUSE mount made by [`mount`]. Reads only
/// the mount table, so it works (and never hangs) on a dead server's mount.
pub fn is_served_mount(path: &Path) -> bool {
    let Some(point) = mount_point_path(path) else {
        return false;
    };
    host_mounts().into_iter().any(|(_, p)| p == point)
}

/// Detaches every mount of `dir` made by [`mount`] in this mount namespace
/// and returns where they were. For the owner of `dir` once it knows that
/// no server is left (the volume was removed, which needs every holder
/// gone): a server killed together with its watchdog leaves a dead mount
/// that only fails with ENOTCONN.
pub fn detach_mounts_of(dir: &Path) -> Vec<PathBuf> {
    host_mounts()
        .into_iter()
        .filter(|(source, point)| source == dir && unmount_path(point).is_ok())
        .map(|(_, point)| point)
        .collect()
}

/// `(source, mount point)` of every mount made by [`mount`].
fn host_mounts() -> Vec<(PathBuf, PathBuf)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            if right.next() != Some("fuse.msb") {
                return None;
            }
            let source = unescape(right.next()?);
            Some((source, unescape(left.split(' ').nth(4)?)))
        })
        .collect()
}

/// `path` made absolute through its parent only: resolving the mount point
/// itself would ask its (possibly dead) server.
fn mount_point_path(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Some(std::fs::canonicalize(parent).ok()?.join(name)),
        _ => Some(abs),
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

impl Server {
    /// Blocks until the session ends (the mount went away), then cleans up.
    pub fn wait(mut self) -> Result<(), FsServerError> {
        let res = self.join();
        self.stop_mount()?;
        res
    }

    /// Unmounts (for a [`mount`]ed server) and waits for the threads to end.
    pub fn unmount(mut self) -> Result<(), FsServerError> {
        if self.mount.is_none() {
            // Served only: the caller owns the mount, and the threads end
            // when it goes away; until then requests fail with ENOTCONN.
            self.running.store(false, Ordering::Release);
            return Ok(());
        }
        self.stop_mount()?;
        self.join()
    }

    fn join(&mut self) -> Result<(), FsServerError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(FsServerError::Session(e)),
            Some(Err(_)) => Err(FsServerError::Session(io::Error::other(
                "a server thread panicked",
            ))),
            _ => Ok(()),
        }
    }

    fn stop_mount(&mut self) -> Result<(), FsServerError> {
        let Some(m) = self.mount.take() else {
            return Ok(());
        };
        if let Some(pid) = m.watchdog {
            reap(pid);
        }
        if is_served_mount(&m.path) {
            unmount_path(&m.path)?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Release);
        if self.mount.is_some() {
            let _ = self.stop_mount();
            let _ = self.join();
        }
    }
}
