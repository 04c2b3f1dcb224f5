//! `msb cp` as users run it: the real binary, a real store, real host files.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        // Relative host paths in the tests are inside the home.
        .current_dir(home)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// 2001-09-09T01:46:40Z, far from any time a test runs at.
fn old_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

fn set_old_time(p: &Path) {
    File::open(p).unwrap().set_modified(old_time()).unwrap();
}

/// A small tree: `tree/a` (0640), `tree/sub/b`, `tree/sub` (0750), and a
/// symlink `tree/link -> a`.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a"), "alpha\n").unwrap();
    fs::write(dir.join("sub/b"), "beta\n").unwrap();
    std::os::unix::fs::symlink("a", dir.join("link")).unwrap();
    set_mode(&dir.join("a"), 0o640);
    set_mode(&dir.join("sub"), 0o750);
}

fn volume(h: &Path, args: &[&str]) {
    let mut all = vec!["volume", "create"];
    all.extend_from_slice(args);
    all.push("-q");
    ok(&msb(h, &all));
}

#[test]
fn file_in_and_out_keeps_content_and_permission_bits() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    fs::write(h.join("f"), "hello\n").unwrap();
    set_mode(&h.join("f"), 0o4750);
    ok(&msb(h, &["cp", "f", "v:/in"]));
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "cat", "in"])), "hello\n");
    let stat = ok(&msb(h, &["volume", "fs", "v", "stat", "in"]));
    // setuid is dropped on the way in, the rest kept.
    assert!(stat.contains("Mode:     0750"), "{stat}");
    ok(&msb(h, &["cp", "v:in", "out"]));
    assert_eq!(fs::read_to_string(h.join("out")).unwrap(), "hello\n");
    assert_eq!(mode(&h.join("out")), 0o750);
}

#[test]
fn directory_in_and_out_recursively() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    make_tree(&h.join("tree"));
    ok(&msb(h, &["cp", "tree", "v:copy"]));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "v", "ls", "copy"])),
        "a\nlink -> a\nsub/\n"
    );
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "v", "cat", "copy/sub/b"])),
        "beta\n"
    );
    ok(&msb(h, &["cp", "v:copy", "back"]));
    let back = h.join("back");
    assert_eq!(fs::read_to_string(back.join("a")).unwrap(), "alpha\n");
    assert_eq!(fs::read_to_string(back.join("sub/b")).unwrap(), "beta\n");
    assert_eq!(fs::read_link(back.join("link")).unwrap(), Path::new("a"));
    assert_eq!(mode(&back.join("a")), 0o640);
    assert_eq!(mode(&back.join("sub")), 0o750);
}

#[test]
fn archive_flag_keeps_modification_times() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    let tree = h.join("tree");
    make_tree(&tree);
    set_old_time(&tree.join("a"));
    set_old_time(&tree.join("sub"));

    ok(&msb(h, &["cp", "-a", "tree", "v:kept"]));
    ok(&msb(h, &["cp", "tree", "v:fresh"]));
    for p in ["kept/a", "kept/sub"] {
        let stat = ok(&msb(h, &["volume", "fs", "v", "stat", p]));
        assert!(stat.contains("Modified: 2001-09-09T01:46:40Z"), "{stat}");
    }
    let fresh = ok(&msb(h, &["volume", "fs", "v", "stat", "fresh/a"]));
    assert!(!fresh.contains("2001-09-09"), "{fresh}");

    ok(&msb(h, &["cp", "-a", "v:kept", "kept-out"]));
    ok(&msb(h, &["cp", "v:kept", "fresh-out"]));
    let secs = |p: &str| fs::metadata(h.join(p)).unwrap().mtime();
    assert_eq!(secs("kept-out/a"), 1_000_000_000);
    assert_eq!(secs("kept-out/sub"), 1_000_000_000);
    assert!(secs("fresh-out/a") > 1_000_000_000);
    assert!(secs("fresh-out/sub") > 1_000_000_000);
}

