//! Errors as users meet them on the command line: each keeps its cause and
//! says what to do next. The real binary, a real store, real archives.

use std::path::Path;
use std::process::{Command, Output};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(msb_bin())
        .args(args)
        .env("MSB_HOME", home)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = msb(home, args);
    assert!(o.status.success(), "msb {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs `msb args`, expecting exit `code` and every needle in stderr.
fn fails(home: &Path, args: &[&str], code: i32, needles: &[&str]) -> String {
    let o = msb(home, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "msb {args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "msb {args:?}: {needle:?} not in {err}"
        );
    }
    err
}

#[test]
fn a_missing_mount_point_keeps_its_cause_in_the_foreground_and_detached() {
    let home = tempfile::tempdir().unwrap();
    ok(home.path(), &["volume", "create", "demo"]);
    let missing = home.path().join("missing");
    let missing = missing.to_str().unwrap();
    for detach in [false, true] {
        let mut args = vec!["volume", "mount", "demo", missing];
        if detach {
            args.push("-d");
        }
        fails(
            home.path(),
            &args,
            1,
            &["must be an existing directory", "No such file or directory"],
        );
    }
    let file = home.path().join("file");
    std::fs::write(&file, "x").unwrap();
    fails(
        home.path(),
        &["volume", "mount", "demo", file.to_str().unwrap(), "-d"],
        1,
        &["is not a directory"],
    );
    // Nothing was left attached by the failed attempts.
    ok(home.path(), &["volume", "rm", "demo"]);
}

#[test]
fn a_compressed_archive_is_named_as_such_and_the_volume_stays_empty() {
    let home = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "hello").unwrap();
    let tgz = home.path().join("a.tar.gz");
    let made = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(src.path())
        .arg("f")
        .status()
        .unwrap();
    assert!(made.success());
    ok(home.path(), &["volume", "create", "demo"]);
    for merge in [false, true] {
        let mut args = vec!["volume", "import", "demo", tgz.to_str().unwrap()];
        if merge {
            args.push("--merge");
        }
        let err = fails(
            home.path(),
            &args,
            1,
            &["gzip-compressed", "plain (uncompressed) tar", "gzip -d"],
        );
        assert!(!err.contains("entire block"), "{err}");
    }
    // The other formats by their magic numbers, through stdin too.
    for (magic, name) in [
        (&b"BZh91AY&SY"[..], "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4][..], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x05][..], "zstd"),
        (&[0x04, 0x22, 0x4d, 0x18, 0x64][..], "lz4"),
    ] {
        let path = home.path().join(name);
        std::fs::write(&path, [magic, &[7u8; 600][..]].concat()).unwrap();
        fails(
            home.path(),
            &["volume", "import", "demo", path.to_str().unwrap()],
            1,
            &[&format!("{name}-compressed")],
        );
        let o = Command::new(msb_bin())
            .args(["volume", "import", "demo", "-"])
            .env("MSB_HOME", home.path())
            .stdin(std::fs::File::open(&path).unwrap())
            .output()
            .unwrap();
        assert!(
            stderr(&o).contains(&format!("{name}-compressed")),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(ok(home.path(), &["volume", "fs", "demo", "ls", "."]), "");
    // A plain tar still imports, and so does one of under 512 bytes' worth
    // of entries (the sniffed head is put back in front of the rest).
    let tar = home.path().join("a.tar");
    let made = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(src.path())
        .arg("f")
        .status()
        .unwrap();
    assert!(made.success());
    ok(
        home.path(),
        &["volume", "import", "demo", tar.to_str().unwrap()],
    );
    assert_eq!(
        ok(home.path(), &["volume", "fs", "demo", "cat", "f"]),
        "hello"
    );
}

#[test]
fn a_relative_guest_path_is_named_as_not_absolute() {
    let home = tempfile::tempdir().unwrap();
    for (cmd, tail) in [
        (&["run"][..], &["--", "true"][..]),
        (&["create", "web", "--no-start"][..], &[][..]),
    ] {
        let args = [cmd, &["-v", "demo:data"][..], tail].concat();
        fails(
            home.path(),
            &args,
            2,
            &["guest path \"data\" must be absolute"],
        );
        let args = [cmd, &["--mount-named", "demo:data:ro"][..], tail].concat();
        fails(
            home.path(),
            &args,
            2,
            &["guest path \"data\" must be absolute"],
        );
    }
    // Nothing was recorded or provisioned.
    assert_eq!(ok(home.path(), &["volume", "ls", "-q"]), "");
    assert_eq!(ok(home.path(), &["ls", "-q"]), "");
}

#[test]
fn a_disk_volume_without_a_size_names_the_flag() {
    let home = tempfile::tempdir().unwrap();
    fails(
        home.path(),
        &["volume", "create", "d", "--kind", "disk"],
        2,
        &["--size"],
    );
}

#[test]
fn an_orphan_is_named_with_doctor_adopt_and_remove_orphan() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(h, &["volume", "ls"]);
    // Data under volumes/ that no volume claims (a catalog lost or
    // restored from an older copy).
    let orphan = h.join("volumes/old");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("kept"), vec![b'k'; 10_000]).unwrap();
    std::fs::create_dir(h.join("volumes/junk")).unwrap();
    std::fs::write(h.join("volumes/junk/x"), "x").unwrap();
    fails(
        h,
        &["volume", "create", "old"],
        1,
        &[
            "msb volume doctor --adopt old",
            "msb volume doctor --remove-orphan old",
        ],
    );
    let o = msb(h, &["volume", "doctor"]);
    assert_eq!(o.status.code(), Some(1));
    let report = stdout(&o);
    for needle in [
        "--adopt old`",
        "--remove-orphan old`",
        "--adopt junk`",
        "--remove-orphan junk`",
    ] {
        assert!(report.contains(needle), "{needle:?} not in {report}");
    }
    // Adopted as it is: the files stay, the usage is counted.
    let o = msb(h, &["volume", "doctor", "--adopt", "old"]);
    assert!(
        stdout(&o).contains("adopted: old as a dir volume"),
        "{}",
        stdout(&o)
    );
    assert_eq!(ok(h, &["volume", "fs", "old", "cat", "kept"]).len(), 10_000);
    let json = ok(h, &["volume", "inspect", "old", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0]["used_bytes"].as_u64().unwrap() >= 10_000, "{json}");
    // Removed: gone from disk, and a second try says there is nothing.
    let o = msb(h, &["volume", "doctor", "--remove-orphan", "junk"]);
    assert!(stdout(&o).contains("removed: orphaned"), "{}", stdout(&o));
    assert!(!h.join("volumes/junk").exists());
    fails(
        h,
        &["volume", "doctor", "--remove-orphan", "junk"],
        1,
        &["no orphaned data"],
    );
    // A known volume is no orphan: neither verb touches it.
    fails(
        h,
        &["volume", "doctor", "--remove-orphan", "old"],
        1,
        &["already exists"],
    );
    fails(
        h,
        &["volume", "doctor", "--adopt", "old"],
        1,
        &["already exists"],
    );
    assert_eq!(ok(h, &["volume", "fs", "old", "cat", "kept"]).len(), 10_000);
    ok(h, &["volume", "rm", "old"]);
    // A name not in volumes/ can be created again once adopted ones go.
    ok(h, &["volume", "create", "junk"]);
}

