//! The one-shot sandbox API: real sandboxes started through the `msb`
//! binary next to the test executable.

use std::path::Path;

use msb::{Mount, MountOptions, RunBuilder, Security, TmpfsOptions, VolumeName};

/// Whether sandboxes can run here: as root, or rootless as a user the
/// kernel lets create user namespaces (printed when not).
fn sandboxes() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let rootless = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rootless {
        eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
    }
    rootless
}

#[tokio::test]
async fn output_status_and_mounts() {
    if !sandboxes() {
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
