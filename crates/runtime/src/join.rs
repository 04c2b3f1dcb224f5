//! Joining a running sandbox, like nsenter: a new process enters the
//! namespaces of the sandbox's init and gets the workload's privileges, so
//! `exec` cannot do what the sandbox's own command could not.
//!
//! The joining process is visible to the sandbox from its fork on, while it
//! still holds this process's memory (the caller's environment) and
//! descriptors. Until it becomes the sandbox's root it keeps host root's
//! credentials, which sandbox processes cannot inspect; it turns itself
//! non-dumpable before that and marks every descriptor it was not asked to
//! pass close-on-exec, so nothing of the host is reachable through
//! `/proc/PID` at any point.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::caps;
use crate::cgroup::CgroupEntry;
use crate::plan::Security;

/// Namespaces a joining process enters in its child, after the pid one;
/// the user namespace first, which gives the rights to enter the others.
const NAMESPACES: [&str; 6] = ["user", "ipc", "uts", "net", "cgroup", "mnt"];

/// Errors of joining a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A namespace of the init cannot be opened (is it gone?).
    #[error("cannot open namespace {ns} of sandbox init {pid}")]
    Open {
        /// The namespace (`pid`, `mnt`, ...).
        ns: &'static str,
        /// The init's host pid.
        pid: i32,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// The calling thread cannot enter the init's pid namespace.
    #[error("cannot enter the pid namespace of sandbox init {pid}")]
    PidNamespace {
        /// The init's host pid.
        pid: i32,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// The sandbox's cgroup cannot be opened.
    #[error("cannot open the cgroup of sandbox init {pid}")]
    Cgroup {
        /// The init's host pid.
        pid: i32,
        /// The reason.
        #[source]
        source: crate::cgroup::CgroupError,
    },
    /// The system call filter cannot be built.
    #[error("cannot build the system call filter")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    /// The working directory contains a NUL byte.
    #[error("working directory {0:?} contains a NUL byte")]
    Workdir(String),
    /// The namespace descriptors cannot be duplicated for the command.
    #[error("cannot duplicate the sandbox's namespace descriptors")]
    Dup(#[source] io::Error),
    /// The calling thread cannot return to its own pid namespace.
    #[error("cannot return to this process's own pid namespace")]
    OwnNamespace(#[source] io::Error),
    /// The command could not be started in the sandbox.
    #[error("cannot run {program} in the sandbox")]
    Spawn {
        /// The program.
        program: String,
        /// The system's reason (not found, permission denied, ...).
        #[source]
        source: io::Error,
    },
}

impl JoinError {
    /// The exit status a shell reports for this failure: 127 when the
    /// command does not exist, 126 when it cannot be executed, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            JoinError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            JoinError::Spawn { .. } => 126,
            _ => 1,
        }
    }
}

/// The namespaces of a running sandbox, opened from its init's host pid.
/// Holding the descriptors pins the namespaces: once opened, a recycled
/// pid cannot redirect [`SandboxNamespaces::spawn`] elsewhere.
#[derive(Debug)]
pub struct SandboxNamespaces {
    init: i32,
    pid: File,
    others: Vec<File>,
    cgroup: Option<Arc<CgroupEntry>>,
}

impl SandboxNamespaces {
    /// Opens the namespaces of the sandbox whose init is host pid `init`.
    pub fn open(init: i32) -> Result<Self, JoinError> {
        let open = |ns: &'static str| {
            File::open(format!("/proc/{init}/ns/{ns}")).map_err(|source| JoinError::Open {
                ns,
                pid: init,
                source,
            })
        };
        Ok(Self {
            init,
            pid: open("pid")?,
            others: NAMESPACES
                .into_iter()
                .map(open)
                .collect::<Result<Vec<_>, _>>()?,
            cgroup: CgroupEntry::of_process(init)
                .map_err(|source| JoinError::Cgroup { pid: init, source })?
                .map(Arc::new),
        })
    }

    /// Spawns `cmd` inside the sandbox: in its pid namespace, entering its
    /// other namespaces (root included), changing to `workdir` and dropping
    /// to the `security` profile's privileges before exec. Pre-exec hooks
    /// the caller registered on `cmd` run first, still with full privileges.
    ///
    /// The calling thread enters the sandbox's pid namespace for its
    /// children only for the duration of the spawn, so any thread may call
    /// this.
    ///
    /// The command gets its standard streams, descriptors `3..3 +
    /// preserve_fds` as they are in the caller, and nothing else. It starts a
    /// session of its own (no controlling terminal) unless a pre-exec hook
    /// of the caller already made it a session leader (to give it a
    /// terminal of the sandbox's).
    pub fn spawn(
        &self,
        cmd: &mut Command,
        workdir: &str,
        security: Security,
        preserve_fds: u32,
    ) -> Result<Child, JoinError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let workdir = CString::new(workdir).map_err(|_| JoinError::Workdir(workdir.to_string()))?;
        let keep = caps::keep_set(security);
        let last_cap = caps::last_cap();
        let restricted = security == Security::Restricted;
        let drop_groups = crate::sandbox_ids().count > 1;
        let filter = crate::seccomp::filter(security).map_err(JoinError::Seccomp)?;
        let cgroup = self.cgroup.clone();
        let first_closed = 3 + preserve_fds;
        // A rootless caller has no rights over the sandbox's pid namespace
        // until it is in the sandbox's user namespace (see `relay`).
        let rootless = !drop_groups;
        let pid_ns = if rootless {
            Some(self.pid.try_clone().map_err(JoinError::Dup)?)
        } else {
            None
        };
        // The hook owns its copies, so `cmd` stays valid on its own.
        let others = self
            .others
            .iter()
            .map(File::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(JoinError::Dup)?;
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes async-signal-safe system calls (prctl, close_range, setns,
        // setres[ug]id, setgroups, chdir, setsid, sigaction, sigprocmask,
        // capset) on descriptors and data prepared above, and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                // Under the sandbox's limits, entered before its cgroup
                // namespace.
                if let Some(entry) = &cgroup {
                    entry.enter()?;
                }
                libc::syscall(
                    libc::SYS_close_range,
                    first_closed,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                let mut rest = &others[..];
                if let Some(pid_ns) = &pid_ns {
                    // NAMESPACES starts with the user namespace.
                    move_into_link_name_space(others[0].as_fd(), None)?;
                    move_into_link_name_space(pid_ns.as_fd(), Some(LinkNameSpaceType::ProcessID))?;
                    relay()?;
                    rest = &others[1..];
                }
                for ns in rest {
                    move_into_link_name_space(ns.as_fd(), None)?;
                }
                // Root of the sandbox's user namespace, without the host's
                // supplementary groups.
                if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || (drop_groups && libc::syscall(libc::SYS_setgroups, 0, 0) != 0)
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if rootless {
                    // Dies with the relay (set after the id change, which
                    // clears it).
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                rustix::process::chdir(workdir.as_c_str())?;
                match rustix::process::setsid() {
                    Ok(_) | Err(rustix::io::Errno::PERM) => {}
                    Err(e) => return Err(e.into()),
                }
                crate::init::reset_signals();
                // While the capabilities to install it without
                // no_new_privs last.
                filter.apply()?;
                caps::apply(keep, last_cap, restricted)
            });
        }
        if rootless {
            return cmd
                .spawn()
                .map_err(|source| JoinError::Spawn { program, source });
        }
        let own =
            File::open("/proc/thread-self/ns/pid_for_children").map_err(JoinError::OwnNamespace)?;
        move_into_link_name_space(self.pid.as_fd(), Some(LinkNameSpaceType::ProcessID)).map_err(
            |e| JoinError::PidNamespace {
                pid: self.init,
                source: e.into(),
            },
        )?;
        let child = cmd.spawn();
        let restored = move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::ProcessID));
        let mut child = child.map_err(|source| JoinError::Spawn { program, source })?;
        if let Err(e) = restored {
            // This thread would fork into the sandbox from now on; refuse
            // rather than leave a command the caller cannot account for.
            let _ = child.kill();
            let _ = child.wait();
            return Err(JoinError::OwnNamespace(e.into()));
        }
        Ok(child)
    }
}

