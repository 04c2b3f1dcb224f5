//! Ordinary behaviour, including a handful of tests in the spirit of std's
//! own `fs` tests, and quota accounting against the real scanner.

use std::io::{Read, Write};
use std::sync::Arc;

use msb_quota::{Budget, ENTRY_COST};
use msb_volfs::{FileKind, FsError, Resolver, VolumeFs};

/// A host file system block.
const BLOCK: u64 = 4096;

fn vol(resolver: Resolver) -> (tempfile::TempDir, VolumeFs) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("v")).unwrap();
    let fs = VolumeFs::open(tmp.path().join("v"))
        .unwrap()
        .with_resolver(resolver);
    (tmp, fs)
}

/// Runs a test body with each resolver.
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
    write_read_roundtrip,
    streaming_writer_and_reader,
    write_does_not_create_parents_but_mkdir_does,
    create_dir_all_then_remove_dir_all,
    deep_tree_removal_uses_no_recursion,
    rename_semantics,
    copy_semantics,
    list_is_sorted_one_level,
    exists_follows_inside_links,
    quota_is_enforced_and_usage_stays_exact,
);

fn write_read_roundtrip(r: Resolver) {
    let (_t, fs) = vol(r);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    fs.write("f", &data).unwrap();
    assert_eq!(fs.read("f").unwrap(), data);
    fs.write("f", "short").unwrap();
    assert_eq!(fs.read_to_string("f").unwrap(), "short");
    assert_eq!(fs.stat("f").unwrap().len(), 5);
    assert_eq!(fs.stat("f").unwrap().mode() & 0o777, 0o644 & !umask());
    fs.write("bin", [0xff, 0xfe]).unwrap();
    assert!(matches!(
        fs.read_to_string("bin").unwrap_err(),
        FsError::NotUtf8 { .. }
    ));
}

fn umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(old);
    old.bits()
}

fn streaming_writer_and_reader(r: Resolver) {
    let (_t, fs) = vol(r);
    let mut w = fs.create("big").unwrap();
    for i in 0..1000u32 {
        w.write_all(&i.to_le_bytes().repeat(256)).unwrap();
    }
    assert_eq!(w.len(), 1000 * 1024);
    w.finish().unwrap();
    let mut r = fs.open_file("big").unwrap();
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), 1000 * 1024);
    assert_eq!(&buf[1024..1028], &1u32.to_le_bytes());
}

fn write_does_not_create_parents_but_mkdir_does(r: Resolver) {
    let (t, fs) = vol(r);
    assert!(fs.write("a/b/c", "x").unwrap_err().is_not_found());
    fs.mkdir("a/b").unwrap();
    fs.mkdir("a/b").unwrap();
    fs.write("a/b/c", "x").unwrap();
    assert!(t.path().join("v/a/b/c").is_file());
    assert!(matches!(
        fs.mkdir("a/b/c/d").unwrap_err(),
        FsError::NotADirectory { .. }
    ));
    assert!(matches!(
        fs.read("a").unwrap_err(),
        FsError::IsADirectory { .. }
    ));
    assert!(matches!(
        fs.write("a", "x").unwrap_err(),
        FsError::IsADirectory { .. }
    ));
}

