//! System call filters of the workload (seccomp-bpf).
//!
//! Both profiles are allowlists in the manner of Docker's default profile:
//! a call not listed fails with `EPERM`. [`Security::Default`] allows what
//! Docker's profile allows a container with msb's default capabilities, less
//! a few calls Docker lets through:
//!
//! - `adjtimex`, `clock_adjtime` (read the clock discipline; tuning it
//!   needs `CAP_SYS_TIME` anyway), `name_to_handle_at` (half of the
//!   `open_by_handle_at` pair), `process_vm_readv`/`writev`;
//! - `ioctl` with `TIOCSTI` (typing into a terminal's input) or `TIOCLINUX`.
//!
//! It keeps Docker's argument rules: `clone` without any `CLONE_NEW*` flag,
//! `socket` for every family but `AF_ALG` and `AF_VSOCK`, `personality` with
//! the values Docker allows. Never allowed (no capability-dependent entries
//! here): namespaces (`unshare`, `setns`), mounts and the new mount API,
//! keyrings, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, modules,
//! kexec, swap, reboot, `syslog`, `acct`, setting the clock, `quotactl`,
//! port I/O, `kcmp`, `pidfd_getfd`, `open_by_handle_at` and the obsolete
//! calls (`uselib`, `ustat`, `sysfs`, `_sysctl`, ...).
//!
//! [`Security::Restricted`] also denies `ptrace`, `chroot`, `modify_ldt`,
//! `memfd_secret`, `remap_file_pages`, `fanotify_mark`, `process_mrelease`,
//! and limits `socket` to `AF_UNIX`, `AF_INET`, `AF_INET6` and
//! `AF_NETLINK`: debuggers and tracers, chroot jails, 16-bit segments and
//! rarely used kernel interfaces are no part of ordinary unprivileged work.
//!
//! `clone3` and calls newer than the profile (from `file_getattr` on) fail
//! with `ENOSYS` instead, so that libc falls back to `clone`, whose flags
//! the filter can inspect, and tools to the older calls they replace.
//!
//! Filters are built before fork ([`filter`]) and installed between fork
//! and exec ([`Filter::apply`]), as three small programs the kernel stacks:
//! the allowlist tested as runs of call numbers, seccompiler's program for
//! the refused argument values, and the `ENOSYS` range. The kernel
//! converts and compiles every program at each install, so their size is
//! part of what every `run` and `exec` costs.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use linux_raw_sys::general::{self as nr, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET};
use linux_raw_sys::general::{CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS};
use linux_raw_sys::ioctl::{TIOCLINUX, TIOCSTI};
use linux_raw_sys::net::{AF_ALG, AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, AF_VSOCK};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

use crate::Security;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("msb's seccomp profiles are written for x86_64 and aarch64 only");

