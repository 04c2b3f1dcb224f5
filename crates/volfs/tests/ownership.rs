//! Who owns what `VolumeFs` makes: the owner of the volume's root, so a
//! sandbox whose root is an unprivileged host user (0x6FFF0000) can change
//! what the host wrote. Needs root to give a root away (skips otherwise).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use msb_volfs::archive;
use msb_volfs::{Resolver, VolumeFs};
use tar::{EntryType, Header};

/// Guest root of a rootful sandbox, as `msb_spec::IdMap::ROOTFUL` places it.
const SANDBOX_ROOT: u32 = 0x6FFF_0000;

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: giving files to another user needs root");
    false
}

/// A volume `v` whose root belongs to the sandbox range.
fn sandbox_volume(resolver: Resolver) -> (tempfile::TempDir, VolumeFs) {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("v");
    std::fs::create_dir(&v).unwrap();
    std::os::unix::fs::chown(&v, Some(SANDBOX_ROOT), Some(SANDBOX_ROOT)).unwrap();
    let fs = VolumeFs::open(&v).unwrap().with_resolver(resolver);
    (tmp, fs)
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// Every object under `root` (itself included), with its owner.
fn owners(root: &Path) -> Vec<(std::path::PathBuf, (u32, u32))> {
    let mut out = vec![(root.to_path_buf(), owner(root))];
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push((p.clone(), owner(&p)));
        }
    }
    out
}

/// A tar holding a directory, a setuid file owned by 0 in the header, a
/// symlink, a FIFO and a hard link.
fn archive_bytes() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let entry = |kind: EntryType, mode: u32| {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h
    };
    let mut h = entry(EntryType::Directory, 0o755);
    b.append_data(&mut h, "imp/", std::io::empty()).unwrap();
    let mut h = entry(EntryType::Regular, 0o4755);
    h.set_size(4);
    b.append_data(&mut h, "imp/sub/tool", &b"tool"[..]).unwrap();
    let mut h = entry(EntryType::Symlink, 0o777);
    b.append_link(&mut h, "imp/link", "tool").unwrap();
    let mut h = entry(EntryType::Fifo, 0o600);
    b.append_data(&mut h, "imp/fifo", std::io::empty()).unwrap();
    let mut h = entry(EntryType::Link, 0o644);
    b.append_link(&mut h, "imp/hard", "imp/sub/tool").unwrap();
    b.into_inner().unwrap()
}

macro_rules! both {
    ($($body:ident),* $(,)?) => {
        $(mod $body {
            #[test]
            fn openat2() {
                super::$body(msb_volfs::Resolver::Auto)
            }
            #[test]
            fn walk() {
                super::$body(msb_volfs::Resolver::Walk)
            }
        })*
    };
}

both!(
    everything_made_belongs_to_the_roots_owner,
    a_root_the_caller_owns_keeps_the_callers_ownership,
);

