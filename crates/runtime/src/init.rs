//! The sandbox's init: pid 1 of the new pid namespace, running in the new
//! mount, ipc, uts and network namespaces the backend created.
//!
//! It builds the root filesystem from detached mounts (every source is
//! opened before anything is attached, so covering a host directory can
//! never hide a later source), pivots into it, starts the command, forwards
//! signals to it, reaps orphans, and exits with the command's status. With
//! no command (a named sandbox) it starts nothing and stays up until its
//! supervisor tells it to stop. When it exits the kernel kills everything left in the pid namespace and drops
//! the mount namespace with every mount in it.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree,
};

use crate::caps;
use crate::mounts::{attrs, set_attrs};
use crate::plan::{InitMount, InitPlan, InitRoot, InitSource, Security};

/// Environment variable carrying the JSON [`InitPlan`] to the init.
pub const PLAN_ENV: &str = "MSB_SANDBOX_PLAN";
/// The descriptor on which the init reports `ok` or `err CODE MESSAGE`.
pub const STATUS_FD: RawFd = 3;
/// The first descriptor number of those the supervisor passes (FUSE).
pub const PASSED_FD_BASE: RawFd = 4;

/// Why the sandbox could not be set up (sent to the supervisor as text).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("the sandbox plan is missing or malformed")]
    Plan(#[source] serde_json::Error),
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the system call filter")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot run {0}")]
    Exec(String, #[source] io::Error),
    #[error("mount at {0}: the namespace backend got a microVM's mount")]
    NotForNamespace(String),
    #[error(
        "cannot create the mount point {path}: {parent} is read-only; mount at a directory that exists there"
    )]
    ReadOnlyParent { path: String, parent: String },
    #[error("mount at {guest}")]
    Fuse {
        guest: String,
        #[source]
        source: msb_fsserver::FsServerError,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InitError {
    let what = what.into();
    move |e| InitError::Sys {
        what,
        source: e.into(),
    }
}

/// Whether this process was started as a sandbox init.
pub fn is_init() -> bool {
    std::env::var_os(PLAN_ENV).is_some()
}

/// Runs the init and returns its exit code: the command's status, 128+N if
/// the command was killed by signal N, or 126/127 (cannot execute / not
/// found) and 1 (setup failed) with the reason sent to the supervisor.
pub fn main() -> i32 {
    // Sandbox processes run as the same user: none may read this process's
    // memory or descriptors (the plan, the mounts it is handed).
    // SAFETY: a plain prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    // An ignored signal is discarded when sent, blocked or not, so none may
    // stay ignored from whoever started the supervisor (`nohup`, say)...
    reset_signals();
    // ...except SIGPIPE: a write to a supervisor that died fails (EPIPE)
    // and is handled.
    // SAFETY: setting an action installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // As pid 1, unhandled signals would be dropped; blocked, they queue for
    // forwarding, and SIGCHLD wakes the reaper at once.
    block_signals();
    // SAFETY: STATUS_FD was set up by the backend for this process alone.
    let mut status = unsafe { std::fs::File::from_raw_fd(STATUS_FD) };
    // The command must not inherit it: the supervisor reads until we close it.
    let _ = rustix::io::fcntl_setfd(&status, rustix::io::FdFlags::CLOEXEC);
    let plan = std::env::var(PLAN_ENV).unwrap_or_default();
    // SAFETY: the init is single-threaded here; nothing reads env concurrently.
    unsafe { std::env::remove_var(PLAN_ENV) };
    let result = serde_json::from_str::<InitPlan>(&plan)
        .map_err(InitError::Plan)
        .and_then(|plan| setup(&plan).map(|()| plan))
        .and_then(|plan| {
            if plan.command.is_empty() {
                Ok(None)
            } else {
                spawn(&plan).map(Some)
            }
        });
    match result {
        Ok(pid) => {
            if status.write_all(b"ok\n").is_err() {
                // The supervisor died before the death signal was armed:
                // nobody owns this sandbox, so end it.
                return 1;
            }
            drop(status);
            match pid {
                Some(pid) => supervise(pid),
                None => keep_alive(),
            }
        }
        Err(e) => {
            let code = match e {
                InitError::NotFound(_) => 127,
                InitError::Exec(..) => 126,
                _ => 1,
            };
            let _ = writeln!(status, "err {code} {}", chain(&e));
            code
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s.replace('\n', " ")
}

/// Signals the init passes on to the command.
const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

fn signal_set(with_chld: bool) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        if with_chld {
            libc::sigaddset(&mut set, libc::SIGCHLD);
        }
        set
    }
}

/// Sets every signal's action back to the default and unblocks them all. A
/// command in a sandbox starts like one started by a fresh init: a signal
/// the caller ignored (`nohup` ignores SIGHUP) or blocked (as `msb exec`
/// does, to forward them) is neither there, and a shell can trap it. Only
/// system calls, so it may run between fork and exec.
pub(crate) fn reset_signals() {
    /// The kernel's `struct sigaction` (x86_64, aarch64).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // The raw call, because the C library refuses the real-time signals it
    // reserves for itself, which may be inherited as ignored too.
    for signo in 1..=64 {
        if signo != libc::SIGKILL && signo != libc::SIGSTOP {
            // SAFETY: a valid struct of the size passed along; the default
            // action installs no handler.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signo,
                    &default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
        }
    }
    // SAFETY: sigset_t is plain data that sigemptyset initializes; setting
    // the mask touches nothing else.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Blocks the forwarded signals and SIGCHLD in the calling thread (and the
/// threads it starts later), so they queue for [`wait_signal`] instead of
/// running their default action.
pub(crate) fn block_signals() {
    let set = signal_set(true);
    // SAFETY: `set` is initialized; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// A signal taken from the queue by [`wait_signal`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub signo: i32,
    /// A process sent it, as opposed to the kernel (e.g. a terminal's ^C,
    /// which the whole foreground process group, the command included,
    /// already got).
    pub sent: bool,
    /// The value it carries when sent with sigqueue(3).
    pub value: Option<usize>,
}

impl Received {
    /// Sends the same signal, with the same value, to `pid`.
    pub fn resend(&self, pid: i32) -> io::Result<()> {
        let rc = match self.value {
            Some(v) => queue_signal(pid, self.signo, v),
            // SAFETY: a plain kill(2); the caller owns `pid` (its child).
            None => unsafe { libc::kill(pid, self.signo) },
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// sigqueue(3): `signo` to `pid`, carrying `value`.
pub(crate) fn queue_signal(pid: i32, signo: i32, value: usize) -> i32 {
    let value = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    // SAFETY: a plain system call; the pointer member is only a value here.
    unsafe { libc::sigqueue(pid, signo, value) }
}

/// Waits up to `timeout_ms` for a blocked signal.
pub(crate) fn wait_signal(timeout_ms: i64) -> Option<Received> {
    let set = signal_set(true);
    let ts = libc::timespec {
        tv_sec: timeout_ms / 1000,
        tv_nsec: (timeout_ms % 1000) * 1_000_000,
    };
    // SAFETY: siginfo_t is plain data filled by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: all pointers refer to live, initialized locals.
    let signo = unsafe { libc::sigtimedwait(&set, &mut info, &ts) };
    (signo > 0).then(|| Received {
        signo,
        sent: info.si_code <= 0,
        // SAFETY: the kernel filled the value member for SI_QUEUE.
        value: (info.si_code == libc::SI_QUEUE)
            .then(|| unsafe { info.si_value() }.sival_ptr as usize),
    })
}

/// Forwards signals to `pid` and reaps children until `pid` exits.
fn supervise(pid: i32) -> i32 {
    loop {
        // Reap everything: orphans in the sandbox are re-parented to us.
        loop {
            let mut st = 0;
            // SAFETY: plain waitpid on our own children.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
            if r == pid {
                return exit_code(st);
            }
        }
        // The command has a session of its own, so a terminal's signals
        // (which reached this process, not the command) are passed on too.
        if let Some(r) = wait_signal(1000)
            && r.signo != libc::SIGCHLD
        {
            let _ = r.resend(pid);
        }
    }
}

/// Wait mode, for a plan without a command (a named sandbox between
/// `exec`s): reaps whatever joined processes leave behind until a process
/// (the supervisor stopping the sandbox) sends SIGTERM, SIGINT, SIGHUP or
/// SIGQUIT; other signals are ignored. Then it stops the sandbox's
/// processes gracefully (within the grace period in milliseconds that the
/// signal carries, see [`crate::request_stop`], else
/// [`crate::DEFAULT_STOP_GRACE`]) and returns 0. A dead supervisor ends it at once
/// through `PR_SET_PDEATHSIG`. Needs nothing from the sandbox's root
/// filesystem.
fn keep_alive() -> i32 {
    loop {
        reap_all();
        if let Some(grace) = wait_signal(1000).and_then(stop_request) {
            drain(grace);
            return 0;
        }
    }
}

/// The grace period a stop request asks for, if `r` is one.
fn stop_request(r: Received) -> Option<Duration> {
    const STOP: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
    (r.sent && STOP.contains(&r.signo)).then(|| {
        r.value.map_or(crate::DEFAULT_STOP_GRACE, |ms| {
            Duration::from_millis(ms as u64)
        })
    })
}

fn reap_all() {
    // SAFETY: plain waitpid on our own children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Sends SIGTERM to every other process of the sandbox and waits until
/// none is left or `grace` is over, so commands can save their work.
fn drain(grace: Duration) {
    // SAFETY: kill(-1) from the init of a pid namespace reaches every other
    // process of that namespace and nothing outside it; it fails (ESRCH)
    // when there is none.
    if unsafe { libc::kill(-1, libc::SIGTERM) } != 0 {
        return;
    }
    // No deadline for a grace period too long to add.
    let mut deadline = Instant::now().checked_add(grace);
    while deadline.is_none_or(|d| Instant::now() < d) {
        reap_all();
        // SAFETY: signal 0 only asks whether any process is left.
        if unsafe { libc::kill(-1, 0) } != 0 {
            return;
        }
        // Wakes early on SIGCHLD; joined commands are not our children, so
        // their exits are polled. A new stop request may shorten the wait.
        if let Some(grace) = wait_signal(10).and_then(stop_request)
            && let Some(sooner) = Instant::now().checked_add(grace)
        {
            deadline = Some(deadline.map_or(sooner, |d| d.min(sooner)));
        }
    }
}

/// A wait status as a shell reports it.
pub(crate) fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// Host paths never bound into a shared host root: each gets a fresh
/// instance. `/run` holds the host's service sockets, which a read-only
/// mount does not protect (connecting to a socket is not a write).
const OWN: [&str; 5] = ["proc", "dev", "sys", "tmp", "run"];
/// Device nodes bound from the host into the minimal /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// What a fresh root takes from the host, read-only: programs and
/// libraries (directories, or the symlinks of a merged-/usr layout).
pub(crate) const HOST_PROGRAMS: [&str; 7] =
    ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// What a fresh root copies from the host's /etc: the loader's cache and
/// configuration, the alternatives symlinks programs resolve through, time
/// zone, release and shell start-up files. Nothing secret, nothing that
/// names the host's users.
pub(crate) const ETC_COPIED: [&str; 14] = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "lsb-release",
    "profile",
    "bash.bashrc",
    "inputrc",
    "protocols",
    "services",
];
/// Empty directories of a fresh root: (path, mode).
pub(crate) const FRESH_DIRS: [(&str, u32); 9] = [
    ("root", 0o700),
    ("home", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("srv", 0o755),
    ("opt", 0o755),
    ("mnt", 0o755),
    ("media", 0o755),
    ("etc", 0o755),
];
/// `/proc` entries that reach kernel-wide state: read-only.
const PROC_READ_ONLY: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// `/proc` and `/sys` entries that disclose kernel or host state: hidden
/// behind an empty file or directory.
const MASKED: [&str; 12] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/key-users",
    "proc/latency_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/timer_list",
    "proc/timer_stats",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, InitError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    open_tree(CWD, path, flags).map_err(sys(format!("bind {}", path.display())))
}

fn new_fs(
    fstype: &str,
    options: &[(&str, &str)],
    flags: &[&str],
    source: Option<&Path>,
    a: MountAttrFlags,
) -> Result<OwnedFd, InitError> {
    let what = || format!("mount {fstype}");
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(sys(what()))?;
    if let Some(src) = source {
        fsconfig_set_string(&fs, "source", src).map_err(sys(what()))?;
    }
    for (k, v) in options {
        fsconfig_set_string(&fs, *k, *v).map_err(sys(what()))?;
    }
    for f in flags {
        fsconfig_set_flag(&fs, *f).map_err(sys(what()))?;
    }
    fsconfig_create(&fs).map_err(sys(match source {
        Some(s) => format!("mount {fstype} from {}", s.display()),
        None => what(),
    }))?;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, a).map_err(sys(what()))
}

fn tmpfs(size_mib: Option<u32>, mode: &str, a: MountAttrFlags) -> Result<OwnedFd, InitError> {
    let size = size_mib.map(|s| format!("{s}m"));
    let mut opts = vec![("mode", mode)];
    if let Some(s) = &size {
        opts.push(("size", s.as_str()));
    }
    new_fs("tmpfs", &opts, &[], None, a)
}

/// Attaches the detached mount `src` at `path` (relative to `root`),
/// resolving the path inside the root and creating the mount point.
fn attach(root: &OwnedFd, path: &str, src: &OwnedFd, dir: bool) -> Result<(), InitError> {
    let target = mount_point(root, path, dir)?;
    move_mount(
        src,
        "",
        &target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(sys(format!("mount at /{path}")))
}

/// Opens `path` under `root` (symlinks resolved as if `root` were `/`),
/// creating missing directories and, for a file mount, an empty file.
fn mount_point(root: &OwnedFd, path: &str, dir: bool) -> Result<OwnedFd, InitError> {
    let open = |p: &str| {
        rustix::fs::openat2(
            root,
            p,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
    };
    match open(path) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(sys(format!("open mount point /{path}"))(e)),
    }
    let (parent, leaf) = match path.rsplit_once('/') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let parent_fd = match parent {
        Some(p) => {
            let fd = mount_point(root, p, true)?;
            // O_PATH descriptors cannot create entries; reopen as a directory.
            rustix::fs::openat(
                &fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("open /{p}")))?
        }
        None => rustix::fs::openat(root, ".", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys("open the sandbox root"))?,
    };
    let created = if dir {
        rustix::fs::mkdirat(&parent_fd, leaf, Mode::from_raw_mode(0o755))
    } else {
        rustix::fs::openat(
            &parent_fd,
            leaf,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    };
    match created {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(Errno::ROFS) => {
            return Err(InitError::ReadOnlyParent {
                path: format!("/{path}"),
                parent: format!("/{}", parent.unwrap_or("")),
            });
        }
        Err(e) => return Err(sys(format!("create mount point /{path}"))(e)),
    }
    open(path).map_err(sys(format!("open mount point /{path}")))
}

/// A source opened before anything is attached.
enum Prepared {
    Tree {
        path: String,
        fd: OwnedFd,
        dir: bool,
    },
    Link {
        path: String,
        target: std::path::PathBuf,
    },
}

/// Attaches a prepared source under `root`.
fn place(root: &OwnedFd, p: &Prepared) -> Result<(), InitError> {
    match p {
        Prepared::Tree { path, fd, dir } => attach(root, path, fd, *dir),
        Prepared::Link { path, target } => rustix::fs::symlinkat(target, root, path.as_str())
            .map_err(sys(format!("create /{path}"))),
    }
}

/// A read-only host directory a new mount point must be made in (say
/// `/usr/local/share` for `-v DIR:/usr/local/share/x` in a fresh root): a
/// small tmpfs covers it, holding the directory's own entries (bound
/// read-only one by one, symlinks copied) and room for the mount points;
/// it turns read-only once every mount is attached. Nothing is created on
/// the host. Entries other than directories, files and symlinks (or with
/// names that are not UTF-8) are left out.
struct Skeleton {
    /// The directory, relative to the root.
    path: String,
    tmpfs: OwnedFd,
    entries: Vec<Prepared>,
}

/// The skeletons the user mounts need: for each mount whose mount point is
/// missing in a read-only host tree of `top` (and not inside another user
/// mount, where it is made), the deepest host directory on its way that
/// exists. Parents come before children.
fn skeletons(top: &[Prepared], mounts: &[InitMount]) -> Result<Vec<Skeleton>, InitError> {
    let mut dirs: Vec<String> = Vec::new();
    for m in mounts {
        let rel = m.guest.relative();
        let in_tree = top.iter().any(|p| match p {
            Prepared::Tree {
                path, dir: true, ..
            } => rel.starts_with(path.as_str()) && rel.as_bytes().get(path.len()) == Some(&b'/'),
            _ => false,
        });
        let in_mount = mounts
            .iter()
            .any(|n| n.guest != m.guest && m.guest.is_within(&n.guest));
        if !in_tree || in_mount {
            continue;
        }
        // The deepest existing directory, reached through directories
        // only (a symlink or file in the way keeps the ordinary error).
        let mut deepest = None;
        let mut prefix = String::new();
        for part in rel.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match std::fs::symlink_metadata(Path::new("/").join(&prefix)) {
                Ok(meta) if meta.is_dir() => deepest = Some(prefix.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                _ => {
                    deepest = None;
                    break;
                }
            }
        }
        if let Some(dir) = deepest
            && dir != rel
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    dirs.sort_by_key(|d| d.matches('/').count());
    dirs.into_iter().map(skeleton).collect()
}

/// Opens what the skeleton of the host directory `/path` holds.
fn skeleton(path: String) -> Result<Skeleton, InitError> {
    use std::os::unix::fs::PermissionsExt;
    let host = Path::new("/").join(&path);
    let meta = std::fs::metadata(&host).map_err(read_dir_err(&host))?;
    let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
    let tmpfs = tmpfs(
        Some(1),
        &mode,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&host).map_err(read_dir_err(&host))? {
        let entry = entry.map_err(read_dir_err(&host))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rel = format!("{path}/{name}");
        let ft = entry.file_type().map_err(read_dir_err(&entry.path()))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(read_dir_err(&entry.path()))?;
            entries.push(Prepared::Link { path: rel, target });
        } else if ft.is_dir() || ft.is_file() {
            let fd = clone_tree(&entry.path(), true)?;
            set_attrs(
                &fd,
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV,
                true,
            )
            .map_err(sys(format!("make {} read-only", entry.path().display())))?;
            entries.push(Prepared::Tree {
                path: rel,
                fd,
                dir: ft.is_dir(),
            });
        }
    }
    Ok(Skeleton {
        path,
        tmpfs,
        entries,
    })
}

fn read_dir_err(path: &Path) -> impl Fn(io::Error) -> InitError + '_ {
    move |e| InitError::Sys {
        what: format!("read {}", path.display()),
        source: e,
    }
}

/// Opens the top-level host entries a root built on a tmpfs takes over:
/// read-only trees and symlinks as they are.
fn host_entries(keep: impl Fn(&str) -> bool) -> Result<Vec<Prepared>, InitError> {
    let mut top = Vec::new();
    let slash = Path::new("/");
    for entry in std::fs::read_dir(slash).map_err(read_dir_err(slash))? {
        let entry = entry.map_err(read_dir_err(slash))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type().map_err(read_dir_err(&path))?;
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(read_dir_err(&path))?;
            top.push(Prepared::Link { path: name, target });
        } else if ft.is_dir() || ft.is_file() {
            let fd = clone_tree(&path, true)?;
            set_attrs(
                &fd,
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV,
                true,
            )
            .map_err(sys(format!("make {} read-only", path.display())))?;
            top.push(Prepared::Tree {
                path: name,
                fd,
                dir: ft.is_dir(),
            });
        }
    }
    Ok(top)
}

/// Writes `data` as the new file `path` (relative to `dir`).
fn write_file(dir: &OwnedFd, path: &str, data: &[u8], mode: u32) -> Result<(), InitError> {
    let fd = rustix::fs::openat(
        dir,
        path,
        OFlags::CREATE | OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(sys(format!("create /{path}")))?;
    rustix::io::write(&fd, data)
        .map(drop)
        .map_err(sys(format!("write /{path}")))
}

/// Takes the host's `/etc/<name>` into `/etc` of the root `dir`: a file or
/// symlink is copied, a directory (of symlinks or small files, such as the
/// alternatives) is returned to be bound read-only, which is one call where
/// a copy would be hundreds.
fn copy_etc(dir: &OwnedFd, name: &str) -> Result<Option<Prepared>, InitError> {
    let host = Path::new("/etc").join(name);
    let Ok(meta) = std::fs::symlink_metadata(&host) else {
        return Ok(None);
    };
    let rel = format!("etc/{name}");
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&host).map_err(read_dir_err(&host))?;
        rustix::fs::symlinkat(&target, dir, rel.as_str()).map_err(sys(format!("create /{rel}")))?;
    } else if ft.is_file() && meta.len() <= 16 << 20 {
        let data = std::fs::read(&host).map_err(read_dir_err(&host))?;
        write_file(dir, &rel, &data, 0o644)?;
    } else if ft.is_dir() {
        let fd = clone_tree(&host, true)?;
        set_attrs(
            &fd,
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV,
            true,
        )
        .map_err(sys(format!("make {} read-only", host.display())))?;
        return Ok(Some(Prepared::Tree {
            path: rel,
            fd,
            dir: true,
        }));
    }
    Ok(None)
}

/// The files of a fresh root's `/etc` that msb writes itself: (path
/// relative to the root, contents).
pub(crate) fn generated_etc(hostname: &str) -> [(&'static str, Vec<u8>); 6] {
    let passwd = "root:x:0:0:root:/root:/bin/sh\n\
                  nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    let group = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    let nsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
                    networks: files\nprotocols: files\nservices: files\n";
    [
        ("etc/passwd", passwd.into()),
        ("etc/group", group.into()),
        ("etc/hosts", hosts.into_bytes()),
        ("etc/hostname", format!("{hostname}\n").into_bytes()),
        ("etc/nsswitch.conf", nsswitch.into()),
        // The sandbox has loopback only: no name server to ask.
        ("etc/resolv.conf", Vec::new()),
    ]
}

/// Fills a fresh root: empty directories and an `/etc` of its own. Returns
/// the host directories of `/etc` to bind into it.
fn fill_fresh_root(root: &OwnedFd, hostname: &str) -> Result<Vec<Prepared>, InitError> {
    for (dir, mode) in FRESH_DIRS {
        rustix::fs::mkdirat(root, dir, Mode::from_raw_mode(mode))
            .map_err(sys(format!("create /{dir}")))?;
        // The umask must not narrow /var/tmp's sticky, world-writable mode.
        rustix::fs::chmodat(root, dir, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(sys(format!("create /{dir}")))?;
    }
    for (name, data) in generated_etc(hostname) {
        write_file(root, name, &data, 0o644)?;
    }
    let mut binds = Vec::new();
    for name in ETC_COPIED {
        binds.extend(copy_etc(root, name)?);
    }
    Ok(binds)
}

/// Makes `/proc`'s kernel-wide entries read-only and hides the ones that
/// disclose kernel or host state, as container runtimes do. Inside a user
/// namespace the kernel refuses most of these writes already; this is the
/// second wall.
fn harden_proc_and_sys(root: &OwnedFd) -> Result<(), InitError> {
    for entry in PROC_READ_ONLY {
        let path = format!("proc/{entry}");
        let Ok(fd) = open_in(root, &path) else {
            continue;
        };
        let tree = open_tree(
            &fd,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
        .map_err(sys(format!("bind /{path}")))?;
        set_attrs(&tree, MountAttrFlags::MOUNT_ATTR_RDONLY, true)
            .map_err(sys(format!("make /{path} read-only")))?;
        let is_dir = rustix::fs::fstat(&fd)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .unwrap_or(true);
        attach(root, &path, &tree, is_dir)?;
    }
    for path in MASKED {
        let Ok(fd) = open_in(root, path) else {
            continue;
        };
        let is_dir = rustix::fs::fstat(&fd)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .map_err(sys(format!("stat /{path}")))?;
        let cover = if is_dir {
            tmpfs(
                Some(1),
                "0555",
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC,
            )?
        } else {
            let null = open_in(root, "dev/null").map_err(sys("open /dev/null"))?;
            let cover = open_tree(
                &null,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(sys(format!("mask /{path}")))?;
            set_attrs(&cover, MountAttrFlags::MOUNT_ATTR_RDONLY, false)
                .map_err(sys(format!("mask /{path}")))?;
            cover
        };
        attach(root, path, &cover, is_dir)?;
    }
    Ok(())
}

/// A writable overlay of the detached tree `lower` whose changes live in a
/// private tmpfs: the sandbox may change its root as it likes, and none of
/// it reaches the host's directory. Overlay takes its layers by path, from
/// this mount namespace, so they are attached first, on a staging tmpfs
/// stacked on `/`: call it only once every host source is open.
fn private_layer(lower: &OwnedFd, size: Option<u32>) -> Result<OwnedFd, InitError> {
    let stage = tmpfs(size, "0755", MountAttrFlags::empty())?;
    for dir in ["lower", "upper", "work"] {
        rustix::fs::mkdirat(&stage, dir, Mode::from_raw_mode(0o755))
            .map_err(sys("create the root's private layer"))?;
    }
    move_mount(
        &stage,
        "",
        CWD,
        "/",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(sys("attach the root's private layer"))?;
    move_mount(
        lower,
        "",
        &stage,
        "lower",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(sys("attach the root filesystem"))?;
    // Path lookup does not enter a mount stacked on `/`: reach it through
    // its descriptor.
    let at = |dir: &str| format!("/proc/self/fd/{}/{dir}", stage.as_raw_fd());
    let overlay = new_fs(
        "overlay",
        &[
            ("lowerdir", &at("lower")),
            ("upperdir", &at("upper")),
            ("workdir", &at("work")),
        ],
        &["userxattr"],
        None,
        MountAttrFlags::empty(),
    )?;
    // The overlay holds private copies of its layers: the stage may go, so
    // the root is later stacked on the host's as every other kind is.
    rustix::mount::unmount(at(""), UnmountFlags::DETACH)
        .map_err(sys("detach the root's private layer"))?;
    Ok(overlay)
}

/// Opens `path` beneath `root` (as if `root` were `/`) as an `O_PATH`
/// descriptor.
fn open_in(root: &OwnedFd, path: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
}

fn setup(plan: &InitPlan) -> Result<(), InitError> {
    // Nothing done here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(sys("make the mount tree private"))?;
    rustix::system::sethostname(plan.hostname.as_bytes()).map_err(sys("set the host name"))?;
    loopback_up()?;

    let size = Some(plan.resources.memory_mib);
    let nosuid_nodev = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;

    // 1. Open every source.
    let mut lower = None;
    let (root, top) = match &plan.root {
        InitRoot::Dir { path, fd } => {
            lower = Some(match fd {
                // SAFETY: the backend placed this descriptor, a detached
                // mount made by the supervisor, for us alone.
                Some(fd) => unsafe { OwnedFd::from_raw_fd(*fd) },
                None => clone_tree(path, false)?,
            });
            // Made below, once every host source is open.
            (None, Vec::new())
        }
        InitRoot::Host => (
            Some(tmpfs(Some(1), "0755", MountAttrFlags::empty())?),
            host_entries(|name| !OWN.contains(&name))?,
        ),
        InitRoot::Fresh => {
            let root = tmpfs(size, "0755", nosuid_nodev)?;
            let etc = fill_fresh_root(&root, &plan.hostname)?;
            let mut top = host_entries(|name| HOST_PROGRAMS.contains(&name))?;
            top.extend(etc);
            (Some(root), top)
        }
    };
    let proc_fd = new_fs(
        "proc",
        &[],
        &[],
        None,
        nosuid_nodev | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    let sys_fd = new_fs(
        "sysfs",
        &[],
        &[],
        None,
        nosuid_nodev | MountAttrFlags::MOUNT_ATTR_NOEXEC | MountAttrFlags::MOUNT_ATTR_RDONLY,
    )?;
    let dev_fd = tmpfs(
        Some(1),
        "0755",
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    let mut devices = Vec::new();
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if host.exists() {
            let fd = clone_tree(&host, false)?;
            // Writes to the device still work; its host inode stays as it is.
            set_attrs(
                &fd,
                MountAttrFlags::MOUNT_ATTR_RDONLY
                    | MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC,
                false,
            )
            .map_err(sys(format!("make {} read-only", host.display())))?;
            devices.push((d, fd));
        }
    }
    let pts_fd = new_fs(
        "devpts",
        &[("ptmxmode", "0666"), ("mode", "0620")],
        &["newinstance"],
        None,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    let shm_fd = tmpfs(size, "1777", nosuid_nodev)?;
    let tmp_fd = tmpfs(size, "1777", nosuid_nodev)?;
    let run_fd = tmpfs(
        size,
        "0755",
        nosuid_nodev | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    let mut user = Vec::new();
    let mut fuse = Vec::new();
    for m in &plan.mounts {
        user.push((m, open_user_mount(m, plan.resources.memory_mib, &mut fuse)?));
    }
    // Served before anything is attached: attaching beneath a FUSE mount,
    // or entering a working directory on it, asks its server.
    if let Some(channel) = plan.fuse_channel {
        hand_over_fuse(channel, fuse)?;
    }
    let skeletons = skeletons(&top, &plan.mounts)?;
    let root = match (root, lower) {
        (Some(root), _) => root,
        (None, Some(lower)) => private_layer(&lower, size)?,
        (None, None) => unreachable!("every root kind gives a root or a lower layer"),
    };

    // 2. Attach them under the new root, then the root over the old one.
    move_mount(&root, "", CWD, "/", MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(sys("attach the sandbox root"))?;
    for p in &top {
        place(&root, p)?;
    }
    for s in &skeletons {
        attach(&root, &s.path, &s.tmpfs, true)?;
        for p in &s.entries {
            place(&root, p)?;
        }
    }
    attach(&root, "proc", &proc_fd, true)?;
    attach(&root, "sys", &sys_fd, true)?;
    attach(&root, "dev", &dev_fd, true)?;
    for (d, fd) in &devices {
        attach(&root, &format!("dev/{d}"), fd, false)?;
    }
    attach(&root, "dev/pts", &pts_fd, true)?;
    attach(&root, "dev/shm", &shm_fd, true)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        match rustix::fs::symlinkat(target, &dev_fd, link) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(sys(format!("create /dev/{link}"))(e)),
        }
    }
    harden_proc_and_sys(&root)?;
    attach(&root, "tmp", &tmp_fd, true)?;
    if !matches!(plan.root, InitRoot::Dir { .. }) {
        attach(&root, "run", &run_fd, true)?;
    }
    for (m, fd) in &user {
        let dir = !matches!(
            m.source,
            InitSource::Detached { dir: false, .. } | InitSource::Bind { dir: false, .. }
        );
        attach(&root, m.guest.relative(), fd, dir)?;
    }
    for s in &skeletons {
        set_attrs(&s.tmpfs, MountAttrFlags::MOUNT_ATTR_RDONLY, false)
            .map_err(sys(format!("make /{} read-only", s.path)))?;
    }
    if plan.root == InitRoot::Host {
        set_attrs(&root, MountAttrFlags::MOUNT_ATTR_RDONLY, false)
            .map_err(sys("make the root read-only"))?;
    }

    rustix::process::fchdir(&root).map_err(sys("enter the sandbox root"))?;
    rustix::process::pivot_root(".", ".").map_err(sys("pivot into the sandbox root"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(sys("detach the host root"))?;
    rustix::process::chdir("/").map_err(sys("enter /"))?;
    // A sandbox kept up for later commands stays at `/`: each joined
    // command enters its own working directory.
    if !plan.command.is_empty() {
        rustix::process::chdir(plan.workdir.as_str())
            .map_err(sys(format!("enter the working directory {}", plan.workdir)))?;
    }
    Ok(())
}

/// Opens the source of a user mount. A FUSE mount's device goes to
/// `fuse`, with the share it serves, for the supervisor.
fn open_user_mount(
    m: &InitMount,
    tmpfs_mib: u32,
    fuse: &mut Vec<(usize, OwnedFd)>,
) -> Result<OwnedFd, InitError> {
    let a = attrs(m.flags);
    match &m.source {
        InitSource::Fuse { index } => {
            // Opened here, in the sandbox's user namespace: the kernel
            // mounts FUSE only over a device opened in the namespace the
            // mount belongs to.
            let dev = rustix::fs::open(
                crate::prepare::FUSE_DEVICE,
                OFlags::RDWR | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("open /dev/fuse for {}", m.guest)))?;
            // Owned by the namespace's root (user_id=0), always nosuid and
            // nodev, then the mount's own flags.
            let mount = msb_fsserver::mount_detached(&dev).map_err(|source| InitError::Fuse {
                guest: m.guest.to_string(),
                source,
            })?;
            set_attrs(&mount, a, false).map_err(sys(format!("set flags on {}", m.guest)))?;
            fuse.push((*index, dev));
            Ok(mount)
        }
        InitSource::Bind { path, .. } => {
            let fd = clone_tree(path, true)?;
            set_attrs(&fd, a, true).map_err(sys(format!("set flags on {}", m.guest)))?;
            Ok(fd)
        }
        InitSource::Tmpfs { size_mib } => tmpfs(Some(size_mib.unwrap_or(tmpfs_mib)), "1777", a),
        // SAFETY: the backend placed this descriptor, a detached mount made
        // by the supervisor with its flags set, for us alone.
        InitSource::Detached { fd, .. } => Ok(unsafe { OwnedFd::from_raw_fd(*fd) }),
        InitSource::Share { .. } | InitSource::Image { .. } => {
            Err(InitError::NotForNamespace(m.guest.to_string()))
        }
    }
}

/// Sends the supervisor the `/dev/fuse` descriptors of the FUSE mounts, in
/// one message on `channel` (their share indexes as data), and closes it.
fn hand_over_fuse(channel: RawFd, fuse: Vec<(usize, OwnedFd)>) -> Result<(), InitError> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    // SAFETY: the backend placed this socket for us alone; it is closed
    // when this descriptor drops.
    let channel = unsafe { OwnedFd::from_raw_fd(channel) };
    if fuse.is_empty() {
        // Closing it says so.
        return Ok(());
    }
    let indexes: Vec<u8> = fuse
        .iter()
        .flat_map(|(i, _)| (*i as u32).to_le_bytes())
        .collect();
    let fds: Vec<_> = fuse.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &channel,
        &[io::IoSlice::new(&indexes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(sys("hand the FUSE devices to the supervisor"))?;
    Ok(())
}

/// Brings up `lo` in the new network namespace.
fn loopback_up() -> Result<(), InitError> {
    // SAFETY: a plain socket(2) call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(InitError::Sys {
            what: "bring up lo".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `s` is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; the name is NUL-terminated below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    let ok = unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == 0
        }
    };
    if !ok {
        return Err(InitError::Sys {
            what: "bring up lo".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Starts the command as pid 2 with the plan's environment and privileges.
fn spawn(plan: &InitPlan) -> Result<i32, InitError> {
    let (program, args) = plan
        .command
        .split_first()
        .ok_or_else(|| InitError::NotFound(String::new()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)));
    let keep = caps::keep_set(plan.security);
    let last_cap = caps::last_cap();
    let restricted = plan.security == Security::Restricted;
    let filter = crate::seccomp::filter(plan.security).map_err(InitError::Seccomp)?;
    let preserved = plan.preserved.clone();
    // SAFETY: the closure runs in the child between fork and exec; it only
    // makes async-signal-safe system calls (dup2, close_range, setsid,
    // sigaction, sigprocmask, seccomp, prctl, capset).
    unsafe {
        cmd.pre_exec(move || {
            // Each source lies above every earlier target, so moving them
            // in order clobbers none still to be moved.
            for (i, fd) in preserved.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::syscall(
                libc::SYS_close_range,
                3 + preserved.len() as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            // A session of its own: no controlling terminal to inject into.
            rustix::process::setsid()?;
            reset_signals();
            // While the capabilities to install it without no_new_privs last.
            filter.apply()?;
            caps::apply(keep, last_cap, restricted)
        });
    }
    match cmd.spawn() {
        Ok(child) => Ok(child.id() as i32),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InitError::NotFound(program.clone())),
        Err(e) => Err(InitError::Exec(program.clone(), e)),
    }
}
