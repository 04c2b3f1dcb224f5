//! `msb volume export|import` keep data safe when they fail or are
//! interrupted, and clone shows its progress on a terminal: the real
//! binary, a real store, real signals, a real pty.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(msb_bin());
    c.args(args).env("MSB_HOME", home);
    c
}

fn msb(home: &Path, args: &[&str]) -> Output {
    cmd(home, args).stdin(Stdio::null()).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The volume's usage counter, as `inspect` reports it.
fn used(home: &Path, name: &str) -> u64 {
    let out = ok(&msb(home, &["volume", "inspect", name, "--format", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["used_bytes"].as_u64().unwrap()
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// Temporary files an export left in `dir`.
fn partials(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".msb-partial-"))
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::from_named_raw(sig).unwrap())
        .unwrap();
}

/// A volume `src` holding `files` files of `size` bytes each (written on
/// the host: the export reads them as it finds them).
fn filled(home: &Path, files: usize, size: usize) {
    ok(&msb(home, &["volume", "create", "src", "-q"]));
    let root = home.join("volumes/src");
    std::fs::create_dir(root.join("d")).unwrap();
    let block: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    for i in 0..files {
        std::fs::write(root.join(format!("d/f{i:03}")), &block).unwrap();
    }
}

/// `tar -t` lists the archive without complaint.
fn tar_lists(file: &Path) -> bool {
    Command::new("tar")
        .args(["-tf", path(file)])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn interrupted_export_leaves_no_partial_archive() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, 50, 4 << 20); // 200 MiB
    let out = tempfile::tempdir().unwrap();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let target = out.path().join("vol.tar");
        let child = cmd(h, &["volume", "export", "src", "-o", path(&target)])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Part of the archive is written when the signal comes.
        wait_for("a partial archive", || {
            std::fs::read_dir(out.path()).unwrap().any(|e| {
                let e = e.unwrap();
                e.metadata().is_ok_and(|m| m.len() > 1 << 20)
            })
        });
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if o.status.success() {
            // It finished first: then the archive is whole.
            assert!(tar_lists(&target), "a finished export is a whole archive");
            std::fs::remove_file(&target).unwrap();
        } else {
            assert_eq!(o.status.signal(), Some(sig), "{o:?}");
            assert!(!target.exists(), "nothing is left under the target name");
        }
        assert_eq!(partials(out.path()), Vec::<String>::new());
    }
    // Uninterrupted, the same export completes and lists.
    let target = out.path().join("vol.tar");
    ok(&msb(h, &["volume", "export", "src", "-o", path(&target)]));
    assert!(tar_lists(&target));
    assert_eq!(names(out.path()), ["vol.tar"]);
}

/// A small tmpfs (root only): a target directory an export runs out of
/// room in half way. Unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path(&at),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn failed_export_leaves_the_target_as_it_was() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, 4, 1 << 20);
    let out = tempfile::tempdir().unwrap();

    // A directory the export may not create files in.
    let ro = out.path().join("ro");
    let _ro_mount;
    if rustix::process::geteuid().is_root() {
        // Root passes permission bits: a read-only mount refuses it.
        _ro_mount = Tmpfs::mount(ro.clone(), "1M");
        let st = Command::new("mount")
            .args(["-o", "remount,ro", path(&ro)])
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    }
    let e = err(&msb(
        h,
        &["volume", "export", "src", "-o", path(&ro.join("a.tar"))],
    ));
    assert_eq!(names(&ro), Vec::<String>::new());
    assert!(e.contains("cannot create"), "{e}");

    // A directory that fills up half way, holding an older archive: the
    // older archive stays, whole, and no partial file is left.
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping the full-disk case: mounting a tmpfs needs root");
        return;
    }
    let small = Tmpfs::mount(out.path().join("small"), "2M");
    let target = small.0.join("a.tar");
    std::fs::write(&target, b"old archive").unwrap();
    let e = err(&msb(h, &["volume", "export", "src", "-o", path(&target)]));
    let kept = std::fs::read(&target).unwrap();
    assert!(
        kept == b"old archive",
        "the old archive was overwritten: now {} bytes",
        kept.len()
    );
    assert_eq!(names(&small.0), ["a.tar"]);
    assert!(e.contains("cannot write the archive"), "{e}");
}

/// An archive of a few directories and files, from a real export.
fn archive(home: &Path) -> Vec<u8> {
    ok(&msb(home, &["volume", "create", "arc", "-q"]));
    for d in ["a/b/c", "x"] {
        ok(&msb(home, &["volume", "fs", "arc", "mkdir", d]));
    }
    for (f, n) in [("a/one", 10_000), ("a/b/c/two", 100_000), ("x/three", 5)] {
        let mut c = cmd(home, &["volume", "fs", "arc", "write", f])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&vec![7u8; n]).unwrap();
        assert!(c.wait().unwrap().success());
    }
    let o = cmd(home, &["volume", "export", "arc"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&o);
    o.stdout
}