#[test]
fn an_existing_directory_receives_the_source_inside_it() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    make_tree(&h.join("tree"));
    fs::write(h.join("f"), "file\n").unwrap();
    ok(&msb(h, &["volume", "fs", "v", "mkdir", "dest"]));

    // Into the volume: a file, a tree, and the root itself.
    ok(&msb(h, &["cp", "f", "v:dest"]));
    ok(&msb(h, &["cp", "tree", "v:/dest/"]));
    ok(&msb(h, &["cp", "f", "v:"]));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "v", "ls", "dest"])),
        "f\ntree/\n"
    );
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "v", "cat", "dest/tree/sub/b"])),
        "beta\n"
    );
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "dest/\nf\n");

    // Out to the host: into an existing directory, a file and a tree.
    fs::create_dir(h.join("out")).unwrap();
    ok(&msb(h, &["cp", "v:dest/f", "out"]));
    ok(&msb(h, &["cp", "v:dest/tree", "out/"]));
    assert_eq!(fs::read_to_string(h.join("out/f")).unwrap(), "file\n");
    assert_eq!(
        fs::read_to_string(h.join("out/tree/sub/b")).unwrap(),
        "beta\n"
    );
    // A volume's root goes in under the volume's name.
    ok(&msb(h, &["cp", "v:", "out"]));
    assert_eq!(fs::read_to_string(h.join("out/v/f")).unwrap(), "file\n");
}

#[test]
fn a_quota_refuses_an_oversized_copy_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["q", "--quota", "1"]);
    let big = vec![7u8; 3 << 20];
    fs::write(h.join("big"), &big).unwrap();
    let tree = h.join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a-small"), "small\n").unwrap();
    fs::write(tree.join("b-big"), &big).unwrap();

    let e = err(&msb(h, &["cp", "big", "q:big"]));
    assert!(e.contains("quota"), "{e}");
    // The small file goes in first; the big one is refused after it.
    let e = err(&msb(h, &["cp", "tree", "q:tree"]));
    assert!(e.contains("quota"), "{e}");
    assert_eq!(ok(&msb(h, &["volume", "fs", "q", "ls"])), "");
    let volume_dir = h.join("volumes/q");
    assert_eq!(fs::read_dir(&volume_dir).unwrap().count(), 0);

    // What fits still goes in.
    ok(&msb(h, &["cp", "tree/a-small", "q:"]));
    assert_eq!(ok(&msb(h, &["volume", "fs", "q", "ls"])), "a-small\n");
}

#[test]
fn a_symlink_in_the_volume_cannot_lead_to_the_host() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    // What a sandbox could leave in its volume.
    std::os::unix::fs::symlink("/etc", h.join("volumes/v/escape")).unwrap();
    let probe = format!("msb-cp-test-{}", std::process::id());
    fs::write(h.join("host"), "x\n").unwrap();
    let etc_before = fs::metadata("/etc").unwrap().mtime();

    let e = err(&msb(h, &["cp", "v:escape/passwd", "out"]));
    assert!(e.contains("path escapes volume root"), "{e}");
    assert!(!h.join("out").exists());

    let into = format!("v:escape/{probe}");
    let e = err(&msb(h, &["cp", "host", &into]));
    assert!(e.contains("path escapes volume root"), "{e}");
    // The symlink itself as the destination directory is refused too.
    let e = err(&msb(h, &["cp", "host", "v:escape"]));
    assert!(e.contains("path escapes volume root"), "{e}");
    assert!(!Path::new("/etc").join(&probe).exists());
    assert!(!Path::new("/etc/host").exists());
    assert_eq!(fs::metadata("/etc").unwrap().mtime(), etc_before);
    // The symlink is still there, as it was.
    assert_eq!(
        fs::read_link(h.join("volumes/v/escape")).unwrap(),
        Path::new("/etc")
    );
}

#[test]
fn fs_cp_with_a_host_path_points_to_msb_cp() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    let e = err(&msb(h, &["volume", "fs", "v", "cp", "/etc/hostname", "x"]));
    assert!(e.contains("path escapes volume root"), "{e}");
    assert!(e.contains("use `msb cp /etc/hostname v:x`"), "{e}");
    // A missing path inside the volume gets no such hint.
    let e = err(&msb(h, &["volume", "fs", "v", "cp", "nothing", "x"]));
    assert!(!e.contains("msb cp"), "{e}");
}

