//! The seccomp profiles in real processes: ordinary programs run under them,
//! and the calls they deny fail with the errno they promise. Every probe is
//! also made without a filter, to show the errno comes from the filter (the
//! tests run as root, for whom the kernel itself would rarely say EPERM).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use linux_raw_sys::general as nr;
use linux_raw_sys::ioctl::{TIOCLINUX, TIOCSTI};
use msb_runtime::Security;
use msb_runtime::seccomp::{Filter, filter};

/// Whether the host lets this process install a filter without
/// `no_new_privs` (root, or `CAP_SYS_ADMIN`).
fn can_filter() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: installing a filter without no_new_privs needs root");
        return false;
    }
    true
}

/// Runs `script` with `sh -c` under the filter of `security`, in `dir`.
fn sh(security: Security, dir: &std::path::Path, script: &str) -> Output {
    let f = filter(security).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).current_dir(dir);
    // SAFETY: the hook only installs the prepared filter (one system call
    // per program, no allocation).
    unsafe { cmd.pre_exec(move || f.apply()) };
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Shell, coreutils, python3, gcc, git, tar and dpkg at work.
const ORDINARY_WORK: &str = r#"
set -e
grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status | tr -d '\t' | tr '\n' ' '
echo
echo hello | tr a-z A-Z | grep -q HELLO
mkdir d && cp /etc/hostname d/f && mv d e && ls -l e >/dev/null && sort /etc/passwd | wc -l >/dev/null
sleep 0.1 & wait
if command -v python3 >/dev/null; then
    python3 -c '
import os, socket, subprocess, tempfile, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
assert subprocess.run(["true"]).returncode == 0
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); s.listen(); s.close()
with tempfile.NamedTemporaryFile() as f: f.write(b"y")
print("python ok")
'
else echo "skipped python3: not installed"; fi
if command -v gcc >/dev/null; then
    printf '#include <stdio.h>\n#include <pthread.h>\nstatic void *run(void *a) { return a; }\nint main(void) { pthread_t t; pthread_create(&t, 0, run, 0); pthread_join(t, 0); puts("gcc ok"); return 0; }\n' > hello.c
    gcc -O1 -pthread -o hello hello.c && ./hello
else echo "skipped gcc: not installed"; fi
if command -v git >/dev/null; then
    git init -q repo && cd repo && echo content > file && git add file
    git -c user.name=t -c user.email=t@example.com commit -q -m first
    git log --oneline | grep -q first && cd .. && echo "git ok"
else echo "skipped git: not installed"; fi
tar cf - repo e | (mkdir unpacked && tar xf - -C unpacked) && diff -r e unpacked/e && echo "tar ok"
if command -v dpkg >/dev/null; then dpkg --version | head -n 1; else echo "skipped dpkg: not installed"; fi
"#;

#[test]
fn ordinary_work_runs_under_both_profiles() {
    if !can_filter() {
        return;
    }
    for security in [Security::Default, Security::Restricted] {
        let dir = tempfile::tempdir().unwrap();
        let out = sh(security, dir.path(), ORDINARY_WORK);
        let stdout = text(&out.stdout);
        eprintln!("{security:?}:\n{stdout}{}", text(&out.stderr));
        assert!(out.status.success(), "{security:?} failed: {out:?}");
        // Filtered (three programs), and setuid programs still work.
        assert!(stdout.contains("NoNewPrivs:0 Seccomp:2 Seccomp_filters:3"));
        assert!(stdout.contains("tar ok"));
    }
}

#[test]
fn namespaces_and_keyrings_are_refused_from_programs() {
    if !can_filter() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyctl = nr::__NR_keyctl;
    // KEYCTL_GET_KEYRING_ID of the session keyring, without creating it.
    let script = format!(
        "unshare -U true 2>&1; echo \"unshare: $?\"
        if command -v python3 >/dev/null; then python3 -c '
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall({keyctl}, 0, -3, 0)
print(\"keyctl:\", r, ctypes.get_errno())
'; fi"
    );
    for security in [Security::Default, Security::Restricted] {
        let out = sh(security, dir.path(), &script);
        let stdout = text(&out.stdout);
        eprintln!("{security:?}:\n{stdout}");
        assert!(stdout.contains("Operation not permitted"), "{stdout}");
        assert!(!stdout.contains("unshare: 0"), "{stdout}");
        if !stdout.contains("keyctl:") {
            eprintln!("skipped the keyctl check: no python3");
        } else {
            assert!(stdout.contains("keyctl: -1 1\n"), "{stdout}");
        }
    }
}

/// What a profile does with a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Passes: the same result as without a filter.
    Allow,
    /// Fails with EPERM.
    Deny,
    /// Fails with ENOSYS.
    Nosys,
}

