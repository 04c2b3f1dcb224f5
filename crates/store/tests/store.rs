//! The store against a real SQLite file, real directories and real mke2fs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use msb_spec::{LabelFilter, Labels, VolumeConfig, VolumeKind, VolumeName};
use msb_store::{AttachMode, Store, StoreError};

fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

fn dir_cfg(n: &str) -> VolumeConfig {
    VolumeConfig::new(name(n), VolumeKind::Dir, None, None, Labels::new()).unwrap()
}

fn labelled(n: &str, labels: &[(&str, &str)]) -> VolumeConfig {
    let map: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    VolumeConfig::new(
        name(n),
        VolumeKind::Dir,
        None,
        None,
        Labels::try_from(map).unwrap(),
    )
    .unwrap()
}

fn disk_cfg(n: &str, mib: u32) -> VolumeConfig {
    VolumeConfig::new(name(n), VolumeKind::Disk, Some(mib), None, Labels::new()).unwrap()
}

#[test]
fn create_get_list_remove() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let a = store.create(&dir_cfg("a")).unwrap();
    assert_eq!(a.path, home.path().join("volumes/a"));
    assert!(a.path.is_dir());
    assert_eq!(a.used_bytes, 0);
    let b = store.create(&disk_cfg("b", 64)).unwrap();
    assert_eq!(
        b.disk_image.as_deref(),
        Some(home.path().join("volumes/b/disk.raw").as_path())
    );
    assert_eq!(b.capacity_bytes, Some(64 << 20));
    assert_eq!(
        std::fs::metadata(b.disk_image.as_ref().unwrap())
            .unwrap()
            .len(),
        64 << 20
    );

    let names: Vec<_> = store
        .list(&[])
        .unwrap()
        .into_iter()
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(names, ["b", "a"], "newest first");
    assert_eq!(store.get(&name("a")).unwrap().kind, VolumeKind::Dir);
    assert!(
        matches!(store.create(&dir_cfg("a")), Err(StoreError::AlreadyExists(n)) if n.as_str() == "a")
    );
    assert!(matches!(
        store.create(&disk_cfg("a", 64)),
        Err(StoreError::AlreadyExists(_))
    ));

    store.remove(&name("a")).unwrap();
    assert!(!home.path().join("volumes/a").exists());
    assert!(matches!(
        store.get(&name("a")),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.remove(&name("a")),
        Err(StoreError::NotFound(_))
    ));
    store.remove(&name("b")).unwrap();
    assert!(!home.path().join("volumes/b").exists());
    assert!(store.list(&[]).unwrap().is_empty());
    // The name is free again.
    store.create(&dir_cfg("a")).unwrap();
}

#[test]
fn names_are_case_sensitive() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("Data")).unwrap();
    store.create(&dir_cfg("data")).unwrap();
    assert_eq!(store.list(&[]).unwrap().len(), 2);
}

#[test]
fn label_filters_all_must_match() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store
        .create(&labelled("p1", &[("env", "prod"), ("team", "a")]))
        .unwrap();
    store.create(&labelled("p2", &[("env", "prod")])).unwrap();
    store
        .create(&labelled("d1", &[("env", "dev"), ("team", "a")]))
        .unwrap();
    let pick = |filters: &[&str]| -> Vec<String> {
        let f: Vec<LabelFilter> = filters
            .iter()
            .map(|s| LabelFilter::parse_cli(s).unwrap())
            .collect();
        store
            .list(&f)
            .unwrap()
            .into_iter()
            .map(|v| v.name.to_string())
            .collect()
    };
    assert_eq!(pick(&["label=env=prod"]), ["p2", "p1"]);
    assert_eq!(pick(&["label=team"]), ["d1", "p1"]);
    assert_eq!(pick(&["label=env=prod", "label=team=a"]), ["p1"]);
    assert!(pick(&["label=nope"]).is_empty());
    assert_eq!(
        store.get(&name("p1")).unwrap().labels.get("team"),
        Some("a")
    );
}

