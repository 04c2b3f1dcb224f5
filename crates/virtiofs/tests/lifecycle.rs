//! How a server ends: stopped before or during a session, or when QEMU
//! dies under load. Nothing of the file system may stay referenced.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use msb_fsserver::policy::PolicyFs;
use msb_fsserver::{HostPerms, IdMap, ServeConfig, StatVirt, open_root};
use msb_virtiofs::{Server, policy_fs};

fn fs(dir: &std::path::Path) -> Arc<PolicyFs> {
    let cfg = ServeConfig {
        readonly: false,
        stat_virt: StatVirt::Strict,
        host_perms: HostPerms::Private,
        budget: None,
        owner: (0, 0),
        // SAFETY: geteuid has no preconditions.
        id_map: IdMap::single(unsafe { libc::geteuid() }),
        // SAFETY: getegid has no preconditions.
        gid_map: IdMap::single(unsafe { libc::getegid() }),
    };
    policy_fs(open_root(dir, false).unwrap(), cfg).unwrap()
}

#[test]
fn stop_without_frontend() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs(tmp.path());
    let socket = tmp.path().join("s.sock");
    let server = Server::start(&socket, fs.clone(), 2).unwrap();
    assert!(socket.exists());
    assert!(!server.is_finished());
    let t = Instant::now();
    server.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!socket.exists());
    assert_eq!(Arc::strong_count(&fs), 1);
    // Dropping works the same way.
    drop(Server::start(&socket, fs.clone(), 2).unwrap());
    assert!(!socket.exists());
    assert_eq!(Arc::strong_count(&fs), 1);
}

/// One guest keeps writing to two shares: one server is stopped under
/// load, then QEMU is killed, which ends the other.
#[test]
fn stop_and_kill_under_load() {
    if let Some(why) = common::missing_qemu() {
        eprintln!("skipped: {why}");
        return;
    }
    let kernel = match common::kernel() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("skipped: no guest kernel: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let (fs_a, fs_b) = (fs(&a), fs(&b));
    let shares = [
        common::Share {
            tag: "a".into(),
            socket: tmp.path().join("a.sock"),
        },
        common::Share {
            tag: "b".into(),
            socket: tmp.path().join("b.sock"),
        },
    ];
    let server_a = Server::start(&shares[0].socket, fs_a.clone(), 4).unwrap();
    let server_b = Server::start(&shares[1].socket, fs_b.clone(), 4).unwrap();
    let script = r#"
echo MSB-LOOP
while :; do
  dd if=/dev/zero of=/mnt/a/f bs=64k count=8 2>/dev/null
  dd if=/dev/zero of=/mnt/b/f bs=64k count=8 2>/dev/null
  ls -l /mnt/a /mnt/b >/dev/null 2>&1
done
"#;
    let initrd = tmp.path().join("initrd");
    std::fs::write(
        &initrd,
        common::initramfs(kernel, &["a", "b"], script, |_| {}),
    )
    .unwrap();
    let guest = common::Guest::spawn(common::qemu_command(kernel, &initrd, &shares, 512));
    guest.wait_for("MSB-LOOP", Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!server_a.is_finished() && !server_b.is_finished());

    let t = Instant::now();
    server_a.stop().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        Arc::strong_count(&fs_a),
        1,
        "the stopped server still holds its file system"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server_b.is_finished(),
        "stopping one share ended the other"
    );

    guest.kill();
    let t = Instant::now();
    server_b.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "wait took {:?}",
        t.elapsed()
    );
    assert_eq!(Arc::strong_count(&fs_b), 1);
    assert!(!shares[0].socket.exists() && !shares[1].socket.exists());
    assert!(b.join("f").exists());
}

/// A server whose socket file is gone (its directory removed first) still
/// stops: the wake-up does not go through the path.
#[test]
fn stop_after_the_socket_path_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = fs(tmp.path());
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let server = Server::start(&dir.join("s.sock"), fs.clone(), 2).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let t = Instant::now();
    server.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(Arc::strong_count(&fs), 1);
}
