//! SIGINT at random points of `msb volume export`, `import` and `clone`
//! leaves either the old state or the complete new one: no partial archive,
//! no partial volume, and usage counters that are exact without `doctor`.
//! The real binary, a real store, real signals; each test runs a bounded
//! number of rounds, their kill points drawn from a seed it prints.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Rounds per operation: enough to land before, during and after the
/// work, few enough for a 2-core CI machine.
const ROUNDS: usize = 16;

/// The msb binary: the one cargo built, or `MSB_TEST_BIN` (scripts/test's
/// rootless pass runs a copy its unprivileged user can reach).
fn msb_bin() -> std::ffi::OsString {
    std::env::var_os("MSB_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_msb").into())
}

fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(msb_bin());
    c.args(args)
        .env("MSB_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = cmd(home, args).output().unwrap();
    assert!(o.status.success(), "msb {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A xorshift generator: kill points reproducible from the printed seed
/// (`MSB_TEST_SEED` replays one).
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("MSB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: MSB_TEST_SEED={seed}");
        Rng(seed)
    }

    /// A duration in `0..=max`.
    fn upto(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_001) as f64 / 10_000.0)
    }
}

/// Runs `msb args` and sends it SIGINT after `delay` (if it still runs).
/// Returns its output and whether the signal ended it.
fn interrupted(home: &Path, args: &[&str], delay: Duration) -> (Output, bool) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd(home, args).spawn().unwrap();
    let start = Instant::now();
    let pid = rustix::process::Pid::from_child(&child);
    while start.elapsed() < delay {
        std::thread::sleep(Duration::from_micros(200));
    }
    // A child that has ended but is not reaped yet still takes the signal
    // harmlessly; the pid cannot have been reused meanwhile.
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let o = child.wait_with_output().unwrap();
    let killed = o.status.signal() == Some(libc::SIGINT);
    assert!(killed || o.status.success(), "msb {args:?}: {o:?}");
    (o, killed)
}

/// How long `msb args` takes uninterrupted (then undone by `undo`).
fn duration(home: &Path, args: &[&str], undo: impl Fn()) -> Duration {
    let start = Instant::now();
    ok(home, args);
    let took = start.elapsed();
    undo();
    took
}

/// A volume `name` holding `files` files of `size` bytes and a few
/// directories, written through msb (so its counter is exact).
fn filled(home: &Path, name: &str, files: usize, size: usize) {
    ok(home, &["volume", "create", name, "-q"]);
    let src = tempfile::tempdir().unwrap();
    for d in 0..4 {
        std::fs::create_dir(src.path().join(format!("d{d}"))).unwrap();
    }
    let block: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    for i in 0..files {
        std::fs::write(src.path().join(format!("d{}/f{i:03}", i % 4)), &block).unwrap();
    }
    for d in 0..4 {
        ok(
            home,
            &[
                "cp",
                path(&src.path().join(format!("d{d}"))),
                &format!("{name}:/d{d}"),
            ],
        );
    }
}