fn create_dir_all_then_remove_dir_all(r: Resolver) {
    {
        let (t, fs) = vol(r);
        fs.mkdir("d1/d2/d3/d4").unwrap();
        for i in 0..20 {
            fs.write(format!("d1/d2/f{i}"), "x").unwrap();
        }
        fs.symlink("d2", "d1/link").unwrap();
        assert!(matches!(
            fs.remove("d1").unwrap_err(),
            FsError::DirectoryNotEmpty { .. }
        ));
        fs.remove_all("d1").unwrap();
        assert!(!fs.exists("d1").unwrap());
        assert!(
            std::fs::read_dir(t.path().join("v"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(fs.remove_all("d1").unwrap_err().is_not_found());
    }
}

fn deep_tree_removal_uses_no_recursion(r: Resolver) {
    let (_t, fs) = vol(r);
    let mut p = String::from("x");
    fs.mkdir(&p).unwrap();
    for _ in 0..300 {
        p.push_str("/x");
        // mkdir one level at a time keeps each path short enough.
        if p.len() > 4000 {
            break;
        }
        fs.mkdir(&p).unwrap();
    }
    fs.remove_all("x").unwrap();
    assert!(!fs.exists("x").unwrap());
}

fn rename_semantics(r: Resolver) {
    let (_t, fs) = vol(r);
    fs.write("a", "A").unwrap();
    fs.write("b", "B").unwrap();
    fs.rename("a", "b").unwrap();
    assert_eq!(fs.read("b").unwrap(), b"A");
    assert!(!fs.exists("a").unwrap());
    fs.mkdir("d/e").unwrap();
    fs.rename("b", "d/e/b").unwrap();
    fs.rename("d", "d2").unwrap();
    assert_eq!(fs.read("d2/e/b").unwrap(), b"A");
    fs.symlink("d2", "ln").unwrap();
    fs.rename("ln", "ln2").unwrap();
    assert_eq!(fs.stat("ln2").unwrap().kind(), FileKind::Symlink);
    assert!(fs.rename("missing", "x").unwrap_err().is_not_found());
    fs.write("d2/e/c", "C").unwrap();
    fs.mkdir("full/x").unwrap();
    assert!(matches!(
        fs.rename("d2", "full").unwrap_err(),
        FsError::DirectoryNotEmpty { .. }
    ));
}

fn copy_semantics(r: Resolver) {
    let (t, fs) = vol(r);
    fs.write("src", "content").unwrap();
    std::fs::set_permissions(
        t.path().join("v/src"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(fs.copy("src", "dst").unwrap(), 7);
    assert_eq!(fs.read("dst").unwrap(), b"content");
    assert_eq!(fs.stat("dst").unwrap().mode() & 0o777, 0o600);
    // Onto an existing file: truncated and replaced.
    fs.write("dst2", "much longer old content").unwrap();
    fs.copy("src", "dst2").unwrap();
    assert_eq!(fs.read("dst2").unwrap(), b"content");
    // Onto itself, directly or through a link: refused, data kept.
    assert!(matches!(
        fs.copy("src", "src").unwrap_err(),
        FsError::SameFile { .. }
    ));
    fs.symlink("src", "alias").unwrap();
    assert!(matches!(
        fs.copy("src", "alias").unwrap_err(),
        FsError::SameFile { .. }
    ));
    assert_eq!(fs.read("src").unwrap(), b"content");
    fs.mkdir("dir").unwrap();
    assert!(matches!(
        fs.copy("dir", "x").unwrap_err(),
        FsError::IsADirectory { .. }
    ));
    let big = vec![7u8; 3 << 20];
    fs.write("big", &big).unwrap();
    assert_eq!(fs.copy("big", "big2").unwrap(), big.len() as u64);
    assert_eq!(fs.read("big2").unwrap(), big);
}

fn list_is_sorted_one_level(r: Resolver) {
    let (_t, fs) = vol(r);
    for n in ["zeta", "alpha", "mid"] {
        fs.write(n, "").unwrap();
    }
    fs.mkdir("dir/inner").unwrap();
    fs.symlink("alpha", "link").unwrap();
    let l = fs.list("").unwrap();
    let names: Vec<_> = l.iter().map(|e| e.name().to_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "dir", "link", "mid", "zeta"]);
    assert_eq!(l[1].kind(), FileKind::Dir);
    assert_eq!(l[2].kind(), FileKind::Symlink);
    assert!(matches!(
        fs.list("alpha").unwrap_err(),
        FsError::NotADirectory { .. }
    ));
}

fn exists_follows_inside_links(r: Resolver) {
    let (_t, fs) = vol(r);
    fs.symlink("nothing", "dangling").unwrap();
    assert!(!fs.exists("dangling").unwrap());
    assert!(fs.exists("").unwrap());
    assert!(!fs.exists("a/b").unwrap());
    fs.write("a", "").unwrap();
    assert!(!fs.exists("a/b").unwrap());
}

#[test]
fn symlink_open_root_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = VolumeFs::open(tmp.path().join("missing")).unwrap_err();
    assert!(matches!(e, FsError::OpenRoot { .. }), "{e}");
    std::fs::write(tmp.path().join("file"), "").unwrap();
    let e = VolumeFs::open(tmp.path().join("file")).unwrap_err();
    assert!(matches!(e, FsError::OpenRoot { .. }), "{e}");
}

/// Budget at `usage` for the tree at `root`, counted by the real scanner.
fn budget_for(root: &std::path::Path, counter: &std::path::Path, limit: u64) -> Arc<Budget> {
    let dir = std::fs::File::open(root).unwrap();
    Budget::create(counter, msb_quota::scan(&dir).unwrap()).unwrap();
    Arc::new(Budget::open(counter, Some(limit)).unwrap())
}

fn scanned(root: &std::path::Path) -> u64 {
    msb_quota::scan(std::fs::File::open(root).unwrap()).unwrap()
}

fn quota_is_enforced_and_usage_stays_exact(r: Resolver) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("v");
    std::fs::create_dir(&root).unwrap();
    let budget = budget_for(&root, &tmp.path().join("usage"), 1 << 20);
    let fs = VolumeFs::open(&root)
        .unwrap()
        .with_budget(budget.clone())
        .with_resolver(r);

    fs.mkdir("d/e").unwrap();
    fs.write("d/a", vec![1u8; 300_000]).unwrap();
    fs.write("d/e/b", vec![2u8; 300_000]).unwrap();
    assert_eq!(budget.used(), scanned(&root));
    // Too big for what is left: refused before anything is written.
    let e = fs.write("d/c", vec![3u8; 600_000]).unwrap_err();
    assert!(matches!(e, FsError::QuotaExceeded { .. }), "{e}");
    assert_eq!(fs.stat("d/c").unwrap().len(), 0);
    // Streaming writes stop at the limit too.
    let mut w = fs.create("d/stream").unwrap();
    let chunk = vec![4u8; 64 * 1024];
    let mut written = 0;
    let err = loop {
        match w.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
    assert!(written > 0 && written < 1 << 20);
    w.finish().unwrap();
    assert_eq!(budget.used(), scanned(&root));
    assert!(budget.used() <= 1 << 20);
    // Overwriting with the same size needs no new room.
    fs.write("d/a", vec![5u8; 300_000]).unwrap();
    fs.copy("d/a", "d/e/b").unwrap();
    fs.rename("d/a", "d/e/b").unwrap();
    assert_eq!(budget.used(), scanned(&root));
    // Frees are credited.
    fs.remove("d/stream").unwrap();
    assert_eq!(budget.used(), scanned(&root));
    fs.symlink("e/b", "d/ln").unwrap();
    fs.remove_all("d").unwrap();
    assert_eq!(budget.used(), scanned(&root));
    assert_eq!(budget.used(), 0);

    let exact = |what: &str| assert_eq!(budget.used(), scanned(&root), "after {what}");
    // Every name costs, whatever it names.
    fs.mkdir("t/sub/deep").unwrap();
    exact("mkdir");
    fs.write("t/sub/f", vec![6u8; 10_000]).unwrap();
    exact("a new file");
    fs.symlink("f", "t/sub/short").unwrap();
    exact("a short symlink");
    fs.symlink("x".repeat(300), "t/sub/long").unwrap();
    exact("a symlink whose target takes a block");
    fs.hard_link("t/sub/f", "t/f2").unwrap();
    exact("a hard link");
    fs.copy("t/sub/f", "t/copy").unwrap();
    exact("a copy");
    // Long names in one directory: it grows by blocks of its own.
    let many = |i: usize| format!("t/many/{i:0>200}");
    fs.mkdir("t/many").unwrap();
    for i in 0..60 {
        fs.write(many(i), "").unwrap();
    }
    assert!(fs.stat("t/many").unwrap().allocated() > 4096);
    exact("a directory grown by its names");
    // A write through a dangling symlink makes its target where it points.
    fs.symlink("../many/made", "t/sub/dangling").unwrap();
    fs.write("t/sub/dangling", "made").unwrap();
    assert_eq!(fs.read("t/many/made").unwrap(), b"made");
    exact("a write through a dangling symlink");

    // Renames over existing names free what they replace.
    fs.write("t/a", vec![1u8; 10_000]).unwrap();
    fs.write("t/b", vec![2u8; 20_000]).unwrap();
    fs.rename("t/a", "t/b").unwrap();
    exact("a file renamed over a file");
    fs.rename("t/f2", "t/sub/f").unwrap();
    assert!(fs.exists("t/f2").unwrap());
    exact("a rename onto another name of the same file");
    fs.mkdir("t/empty").unwrap();
    fs.rename("t/sub/deep", "t/empty").unwrap();
    exact("a directory renamed over an empty one");
    fs.rename("t/sub/short", "t/b").unwrap();
    exact("a symlink renamed over a file");
    fs.rename("t/many", "t/sub/many").unwrap();
    exact("a directory moved to another");
    fs.remove("t/f2").unwrap();
    exact("removing one name of a hard-linked file");

    // Near the limit a new name is refused, and nothing is made.
    fs.write("t/filler", "").unwrap();
    let room = budget.available().unwrap() - ENTRY_COST;
    fs.write("t/filler", vec![7u8; room as usize]).unwrap();
    exact("filling the volume");
    assert!(budget.available().unwrap() < ENTRY_COST + BLOCK);
    let refused = |e: FsError| assert!(matches!(e, FsError::QuotaExceeded { .. }), "{e}");
    refused(fs.mkdir("t/no").unwrap_err());
    refused(fs.mkdir("t/none/no").unwrap_err());
    refused(fs.write("t/no", "").unwrap_err());
    refused(fs.symlink("f", "t/no").unwrap_err());
    refused(fs.hard_link("t/sub/f", "t/no").unwrap_err());
    refused(fs.copy("t/sub/f", "t/no").unwrap_err());
    assert!(!fs.exists("t/no").unwrap() && !fs.exists("t/none").unwrap());
    exact("refused names");
    // What exists takes no new room.
    fs.mkdir("t/sub").unwrap();
    fs.write("t/copy", vec![3u8; 8192]).unwrap();
    exact("rewriting in a full volume");
    fs.remove("t/filler").unwrap();
    exact("removing the filler");

    // A tree with every kind of name, and a client xattr (as a sandbox
    // sets it, counted by a rescan), removed in one go.
    fs.hard_link("t/sub/f", "t/sub/many/f3").unwrap();
    if set_user_xattr(&root.join("t/sub/f"), "user.note", &[1u8; 100]) {
        budget.set_used(scanned(&root));
    }
    fs.remove_all("t").unwrap();
    exact("remove_all of a tree");
    assert_eq!(budget.used(), 0);

    // An import with xattrs: msb's records (not counted, but this one takes
    // a block of its own); the archive's client xattr is not restored.
    fs.mkdir("imp").unwrap();
    fs.write("imp/f", vec![8u8; 5000]).unwrap();
    let xattrs = set_user_xattr(&root.join("imp/f"), "user.msb.probe", b"1");
    let data = archive_with_xattrs(xattrs);
    let report = msb_volfs::archive::import(&fs, data.as_slice(), &mut |_| {}).unwrap();
    assert_eq!((report.files, report.hard_links, report.fifos), (2, 1, 1));
    exact("an import");
    if xattrs {
        let len = rustix::fs::getxattr_query(root.join("imp/f"), "user.msb.meta");
        assert_eq!(len, Ok(3000));
    }
    // Again, over what the first one made.
    msb_volfs::archive::import(&fs, data.as_slice(), &mut |_| {}).unwrap();
    exact("an import over an import");
    fs.remove_all("imp").unwrap();
    exact("removing the import");
    assert_eq!(budget.used(), 0);
}

/// Sets a user xattr on a host file; false where they are not supported.
fn set_user_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> bool {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).is_ok()
}

/// An archive of `imp/`: a directory and a file with xattrs (when
/// `xattrs`), a symlink, a hard link and a FIFO.
fn archive_with_xattrs(xattrs: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let record = vec![9u8; 3000];
    let mut add = |name: &str, ty: tar::EntryType, link: &str, data: &[u8], pax: bool| {
        if xattrs && pax {
            let records = [
                ("SCHILY.xattr.user.msb.meta", record.as_slice()),
                ("SCHILY.xattr.user.other", b"client".as_slice()),
            ];
            b.append_pax_extensions(records).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        if link.is_empty() {
            b.append_data(&mut h, name, data).unwrap();
        } else {
            b.append_link(&mut h, name, link).unwrap();
        }
    };
    add("imp/", tar::EntryType::Directory, "", b"", true);
    add("imp/f", tar::EntryType::Regular, "", &[5u8; 20_000], true);
    add("imp/g", tar::EntryType::Regular, "", b"small", false);
    add("imp/ln", tar::EntryType::Symlink, "f", b"", false);
    add("imp/h", tar::EntryType::Link, "imp/f", b"", false);
    add("imp/p", tar::EntryType::Fifo, "", b"", false);
    b.into_inner().unwrap()
}
