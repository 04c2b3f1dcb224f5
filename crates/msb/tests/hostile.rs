//! The attacker's test suite: the command inside a sandbox is hostile,
//! runs as root in its sandbox and races whatever it can see. Each test is
//! one attack, run through the real `msb` binary with a temporary
//! MSB_HOME; the test fails when the attack works.
//!
//! Every attack is harmless even when it succeeds: sysctls get the value
//! they already have, sysrq is opened for writing and never written, files
//! are created only in directories the test owns, the block device is a
//! loop device over a temporary file, times of host device nodes are put
//! back, and everything a test starts (sandboxes, loop devices, processes)
//! is ended by the test, also when it fails.
//!
//! Needs root (skips with a reason otherwise), `/usr/bin/python3` (the
//! probes are Python run inside the sandbox), and for some attacks
//! `/dev/fuse` and loop devices.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Host uid volumes and bind-mounted files are stored under
/// (`msb_spec::IdMap::ROOTFUL`).
const ROOTFUL_HOST_BASE: u32 = 0x6FFF_0000;
/// The lowest host id a sandbox's leased range starts at (2048 ranges of
/// 65536 below the storage range, see `msb_runtime::IdLease`).
const LEASED_LOW: u32 = ROOTFUL_HOST_BASE - 2048 * 65536;

/// How long one test may take in all, with a margin under a minute.
const TEST_BUDGET: Duration = Duration::from_secs(55);

/// Both security profiles: every attack must fail under each.
const PROFILES: [&str; 2] = ["default", "restricted"];

// ---------------------------------------------------------------------
// Skipping
// ---------------------------------------------------------------------

fn skip(test: &str, why: &str) -> bool {
    eprintln!("skipped {test}: {why}");
    false
}

/// Root and a host python3 (which the default root shares through /usr).
fn can_attack(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip(test, "running sandboxes needs root");
    }
    if !Path::new("/usr/bin/python3").exists() {
        return skip(test, "the probes need /usr/bin/python3");
    }
    true
}

fn have_fuse(test: &str) -> bool {
    Path::new("/dev/fuse").exists() || skip(test, "no /dev/fuse (served mounts need FUSE)")
}

fn have_loop(test: &str) -> bool {
    let ok = Path::new("/dev/loop-control").exists()
        && Command::new("losetup")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    ok || skip(
        test,
        "no loop devices (/dev/loop-control or losetup missing)",
    )
}

// ---------------------------------------------------------------------
// Running msb, bounded in time
// ---------------------------------------------------------------------

/// A temporary MSB_HOME under /var/tmp (where a default root of today's
/// kind would show it, like the real default `~/.microsandbox`), with the
/// test's time budget. Dropping it ends every sandbox started in it.
struct Home {
    dir: tempfile::TempDir,
    deadline: Instant,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: scratch("msb-hostile-home-"),
            deadline: Instant::now() + TEST_BUDGET,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn path_str(&self) -> &str {
        self.path().to_str().unwrap()
    }

    /// `msb ARGS` with this home and no input, not yet started.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_msb"));
        c.args(args)
            .env("MSB_HOME", self.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `msb ARGS` to completion within the test's budget.
    fn msb(&self, args: &[&str]) -> Output {
        self.output(self.cmd(args), &args.join(" "))
    }

    /// Runs `cmd` to completion within the test's budget, collecting its
    /// output; kills it and fails the test if it runs out of time.
    fn output(&self, mut cmd: Command, what: &str) -> Output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start msb {what}: {e}"));
        let out = Collector::start(child.stdout.take().unwrap());
        let err = Collector::start(child.stderr.take().unwrap());
        let status = self.wait(&mut child, what);
        Output {
            status,
            stdout: out.finish(),
            stderr: err.finish(),
        }
    }

