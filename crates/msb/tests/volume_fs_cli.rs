//! `msb volume fs|export|import` as users run them: the real binary, a real
//! store, real disk images.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn msb_in(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may stop reading early (a refused write); that is its answer.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn msb(home: &Path, args: &[&str]) -> Output {
    msb_in(home, args, b"")
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

#[test]
fn file_commands_on_a_dir_volume() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    ok(&msb(h, &["volume", "fs", "v", "mkdir", "etc/app"]));
    ok(&msb_in(
        h,
        &["volume", "fs", "v", "write", "etc/app/cfg"],
        b"x = 1\n",
    ));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "v", "cat", "etc/app/cfg"])),
        "x = 1\n"
    );
    ok(&msb(h, &["volume", "fs", "v", "cp", "etc/app/cfg", "copy"]));
    ok(&msb(h, &["volume", "fs", "v", "mv", "copy", "moved"]));
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "etc/\nmoved\n");
    let stat = ok(&msb(h, &["volume", "fs", "v", "stat", "moved"]));
    assert!(
        stat.contains("Kind:     file") && stat.contains("Size:     6"),
        "{stat}"
    );
    assert!(err(&msb(h, &["volume", "fs", "v", "rm", "etc"])).contains("not empty"));
    ok(&msb(h, &["volume", "fs", "v", "rm", "-r", "etc"]));
    ok(&msb(h, &["volume", "fs", "v", "rm", "moved"]));
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "");
    // The data really is in the volume's directory.
    ok(&msb_in(h, &["volume", "fs", "v", "write", "f"], b"data"));
    assert_eq!(std::fs::read(h.join("volumes/v/f")).unwrap(), b"data");
}

#[test]
fn escapes_print_the_documented_error() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    std::os::unix::fs::symlink("/etc", h.join("volumes/v/etc")).unwrap();
    for (args, path) in [
        (vec!["cat", "../../../etc/passwd"], "../../../etc/passwd"),
        (vec!["cat", "/etc/passwd"], "/etc/passwd"),
        (vec!["cat", "etc/passwd"], "etc/passwd"),
        (vec!["ls", "etc"], "etc"),
        (vec!["write", "etc/evil"], "etc/evil"),
        (vec!["mkdir", "a/../../x"], "a/../../x"),
    ] {
        let mut full = vec!["volume", "fs", "v"];
        full.extend(args);
        let e = err(&msb(h, &full));
        assert_eq!(e, format!("error: path escapes volume root: {path}\n"));
    }
    assert!(!Path::new("/etc/evil").exists());
    // Usage errors exit 2.
    assert_eq!(msb(h, &["volume", "fs", "v"]).status.code(), Some(2));
    assert!(err(&msb(h, &["volume", "fs", "nope", "ls"])).contains("not found"));
}

#[test]
fn quota_applies_to_host_writes() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "q", "--quota", "1M", "-q"]));
    ok(&msb_in(
        h,
        &["volume", "fs", "q", "write", "a"],
        &[1u8; 600_000],
    ));
    let e = err(&msb_in(
        h,
        &["volume", "fs", "q", "write", "b"],
        &[2u8; 600_000],
    ));
    assert!(e.contains("quota of 1048576 bytes exceeded"), "{e}");
    let o = ok(&msb(h, &["volume", "ls", "--format", "json"]));
    let used: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(used[0]["used_bytes"].as_u64().unwrap() <= 1 << 20, "{o}");
}

#[test]
fn export_import_round_trip_through_pipes_and_files() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "src", "-q"]));
    ok(&msb(h, &["volume", "create", "dst", "-q"]));
    ok(&msb(h, &["volume", "fs", "src", "mkdir", "d/e"]));
    ok(&msb_in(
        h,
        &["volume", "fs", "src", "write", "d/e/f"],
        b"payload",
    ));
    let o = msb(h, &["volume", "export", "src"]);
    let tar = o.stdout.clone();
    ok(&o);
    ok(&msb_in(h, &["volume", "import", "dst", "-"], &tar));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "dst", "cat", "d/e/f"])),
        "payload"
    );
    let file = h.join("x.tar");
    ok(&msb(
        h,
        &["volume", "export", "src", "-o", file.to_str().unwrap()],
    ));
    ok(&msb(h, &["volume", "fs", "dst", "rm", "-r", "d"]));
    ok(&msb(
        h,
        &["volume", "import", "dst", file.to_str().unwrap()],
    ));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "dst", "cat", "d/e/f"])),
        "payload"
    );
}

