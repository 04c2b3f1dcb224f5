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

/// No staging directory of an unpacking is left in `dir`.
fn no_staging_left(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().starts_with(".msb-cp-"), "{n:?} left");
    }
}

#[test]
fn out_of_a_running_sandbox_through_its_tar() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running sandboxes needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["create", "sb"]));
    let _stop = Stop(h, "sb");
    ok(&msb(
        h,
        &[
            "exec",
            "sb",
            "sh",
            "-c",
            "mkdir -p /tmp/t/sub && echo alpha > /tmp/t/a && echo beta > /tmp/t/sub/b && \
             chmod 640 /tmp/t/a && chmod 4755 /tmp/t/sub/b && chmod 750 /tmp/t/sub && \
             ln -s a /tmp/t/link && ln /tmp/t/a /tmp/t/hard && mkfifo /tmp/t/fifo && \
             touch -d @1000000000 /tmp/t/a /tmp/t/sub",
        ],
    ));

    // A file under a new name, then a tree.
    ok(&msb(h, &["cp", "sb:/tmp/t/a", "one"]));
    assert_eq!(fs::read_to_string(h.join("one")).unwrap(), "alpha\n");
    assert_eq!(mode(&h.join("one")), 0o640);
    let o = msb(h, &["cp", "sb:/tmp/t", "tree"]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("skipped special file: t/fifo"),
        "{o:?}"
    );
    let t = h.join("tree");
    assert_eq!(fs::read_to_string(t.join("sub/b")).unwrap(), "beta\n");
    assert_eq!(fs::read_link(t.join("link")).unwrap(), Path::new("a"));
    assert_eq!(mode(&t.join("sub")), 0o750);
    // setuid is not carried onto the host.
    assert_eq!(mode(&t.join("sub/b")), 0o755);
    assert!(!t.join("fifo").exists());
    let (a, hard) = (
        fs::metadata(t.join("a")).unwrap(),
        fs::metadata(t.join("hard")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (hard.ino(), 2));
    // Times are the copy's unless -a.
    assert_ne!(a.mtime(), 1_000_000_000);
    no_staging_left(h);

    // An existing directory receives the tree inside it, with -a its times.
    fs::create_dir(h.join("into")).unwrap();
    ok(&msb(h, &["cp", "-a", "sb:/tmp/t", "into"]));
    let m = fs::metadata(h.join("into/t/a")).unwrap();
    assert_eq!(m.mtime(), 1_000_000_000);
    assert_eq!(
        fs::metadata(h.join("into/t/sub")).unwrap().mtime(),
        1_000_000_000
    );
    // Again: merged into what is there, files replaced, others kept.
    fs::write(h.join("into/t/mine"), "mine\n").unwrap();
    ok(&msb(h, &["exec", "sb", "sh", "-c", "echo new > /tmp/t/a"]));
    ok(&msb(h, &["cp", "sb:/tmp/t", "into"]));
    assert_eq!(fs::read_to_string(h.join("into/t/a")).unwrap(), "new\n");
    assert_eq!(fs::read_to_string(h.join("into/t/mine")).unwrap(), "mine\n");
    no_staging_left(&h.join("into"));

    // tar's own complaint comes back, and nothing is made.
    let e = err(&msb(h, &["cp", "sb:/nonexistent", "gone"]));
    assert!(e.contains("tar in sandbox sb failed"), "{e}");
    assert!(e.contains("nonexistent"), "{e}");
    assert!(!h.join("gone").exists());
    no_staging_left(h);
}

