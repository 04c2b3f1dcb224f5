//! A guest whose root is a read-only virtio-fs share under a tmpfs overlay,
//! with a second share mounted read-write. Needs virtiofsd (a file server
//! from outside this workspace; CI does not have it, so this skips there).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_config, run, sh};
use msb_vm::{GuestFile, GuestMount, GuestPlan, MountSource, RootPlan, Share, Vm};

fn virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MSB_VIRTIOFSD") {
        return Some(p.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("virtiofsd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/libexec/virtiofsd")).filter(|p| p.is_file()))
}

/// A running virtiofsd, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, dir: &Path, socket: &Path) -> Server {
    let child = Command::new(bin)
        .arg("--shared-dir")
        .arg(dir)
        .arg("--socket-path")
        .arg(socket)
        .args(["--sandbox", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

#[test]
fn root_share_under_a_writable_overlay() {
    let Some(mut config) = busybox_config("root_share_under_a_writable_overlay") else {
        return;
    };
    let Some(bin) = virtiofsd() else {
        eprintln!(
            "skipping root_share_under_a_writable_overlay: virtiofsd not found (set MSB_VIRTIOFSD)"
        );
        return;
    };
    // The root gets busybox from the share, not from the initramfs.
    config.initramfs_extra.clear();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "touch", "ls", "stat", "grep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("marker"), "lower layer\n").unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _root_server = serve(&bin, &root, &tmp.path().join("root.sock"));
    let _data_server = serve(&bin, &data, &tmp.path().join("data.sock"));
    config.shares = vec![
        Share {
            tag: "root".into(),
            socket: tmp.path().join("root.sock"),
        },
        Share {
            tag: "data".into(),
            socket: tmp.path().join("data.sock"),
        },
    ];
    let plan = GuestPlan {
        hostname: "rooted".into(),
        root: Some(RootPlan {
            tag: "root".into(),
            upper_size_mib: 16,
            lower_at: String::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            files: vec![GuestFile {
                path: "/etc/generated".into(),
                contents: b"by the host\n".to_vec(),
                mode: 0o600,
            }],
        }),
        mounts: vec![GuestMount {
            guest_path: "/data".into(),
            source: MountSource::VirtioFs { tag: "data".into() },
            ro: false,
            noexec: true,
            nosuid: true,
            nodev: true,
        }],
        workdir: "/".into(),
        env: vec!["PATH=/bin".into()],
        security: None,
    };
    let vm = Vm::boot(&config, &plan).unwrap();

    assert_eq!(sh(&vm, "cat /marker"), "lower layer\n");
    assert_eq!(
        sh(&vm, "cat /etc/generated; stat -c %a /etc/generated"),
        "by the host\n600\n"
    );
    // Writes land in the overlay's upper layer, never in the shared root.
    sh(
        &vm,
        "echo guest > /marker && echo new > /newfile && cat /marker /newfile",
    );
    assert_eq!(
        std::fs::read_to_string(root.join("marker")).unwrap(),
        "lower layer\n"
    );
    assert!(!root.join("newfile").exists());
    assert!(!root.join("etc/generated").exists());
    // The initramfs (and its agent) is no longer visible.
    assert_ne!(run(&vm, &["ls", "/init"]).status, 0);
    // The data share is writable and reaches the host.
    sh(&vm, "echo from guest > /data/out");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "from guest\n"
    );
    let mounts = sh(&vm, "grep -E ' / | /data ' /proc/mounts");
    assert!(mounts.contains("overlay / overlay rw"), "{mounts}");
    assert!(
        mounts.contains("data /data virtiofs rw,nosuid,nodev,noexec"),
        "{mounts}"
    );

    assert!(vm.shutdown(Duration::from_secs(1)).unwrap().success());
}
