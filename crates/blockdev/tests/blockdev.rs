//! Real loop devices, real images (mke2fs, qemu-img), real mounts.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use msb_blockdev::{DaemonUser, DiskView, LoopDevice, detect_fstype, mount_detached};
use msb_spec::DiskFormat;
use rustix::fs::{Mode, OFlags};
use rustix::mount::MountAttrFlags;

/// The ids qemu-storage-daemon runs as here: below every range msb leases
/// (msb itself gives each daemon a leased range's first id), so no sandbox
/// has them.
const USER: Option<DaemonUser> = Some(DaemonUser {
    uid: 0x67FE_0000,
    gid: 0x67FE_0000,
});

fn can_loop() -> bool {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipped: needs root and /dev/loop-control");
        return false;
    }
    true
}

fn can_qemu() -> bool {
    let ok = Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: needs qemu-storage-daemon (qemu-utils) and /dev/fuse");
    }
    ok
}

/// An ext4 image holding `hello.txt`, made by mke2fs from a directory.
fn ext4_image(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from ext4\n").unwrap();
    let img = dir.join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    img
}

fn convert(raw: &Path, format: &str) -> PathBuf {
    let out_path = raw.with_extension(format);
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format])
        .arg(raw)
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out_path
}

/// The file a loop device is attached to, if it is. Tests compare it
/// rather than ask "attached at all": a test running alongside may reuse
/// the device number as soon as it is free.
fn backing(dev: &Path) -> Option<String> {
    let name = dev.file_name().unwrap().to_str().unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Whether `dev` stops backing `was` within a few seconds. The kernel lets go
/// of a detached mount, and so of its loop device, asynchronously (deferred
/// work after the last descriptor closes), so "detached" is waited for.
fn left_image(dev: &Path, was: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backing(dev).as_deref() == Some(was) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

fn read_at_root(root: impl AsFd, name: &str) -> String {
    let fd =
        rustix::fs::openat(root, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    std::io::read_to_string(std::fs::File::from(fd)).unwrap()
}

fn write_at_root(root: impl AsFd, name: &str, data: &str) -> std::io::Result<()> {
    let fd = rustix::fs::openat(
        root,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    std::fs::File::from(fd).write_all(data.as_bytes())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn raw_image_loop_detect_and_detached_mount() {
    if !can_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = ext4_image(dir.path());
    let (dev_path, was);
    {
        let dev = LoopDevice::attach_path(&img, false).unwrap();
        dev_path = dev.path().to_path_buf();
        was = backing(&dev_path).expect("attached");
        assert_eq!(detect_fstype(dev.path()).unwrap(), "ext4");
        let m = mount_detached(dev.path(), "ext4", false, MountAttrFlags::empty()).unwrap();
        assert_eq!(read_at_root(&m, "hello.txt"), "hello from ext4\n");
        write_at_root(&m, "new.txt", "written").unwrap();
        // Detached: the mount is in no mount table.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(dev_path.to_str().unwrap()),
            "{mountinfo}"
        );
        drop(m);
    }
    // Autoclear detached the device once the mount and our descriptor went.
    assert!(
        left_image(&dev_path, &was),
        "{} still attached",
        dev_path.display()
    );
    // The write reached the image.
    let dev = LoopDevice::attach_path(&img, true).unwrap();
    let m = mount_detached(dev.path(), "ext4", true, MountAttrFlags::empty()).unwrap();
    assert_eq!(read_at_root(&m, "new.txt"), "written");
}

#[test]
fn readonly_view_refuses_writes() {
    if !can_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = ext4_image(dir.path());
    let before = std::fs::read(&img).unwrap();
    let view = DiskView::open(&img, DiskFormat::Raw, None, true, None).unwrap();
    assert_eq!(view.fstype(), "ext4");
    assert_eq!(view.daemon_pid(), None);
    let m = view.mount_detached(MountAttrFlags::empty()).unwrap();
    assert_eq!(read_at_root(&m, "hello.txt"), "hello from ext4\n");
    let err = write_at_root(&m, "x", "y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    drop(m);
    drop(view);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "read-only image changed"
    );
}

#[test]
fn qcow2_and_vmdk_views() {
    if !can_loop() || !can_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = ext4_image(dir.path());
    for (fmt, format) in [("qcow2", DiskFormat::Qcow2), ("vmdk", DiskFormat::Vmdk)] {
        let img = convert(&raw, fmt);
        let (pid, dev_path, was) = {
            let view = DiskView::open(&img, format, None, false, USER).unwrap();
            assert_eq!(view.fstype(), "ext4", "{fmt}");
            let pid = view.daemon_pid().expect("a daemon serves the view");
            let m = view.mount_detached(MountAttrFlags::empty()).unwrap();
            assert_eq!(read_at_root(&m, "hello.txt"), "hello from ext4\n");
            write_at_root(&m, "via.txt", fmt).unwrap();
            // The daemon's FUSE mount is private to it.
            let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!host.contains("msb-view"), "{host}");
            drop(m);
            let was = backing(view.device()).expect("attached");
            (pid, view.device().to_path_buf(), was)
        };
        assert!(!pid_alive(pid), "qemu-storage-daemon {pid} left running");
        assert!(
            left_image(&dev_path, &was),
            "{} left attached",
            dev_path.display()
        );
        // The write went into the image file.
        let view = DiskView::open(&img, format, Some("ext4"), true, USER).unwrap();
        let m = view.mount_detached(MountAttrFlags::empty()).unwrap();
        assert_eq!(read_at_root(&m, "via.txt"), fmt);
    }
}

#[test]
fn bad_images_fail_clearly() {
    if !can_loop() || !can_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let not_qcow = dir.path().join("fake.qcow2");
    std::fs::write(&not_qcow, vec![0u8; 1 << 20]).unwrap();
    // Refused by its header before any QEMU reads it.
    let err = DiskView::open(&not_qcow, DiskFormat::Qcow2, None, false, USER).unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("refusing disk image"), "{msg}");
    assert!(msg.contains("not a qcow2 image"), "{msg}");
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let msg = DiskView::open(&blank, DiskFormat::Raw, None, false, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("blank.raw holds no filesystem"), "{msg}");
    let missing = DiskView::open(
        &dir.path().join("nope.raw"),
        DiskFormat::Raw,
        None,
        false,
        None,
    );
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("cannot open disk image")
    );
}

/// The fields of `/proc/PID/status` named `name`.
fn status_field(status: &str, name: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_daemon_runs_unprivileged() {
    if !can_loop() || !can_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = convert(&ext4_image(dir.path()), "qcow2");
    let user = USER.unwrap();
    let view = DiskView::open(&img, DiskFormat::Qcow2, None, false, USER).unwrap();
    let pid = view.daemon_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = user.uid.to_string();
    let gid = user.gid.to_string();
    assert_eq!(status_field(&status, "Uid:"), [uid.as_str(); 4], "{status}");
    assert_eq!(status_field(&status, "Gid:"), [gid.as_str(); 4], "{status}");
    assert!(status_field(&status, "Groups:").is_empty(), "{status}");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, caps),
            ["0000000000000000"],
            "{status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), ["1"], "{status}");
    assert_eq!(status_field(&status, "Seccomp:"), ["2"], "{status}");
    // It serves the view all the same.
    let m = view.mount_detached(MountAttrFlags::empty()).unwrap();
    assert_eq!(read_at_root(&m, "hello.txt"), "hello from ext4\n");
    write_at_root(&m, "w.txt", "w").unwrap();
}

/// The qcow2 header fields from the incompatible features to the autoclear
/// ones (offsets 72..96).
const FEATURES: std::ops::Range<usize> = 72..96;

/// A qcow2 image that passes the self-containment check as written, and the
/// feature bits that make it read its data from `secret` (a raw external
/// data file) instead: what a writer racing msb flips in after the check.
fn flippable_qcow2(dir: &Path, secret: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    // A data file name of the secret's length, replaced by the secret's.
    let decoy = secret.with_file_name("X".repeat(secret.file_name().unwrap().len()));
    let img = dir.join("flip.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file={},data_file_raw=on", decoy.display()))
        .arg(&img)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut bytes = std::fs::read(&img).unwrap();
    let (from, to) = (
        decoy.as_os_str().as_encoded_bytes(),
        secret.as_os_str().as_encoded_bytes(),
    );
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the data file extension");
    bytes[at..at + to.len()].copy_from_slice(to);
    let hostile = bytes[FEATURES].to_vec();
    let mut clean = hostile.clone();
    clean.fill(0);
    bytes[FEATURES].copy_from_slice(&clean);
    std::fs::write(&img, &bytes).unwrap();
    (img, clean, hostile)
}