/// Allowed by both profiles whatever the arguments: Docker's unconditional
/// list as it applies to 64-bit x86 and Arm, less the exceptions above.
const BASE: &[u32] = &[
    nr::__NR_accept,
    nr::__NR_accept4,
    nr::__NR_bind,
    nr::__NR_brk,
    nr::__NR_cachestat,
    nr::__NR_capget,
    nr::__NR_capset,
    nr::__NR_chdir,
    nr::__NR_clock_getres,
    nr::__NR_clock_gettime,
    nr::__NR_clock_nanosleep,
    nr::__NR_close,
    nr::__NR_close_range,
    nr::__NR_connect,
    nr::__NR_copy_file_range,
    nr::__NR_dup,
    nr::__NR_dup3,
    nr::__NR_epoll_create1,
    nr::__NR_epoll_ctl,
    nr::__NR_epoll_pwait,
    nr::__NR_epoll_pwait2,
    nr::__NR_eventfd2,
    nr::__NR_execve,
    nr::__NR_execveat,
    nr::__NR_exit,
    nr::__NR_exit_group,
    nr::__NR_faccessat,
    nr::__NR_faccessat2,
    nr::__NR_fadvise64,
    nr::__NR_fallocate,
    nr::__NR_fchdir,
    nr::__NR_fchmod,
    nr::__NR_fchmodat,
    nr::__NR_fchmodat2,
    nr::__NR_fchown,
    nr::__NR_fchownat,
    nr::__NR_fcntl,
    nr::__NR_fdatasync,
    nr::__NR_fgetxattr,
    nr::__NR_flistxattr,
    nr::__NR_flock,
    nr::__NR_fremovexattr,
    nr::__NR_fsetxattr,
    nr::__NR_fstat,
    nr::__NR_fstatfs,
    nr::__NR_fsync,
    nr::__NR_ftruncate,
    nr::__NR_futex,
    nr::__NR_futex_requeue,
    nr::__NR_futex_wait,
    nr::__NR_futex_waitv,
    nr::__NR_futex_wake,
    nr::__NR_getcpu,
    nr::__NR_getcwd,
    nr::__NR_getdents64,
    nr::__NR_getegid,
    nr::__NR_geteuid,
    nr::__NR_getgid,
    nr::__NR_getgroups,
    nr::__NR_getitimer,
    nr::__NR_getpeername,
    nr::__NR_getpgid,
    nr::__NR_getpid,
    nr::__NR_getppid,
    nr::__NR_getpriority,
    nr::__NR_getrandom,
    nr::__NR_getresgid,
    nr::__NR_getresuid,
    nr::__NR_getrlimit,
    nr::__NR_get_robust_list,
    nr::__NR_getrusage,
    nr::__NR_getsid,
    nr::__NR_getsockname,
    nr::__NR_getsockopt,
    nr::__NR_gettid,
    nr::__NR_gettimeofday,
    nr::__NR_getuid,
    nr::__NR_getxattr,
    nr::__NR_getxattrat,
    nr::__NR_inotify_add_watch,
    nr::__NR_inotify_init1,
    nr::__NR_inotify_rm_watch,
    nr::__NR_io_cancel,
    nr::__NR_io_destroy,
    nr::__NR_io_getevents,
    nr::__NR_io_pgetevents,
    nr::__NR_ioprio_get,
    nr::__NR_ioprio_set,
    nr::__NR_io_setup,
    nr::__NR_io_submit,
    nr::__NR_kill,
    nr::__NR_landlock_add_rule,
    nr::__NR_landlock_create_ruleset,
    nr::__NR_landlock_restrict_self,
    nr::__NR_lgetxattr,
    nr::__NR_linkat,
    nr::__NR_listen,
    nr::__NR_listmount,
    nr::__NR_listxattr,
    nr::__NR_listxattrat,
    nr::__NR_llistxattr,
    nr::__NR_lremovexattr,
    nr::__NR_lseek,
    nr::__NR_lsetxattr,
    nr::__NR_madvise,
    nr::__NR_map_shadow_stack,
    nr::__NR_membarrier,
    nr::__NR_memfd_create,
    nr::__NR_mincore,
    nr::__NR_mkdirat,
    nr::__NR_mknodat,
    nr::__NR_mlock,
    nr::__NR_mlock2,
    nr::__NR_mlockall,
    nr::__NR_mmap,
    nr::__NR_mprotect,
    nr::__NR_mq_getsetattr,
    nr::__NR_mq_notify,
    nr::__NR_mq_open,
    nr::__NR_mq_timedreceive,
    nr::__NR_mq_timedsend,
    nr::__NR_mq_unlink,
    nr::__NR_mremap,
    nr::__NR_mseal,
    nr::__NR_msgctl,
    nr::__NR_msgget,
    nr::__NR_msgrcv,
    nr::__NR_msgsnd,
    nr::__NR_msync,
    nr::__NR_munlock,
    nr::__NR_munlockall,
    nr::__NR_munmap,
    nr::__NR_nanosleep,
    nr::__NR_newfstatat,
    nr::__NR_openat,
    nr::__NR_openat2,
    nr::__NR_pidfd_open,
    nr::__NR_pidfd_send_signal,
    nr::__NR_pipe2,
    nr::__NR_pkey_alloc,
    nr::__NR_pkey_free,
    nr::__NR_pkey_mprotect,
    nr::__NR_ppoll,
    nr::__NR_prctl,
    nr::__NR_pread64,
    nr::__NR_preadv,
    nr::__NR_preadv2,
    nr::__NR_prlimit64,
    nr::__NR_pselect6,
    nr::__NR_pwrite64,
    nr::__NR_pwritev,
    nr::__NR_pwritev2,
    nr::__NR_read,
    nr::__NR_readahead,
    nr::__NR_readlinkat,
    nr::__NR_readv,
    nr::__NR_recvfrom,
    nr::__NR_recvmmsg,
    nr::__NR_recvmsg,
    nr::__NR_removexattr,
    nr::__NR_removexattrat,
    nr::__NR_renameat,
    nr::__NR_renameat2,
    nr::__NR_restart_syscall,
    nr::__NR_rseq,
    nr::__NR_rt_sigaction,
    nr::__NR_rt_sigpending,
    nr::__NR_rt_sigprocmask,
    nr::__NR_rt_sigqueueinfo,
    nr::__NR_rt_sigreturn,
    nr::__NR_rt_sigsuspend,
    nr::__NR_rt_sigtimedwait,
    nr::__NR_rt_tgsigqueueinfo,
    nr::__NR_sched_getaffinity,
    nr::__NR_sched_getattr,
    nr::__NR_sched_getparam,
    nr::__NR_sched_get_priority_max,
    nr::__NR_sched_get_priority_min,
    nr::__NR_sched_getscheduler,
    nr::__NR_sched_rr_get_interval,
    nr::__NR_sched_setaffinity,
    nr::__NR_sched_setattr,
    nr::__NR_sched_setparam,
    nr::__NR_sched_setscheduler,
    nr::__NR_sched_yield,
    nr::__NR_seccomp,
    nr::__NR_semctl,
    nr::__NR_semget,
    nr::__NR_semop,
    nr::__NR_semtimedop,
    nr::__NR_sendfile,
    nr::__NR_sendmmsg,
    nr::__NR_sendmsg,
    nr::__NR_sendto,
    nr::__NR_setfsgid,
    nr::__NR_setfsuid,
    nr::__NR_setgid,
    nr::__NR_setgroups,
    nr::__NR_setitimer,
    nr::__NR_setpgid,
    nr::__NR_setpriority,
    nr::__NR_setregid,
    nr::__NR_setresgid,
    nr::__NR_setresuid,
    nr::__NR_setreuid,
    nr::__NR_setrlimit,
    nr::__NR_set_robust_list,
    nr::__NR_setsid,
    nr::__NR_setsockopt,
    nr::__NR_set_tid_address,
    nr::__NR_setuid,
    nr::__NR_setxattr,
    nr::__NR_setxattrat,
    nr::__NR_shmat,
    nr::__NR_shmctl,
    nr::__NR_shmdt,
    nr::__NR_shmget,
    nr::__NR_shutdown,
    nr::__NR_sigaltstack,
    nr::__NR_signalfd4,
    nr::__NR_socketpair,
    nr::__NR_splice,
    nr::__NR_statfs,
    nr::__NR_statmount,
    nr::__NR_statx,
    nr::__NR_symlinkat,
    nr::__NR_sync,
    nr::__NR_sync_file_range,
    nr::__NR_syncfs,
    nr::__NR_sysinfo,
    nr::__NR_tee,
    nr::__NR_tgkill,
    nr::__NR_timer_create,
    nr::__NR_timer_delete,
    nr::__NR_timer_getoverrun,
    nr::__NR_timer_gettime,
    nr::__NR_timer_settime,
    nr::__NR_timerfd_create,
    nr::__NR_timerfd_gettime,
    nr::__NR_timerfd_settime,
    nr::__NR_times,
    nr::__NR_tkill,
    nr::__NR_truncate,
    nr::__NR_umask,
    nr::__NR_uname,
    nr::__NR_unlinkat,
    nr::__NR_utimensat,
    nr::__NR_vmsplice,
    nr::__NR_wait4,
    nr::__NR_waitid,
    nr::__NR_write,
    nr::__NR_writev,
];

