//! The scanner on real trees too big for its descriptors: it must walk them
//! within a low descriptor limit (set in a child process, so other tests
//! keep theirs).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use msb_quota::ENTRY_COST;
use rustix::fs::{AtFlags, Mode, OFlags};

const CHILD: &str = "MSB_QUOTA_SCAN_CHILD";
const LIMIT: u64 = 256;

/// Child side: scans the tree named in the environment with at most
/// [`LIMIT`] descriptors and prints the outcome.
fn scan_if_child() {
    let Ok(root) = std::env::var(CHILD) else {
        return;
    };
    let limit = rustix::process::Rlimit {
        current: Some(LIMIT),
        maximum: Some(LIMIT),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    match msb_quota::scan(File::open(root).unwrap()) {
        Ok(n) => println!("scan-result: {n}"),
        Err(e) => {
            let source = std::error::Error::source(&e).map(ToString::to_string);
            println!("scan-result: error: {e}: {}", source.unwrap_or_default());
        }
    }
    std::process::exit(0);
}

/// Runs `test` of this binary as the child scanning `root`.
fn scan_in_child(test: &str, root: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.split_once("scan-result: ") {
        Some((_, rest)) => rest.lines().next().unwrap_or_default().to_string(),
        None => panic!("the child printed no result: {out:?}"),
    }
}

/// What one directory without xattrs counts.
fn dir_usage(dir: impl AsFd, name: &str) -> u64 {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    ENTRY_COST + st.st_blocks as u64 * 512
}

fn open_dir(dir: impl AsFd, name: &str) -> OwnedFd {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

#[test]
fn scans_three_thousand_subdirectories_within_256_descriptors() {
    scan_if_child();
    let tmp = tempfile::tempdir().unwrap();
    let mut expected = 0;
    for i in 0..3000 {
        let name = format!("sub{i}");
        std::fs::create_dir(tmp.path().join(&name)).unwrap();
        expected += dir_usage(File::open(tmp.path()).unwrap(), &name);
    }
    let got = scan_in_child(
        "scans_three_thousand_subdirectories_within_256_descriptors",
        tmp.path(),
    );
    assert_eq!(got, expected.to_string());
}

#[test]
fn scans_a_chain_two_thousand_deep_within_256_descriptors() {
    scan_if_child();
    let tmp = tempfile::tempdir().unwrap();
    let mut expected = 0;
    let mut dir = open_dir(rustix::fs::CWD, tmp.path().to_str().unwrap());
    for _ in 0..2000 {
        // A side branch at every level, listed before the way down, is
        // left for the way back up.
        for name in ["side", "d"] {
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)).unwrap();
            expected += dir_usage(&dir, name);
        }
        dir = open_dir(&dir, "d");
    }
    let got = scan_in_child(
        "scans_a_chain_two_thousand_deep_within_256_descriptors",
        tmp.path(),
    );
    assert_eq!(got, expected.to_string());
}