#[test]
fn usage_is_real_for_directory_volumes() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let info = store.create(&dir_cfg("u")).unwrap();
    // Written behind msb's back: the counter does not see it until doctor.
    std::fs::write(info.path.join("f"), vec![7u8; 1 << 20]).unwrap();
    std::fs::hard_link(info.path.join("f"), info.path.join("g")).unwrap();
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, 0);
    let report = store.doctor().unwrap();
    let (n, old, new) = &report.usage_fixed[0];
    assert_eq!((n.as_str(), *old), ("u", 0));
    assert!(
        (1 << 20..(1 << 20) + (64 << 10)).contains(new),
        "hard link counted once: {new}"
    );
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, *new);
    // The counter is what writers share.
    let budget = store
        .budget(&store.get(&name("u")).unwrap())
        .unwrap()
        .unwrap();
    budget.adjust(4096);
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, new + 4096);
}

#[test]
fn get_current_counts_host_writes_and_resets_the_counter_when_quiet() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let info = store.create(&dir_cfg("u")).unwrap();
    std::fs::write(info.path.join("f"), vec![7u8; 1 << 20]).unwrap();
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, 0);
    let now = store.get_current(&name("u")).unwrap().used_bytes;
    assert!((1 << 20..(1 << 20) + (64 << 10)).contains(&now), "{now}");
    // Nothing wrote through msb: the counter caught up.
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, now);

    // A read-write user keeps its counter: the scan is reported only.
    let writer = store
        .attach(&name("u"), "test:writer", AttachMode::ReadWrite)
        .unwrap();
    std::fs::write(info.path.join("g"), vec![7u8; 1 << 20]).unwrap();
    let later = store.get_current(&name("u")).unwrap().used_bytes;
    assert!(later >= now + (1 << 20), "{later}");
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, now);
    drop(writer);
    // A reader does not stop the reset.
    let _reader = store
        .attach(&name("u"), "test:reader", AttachMode::ReadOnly)
        .unwrap();
    store.get_current(&name("u")).unwrap();
    assert_eq!(store.get(&name("u")).unwrap().used_bytes, later);
}

#[test]
fn prune_filters_reports_freed_space_and_removes_only_what_was_listed() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&labelled("keep", &[("keep", "1")])).unwrap();
    let big = store.create(&labelled("big", &[("tmp", "1")])).unwrap();
    store.create(&labelled("tmp", &[("tmp", "1")])).unwrap();
    std::fs::write(big.path.join("f"), vec![1u8; 2 << 20]).unwrap();
    let filters: Vec<_> = ["label!=keep", "name=t"]
        .iter()
        .map(|f| msb_spec::VolumeFilter::parse_cli(f).unwrap())
        .collect();
    let (listed, _) = store.prune_candidates(&filters).unwrap();
    let names: Vec<_> = listed.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["tmp"]);
    let (listed, _) = store
        .prune_candidates(&[msb_spec::VolumeFilter::parse_cli("label=tmp").unwrap()])
        .unwrap();
    assert_eq!(listed.len(), 2);
    // Scanned: the file written on the host counts.
    assert!(listed[1].used_bytes >= 2 << 20, "{:?}", listed[1]);
    // "tmp" is replaced by a new volume of that name after the listing.
    store.remove(&name("tmp")).unwrap();
    store.create(&dir_cfg("tmp")).unwrap();
    let (removed, skipped) = store.prune(&listed).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, name("big"));
    assert!(removed[0].freed_bytes >= 2 << 20, "{:?}", removed[0]);
    assert!(matches!(&skipped[..], [StoreError::NotFound(n)] if n.as_str() == "tmp"));
    let left: Vec<_> = store
        .list(&[])
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(left, [name("tmp"), name("keep")]);
}

#[test]
fn quota_is_the_budget_limit() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let cfg = VolumeConfig::new(name("q"), VolumeKind::Dir, None, Some(1), Labels::new()).unwrap();
    let info = store.create(&cfg).unwrap();
    assert_eq!(info.quota_mib, Some(1));
    let budget = store.budget(&info).unwrap().unwrap();
    assert_eq!(budget.limit(), Some(1 << 20));
    budget.reserve(1 << 20).unwrap();
    assert!(budget.reserve(1).is_err());
}

