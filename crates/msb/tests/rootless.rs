//! msb run by an unprivileged user: the sandbox's root is that user alone
//! (a user namespace mapping one id), volumes and binds are the user's own
//! files, served mounts (quota, stat-virt, host-perms) are FUSE mounts the
//! sandbox makes in its own user namespace where the user may open
//! `/dev/fuse`, and what needs host root (loop devices, cgroups) is refused
//! with the reason or left out. The test runs the real binary as uid 65534
//! through `setpriv`, so it needs root to start and a kernel that lets
//! unprivileged users create user namespaces (skips with a reason
//! otherwise).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

/// The unprivileged user the tests run msb as.
const USER: u32 = 65534;
/// Its group: another number than its uid, so that a mix-up of user and
/// group ids shows.
const GROUP: u32 = 65533;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `msb args` as [`USER`] with the store at `home`.
fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={GROUP}"),
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
    std::os::unix::fs::chown(dir.path(), Some(USER), Some(GROUP)).unwrap();
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
            &format!("--regid={GROUP}"),
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

const FUSE: &str = "/dev/fuse";

/// `/dev/fuse` given a mode for one test; the original mode comes back when
/// it drops, also when the test fails. Tests changing it take turns.
struct FuseMode {
    original: u32,
    _turn: MutexGuard<'static, ()>,
}

impl FuseMode {
    fn set(mode: u32) -> FuseMode {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let original = std::fs::metadata(FUSE).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(FUSE, std::fs::Permissions::from_mode(mode)).unwrap();
        FuseMode {
            original,
            _turn: turn,
        }
    }
}

impl Drop for FuseMode {
    fn drop(&mut self) {
        let back = std::fs::Permissions::from_mode(self.original);
        if let Err(e) = std::fs::set_permissions(FUSE, back) {
            eprintln!("cannot restore the mode {:o} of {FUSE}: {e}", self.original);
        }
    }
}