struct Probe {
    name: &'static str,
    nr: u32,
    args: [i64; 6],
    default: Expect,
    restricted: Expect,
}

const MAX_PROBES: usize = 96;

/// Makes each call in a forked child (under `filter` if given) and returns
/// 0 for success or the errno of each.
fn probe(filter: Option<&Filter>, probes: &[Probe]) -> Vec<i32> {
    assert!(probes.len() <= MAX_PROBES);
    let mut fds = [0; 2];
    // SAFETY: a plain pipe(2) into a local array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only makes system calls on memory prepared before
    // the fork (no allocation, no locks) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut out = [0i32; MAX_PROBES];
        if let Some(f) = filter
            && f.apply().is_err()
        {
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(2) };
        }
        for (i, p) in probes.iter().enumerate() {
            let [a, b, c, d, e, f] = p.args;
            // SAFETY: the probes' arguments are integers, or pointers to
            // memory that outlives the child, chosen to be harmless.
            let rc = unsafe { libc::syscall(i64::from(p.nr), a, b, c, d, e, f) };
            if p.nr == nr::__NR_clone && rc == 0 {
                // SAFETY: the clone probe's new process leaves at once.
                unsafe { libc::_exit(0) };
            }
            if p.nr == nr::__NR_clone && rc > 0 {
                // SAFETY: reaping the clone probe's process.
                unsafe { libc::waitpid(rc as i32, std::ptr::null_mut(), 0) };
            }
            // SAFETY: errno of this thread.
            out[i] = if rc < 0 {
                unsafe { *libc::__errno_location() }
            } else {
                0
            };
        }
        // SAFETY: writing a local array to our pipe, then leaving.
        unsafe {
            libc::write(w.as_raw_fd(), out.as_ptr().cast(), size_of_val(&out));
            libc::_exit(0);
        }
    }
    drop(w);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "probe child: {status:#x}"
    );
    let mut bytes = Vec::new();
    std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .take(probes.len())
        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn denied_calls_fail_with_the_promised_errno_and_the_rest_pass() {
    if !can_filter() {
        return;
    }
    use Expect::{Allow, Deny, Nosys};
    // Arguments for the pointer-taking probes; they outlive the children.
    let c = |s: &str| CString::new(s).unwrap();
    let (none, missing, empty, nofs, nomod, tmpfs) = (
        c("none"),
        c("/nonexistent-msb-probe"),
        c(""),
        c("msb-no-such-fs"),
        c("msb_no_such_module"),
        c("tmpfs"),
    );
    let p = |s: &CString| s.as_ptr() as i64;
    let (missing, empty) = (p(&missing), p(&empty));
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let tty_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().unwrap())
        .unwrap();
    let tty = i64::from(tty_file.as_raw_fd());
    let byte = b"x".as_ptr() as i64;
    let mut winsize = [0u16; 4];
    let winsize = winsize.as_mut_ptr() as i64;
    let me = i64::from(std::process::id() as i32);
    let sigchld = i64::from(libc::SIGCHLD);

    let probe_list = |name, nr, args, default, restricted| Probe {
        name,
        nr,
        args,
        default,
        restricted,
    };
    let both = |name, nr, args, expect| probe_list(name, nr, args, expect, expect);
    let mut probes = vec![
        both("getpid", nr::__NR_getpid, [0; 6], Allow),
        both("keyctl", nr::__NR_keyctl, [0x7fff, 0, 0, 0, 0, 0], Deny),
        both("add_key", nr::__NR_add_key, [0; 6], Deny),
        both("request_key", nr::__NR_request_key, [0; 6], Deny),
        both("bpf", nr::__NR_bpf, [0x7fff, 0, 0, 0, 0, 0], Deny),
        both(
            "perf_event_open",
            nr::__NR_perf_event_open,
            [0, 0, -1, -1, 0, 0],
            Deny,
        ),
        both(
            "userfaultfd",
            nr::__NR_userfaultfd,
            [0x7fff_ffff, 0, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "mount",
            nr::__NR_mount,
            [p(&none), missing, p(&tmpfs), 0, 0, 0],
            Deny,
        ),
        both("umount2", nr::__NR_umount2, [missing, 0, 0, 0, 0, 0], Deny),
        both(
            "pivot_root",
            nr::__NR_pivot_root,
            [missing, missing, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "move_mount",
            nr::__NR_move_mount,
            [-1, empty, -1, empty, 0, 0],
            Deny,
        ),
        both(
            "open_tree",
            nr::__NR_open_tree,
            [-1, missing, 0, 0, 0, 0],
            Deny,
        ),
        both("fsopen", nr::__NR_fsopen, [p(&nofs), 0, 0, 0, 0, 0], Deny),
        both("fsconfig", nr::__NR_fsconfig, [-1, 0, 0, 0, 0, 0], Deny),
        both("fsmount", nr::__NR_fsmount, [-1, 0, 0, 0, 0, 0], Deny),
        both("fspick", nr::__NR_fspick, [-1, missing, 0, 0, 0, 0], Deny),
        both(
            "mount_setattr",
            nr::__NR_mount_setattr,
            [-1, empty, 0, 0, 0, 0],
            Deny,
        ),
        both("unshare", nr::__NR_unshare, [-1, 0, 0, 0, 0, 0], Deny),
        both("setns", nr::__NR_setns, [-1, 0, 0, 0, 0, 0], Deny),
        both(
            "clone(CLONE_NEWUSER)",
            nr::__NR_clone,
            [sigchld | i64::from(nr::CLONE_NEWUSER), 0, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "clone(CLONE_NEWNET) with junk in the high half",
            nr::__NR_clone,
            [
                sigchld | i64::from(nr::CLONE_NEWNET) | 1 << 40,
                0,
                0,
                0,
                0,
                0,
            ],
            Deny,
        ),
        both(
            "clone(fork)",
            nr::__NR_clone,
            [sigchld, 0, 0, 0, 0, 0],
            Allow,
        ),
        both("clone3", nr::__NR_clone3, [0; 6], Nosys),
        both(
            "file_getattr (the first newer than the profile)",
            nr::__NR_file_getattr,
            [-1, 0, 0, 0, 0, 0],
            Nosys,
        ),
        both("number 511 (the last given ENOSYS)", 511, [0; 6], Nosys),
        both("number 600 (past that)", 600, [0; 6], Deny),
        both(
            "file_setattr (newer than the profile)",
            nr::__NR_file_setattr,
            [-1, 0, 0, 0, 0, 0],
            Nosys,
        ),
        both(
            "kexec_load",
            nr::__NR_kexec_load,
            [0, 0, 0, 0xdead_0000, 0, 0],
            Deny,
        ),
        both(
            "kexec_file_load",
            nr::__NR_kexec_file_load,
            [-1, -1, 0, 0, 0xffff, 0],
            Deny,
        ),
        both("init_module", nr::__NR_init_module, [0; 6], Deny),
        both(
            "finit_module",
            nr::__NR_finit_module,
            [-1, empty, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "delete_module",
            nr::__NR_delete_module,
            [p(&nomod), 0, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "open_by_handle_at",
            nr::__NR_open_by_handle_at,
            [-1, 0, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "name_to_handle_at",
            nr::__NR_name_to_handle_at,
            [-1, missing, 0, 0, 0, 0],
            Deny,
        ),
        both("swapon", nr::__NR_swapon, [missing, 0, 0, 0, 0, 0], Deny),
        both("swapoff", nr::__NR_swapoff, [missing, 0, 0, 0, 0, 0], Deny),
        // Wrong magic numbers: EINVAL even for root.
        both("reboot", nr::__NR_reboot, [0; 6], Deny),
        // SYSLOG_ACTION_SIZE_BUFFER: a read.
        both("syslog", nr::__NR_syslog, [10, 0, 0, 0, 0, 0], Deny),
        both("acct", nr::__NR_acct, [missing, 0, 0, 0, 0, 0], Deny),
        // Both null: changes nothing.
        both("settimeofday", nr::__NR_settimeofday, [0; 6], Deny),
        both(
            "clock_settime",
            nr::__NR_clock_settime,
            [0x7fff, 0, 0, 0, 0, 0],
            Deny,
        ),
        both("adjtimex", nr::__NR_adjtimex, [0; 6], Deny),
        both(
            "clock_adjtime",
            nr::__NR_clock_adjtime,
            [0x7fff, 0, 0, 0, 0, 0],
            Deny,
        ),
        both("quotactl", nr::__NR_quotactl, [0; 6], Deny),
        both(
            "process_vm_readv",
            nr::__NR_process_vm_readv,
            [me, 0, 0, 0, 0, 0],
            Deny,
        ),
        both(
            "process_vm_writev",
            nr::__NR_process_vm_writev,
            [me, 0, 0, 0, 0, 0],
            Deny,
        ),
        both("kcmp", nr::__NR_kcmp, [me, me, 0x7fff, 0, 0, 0], Deny),
        both(
            "pidfd_getfd",
            nr::__NR_pidfd_getfd,
            [-1, 0, 0, 0, 0, 0],
            Deny,
        ),
        both("io_uring_setup", nr::__NR_io_uring_setup, [0; 6], Deny),
        both(
            "ioctl(TIOCSTI)",
            nr::__NR_ioctl,
            [tty, i64::from(TIOCSTI), byte, 0, 0, 0],
            Deny,
        ),
        both(
            "ioctl(TIOCSTI) with junk in the high half",
            nr::__NR_ioctl,
            [tty, i64::from(TIOCSTI) | 1 << 32, byte, 0, 0, 0],
            Deny,
        ),
        both(
            "ioctl(TIOCLINUX)",
            nr::__NR_ioctl,
            [tty, i64::from(TIOCLINUX), byte, 0, 0, 0],
            Deny,
        ),
        both(
            "ioctl(TIOCGWINSZ)",
            nr::__NR_ioctl,
            [tty, libc::TIOCGWINSZ as i64, winsize, 0, 0, 0],
            Allow,
        ),
        both(
            "socket(AF_INET)",
            nr::__NR_socket,
            [libc::AF_INET.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
            Allow,
        ),
        both(
            "socket(AF_UNIX)",
            nr::__NR_socket,
            [libc::AF_UNIX.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
            Allow,
        ),
        both(
            "socket(AF_NETLINK)",
            nr::__NR_socket,
            [libc::AF_NETLINK.into(), libc::SOCK_RAW.into(), 0, 0, 0, 0],
            Allow,
        ),
        both(
            "socket(AF_VSOCK)",
            nr::__NR_socket,
            [libc::AF_VSOCK.into(), libc::SOCK_STREAM.into(), 0, 0, 0, 0],
            Deny,
        ),
        both(
            "socket(AF_ALG)",
            nr::__NR_socket,
            [libc::AF_ALG.into(), libc::SOCK_SEQPACKET.into(), 0, 0, 0, 0],
            Deny,
        ),
        probe_list(
            "socket(AF_PACKET)",
            nr::__NR_socket,
            [libc::AF_PACKET.into(), libc::SOCK_RAW.into(), 0, 0, 0, 0],
            Allow,
            Deny,
        ),
        both(
            "personality(query)",
            nr::__NR_personality,
            [0xffff_ffff, 0, 0, 0, 0, 0],
            Allow,
        ),
        // PTRACE_PEEKUSER of the parent, which does not trace us: ESRCH.
        probe_list(
            "ptrace",
            nr::__NR_ptrace,
            [
                3,
                i64::from(std::os::unix::process::parent_id()),
                0,
                0,
                0,
                0,
            ],
            Allow,
            Deny,
        ),
        probe_list(
            "chroot",
            nr::__NR_chroot,
            [missing, 0, 0, 0, 0, 0],
            Allow,
            Deny,
        ),
        // Last: it changes the probing process (ADDR_NO_RANDOMIZE).
        both(
            "personality(ADDR_NO_RANDOMIZE)",
            nr::__NR_personality,
            [0x0004_0000, 0, 0, 0, 0, 0],
            Deny,
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    probes.splice(
        1..1,
        [
            both("iopl", nr::__NR_iopl, [4, 0, 0, 0, 0, 0], Deny),
            both("ioperm", nr::__NR_ioperm, [0x1_0000, 1, 1, 0, 0, 0], Deny),
            both("uselib", nr::__NR_uselib, [0; 6], Deny),
            both("ustat", nr::__NR_ustat, [0; 6], Deny),
            both("sysfs", nr::__NR_sysfs, [0x7fff, 0, 0, 0, 0, 0], Deny),
            both("_sysctl", nr::__NR__sysctl, [0; 6], Deny),
            both("create_module", nr::__NR_create_module, [0; 6], Deny),
            // getpid in the x32 convention (bit 30 set): not on the list.
            both("x32 getpid", 0x4000_0000 | nr::__NR_getpid, [0; 6], Deny),
            probe_list(
                "modify_ldt",
                nr::__NR_modify_ldt,
                [0x7fff, 0, 0, 0, 0, 0],
                Allow,
                Deny,
            ),
        ],
    );

    let unfiltered = probe(None, &probes);
    let mut failures = Vec::new();
    for security in [Security::Default, Security::Restricted] {
        let got = probe(Some(&filter(security).unwrap()), &probes);
        for ((p, &base), &errno) in probes.iter().zip(&unfiltered).zip(&got) {
            let expect = match security {
                Security::Default => p.default,
                Security::Restricted => p.restricted,
                Security::Privileged => unreachable!("not in the list above"),
            };
            let wanted = match expect {
                Allow => base,
                Deny => libc::EPERM,
                Nosys => libc::ENOSYS,
            };
            if expect != Allow && base == wanted {
                eprintln!(
                    "{security:?} {}: cannot tell, the kernel says {base} without a filter",
                    p.name
                );
                continue;
            }
            eprintln!("{security:?} {}: {errno} (unfiltered {base})", p.name);
            if errno != wanted {
                failures.push(format!(
                    "{security:?} {}: got {errno}, want {wanted}",
                    p.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_privileged_profile_has_no_filter() {
    assert!(matches!(
        filter(Security::Privileged),
        Err(msb_runtime::seccomp::SeccompError::Unconfined)
    ));
}
