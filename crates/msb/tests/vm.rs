//! The microVM backend through the real binary: one-shot runs, a named VM
//! sandbox's commands (streams, statuses, signals), and faults: QEMU or the
//! supervisor killed, a command that ignores SIGTERM at stop, a rootless
//! user. Under TCG a boot takes seconds, so each test boots once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn assets() -> PathBuf {
    std::env::var_os("MSB_VM_ASSETS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"),
        PathBuf::from,
    )
}

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy the unprivileged user can reach).
fn bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("MSB_HOME", home)
        .env("MSB_VM_ASSETS", assets())
        .current_dir(home);
    c
}

fn msb(home: &Path, args: &[&str]) -> Output {
    cmd(home, args).stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn can_run() -> bool {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu {
        eprintln!("skipped: qemu-system-x86_64 is not installed (scripts/setup installs it)");
    }
    qemu
}

fn alive(pid: i32) -> bool {
    // Zombies count as gone: they hold nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(qemu, supervisor)` pids of a running VM sandbox.
fn pids(home: &Path, name: &str) -> (i32, i32) {
    let s = std::fs::read_to_string(home.join(format!("run/sandboxes/{name}.pid"))).unwrap();
    let mut it = s.split_whitespace().map(|p| p.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn state(home: &Path, name: &str) -> String {
    let o = msb(home, &["inspect", name, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["state"].as_str().unwrap().to_string()
}

#[test]
fn one_shot_run_passes_streams_and_statuses() {
    if !can_run() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut child = cmd(
        home.path(),
        &[
            "run",
            "--backend",
            "vm",
            "sh",
            "-c",
            "read l; echo \"got $l\"; echo oops >&2; uname -r; exit 3",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"line\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("got line\n"), "{out}");
    // The guest's own kernel, not the host's.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(out.lines().nth(1).unwrap(), host.trim());
    assert!(text(&o.stderr).contains("oops"));
    let o = msb(home.path(), &["run", "--backend", "vm", "no-such-program"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    // No QEMU: a clear error, promptly (the file servers already started
    // are stopped, not waited on forever).
    let mut child = cmd(home.path(), &["run", "--backend", "vm", "true"])
        .env("MSB_QEMU", "/nonexistent/qemu")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("msb run hung without QEMU");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("starting QEMU failed"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn named_vm_sandbox_commands_signals_and_stop() {
    if !can_run() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("f"), "one\n").unwrap();
    let bind = format!("{}:/shared:ro", shared.path().display());
    let o = msb(
        h,
        &[
            "create",
            "box",
            "--backend",
            "vm",
            "-e",
            "MODE=vm",
            "-v",
            &bind,
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A bind stays coherent with the host (the root share alone is cached
    // for good): a change there shows within the second the guest may keep
    // what it read.
    let o = msb(h, &["exec", "box", "cat", "/shared/f"]);
    assert_eq!(text(&o.stdout), "one\n", "{}", text(&o.stderr));
    std::fs::write(shared.path().join("f"), "two\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = msb(h, &["exec", "box", "cat", "/shared/f"]);
    assert_eq!(text(&o.stdout), "two\n", "{}", text(&o.stderr));
    let o = msb(h, &["ls"]);
    assert!(text(&o.stdout).contains("vm"), "{}", text(&o.stdout));
    // Environment, status, both streams.
    let o = msb(
        h,
        &["exec", "box", "sh", "-c", "echo $MODE; echo e >&2; exit 9"],
    );
    assert_eq!(o.status.code(), Some(9));
    assert_eq!(text(&o.stdout), "vm\n");
    assert_eq!(text(&o.stderr), "e\n");
    // A signal to msb exec reaches the command.
    let mut child = cmd(
        h,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "trap 'echo term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(42), "{rest}");
    assert_eq!(rest, "term\n");
    // A command that ignores SIGTERM is killed after the grace period.
    let mut stubborn = cmd(
        h,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 0.1; done",
        ],
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (qemu, supervisor) = pids(h, "box");
    let o = msb(h, &["stop", "-t", "1", "box"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let _ = stubborn.wait();
    assert_eq!(state(h, "box"), "stopped");
    wait_until("QEMU and the supervisor to end", || {
        !alive(qemu) && !alive(supervisor)
    });
    assert!(!h.join("run/sandboxes/box.sock").exists());
    let o = msb(h, &["exec", "box", "true"]);
    assert!(
        text(&o.stderr).contains("not running"),
        "{}",
        text(&o.stderr)
    );
}

/// A VM sandbox's commands through the library, relayed by threads of the
/// caller: collected and streamed output, input, signals, statuses, a
/// start failure; and through the CLI, input that is /dev/null stays the
/// guest's own while other input is relayed.
#[test]
fn vm_commands_through_the_library() {
    use msb::ExecEvent;
    use tokio::io::AsyncWriteExt;
    if !can_run() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let o = msb(h, &["create", "box", "--backend", "vm"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = msb::SandboxStore::open(h).unwrap();
        let sb = store.get("box").await.unwrap();
        // Collected: no input, so the command reads the guest's /dev/null.
        let out = sb
            .exec(
                "sh",
                ["-c", "readlink /proc/self/fd/0; cat; echo e >&2; exit 3"],
            )
            .await
            .unwrap();
        assert_eq!(
            (out.status, text(&out.stdout), text(&out.stderr)),
            (3, "/dev/null\n".to_string(), "e\n".to_string())
        );
        // Streamed, with input that ends when the writer is dropped.
        let mut run = sb
            .command("sh")
            .args(["-c", "read line; echo got $line; cat; exit 5"])
            .spawn()
            .await
            .unwrap();
        let mut stdin = run.take_stdin().unwrap().unwrap();
        stdin.write_all(b"one\ntwo\n").await.unwrap();
        drop(stdin);
        let out = run.output().await.unwrap();
        assert_eq!(
            (out.status, text(&out.stdout)),
            (5, "got one\ntwo\n".into())
        );
        // A signal reaches the command; one after its end is no error.
        let mut run = sb
            .command("sh")
            .args([
                "-c",
                "trap 'echo term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
            ])
            .spawn()
            .await
            .unwrap();
        match run.next().await {
            Some(ExecEvent::Stdout(b)) => assert_eq!(text(&b), "ready\n"),
            other => panic!("{other:?} instead of the command's first line"),
        }
        let signaller = run.signaller().unwrap();
        signaller.signal(libc::SIGTERM).unwrap();
        let out = run.output().await.unwrap();
        assert_eq!((out.status, text(&out.stdout)), (42, "term\n".into()));
        signaller.signal(libc::SIGTERM).unwrap();
        // A command that cannot start: 127, and why on its stderr.
        let out = sb
            .exec("no-such-program", Vec::<String>::new())
            .await
            .unwrap();
        assert_eq!(out.status, 127, "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("not found"),
            "{}",
            text(&out.stderr)
        );
    });
    let o = msb(h, &["exec", "box", "readlink", "/proc/self/fd/0"]);
    assert_eq!(text(&o.stdout), "/dev/null\n", "{}", text(&o.stderr));
    let mut child = cmd(
        h,
        &[
            "exec",
            "box",
            "sh",
            "-c",
            "readlink /proc/self/fd/0 | cut -c1-5; cat",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"in\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "pipe:\nin\n");
    assert!(o.status.success());
    let o = msb(h, &["rm", "-f", "box"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn killed_qemu_or_supervisor_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let o = msb(
        h,
        &[
            "create",
            "box",
            "--backend",
            "vm",
            "--mount-named",
            "data:/data",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (qemu, supervisor) = pids(h, "box");
    // QEMU runs under its own system call filter.
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // QEMU killed: the supervisor notices, releases the volume and ends.
    let kill = |pid: i32| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    };
    kill(qemu);
    wait_until("the supervisor to end", || !alive(supervisor));
    assert_eq!(state(h, "box"), "stopped");
    let o = msb(h, &["volume", "inspect", "data", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Held by the stopped sandbox (until it is removed), not by a process.
    assert_eq!(v[0]["in_use_by"], serde_json::json!(["sandbox:box"]), "{v}");
    // The supervisor killed: QEMU dies with it.
    let o = msb(h, &["start", "box"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (qemu, supervisor) = pids(h, "box");
    kill(supervisor);
    wait_until("QEMU and the supervisor to end", || {
        !alive(qemu) && !alive(supervisor)
    });
    assert_eq!(state(h, "box"), "stopped");
    let o = msb(h, &["exec", "box", "true"]);
    assert!(!o.status.success());
    let o = msb(h, &["rm", "box"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(h, &["volume", "rm", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn rootless_user_runs_a_vm() {
    if !can_run() {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
    // The asset cache must be readable by the user: fetch it as root first.
    let o = msb(home.path(), &["run", "--backend", "vm", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The user's own file, mounted alone.
    let file = home.path().join("own-file");
    std::fs::write(&file, "x\n").unwrap();
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    let mount_file = format!("{}:/etc/own", file.display());
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args([
            "run",
            "--backend",
            "vm",
            "--mount-named",
            "mine:/data",
            "--mount-file",
            &mount_file,
            "sh",
            "-c",
            "echo hi > /data/f; cat /etc/own; echo more >> /etc/own; id -u",
        ])
        .env("MSB_HOME", home.path().join("user"))
        .env("MSB_VM_ASSETS", assets())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "x\n0\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x\nmore\n");
    let meta = std::fs::metadata(home.path().join("user/volumes/mine/f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

#[test]
fn doctor_tries_each_backend() {
    if !can_run() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let o = msb(home.path(), &["doctor", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vm = &v["backends"][1];
    assert_eq!(vm["backend"], "vm");
    assert_eq!(vm["works"], true, "{v}");
    let accel = vm["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == "acceleration")
        .unwrap();
    // auto takes the VM only where KVM works.
    let kvm = accel[1].as_str().unwrap().starts_with("works");
    assert_eq!(v["auto"], if kvm { "vm" } else { "namespace" }, "{v}");
}

#[test]
fn one_quota_for_a_vm_and_a_namespace_sandbox_at_once() {
    if !can_run() {
        return;
    }
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: the namespace sandbox's quota mount needs root and /dev/fuse");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let o = msb(h, &["volume", "create", "shared", "--quota", "8M"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for (name, backend) in [("vmbox", "vm"), ("nsbox", "namespace")] {
        let o = msb(
            h,
            &["create", name, "--backend", backend, "-v", "shared:/data"],
        );
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
    }
    // 5 MiB from each side: the second write meets the one limit.
    let write = |name: &str| {
        msb(
            h,
            &[
                "exec",
                name,
                "sh",
                "-c",
                &format!("dd if=/dev/zero of=/data/{name} bs=64k count=80 2>&1"),
            ],
        )
    };
    let first = write("vmbox");
    assert!(first.status.success(), "{}", text(&first.stdout));
    let second = write("nsbox");
    assert!(!second.status.success());
    assert!(
        text(&second.stdout).contains("No space left"),
        "{}",
        text(&second.stdout)
    );
    // And the other way round, after making room.
    let o = msb(h, &["exec", "vmbox", "rm", "/data/vmbox"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(h, &["exec", "nsbox", "rm", "-f", "/data/nsbox"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(write("nsbox").status.success());
    let o = write("vmbox");
    assert!(!o.status.success());
    assert!(
        text(&o.stdout).contains("No space left"),
        "{}",
        text(&o.stdout)
    );
    for name in ["vmbox", "nsbox"] {
        let _ = msb(h, &["rm", "-f", name]);
    }
}
