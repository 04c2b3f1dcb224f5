//! msb run by an unprivileged user: the sandbox's root is that user alone
//! (a user namespace mapping one id), volumes and binds are the user's own
//! files, and what needs host root (the filesystem server's FUSE mounts,
//! loop devices, cgroups) is refused with the reason or left out. The test
//! runs the real binary as uid 65534 through `setpriv`, so it needs root to
//! start and a kernel that lets unprivileged users create user namespaces
//! (skips with a reason otherwise).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The unprivileged user the tests run msb as.
const USER: u32 = 65534;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `msb args` as [`USER`] with the store at `home`.
fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home)
        .env_remove("HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A directory [`USER`] owns, in one every user may enter.
fn user_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(USER), Some(USER)).unwrap();
    dir
}

/// Whether the test can run: root to switch users, `setpriv`, and user
/// namespaces for unprivileged users.
fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return false;
    }
    let probe = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "unshare",
            "--user",
            "true",
        ])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unprivileged users may not create user namespaces here");
        return false;
    }
    true
}

#[test]
fn an_unprivileged_user_runs_sandboxes_with_volumes_binds_and_tmpfs() {
    if !can_run() {
        return;
    }
    let home = user_dir();
    let store = home.path().join("home");
    let bind = user_dir();
    let o = msb(&store, &["volume", "create", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(
        &store,
        &[
            "run",
            "-v",
            "data:/data",
            "-v",
            &format!("{}:/b", bind.path().display()),
            "--tmpfs",
            "/t",
            "--",
            "sh",
            "-c",
            "id -u; head -1 /proc/self/uid_map; echo v > /data/f; echo b > /b/f; \
             echo t > /t/f && cat /data/f /b/f /t/f",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "{out}");
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", &USER.to_string(), "1"], "{out}");
    assert_eq!(lines.collect::<Vec<_>>(), ["v", "b", "t"], "{out}");
    // What the sandbox wrote belongs to the user, on the host.
    for f in [store.join("volumes/data/f"), bind.path().join("f")] {
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (USER, USER), "{}", f.display());
    }
}

#[test]
fn what_needs_root_is_refused_with_the_reason() {
    if !can_run() {
        return;
    }
    let home = user_dir();
    let store = home.path().join("home");
    let o = msb(&store, &["volume", "create", "capped", "--quota", "8M"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(&store, &["run", "-v", "capped:/c", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("mount at /c: quota, stat-virt and host-perms are served by a FUSE mount, which only root may make"),
        "{err}"
    );
    let image = home.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::chown(&image, Some(USER), Some(USER)).unwrap();
    let o = msb(
        &store,
        &[
            "run",
            "--mount-disk",
            &format!("{}:/d", image.display()),
            "--",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains(
            "mount at /d: a disk image is attached to a loop device, which only root may make"
        ),
        "{err}"
    );
    // Nothing was left behind: the volume is still there, unused.
    let o = msb(&store, &["volume", "rm", "capped"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn an_unprivileged_user_keeps_a_named_sandbox_and_joins_it() {
    if !can_run() {
        return;
    }
    let home = user_dir();
    let store = home.path().join("home");
    let ok = |args: &[&str]| {
        let o = msb(&store, args);
        assert!(o.status.success(), "msb {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    ok(&["create", "web", "-v", "data:/data", "-e", "MODE=dev"]);
    ok(&["start", "web"]);
    let out = ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo $MODE > /data/mode; cat /data/mode; id -u; head -1 /proc/self/uid_map",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["dev", "0"], "{out}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &USER.to_string(), "1"], "{out}");
    // Status and signals come back as the command ended.
    let o = msb(&store, &["exec", "web", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    let o = msb(&store, &["exec", "web", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143), "{}", text(&o.stderr));
    ok(&["stop", "web"]);
    ok(&["rm", "web"]);
    let meta = std::fs::metadata(store.join("volumes/data/mode")).unwrap();
    assert_eq!(meta.uid(), USER);
}
