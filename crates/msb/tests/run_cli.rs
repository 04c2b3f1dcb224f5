//! `msb run` as users run it: the real binary, real namespaces and mounts,
//! a real store in a temporary MSB_HOME. Runs as root, or rootless where
//! the kernel lets users create user namespaces (what needs root skips with
//! a reason).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

/// Whether sandboxes can run here: as root, or rootless as a user the
/// kernel lets create user namespaces (printed when not).
fn sandboxes() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let rootless = Command::new("unshare")
        .args(["--user", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rootless {
        eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
    }
    rootless
}

/// Whether served mounts (quota) can run here: root, or rootless with a
/// `/dev/fuse` this user may open (printed when not).
fn served_mounts() -> bool {
    if !sandboxes() {
        return false;
    }
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    if let Err(e) = fuse {
        eprintln!("skipped: served mounts need /dev/fuse: {e}");
        return false;
    }
    true
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts `msb run ...` and waits for the line `ready` on its stdout.
fn spawn_ready(home: &Path, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
            if ppid == pid {
                v.push(p);
            }
        }
    }
    v
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap()..].starts_with(") Z"))
}

fn loops_under(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(f) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && f.contains(dir.to_str().unwrap())
        {
            v.push(f);
        }
    }
    v
}

fn host_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_main_job() {
    if !sandboxes() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let o = msb(home.path(), &["volume", "create", "demo"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(
        home.path(),
        &[
            "run",
            "-v",
            "demo:/data",
            "--",
            "sh",
            "-c",
            "echo hello > /data/greeting",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(home.path(), &["volume", "fs", "demo", "cat", "greeting"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello\n");
    // A second sandbox sees it.
    let o = msb(
        home.path(),
        &["run", "-v", "demo:/data", "--", "cat", "/data/greeting"],
    );
    assert_eq!(text(&o.stdout), "hello\n");
    // -v with an unknown name creates a directory volume (ensure-exists).
    let o = msb(
        home.path(),
        &["run", "-v", "fresh:/f", "--", "touch", "/f/x"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(home.path(), &["volume", "ls", "-q"]);
    assert_eq!(text(&o.stdout), "fresh\ndemo\n");
}

#[test]
fn stdio_and_exit_status_pass_through() {
    if !sandboxes() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(msb_bin())
        .args(["run", "--", "sh", "-c", "tr a-z A-Z; echo err >&2; exit 3"])
        .env("MSB_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"input\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "INPUT\n");
    assert_eq!(text(&o.stderr), "err\n");
    assert_eq!(o.status.code(), Some(3));
    let o = msb(home.path(), &["run", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143));
    let o = msb(home.path(), &["run", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("command not found: no-such-command"));
    let o = msb(
        home.path(),
        &[
            "run",
            "-w",
            "/etc",
            "-e",
            "A=b",
            "--",
            "sh",
            "-c",
            "echo $A $(pwd) $HOME",
        ],
    );
    assert_eq!(text(&o.stdout), "b /etc /root\n");
}

#[test]
fn malformed_specs_exit_2_naming_spec_and_problem() {
    let home = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["-v", "demo"], "missing guest path"),
        (
            vec!["-v", "/x:data"],
            "guest path \"data\" must be absolute",
        ),
        (
            vec!["-v", "demo:data"],
            "guest path \"data\" must be absolute",
        ),
        (vec!["-v", "/x:/"], "cannot be /"),
        (vec!["-v", "/x:/a/../b"], "contains '..'"),
        (vec!["-v", "/x:/d:bogus"], "unknown option \"bogus\""),
        (vec!["--mount-named", "v:/d:mode=maybe"], "mode \"maybe\""),
        (
            vec!["--mount-named", "v:/d:kind=dir,size=1G"],
            "size is only for disk",
        ),
        (
            vec!["--mount-disk", "/i.img:/d:format=iso"],
            "unknown disk format",
        ),
        (vec!["--tmpfs", "/t:stat-virt=off"], "take no stat-virt"),
        (vec!["--tmpfs", "/t:10X"], "size"),
        (
            vec!["-v", "/x:/d:stat-virt=off,host-perms=mirror"],
            "off cannot be combined",
        ),
        (vec!["-v", "/x:/d", "--tmpfs", "/d"], "mounted twice"),
        (vec!["--workdir", "rel"], "--workdir"),
        (vec!["--env", "=x"], "--env"),
    ] {
        let mut full = vec!["run"];
        full.extend(&args);
        full.extend(["--", "true"]);
        let o = msb(home.path(), &full);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if args[0] != "--workdir" && args[0] != "--env" && !needle.contains("twice") {
            assert!(err.contains(args[1]), "{args:?}: {err}");
        }
    }
    let o = msb(home.path(), &["run", "--security", "lax", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let home = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let o = msb(home.path(), &["volume", "create", "have"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bind = format!("{}:/b:ro", host.path().display());
    let o = msb(
        home.path(),
        &[
            "run",
            "--dry-run",
            "--security",
            "restricted",
            "-v",
            &bind,
            "-v",
            "have:/h",
            "--mount-named",
            "newvol:/h/n:quota=10M",
            "--tmpfs",
            "/t:8M",
            "--",
            "sh",
            "-c",
            "touch /b/x",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mounts = plan["mounts"].as_array().unwrap();
    let guests: Vec<_> = mounts
        .iter()
        .map(|m| m["guest"].as_str().unwrap())
        .collect();
    assert_eq!(guests, ["/b", "/h", "/t", "/h/n"]);
    assert_eq!(mounts[1]["action"], "reuse");
    assert_eq!(mounts[3]["action"], "create");
    assert_eq!(
        mounts[3]["served"], true,
        "a quota needs the filesystem server"
    );
    assert_eq!(mounts[0]["served"], false);
    assert_eq!(mounts[3]["volume"]["quota_mib"], 10);
    assert_eq!(mounts[2]["options"]["size_mib"], 8);
    assert_eq!(mounts[0]["flags"]["readonly"], true);
    assert_eq!(
        mounts[0]["flags"]["nosuid"], true,
        "restricted forces nosuid"
    );
    assert_eq!(plan["security"], "restricted");
    assert_eq!(plan["command"][2], "touch /b/x");
    // Nothing ran and nothing was created.
    assert!(!host.path().join("x").exists());
    let o = msb(home.path(), &["volume", "ls", "-q"]);
    assert_eq!(text(&o.stdout), "have\n");
}

#[test]
fn dry_run_on_the_vm_backend_serves_every_directory() {
    let home = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let bind = format!("{}:/b:ro", host.path().display());
    let o = msb(
        home.path(),
        &[
            "run",
            "--dry-run",
            "--backend",
            "vm",
            "-v",
            &bind,
            "--tmpfs",
            "/t",
            "--",
            "true",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["backend"], "vm");
    let mounts = plan["mounts"].as_array().unwrap();
    assert_eq!(mounts[0]["served"], true, "a VM reaches /b over virtio-fs");
    assert_eq!(mounts[1]["served"], false, "a tmpfs lives in the guest");
    let o = msb(home.path(), &["run", "--backend", "kvm", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("unknown backend"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn sigterm_and_sigint_are_forwarded() {
    if !sandboxes() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    for (sig, code) in [("TERM", 42), ("INT", 43)] {
        let script =
            format!("trap 'echo got; exit {code}' {sig}; echo ready; while :; do sleep 0.05; done");
        let (mut child, mut out) = spawn_ready(home.path(), &["run", "--", "sh", "-c", &script]);
        let kill = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(rest, "got\n");
        assert_eq!(status.code(), Some(code));
    }
}

#[test]
fn in_use_while_running_and_sigkill_leaves_nothing() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: disk images need loop devices, which need root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let qcow_ok = Command::new("qemu-img").arg("--version").output().is_ok();
    let o = msb(home.path(), &["volume", "create", "demo"]);
    assert!(o.status.success());
    let o = msb(
        home.path(),
        &["volume", "create", "dk", "--kind", "disk", "--size", "32M"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut args = vec![
        "run".to_string(),
        "-v".into(),
        "demo:/data".into(),
        "--mount-named".into(),
        "dk:/dk".into(),
        "--tmpfs".into(),
        "/t:4M".into(),
    ];
    if Path::new("/dev/fuse").exists() {
        // A quota makes this mount go through the in-process FUSE server.
        args.extend(["--mount-named".into(), "capped:/c:quota=8M".into()]);
    }
    if qcow_ok {
        let img = home.path().join("img.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&img)
            .arg("32M")
            .output()
            .unwrap();
        assert!(out.status.success());
        // Format the qcow2 through a first sandbox-free path: mke2fs on a
        // raw image, then convert.
        let raw = home.path().join("img.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        assert!(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4"])
                .arg(&raw)
                .status()
                .unwrap()
                .success()
        );
        std::fs::remove_file(&img).unwrap();
        assert!(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&img)
                .status()
                .unwrap()
                .success()
        );
        args.push("--mount-disk".into());
        args.push(format!("{}:/q", img.display()));
    } else {
        eprintln!("qcow2 part skipped: qemu-img (qemu-utils) not installed");
    }
    args.extend(["--", "sh", "-c", "echo ready; exec sleep 1000"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, _out) = spawn_ready(home.path(), &argv);
    let pid = child.id();
    // In use, naming the sandbox.
    let o = msb(home.path(), &["volume", "rm", "demo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains(&format!("in use by sandbox:run-{pid}")),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains(&format!(
            "hint: a one-shot `msb run` (process {pid}) uses it"
        )),
        "{}",
        text(&o.stderr)
    );
    let o = msb(home.path(), &["volume", "prune", "--force"]);
    assert!(
        text(&o.stderr).contains(&format!("in use by sandbox:run-{pid}")),
        "{}",
        text(&o.stderr)
    );
    let o = msb(home.path(), &["volume", "ls", "-q"]);
    assert!(
        text(&o.stdout).ends_with("dk\ndemo\n"),
        "{}",
        text(&o.stdout)
    );
    let helpers = children_of(pid);
    assert_eq!(helpers.len(), if qcow_ok { 2 } else { 1 }, "{helpers:?}");
    assert!(!loops_under(home.path()).is_empty());
    // SIGKILL the supervisor: the kernel tears everything down.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("sandbox processes to die", || {
        helpers.iter().all(|p| !alive(*p))
    });
    wait_until("loop devices to detach", || {
        loops_under(home.path()).is_empty()
    });
    assert!(host_mounts_under(home.path()).is_empty());
    let qemu_left = Command::new("pgrep")
        .args(["-f", "qemu-storage-daemon"])
        .output()
        .unwrap();
    for p in text(&qemu_left.stdout).lines() {
        let p: u32 = p.trim().parse().unwrap();
        assert!(!helpers.contains(&p), "qemu daemon {p} survived");
    }
    // The attach records died with it: every volume can be removed.
    let o = msb(home.path(), &["volume", "prune", "--force"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(home.path(), &["volume", "ls", "-q"]);
    assert_eq!(text(&o.stdout), "");
}

#[test]
fn quota_volume_is_a_hard_limit_in_the_sandbox() {
    if !served_mounts() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let o = msb(
        home.path(),
        &[
            "run",
            "--mount-named",
            "capped:/c:quota=4M",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/c/f bs=1M count=8 2>&1; df -k /c | tail -1",
        ],
    );
    let out = text(&o.stdout);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains(" 4096 "), "{out}");
    let o = msb(home.path(), &["volume", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "capped");
    assert_eq!(v[0]["quota_mib"], 4);
    let used = v[0]["used_bytes"].as_u64().unwrap();
    assert!(used > 3 << 20 && used <= 4 << 20, "{used}");
}

#[test]
fn mount_points_under_the_read_only_usr_are_made_in_the_sandbox_only() {
    if !sandboxes() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "hi\n").unwrap();
    // Missing on the host: made in the sandbox, under the fresh root's
    // read-only /usr, next to the host directory's own entries.
    let name = format!("msb-test-{}", std::process::id());
    let guest = format!("/usr/local/share/{name}/deeper");
    let shared = std::fs::read_dir("/usr/local/share")
        .unwrap()
        .flatten()
        .find_map(|e| e.file_name().into_string().ok());
    let o = msb(
        home.path(),
        &[
            "run",
            "-v",
            &format!("{}:{guest}", host.path().display()),
            "--",
            "sh",
            "-c",
            &format!(
                "cat {guest}/f; ls /usr/local/share; \
                 mkdir /usr/local/share/other 2>/dev/null || echo read-only"
            ),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"hi"), "{out}");
    assert!(lines.contains(&name.as_str()), "{out}");
    if let Some(shared) = shared {
        assert!(lines.contains(&shared.as_str()), "{shared} hidden: {out}");
    }
    assert_eq!(lines.last(), Some(&"read-only"), "{out}");
    assert!(!Path::new("/usr/local/share").join(&name).exists());
    // Inside a read-only mount no mount point can be made: said so.
    let o = msb(
        home.path(),
        &[
            "run",
            "-v",
            &format!("{}:/data:ro", host.path().display()),
            "--tmpfs",
            "/data/sub",
            "--",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot create the mount point /data/sub: /data is read-only"),
        "{err}"
    );
}