/// One ustar header block and its data, as a hostile tar may write it.
fn tar_entry(name: &[u8], kind: u8, mode: u32, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 512];
    head[..name.len()].copy_from_slice(name);
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{v:0w$o}\0", w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut head[100..108], u64::from(mode));
    octal(&mut head[108..116], 0);
    octal(&mut head[116..124], 0);
    octal(&mut head[124..136], data.len() as u64);
    octal(&mut head[136..148], 1_000_000_000);
    head[156] = kind;
    head[157..157 + link.len()].copy_from_slice(link);
    head[257..265].copy_from_slice(b"ustar\x0000");
    if kind == b'3' {
        octal(&mut head[329..337], 1);
        octal(&mut head[337..345], 3);
    }
    head[148..156].copy_from_slice(b"        ");
    let sum: u32 = head.iter().map(|&b| u32::from(b)).sum();
    head[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = head.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

fn tar_end(mut blocks: Vec<u8>) -> Vec<u8> {
    blocks.extend_from_slice(&[0; 1024]);
    blocks
}

#[test]
fn out_of_a_hostile_sandbox_nothing_leaves_the_target() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running sandboxes needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // The sandbox's `tar` is its own: first in PATH, on a volume, writing
    // whatever archive the case file names and exiting as told.
    volume(h, &["evil"]);
    let script = h.join("tar");
    fs::write(
        &script,
        "#!/bin/sh\nc=$(cat /evil/case)\ncat /evil/$c.tar\n[ -e /evil/$c.sleep ] && exec sleep 30\nexit $(cat /evil/$c.status 2>/dev/null || echo 0)\n",
    )
    .unwrap();
    set_mode(&script, 0o755);
    ok(&msb(h, &["cp", "tar", "evil:tar"]));
    let victim = h.join("victim");
    fs::create_dir(&victim).unwrap();
    let v = victim.to_str().unwrap().as_bytes();
    let abs = h.join("abs");
    let dir = |n: &[u8]| tar_entry(n, b'5', 0o755, b"", b"");
    let file = |n: &[u8], d: &[u8]| tar_entry(n, b'0', 0o644, d, b"");
    let mut huge = [dir(b"t/"), file(b"t/big", b"")].concat();
    // A size of 1 PiB in base-256, far beyond any disk here.
    let big = 512 + 124;
    huge[big..big + 12].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    let sum_at = 512 + 148;
    huge[sum_at..sum_at + 8].copy_from_slice(b"        ");
    let sum: u32 = huge[512..1024].iter().map(|&b| u32::from(b)).sum();
    huge[sum_at..sum_at + 8].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            [dir(b"t/"), file(b"t/../../escape", b"x")].concat(),
            "outside the copied tree",
        ),
        (
            "absolute",
            [dir(b"t/"), file(abs.to_str().unwrap().as_bytes(), b"x")].concat(),
            "outside the copied tree",
        ),
        ("othertop", file(b"u/x", b"x"), "outside the copied tree"),
        (
            "symlinkwalk",
            [
                dir(b"t/"),
                tar_entry(b"t/link", b'2', 0o777, b"", v),
                file(b"t/link/pwned", b"x"),
            ]
            .concat(),
            "(or under a symlink)",
        ),
        (
            "hardlinkout",
            [
                dir(b"t/"),
                tar_entry(b"t/h", b'1', 0o644, b"", b"/etc/passwd"),
            ]
            .concat(),
            "hard link",
        ),
        (
            "hardlinkup",
            [
                dir(b"t/"),
                tar_entry(b"t/h", b'1', 0o644, b"", b"t/../../x"),
            ]
            .concat(),
            "hard link",
        ),
        ("huge", huge, "reserve"),
        ("empty", Vec::new(), "archive was empty"),
        (
            "trailer",
            [dir(b"t/"), vec![0; 1024], vec![b'z'; 2 << 20]].concat(),
            "wrote more after its archive ended",
        ),
        (
            "failing",
            [dir(b"t/"), file(b"t/f", b"x")].concat(),
            "tar in sandbox sb failed with status 3",
        ),
    ];
    for (name, blocks, _) in &cases {
        let blocks = if *name == "trailer" {
            blocks.clone()
        } else {
            tar_end(blocks.clone())
        };
        fs::write(h.join(format!("{name}.tar")), blocks).unwrap();
        ok(&msb(h, &["cp", &format!("{name}.tar"), "evil:"]));
    }
    fs::write(h.join("failing.status"), "3\n").unwrap();
    ok(&msb(h, &["cp", "failing.status", "evil:"]));
    fs::write(
        h.join("special.tar"),
        tar_end(
            [
                dir(b"t/"),
                tar_entry(b"t/suid", b'0', 0o4755, b"x", b""),
                tar_entry(b"t/sgid", b'0', 0o2775, b"y", b""),
                tar_entry(b"t/dev", b'3', 0o666, b"", b""),
                tar_entry(b"t/fifo", b'6', 0o666, b"", b""),
                tar_entry(b"t/sticky", b'5', 0o1777, b"", b""),
            ]
            .concat(),
        ),
    )
    .unwrap();
    ok(&msb(h, &["cp", "special.tar", "evil:"]));

    ok(&msb(
        h,
        &[
            "create",
            "sb",
            "-v",
            "evil:/evil",
            "-e",
            "PATH=/evil:/usr/sbin:/usr/bin:/sbin:/bin",
        ],
    ));
    let _stop = Stop(h, "sb");
    let set_case = |c: &str| {
        ok(&msb(
            h,
            &["exec", "sb", "sh", "-c", &format!("echo {c} > /evil/case")],
        ));
    };
    for (name, _, want) in &cases {
        set_case(name);
        let e = err(&msb(h, &["cp", "sb:/x/t", "out"]));
        assert!(e.contains(want), "{name}: {e}");
        assert!(!h.join("out").exists(), "{name}: a target was made");
        no_staging_left(h);
        assert!(!abs.exists() && !h.join("escape").exists());
        assert!(!h.parent().unwrap().join("escape").exists());
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "{name}");
    }

    // Interrupted while the sandbox stalls mid-archive: the signal ends
    // msb as it would have without a handler, and nothing is left.
    fs::write(
        h.join("stall.tar"),
        [dir(b"t/"), file(b"t/f", b"x")].concat(),
    )
    .unwrap();
    fs::write(h.join("stall.sleep"), "").unwrap();
    ok(&msb(h, &["cp", "stall.tar", "evil:"]));
    ok(&msb(h, &["cp", "stall.sleep", "evil:"]));
    set_case("stall");
    let child = Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(["cp", "sb:/x/t", "out"])
        .env("MSB_HOME", h)
        .current_dir(h)
        .spawn()
        .unwrap();
    // Until the staged directory shows the first entry was unpacked.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fs::read_dir(h).unwrap().any(|e| {
        let n = e.unwrap().file_name();
        n.to_string_lossy().starts_with(".msb-cp-")
    }) {
        assert!(std::time::Instant::now() < deadline, "no staging seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "slow to stop");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{out:?}");
    assert!(!h.join("out").exists());
    no_staging_left(h);

    // Special files are skipped and special mode bits dropped.
    set_case("special");
    let o = msb(h, &["cp", "sb:/x/t", "out"]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("skipped special file: t/dev"), "{stderr}");
    assert!(stderr.contains("skipped special file: t/fifo"), "{stderr}");
    let out = h.join("out");
    assert_eq!(mode(&out.join("suid")), 0o755);
    assert_eq!(mode(&out.join("sgid")), 0o775);
    assert_eq!(mode(&out.join("sticky")), 0o777);
    assert!(!out.join("dev").exists() && !out.join("fifo").exists());
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sgid", "sticky", "suid"]);
}