fn import_stdin(home: &Path, args: &[&str], data: &[u8]) -> Output {
    let mut c = cmd(home, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c.stdin.take().unwrap().write_all(data);
    c.wait_with_output().unwrap()
}

/// The volume is empty on the host (no staging left behind), its counter
/// says so, and `doctor` has nothing to correct.
fn assert_empty(home: &Path, name: &str) {
    assert_eq!(
        names(&home.join("volumes").join(name)),
        Vec::<String>::new()
    );
    assert_eq!(used(home, name), 0);
    let d = ok(&msb(home, &["volume", "doctor"]));
    assert!(!d.contains("usage:"), "{d}");
}

#[test]
fn truncated_import_leaves_an_empty_volume_empty() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let tar = archive(h);
    ok(&msb(h, &["volume", "create", "v", "-q", "--quota", "64M"]));
    // Cut inside a file's data, inside a header, and between entries (the
    // end-of-archive blocks gone: tar readers stop there quietly).
    let last_entry_end = tar.len() - tar.iter().rev().take_while(|&&b| b == 0).count();
    let cuts = [
        tar.len() / 2,
        512 + 100,
        last_entry_end.next_multiple_of(512),
    ];
    for cut in cuts {
        let file = h.join("cut.tar");
        std::fs::write(&file, &tar[..cut]).unwrap();
        let e = err(&msb(h, &["volume", "import", "v", path(&file)]));
        assert_empty(h, "v");
        assert!(
            e.contains("import failed; nothing was imported into volume v"),
            "{e}"
        );
    }
    // The whole archive imports, and the counter matches the tree.
    let o = import_stdin(h, &["volume", "import", "v", "-"], &tar);
    ok(&o);
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls", "a/b/c"])), "two\n");
    assert!(used(h, "v") > 100_000);
    let d = ok(&msb(h, &["volume", "doctor"]));
    assert!(!d.contains("usage:"), "{d}");
}

#[test]
fn interrupted_import_leaves_an_empty_volume_empty() {
    use std::os::unix::process::ExitStatusExt;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let tar = archive(h);
    ok(&msb(h, &["volume", "create", "v", "-q", "--quota", "64M"]));
    let root = h.join("volumes/v");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut c = cmd(h, &["volume", "import", "v", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        // Half the archive, then the import waits for more.
        input.write_all(&tar[..tar.len() / 2]).unwrap();
        input.flush().unwrap();
        // (Into a hidden staging directory: nothing shows in the volume
        // until the whole archive is read.)
        wait_for("the first entries to be written", || {
            names(&root).iter().any(|n| {
                let p = root.join(n);
                !p.is_dir() || !names(&p).is_empty()
            })
        });
        signal(&c, sig);
        let o = c.wait_with_output().unwrap();
        drop(input);
        assert_eq!(o.status.signal(), Some(sig), "{o:?}");
        assert_empty(h, "v");
    }
    // Killed outright, it leaves its staging directory; the next import
    // into the volume removes it and goes ahead.
    let mut c = cmd(h, &["volume", "import", "v", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    input.write_all(&tar[..tar.len() / 2]).unwrap();
    wait_for("the first entries to be written", || {
        names(&root)
            .iter()
            .any(|n| !names(&root.join(n)).is_empty())
    });
    signal(&c, libc::SIGKILL);
    c.wait().unwrap();
    drop(input);
    let left = names(&root);
    assert!(
        left.len() == 1 && left[0].starts_with(".msb-import-"),
        "{left:?}"
    );
    ok(&import_stdin(h, &["volume", "import", "v", "-"], &tar));
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "a/\nx/\n");
    assert_eq!(names(&root), ["a", "x"]);
}

/// Starts an all-or-nothing import of `tar` into the empty volume `name`,
/// waits until its staging directory holds data, and SIGKILLs it, leaving
/// that directory; returns its name.
fn kill_an_import(h: &Path, name: &str, tar: &[u8]) -> String {
    let root = h.join("volumes").join(name);
    let mut c = cmd(h, &["volume", "import", name, "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    input.write_all(&tar[..tar.len() / 2]).unwrap();
    wait_for("the first entries to be staged", || {
        names(&root)
            .iter()
            .any(|n| n.starts_with(".msb-import-") && !names(&root.join(n)).is_empty())
    });
    signal(&c, libc::SIGKILL);
    c.wait().unwrap();
    drop(input);
    let left: Vec<String> = names(&root)
        .into_iter()
        .filter(|n| n.starts_with(".msb-import-"))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    left[0].clone()
}

#[test]
fn what_a_killed_import_left_goes_at_doctor_or_a_merge() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let tar = archive(h);
    ok(&msb(h, &["volume", "create", "v", "-q", "--quota", "64M"]));
    let root = h.join("volumes/v");

    // doctor removes it, says so, and the counter is exact after.
    let left = kill_an_import(h, "v", &tar);
    assert!(used(h, "v") > 0, "the staged data was charged");
    let d = ok(&msb(h, &["volume", "doctor"]));
    assert!(
        d.contains(&format!(
            "removed {left} from volume v, left by an import that was killed"
        )),
        "{d}"
    );
    assert!(names(&root).is_empty(), "{:?}", names(&root));
    assert_eq!(used(h, "v"), 0);
    let d = ok(&msb(h, &["volume", "doctor"]));
    assert!(!d.contains("removed") && !d.contains("usage:"), "{d}");

    // An import with --merge into a volume with files removes it too.
    let left = kill_an_import(h, "v", &tar);
    ok(&msb(h, &["volume", "fs", "v", "mkdir", "keep"]));
    ok(&import_stdin(
        h,
        &["volume", "import", "v", "--merge", "-"],
        &tar,
    ));
    assert!(!root.join(&left).exists(), "{:?}", names(&root));
    assert_eq!(names(&root), ["a", "keep", "x"]);
    let d = ok(&msb(h, &["volume", "doctor"]));
    assert!(!d.contains("usage:"), "counter off after the merge: {d}");
}

#[test]
fn import_into_a_volume_with_files_needs_merge() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let tar = archive(h);
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    let mut c = cmd(h, &["volume", "fs", "v", "write", "mine"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"keep").unwrap();
    assert!(c.wait().unwrap().success());
    let before = used(h, "v");

    let e = err(&import_stdin(h, &["volume", "import", "v", "-"], &tar));
    assert!(
        e.contains("volume v already holds files; pass --merge"),
        "{e}"
    );
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "mine\n");
    assert_eq!(used(h, "v"), before);

    ok(&import_stdin(
        h,
        &["volume", "import", "v", "--merge", "-"],
        &tar,
    ));
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "ls"])), "a/\nmine\nx/\n");
    assert_eq!(ok(&msb(h, &["volume", "fs", "v", "cat", "mine"])), "keep");

    let help = ok(&msb(h, &["volume", "import", "--help"]));
    assert!(
        help.contains("interruption or a bad entry may leave part of the archive imported"),
        "{help}"
    );
}

