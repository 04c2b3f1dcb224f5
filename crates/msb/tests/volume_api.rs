//! The async Rust API on a store opened at an explicit home.

use msb::{Error, FsError, LabelFilter, VolumeKind, VolumeStore};

#[tokio::test]
async fn builder_create_get_list_remove() {
    let home = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(home.path()).unwrap();
    let v = store
        .builder("data")
        .quota_mib(10)
        .label("team", "ci")
        .create()
        .await
        .unwrap();
    assert_eq!(v.name(), "data");
    assert_eq!(v.kind(), VolumeKind::Dir);
    assert_eq!(v.path(), home.path().join("volumes/data"));
    store
        .builder("disk")
        .disk()
        .size_mib(64)
        .create()
        .await
        .unwrap();

    let h = store.get("data").await.unwrap();
    assert_eq!(h.quota_mib(), Some(10));
    assert_eq!(h.labels().get("team"), Some("ci"));
    assert_eq!(
        (h.capacity_bytes(), h.disk_format(), h.disk_fstype()),
        (None, None, None)
    );
    let d = store.get("disk").await.unwrap();
    assert_eq!(
        (d.capacity_bytes(), d.disk_format(), d.disk_fstype()),
        (Some(64 << 20), Some("raw"), Some("ext4"))
    );
    assert!(d.created_at() >= h.created_at());

    let names: Vec<_> = store
        .list(vec![])
        .await
        .unwrap()
        .iter()
        .map(|h| h.name().to_string())
        .collect();
    assert_eq!(names, ["disk", "data"]);
    let filtered = store
        .list(vec![LabelFilter::parse_cli("label=team=ci").unwrap()])
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);

    v.delete().await.unwrap();
    assert!(matches!(store.get("data").await, Err(Error::VolumeNotFound(n)) if n == "data"));
    store.remove("disk").await.unwrap();
}

#[tokio::test]
async fn errors_are_distinct() {
    let home = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(home.path()).unwrap();
    store.builder("x").create().await.unwrap();
    assert!(matches!(
        store.builder("x").create().await,
        Err(Error::VolumeAlreadyExists(_))
    ));
    assert!(matches!(
        store.builder("-x").create().await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        store.get("../etc").await,
        Err(Error::InvalidName { .. })
    ));
    match store.builder("d").disk().create().await {
        Err(Error::InvalidConfig(reason)) => assert!(reason.contains("needs a size"), "{reason}"),
        other => panic!("{:?}", other.map(|v| v.name().to_string())),
    }
    assert!(matches!(
        store.builder("q").quota_mib(0).create().await,
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        store.builder("l").label("", "v").create().await,
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        store.remove("nope").await,
        Err(Error::VolumeNotFound(_))
    ));
}

#[tokio::test]
async fn files_are_confined_and_counted() {
    let home = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(home.path()).unwrap();
    let v = store.builder("f").quota_mib(1).create().await.unwrap();
    let fs = v.fs().await.unwrap();
    fs.mkdir("a/b").unwrap();
    fs.write("a/b/hello.txt", "hello").unwrap();
    assert_eq!(fs.read_to_string("a/b/hello.txt").unwrap(), "hello");
    assert!(matches!(
        fs.write("../escape", "x"),
        Err(FsError::PathEscape { .. })
    ));
    assert!(
        fs.write("big", vec![0u8; 2 << 20]).is_err(),
        "quota of 1 MiB not enforced"
    );
    drop(fs);
    let used = store.get("f").await.unwrap().used_bytes();
    assert!((4096..=1 << 20).contains(&used), "{used}");
}