#[test]
fn a_header_changed_after_the_check_reaches_no_root_only_file() {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    if !can_loop() || !can_qemu() {
        return;
    }
    // Not in /tmp, which an older msb hid from the daemon: an attacker
    // names files anywhere.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A host file only root may read, in a directory anyone may search.
    let secret = dir.path().join("secret");
    const MARK: &[u8] = b"ROOT-ONLY-SECRET";
    std::fs::write(&secret, MARK.repeat((1 << 20) / MARK.len())).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (img, clean, hostile) = flippable_qcow2(dir.path(), &secret);
    // The header as the check reads it and as the daemon does differ
    // whenever the writer flips in between.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (img, stop) = (img.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let h = if n.is_multiple_of(2) {
                    &hostile
                } else {
                    &clean
                };
                f.write_all_at(h, FEATURES.start as u64).unwrap();
                n = n.wrapping_add(1);
                std::thread::sleep(std::time::Duration::from_micros(
                    500 + u64::from(n.wrapping_mul(2_654_435_761) % 3000),
                ));
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut raced, mut leaked, mut tries) = (0, 0, 0);
    while raced < 3 && std::time::Instant::now() < deadline {
        tries += 1;
        match DiskView::open(&img, DiskFormat::Qcow2, Some("ext4"), true, USER) {
            Ok(view) => {
                let mut head = vec![0u8; 64 << 10];
                std::fs::File::open(view.device())
                    .unwrap()
                    .read_exact_at(&mut head, 0)
                    .unwrap();
                if head.windows(MARK.len()).any(|w| w == MARK) {
                    leaked += 1;
                    raced += 1;
                }
            }
            // The check saw the flipped header.
            Err(msb_blockdev::ViewError::Image(..)) => {}
            // The daemon did, and was refused the file.
            Err(e @ msb_blockdev::ViewError::Daemon(_)) => {
                let msg = format!("{:?}", e);
                assert!(msg.contains("Permission denied"), "{msg}");
                eprintln!("{msg}");
                raced += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("{tries} opens, {raced} with the flipped header read by the daemon");
    assert_eq!(leaked, 0, "the view showed the root-only file");
    assert!(
        raced > 0,
        "the daemon never read the flipped header within 60 s"
    );
}
