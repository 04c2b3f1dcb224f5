//! `msb volume fs|export|import` as users run them: the real binary, a real
//! store, real disk images.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn msb_in(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msb"))
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
    let e = err(&msb_in(
        h,
        &["volume", "import", "v", "-"],
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