/// The volume's running counter (what `ls` shows; no rescan).
fn counter(home: &Path, name: &str) -> Option<u64> {
    let out = ok(home, &["volume", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .map(|v| v["used_bytes"].as_u64().unwrap())
}

/// The volume's usage counted now (`inspect` scans the tree).
fn scanned(home: &Path, name: &str) -> u64 {
    let out = ok(home, &["volume", "inspect", name, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["used_bytes"].as_u64().unwrap()
}

/// Every file of the volume, by path, with a digest of its content (the
/// tree as the volume API sees it, hidden staging included).
fn tree(home: &Path, name: &str) -> Vec<(String, u64)> {
    let root = home.join("volumes").join(name);
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if p.is_dir() {
            out.push((format!("{rel}/"), 0));
            walk(root, &p, out);
        } else {
            let data = std::fs::read(&p).unwrap();
            let digest = data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
            });
            out.push((rel, digest));
        }
    }
}

/// The counter matches the tree, as `doctor` would count it.
fn assert_exact(home: &Path, name: &str) {
    let counted = counter(home, name).expect("the volume is listed");
    assert_eq!(counted, scanned(home, name), "counter of {name} is off");
}

/// Nothing was left for `doctor` to repair or recount.
fn assert_doctor_quiet(home: &Path) {
    let d = ok(home, &["volume", "doctor"]);
    assert_eq!(d, "store is consistent\n");
}

#[test]
fn sigint_during_export_leaves_the_old_file_or_the_whole_archive() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, "src", 48, 1 << 20); // 48 MiB
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("vol.tar");
    let reference = out.path().join("reference.tar");
    ok(h, &["volume", "export", "src", "-o", path(&reference)]);
    let whole = std::fs::read(&reference).unwrap();
    std::fs::remove_file(&reference).unwrap();
    let args = ["volume", "export", "src", "-o", path(&target)];
    let took = duration(h, &args, || std::fs::remove_file(&target).unwrap());
    let old = b"the archive that was here before".to_vec();
    let mut rng = Rng::new("export");
    let (mut stopped, mut finished) = (0, 0);
    for _ in 0..ROUNDS {
        std::fs::write(&target, &old).unwrap();
        let (_, killed) = interrupted(h, &args, rng.upto(took.mul_f64(1.5)));
        let now = std::fs::read(&target).unwrap();
        if killed {
            stopped += 1;
            assert!(now == old, "an interrupted export replaced the old file");
        } else {
            finished += 1;
            assert!(now == whole, "a finished export is the whole archive");
        }
        let left: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["vol.tar"], "only the target is in its directory");
    }
    eprintln!("export: {stopped} stopped, {finished} finished, uninterrupted {took:?}");
    assert_exact(h, "src");
}

#[test]
fn sigint_during_import_leaves_an_empty_volume_or_the_whole_archive() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, "src", 48, 1 << 20);
    let archive = h.join("src.tar");
    ok(h, &["volume", "export", "src", "-o", path(&archive)]);
    let want = tree(h, "src");
    let fresh = || {
        let _ = cmd(h, &["volume", "rm", "v"]).output();
        ok(h, &["volume", "create", "v", "-q", "--quota", "128M"]);
    };
    fresh();
    let args = ["volume", "import", "v", path(&archive)];
    let took = duration(h, &args, fresh);
    let mut rng = Rng::new("import");
    let (mut stopped, mut finished) = (0, 0);
    for _ in 0..ROUNDS {
        let (_, killed) = interrupted(h, &args, rng.upto(took.mul_f64(1.5)));
        if killed {
            stopped += 1;
            assert_eq!(tree(h, "v"), Vec::new(), "an interrupted import left files");
            assert_eq!(counter(h, "v"), Some(0));
        } else {
            finished += 1;
            assert_eq!(tree(h, "v"), want, "a finished import is the whole archive");
        }
        assert_exact(h, "v");
        assert_doctor_quiet(h);
        fresh();
    }
    eprintln!("import: {stopped} stopped, {finished} finished, uninterrupted {took:?}");
}

#[test]
fn sigint_during_clone_leaves_no_volume_or_the_whole_copy() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    filled(h, "src", 48, 1 << 20);
    let want = tree(h, "src");
    let src_used = counter(h, "src");
    let args = ["volume", "clone", "src", "copy"];
    let remove = || {
        ok(h, &["volume", "rm", "copy"]);
    };
    let took = duration(h, &args, remove);
    let mut rng = Rng::new("clone");
    let (mut stopped, mut finished) = (0, 0);
    for _ in 0..ROUNDS {
        let (_, killed) = interrupted(h, &args, rng.upto(took.mul_f64(1.5)));
        // The next command finishes or undoes what the killed one left.
        let listed = counter(h, "copy").is_some();
        if killed {
            stopped += 1;
        } else {
            finished += 1;
            assert!(listed, "a finished clone is listed");
        }
        if listed {
            // Killed after its rename: the copy is whole, or it would not be
            // there.
            assert_eq!(tree(h, "copy"), want, "a listed clone is the whole copy");
            assert_exact(h, "copy");
        } else {
            assert!(!h.join("volumes/copy").exists(), "a partial copy is left");
        }
        let staging: Vec<_> = std::fs::read_dir(h.join("volumes/.staging"))
            .unwrap()
            .collect();
        assert!(staging.is_empty(), "staging left behind");
        assert_eq!(tree(h, "src"), want, "the source changed");
        assert_eq!(counter(h, "src"), src_used);
        assert_doctor_quiet(h);
        if listed {
            remove();
        }
    }
    eprintln!("clone: {stopped} stopped, {finished} finished, uninterrupted {took:?}");
}
