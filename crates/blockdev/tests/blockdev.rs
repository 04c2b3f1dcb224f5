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