#[test]
fn export_to_a_terminal_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    ok(&msb(h, &["volume", "create", "v", "-q"]));
    // `script` gives the command a terminal as stdout (and stderr), and
    // exits with its status.
    let line = format!("{} volume export v", msb_bin().to_string_lossy());
    for cmdline in [line.clone(), format!("{line} -o -")] {
        let o = Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .env("MSB_HOME", h)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{shown}");
        assert!(shown.contains("-o FILE"), "{shown}");
        assert!(
            !shown.contains("ustar"),
            "no archive bytes reach the terminal"
        );
    }
}

#[test]
fn disk_volume_import_is_all_or_nothing_past_lost_and_found() {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipping: disk volumes need root and /dev/loop-control");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let tar = archive(h);
    ok(&msb(
        h,
        &[
            "volume", "create", "d", "--kind", "disk", "--size", "64M", "-q",
        ],
    ));
    // mke2fs's empty lost+found does not make the volume hold files.
    let e = err(&import_stdin(
        h,
        &["volume", "import", "d", "-"],
        &tar[..tar.len() / 2],
    ));
    assert_eq!(ok(&msb(h, &["volume", "fs", "d", "ls"])), "lost+found/\n");
    assert!(e.contains("nothing was imported"), "{e}");
    ok(&import_stdin(h, &["volume", "import", "d", "-"], &tar));
    assert_eq!(
        ok(&msb(h, &["volume", "fs", "d", "ls"])),
        "a/\nlost+found/\nx/\n"
    );
}

/// Runs msb with its stderr on a new terminal; returns what reached the
/// terminal and msb's output.
fn on_terminal(home: &Path, args: &[&str]) -> (String, Output) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let out = cmd(home, args)
        .stdin(Stdio::null())
        .stderr(slave)
        .output()
        .unwrap();
    // Every slave descriptor is closed now: the master reads what was
    // written, then fails (EIO).
    let mut text = Vec::new();
    let mut master = std::fs::File::from(master);
    let _ = std::io::Read::read_to_end(&mut master, &mut text);
    (String::from_utf8_lossy(&text).into_owned(), out)
}

#[test]
fn clone_shows_progress_on_a_terminal_only() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, 64, 1 << 20);
    let (shown, out) = on_terminal(h, &["volume", "clone", "src", "copy"]);
    assert_eq!(ok(&out), "copy\n");
    assert!(shown.contains("cloning ["), "{shown:?}");
    assert!(shown.contains("MiB"), "{shown:?}");
    // The bar is wiped once done.
    assert!(shown.ends_with("\r\x1b[K"), "{shown:?}");
    assert_eq!(
        names(&h.join("volumes/copy/d")).len(),
        64,
        "the clone is whole"
    );

    let o = msb(h, &["volume", "clone", "src", "copy2"]);
    assert_eq!(ok(&o), "copy2\n");
    assert!(o.stderr.is_empty(), "{o:?}");
}
