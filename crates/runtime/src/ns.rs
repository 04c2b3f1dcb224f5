//! The Linux namespace backend.
//!
//! The supervisor clones a child into a new user namespace and, owned by
//! it, new mount, pid, ipc, uts and network namespaces. The child waits
//! until the supervisor has written its id maps (the sandbox's root is an
//! unprivileged host id, see [`IdMap`]) and placed it in the sandbox's
//! cgroup, becomes root of its user namespace, enters a new cgroup namespace
//! rooted at that cgroup, and execs the init program, which reads the plan
//! from its environment (see [`crate::init`]). Nothing of the caller is
//! carried over: the child keeps only the descriptors the backend passes.
//! It has `PR_SET_PDEATHSIG` = SIGKILL, so a supervisor killed with SIGKILL
//! takes the whole sandbox with it: the pid namespace dies with its init,
//! and the mount namespace with its last process.

use std::ffi::{CString, OsString};
use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::backend::{Backend, Running, SandboxStdio};
use crate::cgroup::{CgroupEntry, CgroupError, SandboxCgroup};
use crate::init::{PASSED_FD_BASE, PLAN_ENV, STATUS_FD, exit_code, wait_signal};
use crate::plan::InitPlan;
use msb_spec::IdMap;

/// Errors of the namespace backend.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot create the sandbox process in new namespaces")]
    Clone(#[source] io::Error),
    #[error("cannot set up the sandbox's cgroup")]
    Cgroup(#[source] CgroupError),
    #[error("cannot map the sandbox's user and group ids")]
    IdMap(#[source] io::Error),
    #[error("the init program path or arguments contain a NUL byte")]
    Nul,
    #[error("cannot encode the sandbox plan")]
    Encode(#[source] serde_json::Error),
    #[error("cannot talk to the sandbox init")]
    Status(#[source] io::Error),
    #[error("{message}")]
    Setup {
        /// Exit code the sandbox ended with (1 setup, 126 cannot execute,
        /// 127 not found).
        code: i32,
        /// The init's explanation.
        message: String,
    },
    #[error("the sandbox init ended before the command started (status {0})")]
    InitDied(i32),
    #[error("cannot wait for the sandbox")]
    Wait(#[source] io::Error),
    #[error("cannot signal the sandbox")]
    Signal(#[source] io::Error),
    #[error("cannot receive the sandbox's FUSE devices")]
    FuseChannel(#[source] io::Error),
    #[error("cannot serve a FUSE mount of the sandbox")]
    Serve(#[source] msb_fsserver::FsServerError),
}

/// The program the backend execs as the sandbox's init: a binary that calls
/// [`crate::init::main`] when [`crate::init::is_init`] says so.
#[derive(Debug, Clone)]
pub struct InitProgram {
    /// Path of the binary.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
}

/// Runs sandboxes in Linux namespaces.
#[derive(Debug, Clone)]
pub struct NamespaceBackend {
    init: InitProgram,
}

impl NamespaceBackend {
    /// A backend that execs `init` inside each new sandbox, as the ids its
    /// plan gives ([`InitPlan::ids`]).
    pub fn new(init: InitProgram) -> Self {
        Self { init }
    }
}

fn cstring(b: &[u8]) -> Result<CString, NsError> {
    CString::new(b).map_err(|_| NsError::Nul)
}

/// Writes the child's id maps from the supervisor, which may map ranges it
/// does not own only as root; a rootless supervisor maps itself alone and
/// must first give up `setgroups` in the namespace.
fn write_id_maps(pid: i32, ids: IdMap) -> io::Result<()> {
    let line = ids.proc_line();
    std::fs::write(format!("/proc/{pid}/uid_map"), &line)?;
    if ids.count == 1 {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
        let gid = rustix::process::getegid().as_raw();
        return std::fs::write(
            format!("/proc/{pid}/gid_map"),
            IdMap::single(gid).proc_line(),
        );
    }
    std::fs::write(format!("/proc/{pid}/gid_map"), &line)
}

/// What the child needs between clone and exec, prepared before the clone.
struct ChildPlan<'a> {
    /// The read end of the supervisor's go-ahead.
    go: libc::c_int,
    cgroup: Option<&'a CgroupEntry>,
    /// (source, target) descriptors.
    moves: &'a [(i32, i32)],
    drop_groups: bool,
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// The kernel's `struct clone_args`, as far as `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP`, which the libc crate lacks on some targets.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks with `flags` (namespaces and the exit signal) into the cgroup v2
/// directory `group` if given and the kernel can (5.7), else plainly.
/// Returns what the clone returned (0 in the child) and whether the child
/// was born in the group.
///
/// # Safety
/// As for fork: the child may only make async-signal-safe calls.
unsafe fn fork_into(flags: u64, group: Option<&OwnedFd>) -> (libc::c_long, bool) {
    let signal = flags & 0xff;
    let namespaces = flags & !0xff;
    if let Some(group) = group {
        let args = CloneArgs {
            flags: namespaces | CLONE_INTO_CGROUP,
            exit_signal: signal,
            cgroup: group.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid clone_args of the size passed; without
        // CLONE_VM this is a fork (the caller's contract).
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw const args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        let old_kernel = pid < 0
            && matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
            );
        if !old_kernel {
            return (pid, true);
        }
    }
    // SAFETY: as above.
    (
        unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) },
        false,
    )
}

/// The child between clone and exec. Only async-signal-safe calls, on data
/// prepared before the clone (`high` has room for a copy of each move);
/// never returns.
///
/// # Safety
/// Must run in the freshly cloned child, with the pointers valid.
unsafe fn child(plan: &ChildPlan<'_>, high: &mut [i32]) -> ! {
    let ChildPlan {
        go,
        cgroup,
        moves,
        drop_groups,
        program,
        argv,
        envp,
    } = *plan;
    // SAFETY: plain system calls on values and buffers owned by this child.
    unsafe {
        let fail = || libc::_exit(1);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The supervisor writes the id maps and sets the cgroup, then says
        // go; end of file means it died (before the death signal was set,
        // perhaps: its pid is not visible from the new pid namespace).
        let mut b = 0u8;
        if libc::read(go, (&raw mut b).cast(), 1) != 1 {
            fail();
        }
        // Into the sandbox's cgroup before anything runs, and before the
        // cgroup namespace below, which is then rooted there.
        if cgroup.is_some_and(|c| c.enter().is_err()) {
            fail();
        }
        // Become the namespace's root (until now the unmapped overflow id),
        // so exec keeps the capabilities the namespace gives; shed the
        // host's supplementary groups (root's group would still count on
        // host files). Raw calls: the C library's wrappers would wait for
        // the caller's other threads, which this copy does not have.
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
            || (drop_groups && libc::syscall(libc::SYS_setgroups, 0, 0) != 0)
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
        {
            fail();
        }
        // A change of credentials clears the death signal: set it again.
        // (A supervisor dying just before is caught by the init, whose
        // status report then fails.)
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail();
        }
        // Copy every source far up first (close-on-exec copies), so placing
        // one on its target cannot clobber another source.
        for (i, (src, _)) in moves.iter().enumerate() {
            high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 1000);
        }
        let mut first_free = 0;
        for (i, (_, target)) in moves.iter().enumerate() {
            libc::dup2(high[i], *target);
            first_free = first_free.max(*target + 1);
        }
        // Whatever the caller left open (without close-on-exec too) stays
        // out of the sandbox.
        libc::syscall(libc::SYS_close_range, first_free, u32::MAX, 0);
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127);
    }
}

impl Backend for NamespaceBackend {
    type Error = NsError;
    type Running = NsSandbox;

    fn start(&self, plan: &InitPlan, mut stdio: SandboxStdio) -> Result<NsSandbox, NsError> {
        // Everything the child needs is built before the clone: between
        // clone and exec it may only make async-signal-safe calls.
        let program = cstring(self.init.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for a in &self.init.args {
            argv.push(cstring(a.as_bytes())?);
        }
        let mut plan = plan.clone();
        let preserved_base = PASSED_FD_BASE + stdio.passed.len() as i32;
        plan.preserved = (0..stdio.preserved.len() as i32)
            .map(|i| preserved_base + i)
            .collect();
        // A rootless sandbox's init mounts its served directories itself and
        // hands over the devices on a socket, placed after the preserved
        // descriptors.
        let shares = std::mem::take(&mut stdio.shares);
        let channel = if shares.is_empty() {
            None
        } else {
            let (ours, theirs) = rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|e| NsError::FuseChannel(e.into()))?;
            plan.fuse_channel = Some(preserved_base + stdio.preserved.len() as i32);
            Some((ours, theirs))
        };
        let json = serde_json::to_string(&plan).map_err(NsError::Encode)?;
        let envp = [cstring(format!("{PLAN_ENV}={json}").as_bytes())?];
        let argv_ptrs: Vec<*const libc::c_char> = argv
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs: Vec<*const libc::c_char> = envp
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| NsError::Status(e.into()))?;
        let (go_read, go_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| NsError::Status(e.into()))?;
        // Where each descriptor goes in the child: streams on 0..2, the
        // status pipe on 3, passed descriptors from 4 on.
        let mut moves: Vec<(i32, i32)> = Vec::new();
        for (target, fd) in [&stdio.stdin, &stdio.stdout, &stdio.stderr]
            .into_iter()
            .enumerate()
        {
            match fd {
                Some(fd) => moves.push((fd.as_raw_fd(), target as i32)),
                // Inherited: the caller's own stream stays where it is.
                None => moves.push((target as i32, target as i32)),
            }
        }
        moves.push((write.as_raw_fd(), STATUS_FD));
        for (i, fd) in stdio.passed.iter().chain(&stdio.preserved).enumerate() {
            moves.push((fd.as_raw_fd(), PASSED_FD_BASE + i as i32));
        }
        if let (Some((_, theirs)), Some(target)) = (&channel, plan.fuse_channel) {
            moves.push((theirs.as_raw_fd(), target));
        }
        let mut high = vec![-1; moves.len()];
        // Rootless sandboxes go without limits: an unprivileged user may
        // not make cgroups (unless a service manager delegated some).
        let cgroup = if plan.ids.count > 1 {
            // Groups of supervisors that were killed are empty: reclaim them.
            SandboxCgroup::cleanup_stale();
            Some(SandboxCgroup::create(&plan.name, &plan.resources).map_err(NsError::Cgroup)?)
        } else {
            None
        };
        let entry = cgroup
            .as_ref()
            .map(SandboxCgroup::entry)
            .transpose()
            .map_err(NsError::Cgroup)?;
        let drop_groups = plan.ids.count > 1;
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::SIGCHLD;
        // On cgroup v2 the child is born in the group: moving it in later
        // waits for an RCU grace period (see `CgroupEntry`).
        let group_dir = cgroup
            .as_ref()
            .map(SandboxCgroup::clone_target)
            .transpose()
            .map_err(NsError::Cgroup)?
            .flatten();
        // SAFETY: the clone has no CLONE_VM and behaves like fork: the child
        // gets a copy of the address space and runs `child`, which only
        // makes async-signal-safe calls on data prepared above.
        let (pid, born_in_group) = unsafe { fork_into(flags as u64, group_dir.as_ref()) };
        if pid < 0 {
            return Err(NsError::Clone(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: this is the freshly cloned child; see above.
            unsafe {
                child(
                    &ChildPlan {
                        go: go_read.as_raw_fd(),
                        cgroup: entry.as_ref().filter(|_| !born_in_group),
                        moves: &moves,
                        drop_groups,
                        program: &program,
                        argv: &argv_ptrs,
                        envp: &envp_ptrs,
                    },
                    &mut high,
                )
            }
        }
        let pid = pid as i32;
        drop(go_read);
        drop(write);
        drop(stdio);
        drop(entry);
        let channel = channel.map(|(ours, _theirs)| ours);
        let mut sandbox = NsSandbox {
            pid,
            status: None,
            servers: Servers(Vec::new()),
            _cgroup: cgroup,
        };
        write_id_maps(pid, plan.ids).map_err(NsError::IdMap)?;
        rustix::io::write(&go_write, b"g").map_err(|e| NsError::Status(e.into()))?;
        drop(go_write);
        if let Some(channel) = channel {
            sandbox.servers.0 = serve_fuse(&channel, shares)?;
        }
        // One line: `ok`, or `err CODE MESSAGE`; EOF first means the init died.
        let mut report = String::new();
        std::io::BufReader::new(std::fs::File::from(read))
            .read_line(&mut report)
            .map_err(NsError::Status)?;
        if report == "ok\n" {
            return Ok(sandbox);
        }
        let status = sandbox.wait(false)?;
        match report.strip_prefix("err ").and_then(|r| r.split_once(' ')) {
            Some((code, message)) => Err(NsError::Setup {
                code: code.parse().unwrap_or(1),
                message: message.trim_end().to_string(),
            }),
            None => Err(NsError::InitDied(status)),
        }
    }
}

/// Receives the `/dev/fuse` descriptors of a rootless sandbox's FUSE mounts
/// from its init and serves each share on its own. Nothing received (the
/// init failed first, and says why on its status pipe) serves nothing.
fn serve_fuse(
    channel: &OwnedFd,
    shares: Vec<crate::Share>,
) -> Result<Vec<msb_fsserver::Server>, NsError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut data = vec![0u8; 4 * shares.len()];
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(shares.len()))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            channel,
            &mut [io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.map_err(|e| NsError::FuseChannel(e.into()))?,
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Ok(Vec::new());
    }
    // Every mount is served, or the sandbox does not start: an unserved
    // one would hang whoever touches it.
    if got.bytes != 4 * shares.len() || fds.len() != shares.len() {
        return Err(NsError::FuseChannel(io::Error::other(format!(
            "got {} devices for {} FUSE mounts",
            fds.len(),
            shares.len()
        ))));
    }
    let mut shares: Vec<Option<crate::Share>> = shares.into_iter().map(Some).collect();
    let mut servers = Vec::new();
    for (index, fuse) in data[..got.bytes].chunks_exact(4).zip(fds) {
        let index = u32::from_le_bytes(index.try_into().expect("chunks of 4")) as usize;
        let share = shares
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| {
                NsError::FuseChannel(io::Error::other(format!("no share {index} to serve")))
            })?;
        servers.push(
            msb_fsserver::serve_guest(share.root, fuse, share.config).map_err(NsError::Serve)?,
        );
    }
    Ok(servers)
}

/// The servers of a sandbox's FUSE mounts; they stop after the sandbox.
struct Servers(Vec<msb_fsserver::Server>);

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} FUSE servers", self.0.len())
    }
}

