//! `msb volume mount -d` and `msb volume unmount` on the host: the real
//! binary, real FUSE, real processes killed the hard way.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        eprintln!("skipped: mounting needs root");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse");
        return false;
    }
    true
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `dir` is a mount point in our mount table (never touches the
/// mount itself, which may be dead).
fn mounted(dir: &Path) -> bool {
    let needle = format!(" {} ", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&needle) && l.contains(" - fuse.msb "))
}

/// The background server serving `dir` with this home: the process whose
/// command line is `msb volume mount ... DIR` and that leads its session
/// (the watchdog is the server's child with the same command line; the
/// lower pid is not always the parent: pids wrap, at 32768 on CI machines).
fn server_pid(home: &Path, dir: &Path) -> i32 {
    let mark = format!("MSB_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let (Ok(env), Ok(cmd)) = (
            std::fs::read(entry.path().join("environ")),
            std::fs::read(entry.path().join("cmdline")),
        ) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if env.split(|b| *b == 0).any(|v| v == mark.as_bytes())
            && cmd.contains("volume mount")
            && cmd.contains(&dir.display().to_string())
            && session_of(pid) == Some(pid)
        {
            found.push(pid);
        }
    }
    assert!(found.len() <= 1, "several servers: {found:?}");
    *found.first().expect("the server runs")
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(3)?.parse().ok()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mount_write_unmount_remove() {
    if !root() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "--quota", "8M"]));
    ok(&msb(
        h,
        &["volume", "mount", "-d", "v", mnt.path().to_str().unwrap()],
    ));
    assert!(mounted(mnt.path()));
    std::fs::write(mnt.path().join("f"), "through the mount\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(h.join("volumes/v/f")).unwrap(),
        "through the mount\n"
    );
    // In use while mounted.
    let o = msb(h, &["volume", "rm", "v"]);
    assert_eq!(o.status.code(), Some(1));
    let holder = format!("mount:{}", mnt.path().display());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&holder),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&msb(
        h,
        &["volume", "unmount", mnt.path().to_str().unwrap()],
    ));
    assert!(!mounted(mnt.path()));
    ok(&msb(h, &["volume", "rm", "v"]));
}

#[test]
fn a_killed_server_leaves_no_mount_behind() {
    if !root() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "--quota", "8M"]));

    // The server alone: its watchdog removes the mount.
    let mnt = tempfile::tempdir().unwrap();
    ok(&msb(
        h,
        &["volume", "mount", "-d", "v", mnt.path().to_str().unwrap()],
    ));
    let pid = rustix::process::Pid::from_raw(server_pid(h, mnt.path())).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    wait_until("the watchdog unmounts", || !mounted(mnt.path()));

    // The server and its watchdog at once (their whole process group): the
    // dead mount stays until the volume is removed, which detaches it.
    let mnt = tempfile::tempdir().unwrap();
    ok(&msb(
        h,
        &["volume", "mount", "-d", "v", mnt.path().to_str().unwrap()],
    ));
    let raw = server_pid(h, mnt.path());
    let pid = rustix::process::Pid::from_raw(raw).unwrap();
    rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).unwrap();
    wait_until("the server is gone", || {
        !Path::new(&format!("/proc/{raw}")).exists()
    });
    assert!(mounted(mnt.path()));
    let err = std::fs::metadata(mnt.path().join("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let o = msb(h, &["volume", "rm", "v"]);
    assert_eq!(ok(&o), "v\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("detached the dead mount of v"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!mounted(mnt.path()));
}

#[test]
fn a_second_mount_on_a_directory_is_refused() {
    if !root() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let h = home.path();
    let dir = mnt.path().to_str().unwrap();
    ok(&msb(h, &["volume", "create", "v"]));
    ok(&msb(h, &["volume", "create", "w"]));
    ok(&msb(h, &["volume", "mount", "-d", "v", dir]));
    for name in ["v", "w"] {
        let o = msb(h, &["volume", "mount", "-d", name, dir]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "{dir} already has volume v (msb volume mount) mounted"
            )),
            "{err}"
        );
    }
    // One mount, one server, still serving.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!(" {dir} ")))
        .count();
    assert_eq!(mounts, 1);
    server_pid(h, mnt.path());
    ok(&msb(h, &["volume", "unmount", dir]));
    assert!(!mounted(mnt.path()));
}