    /// Waits for `child` within the budget; kills it and fails if it is
    /// still running when the budget is spent.
    fn wait(&self, child: &mut Child, what: &str) -> ExitStatus {
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("msb {what} still ran when the test's time was up; killed it");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Creates and starts the named sandbox `name` with `extra` flags.
    fn start_sandbox(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["create", name];
        args.extend(extra);
        let o = self.msb(&args);
        assert!(o.status.success(), "msb create {name}: {}", text(&o.stderr));
        let o = self.msb(&["start", name]);
        assert!(o.status.success(), "msb start {name}: {}", text(&o.stderr));
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // The supervisors this test started (their pid files name them):
        // killing one takes its sandbox with it.
        let Ok(dir) = std::fs::read_dir(self.path().join("run/sandboxes")) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pids) = std::fs::read_to_string(entry.path())
                && let Some(pid) = pids.split_whitespace().nth(1)
                && let Ok(pid) = pid.parse::<i32>()
                && pid > 1
            {
                // SAFETY: a plain kill(2) of a supervisor this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A temporary directory under /var/tmp, mode 0700, owned by the test.
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// A directory anyone may write (for a sandbox root that is not host
/// root) inside `parent`, which stays 0700 so no other host user reaches it.
fn open_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Reads a stream to its end on a thread; [`Collector::finish`] returns
/// what arrived, waiting at most a few seconds for the end (a process left
/// in a sandbox may hold the pipe).
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collector {
    fn start(mut r: impl Read + Send + 'static) -> Collector {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        Collector { buf, done }
    }

    fn finish(self) -> Vec<u8> {
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        std::mem::take(&mut *self.buf.lock().unwrap())
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

// ---------------------------------------------------------------------
// Probes and findings
// ---------------------------------------------------------------------

/// Prepended to every Python probe: `ok(...)` and `bad(...)` report one
/// check each; a probe ends by printing `END`.
const PY_PRELUDE: &str = r#"
import os, sys
def ok(m): print('OK', m, flush=True)
def bad(m): print('BAD', m, flush=True)
def info(m): print('INFO', m, flush=True)
"#;

fn py(body: &str) -> String {
    format!("{PY_PRELUDE}\n{body}")
}

/// Everything an attack got away with; the test fails at the end listing
/// all of it (so one run shows every hole, not only the first).
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn fail(&mut self, m: impl Into<String>) {
        self.0.push(m.into());
    }

    fn check(&mut self, ok: bool, m: impl FnOnce() -> String) {
        if !ok {
            self.0.push(m());
        }
    }

    /// Takes a probe's verdicts: every `BAD` line is a finding, and a probe
    /// that did not reach `END` (did not run, or was cut short) is one.
    fn probe(&mut self, what: &str, o: &Output) {
        let out = text(&o.stdout);
        for l in out.lines().filter(|l| l.starts_with("BAD ")) {
            self.0.push(format!("{what}: {}", &l[4..]));
        }
        if !out.lines().any(|l| l == "END") {
            self.0
                .push(format!("{what}: the probe did not complete\n{}", show(o)));
        }
    }

    fn finish(self, attack: &str) {
        if !self.0.is_empty() {
            panic!(
                "{attack}: {} finding(s):\n  - {}",
                self.0.len(),
                self.0.join("\n  - ")
            );
        }
    }
}

/// `msb run [FLAGS] --security PROFILE -- python3 -c PROBE ARGS`.
fn run_probe(home: &Home, profile: &str, flags: &[&str], probe: &str, args: &[&str]) -> Output {
    let script = py(probe);
    let mut a = vec!["run", "--security", profile];
    a.extend(flags);
    a.extend(["--", "python3", "-c", script.as_str()]);
    a.extend(args);
    home.output(
        home.cmd(&a),
        &format!("run --security {profile} {flags:?} (probe)"),
    )
}

/// `msb exec NAME -- python3 -c PROBE ARGS`.
/// Runs `probe` in a fresh home under each security profile and fails
/// with everything it found (`what` names the attack).
fn probe_each_profile(probe: &str, what: &str) {
    let home = Home::new();
    let mut f = Findings::default();
    for profile in PROFILES {
        let o = run_probe(&home, profile, &[], probe, &[]);
        f.probe(&format!("--security {profile}"), &o);
    }
    f.finish(what);
}

fn exec_probe(home: &Home, name: &str, probe: &str, args: &[&str]) -> Output {
    let script = py(probe);
    let mut a = vec!["exec", name, "--", "python3", "-c", script.as_str()];
    a.extend(args);
    home.output(home.cmd(&a), &format!("exec {name} (probe)"))
}

// ---------------------------------------------------------------------
// 0. Who the sandbox's root is
// ---------------------------------------------------------------------

/// `id -u` and the first line of uid_map/gid_map as the sandbox sees them.
fn check_id_map(f: &mut Findings, what: &str, o: &Output) {
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    if !o.status.success() || lines.len() < 3 {
        f.fail(format!("{what}: could not read ids\n{}", show(o)));
        return;
    }
    f.check(lines[0] == "0", || {
        format!("{what}: id -u is {} (root expected)", lines[0])
    });
    for (map, line) in [("uid_map", lines[1]), ("gid_map", lines[2])] {
        let host = line.split_whitespace().nth(1).unwrap_or("?");
        f.check(host != "0" && host != "?", || {
            format!("{what}: {map} is {line:?}: sandbox root is host root (no user namespace)")
        });
        let base: u32 = host.parse().unwrap_or(0);
        let count = line.split_whitespace().nth(2).unwrap_or("?");
        f.check(
            (LEASED_LOW..ROOTFUL_HOST_BASE).contains(&base) && count == "65536",
            || format!("{what}: {map} is {line:?}, expected a leased range of 65536 below {ROOTFUL_HOST_BASE}"),
        );
    }
}

const ID_SCRIPT: &str = "id -u; head -n1 /proc/self/uid_map; head -n1 /proc/self/gid_map";

#[test]
fn sandbox_root_is_an_unprivileged_host_user() {
    if !can_attack("sandbox_root_is_an_unprivileged_host_user") {
        return;
    }
    let home = Home::new();
    let mut f = Findings::default();
    for profile in PROFILES {
        let o = home.msb(&["run", "--security", profile, "--", "sh", "-c", ID_SCRIPT]);
        check_id_map(&mut f, &format!("run --security {profile}"), &o);
    }
    home.start_sandbox("ids", &[]);
    let o = home.msb(&["exec", "ids", "--", "sh", "-c", ID_SCRIPT]);
    check_id_map(&mut f, "exec", &o);
    f.finish("sandbox root is host root");
}

// ---------------------------------------------------------------------
// 1. Host kernel state through /proc and /sys
// ---------------------------------------------------------------------

const SYSCTL_PROBE: &str = r#"
for p in ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/panic', '/proc/sys/vm/swappiness']:
    try:
        with open(p, 'rb') as fh:
            v = fh.read()
    except OSError as e:
        ok(f'{p}: unreadable ({e.strerror})')
        continue
    try:
        fd = os.open(p, os.O_WRONLY)
    except OSError as e:
        ok(f'{p}: open for writing refused ({e.strerror})')
        continue
    try:
        # The value it already has: harmless if it gets through.
        os.write(fd, v)
        bad(f'{p}: wrote the host value {v!r} back (host sysctl writable)')
    except OSError as e:
        ok(f'{p}: write refused ({e.strerror})')
    finally:
        os.close(fd)
p = '/proc/sysrq-trigger'
if os.path.exists(p):
    try:
        fd = os.open(p, os.O_WRONLY)
        os.close(fd)   # never written
        bad(f'{p}: opened for writing')
    except OSError as e:
        ok(f'{p}: open for writing refused ({e.strerror})')
else:
    info(f'{p}: absent (this kernel has no sysrq)')
for p in ['/proc/sys', '/proc/sysrq-trigger', '/proc/irq', '/proc/bus']:
    if not os.path.exists(p):
        info(f'{p}: absent')
        continue
    if os.statvfs(p).f_flag & os.ST_RDONLY:
        ok(f'{p}: read-only')
    else:
        bad(f'{p}: on a writable mount (should be read-only)')
print('END')
"#;

#[test]
fn host_sysctls_and_sysrq_are_out_of_reach() {
    if !can_attack("host_sysctls_and_sysrq_are_out_of_reach") {
        return;
    }
    probe_each_profile(SYSCTL_PROBE, "host sysctls");
}

const MASK_PROBE: &str = r#"
import re
for p in ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug']:
    if not os.path.exists(p):
        info(f'{p}: absent')
        continue
    try:
        with open(p, 'rb') as fh:
            n = len(fh.read(4096))
    except OSError as e:
        ok(f'{p}: unreadable ({e.strerror})')
        continue
    if n:
        bad(f'{p}: {n} bytes of host kernel state readable (should be masked)')
    else:
        ok(f'{p}: empty')
if os.statvfs('/sys').f_flag & os.ST_RDONLY:
    ok('/sys: read-only')
else:
    bad('/sys: on a writable mount')
# A host sysfs attribute, written back with its current selection.
tried = False
for p in ['/sys/kernel/mm/transparent_hugepage/enabled',
          '/sys/kernel/mm/transparent_hugepage/defrag']:
    try:
        with open(p) as fh:
            cur = fh.read()
    except OSError:
        continue
    m = re.search(r'\[([^\]]+)\]', cur)
    if not m:
        continue
    tried = True
    try:
        fd = os.open(p, os.O_WRONLY)
    except OSError as e:
        ok(f'{p}: open for writing refused ({e.strerror})')
        continue
    try:
        os.write(fd, m.group(1).encode())
        bad(f'{p}: wrote the current value {m.group(1)!r} back (host sysfs writable)')
    except OSError as e:
        ok(f'{p}: write refused ({e.strerror})')
    finally:
        os.close(fd)
if not tried:
    info('no transparent_hugepage attribute visible')
# The cgroup filesystem: move a throwaway child into any cgroup.procs
# found (it exits at once, wherever it lands).
found = []
for root, dirs, files in os.walk('/sys/fs/cgroup'):
    if root.count('/') > 6:
        dirs[:] = []
    if 'cgroup.procs' in files:
        found.append(os.path.join(root, 'cgroup.procs'))
    if len(found) >= 20:
        break
if not found:
    info('no cgroup.procs under /sys/fs/cgroup')
for p in found:
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(p, os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os._exit(0)
        except OSError:
            os._exit(1)
    _, st = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(st) == 0:
        bad(f'{p}: a process moved itself into this cgroup')
    else:
        ok(f'{p}: refused')
print('END')
"#;

#[test]
fn kernel_state_in_proc_and_sys_is_masked_or_read_only() {
    if !can_attack("kernel_state_in_proc_and_sys_is_masked_or_read_only") {
        return;
    }
    probe_each_profile(MASK_PROBE, "kernel state in /proc and /sys");
}

// ---------------------------------------------------------------------
// 2. What `msb exec` exposes to a racer already in the sandbox
// ---------------------------------------------------------------------

/// What the probes that trace other processes start with (prepended by
/// [`traced`]).
const PTRACE_PRELUDE: &str = r#"
import time, ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
WALL = 0x40000000
"#;

/// `probe` with [`PTRACE_PRELUDE`] before it.
fn traced(probe: &str) -> String {
    format!("{PTRACE_PRELUDE}{probe}")
}

/// Loops over every other process of the sandbox: resolves and reopens its
/// descriptors, reads its environment and command line, and tries to
/// attach with ptrace (detaching at once if it gets in). Prints `READY`,
/// then what it saw when told to stop (the file /tmp/hostile-racer-stop)
/// or after argv[1] seconds.
const RACER: &str = r#"
me = os.getpid()
stop = '/tmp/hostile-racer-stop'
deadline = time.time() + float(sys.argv[1])
targets, reopened, cmdlines, envs, pids, attached = set(), set(), set(), set(), set(), set()
print('READY', me, flush=True)

def attach(pid):
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        return
    try:
        with open('/proc/%d/comm' % pid) as fh:
            comm = fh.read().strip()
    except OSError:
        comm = '?'
    attached.add('%d %s' % (pid, comm))
    # Let go at once: stop it, wait for the stop (or its end), detach.
    libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
    end = time.time() + 2
    while time.time() < end:
        try:
            r, _ = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            break
        if r == pid:
            break
        time.sleep(0.001)
    libc.ptrace(PTRACE_DETACH, pid, None, None)

n = 0
while time.time() < deadline:
    n += 1
    if n % 64 == 0 and os.path.exists(stop):
        break
    for name in os.listdir('/proc'):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        pids.add(pid)
        base = '/proc/' + name
        try:
            for fd in os.listdir(base + '/fd'):
                link = base + '/fd/' + fd
                try:
                    t = os.readlink(link)
                    targets.add(t)
                except OSError:
                    continue
                try:
                    # Read-only, closed at once: only whether it opens.
                    os.close(os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
                    reopened.add(t)
                except OSError:
                    pass
        except OSError:
            pass
        try:
            with open(base + '/environ', 'rb') as fh:
                for var in fh.read().split(b'\0'):
                    if var:
                        envs.add(var.decode('utf-8', 'replace'))
        except OSError:
            pass
        try:
            with open(base + '/cmdline', 'rb') as fh:
                cmdlines.add(fh.read().replace(b'\0', b' ').decode('utf-8', 'replace'))
        except OSError:
            pass
        attach(pid)
print('LOOPS', n)
print('PIDS', len(pids))
for t in sorted(targets): print('FD', t)
for t in sorted(reopened): print('REOPENED', t)
for c in sorted(cmdlines): print('CMDLINE', c)
for e in sorted(envs): print('ENV', e)
for a in sorted(attached): print('ATTACHED', a)
print('END', flush=True)
"#;

/// Spawns `msb ARGS` with piped stdout delivered line by line.
fn spawn_lines(home: &Home, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = home
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until one satisfies `until` or `timeout` passes.
fn lines_until(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) -> (Vec<String>, bool) {
    let end = Instant::now() + timeout;
    let mut v = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = until(&l);
                v.push(l);
                if done {
                    return (v, true);
                }
            }
            Err(_) => return (v, false),
        }
    }
}

/// Makes `fd` (a close-on-exec descriptor of the test) descriptor `at` of
/// the spawned process, inheritable, as a caller's open file would be.
fn pass_fd(cmd: &mut Command, fd: RawFd, at: RawFd) {
    // SAFETY: dup2 is async-signal-safe; `fd` stays open in the parent
    // until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, at) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn exec_leaks_nothing_to_a_racer_in_the_sandbox() {
    if !can_attack("exec_leaks_nothing_to_a_racer_in_the_sandbox") {
        return;
    }
    let home = Home::new();
    home.start_sandbox("race", &["-e", "MSB_HOSTILE_MODE=sandbox"]);
    let secret = format!(
        "hostile-secret-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut f = Findings::default();

    // A joined command's environment is the sandbox's alone.
    let mut env_cmd = home.cmd(&["exec", "race", "--", "env"]);
    env_cmd
        .env("MSB_HOSTILE_SECRET", &secret)
        .env("MSB_HOSTILE_CALLER", "caller");
    let o = home.output(env_cmd, "exec race -- env");
    f.check(o.status.success(), || {
        format!("exec env failed\n{}", show(&o))
    });
    let caller: std::collections::HashMap<String, String> = std::env::vars().collect();
    for line in text(&o.stdout).lines() {
        let name = line.split('=').next().unwrap_or("");
        f.check(!line.contains(&secret), || {
            format!("exec env shows the caller's secret: {line}")
        });
        let allowed = ["PATH", "HOME", "HOSTNAME", "TERM", "MSB_HOSTILE_MODE"];
        f.check(
            allowed.contains(&name)
                || !(caller.contains_key(name) || name.starts_with("MSB_HOSTILE_CALLER")),
            || format!("exec env has the caller's variable {line}"),
        );
    }

    // The racer, then 100 joins carrying a secret and an open catalog.
    let racer = py(&traced(RACER));
    let (mut racer_child, rx) = spawn_lines(
        &home,
        &["exec", "race", "--", "python3", "-c", &racer, "40"],
    );
    let (seen, ready) = lines_until(&rx, Duration::from_secs(15), |l| l.starts_with("READY"));
    if !ready {
        let _ = racer_child.kill();
        let _ = racer_child.wait();
        panic!("the racer never started: {seen:?}");
    }
    let db = std::fs::File::open(home.path().join("db/msb.db")).unwrap();
    let mut joins = 0;
    while joins < 100 && home.remaining() > Duration::from_secs(20) {
        let mut c = home.cmd(&["exec", "race", "--", "true"]);
        c.env("MSB_HOSTILE_SECRET", &secret);
        pass_fd(&mut c, db.as_raw_fd(), 7);
        let o = home.output(c, "exec race -- true");
        f.check(o.status.success(), || {
            format!("exec true failed\n{}", show(&o))
        });
        joins += 1;
    }
    let o = home.msb(&["exec", "race", "--", "touch", "/tmp/hostile-racer-stop"]);
    f.check(o.status.success(), || {
        format!("cannot stop the racer\n{}", show(&o))
    });
    let left = home.remaining().saturating_sub(Duration::from_secs(5));
    let (report, ended) = lines_until(&rx, left, |l| l == "END");
    let _ = racer_child.kill();
    let _ = racer_child.wait();
    assert!(ended, "the racer did not report: {report:?}");
    assert!(joins >= 20, "only {joins} joins fitted in the time budget");

    let home_str = home.path_str();
    // Attaches by command name: `true` after its exec, or msb's own code
    // (a tokio thread's name) between fork and exec.
    let mut attached = std::collections::BTreeMap::<&str, u32>::new();
    for l in &report {
        let msb_file = l.contains("msb.db") || l.contains(home_str);
        if l.contains(&secret) {
            f.fail(format!("racer read the caller's secret: {l}"));
        } else if l.starts_with("FD ") && msb_file {
            f.fail(format!("racer resolved a host descriptor of msb: {l}"));
        } else if l.starts_with("REOPENED ") && msb_file {
            f.fail(format!("racer opened msb's file through /proc/PID/fd: {l}"));
        } else if l.starts_with("ENV MSB_HOME=") {
            f.fail(format!("racer read msb's own environment: {l}"));
        } else if let Some(a) = l.strip_prefix("ATTACHED ") {
            let comm = a.split_once(' ').map_or(a, |(_, c)| c);
            *attached.entry(comm).or_default() += 1;
        }
    }
    // After its exec a joined command is a sandbox process like any other,
    // which the default profile lets sandbox processes trace (as Docker's
    // does); before it, it is msb's code holding the caller's memory.
    for (comm, n) in attached {
        if !["true", "touch"].contains(&comm) {
            f.fail(format!(
                "racer attached with ptrace to {n} process(es) named {comm:?}"
            ));
        }
    }
    if !f.0.is_empty() {
        let stats: Vec<&String> = report
            .iter()
            .filter(|l| l.starts_with("LOOPS") || l.starts_with("PIDS"))
            .collect();
        f.fail(format!("({joins} joins; racer {stats:?})"));
    }
    f.finish("msb exec leaks");
}

// ---------------------------------------------------------------------
// 3. Host block devices through a served mount
// ---------------------------------------------------------------------

/// A loop device over a file; detached when dropped.
struct LoopDev {
    dev: String,
}

impl LoopDev {
    fn attach(file: &Path) -> LoopDev {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", text(&o.stderr));
        LoopDev {
            dev: text(&o.stdout).trim().to_string(),
        }
    }

    /// `(major, minor)`.
    fn number(&self) -> (u32, u32) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
        let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
        (major as u32, minor as u32)
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// msb's guest metadata record (`crates/fsserver/src/record.rs`, version
/// 1) claiming a block device `major:minor`, mode 0666, root's.
fn block_device_record((major, minor): (u32, u32)) -> [u8; 20] {
    let rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    let mut rec = [0u8; 20];
    rec[0] = 1;
    rec[12..16].copy_from_slice(&(libc::S_IFBLK | 0o666).to_le_bytes());
    rec[16..20].copy_from_slice(&rdev.to_le_bytes());
    rec
}

/// Plants `record` on `file` from the host, as its `user.msb.meta`.
fn plant_record(file: &Path, record: &[u8; 20]) {
    let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and a 20-byte buffer.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.msb.meta".as_ptr(),
            record.as_ptr().cast(),
            record.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A tar archive whose one empty regular file `name` carries `record` as a
/// PAX `SCHILY.xattr.user.msb.meta` (what `msb volume export` writes and
/// `msb volume import` restores): the same plant, by anyone who can hand
/// over an archive.
fn record_tarball(path: &Path, name: &str, record: &[u8; 20]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    b.append_pax_extensions([("SCHILY.xattr.user.msb.meta", &record[..])])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, std::io::empty()).unwrap();
    b.finish().unwrap();
}

const BLOCK_PROBE: &str = r#"
import stat
for p in sys.argv[1:]:
    try:
        st = os.stat(p)
    except OSError as e:
        ok(f'{p}: cannot stat ({e.strerror})')
        continue
    info(f'{p}: mode {oct(st.st_mode)} rdev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}')
    try:
        fd = os.open(p, os.O_WRONLY)
    except OSError as e:
        ok(f'{p}: open for writing refused ({e.strerror})')
        continue
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            try:
                n = os.write(fd, b'HOSTILE!')
                os.fsync(fd)
                bad(f'{p}: wrote {n} bytes to host block device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}')
            except OSError as e:
                ok(f'{p}: write refused ({e.strerror})')
        else:
            ok(f'{p}: opens as a plain file')
    finally:
        os.close(fd)
with open('/proc/self/mountinfo') as fh:
    mounts = [l.split() for l in fh]
for mp in dict.fromkeys(os.path.dirname(p) for p in sys.argv[1:]):
    opts = [m[5] for m in mounts if m[4] == mp]
    if not opts:
        bad(f'{mp}: not in mountinfo')
        continue
    o = opts[-1].split(',')
    if 'nosuid' in o and 'nodev' in o:
        ok(f'{mp}: {opts[-1]}')
    else:
        bad(f'{mp}: mounted {opts[-1]} (nosuid,nodev expected)')
print('END')
"#;

#[test]
fn planted_block_device_on_a_served_mount_is_unusable() {
    let t = "planted_block_device_on_a_served_mount_is_unusable";
    if !can_attack(t) || !have_fuse(t) || !have_loop(t) {
        return;
    }
    let home = Home::new();
    let tmp = scratch("msb-hostile-blk-");
    // The "host disk": a file of known bytes behind a loop device.
    let backing = tmp.path().join("backing");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&backing, &pattern).unwrap();
    let dev = LoopDev::attach(&backing);
    let record = block_device_record(dev.number());

    // A bind mount served with stat virtualization, and a quota volume
    // served the same way, each holding a file claiming to be that device.
    let data = open_dir(tmp.path(), "data");
    std::fs::write(data.join("dev"), b"").unwrap();
    plant_record(&data.join("dev"), &record);
    let o = home.msb(&["volume", "create", "dv", "--quota", "16M"]);
    assert!(o.status.success(), "{}", show(&o));
    let vol_file = home.path().join("volumes/dv/dev");
    std::fs::write(&vol_file, b"").unwrap();
    plant_record(&vol_file, &record);
    // And one that arrives in an archive: refusing the import is fine too.
    let tarball = tmp.path().join("device.tar");
    record_tarball(&tarball, "imported", &record);
    let o = home.msb(&[
        "volume",
        "import",
        "dv",
        "--merge",
        tarball.to_str().unwrap(),
    ]);
    eprintln!("volume import of a device record: {}", show(&o));

    let bind = format!("{}:/data:stat-virt=strict", data.display());
    let mut f = Findings::default();
    for profile in PROFILES {
        let o = run_probe(
            &home,
            profile,
            &["-v", &bind, "-v", "dv:/v:stat-virt=strict"],
            BLOCK_PROBE,
            &["/data/dev", "/v/dev", "/v/imported"],
        );
        f.probe(&format!("--security {profile}"), &o);
    }
    drop(dev); // detaching flushes whatever reached the device
    let after = std::fs::read(&backing).unwrap();
    f.check(after == pattern, || {
        let at = after.iter().zip(&pattern).position(|(a, b)| a != b);
        format!("the loop device's backing file changed (first difference at byte {at:?})")
    });
    f.finish("block device through a served mount");
}

// ---------------------------------------------------------------------
// 4. Injecting input into the caller's terminal
// ---------------------------------------------------------------------

/// Reports, neutrally, what the command can do with terminals: TIOCSTI on
/// 0, 1, 2 and /dev/tty, its controlling terminal (tty_nr) and tty name.
const TTY_PROBE: &str = r#"
import fcntl, termios
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b'#')
        print('STI', fd, 'injected', flush=True)
    except OSError as e:
        print('STI', fd, 'refused', e.strerror, flush=True)
with open('/proc/self/stat') as fh:
    st = fh.read()
print('TTYNR', st[st.rindex(')') + 2:].split()[4], flush=True)
try:
    t = os.open('/dev/tty', os.O_RDWR | os.O_NOCTTY)
except OSError as e:
    print('DEVTTY refused', e.strerror, flush=True)
else:
    print('DEVTTY opened', flush=True)
    try:
        fcntl.ioctl(t, termios.TIOCSTI, b'#')
        print('STI tty injected', flush=True)
    except OSError as e:
        print('STI tty refused', e.strerror, flush=True)
    os.close(t)
try:
    print('TTYNAME', os.ttyname(0), flush=True)
except OSError:
    print('TTYNAME none', flush=True)
# Last, as it leaves the session: a session of its own taking the
# terminal over as its controlling terminal, then injecting.
try:
    os.setsid()
except OSError:
    pass
try:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    print('SCTTY acquired', flush=True)
    try:
        fcntl.ioctl(0, termios.TIOCSTI, b'#')
        print('STI sctty injected', flush=True)
    except OSError as e:
        print('STI sctty refused', e.strerror, flush=True)
except OSError as e:
    print('SCTTY refused', e.strerror, flush=True)
print('END', flush=True)
"#;

fn cloexec(fd: RawFd) {
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// A pty pair in raw mode (input not line-buffered, no echo), so any byte
/// injected into its input can be read back from the slave at once.
fn raw_pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: out-pointers to locals; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    cloexec(m);
    cloexec(s);
    // SAFETY: fresh descriptors we own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    // SAFETY: termios is plain data filled by tcgetattr.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(s.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(s.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    (m, s)
}

/// Runs `msb ARGS` the way a shell in a terminal would: stdin, stdout and
/// stderr on the pty's slave, which is msb's controlling terminal (msb
/// leads its own session). Returns what the command wrote and what
/// arrived in the terminal's input meanwhile (injected bytes).
fn on_terminal(home: &Home, args: &[&str]) -> (Option<i32>, String, Vec<u8>) {
    let (master, slave) = raw_pty();
    let mut cmd = home.cmd(args);
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    cmd.stdin(dup(&slave))
        .stdout(dup(&slave))
        .stderr(dup(&slave));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // its copies of the slave
    let out = Collector::start(std::fs::File::from(master));
    let status = home.wait(&mut child, &args.join(" "));
    // Whatever sits in the terminal's input now was injected.
    let mut injected = Vec::new();
    // SAFETY: fcntl on our own slave descriptor.
    unsafe {
        let fl = libc::fcntl(slave.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(slave.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut s = std::fs::File::from(slave);
    let mut buf = [0u8; 256];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        injected.extend_from_slice(&buf[..n]);
    }
    drop(s); // the last slave: reading the master ends
    let out = text(&out.finish()).replace('\r', "");
    (status.code(), out, injected)
}

fn check_no_terminal(f: &mut Findings, what: &str, run: (Option<i32>, String, Vec<u8>)) {
    let (code, out, injected) = run;
    if !out.lines().any(|l| l == "END") {
        f.fail(format!(
            "{what}: the probe did not complete (status {code:?}):\n{out}"
        ));
        return;
    }
    for l in out.lines() {
        if l.starts_with("STI ") && l.contains("injected") {
            f.fail(format!("{what}: TIOCSTI worked: {l}"));
        }
        if l == "SCTTY acquired" {
            f.fail(format!(
                "{what}: took the caller's terminal as its controlling terminal"
            ));
        }
        if l == "DEVTTY opened" {
            f.fail(format!(
                "{what}: /dev/tty opened (the caller's terminal is its controlling terminal)"
            ));
        }
        if let Some(nr) = l.strip_prefix("TTYNR ") {
            f.check(nr == "0", || {
                format!("{what}: tty_nr is {nr}, it has a controlling terminal")
            });
        }
    }
    f.check(injected.is_empty(), || {
        format!("{what}: {injected:?} arrived in the caller's terminal input")
    });
}

#[test]
fn terminal_input_cannot_be_injected() {
    if !can_attack("terminal_input_cannot_be_injected") {
        return;
    }
    let home = Home::new();
    home.start_sandbox("term", &[]);
    let script = py(TTY_PROBE);
    let mut f = Findings::default();
    for profile in PROFILES {
        let run = on_terminal(
            &home,
            &["run", "--security", profile, "--", "python3", "-c", &script],
        );
        check_no_terminal(&mut f, &format!("run --security {profile}"), run);
    }
    let run = on_terminal(&home, &["exec", "term", "--", "python3", "-c", &script]);
    check_no_terminal(&mut f, "exec", run);

    // With -t the command gets a terminal of the sandbox's own, not ours.
    let (code, out, _) = on_terminal(
        &home,
        &["exec", "-t", "term", "--", "python3", "-c", &script],
    );
    f.check(out.lines().any(|l| l == "END"), || {
        format!("exec -t: the probe did not complete (status {code:?}):\n{out}")
    });
    f.check(
        out.lines().any(|l| l.starts_with("TTYNAME /dev/pts/")),
        || format!("exec -t: no terminal of the sandbox's own:\n{out}"),
    );
    f.finish("terminal injection");
}

// ---------------------------------------------------------------------
// 5. Descriptors the caller had open
// ---------------------------------------------------------------------

/// The caller holds a host directory as fd 9, a file as fd 5 and as fd
/// 100 (and, if given, `three` as fd 3) while it runs `msb ARGS`.
fn with_open_fds(home: &Home, args: &[&str], dir: &Path, three: Option<&Path>) -> Output {
    let d = std::fs::File::open(dir).unwrap();
    let file = std::fs::File::open("/etc/hostname")
        .or_else(|_| std::fs::File::open("/etc/passwd"))
        .unwrap();
    let f3 = three.map(|p| std::fs::File::open(p).unwrap());
    let mut cmd = home.cmd(args);
    if let Some(f3) = &f3 {
        pass_fd(&mut cmd, f3.as_raw_fd(), 3);
    }
    pass_fd(&mut cmd, d.as_raw_fd(), 9);
    pass_fd(&mut cmd, file.as_raw_fd(), 5);
    pass_fd(&mut cmd, file.as_raw_fd(), 100);
    home.output(cmd, &args.join(" "))
}

/// The descriptor numbers `ls /proc/self/fd` printed (one per line).
fn fd_list(out: &str) -> Vec<u32> {
    let mut v: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    v.sort_unstable();
    v
}

const FD_SCRIPT: &str = "ls /proc/self/fd; echo x > /proc/self/fd/9/leak";

#[test]
fn inherited_descriptors_do_not_reach_the_command() {
    if !can_attack("inherited_descriptors_do_not_reach_the_command") {
        return;
    }
    let home = Home::new();
    let tmp = scratch("msb-hostile-fds-");
    let target = open_dir(tmp.path(), "target");
    home.start_sandbox("fds", &[]);
    let mut f = Findings::default();
    for (what, args) in [
        ("run", vec!["run", "--", "sh", "-c", FD_SCRIPT]),
        ("exec", vec!["exec", "fds", "--", "sh", "-c", FD_SCRIPT]),
    ] {
        let o = with_open_fds(&home, &args, &target, None);
        let fds = fd_list(&text(&o.stdout));
        f.check(fds == [0, 1, 2, 3], || {
            format!("{what}: the command has descriptors {fds:?} (only 0, 1, 2 and ls's own 3 expected)\n{}", show(&o))
        });
        if target.join("leak").exists() {
            f.fail(format!(
                "{what}: wrote {} on the host through the inherited fd 9",
                target.join("leak").display()
            ));
            let _ = std::fs::remove_file(target.join("leak"));
        }
    }
    f.finish("inherited descriptors");
}

#[test]
fn preserve_fds_passes_exactly_the_asked_descriptors() {
    if !can_attack("preserve_fds_passes_exactly_the_asked_descriptors") {
        return;
    }
    let home = Home::new();
    let tmp = scratch("msb-hostile-pfds-");
    let target = open_dir(tmp.path(), "target");
    let three = tmp.path().join("three");
    std::fs::write(&three, "preserved\n").unwrap();
    let script = format!("cat <&3; {FD_SCRIPT}");
    let o = with_open_fds(
        &home,
        &["run", "--preserve-fds", "1", "--", "sh", "-c", &script],
        &target,
        Some(&three),
    );
    let mut f = Findings::default();
    let out = text(&o.stdout);
    f.check(out.starts_with("preserved\n"), || {
        format!("--preserve-fds 1 did not pass fd 3\n{}", show(&o))
    });
    let fds = fd_list(&out);
    f.check(fds == [0, 1, 2, 3, 4], || {
        format!(
            "--preserve-fds 1: the command has descriptors {fds:?} (0-3 and ls's own 4 expected)"
        )
    });
    f.check(!target.join("leak").exists(), || {
        "--preserve-fds 1: fd 9 got through and wrote on the host".into()
    });
    f.finish("--preserve-fds");
}

// ---------------------------------------------------------------------
// 6. What the default root shows of the host
// ---------------------------------------------------------------------

const ROOT_PROBE: &str = r#"
import fcntl, subprocess
home, manifest = sys.argv[1], sys.argv[2]
for p in ['/etc/shadow', '/etc/gshadow']:
    if os.path.lexists(p):
        bad(f'{p} exists (host secrets)')
    else:
        ok(f'{p}: absent')
for p in ['/root', '/home', '/var', '/var/tmp', '/srv', '/opt', '/mnt']:
    try:
        # The fresh root's own empty /var/tmp is no host data.
        entries = [e for e in os.listdir(p) if (p, e) != ('/var', 'tmp')]
    except FileNotFoundError:
        ok(f'{p}: absent')
        continue
    except OSError as e:
        ok(f'{p}: unlistable ({e.strerror})')
        continue
    if entries:
        bad(f'{p} holds {sorted(entries)[:8]}')
    else:
        ok(f'{p}: empty')
for p in [home, home + '/volumes/other', '/work', manifest]:
    if os.path.lexists(p):
        bad(f'{p} is visible')
    else:
        ok(f'{p}: not visible')
lock = home + '/run/store.lock'
try:
    fd = os.open(lock, os.O_RDONLY)
except OSError as e:
    ok(f'store lock unreachable ({e.strerror})')
else:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        bad(f'took (and released) the flock on {lock}')
    except OSError as e:
        bad(f'opened {lock} (flock: {e.strerror})')
    os.close(fd)
for cmd in ['true', 'ls / > /dev/null', "python3 -c 'print(1)' > /dev/null"]:
    r = subprocess.run(['sh', '-c', cmd])
    if r.returncode == 0:
        ok(f'sh -c {cmd!r} works')
    else:
        bad(f'sh -c {cmd!r} failed ({r.returncode})')
for p, data in [('/etc/app.conf', 'app\n'), ('/newdir/x', 'x\n')]:
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'w') as fh:
            fh.write(data)
        with open(p) as fh:
            got = fh.read()
        if got == data:
            ok(f'wrote {p}')
        else:
            bad(f'{p} reads back {got!r}')
    except OSError as e:
        bad(f'cannot write {p} ({e.strerror}): the root should be writable')
print('END')
"#;

/// Removes what a sandbox wrongly wrote into the host's root.
struct HostRootGuard(Vec<PathBuf>);

impl Drop for HostRootGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[test]
fn default_root_holds_no_host_data() {
    if !can_attack("default_root_holds_no_host_data") {
        return;
    }
    // The write attempts must not be able to hit existing host files.
    for p in ["/etc/app.conf", "/newdir"] {
        if Path::new(p).exists() {
            skip(
                "default_root_holds_no_host_data",
                &format!("{p} exists on the host"),
            );
            return;
        }
    }
    let _guard = HostRootGuard(vec!["/etc/app.conf".into(), "/newdir".into()]);
    let home = Home::new();
    for v in ["other", "mine"] {
        let o = home.msb(&["volume", "create", v]);
        assert!(o.status.success(), "{}", show(&o));
    }
    let manifest = env!("CARGO_MANIFEST_DIR");
    let mut f = Findings::default();
    for profile in PROFILES {
        let o = run_probe(
            &home,
            profile,
            &["-v", "mine:/data"],
            ROOT_PROBE,
            &[home.path_str(), manifest],
        );
        f.probe(&format!("--security {profile}"), &o);
        for p in ["/etc/app.conf", "/newdir"] {
            if Path::new(p).exists() {
                f.fail(format!("--security {profile}: {p} appeared on the host"));
                let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
            }
        }
    }
    let o = home.msb(&["run", "--", "cat", "/etc/passwd"]);
    let passwd = text(&o.stdout);
    f.check(
        o.status.success() && passwd.lines().any(|l| l.starts_with("root:x:0:0:")),
        || format!("/etc/passwd has no root entry\n{}", show(&o)),
    );
    let host = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    f.check(passwd != host, || "/etc/passwd is the host's".into());
    f.finish("host data in the default root");
}

#[test]
fn mount_file_works_where_the_host_has_no_file() {
    if !can_attack("mount_file_works_where_the_host_has_no_file") {
        return;
    }
    if Path::new("/etc/app.conf").exists() {
        skip(
            "mount_file_works_where_the_host_has_no_file",
            "/etc/app.conf exists on the host",
        );
        return;
    }
    let _guard = HostRootGuard(vec!["/etc/app.conf".into()]);
    let home = Home::new();
    let tmp = scratch("msb-hostile-mf-");
    let conf = tmp.path().join("app.conf");
    std::fs::write(&conf, "key=value\n").unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = format!("{}:/etc/app.conf", conf.display());
    let o = home.msb(&["run", "--mount-file", &spec, "--", "cat", "/etc/app.conf"]);
    let mut f = Findings::default();
    f.check(
        o.status.success() && text(&o.stdout) == "key=value\n",
        || {
            format!(
                "--mount-file onto a path the host lacks failed\n{}",
                show(&o)
            )
        },
    );
    f.check(!Path::new("/etc/app.conf").exists(), || {
        "the mount point /etc/app.conf was created on the host".into()
    });
    f.finish("--mount-file");
}

// ---------------------------------------------------------------------
// 7. Resource limits
// ---------------------------------------------------------------------

/// Forks up to argv[1] children that sleep (each one process), counting
/// how many forks succeeded; stops after many failures in a row. The
/// sleepers die with the sandbox when the probe exits.
const FORK_PROBE: &str = r#"
import time
want = int(sys.argv[1])
started, failures, errors = 0, 0, set()
for i in range(want):
    try:
        pid = os.fork()
    except OSError as e:
        errors.add(e.strerror)
        failures += 1
        if failures >= 20:
            break
        time.sleep(0.01)
        continue
    if pid == 0:
        try:
            os.execv('/bin/sleep', ['sleep', '30'])
        finally:
            os._exit(1)
    failures = 0
    started += 1
print('STARTED', started, sorted(errors), flush=True)
print('END', flush=True)
"#;

fn started(o: &Output) -> Option<u32> {
    text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("STARTED "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn pids_limit_caps_a_fork_loop() {
    if !can_attack("pids_limit_caps_a_fork_loop") {
        return;
    }
    let home = Home::new();
    let o = run_probe(
        &home,
        "default",
        &["--pids-limit", "64"],
        FORK_PROBE,
        &["200"],
    );
    let n = started(&o);
    assert!(
        n.is_some_and(|n| n <= 64),
        "--pids-limit 64: {n:?} sleepers started\n{}",
        show(&o)
    );
}

#[test]
fn default_pid_limit_stops_a_fork_bomb() {
    if !can_attack("default_pid_limit_stops_a_fork_bomb") {
        return;
    }
    let home = Home::new();
    let o = run_probe(&home, "default", &[], FORK_PROBE, &["3000"]);
    let n = started(&o);
    assert!(
        n.is_some_and(|n| n <= 1024),
        "no flags: {n:?} of 3000 sleepers started (default limit 1024)\n{}",
        show(&o)
    );
}

const MEMORY_PROBE: &str = r#"
limit = int(sys.argv[1]) << 20
for p in ['/tmp', '/dev/shm', '/run', '/scratch']:
    try:
        s = os.statvfs(p)
    except OSError as e:
        info(f'{p}: {e.strerror}')
        continue
    size = s.f_blocks * s.f_frsize
    if size > limit:
        bad(f'{p}: {size >> 20} MiB of tmpfs, more than the {limit >> 20} MiB memory limit')
    else:
        ok(f'{p}: {size >> 20} MiB')
print('END', flush=True)
try:
    b = bytearray(256 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    bad('allocated and touched 256 MiB')
except MemoryError:
    ok('256 MiB allocation refused')
"#;

#[test]
fn memory_limit_bounds_allocations_and_tmpfs() {
    if !can_attack("memory_limit_bounds_allocations_and_tmpfs") {
        return;
    }
    let home = Home::new();
    let o = run_probe(
        &home,
        "default",
        &["--memory", "64M", "--tmpfs", "/scratch"],
        MEMORY_PROBE,
        &["64"],
    );
    let mut f = Findings::default();
    // Killed by the limit (no END after the allocation) is a pass as well:
    // the probe prints END before allocating.
    f.probe("--memory 64M", &o);
    f.finish("memory limit");
}

#[test]
fn cpus_limit_is_accepted() {
    if !can_attack("cpus_limit_is_accepted") {
        return;
    }
    let home = Home::new();
    let o = home.msb(&["run", "--cpus", "0.5", "--", "true"]);
    assert!(o.status.success(), "--cpus 0.5\n{}", show(&o));
}

// ---------------------------------------------------------------------
// 8. Other ways out
// ---------------------------------------------------------------------

#[test]
fn host_device_node_times_cannot_be_changed() {
    if !can_attack("host_device_node_times_cannot_be_changed") {
        return;
    }
    let home = Home::new();
    let before = std::fs::metadata("/dev/full").unwrap();
    let mut f = Findings::default();
    for profile in PROFILES {
        let o = home.msb(&[
            "run",
            "--security",
            profile,
            "--",
            "touch",
            "-d",
            "2001-01-01",
            "/dev/full",
        ]);
        let after = std::fs::metadata("/dev/full").unwrap();
        if (
            after.mtime(),
            after.mtime_nsec(),
            after.atime(),
            after.atime_nsec(),
        ) != (
            before.mtime(),
            before.mtime_nsec(),
            before.atime(),
            before.atime_nsec(),
        ) {
            f.fail(format!(
                "--security {profile}: the host's /dev/full mtime became {} (status {:?})",
                after.mtime(),
                o.status.code()
            ));
            // Put the host's times back.
            let times = [
                libc::timespec {
                    tv_sec: before.atime(),
                    tv_nsec: before.atime_nsec(),
                },
                libc::timespec {
                    tv_sec: before.mtime(),
                    tv_nsec: before.mtime_nsec(),
                },
            ];
            // SAFETY: a valid path and two initialized timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c"/dev/full".as_ptr(), times.as_ptr(), 0) };
        }
    }
    f.finish("host device node times");
}

const KEYCTL_PROBE: &str = r#"
import ctypes, errno, platform
nr = {'x86_64': 250, 'aarch64': 219}.get(platform.machine())
if nr is None:
    info('unknown architecture: keyctl not tried')
else:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_USER_KEYRING (-4), create=0.
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(-4), ctypes.c_long(0))
    e = ctypes.get_errno()
    if r >= 0:
        bad(f'keyctl returned the user keyring id {r}')
    elif e in (errno.EPERM, errno.ENOSYS, errno.EACCES):
        ok(f'keyctl refused ({errno.errorcode[e]})')
    else:
        bad(f'keyctl failed with {errno.errorcode.get(e, e)}, not a refusal')
print('END')
"#;

#[test]
fn keyring_syscalls_are_refused() {
    if !can_attack("keyring_syscalls_are_refused") {
        return;
    }
    probe_each_profile(KEYCTL_PROBE, "keyctl");
}

#[test]
fn nested_namespaces_cannot_be_created() {
    if !can_attack("nested_namespaces_cannot_be_created") {
        return;
    }
    let home = Home::new();
    let mut f = Findings::default();
    for profile in PROFILES {
        for un in ["unshare -U -r true", "unshare -U true", "unshare -m true"] {
            let o = home.msb(&["run", "--security", profile, "--", "sh", "-c", un]);
            f.check(!o.status.success(), || {
                format!("--security {profile}: `{un}` succeeded")
            });
        }
    }
    f.finish("nested namespaces");
}

#[test]
fn files_written_to_binds_belong_to_the_unprivileged_range() {
    if !can_attack("files_written_to_binds_belong_to_the_unprivileged_range") {
        return;
    }
    let home = Home::new();
    let tmp = scratch("msb-hostile-own-");
    let mut f = Findings::default();
    for profile in PROFILES {
        let data = open_dir(tmp.path(), profile);
        let bind = format!("{}:/data", data.display());
        let o = home.msb(&[
            "run",
            "--security",
            profile,
            "-v",
            &bind,
            "--",
            "sh",
            "-c",
            "cp /bin/sh /data/x && chmod 4755 /data/x; echo cp=$?; \
             touch /data/created; echo touch=$?; \
             mknod /data/dev b 7 0 2>/dev/null; echo mknod=$?",
        ]);
        let out = text(&o.stdout);
        let what = format!("--security {profile}");
        if let Ok(m) = std::fs::symlink_metadata(data.join("x")) {
            let setuid = m.mode() & 0o4000 != 0;
            // Never leave it lying around.
            let _ = std::fs::remove_file(data.join("x"));
            f.check(m.uid() >= ROOTFUL_HOST_BASE, || {
                format!(
                    "{what}: /data/x is owned by host uid {}{}",
                    m.uid(),
                    if setuid && m.uid() == 0 {
                        " with the setuid bit: a setuid-root shell on the host"
                    } else {
                        ""
                    }
                )
            });
        }
        match std::fs::symlink_metadata(data.join("created")) {
            Ok(m) => f.check(m.uid() == ROOTFUL_HOST_BASE, || {
                format!(
                    "{what}: a file the sandbox's root created is host uid {} (expected {ROOTFUL_HOST_BASE})",
                    m.uid()
                )
            }),
            Err(e) => f.fail(format!("{what}: /data/created missing ({e})\n{}", show(&o))),
        }
        f.check(out.contains("mknod=") && !out.contains("mknod=0"), || {
            format!("{what}: mknod of a block device succeeded\n{out}")
        });
        if let Ok(m) = std::fs::symlink_metadata(data.join("dev")) {
            use std::os::unix::fs::FileTypeExt;
            f.check(!m.file_type().is_block_device(), || {
                format!("{what}: a block device node appeared on the host")
            });
        }
    }
    f.finish("ownership on bind mounts");
}

const TRACE_PROBE: &str = r#"
target = None
end = time.time() + 15
while target is None and time.time() < end:
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/cmdline', 'rb') as fh:
                    if fh.read() == b'sleep\x0031.5\x00':
                        target = int(name)
            except OSError:
                pass
    time.sleep(0.05)
if target is None:
    bad('the joined sleep never showed up in /proc')
elif libc.ptrace(PTRACE_SEIZE, target, None, None) == 0:
    bad(f'attached to the joined command (pid {target}) with ptrace')
    libc.ptrace(PTRACE_INTERRUPT, target, None, None)
    stop = time.time() + 2
    while time.time() < stop:
        r, _ = os.waitpid(target, os.WNOHANG | WALL)
        if r == target:
            break
        time.sleep(0.001)
    libc.ptrace(PTRACE_DETACH, target, None, None)
else:
    ok(f'ptrace refused ({os.strerror(ctypes.get_errno())})')
print('END')
"#;

#[test]
fn restricted_sandbox_cannot_ptrace_joined_commands() {
    if !can_attack("restricted_sandbox_cannot_ptrace_joined_commands") {
        return;
    }
    let home = Home::new();
    home.start_sandbox("trace", &["--security", "restricted"]);
    let mut sleeper = home
        .cmd(&["exec", "trace", "--", "sleep", "31.5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let o = exec_probe(&home, "trace", &traced(TRACE_PROBE), &[]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let mut f = Findings::default();
    f.probe("exec", &o);
    f.finish("ptrace of a joined command");
}

/// A setuid file a sandbox leaves in a bind mount, run by a host user,
/// must give that user no power over any sandbox: files are stored under
/// the volume owner's range, while each sandbox's processes run as a range
/// leased to it alone.
#[test]
fn setuid_file_left_in_a_bind_reaches_no_sandbox() {
    if !can_attack("setuid_file_left_in_a_bind_reaches_no_sandbox") {
        return;
    }
    let home = Home::new();
    // Reachable by the host user who will run the file.
    let shared = tempfile::Builder::new()
        .prefix("msb-hostile-setuid-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = shared.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(ROOTFUL_HOST_BASE), Some(ROOTFUL_HOST_BASE)).unwrap();
    let bind = format!("{}:/data", data.display());
    home.start_sandbox("planter", &["-v", &bind]);
    home.start_sandbox("victim", &[]);
    let o = home.msb(&[
        "exec",
        "planter",
        "--",
        "sh",
        "-c",
        "cp /bin/dash /data/x && chmod 4755 /data/x",
    ]);
    let planted = data.join("x");
    let mut f = Findings::default();
    f.check(o.status.success(), || {
        format!("planting failed: {}", show(&o))
    });
    let init_pid = |name: &str| -> i32 {
        let s =
            std::fs::read_to_string(home.path().join(format!("run/sandboxes/{name}.pid"))).unwrap();
        s.split_whitespace().next().unwrap().parse().unwrap()
    };
    let host_uid = |pid: i32| -> u32 { std::fs::metadata(format!("/proc/{pid}")).unwrap().uid() };
    let (planter, victim) = (init_pid("planter"), init_pid("victim"));
    let (planter_uid, victim_uid) = (host_uid(planter), host_uid(victim));
    f.check(planter_uid != victim_uid, || {
        format!("two sandboxes run as the same host uid {planter_uid}")
    });
    if let Ok(m) = std::fs::metadata(&planted) {
        f.check(m.mode() & 0o4000 != 0, || {
            "the setuid bit did not stick".into()
        });
        f.check(m.uid() != planter_uid && m.uid() != victim_uid, || {
            format!(
                "the setuid file is owned by uid {}, a sandbox's own",
                m.uid()
            )
        });
        // The host user `nobody` runs it (dash -p keeps the effective uid)
        // and tries to signal each sandbox's init.
        for (name, pid) in [("planter", planter), ("victim", victim)] {
            let o = Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .arg(&planted)
                .args([
                    "-p",
                    "-c",
                    &format!("kill -0 {pid} 2>/dev/null && echo REACHED"),
                ])
                .output()
                .unwrap();
            f.check(!text(&o.stdout).contains("REACHED"), || {
                format!("a host user running the planted file can signal sandbox {name}")
            });
        }
    } else {
        f.fail("the planted file is missing");
    }
    let _ = std::fs::remove_file(&planted);
    f.finish("setuid file in a bind mount");
}