/// The older path-based and legacy calls x86_64 keeps (aarch64 only has
/// their `*at` successors), which libc and old binaries still use.
#[cfg(target_arch = "x86_64")]
const BASE_ARCH: &[u32] = &[
    nr::__NR_access,
    nr::__NR_alarm,
    nr::__NR_arch_prctl,
    nr::__NR_chmod,
    nr::__NR_chown,
    nr::__NR_creat,
    nr::__NR_dup2,
    nr::__NR_epoll_create,
    nr::__NR_epoll_ctl_old,
    nr::__NR_epoll_wait,
    nr::__NR_epoll_wait_old,
    nr::__NR_eventfd,
    nr::__NR_fork,
    nr::__NR_futimesat,
    nr::__NR_getdents,
    nr::__NR_getpgrp,
    nr::__NR_get_thread_area,
    nr::__NR_inotify_init,
    nr::__NR_lchown,
    nr::__NR_link,
    nr::__NR_lstat,
    nr::__NR_mkdir,
    nr::__NR_mknod,
    nr::__NR_open,
    nr::__NR_pause,
    nr::__NR_pipe,
    nr::__NR_poll,
    nr::__NR_readlink,
    nr::__NR_rename,
    nr::__NR_rmdir,
    nr::__NR_select,
    nr::__NR_set_thread_area,
    nr::__NR_signalfd,
    nr::__NR_stat,
    nr::__NR_symlink,
    nr::__NR_time,
    nr::__NR_unlink,
    nr::__NR_uretprobe,
    nr::__NR_utime,
    nr::__NR_utimes,
    nr::__NR_vfork,
];
#[cfg(target_arch = "aarch64")]
const BASE_ARCH: &[u32] = &[];

