//! Host id ranges leased to one running thing at a time: the process that
//! holds a lease is the only msb process on this host running as its ids.
//! A QEMU runs as its VM's own unprivileged user, so a guest that escaped
//! into one QEMU can neither signal nor trace another, nor any sandbox.
//!
//! Leases are host-wide (not per msb home: every home shares the host's
//! ids): a slot is a file under [`LEASE_DIR`] locked with `flock`, so a
//! lease ends when its holder does, however it ends. Slots sit just below
//! the ids of rootful sandboxes ([`IdMap::ROOTFUL`]), inside the range
//! systemd sets aside for containers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use msb_spec::IdMap;
use rustix::fs::FlockOperation;

/// Where the host's lease files live (root only).
pub const LEASE_DIR: &str = "/run/msb/ids";

/// How many slots there are: ranges of 65536 ids from
/// `IdMap::ROOTFUL.host_base - 65536` down.
const SLOTS: u32 = 2048;
const WIDTH: u32 = 65536;
/// The lowest id of any leased range.
pub(crate) const LEASED_LOW: u32 = IdMap::ROOTFUL.host_base - SLOTS * WIDTH;

/// Why no lease could be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot create the lease directory {0}")]
    Dir(PathBuf, #[source] io::Error),
    #[error("cannot open the lease file {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("all {SLOTS} id ranges are leased by running sandboxes")]
    Exhausted,
    #[error("cannot end the processes left running as ids {0}")]
    Sweep(u32, #[source] io::Error),
}

/// A leased range of host ids, held until dropped.
#[derive(Debug)]
pub struct IdLease {
    ids: IdMap,
    _lock: File,
}

impl IdLease {
    /// Takes a free range. Needs root. For holders whose processes cannot
    /// outlive them: a sandbox's all live in its pid namespace and die
    /// with its init.
    pub fn acquire() -> Result<IdLease, LeaseError> {
        Self::acquire_in(Path::new(LEASE_DIR), false)
    }

    /// Takes a free range as [`IdLease::acquire`], then kills anything
    /// still running as the range's first id (a process a former holder
    /// left behind, such as a child of a compromised QEMU), so the new
    /// holder is alone with its ids.
    pub fn acquire_swept() -> Result<IdLease, LeaseError> {
        Self::acquire_in(Path::new(LEASE_DIR), true)
    }

    fn acquire_in(dir: &Path, swept: bool) -> Result<IdLease, LeaseError> {
        std::fs::create_dir_all(dir).map_err(|e| LeaseError::Dir(dir.to_owned(), e))?;
        // Start where another process likely is not, to keep lock attempts
        // few when many start at once.
        let start = std::process::id() % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS + 1;
            let path = dir.join(slot.to_string());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| LeaseError::Open(path.clone(), e))?;
            if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            let ids = IdMap {
                host_base: IdMap::ROOTFUL.host_base - slot * WIDTH,
                count: WIDTH,
            };
            if swept {
                sweep(ids.root()).map_err(|e| LeaseError::Sweep(ids.root(), e))?;
            }
            return Ok(IdLease { ids, _lock: file });
        }
        Err(LeaseError::Exhausted)
    }

    /// The leased ids.
    pub fn ids(&self) -> IdMap {
        self.ids
    }
}

/// Kills every process running as `uid`: a child takes that uid and sends
/// SIGKILL to all it may signal, which are exactly those processes.
fn sweep(uid: u32) -> io::Result<()> {
    // SAFETY: the child makes only async-signal-safe system calls and ends
    // with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: raw system calls in the forked child.
        unsafe {
            let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if !ok {
                libc::_exit(1);
            }
            // ESRCH (nothing to kill) is the common case.
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "the sweeping child could not take the ids",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::sync::Mutex;

    /// A lock file descriptor is shared with any child forked while it is
    /// open (until that child execs), so these tests, which fork, take
    /// turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: leasing ids needs root");
        }
        root
    }

    #[test]
    fn leases_are_exclusive_and_end_with_their_holder() {
        if !root() {
            return;
        }
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let a = IdLease::acquire_in(dir.path(), false).unwrap();
        let b = IdLease::acquire_in(dir.path(), false).unwrap();
        assert_ne!(a.ids(), b.ids());
        for l in [&a, &b] {
            assert!(l.ids().host_base < IdMap::ROOTFUL.host_base);
            assert!(l.ids().host_base + l.ids().count <= IdMap::ROOTFUL.host_base);
        }
        let freed = a.ids();
        drop(a);
        // The same process starts at the same slot: it gets the freed one.
        let c = IdLease::acquire_in(dir.path(), false).unwrap();
        assert_eq!(c.ids(), freed);
    }

    #[test]
    fn a_process_left_running_as_the_ids_is_killed() {
        if !root() {
            return;
        }
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let ids = IdLease::acquire_in(dir.path(), true).unwrap().ids();
        let uid = ids.root();
        // A leftover of a former holder.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap();
        let lease = IdLease::acquire_in(dir.path(), true).unwrap();
        assert_eq!(lease.ids(), ids);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
