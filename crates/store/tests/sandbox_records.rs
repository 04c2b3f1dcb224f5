//! Sandbox records against a real SQLite file: persisted configs, volume
//! references that keep volumes in use, and the upgrade from schema 1.

use msb_spec::{Labels, VolumeConfig, VolumeKind, VolumeName};
use msb_store::{Store, StoreError};

fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

fn dir_cfg(n: &str) -> VolumeConfig {
    VolumeConfig::new(name(n), VolumeKind::Dir, None, None, Labels::new()).unwrap()
}

#[test]
fn referenced_volume_is_in_use_until_the_sandbox_is_removed() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("data")).unwrap();
    store.create(&dir_cfg("free")).unwrap();
    let rec = store
        .create_sandbox("web", r#"{"mounts":[]}"#, &[name("data"), name("data")])
        .unwrap();
    assert_eq!(rec.volumes, vec![name("data")]);
    match store.remove(&name("data")) {
        Err(StoreError::InUse { users, .. }) => assert_eq!(users, vec!["sandbox:web"]),
        other => panic!("remove of a referenced volume: {other:?}"),
    }
    // Not a candidate; and skipped if it was listed before the sandbox came.
    let (candidates, kept) = store.prune_candidates(&[]).unwrap();
    assert_eq!(candidates.len(), 1);
    assert!(kept[0].to_string().contains("sandbox:web"), "{}", kept[0]);
    assert_eq!(candidates[0].name, name("free"));
    let listed = [candidates[0].clone(), store.get(&name("data")).unwrap()];
    let (removed, skipped) = store.prune(&listed).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, name("free"));
    assert!(
        skipped[0].to_string().contains("sandbox:web"),
        "{}",
        skipped[0]
    );
    assert_eq!(store.users(&name("data")).unwrap(), vec!["sandbox:web"]);

    let again = Store::open(home.path()).unwrap();
    let got = again.sandbox("web").unwrap();
    assert_eq!(got.config, r#"{"mounts":[]}"#);
    assert_eq!(again.sandboxes().unwrap(), vec![got]);

    again.remove_sandbox("web").unwrap();
    assert!(matches!(
        again.remove_sandbox("web"),
        Err(StoreError::SandboxNotFound(n)) if n == "web"
    ));
    again.remove(&name("data")).unwrap();
}

#[test]
fn sandbox_names_are_unique_and_volumes_must_exist() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    store.create(&dir_cfg("data")).unwrap();
    store.create_sandbox("a", "{}", &[name("data")]).unwrap();
    assert!(matches!(
        store.create_sandbox("a", "{}", &[]),
        Err(StoreError::SandboxExists(n)) if n == "a"
    ));
    assert!(matches!(
        store.create_sandbox("b", "{}", &[name("missing")]),
        Err(StoreError::NotFound(v)) if v == name("missing")
    ));
    assert!(matches!(
        store.sandbox("b"),
        Err(StoreError::SandboxNotFound(_))
    ));
}

#[test]
fn schema_1_database_is_upgraded_keeping_its_volumes() {
    let home = tempfile::tempdir().unwrap();
    Store::open(home.path())
        .unwrap()
        .create(&dir_cfg("old"))
        .unwrap();
    let db = home.path().join("db/msb.db");
    {
        // Turn it back into what a version 1 build wrote.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DROP TABLE sandbox_volumes; DROP TABLE sandboxes;")
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let store = Store::open(home.path()).unwrap();
    store.get(&name("old")).unwrap();
    store.create_sandbox("s", "{}", &[name("old")]).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 2);
}