/// Allowed by [`Security::Default`] only. `ptrace` is safe under seccomp
/// since Linux 4.8 (a tracer can no longer change a call after the filter
/// ran), which Docker requires for it; msb needs far newer kernels anyway.
/// `chroot` is Docker's with `CAP_SYS_CHROOT`, which the default profile
/// keeps.
const DEFAULT_ONLY: &[u32] = &[
    nr::__NR_ptrace,
    nr::__NR_chroot,
    nr::__NR_memfd_secret,
    nr::__NR_remap_file_pages,
    nr::__NR_fanotify_mark,
    nr::__NR_process_mrelease,
    #[cfg(target_arch = "x86_64")]
    nr::__NR_modify_ldt,
];

/// The values of `personality` Docker allows: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, both, and the query `0xffffffff`.
const PERSONALITIES: [u32; 5] = [0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// `clone` flags that create namespaces.
const CLONE_NAMESPACES: u32 = CLONE_NEWNS
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWCGROUP;

/// Socket families [`Security::Restricted`] allows.
const RESTRICTED_FAMILIES: [u32; 4] = [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK];

/// The first system call newer than the profile, and the last number given
/// `ENOSYS` for the same reason (x86_64's x32 range starts at 512).
const FIRST_UNKNOWN: u32 = nr::__NR_file_getattr;
const LAST_UNKNOWN: u32 = 511;

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The privileged profile has no filter.
    #[error("the privileged profile has no system call filter")]
    Unconfined,
    /// The BPF compiler rejected a profile (a bug in the profile).
    #[error("cannot build the seccomp filter of the {security:?} profile")]
    Build {
        /// The profile.
        security: Security,
        /// The compiler's reason.
        #[source]
        source: BackendError,
    },
}

/// A profile's seccomp filter, compiled and ready to install: three
/// programs, since the kernel combines stacked filters by taking the most
/// restrictive answer (and, between two errnos, the newer filter's).
#[derive(Debug, Clone)]
pub struct Filter {
    /// The allowlist's call numbers; everything else fails with `EPERM`.
    allow: BpfProgram,
    /// `EPERM` for the argument values refused in calls the allowlist has
    /// (`clone`, `ioctl`, `personality`, `socket`); anything else allowed.
    arguments: BpfProgram,
    /// `ENOSYS` for `clone3` and unknown calls, installed last:
    /// when two filters both return an errno, the newer one's wins.
    enosys: BpfProgram,
}