/// Whether a served mount could be tried: `/dev/fuse` exists and the
/// kernel let the sandbox make its FUSE mount (printed when not).
fn fuse_mount_refused(o: &Output) -> bool {
    let err = text(&o.stderr);
    if err.contains("cannot create a FUSE mount") {
        eprintln!("skipped: the kernel refuses FUSE mounts in a user namespace here: {err}");
        return true;
    }
    false
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
        assert_eq!((meta.uid(), meta.gid()), (USER, GROUP), "{}", f.display());
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
    if Path::new(FUSE).exists() {
        // A device the user may not open: the refusal names it and its mode.
        let _fuse = FuseMode::set(0o600);
        let o = msb(&store, &["run", "-v", "capped:/c", "--", "true"]);
        assert_eq!(o.status.code(), Some(1));
        let err = text(&o.stderr);
        assert!(
            err.contains(
                "mount at /c: quota, stat-virt and host-perms are served by a FUSE mount, \
                 and this user may not open /dev/fuse (mode 0600, owner uid 0 gid 0); \
                 make it mode 0666"
            ),
            "{err}"
        );
    } else {
        eprintln!("skipped the /dev/fuse refusal: no {FUSE} here");
    }
    let image = home.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::chown(&image, Some(USER), Some(GROUP)).unwrap();
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
fn create_refuses_what_could_never_start_for_this_user() {
    if !can_run() {
        return;
    }
    let home = user_dir();
    let store = home.path().join("home");
    let image = home.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::chown(&image, Some(USER), Some(GROUP)).unwrap();
    let disk = format!("{}:/d", image.display());
    let never = "this sandbox could never start for this user on the namespace backend";
    let cases: [&[&str]; 3] = [
        &["create", "web", "--mount-disk", &disk],
        &["create", "web", "--no-start", "--mount-disk", &disk],
        // A disk volume it would create: refused before it is made.
        &["create", "web", "--mount-named", "dv:/d:kind=disk,size=64M"],
    ];
    for args in cases {
        let o = msb(&store, args);
        assert_eq!(o.status.code(), Some(1), "msb {args:?}");
        let err = text(&o.stderr);
        assert!(err.contains(never), "{err}");
        assert!(
            err.contains("a disk image is attached to a loop device"),
            "{err}"
        );
    }
    if Path::new(FUSE).exists() {
        let _fuse = FuseMode::set(0o600);
        let o = msb(&store, &["volume", "create", "capped", "--quota", "8M"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o = msb(&store, &["create", "q", "--no-start", "-v", "capped:/c"]);
        assert_eq!(o.status.code(), Some(1));
        let err = text(&o.stderr);
        assert!(
            err.contains(never) && err.contains("may not open /dev/fuse"),
            "{err}"
        );
        // The host mount says why too, and what to change.
        let o = msb(
            &store,
            &["volume", "mount", "capped", home.path().to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(1));
        let err = text(&o.stderr);
        assert!(
            err.contains("cannot open /dev/fuse: Permission denied")
                && err.contains("hint: this user may not open /dev/fuse: make it mode 0666"),
            "{err}"
        );
        let o = msb(&store, &["volume", "rm", "capped"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    } else {
        eprintln!("skipped the /dev/fuse refusal at create: no {FUSE} here");
    }
    // Nothing was recorded or provisioned by the refusals.
    let o = msb(&store, &["ls", "-q"]);
    assert_eq!(text(&o.stdout), "");
    let o = msb(&store, &["volume", "ls", "-q"]);
    assert_eq!(text(&o.stdout), "");
    // A microVM needs no root for a disk: recorded.
    let o = msb(
        &store,
        &[
            "create",
            "vmweb",
            "--backend",
            "vm",
            "--no-start",
            "--mount-disk",
            &disk,
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msb(&store, &["rm", "vmweb"]);
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

#[test]
fn an_unprivileged_user_gets_quota_and_stat_virt_through_its_own_fuse_mounts() {
    if !can_run() {
        return;
    }
    if !Path::new(FUSE).exists() {
        eprintln!("skipped: no {FUSE} here");
        return;
    }
    let _fuse = FuseMode::set(0o666);
    let home = user_dir();
    let store = home.path().join("home");
    let o = msb(&store, &["volume", "create", "capped", "--quota", "8M"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The quota holds: a 20 MiB write stops with ENOSPC near 8 MiB.
    let o = msb(
        &store,
        &[
            "run",
            "-v",
            "capped:/c",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/c/big bs=1M count=20 2>&1; echo dd=$?; \
             grep ' /c ' /proc/mounts; stat -c '%u %g' /c/big",
        ],
    );
    if fuse_mount_refused(&o) {
        return;
    }
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("dd=1"), "{out}");
    let mount = out.lines().find(|l| l.contains(" /c ")).unwrap();
    for option in ["nosuid", "nodev", "user_id=0", "group_id=0", "allow_other"] {
        assert!(mount.contains(option), "{mount}");
    }
    assert!(out.lines().any(|l| l == "0 0"), "{out}");
    let big = std::fs::metadata(store.join("volumes/capped/big")).unwrap();
    assert_eq!((big.uid(), big.gid()), (USER, GROUP));
    assert!(
        big.len() <= 8 << 20 && big.len() >= 7 << 20,
        "{}",
        big.len()
    );

    // stat-virt strict on a bind mount: ownership and modes live in the
    // record; on the host the files stay the user's, private, plain.
    let bind = user_dir();
    let o = msb(
        &store,
        &[
            "run",
            "-v",
            &format!("{}:/s:stat-virt=strict", bind.path().display()),
            "--",
            "sh",
            "-c",
            "cd /s && echo x > f && chown 0:0 f && chmod 4750 f && mkfifo p && \
             stat -c '%n %A %u %g' f p",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["f -rwsr-x--- 0 0", "p prw-r--r-- 0 0"],
        "{out}"
    );
    for name in ["f", "p"] {
        let meta = std::fs::symlink_metadata(bind.path().join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name}");
        assert_eq!((meta.uid(), meta.gid()), (USER, GROUP), "{name}");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "{name}");
    }
}