#[test]
fn missing_usage_counter_is_rebuilt_by_scanning() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let info = store.create(&dir_cfg("r")).unwrap();
    std::fs::write(info.path.join("f"), vec![1u8; 200_000]).unwrap();
    std::fs::remove_file(home.path().join("usage/r")).unwrap();
    let budget = store.budget(&info).unwrap().unwrap();
    assert!(budget.used() >= 200_000);
}

#[test]
fn disk_usage_comes_from_the_filesystem() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let info = store.create(&disk_cfg("d", 64)).unwrap();
    let before = store.get(&name("d")).unwrap().used_bytes;
    let src = home.path().join("blob");
    std::fs::write(&src, vec![3u8; 3 << 20]).unwrap();
    let img = info.disk_image.unwrap();
    // debugfs writes into the image without mounting it.
    let out = Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} blob", src.display()))
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = store.get(&name("d")).unwrap().used_bytes;
    assert!(after - before >= 3 << 20, "{before} -> {after}");
    assert!(after - before < 4 << 20, "{before} -> {after}");
}

#[test]
fn large_disk_volume_is_sparse() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let info = store.create(&disk_cfg("big", 100 * 1024)).unwrap();
    let meta = std::fs::metadata(info.disk_image.unwrap()).unwrap();
    assert_eq!(meta.len(), 100 << 30);
    let host_bytes = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        host_bytes < 10 << 20,
        "100 GiB image occupies {host_bytes} bytes"
    );
}

#[test]
fn occupied_path_is_reported_and_left_alone() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let foreign = home.path().join("volumes/mine");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious"), b"keep").unwrap();
    assert!(matches!(
        store.create(&dir_cfg("mine")),
        Err(StoreError::PathOccupied { .. })
    ));
    assert!(store.list(&[]).unwrap().is_empty());
    let report = store.doctor().unwrap();
    assert_eq!(report.orphans, std::slice::from_ref(&foreign));
    assert_eq!(std::fs::read(foreign.join("precious")).unwrap(), b"keep");
}

#[test]
fn an_orphan_is_adopted_or_removed_on_request_only() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let orphan = home.path().join("volumes/mine");
    std::fs::create_dir_all(orphan.join("sub")).unwrap();
    std::fs::write(orphan.join("sub/precious"), vec![1u8; 20_000]).unwrap();
    // A symlink or file under volumes/ is no volume to adopt.
    std::fs::write(home.path().join("volumes/flat"), b"x").unwrap();
    assert!(matches!(
        store.adopt_orphan(&name("flat")),
        Err(StoreError::OrphanNotDir { .. })
    ));
    assert!(matches!(
        store.adopt_orphan(&name("none")),
        Err(StoreError::NoOrphan { .. })
    ));
    let info = store.adopt_orphan(&name("mine")).unwrap();
    assert_eq!(info.kind, VolumeKind::Dir);
    assert!(info.used_bytes >= 20_000, "{}", info.used_bytes);
    // Its counter was made from the scan: a listing shows the same.
    let listed = store.list(&[]).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].used_bytes, info.used_bytes);
    assert_eq!(
        std::fs::read(orphan.join("sub/precious")).unwrap().len(),
        20_000
    );
    // A volume is no orphan: neither call touches it.
    assert!(matches!(
        store.remove_orphan(&name("mine")),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.adopt_orphan(&name("mine")),
        Err(StoreError::AlreadyExists(_))
    ));
    store.remove_orphan(&name("flat")).unwrap();
    assert!(!home.path().join("volumes/flat").exists());
    let report = store.doctor().unwrap();
    assert!(report.orphans.is_empty(), "{:?}", report.orphans);
    assert!(report.usage_fixed.is_empty(), "{:?}", report.usage_fixed);
}

