//! The security profiles hold the same on both backends: one `msb run`
//! per profile and backend, with a probe that reads the command's
//! privileges and tries what each profile refuses, and does some ordinary
//! work. The real binary, real namespaces, a real microVM.
//!
//! Needs `/usr/bin/python3` (which a fresh root shares through `/usr`);
//! the namespace half needs root or unprivileged user namespaces, the
//! microVM half QEMU. Skips with a reason otherwise; scripts/test runs it
//! rootless too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Reports one line per check; an errno name where a call failed.
const PROBE: &str = r#"
import ctypes, errno, fcntl, os, platform, subprocess, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return line.split()[1]
def call(r):
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
def oserror(f):
    try:
        f()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
nr = {'x86_64': (250, 321), 'aarch64': (219, 280)}[platform.machine()]
L = ctypes.c_long
print('caps', status('CapEff'))
print('nnp', status('NoNewPrivs'))
print('seccomp', status('Seccomp'))
# KEYCTL_GET_KEYRING_ID of the user keyring; BPF_MAP_CREATE without attributes.
print('keyctl', call(libc.syscall(L(nr[0]), L(0), L(-4), L(0))))
print('bpf', call(libc.syscall(L(nr[1]), L(0), L(0), L(0))))
print('unshare', call(libc.unshare(0x10000000)))
print('tiocsti', oserror(lambda: fcntl.ioctl(0, termios.TIOCSTI, b'x')))
print('chroot', oserror(lambda: os.chroot('/')))
out = subprocess.run(['sh', '-c', 'echo hi | tr a-z A-Z; ls / >/dev/null'], capture_output=True)
print('sh', out.stdout.decode().strip(), out.returncode)
"#;

fn expected(profile: &str) -> String {
    let (caps, nnp, chroot) = match profile {
        // The default keep set (see msb-security's caps).
        "default" => ("00000000a00405fb", 0, "ok"),
        _ => ("0000000000000000", 1, "EPERM"),
    };
    format!(
        "caps {caps}\nnnp {nnp}\nseccomp 2\nkeyctl EPERM\nbpf EPERM\nunshare EPERM\n\
         tiocsti EPERM\nchroot {chroot}\nsh HI 0\n"
    )
}

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy the unprivileged user can reach).
fn bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn have_python() -> bool {
    let ok = Path::new("/usr/bin/python3").exists();
    if !ok {
        eprintln!("skipped: the probe needs /usr/bin/python3");
    }
    ok
}

/// Root, or rootless as a user the kernel lets create user namespaces.
fn have_namespaces() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ok = Command::new("unshare")
        .args(["--user", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
    }
    ok
}

fn have_qemu() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: qemu-system-x86_64 is not installed (scripts/setup installs it)");
    }
    ok
}

/// Runs the probe under each profile on `backend`; returns the mismatches.
fn probe(backend: &str) -> Vec<String> {
    let home = tempfile::tempdir().unwrap();
    // One guest kernel cache for every home of the run.
    let assets = std::env::var_os("MSB_VM_ASSETS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"),
        PathBuf::from,
    );
    let mut failures = Vec::new();
    for profile in ["default", "restricted", "privileged"] {
        let o = Command::new(bin())
            .args(["run", "--backend", backend, "--security", profile, "--"])
            .args(["python3", "-c", PROBE])
            .env("MSB_HOME", home.path())
            .env("MSB_VM_ASSETS", &assets)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        if profile == "privileged" {
            let wanted = if backend == "vm" {
                // Every capability the guest kernel has, no filter.
                let lines: Vec<&str> = out.lines().collect();
                let full = lines
                    .first()
                    .and_then(|l| l.strip_prefix("caps "))
                    .is_some_and(|c| {
                        u64::from_str_radix(c, 16)
                            .is_ok_and(|m| m != 0 && (m + 1).is_power_of_two())
                    });
                full && lines.get(1..3) == Some(&["nnp 0", "seccomp 0"][..])
                    && lines.contains(&"unshare ok")
            } else {
                // Refused before anything starts: the host's kernel.
                o.status.code() == Some(1) && err.contains("for microVM sandboxes only")
            };
            if !wanted {
                failures.push(format!(
                    "{backend} --security privileged: status {:?}\n{out}{err}",
                    o.status.code()
                ));
            }
            continue;
        }
        if !o.status.success() || out != expected(profile) {
            failures.push(format!(
                "{backend} --security {profile}: status {:?}\n{out}{}",
                o.status.code(),
                err
            ));
        }
    }
    failures
}

#[test]
fn profiles_on_the_namespace_backend() {
    if have_python() && have_namespaces() {
        let failures = probe("namespace");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn profiles_in_a_microvm() {
    if have_python() && have_qemu() {
        let failures = probe("vm");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