fn everything_made_belongs_to_the_roots_owner(r: Resolver) {
    if !is_root() {
        return;
    }
    let (tmp, fs) = sandbox_volume(r);
    let v = tmp.path().join("v");
    fs.write("file", "data").unwrap();
    let mut w = fs.create("streamed").unwrap();
    std::io::Write::write_all(&mut w, b"streamed").unwrap();
    w.finish().unwrap();
    fs.mkdir("a/b/c").unwrap();
    fs.symlink("a/b", "link").unwrap();
    fs.symlink("/outside/target", "a/abs").unwrap();
    std::fs::set_permissions(v.join("file"), PermissionsExt::from_mode(0o750)).unwrap();
    fs.copy("file", "a/b/c/copy").unwrap();
    let report = archive::import(&fs, &archive_bytes()[..], &mut |_| {}).unwrap();
    assert_eq!((report.files, report.hard_links, report.fifos), (1, 1, 1));
    // Data and modes are as written; setuid is still dropped on import.
    assert_eq!(fs.read("a/b/c/copy").unwrap(), b"data");
    let tool = std::fs::metadata(v.join("imp/sub/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::metadata(v.join("a/b/c/copy")).unwrap().mode() & 0o777,
        0o750
    );
    let all = owners(&v);
    assert_eq!(all.len(), 15, "{all:?}");
    for (path, who) in &all {
        assert_eq!(*who, (SANDBOX_ROOT, SANDBOX_ROOT), "{}", path.display());
    }
    // Through the API too: the symlink itself, not its target.
    let m = fs.stat("imp/link").unwrap();
    assert_eq!((m.uid(), m.gid()), (SANDBOX_ROOT, SANDBOX_ROOT));
}

fn a_root_the_caller_owns_keeps_the_callers_ownership(r: Resolver) {
    let tmp = tempfile::tempdir().unwrap();
    let fs = VolumeFs::open(tmp.path()).unwrap().with_resolver(r);
    fs.mkdir("d").unwrap();
    fs.write("d/f", "x").unwrap();
    fs.symlink("f", "d/l").unwrap();
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    for (path, who) in owners(tmp.path()) {
        assert_eq!(who, me, "{}", path.display());
    }
}

#[test]
fn rewriting_leaves_other_owners_alone() {
    if !is_root() {
        return;
    }
    let (tmp, fs) = sandbox_volume(Resolver::Auto);
    let v = tmp.path().join("v");
    // A file the sandbox gave to one of its other users stays theirs.
    std::fs::write(v.join("theirs"), "old").unwrap();
    std::os::unix::fs::chown(
        v.join("theirs"),
        Some(SANDBOX_ROOT + 1000),
        Some(SANDBOX_ROOT + 5),
    )
    .unwrap();
    fs.write("theirs", "new").unwrap();
    assert_eq!(
        owner(&v.join("theirs")),
        (SANDBOX_ROOT + 1000, SANDBOX_ROOT + 5)
    );
    // One left owned by host root (written before volumes had an owner)
    // is handed over when the host rewrites it.
    std::fs::write(v.join("old"), "old").unwrap();
    fs.write("old", "new").unwrap();
    assert_eq!(owner(&v.join("old")), (SANDBOX_ROOT, SANDBOX_ROOT));
}

/// While objects are made, another thread keeps replacing their names with
/// a hard link to a root-owned file, FIFO or symlink outside the volume
/// (and moving what it displaced away, which can leave the outside object
/// with one link again). Whatever it wins, the outside objects keep their
/// owner.
#[test]
fn names_swapped_for_an_outside_hard_link_are_not_given_away() {
    if !is_root() {
        return;
    }
    let (tmp, fs) = sandbox_volume(Resolver::Auto);
    let v = tmp.path().join("v");
    let canaries = [
        tmp.path().join("file"),
        tmp.path().join("fifo"),
        tmp.path().join("symlink"),
    ];
    std::fs::write(&canaries[0], "host secret").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &canaries[1],
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &canaries[2]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, swaps, v) = (stop.clone(), swaps.clone(), v.clone());
        let canaries = canaries.clone();
        std::thread::spawn(move || {
            for canary in canaries.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = std::fs::rename(v.join("x"), v.join("junk"));
                let _ = std::fs::remove_dir(v.join("junk"));
                let _ = std::fs::remove_file(v.join("junk"));
                let _ = std::fs::hard_link(canary, v.join("hl"));
                if std::fs::rename(v.join("hl"), v.join("x")).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let tar_fifo = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Fifo);
        h.set_mode(0o600);
        h.set_size(0);
        b.append_data(&mut h, "x", std::io::empty()).unwrap();
        b.into_inner().unwrap()
    };
    for i in 0..20_000 {
        // Failures are expected (the name is taken, or gone); only what
        // happens outside matters.
        match i % 3 {
            0 => {
                let _ = fs.mkdir("x");
            }
            1 => {
                let _ = fs.symlink("t", "x");
            }
            _ => {
                let _ = archive::import(&fs, &tar_fifo[..], &mut |_| {});
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0, "the attacker never won");
    for canary in &canaries {
        assert_eq!(owner(canary), (0, 0), "{}", canary.display());
    }
    assert_eq!(std::fs::read(&canaries[0]).unwrap(), b"host secret");
}
