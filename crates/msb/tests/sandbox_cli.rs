//! Named sandboxes as users drive them: the real binary, real processes, a
//! real store in a temporary MSB_HOME.

use std::path::Path;
use std::process::{Command, Output};

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

/// A temporary MSB_HOME whose running sandboxes are stopped when it goes
/// away, so a failing test leaves no supervisor behind.
struct Home(tempfile::TempDir);

impl Home {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.path().join("run/sandboxes")) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pids) = std::fs::read_to_string(entry.path())
                && let Some(pid) = pids.split_whitespace().nth(1)
                && let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn home() -> Home {
    Home(tempfile::tempdir().unwrap())
}

fn msb_in(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn msb(home: &Path, args: &[&str]) -> Output {
    msb_in(home, home, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn create_ls_inspect_rm() {
    let home = home();
    let o = msb(
        home.path(),
        &[
            "create",
            "web",
            "--no-start",
            "-v",
            "data:/data",
            "--tmpfs",
            "/tmp:64m:noexec",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
    let o = msb(home.path(), &["create", "db", "--no-start"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = msb(home.path(), &["ls"]);
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(table.contains("web ") && table.contains("db "), "{table}");

    let list = json(&msb(home.path(), &["ls", "--format", "json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"web") && names.contains(&"db"));

    let v = json(&msb(home.path(), &["inspect", "web", "--format", "json"]));
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["volumes"], serde_json::json!(["data"]));
    let mounts = v["config"]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0]["guest"], "/data");
    assert_eq!(mounts[0]["type"], "named");
    assert_eq!(mounts[1]["guest"], "/tmp");
    assert_eq!(mounts[1]["options"]["size_mib"], 64);
    assert_eq!(mounts[1]["options"]["noexec"], true);

    // The named volume was provisioned at create.
    let o = msb(home.path(), &["volume", "inspect", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = msb(home.path(), &["rm", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["inspect", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sandbox not found: web"),
        "{}",
        stderr(&o)
    );
    let list = json(&msb(home.path(), &["ls", "--format", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn stopped_sandbox_keeps_its_volume_in_use_until_removed() {
    let home = home();
    let o = msb(
        home.path(),
        &["create", "web", "--no-start", "--mount-named", "data:/data"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["volume", "rm", "data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("volume data is in use by sandbox:web"),
        "{}",
        stderr(&o)
    );
    // Prune skips it as well.
    let o = msb(home.path(), &["volume", "prune", "-f"]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("sandbox:web"), "{all}");
    let o = msb(home.path(), &["volume", "inspect", "data"]);
    assert!(
        o.status.success(),
        "prune removed a referenced volume: {all}"
    );
    let users = |home: &Path| {
        json(&msb(
            home,
            &["volume", "inspect", "data", "--format", "json"],
        ))[0]["in_use_by"]
            .clone()
    };
    assert_eq!(users(home.path()), serde_json::json!(["sandbox:web"]));

    let o = msb(home.path(), &["rm", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(users(home.path()), serde_json::json!([]));
    let o = msb(home.path(), &["volume", "rm", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn config_is_persisted_with_absolute_paths() {
    let home = home();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("src")).unwrap();
    std::fs::write(work.path().join("disk.img"), b"").unwrap();
    // Rootless, a disk image can only ever be attached to a microVM.
    let backend = if rustix::process::geteuid().is_root() {
        "namespace"
    } else {
        "vm"
    };
    let o = msb_in(
        home.path(),
        work.path(),
        &[
            "create",
            "dev",
            "--no-start",
            "--backend",
            backend,
            "--mount-dir",
            "./src:/src:ro",
            "--mount-disk",
            "disk.img:/disk",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Inspected from elsewhere, the paths are the ones create resolved.
    let v = json(&msb_in(
        home.path(),
        Path::new("/"),
        &["inspect", "dev", "--format", "json"],
    ));
    let mounts = v["config"]["mounts"].as_array().unwrap();
    let root = std::fs::canonicalize(work.path()).unwrap();
    let src = mounts.iter().find(|m| m["guest"] == "/src").unwrap();
    assert_eq!(src["host_path"], root.join("src").to_str().unwrap());
    assert_eq!(src["options"]["readonly"], true);
    let disk = mounts.iter().find(|m| m["guest"] == "/disk").unwrap();
    assert_eq!(disk["host_path"], root.join("disk.img").to_str().unwrap());
}

#[test]
fn bad_input_is_refused_with_clear_messages() {
    let home = home();
    let o = msb(home.path(), &["create", "bad name"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid sandbox name"),
        "{}",
        stderr(&o)
    );

    let o = msb(home.path(), &["create", "web", "-v", "data:relative"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));

    let o = msb(home.path(), &["create", "web", "--rootfs", "/no/such/dir"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid --rootfs"), "{}", stderr(&o));

    // Host paths that start could not mount are refused at create, before
    // any named volume is provisioned.
    let file = home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let dir_spec = format!("{}:/d", file.display());
    for (args, message) in [
        (
            vec!["create", "web", "-v", "/no/such/dir:/d", "-v", "v1:/v"],
            "cannot mount a host path: mount at /d: cannot use host path /no/such/dir",
        ),
        (
            vec![
                "create",
                "web",
                "--mount-dir",
                dir_spec.as_str(),
                "-v",
                "v1:/v",
            ],
            "is not a directory",
        ),
        (
            vec!["create", "web", "--mount-disk", "/no/such.img:/d"],
            "cannot use host path /no/such.img",
        ),
    ] {
        let o = msb(home.path(), &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{}", stderr(&o));
    }
    let o = msb(home.path(), &["volume", "inspect", "v1"]);
    assert_eq!(o.status.code(), Some(1));

    // mode=existing on a missing volume: nothing is recorded or created.
    let o = msb(
        home.path(),
        &["create", "web", "--mount-named", "gone:/g:mode=existing"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot provision volume gone for /g: volume not found: gone"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        json(&msb(home.path(), &["ls", "--format", "json"])),
        serde_json::json!([])
    );

    let o = msb(home.path(), &["create", "web", "--no-start"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["create", "web", "-v", "fresh:/f"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sandbox already exists: web"),
        "{}",
        stderr(&o)
    );
    // The taken name was refused before anything was provisioned for it.
    let o = msb(home.path(), &["volume", "inspect", "fresh"]);
    assert_eq!(o.status.code(), Some(1));

    let o = msb(home.path(), &["rm", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sandbox not found: nope"),
        "{}",
        stderr(&o)
    );
}

fn state(home: &Path, name: &str) -> String {
    json(&msb(home, &["inspect", name, "--format", "json"]))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `(init pid, supervisor pid)` as the supervisor recorded them.
fn pids(home: &Path, name: &str) -> (i32, i32) {
    let s = std::fs::read_to_string(home.join(format!("run/sandboxes/{name}.pid"))).unwrap();
    let (a, b) = s.trim().split_once(' ').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped by its new parent).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'),
    }
}

#[test]
fn start_exec_stop_keeps_data_and_passes_status_through() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let o = msb(
        home.path(),
        &[
            "create",
            "web",
            "--no-start",
            "-v",
            "data:/data",
            "--tmpfs",
            "/scratch",
            "-e",
            "GREETING=hi",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["exec", "web", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sandbox web is not running"),
        "{}",
        stderr(&o)
    );

    let o = msb(home.path(), &["start", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(state(home.path(), "web"), "running");
    // Starting it again is no error: it runs, as wanted.
    let o = msb(home.path(), &["start", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("already running"), "{}", stderr(&o));
    assert_eq!(state(home.path(), "web"), "running");

    let o = msb(
        home.path(),
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo $GREETING > /data/f && touch /scratch/t && echo pid=$$ && exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    // Joined the sandbox's pid namespace: its pids are small.
    let pid: u32 = stdout(&o)
        .trim()
        .strip_prefix("pid=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(pid < 100, "{}", stdout(&o));
    // The tmpfs of the running sandbox is shared between execs.
    let o = msb(home.path(), &["exec", "web", "--", "ls", "/scratch"]);
    assert_eq!(stdout(&o), "t\n", "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(home.path().join("volumes/data/f")).unwrap(),
        "hi\n"
    );

    let o = msb(home.path(), &["rm", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is running"), "{}", stderr(&o));

    let (init, supervisor) = pids(home.path(), "web");
    let o = msb(home.path(), &["stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(state(home.path(), "web"), "stopped");
    assert!(dead(init) && dead(supervisor));
    // Stopped, it still holds its volume.
    let o = msb(home.path(), &["volume", "rm", "data"]);
    assert!(stderr(&o).contains("sandbox:web"), "{}", stderr(&o));

    // Started again, it mounts the same volume.
    let o = msb(home.path(), &["start", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["exec", "web", "--", "cat", "/data/f"]);
    assert_eq!(stdout(&o), "hi\n", "{}", stderr(&o));
    let o = msb(home.path(), &["rm", "-f", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["volume", "rm", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Waits until `path` exists (a command in a sandbox got going).
fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The exit code of `child` once it ends; kills it and fails the test if
/// it runs for more than a minute (a lost signal would hang the suite).
fn ended(child: &mut std::process::Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not end within a minute", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Creates and starts the sandbox `web` with the volume `data` at `/data`;
/// returns the volume's host directory.
fn start_web_with_data(home: &Path) -> std::path::PathBuf {
    let o = msb(home, &["create", "web", "-v", "data:/data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home, &["start", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    home.join("volumes/data")
}

#[test]
fn stop_gives_commands_a_chance_to_finish() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let data = start_web_with_data(home.path());
    let exec = |script: &str| {
        Command::new(msb_bin())
            .args(["exec", "web", "--", "sh", "-c", script])
            .env("MSB_HOME", home.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // One command saves its work on SIGTERM, one ignores it.
    let mut polite = exec(
        "trap 'echo saved > /data/state; exit 3' TERM; touch /data/up1; while :; do sleep 0.05; done",
    );
    let mut stubborn = exec("trap '' TERM; touch /data/up2; while :; do sleep 0.05; done");
    wait_for(&data.join("up1"));
    wait_for(&data.join("up2"));
    let o = msb(home.path(), &["stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ended(&mut polite), Some(3));
    assert_eq!(
        std::fs::read_to_string(data.join("state")).unwrap(),
        "saved\n"
    );
    // Killed once the grace period is over: 128 + SIGKILL.
    assert_eq!(ended(&mut stubborn), Some(137));
    assert_eq!(state(home.path(), "web"), "stopped");
}

#[test]
fn stop_time_sets_the_grace_period() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let data = start_web_with_data(home.path());
    // A command that needs about 6 s to save its work after SIGTERM.
    let slow = |tag: &str| {
        if state(home.path(), "web") == "stopped" {
            let o = msb(home.path(), &["start", "web"]);
            assert!(o.status.success(), "{}", stderr(&o));
        }
        let script = format!(
            "trap 'sleep 6; echo saved > /data/{tag}; exit 3' TERM; touch /data/up-{tag}; \
             while :; do sleep 0.05; done"
        );
        let child = Command::new(msb_bin())
            .args(["exec", "web", "--", "sh", "-c", &script])
            .env("MSB_HOME", home.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&data.join(format!("up-{tag}")));
        child
    };
    // --time 0: killed at once, the work is lost.
    let mut child = slow("now");
    let o = msb(home.path(), &["stop", "--time", "0", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ended(&mut child), Some(137));
    assert!(!data.join("now").exists());
    // More than the default 5 s: the work is saved.
    let mut child = slow("later");
    let o = msb(home.path(), &["stop", "-t", "60", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ended(&mut child), Some(3));
    assert_eq!(
        std::fs::read_to_string(data.join("later")).unwrap(),
        "saved\n"
    );
    assert_eq!(state(home.path(), "web"), "stopped");
}

#[test]
fn commands_start_with_default_signal_actions() {
    if !sandboxes() {
        return;
    }
    let home = home();
    start_web_with_data(home.path());
    // The caller ignores signals, as under `nohup`; the sandbox's commands
    // must not inherit that (a shell could not even trap them), nor the
    // signals `msb exec` blocks to forward them.
    let ignoring = |args: &[&str]| {
        let mut cmd = Command::new(msb_bin());
        cmd.args(args).env("MSB_HOME", home.path());
        // SAFETY: between fork and exec only signal(2), which is
        // async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                for s in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
                    libc::signal(s, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    // grep itself, not a shell, which may reset what it inherited.
    let status = ["grep", "-E", "SigBlk|SigIgn", "/proc/self/status"];
    for args in [["exec", "web", "--"].as_slice(), ["run", "--"].as_slice()] {
        let args = [args, status.as_slice()].concat();
        let o = ignoring(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
            "{args:?}"
        );
    }
    let o = msb(home.path(), &["stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn exec_passes_signals_on_to_the_command() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let data = start_web_with_data(home.path());
    for (signal, name, tty) in [
        (rustix::process::Signal::TERM, "TERM", false),
        (rustix::process::Signal::HUP, "HUP", false),
        (rustix::process::Signal::TERM, "TERM", true),
    ] {
        let ready = data.join(format!("up-{name}-{tty}"));
        let _ = std::fs::remove_file(data.join("got"));
        let script = format!(
            "trap 'echo {name} > /data/got; exit 3' {name}; touch /data/up-{name}-{tty}; \
             while :; do sleep 0.05; done"
        );
        let mut args = vec!["exec", "web"];
        if tty {
            args.push("-t");
        }
        args.extend(["--", "sh", "-c", &script]);
        let mut client = Command::new(msb_bin())
            .args(&args)
            .env("MSB_HOME", home.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&ready);
        let pid = rustix::process::Pid::from_raw(client.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        // The client outlives the signal and reports how the command ended.
        assert_eq!(ended(&mut client), Some(3), "{name} tty={tty}");
        assert_eq!(
            std::fs::read_to_string(data.join("got")).unwrap(),
            format!("{name}\n")
        );
    }
    let o = msb(home.path(), &["stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn killed_supervisor_leaves_the_sandbox_stopped() {
    if !sandboxes() {
        return;
    }
    let home = home();
    start_web_with_data(home.path());
    let (init, supervisor) = pids(home.path(), "web");
    let pid = rustix::process::Pid::from_raw(supervisor).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(dead(init) && dead(supervisor)) {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox outlived its supervisor"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(state(home.path(), "web"), "stopped");
    let o = msb(home.path(), &["exec", "web", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    // No live attachment is left: only the record holds the volume.
    let o = msb(home.path(), &["volume", "rm", "data"]);
    assert!(
        stderr(&o)
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("in use by sandbox:web")),
        "{}",
        stderr(&o)
    );
    let o = msb(home.path(), &["start", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["exec", "web", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(home.path(), &["stop", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The effective capability mask of a process, from /proc/PID/status text.
fn cap_eff(status: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status}"));
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).unwrap()
}

#[test]
fn exec_gets_the_workload_privileges_not_the_supervisors() {
    if !sandboxes() {
        return;
    }
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    let home = home();
    for (name, security) in [("dflt", "default"), ("strict", "restricted")] {
        let o = msb(home.path(), &["create", name, "--security", security]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = msb(home.path(), &["start", name]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = msb(
            home.path(),
            &["exec", name, "--", "cat", "/proc/self/status"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let caps = cap_eff(&stdout(&o));
        assert_eq!(caps & CAP_SYS_ADMIN, 0, "{security}: {caps:x}");
        if security == "restricted" {
            assert_eq!(caps, 0, "{caps:x}");
            assert!(stdout(&o).contains("NoNewPrivs:\t1"), "{}", stdout(&o));
        } else {
            assert_ne!(caps, 0);
        }
        // Mounting is refused like in the sandbox's own command.
        let o = msb(
            home.path(),
            &["exec", name, "--", "mount", "-t", "tmpfs", "x", "/mnt"],
        );
        assert_ne!(o.status.code(), Some(0), "{security}: mount allowed");
        let o = msb(home.path(), &["stop", name]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn two_sandboxes_share_a_volume_and_its_quota() {
    if !served_mounts() {
        return;
    }
    let home = home();
    let h = home.path();
    let o = msb(h, &["volume", "create", "shared", "--quota", "8M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["a", "b"] {
        let o = msb(h, &["create", name, "-v", "shared:/data"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = msb(h, &["start", name]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let write = |name: &str, file: &str| {
        msb(
            h,
            &[
                "exec",
                name,
                "--",
                "sh",
                "-c",
                &format!("dd if=/dev/zero of=/data/{file} bs=1M count=5 2>&1"),
            ],
        )
    };
    let o = write("a", "one");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // b sees a's write, and a's bytes count against the one shared quota.
    let o = msb(h, &["exec", "b", "--", "sh", "-c", "wc -c < /data/one"]);
    assert_eq!(stdout(&o).trim(), "5242880", "{}", stderr(&o));
    let o = write("b", "two");
    assert!(!o.status.success(), "second 5 MiB fit into an 8 MiB quota");
    assert!(
        stdout(&o).contains("No space left on device"),
        "{}",
        stdout(&o)
    );
    for name in ["a", "b"] {
        let o = msb(h, &["stop", name]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let used = json(&msb(
        h,
        &["volume", "inspect", "shared", "--format", "json"],
    ))[0]["used_bytes"]
        .as_u64()
        .unwrap();
    assert!(used <= 8 << 20, "usage {used} passed the quota");
    assert!(used >= 5 << 20, "usage {used} lost a's file");
}

/// Reads a pty master until every slave is closed (EIO).
fn read_master(master: std::fs::File) -> String {
    use std::io::Read;
    let mut master = master;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pty pair on the host sized `rows` x `cols`: `(master, slave)`.
fn host_pty(rows: u16, cols: u16) -> (std::os::fd::OwnedFd, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, size).unwrap();
    (master, slave)
}

#[test]
fn exec_tty_gives_the_command_a_terminal() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let h = home.path();
    let o = msb(h, &["create", "term"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(h, &["start", "term"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Our side is a terminal too (as a user's would be), sized 33x101.
    let (master, slave) = host_pty(33, 101);
    let mut child = Command::new(msb_bin())
        .args(["exec", "-t", "term", "--", "sh", "-c"])
        .arg("tty; stty size; [ -t 0 ] && echo stdin-is-a-tty; exit 6")
        .env("MSB_HOME", h)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || read_master(std::fs::File::from(master)));
    let status = child.wait().unwrap();
    drop(child);
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(6), "{out}");
    // A terminal of the sandbox's own /dev/pts, sized like ours.
    assert!(out.contains("/dev/pts/0\r\n"), "{out:?}");
    assert!(out.contains("33 101\r\n"), "{out:?}");
    assert!(out.contains("stdin-is-a-tty"), "{out:?}");

    // A change of our terminal's size reaches the command (SIGWINCH).
    let (master, slave) = host_pty(33, 101);
    let mut child = Command::new(msb_bin())
        .args(["exec", "-t", "term", "--", "sh", "-c"])
        .arg("trap 'stty size; exit 7' WINCH; echo armed; while :; do sleep 0.05; done")
        .env("MSB_HOME", h)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut until = |what: &str| {
        while !seen.contains(what) {
            let chunk = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {what:?} in {seen:?}"));
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    until("armed");
    let size = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, size).unwrap();
    // What a terminal emulator does after resizing: signal the program on it.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH).unwrap();
    until("40 120");
    assert_eq!(ended(&mut child), Some(7));
    drop((master, slave));

    // Without a terminal on our side, -t still gives the command one, and
    // piped input reaches it, ended by the terminal's end-of-file.
    let mut child = Command::new(msb_bin())
        .args([
            "exec",
            "-t",
            "term",
            "--",
            "sh",
            "-c",
            "tty; read x; echo got:$x",
        ])
        .env("MSB_HOME", h)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The terminal echoes the input, as terminals do.
    assert!(stdout(&o).contains("/dev/pts/"), "{:?}", stdout(&o));
    assert!(stdout(&o).contains("got:hello\r\n"), "{:?}", stdout(&o));

    let o = msb(h, &["stop", "term"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn exec_without_a_command_runs_a_shell() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let h = home.path();
    let o = msb(h, &["create", "sh", "-w", "/tmp", "-e", "WHO=sandbox"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(h, &["start", "sh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = Command::new(msb_bin())
        .args(["exec", "sh"])
        .env("MSB_HOME", h)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo $0 in $(pwd) as $WHO; exit 9\n")
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    assert_eq!(stdout(&o), "/bin/sh in /tmp as sandbox\n");
    // A command that does not exist: 127, as a shell reports it.
    let o = msb(h, &["exec", "sh", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot run no-such-command"),
        "{}",
        stderr(&o)
    );
    let o = msb(h, &["rm", "-f", "sh"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn create_refuses_an_incompatible_ensure_exists_volume() {
    let home = home();
    let h = home.path();
    let o = msb(h, &["volume", "create", "q", "--quota", "8M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = msb(
        h,
        &[
            "create",
            "web",
            "--mount-named",
            "q:/q:mode=ensure-exists,quota=16M",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("volume q exists with quota 8 MiB, not quota 16 MiB"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        json(&msb(h, &["ls", "--format", "json"])),
        serde_json::json!([])
    );
}
