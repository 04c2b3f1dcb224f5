//! A thread swaps a directory inside the volume with a symlink to a
//! directory outside (`renameat2(RENAME_EXCHANGE)`) while operations run.
//! Every operation must act inside the volume or fail; the canary outside
//! must never be read, changed or joined by new files.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use msb_volfs::{FsError, Resolver, VolumeFs};
use rustix::fs::{CWD, RenameFlags, renameat_with};

const SECRET: &[u8] = b"SECRET";
const ITERATIONS: usize = 10_000;

struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(a: &Path, b: &Path) -> Swapper {
        let (a, b) = (a.to_path_buf(), b.to_path_buf());
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), swaps.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            swaps,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.swaps.load(Ordering::Relaxed)
    }
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("outside")).unwrap();
    std::fs::write(t.join("outside/f"), SECRET).unwrap();
    std::fs::create_dir_all(t.join("vol/d")).unwrap();
    std::fs::write(t.join("vol/d/f"), b"inside").unwrap();
    std::os::unix::fs::symlink("../outside", t.join("vol/l")).unwrap();
    tmp
}

fn outside_intact(t: &Path) {
    let names: Vec<_> = std::fs::read_dir(t.join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["f"], "files appeared outside");
    assert_eq!(std::fs::read(t.join("outside/f")).unwrap(), SECRET);
}

/// The attack is real: plain std::fs reads the secret through the same
/// race.
#[test]
fn std_fs_escapes_under_the_race() {
    let tmp = setup();
    let t = tmp.path();
    let swapper = Swapper::start(&t.join("vol/d"), &t.join("vol/l"));
    let mut leaked = 0;
    for _ in 0..ITERATIONS {
        if std::fs::read(t.join("vol/d/f")).is_ok_and(|d| d == SECRET) {
            leaked += 1;
        }
    }
    swapper.stop();
    assert!(leaked > 0, "std::fs never escaped; the race did not happen");
}

fn race(resolver: Resolver) {
    let tmp = setup();
    let t = tmp.path();
    let fs = VolumeFs::open(t.join("vol"))
        .unwrap()
        .with_resolver(resolver);
    let swapper = Swapper::start(&t.join("vol/d"), &t.join("vol/l"));
    let mut escapes_refused = 0u64;
    let mut done_inside = 0u64;
    let mut tally = |r: Result<(), FsError>| match r {
        Ok(()) => done_inside += 1,
        Err(FsError::PathEscape { .. }) => escapes_refused += 1,
        // The swap can also make a step vanish or change type mid-way.
        Err(FsError::NotFound { .. } | FsError::NotADirectory { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    };
    for i in 0..ITERATIONS {
        match i % 6 {
            0 => tally(
                fs.read("d/f")
                    .map(|d| assert_ne!(d, SECRET, "read escaped")),
            ),
            1 => tally(fs.write("d/f", "inside")),
            2 => tally(fs.write("d/new", "x").and_then(|()| fs.remove("d/new"))),
            3 => tally(fs.mkdir("d/sub").and_then(|()| fs.remove("d/sub"))),
            4 => tally(fs.stat("d/f").map(drop)),
            _ => tally(fs.list("d").map(|l| {
                assert!(l.iter().all(|e| e.name() != "secret-marker"));
            })),
        }
    }
    let swaps = swapper.stop();
    outside_intact(t);
    eprintln!(
        "{resolver:?}: {ITERATIONS} operations, {swaps} swaps, {done_inside} done inside, \
         {escapes_refused} refused as escapes, 0 escapes"
    );
    assert!(swaps > 100, "the swapper barely ran ({swaps} swaps)");
    assert!(
        escapes_refused > 0,
        "the race never reached an escape attempt"
    );
    assert!(done_inside > 0, "nothing succeeded");
}

#[test]
fn no_escape_under_rename_exchange_openat2() {
    race(Resolver::Auto);
}

#[test]
fn no_escape_under_rename_exchange_walk() {
    race(Resolver::Walk);
}