#[test]
fn failed_import_lists_what_it_wrote() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [(&b"good"[..], &b"1"[..]), (b"../evil", b"2")] {
        let mut hd = tar::Header::new_gnu();
        hd.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        hd.set_mode(0o644);
        hd.set_size(data.len() as u64);
        hd.set_cksum();
        b.append(&hd, data).unwrap();
    }
    // Merging: entry by entry, so what came before the bad one stays.
    let e = err(&msb_in(
        h,
        &["volume", "import", "v", "--merge", "-"],
        &b.into_inner().unwrap(),
    ));
    assert!(e.contains("written: good\n"), "{e}");
    assert!(
        e.contains("error: import stopped after writing 1 file(s) (1 bytes)")
            && e.contains("path escapes volume root: ../evil"),
        "{e}"
    );
    assert!(!h.join("volumes/evil").exists());
}

fn can_use_loop_devices() -> bool {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipping: disk volumes need root and /dev/loop-control");
        return false;
    }
    true
}

#[test]
fn disk_volume_files_live_inside_the_image() {
    if !can_use_loop_devices() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(
        h,
        &[
            "volume", "create", "d", "--kind", "disk", "--size", "128M", "-q",
        ],
    ));
    let image = h.join("volumes/d/disk.raw");
    let size = std::fs::metadata(&image).unwrap().len();
    ok(&msb_in(
        h,
        &["volume", "fs", "d", "write", "disk.raw"],
        b"not the image",
    ));
    // The write went into the ext4 filesystem, not over the image.
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "d", "cat", "disk.raw"])),
        "not the image"
    );
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "d", "ls"])),
        "disk.raw\nlost+found/\n"
    );
    // Nothing was left mounted in the host's mount table.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(h.to_str().unwrap()));
    // While a sandbox holds it read-write, host writes (and reads) are refused.
    let store = msb_store::Store::open(h).unwrap();
    let name = msb_spec::VolumeName::new("d").unwrap();
    let _held = store
        .attach(&name, "sandbox:test", msb_store::AttachMode::ReadWrite)
        .unwrap();
    let e = err(&msb_in(h, &["volume", "fs", "d", "write", "x"], b"x"));
    assert!(e.contains("in use by sandbox:test"), "{e}");
    drop(_held);
    // The image's root and what the host wrote belong to the sandboxes.
    for p in [".", "disk.raw"] {
        let stat = ok(&msb(h, &["volume", "fs", "d", "stat", p]));
        assert!(stat.contains("Owner:    1878982656:1878982656\n"), "{stat}");
    }
}

#[test]
fn clone_copies_a_volume_and_its_settings() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(
        h,
        &[
            "volume", "create", "src", "--quota", "8M", "--label", "team=ci", "-q",
        ],
    ));
    ok(&msb(h, &["volume", "fs", "src", "mkdir", "dir"]));
    ok(&msb_in(
        h,
        &["volume", "fs", "src", "write", "dir/f"],
        b"payload",
    ));
    assert_eq!(ok(&msb(h, &["volume", "clone", "src", "copy"])), "copy\n");
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "copy", "cat", "dir/f"])),
        "payload"
    );
    let o = msb(h, &["volume", "inspect", "copy", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v[0]["quota_mib"], 8);
    assert_eq!(v[0]["labels"]["team"], "ci");
    // The copy counts its own usage and is its own tree.
    assert!(v[0]["used_bytes"].as_u64().unwrap() > 0, "{v}");
    ok(&msb_in(
        h,
        &["volume", "fs", "copy", "write", "dir/f"],
        b"changed",
    ));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "src", "cat", "dir/f"])),
        "payload"
    );
    // Refusals name the problem and leave nothing behind.
    assert!(
        err(&msb(h, &["volume", "clone", "src", "copy"])).contains("volume already exists: copy")
    );
    assert!(err(&msb(h, &["volume", "clone", "nope", "x"])).contains("volume not found: nope"));
    assert_eq!(ok(&msb(h, &["volume", "ls", "-q"])), "copy\nsrc\n");
}