#[test]
fn failed_create_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    // Staging cannot be written: the create fails after its row was inserted.
    let staging = home.path().join("volumes/.staging");
    std::fs::remove_dir(&staging).unwrap();
    std::fs::write(&staging, b"").unwrap();
    for cfg in [dir_cfg("x"), disk_cfg("y", 64)] {
        let result = store.create(&cfg);
        assert!(matches!(result, Err(StoreError::Io { .. })), "{result:?}");
        assert!(matches!(
            store.get(cfg.name()),
            Err(StoreError::NotFound(_))
        ));
        assert!(
            !home
                .path()
                .join("volumes")
                .join(cfg.name().as_str())
                .exists()
        );
    }
    assert!(!home.path().join("usage/x").exists());
    std::fs::remove_file(&staging).unwrap();
    std::fs::create_dir(&staging).unwrap();
    store.create(&dir_cfg("x")).unwrap();
}

#[test]
fn foreign_database_is_refused_and_untouched() {
    // A foreign WAL-mode database with commits still in its WAL, as another
    // program leaves it while running: snapshot its three files.
    let other = tempfile::tempdir().unwrap();
    let src = other.path().join("msb.db");
    let conn = rusqlite::Connection::open(&src).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE sandbox (id INTEGER PRIMARY KEY); INSERT INTO sandbox VALUES (1);",
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("db")).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            other.path().join(format!("msb.db{suffix}")),
            home.path().join(format!("db/msb.db{suffix}")),
        )
        .unwrap();
    }
    drop(conn);
    // The database and its WAL must be byte-identical; the -shm file is
    // SQLite's shared-memory index, which any reader updates.
    let snapshot = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().ends_with("-shm"))
            .map(|e| {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                (e.file_name().into_string().unwrap(), bytes)
            })
            .collect();
        v.sort();
        v
    };
    let db_before = snapshot(&home.path().join("db"));
    assert!(
        db_before
            .iter()
            .any(|(n, b)| n == "msb.db-wal" && !b.is_empty())
    );
    let err = Store::open(home.path())
        .err()
        .expect("foreign database accepted");
    let msg = err.to_string();
    assert!(
        msg.contains("another microsandbox installation") && msg.contains("MSB_HOME"),
        "{msg}"
    );
    assert!(
        snapshot(&home.path().join("db")) == db_before,
        "foreign database changed"
    );
    // Nothing else was created in the home either.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 1);

    let db = home.path().join("db/msb.db");
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(home.path().join(format!("db/msb.db{suffix}"))).unwrap();
    }
    std::fs::write(
        &db,
        b"this is not sqlite at all, just some text that is long enough......",
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = Store::open(home.path()).err().expect("text file accepted");
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);

    // Some other program's SQLite file is not called a microsandbox's.
    std::fs::remove_file(&db).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT);")
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = Store::open(home.path())
        .err()
        .expect("foreign database accepted");
    let msg = err.to_string();
    assert!(
        msg.contains("another program") && msg.contains("MSB_HOME"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn newer_database_is_refused_and_untouched() {
    let home = tempfile::tempdir().unwrap();
    Store::open(home.path()).unwrap();
    let db = home.path().join("db/msb.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Store::open(home.path())
        .err()
        .expect("newer database accepted");
    assert!(err.to_string().contains("schema version 99"), "{err}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn attached_volume_cannot_be_removed() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("busy")).unwrap();
    let att = store
        .attach(&name("busy"), "sandbox:web", AttachMode::ReadWrite)
        .unwrap();
    match store.remove(&name("busy")) {
        Err(StoreError::InUse { users, .. }) => assert_eq!(users, ["sandbox:web"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.users(&name("busy")).unwrap(), ["sandbox:web"]);
    let (listed, kept) = store.prune_candidates(&[]).unwrap();
    assert!(listed.is_empty());
    assert!(matches!(&kept[..], [StoreError::InUse { .. }]));
    let (removed, skipped) = store.prune(&[store.get(&name("busy")).unwrap()]).unwrap();
    assert!(removed.is_empty());
    assert_eq!(skipped.len(), 1);
    drop(att);
    assert!(store.users(&name("busy")).unwrap().is_empty());
    store.remove(&name("busy")).unwrap();
}

#[test]
fn disk_volume_has_one_writer() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&disk_cfg("d", 32)).unwrap();
    let d = name("d");
    let r1 = store.attach(&d, "ro1", AttachMode::ReadOnly).unwrap();
    let _r2 = store.attach(&d, "ro2", AttachMode::ReadOnly).unwrap();
    assert!(matches!(
        store.attach(&d, "rw", AttachMode::ReadWrite),
        Err(StoreError::InUse { .. })
    ));
    drop(r1);
    drop(_r2);
    let _w = store.attach(&d, "rw", AttachMode::ReadWrite).unwrap();
    assert!(matches!(
        store.attach(&d, "rw2", AttachMode::ReadWrite),
        Err(StoreError::InUse { .. })
    ));
    assert!(matches!(
        store.attach(&d, "ro", AttachMode::ReadOnly),
        Err(StoreError::InUse { .. })
    ));
    // Directory volumes are shared freely.
    store.create(&dir_cfg("shared")).unwrap();
    let _a = store
        .attach(&name("shared"), "a", AttachMode::ReadWrite)
        .unwrap();
    let _b = store
        .attach(&name("shared"), "b", AttachMode::ReadWrite)
        .unwrap();
}

/// Child half of `dead_holder_releases_the_volume`: attach, report, wait to be killed.
#[test]
#[ignore = "child process of dead_holder_releases_the_volume"]
fn attach_child() {
    let home =
        std::env::var_os("MSB_TEST_ATTACH_HOME").expect("run by dead_holder_releases_the_volume");
    let store = Store::open(Path::new(&home)).unwrap();
    let _att = store
        .attach(&name("v"), "sandbox:child", AttachMode::ReadWrite)
        .unwrap();
    println!("ATTACHED");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn dead_holder_releases_the_volume() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("v")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "attach_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MSB_TEST_ATTACH_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("ATTACHED")));
    assert!(matches!(
        store.remove(&name("v")),
        Err(StoreError::InUse { .. })
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(store.users(&name("v")).unwrap().is_empty());
    store.remove(&name("v")).unwrap();
    assert_eq!(
        std::fs::read_dir(home.path().join("run/attach"))
            .unwrap()
            .count(),
        0
    );
}

/// Many openers racing to set up one fresh home: every one must succeed.
/// (A check that read the header and the table list as two snapshots once
/// saw another opener's schema appear in between and called the file foreign.)
#[test]
fn concurrent_first_opens_all_succeed() {
    use std::sync::{Arc, Barrier};
    const OPENERS: usize = 8;
    for _ in 0..150 {
        let home = tempfile::tempdir().unwrap();
        let barrier = Arc::new(Barrier::new(OPENERS));
        let openers: Vec<_> = (0..OPENERS)
            .map(|_| {
                let (home, barrier) = (home.path().to_owned(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&home).map(|_| ())
                })
            })
            .collect();
        for o in openers {
            o.join().unwrap().unwrap();
        }
    }
}

#[test]
fn clone_copies_files_settings_and_usage() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let cfg = VolumeConfig::new(
        name("src"),
        VolumeKind::Dir,
        None,
        Some(64),
        labelled("x", &[("team", "ci")]).labels().clone(),
    )
    .unwrap();
    let src = store.create(&cfg).unwrap();
    let p = &src.path;
    std::fs::create_dir(p.join("private")).unwrap();
    std::fs::set_permissions(p.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(p.join("private/data"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("private/data", p.join("link")).unwrap();
    std::fs::hard_link(p.join("private/data"), p.join("twin")).unwrap();
    std::os::unix::fs::chown(p.join("twin"), Some(1234), Some(5678)).unwrap();
    // A 1 GiB file with one written byte: a hole the copy must keep.
    let sparse = std::fs::File::create(p.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"z", 1 << 29).unwrap();
    drop(sparse);

    let copy = store.clone_volume(&name("src"), &name("dst")).unwrap();
    assert_eq!(copy.kind, VolumeKind::Dir);
    assert_eq!(copy.quota_mib, Some(64));
    assert_eq!(copy.labels, cfg.labels().clone());
    let q = &copy.path;
    assert_eq!(
        std::fs::read(q.join("private/data")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::metadata(q.join("private")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        std::fs::read_link(q.join("link")).unwrap(),
        Path::new("private/data")
    );
    let (a, b) = (
        std::fs::metadata(q.join("private/data")).unwrap(),
        std::fs::metadata(q.join("twin")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay linked");
    assert_eq!((b.uid(), b.gid()), (1234, 5678));
    let s = std::fs::metadata(q.join("sparse")).unwrap();
    assert_eq!(s.len(), 1 << 30);
    assert!(s.blocks() * 512 < 1 << 20, "hole filled: {}", s.blocks());
    // The copy's usage is counted from what it holds (the 300 kB file
    // once, the directory's and the sparse file's blocks).
    let used = store.get(&name("dst")).unwrap().used_bytes;
    assert!((300_000..300_000 + (64 << 10)).contains(&used), "{used}");
    // And it is independent of the source.
    std::fs::write(q.join("only-in-copy"), "x").unwrap();
    assert!(!p.join("only-in-copy").exists());
    store.remove(&name("src")).unwrap();
    assert_eq!(std::fs::read(q.join("twin")).unwrap().len(), 300_000);
}

#[test]
fn clone_of_a_disk_volume_is_a_sparse_copy() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let src = store.create(&disk_cfg("disk", 256)).unwrap();
    let copy = store.clone_volume(&name("disk"), &name("disk2")).unwrap();
    assert_eq!(copy.capacity_bytes, Some(256 << 20));
    let (a, b) = (src.disk_image.unwrap(), copy.disk_image.clone().unwrap());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let meta = std::fs::metadata(&b).unwrap();
    let host_bytes = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(host_bytes < 64 << 20, "copy occupies {host_bytes} bytes");
}

#[test]
fn clone_refusals() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("a")).unwrap();
    store.create(&dir_cfg("b")).unwrap();
    assert!(matches!(
        store.clone_volume(&name("a"), &name("b")),
        Err(StoreError::AlreadyExists(n)) if n == name("b")
    ));
    assert!(matches!(
        store.clone_volume(&name("nope"), &name("c")),
        Err(StoreError::NotFound(n)) if n == name("nope")
    ));
    // A writer could change it mid-copy; a reader cannot.
    let writer = store
        .attach(&name("a"), "sandbox:web", AttachMode::ReadWrite)
        .unwrap();
    match store.clone_volume(&name("a"), &name("c")) {
        Err(StoreError::InUse { users, .. }) => assert_eq!(users, ["sandbox:web"]),
        other => panic!("{other:?}"),
    }
    drop(writer);
    let _reader = store
        .attach(&name("a"), "sandbox:ro", AttachMode::ReadOnly)
        .unwrap();
    store.clone_volume(&name("a"), &name("c")).unwrap();
    // Refused clones left nothing behind.
    let names: Vec<_> = store
        .list(&[])
        .unwrap()
        .into_iter()
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        std::fs::read_dir(home.path().join("volumes/.staging"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// The owner and permission bits of a disk image's root directory, as
/// debugfs reads them from the image.
fn image_root(image: &Path) -> (u32, u32, u32) {
    let out = Command::new("debugfs")
        .args(["-R", "stat /"])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str, radix: u32| {
        let rest = &text[text.find(key).unwrap_or_else(|| panic!("{key} in {text}")) + key.len()..];
        let word = rest.split_whitespace().next().unwrap();
        u32::from_str_radix(word, radix).unwrap()
    };
    (field("User:", 10), field("Group:", 10), field("Mode:", 8))
}

#[test]
fn new_volumes_belong_to_the_sandboxes_root() {
    use std::os::unix::fs::MetadataExt;
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let (uid, gid) = if rustix::process::geteuid().is_root() {
        assert_eq!(msb_store::sandbox_ids(), msb_spec::IdMap::ROOTFUL);
        assert_eq!(msb_store::sandbox_gids(), msb_spec::IdMap::ROOTFUL);
        (0x6FFF_0000, 0x6FFF_0000)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let dir = store.create(&dir_cfg("d")).unwrap();
    let m = std::fs::metadata(&dir.path).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o755));
    let disk = store.create(&disk_cfg("k", 64)).unwrap();
    assert_eq!(
        image_root(disk.disk_image.as_ref().unwrap()),
        (uid, gid, 0o755)
    );
    // A clone keeps the owners it finds, the root's included.
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&dir.path, Some(4321), Some(8765)).unwrap();
    }
    let before = std::fs::metadata(&dir.path).unwrap();
    let copy = store.clone_volume(&name("d"), &name("c")).unwrap();
    let after = std::fs::metadata(&copy.path).unwrap();
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
}

/// Rootless: the same store code run as an ordinary user (through setpriv)
/// leaves the caller owning its volumes, and sandboxes map onto the caller.
#[test]
fn rootless_volumes_belong_to_the_caller() {
    use std::os::unix::fs::MetadataExt;
    const USER: u32 = 40_123;
    if std::env::var_os("MSB_STORE_TEST_ROOTLESS").is_some() {
        let home = std::env::var_os("MSB_STORE_TEST_HOME").unwrap();
        let store = Store::open(home).unwrap();
        assert_eq!(msb_store::sandbox_ids(), msb_spec::IdMap::single(USER));
        assert_eq!(msb_store::sandbox_gids(), msb_spec::IdMap::single(USER));
        let dir = store.create(&dir_cfg("d")).unwrap();
        let m = std::fs::metadata(&dir.path).unwrap();
        assert_eq!((m.uid(), m.gid()), (USER, USER));
        let disk = store.create(&disk_cfg("k", 64)).unwrap();
        assert_eq!(
            image_root(disk.disk_image.as_ref().unwrap()),
            (USER, USER, 0o755)
        );
        assert!(store.doctor().unwrap().owned_by_host_root.is_empty());
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: switching to another user needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(USER), Some(USER)).unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rootless_volumes_belong_to_the_caller",
            "--nocapture",
        ])
        .env("MSB_STORE_TEST_ROOTLESS", "1")
        .env("MSB_STORE_TEST_HOME", home.path())
        .output()
        .expect("setpriv (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn doctor_reports_a_directory_volume_owned_by_host_root() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: making a volume owned by host root needs root");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let old = store.create(&dir_cfg("old")).unwrap();
    store.create(&dir_cfg("new")).unwrap();
    // As volumes were made before they were given to sandboxes.
    std::os::unix::fs::chown(&old.path, Some(0), Some(0)).unwrap();
    let report = store.doctor().unwrap();
    assert_eq!(report.owned_by_host_root, [name("old")]);
    assert_eq!(std::fs::metadata(&old.path).unwrap().uid(), 0, "left as is");
    std::os::unix::fs::chown(&old.path, Some(0x6FFF_0000), Some(0x6FFF_0000)).unwrap();
    assert!(store.doctor().unwrap().owned_by_host_root.is_empty());
}

#[test]
fn home_folders_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = tmp.path().join("fresh");
    let store = Store::open(&fresh).unwrap();
    store.create(&dir_cfg("v")).unwrap();
    for sub in ["", "db", "volumes", "usage", "run"] {
        assert_eq!(mode(&fresh.join(sub)), 0o700, "{sub}");
    }
    drop(store);
    // A home made when these folders were open to everyone is tightened.
    for sub in ["db", "volumes", "usage", "run"] {
        std::fs::set_permissions(fresh.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let store = Store::open(&fresh).unwrap();
    for sub in ["db", "volumes", "usage", "run"] {
        assert_eq!(mode(&fresh.join(sub)), 0o700, "{sub}");
    }
    assert!(store.get(&name("v")).is_ok());
}
