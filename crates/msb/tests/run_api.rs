//! The one-shot sandbox API: real sandboxes started through the `msb`
//! binary next to the test executable.

use std::path::Path;

use msb::{Mount, MountOptions, RunBuilder, Security, TmpfsOptions, VolumeName};

fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        eprintln!("skipped: sandboxes need root");
        return false;
    }
    true
}

#[tokio::test]
async fn output_status_and_mounts() {
    if !root() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let store = msb::VolumeStore::open(home.path()).unwrap();
    store.builder("demo").create().await.unwrap();
    let out = RunBuilder::new("sh")
        .args([
            "-c",
            "echo hi > /data/x; cat /data/x; ls /h; echo $K; echo oops >&2; exit 5",
        ])
        .volume("/scratch/t", Mount::tmpfs(TmpfsOptions::default()))
        .volume(
            "/data",
            Mount::named(VolumeName::new("demo").unwrap(), MountOptions::default()),
        )
        .volume("/h", Mount::bind(host.path(), MountOptions::default()))
        .env("K", "v")
        .security(Security::Restricted)
        .home(home.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status, 5);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nv\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(
        std::fs::read_to_string(home.path().join("volumes/demo/x")).unwrap(),
        "hi\n"
    );
}

#[tokio::test]
async fn invalid_specs_are_rejected_before_anything_runs() {
    let home = tempfile::tempdir().unwrap();
    let err = RunBuilder::new("true")
        .volume("relative", Mount::tmpfs(TmpfsOptions::default()))
        .home(home.path())
        .status()
        .await
        .unwrap_err();
    assert!(matches!(err, msb::SandboxError::Mount(_)), "{err}");
    let err = RunBuilder::new("")
        .home(home.path())
        .status()
        .await
        .unwrap_err();
    assert!(matches!(err, msb::SandboxError::NoCommand), "{err}");
    assert!(!Path::new(&home.path().join("volumes/relative")).exists());
}