/// For a rootless join, between fork and exec, once in the sandbox's user
/// and pid namespaces: forks again, as `nsenter --fork` does, since only
/// children enter a pid namespace. Returns in the new child, which goes on
/// to exec the command; this process stays outside the sandbox's pid
/// namespace, holding nothing (every descriptor closed), passes the signals
/// it gets on to the command and ends as the command does.
///
/// # Safety
/// Call only in a single-threaded child between fork and exec.
unsafe fn relay() -> io::Result<()> {
    // SAFETY: signal sets are plain data initialized by sigfillset and
    // sigemptyset; clone without CLONE_VM is a fork; the parent branch only
    // makes async-signal-safe calls and never returns.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        // Blocked before the fork: no signal is lost before the wait.
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t;
        if pid <= 0 {
            let e = io::Error::last_os_error();
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return if pid == 0 { Ok(()) } else { Err(e) };
        }
        libc::syscall(libc::SYS_close_range, 0, u32::MAX, 0);
        loop {
            let sig = libc::sigwaitinfo(&all, std::ptr::null_mut());
            if sig == libc::SIGCHLD {
                let mut st = 0;
                if libc::waitpid(pid, &mut st, libc::WNOHANG) == pid {
                    if libc::WIFSIGNALED(st) {
                        // End the same way, so the caller sees the signal.
                        let s = libc::WTERMSIG(st);
                        libc::signal(s, libc::SIG_DFL);
                        let mut one: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut one);
                        libc::sigaddset(&mut one, s);
                        libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                        libc::kill(libc::getpid(), s);
                    }
                    libc::_exit(if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        1
                    });
                }
            } else if sig > 0 {
                libc::kill(pid, sig);
            }
        }
    }
}
