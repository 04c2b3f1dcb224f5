//! The policy file system served over vhost-user virtio-fs to a real guest
//! kernel under QEMU: one boot runs every check of the mount semantics in
//! the guest, and the host side is checked after it powered off.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use msb_fsserver::{HostPerms, IdMap, ServeConfig, StatVirt, open_root};
use msb_quota::Budget;
use msb_virtiofs::{Server, policy_fs};

use common::Share;

/// Quota of the writable share.
const LIMIT: u64 = 16 << 20;
const SECRET: &str = "host-secret-7f3a";

fn config(readonly: bool, budget: Option<Arc<Budget>>) -> ServeConfig {
    ServeConfig {
        readonly,
        stat_virt: StatVirt::Strict,
        host_perms: HostPerms::Private,
        budget,
        owner: (0, 0),
        // As a rootless VM: guest root is the calling user.
        id_map: IdMap::single(rustix_euid()),
        // SAFETY: getegid has no preconditions.
        gid_map: IdMap::single(unsafe { libc::getegid() }),
    }
}

fn rustix_euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: size query only (no buffer) on NUL-terminated strings.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

const SCRIPT: &str = r#"
cd /mnt/rw
as_user() { su user -s /bin/sh -c "$1"; }

# Round trip of the basic operations (checked again from the host).
echo hello > f
eq write-read hello "$(cat f)"
check mkdir mkdir -p d/e
check rename mv f d/g
echo gone > u
check unlink rm u
fails unlinked "No such file" cat u
check symlink ln -s g d/sl
eq readlink g "$(readlink d/sl)"
eq read-through-symlink hello "$(cat d/sl)"
check hardlink ln d/g hl
eq nlink 2 "$(stat -c %h d/g)"
check chmod chmod 640 d/g
eq chmod-shown 640 "$(stat -c %a d/g)"
check chown chown 1234:5678 d/g
eq chown-shown 1234:5678 "$(stat -c %u:%g d/g)"
check mkfifo mkfifo d/fifo
eq fifo-type "fifo" "$(stat -c %F d/fifo)"
dd if=/dev/urandom of=big bs=64k count=48 2>/dev/null
# The checksum reads the file back from the server, not the page cache.
sync
echo 3 > /proc/sys/vm/drop_caches
echo "MSB-MD5 $(md5sum big | cut -d' ' -f1)"
eq readdir "abs big d dirlink escape hl" "$(ls | tr '\n' ' ' | sed 's/ $//')"
check rmdir rmdir d/e

# Host permissions as the guest kernel enforces them on what the server shows.
echo data > p
chmod 644 p
fails perm-denied "Permission denied" as_user 'echo x > /mnt/rw/p'
mkdir pub
chmod 777 pub
check user-create as_user 'echo mine > /mnt/rw/pub/m'
eq user-owner 1000:1000 "$(stat -c %u:%g pub/m)"
# An unprivileged write or truncation clears setuid, and setgid with group
# execute (the server does, HANDLE_KILLPRIV_V2: in the record), each time
# the mode has them again; setgid without group execute stays, and a
# writer with CAP_FSETID keeps both. A chown clears them whoever does it.
echo s > pub/s
chmod 6777 pub/s
check suid-write as_user 'echo x >> /mnt/rw/pub/s'
eq suid-cleared 777 "$(stat -c %a pub/s)"
chmod 4777 pub/s
check suid-write-again as_user 'echo y >> /mnt/rw/pub/s'
eq suid-cleared-again 777 "$(stat -c %a pub/s)"
chmod 2767 pub/s
check sgid-nox-write as_user 'echo z >> /mnt/rw/pub/s'
eq sgid-nox-kept 2767 "$(stat -c %a pub/s)"
chmod 6777 pub/s
check suid-trunc as_user ': > /mnt/rw/pub/s'
eq suid-trunc-cleared 777 "$(stat -c %a pub/s)"
chmod 6777 pub/s
echo r >> pub/s
eq suid-root-write 6777 "$(stat -c %a pub/s)"
chown 1000 pub/s
eq suid-chown 777 "$(stat -c %a pub/s)"

# Quota: writes stop at the limit, removal gives the space back. rw2
# serves the same volume from a second server with the same budget file
# (as a VM and a namespace sandbox sharing a volume): one limit for both.
fails quota-enospc "No space left" dd if=/dev/zero of=fill bs=1M count=32
fails quota-shared "No space left" dd if=/dev/zero of=/mnt/rw2/other bs=1M count=2
rm -f fill /mnt/rw2/other
check quota-freed dd if=/dev/zero of=/mnt/rw2/fill2 bs=1M count=8
rm -f /mnt/rw2/fill2
eq statfs-size 16384 "$(df -k /mnt/rw | tail -1 | awk '{print $2}')"

# A remount starts a new session on the same server (after FUSE_DESTROY).
cd /
umount /mnt/rw && mount -t virtiofs rw /mnt/rw
eq remount hello "$(cat /mnt/rw/d/g)"
cd /mnt/rw

# Read-only share: the server refuses with EROFS (the guest mount is rw).
eq ro-read "ro data" "$(cat /mnt/ro/existing)"
fails ro-create "Read-only file system" touch /mnt/ro/new
fails ro-write "Read-only file system" sh -c 'echo x >> /mnt/ro/existing'
fails ro-mkdir "Read-only file system" mkdir /mnt/ro/d
fails ro-chmod "Read-only file system" chmod 600 /mnt/ro/existing
fails ro-unlink "Read-only file system" rm /mnt/ro/existing

