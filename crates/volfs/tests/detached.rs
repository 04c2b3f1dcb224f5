//! A root the caller opened itself: the root of a detached mount (as used
//! for a disk volume's filesystem), whose descriptor is `O_PATH`.

use msb_volfs::{FileKind, VolumeFs, archive};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsmount, fsopen};

#[test]
fn detached_mount_root() {
    let fsfd = match fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("skipping: cannot create a detached tmpfs here ({e}); needs root");
            return;
        }
    };
    fsconfig_create(&fsfd).unwrap();
    let mnt = fsmount(
        &fsfd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .unwrap();
    let fs = VolumeFs::from_root_fd(mnt, "tmpfs (detached)".into()).unwrap();
    fs.mkdir("a/b").unwrap();
    fs.write("a/b/f", "in tmpfs").unwrap();
    assert_eq!(fs.read("a/b/f").unwrap(), b"in tmpfs");
    assert_eq!(fs.list("").unwrap()[0].kind(), FileKind::Dir);
    assert_eq!(fs.stat("").unwrap().kind(), FileKind::Dir);
    fs.symlink("/etc", "etc").unwrap();
    assert!(fs.read("etc/passwd").unwrap_err().is_path_escape());
    assert!(fs.read("../../etc/passwd").unwrap_err().is_path_escape());

    let mut tar = Vec::new();
    archive::export(&fs, &mut tar, &mut |_| {}).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let out = VolumeFs::open(dst.path()).unwrap();
    archive::import(&out, tar.as_slice(), &mut |_| {}).unwrap();
    assert_eq!(out.read("a/b/f").unwrap(), b"in tmpfs");
    assert_eq!(out.read_link("etc").unwrap().to_str(), Some("/etc"));

    let ro = fs.read_only();
    assert!(matches!(
        ro.write("x", "y").unwrap_err(),
        msb_volfs::FsError::ReadOnly { .. }
    ));
    let e = VolumeFs::from_root_fd(
        std::fs::File::open("/proc/self/exe").unwrap().into(),
        "file".into(),
    )
    .unwrap_err();
    assert!(matches!(e, msb_volfs::FsError::OpenRoot { .. }), "{e}");
}
