//! Thin wrappers over the system calls the agent needs, returning
//! `io::Error` with errno so callers can attach what they were doing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use msb_security::Confinement;

/// A path or string as a C string; interior NULs become an error.
pub fn cstr(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let source = cstr(source)?;
    let target = cstr(target.as_os_str().as_bytes())?;
    let fstype = cstr(fstype)?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(drop)
}

/// finit_module(2) with no parameters.
pub fn finit_module(fd: RawFd) -> io::Result<()> {
    let params = c"";
    // SAFETY: the descriptor is open for the call; params is a valid empty string.
    check(unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0) as libc::c_int })
        .map(drop)
}

/// pidfd_open(2): a descriptor that names the process even after its pid is reused.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as libc::c_int })?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(2).
pub fn pidfd_send_signal(pidfd: &OwnedFd, signo: i32) -> io::Result<()> {
    // SAFETY: the descriptor is open; a null siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) as libc::c_int
    })
    .map(drop)
}

/// A pipe whose ends close on exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and belong to us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new pseudo-terminal pair (master, slave) of the given size.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: master/slave receive descriptors; name and termios may be null; ws is valid.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: both descriptors were just created and belong to us alone.
    let pair = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&pair.0, &pair.1] {
        // SAFETY: fd is open; FD_CLOEXEC keeps it out of commands that do not ask for it.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok(pair)
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is open and ws is a valid winsize for TIOCSWINSZ.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an open descriptor with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// The exit status a shell reports for a wait status: the code, or 128+N
/// for signal N.
pub fn exit_status(wstatus: libc::c_int) -> i32 {
    if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus)
    } else if libc::WIFSIGNALED(wstatus) {
        128 + libc::WTERMSIG(wstatus)
    } else {
        255
    }
}

/// How a spawned command's stdio is set up.
pub enum ChildStdio {
    /// These descriptors become 0, 1 and 2.
    Fds([RawFd; 3]),
    /// The terminal at this path, opened after `setsid` so that it becomes
    /// the controlling terminal, as 0, 1 and 2.
    Terminal(CString),
}