/// Compiles the filter of `security`. Call it before fork: it allocates.
pub fn filter(security: Security) -> Result<Filter, SeccompError> {
    if security == Security::Privileged {
        return Err(SeccompError::Unconfined);
    }
    let arguments = refused_arguments(security).and_then(refusing);
    arguments
        .map(|arguments| Filter {
            allow: allowlist_program(&allowed(security)),
            arguments,
            enosys: enosys_program(),
        })
        .map_err(|source| SeccompError::Build { security, source })
}

/// `AUDIT_ARCH_*` of the target: what `seccomp_data.arch` holds for its
/// native calls.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Loads the word at `offset` of `struct seccomp_data`: the call number at
/// 0, the arch at 4.
fn load(offset: u32) -> sock_filter {
    bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset, 0, 0)
}

/// Compares with `k`: `jt` or `jf` instructions are skipped.
fn jump(test: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    bpf(libc::BPF_JMP | test | libc::BPF_K, k, jt, jf)
}

fn ret(action: u32) -> sock_filter {
    bpf(libc::BPF_RET | libc::BPF_K, action, 0, 0)
}

/// The first filter: the allowlist, tested as runs of consecutive call
/// numbers in ascending order (four instructions a run), where seccompiler
/// tests each number on its own and spends over 1,500 instructions, all of
/// which the kernel converts and compiles on every `run` and `exec`. A
/// call in another arch's convention kills the process, as seccompiler's
/// arch check does.
fn allowlist_program(numbers: &BTreeSet<u32>) -> BpfProgram {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut program = vec![
        load(4),
        jump(libc::BPF_JEQ, AUDIT_ARCH, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(0),
    ];
    for (first, last) in runs {
        program.extend([
            // Below this run, so between it and the one before: refused.
            jump(libc::BPF_JGE, first, 1, 0),
            ret(eperm),
            // Above it: on to the next run.
            jump(libc::BPF_JGT, last, 1, 0),
            ret(libc::SECCOMP_RET_ALLOW),
        ]);
    }
    program.push(ret(eperm));
    program
}

/// The last filter: `ENOSYS` for `clone3` and the numbers from
/// `FIRST_UNKNOWN` to `LAST_UNKNOWN`, anything else left to the others.
fn enosys_program() -> BpfProgram {
    vec![
        /* 0 */ load(4),
        /* 1 */ jump(libc::BPF_JEQ, AUDIT_ARCH, 0, 4), // another arch: 6
        /* 2 */ load(0),
        /* 3 */ jump(libc::BPF_JEQ, nr::__NR_clone3, 3, 0), // clone3: 7
        /* 4 */ jump(libc::BPF_JGE, FIRST_UNKNOWN, 0, 1), // known: 6
        /* 5 */ jump(libc::BPF_JGT, LAST_UNKNOWN, 0, 1), // unknown: 7
        /* 6 */ ret(libc::SECCOMP_RET_ALLOW),
        /* 7 */ ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

/// The call numbers `security` allows, four of them (`clone`, `ioctl`,
/// `personality`, `socket`) only with the arguments [`refused_arguments`]
/// does not refuse.
fn allowed(security: Security) -> BTreeSet<u32> {
    BASE.iter()
        .chain(BASE_ARCH)
        .chain(match security {
            // Privileged never gets here (see `filter`).
            Security::Default | Security::Privileged => DEFAULT_ONLY,
            Security::Restricted => &[],
        })
        .chain(&[
            nr::__NR_clone,
            nr::__NR_ioctl,
            nr::__NR_personality,
            nr::__NR_socket,
        ])
        .copied()
        .collect()
}

/// The argument values refused in calls [`allowed`] has: each rule a way to
/// be refused (a rule holds when all its conditions do).
fn refused_arguments(security: Security) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    // Every argument compared here is a 32-bit int to the kernel (socket's
    // family, ioctl's request, personality, and clone's flags, of which it
    // uses the low half), so only the low half is compared: a value with
    // junk in the high half means the same to the kernel and must match
    // the same.
    let arg = |index, op, value: u32| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, u64::from(value))
    };
    let one = |index, op, value| SeccompRule::new(vec![arg(index, op, value)?]);
    let none_of = |index, values: &[u32]| {
        SeccompRule::new(
            values
                .iter()
                .map(|&v| arg(index, SeccompCmpOp::Ne, v))
                .collect::<Result<_, _>>()?,
        )
    };
    let mut rules = BTreeMap::new();
    // Any flag that creates a namespace.
    rules.insert(
        i64::from(nr::__NR_clone),
        (0..32)
            .map(|bit| 1u32 << bit)
            .filter(|flag| CLONE_NAMESPACES & flag != 0)
            .map(|flag| one(0, SeccompCmpOp::MaskedEq(flag.into()), flag))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(
        i64::from(nr::__NR_ioctl),
        vec![
            one(1, SeccompCmpOp::Eq, TIOCSTI)?,
            one(1, SeccompCmpOp::Eq, TIOCLINUX)?,
        ],
    );
    rules.insert(
        i64::from(nr::__NR_personality),
        vec![none_of(0, &PERSONALITIES)?],
    );
    let socket = match security {
        // Docker's: every family but AF_ALG and AF_VSOCK.
        Security::Default | Security::Privileged => vec![
            one(0, SeccompCmpOp::Eq, AF_ALG)?,
            one(0, SeccompCmpOp::Eq, AF_VSOCK)?,
        ],
        Security::Restricted => vec![none_of(0, &RESTRICTED_FAMILIES)?],
    };
    rules.insert(i64::from(nr::__NR_socket), socket);
    Ok(rules)
}

/// `struct sock_fprog`, pointing at seccompiler's instructions.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

impl Filter {
    /// Installs the filter on the calling thread, which it binds with every
    /// process it starts from now on. Async-signal-safe (one system call
    /// per program, no allocation), for use between fork and exec.
    ///
    /// `no_new_privs` is left alone, so setuid programs keep working under
    /// [`Security::Default`]; the kernel then requires `CAP_SYS_ADMIN` in
    /// the caller's user namespace: install the filter before dropping
    /// capabilities. The filter allows `prctl`, `capset` and `execve`.
    pub fn apply(&self) -> io::Result<()> {
        [&self.allow, &self.arguments, &self.enosys]
            .into_iter()
            .try_for_each(install)
    }
}

/// Compiles a program that lets every call through except those matching
/// `rules` (a call with no rules matches whatever its arguments), which
/// fail with EPERM. Build it before fork: it allocates.
pub fn refusing(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, BackendError> {
    BpfProgram::try_from(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?)
}

/// Installs one BPF program on the calling thread. Async-signal-safe (one
/// system call, no allocation), for use between fork and exec. The caller
/// needs `no_new_privs` or `CAP_SYS_ADMIN` in its user namespace.
pub fn install(program: &BpfProgram) -> io::Result<()> {
    let fprog = SockFprog {
        // seccompiler refuses programs over BPF_MAXINSNS (4096).
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: `fprog` points at a live, valid BPF program of the length
    // given; the kernel copies it before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls neither profile may allow, whatever the arguments.
    const NEVER: &[u32] = &[
        nr::__NR_keyctl,
        nr::__NR_add_key,
        nr::__NR_request_key,
        nr::__NR_bpf,
        nr::__NR_perf_event_open,
        nr::__NR_kexec_load,
        nr::__NR_kexec_file_load,
        nr::__NR_init_module,
        nr::__NR_finit_module,
        nr::__NR_delete_module,
        nr::__NR_open_by_handle_at,
        nr::__NR_name_to_handle_at,
        nr::__NR_userfaultfd,
        nr::__NR_mount,
        nr::__NR_umount2,
        nr::__NR_pivot_root,
        nr::__NR_move_mount,
        nr::__NR_open_tree,
        nr::__NR_open_tree_attr,
        nr::__NR_fsopen,
        nr::__NR_fsconfig,
        nr::__NR_fsmount,
        nr::__NR_fspick,
        nr::__NR_mount_setattr,
        nr::__NR_swapon,
        nr::__NR_swapoff,
        nr::__NR_reboot,
        nr::__NR_syslog,
        nr::__NR_acct,
        nr::__NR_settimeofday,
        nr::__NR_clock_settime,
        nr::__NR_adjtimex,
        nr::__NR_clock_adjtime,
        nr::__NR_lookup_dcookie,
        nr::__NR_quotactl,
        nr::__NR_quotactl_fd,
        nr::__NR_nfsservctl,
        nr::__NR_process_vm_readv,
        nr::__NR_process_vm_writev,
        nr::__NR_kcmp,
        nr::__NR_pidfd_getfd,
        nr::__NR_io_uring_setup,
        nr::__NR_io_uring_enter,
        nr::__NR_io_uring_register,
        nr::__NR_unshare,
        nr::__NR_setns,
        nr::__NR_clone3,
        nr::__NR_sethostname,
        nr::__NR_setdomainname,
        nr::__NR_vhangup,
        nr::__NR_fanotify_init,
        nr::__NR_lsm_get_self_attr,
        nr::__NR_lsm_set_self_attr,
        nr::__NR_lsm_list_modules,
        nr::__NR_mbind,
        nr::__NR_set_mempolicy,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_iopl,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_ioperm,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_uselib,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_ustat,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_sysfs,
        #[cfg(target_arch = "x86_64")]
        nr::__NR__sysctl,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_create_module,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_get_kernel_syms,
        #[cfg(target_arch = "x86_64")]
        nr::__NR_query_module,
    ];

    #[test]
    fn profiles_compile_and_never_allow_the_dangerous_calls() {
        for security in [Security::Default, Security::Restricted] {
            let f = filter(security).unwrap();
            for program in [&f.allow, &f.arguments, &f.enosys] {
                assert!(program.len() < 4096);
            }
            let numbers = allowed(security);
            for n in NEVER {
                assert!(!numbers.contains(n), "{security:?} allows {n}");
            }
            // Argument rules only for calls the allowlist has.
            let arguments = refused_arguments(security).unwrap();
            assert!(arguments.keys().all(|&k| numbers.contains(&(k as u32))));
        }
        let default = allowed(Security::Default);
        let restricted = allowed(Security::Restricted);
        assert!(restricted.is_subset(&default));
        assert!(default.contains(&nr::__NR_ptrace));
        assert!(!restricted.contains(&nr::__NR_ptrace));
        // Nothing allowed is also sent to ENOSYS by the last filter.
        assert!(default.iter().all(|&k| k < FIRST_UNKNOWN));
    }

    /// The order the runtime uses between fork and exec: filter, then
    /// capabilities (and no_new_privs for Restricted) dropped under it.
    #[test]
    fn capabilities_drop_under_the_filter() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: installing a filter without no_new_privs needs root");
            return;
        }
        for security in [Security::Default, Security::Restricted] {
            let f = filter(security).unwrap();
            let keep = crate::caps::keep_set(security);
            let last_cap = crate::caps::last_cap();
            let restricted = security == Security::Restricted;
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args([
                "-c",
                "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
            ]);
            // SAFETY: the hook only makes system calls (seccomp, prctl,
            // capset) on data prepared before fork.
            unsafe {
                cmd.pre_exec(move || {
                    f.apply()?;
                    crate::caps::apply(keep, last_cap, restricted)
                });
            }
            let out = cmd.output().unwrap();
            let status = String::from_utf8_lossy(&out.stdout).replace('\t', " ");
            assert!(out.status.success(), "{security:?}: {out:?}");
            assert!(status.contains(&format!("CapEff: {keep:016x}")), "{status}");
            assert!(status.contains(&format!("NoNewPrivs: {}", u8::from(restricted))));
            assert!(status.contains("Seccomp: 2"), "{status}");
        }
    }
}