#[test]
fn sides_are_checked() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["v"]);
    fs::write(h.join("f"), "f\n").unwrap();
    let e = err(&msb(h, &["cp", "f", "g"]));
    assert!(e.contains("neither side names a volume"), "{e}");
    let e = err(&msb(h, &["cp", "v:f", "v:g"]));
    assert!(e.contains("both sides name a volume"), "{e}");
    let e = err(&msb(h, &["cp", "f", "nosuch:f"]));
    assert!(e.contains("no volume named nosuch"), "{e}");
    // A path with a ':' after a '/' is the host's.
    let e = err(&msb(h, &["cp", "./v:f", "v:g"]));
    assert!(e.contains("cannot read ./v:f"), "{e}");
}

#[test]
fn a_stopped_sandbox_is_refused_with_its_reason() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["create", "--no-start", "sb"]));
    fs::write(h.join("f"), "f\n").unwrap();
    let e = err(&msb(h, &["cp", "f", "sb:/tmp/f"]));
    assert!(e.contains("sandbox sb is not running"), "{e}");
}

/// Stops the sandbox however the test ends.
struct Stop<'a>(&'a Path, &'a str);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = msb(self.0, &["stop", self.1]);
    }
}

#[test]
fn into_a_running_sandbox_through_its_tar() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running sandboxes needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["create", "sb"]));
    let _stop = Stop(h, "sb");
    let tree = h.join("tree");
    make_tree(&tree);
    set_old_time(&tree.join("sub/b"));

    ok(&msb(h, &["cp", "tree/a", "sb:/tmp/named"]));
    // /tmp exists: the tree goes inside it, with -a its times kept.
    ok(&msb(h, &["cp", "-a", "tree", "sb:/tmp"]));
    ok(&msb(h, &["cp", "tree", "sb:/tmp/fresh"]));
    let out = ok(&msb(
        h,
        &[
            "exec",
            "sb",
            "--",
            "sh",
            "-c",
            "cat /tmp/named /tmp/tree/sub/b; readlink /tmp/tree/link; \
             stat -c '%a %Y' /tmp/tree/a /tmp/tree/sub /tmp/tree/sub/b /tmp/fresh/sub/b",
        ],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["alpha", "beta", "a"], "{out}");
    assert!(lines[3].starts_with("640 "), "{out}");
    assert!(lines[4].starts_with("750 "), "{out}");
    assert_eq!(lines[5], "644 1000000000", "{out}");
    assert!(!lines[6].ends_with(" 1000000000"), "{out}");

    // tar's own complaint comes back.
    let e = err(&msb(h, &["cp", "tree/a", "sb:/nonexistent/x"]));
    assert!(e.contains("tar in sandbox sb failed"), "{e}");
    assert!(e.contains("/nonexistent"), "{e}");
    // Out of a sandbox is refused: its archive would be unpacked on the host.
    let e = err(&msb(h, &["cp", "sb:/etc/passwd", "out"]));
    assert!(
        e.contains("copying out of a sandbox is not supported"),
        "{e}"
    );
    assert!(!h.join("out").exists());

    // A volume of the same name wins.
    volume(h, &["sb"]);
    ok(&msb(h, &["cp", "tree/a", "sb:/from-host"]));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "sb", "cat", "from-host"])),
        "alpha\n"
    );
}

#[test]
fn disk_volume_in_and_out() {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipping: disk volumes need root and /dev/loop-control");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    volume(h, &["d", "--kind", "disk", "--size", "64M"]);
    make_tree(&h.join("tree"));
    ok(&msb(h, &["cp", "tree", "d:"]));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "d", "cat", "tree/sub/b"])),
        "beta\n"
    );
    ok(&msb(h, &["cp", "d:tree", "out"]));
    assert_eq!(fs::read_to_string(h.join("out/a")).unwrap(), "alpha\n");
    assert_eq!(mode(&h.join("out/sub")), 0o750);
}