/// A running namespace sandbox; its init is our child. Dropping it without
/// waiting kills the sandbox.
#[derive(Debug)]
pub struct NsSandbox {
    pid: i32,
    status: Option<i32>,
    /// Dropped after the init is killed and reaped (Drop runs first).
    servers: Servers,
    /// Dropped after the init is reaped: kills whatever is left and
    /// removes the group.
    _cgroup: Option<SandboxCgroup>,
}

impl NsSandbox {
    /// The init's pid (in the supervisor's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn try_reap(&mut self, block: bool) -> Result<Option<i32>, NsError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut st = 0;
        loop {
            // SAFETY: waitpid on our own child.
            let r =
                unsafe { libc::waitpid(self.pid, &mut st, if block { 0 } else { libc::WNOHANG }) };
            if r == self.pid {
                self.status = Some(exit_code(st));
                return Ok(self.status);
            }
            if r == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NsError::Wait(e));
            }
        }
    }
}

impl Running for NsSandbox {
    type Error = NsError;

    fn signal(&self, signal: i32) -> Result<(), NsError> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: signalling our own unreaped child (its pid cannot be reused).
        if unsafe { libc::kill(self.pid, signal) } < 0 {
            return Err(NsError::Signal(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn wait(&mut self, forward_signals: bool) -> Result<i32, NsError> {
        if !forward_signals {
            return Ok(self.try_reap(true)?.unwrap_or(1));
        }
        loop {
            if let Some(s) = self.try_reap(false)? {
                return Ok(s);
            }
            // A bounded wait: a SIGCHLD that arrived before the signals were
            // blocked is not queued, so poll now and then as well.
            if let Some(r) = wait_signal(200)
                && r.signo != libc::SIGCHLD
                && r.sent
                && self.status.is_none()
            {
                // As received: a stop request's grace period goes along.
                r.resend(self.pid).map_err(NsError::Signal)?;
            }
        }
    }
}

impl Drop for NsSandbox {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.try_reap(true);
        }
    }
}
