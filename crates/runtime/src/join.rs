//! Joining a running sandbox, like nsenter: a new process enters the
//! namespaces of the sandbox's init and gets the workload's privileges, so
//! `exec` cannot do what the sandbox's own command could not.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::caps;
use crate::plan::Security;

/// Namespaces a joining process enters in its child, after the pid one.
const NAMESPACES: [&str; 5] = ["ipc", "uts", "net", "cgroup", "mnt"];

/// Errors of joining a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot open namespace {ns} of sandbox init {pid}")]
    Open {
        ns: &'static str,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter the pid namespace of sandbox init {pid}")]
    PidNamespace {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("working directory {0:?} contains a NUL byte")]
    Workdir(String),
}

/// Prepares `cmd` to run inside the sandbox whose init is host pid `init`:
/// moves this process's future children into the init's pid namespace,
/// and makes the child enter its other namespaces (root included), change
/// to `workdir` and drop to the `security` profile's privileges before exec.
/// Only the calling thread's children are affected by the pid namespace
/// change, so spawn `cmd` from the same thread.
pub fn join(
    cmd: &mut Command,
    init: i32,
    workdir: &str,
    security: Security,
) -> Result<(), JoinError> {
    let open = |ns: &'static str| {
        File::open(format!("/proc/{init}/ns/{ns}")).map_err(|source| JoinError::Open {
            ns,
            pid: init,
            source,
        })
    };
    let pid_ns = open("pid")?;
    let others = NAMESPACES
        .into_iter()
        .map(open)
        .collect::<Result<Vec<_>, _>>()?;
    move_into_link_name_space(pid_ns.as_fd(), Some(LinkNameSpaceType::ProcessID)).map_err(|e| {
        JoinError::PidNamespace {
            pid: init,
            source: e.into(),
        }
    })?;
    let workdir = CString::new(workdir).map_err(|_| JoinError::Workdir(workdir.to_string()))?;
    let keep = caps::keep_set(security);
    let last_cap = caps::last_cap();
    let restricted = security == Security::Restricted;
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes async-signal-safe system calls (setns, chdir, prctl, capset) on
    // descriptors and data prepared above, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for ns in &others {
                move_into_link_name_space(ns.as_fd(), None)?;
            }
            rustix::process::chdir(workdir.as_c_str())?;
            caps::apply(keep, last_cap, restricted)
        });
    }
    Ok(())
}