/// `msb` with arguments that need not be UTF-8.
fn msb_os(home: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// No byte that a terminal takes as a command: ESC, BEL, CR, and C1's
/// CSI/OSC (as UTF-8 or as raw bytes).
fn assert_inert(what: &str, bytes: &[u8]) {
    for bad in [
        &b"\x1b"[..],
        b"\x07",
        b"\r",
        b"\xc2\x9b",
        b"\xc2\x9d",
        b"\x9b",
    ] {
        assert!(
            !bytes.windows(bad.len()).any(|w| w == bad),
            "{what} holds {bad:x?}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn names_from_a_volume_are_escaped_on_the_terminal() {
    use std::os::unix::ffi::OsStrExt;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    // Made behind msb's back, as a sandbox would.
    let v = h.join("volumes/v");
    let raw = |b: &[u8]| v.join(std::ffi::OsStr::from_bytes(b));
    std::fs::write(raw(b"a\x1b]0;pwned\x07b"), "").unwrap();
    std::fs::write(raw(b"\x1b[2J"), "").unwrap();
    std::fs::write(raw(b"cr\rlf\nname"), "").unwrap();
    std::fs::write(raw(b"bad\xff"), "").unwrap();
    std::fs::write(raw("c1\u{9b}31m".as_bytes()), "").unwrap();
    std::fs::create_dir(raw(b"dir\x1b[1A")).unwrap();
    std::os::unix::fs::symlink("\x1b[31mred", raw(b"lnk\x07")).unwrap();
    // File contents are data: cat passes them through untouched.
    std::fs::write(v.join("content"), b"\x1b[2J raw\r\n").unwrap();

    let o = msb(h, &["volume", "fs", "v", "ls"]);
    ok(&o);
    assert_inert("ls", &o.stdout);
    let listed = String::from_utf8(o.stdout).unwrap();
    for shown in [
        "\\x1b[2J\n",
        "a\\x1b]0;pwned\\x07b\n",
        "bad\\xff\n",
        "c1\\xc2\\x9b31m\n",
        "content\n",
        "cr\\rlf\\nname\n",
        "dir\\x1b[1A/\n",
        "lnk\\x07 -> \\x1b[31mred\n",
    ] {
        assert!(listed.contains(shown), "{shown:?} not in {listed:?}");
    }

    let o = msb_os(
        h,
        &[
            os("volume"),
            os("fs"),
            os("v"),
            os("stat"),
            std::ffi::OsStr::from_bytes(b"lnk\x07"),
        ],
    );
    ok(&o);
    assert_inert("stat", &o.stdout);
    let stat = String::from_utf8(o.stdout).unwrap();
    assert!(
        stat.contains("Path:     lnk\\x07\n") && stat.contains("Target:   \\x1b[31mred\n"),
        "{stat}"
    );
    // ls of a single file prints its name.
    let o = msb_os(
        h,
        &[
            os("volume"),
            os("fs"),
            os("v"),
            os("ls"),
            std::ffi::OsStr::from_bytes(b"bad\xff"),
        ],
    );
    assert_eq!(ok(&o), "bad\\xff\n");
    // A name in an error message is escaped too.
    let o = msb(h, &["volume", "fs", "v", "cat", "gone\x1b]0;x\x07"]);
    assert_inert("error", &o.stderr);
    assert_eq!(
        err(&o),
        "error: no such file or directory: gone\\x1b]0;x\\x07\n"
    );

    let o = msb(h, &["volume", "fs", "v", "cat", "content"]);
    ok(&o);
    assert_eq!(o.stdout, b"\x1b[2J raw\r\n");
}

#[test]
fn import_reports_hostile_entry_names_escaped() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_mode(0o644);
    hd.set_size(1);
    b.append_data(&mut hd, "ok\x1b]2;t\x07", &b"1"[..]).unwrap();
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Char);
    hd.set_mode(0o644);
    hd.set_size(0);
    b.append_data(&mut hd, "dev\x1b[2J", std::io::empty())
        .unwrap();
    let o = msb_in(
        h,
        &["volume", "import", "v", "--merge", "-"],
        &b.into_inner().unwrap(),
    );
    assert_inert("import", &o.stderr);
    let e = err(&o);
    assert!(e.contains("written: ok\\x1b]2;t\\x07\n"), "{e}");
    assert!(
        e.contains("archive entry dev\\x1b[2J is a device node"),
        "{e}"
    );
}

#[test]
fn host_writes_belong_to_the_volume_owner() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: volumes belong to the sandbox range only when msb runs as root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    ok(&msb(h, &["volume", "fs", "v", "mkdir", "a/b"]));
    ok(&msb_in(h, &["volume", "fs", "v", "write", "a/b/f"], b"x"));
    ok(&msb(h, &["volume", "fs", "v", "cp", "a/b/f", "g"]));
    for p in ["", "a", "a/b", "a/b/f", "g"] {
        let m = std::fs::metadata(h.join("volumes/v").join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0x6FFF_0000, 0x6FFF_0000), "{p}");
    }
    let stat = ok(&msb(h, &["volume", "fs", "v", "stat", "g"]));
    assert!(stat.contains("Owner:    1878982656:1878982656\n"), "{stat}");
}