#[test]
fn an_orphaned_disk_image_is_adopted_as_a_disk_volume() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(
        h,
        &["volume", "create", "d", "--kind", "disk", "--size", "64M"],
    );
    // The catalog forgets it; the folder stays as the orphan.
    std::fs::rename(h.join("volumes/d"), h.join("keep")).unwrap();
    ok(h, &["volume", "rm", "d"]);
    std::fs::rename(h.join("keep"), h.join("volumes/d")).unwrap();
    let o = msb(h, &["volume", "doctor", "--adopt", "d"]);
    assert!(
        stdout(&o).contains("adopted: d as a disk volume"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    let json = ok(h, &["volume", "inspect", "d", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["capacity_bytes"].as_u64(), Some(64 << 20), "{json}");
}

#[test]
fn a_volume_in_use_says_what_releases_it() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(h, &["volume", "create", "demo"]);
    ok(h, &["create", "web", "--no-start", "-v", "demo:/data"]);
    fails(
        h,
        &["volume", "rm", "demo"],
        1,
        &[
            "volume demo is in use by sandbox:web",
            "hint: sandbox web references it",
            "`msb rm web`",
        ],
    );
    ok(h, &["rm", "web"]);
    ok(h, &["volume", "rm", "demo"]);
}

#[test]
fn a_volume_mounted_on_the_host_says_how_to_unmount() {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: a host mount needs root and /dev/fuse");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().to_str().unwrap();
    ok(h, &["volume", "create", "demo"]);
    ok(h, &["volume", "mount", "demo", point, "-d"]);
    let hint = format!("`msb volume unmount {point}`");
    fails(
        h,
        &["volume", "rm", "demo"],
        1,
        &["in use by mount:", &hint],
    );
    fails(h, &["volume", "clone", "demo", "copy"], 1, &[&hint]);
    ok(h, &["volume", "unmount", point]);
    ok(h, &["volume", "rm", "demo"]);
}
