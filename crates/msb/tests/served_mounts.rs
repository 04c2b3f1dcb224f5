//! Sandboxes use volumes served by the filesystem server (here: ones with a
//! quota) from their first step: as working directory, as the home of the
//! command, under a nested mount point. The real binary, a real store, real
//! FUSE.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

/// Whether served mounts can run here: as root, or rootless as a user the
/// kernel lets create user namespaces and who may open `/dev/fuse` (printed
/// when not).
fn root() -> bool {
    if !rustix::process::geteuid().is_root() {
        let userns = Command::new("unshare")
            .args(["--user", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !userns {
            eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
            return false;
        }
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

fn msb(home: &Path) -> Command {
    let mut c = Command::new(msb_bin());
    c.env("MSB_HOME", home).current_dir(home);
    c
}

/// Kills every process started with this `MSB_HOME` (a hung start leaves
/// its supervisor behind, and the supervisor wrote no pid file yet).
fn kill_all(home: &Path) {
    let mark = format!("MSB_HOME={}", home.display());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == mark.as_bytes())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A home with the directory volume `data`, whose quota puts it behind the
/// filesystem server.
fn home_with_served_volume() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let o = msb(home.path())
        .args(["volume", "create", "data", "--quota", "10M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    home
}

/// Waits for `child` to end; if it hangs, kills everything of `home` and
/// fails (the init waiting on a server that was not running yet).
fn end_within_30s(child: &mut std::process::Child, home: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            kill_all(home);
            let _ = child.wait();
            panic!("{what} hung: the init waited on the volume's server");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_with_workdir_on_a_served_volume_does_not_hang() {
    if !root() {
        return;
    }
    let home = home_with_served_volume();
    let o = msb(home.path())
        .args(["create", "web", "-v", "data:/data", "-w", "/data"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut start = msb(home.path())
        .args(["start", "web"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    end_within_30s(&mut start, home.path(), "msb start");
    assert!(start.wait().unwrap().success());
    let o = msb(home.path())
        .args(["exec", "web", "--", "sh", "-c", "pwd; echo hi > f"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let rm = msb(home.path()).args(["rm", "-f", "web"]).output().unwrap();
    kill_all(home.path());
    assert_eq!(out, "/data\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(rm.status.success());
    assert_eq!(
        std::fs::read_to_string(home.path().join("volumes/data/f")).unwrap(),
        "hi\n"
    );
}

#[test]
fn one_shot_run_starts_on_a_served_volume() {
    if !root() {
        return;
    }
    let home = home_with_served_volume();
    // A program that lives on the volume.
    let tool = home.path().join("volumes/data/tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran in $(pwd)\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut run = msb(home.path())
        .args([
            "run",
            "-v",
            "data:/data",
            "--tmpfs",
            "/data/scratch",
            "-w",
            "/data",
            "--",
            "sh",
            "-c",
            "/data/tool; echo x > scratch/f; stat -f -c %T /data/scratch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    end_within_30s(&mut run, home.path(), "msb run");
    let o = run.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "tool ran in /data\ntmpfs\n"
    );
    // The scratch file went to the tmpfs, not to the volume.
    assert!(home.path().join("volumes/data/scratch").is_dir());
    assert!(!home.path().join("volumes/data/scratch/f").exists());
}