# Hostile: host symlinks planted in the share and '..' lead nowhere on the
# host (the guest resolves every path in its own tree).
out="$(cat /mnt/rw/escape /mnt/rw/abs /mnt/rw/dirlink/secret /mnt/rw/../secret 2>&1; ls -a /mnt/rw/.. /mnt/rw/dirlink/ 2>&1)"
case "$out" in *host-secret*) bad hostile-read "$out" ;; *) ok hostile-read ;; esac
eq hostile-dotdot "ro rw rw2" "$(ls /mnt/rw/.. | tr '\n' ' ' | sed 's/ $//')"
"#;

#[test]
fn guest_mount_semantics() {
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
    let outer = tmp.path().join("outer");
    let rw = outer.join("rw");
    let ro = tmp.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(outer.join("secret"), SECRET).unwrap();
    std::os::unix::fs::symlink("../secret", rw.join("escape")).unwrap();
    std::os::unix::fs::symlink(outer.join("secret"), rw.join("abs")).unwrap();
    std::os::unix::fs::symlink(&outer, rw.join("dirlink")).unwrap();
    std::fs::write(ro.join("existing"), "ro data").unwrap();

    let counter = tmp.path().join("budget");
    Budget::create(&counter, 0).unwrap();
    let budget = Arc::new(Budget::open(&counter, Some(LIMIT)).unwrap());

    let rw_fs = policy_fs(
        open_root(&rw, false).unwrap(),
        config(false, Some(budget.clone())),
    )
    .unwrap();
    let budget2 = Arc::new(Budget::open(&counter, Some(LIMIT)).unwrap());
    let rw2_fs = policy_fs(open_root(&rw, false).unwrap(), config(false, Some(budget2))).unwrap();
    let ro_fs = policy_fs(open_root(&ro, false).unwrap(), config(true, None)).unwrap();
    let shares = [
        Share {
            tag: "rw".into(),
            socket: tmp.path().join("rw.sock"),
        },
        Share {
            tag: "ro".into(),
            socket: tmp.path().join("ro.sock"),
        },
        Share {
            tag: "rw2".into(),
            socket: tmp.path().join("rw2.sock"),
        },
    ];
    let rw_server = Server::start(&shares[0].socket, rw_fs, 4).unwrap();
    let ro_server = Server::start(&shares[1].socket, ro_fs, 2).unwrap();
    let rw2_server = Server::start(&shares[2].socket, rw2_fs, 2).unwrap();

    let initrd = tmp.path().join("initrd");
    std::fs::write(
        &initrd,
        common::initramfs(kernel, &["rw", "ro", "rw2"], SCRIPT, |_| {}),
    )
    .unwrap();
    let console = common::run(
        common::qemu_command(kernel, &initrd, &shares, 512),
        Duration::from_secs(120),
    )
    .unwrap();
    // QEMU is gone: both sessions end by themselves.
    rw_server.wait().unwrap();
    ro_server.wait().unwrap();
    rw2_server.wait().unwrap();

    let (ok, failed) = common::results(&console);
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\n{console}"
    );
    eprintln!("{} guest checks passed: {}", ok.len(), ok.join(" "));
    for name in [
        "write-read",
        "rename",
        "symlink",
        "chown-shown",
        "perm-denied",
        "suid-cleared",
        "suid-cleared-again",
        "sgid-nox-kept",
        "suid-trunc-cleared",
        "suid-root-write",
        "suid-chown",
        "quota-enospc",
        "quota-shared",
        "quota-freed",
        "ro-create",
        "ro-write",
        "hostile-read",
        "hostile-dotdot",
        "remount",
    ] {
        assert!(
            ok.iter().any(|n| n == name),
            "check {name} did not run\n{console}"
        );
    }
    assert!(!console.contains(SECRET), "the guest read the host secret");

    // The host side of what the guest did.
    let g = rw.join("d/g");
    assert_eq!(std::fs::read_to_string(&g).unwrap(), "hello\n");
    assert!(!rw.join("f").exists() && !rw.join("u").exists());
    assert!(!rw.join("d/e").exists());
    let meta = std::fs::metadata(&g).unwrap();
    // Stat virtualization: the guest's owner and mode live in the record;
    // the host file stays private and the caller's.
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), rustix_euid());
    assert_eq!(meta.nlink(), 2);
    assert!(has_xattr(&g, "user.msb.meta"));
    // strict: guest symlinks and FIFOs are plain host files.
    assert!(
        std::fs::symlink_metadata(rw.join("d/sl"))
            .unwrap()
            .is_file()
    );
    assert!(
        std::fs::symlink_metadata(rw.join("d/fifo"))
            .unwrap()
            .is_file()
    );
    let suid = std::fs::metadata(rw.join("pub/s")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7000, 0);
    let md5 = console
        .lines()
        .find_map(|l| l.strip_prefix("MSB-MD5 "))
        .expect("the guest printed the checksum")
        .trim();
    let host = std::process::Command::new("md5sum")
        .arg(rw.join("big"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&host.stdout).starts_with(md5));
    assert!(!rw.join("fill").exists());
    assert!(budget.used() <= LIMIT);
    assert!(budget.used() >= 48 * 64 * 1024, "usage {}", budget.used());
    // Nothing reached the read-only tree.
    let names: Vec<_> = std::fs::read_dir(&ro).unwrap().flatten().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(
        std::fs::read_to_string(ro.join("existing")).unwrap(),
        "ro data"
    );
}