/// Starts `program`. Signal dispositions and mask are reset; the child
/// gets its own process group (or its own session with a terminal). With
/// `confinement`, the child installs it just before exec, which
/// posix_spawn cannot do ([`clone_exec`] does the same otherwise); without,
/// posix_spawn starts it (glibc's vfork-style spawn, much cheaper than fork
/// under emulation). Returns the pid; an exec failure
/// comes back as its errno.
pub fn spawn(
    program: &Path,
    argv: &[String],
    env: &[String],
    cwd: &str,
    stdio: &ChildStdio,
    confinement: Option<&Confinement>,
) -> io::Result<libc::pid_t> {
    let (program, argv, env, cwd) = c_strings(program, argv, env, cwd)?;
    let argv_ptrs = pointers(&argv);
    let env_ptrs = pointers(&env);

    if let Some(confinement) = confinement {
        let exec = Exec {
            program: &program,
            argv: &argv_ptrs,
            env: &env_ptrs,
            cwd: &cwd,
        };
        return clone_exec(&exec, stdio, Some(confinement), false);
    }

    let errno = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialised before
    // use and destroyed on every path; every pointer handed to glibc points
    // into CStrings and vectors that outlive the posix_spawn call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        errno(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = errno(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            match stdio {
                ChildStdio::Fds(fds) => {
                    for (target, &fd) in fds.iter().enumerate() {
                        errno(libc::posix_spawn_file_actions_adddup2(
                            &mut actions,
                            fd,
                            target as i32,
                        ))?;
                    }
                    flags |= libc::POSIX_SPAWN_SETPGROUP;
                }
                ChildStdio::Terminal(path) => {
                    errno(libc::posix_spawn_file_actions_addopen(
                        &mut actions,
                        0,
                        path.as_ptr(),
                        libc::O_RDWR,
                        0,
                    ))?;
                    errno(libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 1))?;
                    errno(libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 2))?;
                    flags |= libc::POSIX_SPAWN_SETSID as libc::c_int;
                }
            }
            errno(libc::posix_spawn_file_actions_addchdir_np(
                &mut actions,
                cwd.as_ptr(),
            ))?;
            let mut none: libc::sigset_t = std::mem::zeroed();
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigfillset(&mut all);
            errno(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            errno(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            errno(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            errno(libc::posix_spawnattr_setflags(
                &mut attr,
                flags as libc::c_short,
            ))?;
            let mut pid = 0;
            errno(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                env_ptrs.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

/// The C strings of an exec: program, argv, `KEY=VALUE` environment (a
/// bare `KEY` gets an empty value) and working directory.
type CExec = (CString, Vec<CString>, Vec<CString>, CString);

fn c_strings(program: &Path, argv: &[String], env: &[String], cwd: &str) -> io::Result<CExec> {
    use std::os::unix::ffi::OsStrExt;
    let env = env
        .iter()
        .map(|kv| {
            if kv.contains('=') {
                cstr(kv)
            } else {
                cstr(format!("{kv}="))
            }
        })
        .collect::<io::Result<_>>()?;
    Ok((
        cstr(program.as_os_str().as_bytes())?,
        argv.iter().map(cstr).collect::<io::Result<_>>()?,
        env,
        cstr(cwd)?,
    ))
}

/// NULL-terminated pointers to `strings`.
fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect()
}

/// Starts `program` as [`spawn`] does, but as a child of this process's
/// parent (`CLONE_PARENT`), which reaps it; for the launcher, whose own
/// confinement the child inherits. An exec failure comes back as its
/// errno (the failed child is the parent's to reap).
pub fn spawn_sibling(
    program: &Path,
    argv: &[String],
    env: &[String],
    cwd: &str,
    stdio: &ChildStdio,
) -> io::Result<libc::pid_t> {
    let (program, argv, env, cwd) = c_strings(program, argv, env, cwd)?;
    let (argv_ptrs, env_ptrs) = (pointers(&argv), pointers(&env));
    let exec = Exec {
        program: &program,
        argv: &argv_ptrs,
        env: &env_ptrs,
        cwd: &cwd,
    };
    clone_exec(&exec, stdio, None, true)
}

/// What a cloned child executes, prepared before the clone.
struct Exec<'a> {
    program: &'a CString,
    /// NULL-terminated.
    argv: &'a [*mut libc::c_char],
    /// NULL-terminated.
    env: &'a [*mut libc::c_char],
    cwd: &'a CString,
}

/// Stack of a [`clone_exec`] child, which runs only [`child_setup`].
const CHILD_STACK: usize = 256 << 10;

/// What a [`clone_exec`] child reads, and where it leaves its errno.
struct ChildArgs<'a> {
    exec: &'a Exec<'a>,
    stdio: &'a ChildStdio,
    confinement: Option<&'a Confinement>,
    /// 0 until the child fails before exec.
    errno: AtomicI32,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs of clone_exec, which stays alive and
    // unchanged while its caller is suspended (CLONE_VFORK).
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    let err = child_setup(args.exec, args.stdio, args.confinement);
    args.errno.store(
        err.raw_os_error().unwrap_or(libc::EINVAL),
        Ordering::Relaxed,
    );
    // SAFETY: ends the child without running any of the parent's exit code.
    unsafe { libc::_exit(127) }
}

/// [`spawn`] for a child that must install its confinement between fork
/// and exec: clone with `CLONE_VM | CLONE_VFORK`, as glibc's posix_spawn
/// does, because copying the agent's memory for a fork costs tens of
/// milliseconds per command under emulation. The child runs on a stack of
/// its own, shares our memory but nothing else (its own descriptors and
/// signal dispositions), and we resume once it has exec'd or failed.
fn clone_exec(
    exec: &Exec<'_>,
    stdio: &ChildStdio,
    confinement: Option<&Confinement>,
    sibling: bool,
) -> io::Result<libc::pid_t> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let args = ChildArgs {
        exec,
        stdio,
        confinement,
        errno: AtomicI32::new(0),
    };
    // SAFETY: sigset_t is plain data, filled by sigfillset before use. All
    // signals stay blocked around the clone so that none of our handlers
    // runs in the child on our memory; the child resets every disposition
    // before it unblocks them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY (clone): the stack and the arguments outlive the child's
        // use of them, since CLONE_VFORK suspends us until it has exec'd
        // or exited; child_main only makes async-signal-safe system calls.
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM
                | libc::CLONE_VFORK
                | if sibling { libc::CLONE_PARENT } else { 0 }
                | libc::SIGCHLD,
            (&args as *const ChildArgs<'_>).cast_mut().cast(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    drop(stack);
    let pid = check(pid)?;
    let errno = args.errno.load(Ordering::Relaxed);
    if errno == 0 {
        return Ok(pid);
    }
    if sibling {
        // Not ours to reap.
        return Err(io::Error::from_raw_os_error(errno));
    }
    let mut status = 0;
    // SAFETY: pid is our child, which the caller keeps the reaper away from.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Err(io::Error::from_raw_os_error(errno))
}

/// The cloned child's work up to exec, mirroring [`spawn`]'s posix_spawn
/// attributes: stdio, process group or session, working directory,
/// default signal handling, then the confinement, then exec. Returns only
/// on failure.
fn child_setup(
    exec: &Exec<'_>,
    stdio: &ChildStdio,
    confinement: Option<&Confinement>,
) -> io::Error {
    let failed = |rc: libc::c_int| rc < 0;
    // SAFETY: only async-signal-safe system calls on descriptors and
    // NUL-terminated strings prepared before the clone.
    unsafe {
        match stdio {
            ChildStdio::Fds(fds) => {
                for (target, &fd) in fds.iter().enumerate() {
                    if failed(libc::dup2(fd, target as libc::c_int)) {
                        return io::Error::last_os_error();
                    }
                }
                if failed(libc::setpgid(0, 0)) {
                    return io::Error::last_os_error();
                }
            }
            ChildStdio::Terminal(path) => {
                // A session leader's first terminal becomes its controlling one.
                if failed(libc::setsid()) {
                    return io::Error::last_os_error();
                }
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                if failed(fd) {
                    return io::Error::last_os_error();
                }
                for target in 0..3 {
                    if failed(libc::dup2(fd, target)) {
                        return io::Error::last_os_error();
                    }
                }
                if fd > 2 {
                    libc::close(fd);
                }
            }
        }
        if failed(libc::chdir(exec.cwd.as_ptr())) {
            return io::Error::last_os_error();
        }
        // Every signal up to Linux's 64 (SIGKILL and SIGSTOP refuse,
        // harmlessly), before any is unblocked.
        for signo in 1..=64 {
            libc::signal(signo, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Some(Err(e)) = confinement.map(Confinement::apply) {
            return e;
        }
        libc::execve(
            exec.program.as_ptr(),
            exec.argv.as_ptr().cast(),
            exec.env.as_ptr().cast(),
        );
        io::Error::last_os_error()
    }
}

/// Opens /dev/null for reading.
pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

/// The path of the terminal `fd` refers to.
pub fn tty_path(fd: &OwnedFd) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    cstr(path.as_os_str().as_bytes())
}

/// Reaps the ended process `pidfd` names; returns its exit status (128+N
/// for signal N).
pub fn reap_pidfd(pidfd: &OwnedFd) -> io::Result<i32> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid for writing; the pidfd is open.
    check(unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    })?;
    // SAFETY: waitid filled info for an ended child.
    let status = unsafe { info.si_status() };
    Ok(match info.si_code {
        libc::CLD_EXITED => status,
        _ => 128 + status,
    })
}
