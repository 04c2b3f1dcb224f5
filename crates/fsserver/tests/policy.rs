//! The policy filesystem called directly (no FUSE): containment, read-only
//! refusals and the strict xattr probe, on real host directories.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use msb_fsserver::filesystem::{Context, Errno, FileSystem, ROOT_NODE, SetAttr};
use msb_fsserver::policy::{Policy, PolicyError, PolicyFs};
use msb_fsserver::{HostPerms, IdMap, StatVirt, open_root};

const CTX: Context = Context { uid: 0, gid: 0 };

fn policy(readonly: bool, stat_virt: StatVirt) -> Policy {
    Policy {
        readonly,
        stat_virt,
        host_perms: HostPerms::Private,
        budget: None,
        owner: (1000, 1000),
        id_map: IdMap::IDENTITY,
        gid_map: IdMap::IDENTITY,
    }
}

fn fs_on(dir: &Path, readonly: bool, stat_virt: StatVirt) -> PolicyFs {
    PolicyFs::new(open_root(dir, false).unwrap(), policy(readonly, stat_virt)).unwrap()
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn names_that_leave_a_directory_are_refused() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("d")).unwrap();
    let fs = fs_on(host.path(), false, StatVirt::Strict);
    for bad in ["", ".", "..", "d/..", "a/b", "/etc"] {
        assert_eq!(
            fs.lookup(&CTX, ROOT_NODE, name(bad)).err(),
            Some(Errno::INVAL),
            "{bad:?}"
        );
        assert_eq!(
            fs.mkdir(&CTX, ROOT_NODE, name(bad), 0o755).err(),
            Some(Errno::INVAL)
        );
    }
    let d = fs.lookup(&CTX, ROOT_NODE, name("d")).unwrap();
    assert_eq!(
        fs.lookup(&CTX, d.node, name("..")).err(),
        Some(Errno::INVAL)
    );
}

#[test]
fn host_symlinks_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    let host = tempfile::tempdir().unwrap();
    symlink(outside.path(), host.path().join("out")).unwrap();
    symlink(outside.path().join("new"), host.path().join("dangling")).unwrap();
    symlink(outside.path().join("secret"), host.path().join("file")).unwrap();
    for mode in [StatVirt::Strict, StatVirt::Relaxed, StatVirt::Off] {
        let fs = fs_on(host.path(), false, mode);
        let out = fs.lookup(&CTX, ROOT_NODE, name("out")).unwrap();
        assert_eq!(out.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        // A symlink is no directory to the server.
        assert_eq!(
            fs.lookup(&CTX, out.node, name("secret")).err(),
            Some(Errno::NOTDIR)
        );
        let file = fs.lookup(&CTX, ROOT_NODE, name("file")).unwrap();
        assert_eq!(
            fs.open(&CTX, file.node, libc::O_RDONLY).err(),
            Some(Errno::LOOP)
        );
        // Creating through a dangling link must not create its target.
        assert!(
            fs.create(&CTX, ROOT_NODE, name("dangling"), 0o644, libc::O_WRONLY)
                .is_err()
        );
        assert!(!outside.path().join("new").exists());
        assert_eq!(
            fs.readlink(file.node).unwrap(),
            outside.path().join("secret").as_os_str().as_encoded_bytes()
        );
    }
}

#[test]
fn root_is_opened_without_following_symlinks() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("real")).unwrap();
    symlink(host.path().join("real"), host.path().join("link")).unwrap();
    assert!(open_root(&host.path().join("link"), false).is_err());
    assert!(open_root(&host.path().join("link/."), false).is_err());
    assert!(open_root(&host.path().join("link"), true).is_ok());
    assert!(open_root(&host.path().join("real"), false).is_ok());
}

#[test]
fn readonly_refuses_every_write_type_operation() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), b"data").unwrap();
    std::fs::create_dir(host.path().join("d")).unwrap();
    let fs = fs_on(host.path(), true, StatVirt::Strict);
    let rofs = Some(Errno::ROFS);
    let f = fs.lookup(&CTX, ROOT_NODE, name("f")).unwrap();
    assert_eq!(
        fs.create(&CTX, ROOT_NODE, name("n"), 0o644, libc::O_WRONLY)
            .err(),
        rofs
    );
    assert_eq!(fs.mkdir(&CTX, ROOT_NODE, name("n"), 0o755).err(), rofs);
    assert_eq!(
        fs.mknod(&CTX, ROOT_NODE, name("n"), libc::S_IFIFO | 0o644, 0)
            .err(),
        rofs
    );
    assert_eq!(
        fs.symlink(&CTX, ROOT_NODE, name("n"), name("f")).err(),
        rofs
    );
    assert_eq!(fs.link(&CTX, f.node, ROOT_NODE, name("n")).err(), rofs);
    assert_eq!(fs.unlink(&CTX, ROOT_NODE, name("f")).err(), rofs);
    assert_eq!(fs.rmdir(&CTX, ROOT_NODE, name("d")).err(), rofs);
    assert_eq!(
        fs.rename(&CTX, ROOT_NODE, name("f"), ROOT_NODE, name("g"), 0)
            .err(),
        rofs
    );
    assert_eq!(fs.open(&CTX, f.node, libc::O_WRONLY).err(), rofs);
    assert_eq!(fs.open(&CTX, f.node, libc::O_RDWR).err(), rofs);
    assert_eq!(
        fs.open(&CTX, f.node, libc::O_RDONLY | libc::O_TRUNC).err(),
        rofs
    );
    for set in [
        SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
        SetAttr {
            uid: Some(5),
            ..SetAttr::default()
        },
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    ] {
        assert_eq!(fs.setattr(&CTX, f.node, None, &set).err(), rofs);
    }
    assert_eq!(
        fs.setxattr(&CTX, f.node, name("user.a"), b"1", 0).err(),
        rofs
    );
    assert_eq!(fs.removexattr(&CTX, f.node, name("user.a")).err(), rofs);
    // Reads work; writes on a read handle are refused too.
    let h = fs.open(&CTX, f.node, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(f.node, h.fh, 0, 100).unwrap(), b"data");
    assert_eq!(fs.write(&CTX, f.node, h.fh, 0, b"x").err(), rofs);
    assert_eq!(fs.fallocate(f.node, h.fh, 0, 4096, 0).err(), rofs);
    assert_eq!(
        fs.copy_file_range(f.node, h.fh, 0, f.node, h.fh, 10, 4)
            .err(),
        rofs
    );
    assert_eq!(std::fs::read(host.path().join("f")).unwrap(), b"data");
    assert!(!host.path().join("n").exists() && !host.path().join("g").exists());
}

#[test]
fn strict_needs_user_xattrs_on_the_root() {
    // procfs takes no user xattrs.
    let root = open_root(Path::new("/proc/self"), true).unwrap();
    match PolicyFs::new(root, policy(false, StatVirt::Strict)) {
        Err(PolicyError::NoXattrs(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("strict accepted a root without user xattrs"),
    }
    let root = open_root(Path::new("/proc/self"), true).unwrap();
    assert!(PolicyFs::new(root, policy(false, StatVirt::Relaxed)).is_ok());
}

#[test]
fn a_corrupt_record_is_an_io_error() {
    let host = tempfile::tempdir().unwrap();
    let f = host.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    rustix::fs::setxattr(
        &f,
        "user.msb.meta",
        b"garbage",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let fs = fs_on(host.path(), false, StatVirt::Strict);
    assert_eq!(fs.lookup(&CTX, ROOT_NODE, name("f")).err(), Some(Errno::IO));
    // off ignores records.
    let fs = fs_on(host.path(), false, StatVirt::Off);
    assert!(fs.lookup(&CTX, ROOT_NODE, name("f")).is_ok());
}

/// Sets the record of the host file `f` as another writer would (another
/// server on the same volume, the host).
fn set_record(f: &Path, uid: u32) {
    let r = msb_fsserver::record::Record {
        uid,
        gid: 0,
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
    };
    rustix::fs::setxattr(
        f,
        "user.msb.meta",
        &r.encode(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

#[test]
fn records_changed_by_another_writer_show_at_once() {
    let host = tempfile::tempdir().unwrap();
    let f = host.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let fs = fs_on(host.path(), false, StatVirt::Strict);
    let uid = |fs: &PolicyFs| {
        let e = fs.lookup(&CTX, ROOT_NODE, name("f")).unwrap();
        fs.forget(e.node, 1);
        e.attr.uid
    };
    // Changed within the second of the last change (not kept), then
    // again once that second is over (kept, then changed under it), each
    // time looked up, forgotten and looked up again as a guest does.
    set_record(&f, 5);
    assert_eq!(uid(&fs), 5);
    set_record(&f, 6);
    assert_eq!(uid(&fs), 6);
    let ctime = std::fs::metadata(&f).unwrap().ctime();
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= ctime as u64 + 1
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(uid(&fs), 6);
    set_record(&f, 7);
    assert_eq!(uid(&fs), 7);
    let e = fs.lookup(&CTX, ROOT_NODE, name("f")).unwrap();
    set_record(&f, 8);
    assert_eq!(fs.getattr(e.node).unwrap().uid, 8);
    // Its removal shows too: the mount's owner again.
    rustix::fs::removexattr(&f, "user.msb.meta").unwrap();
    assert_eq!(fs.getattr(e.node).unwrap().uid, 1000);
}

#[test]
fn client_xattrs_of_every_size_read_back_whole() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), b"x").unwrap();
    let fs = fs_on(host.path(), false, StatVirt::Strict);
    let f = fs.lookup(&CTX, ROOT_NODE, name("f")).unwrap().node;
    // Around the server's first read buffer (256 bytes), and far past it.
    for len in [0usize, 1, 255, 256, 257, 2000] {
        let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let key = format!("user.v{len}");
        fs.setxattr(&CTX, f, name(&key), &value, 0).unwrap();
        assert_eq!(fs.getxattr(f, name(&key)).unwrap(), value, "{len} bytes");
    }
    assert_eq!(fs.getxattr(f, name("user.none")), Err(Errno::NODATA));
}

#[test]
fn a_creator_without_host_ids_creates_nothing() {
    let host = tempfile::tempdir().unwrap();
    let fs = PolicyFs::new(
        open_root(host.path(), false).unwrap(),
        Policy {
            id_map: IdMap::single(1000),
            gid_map: IdMap::single(1000),
            ..policy(false, StatVirt::Off)
        },
    )
    .unwrap();
    // Guest 5 has no host id in a one-id map.
    let five = Context { uid: 5, gid: 5 };
    let perm = Some(Errno::PERM);
    assert_eq!(fs.mkdir(&five, ROOT_NODE, name("d"), 0o755).err(), perm);
    assert_eq!(
        fs.create(&five, ROOT_NODE, name("f"), 0o644, libc::O_WRONLY)
            .err(),
        perm
    );
    assert_eq!(
        fs.symlink(&five, ROOT_NODE, name("l"), name("t")).err(),
        perm
    );
    assert_eq!(
        fs.mknod(&five, ROOT_NODE, name("p"), libc::S_IFIFO | 0o644, 0)
            .err(),
        perm
    );
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    // Guest root is host 1000.
    let e = fs.mkdir(&CTX, ROOT_NODE, name("d"), 0o755).unwrap();
    assert_eq!((e.attr.uid, e.attr.gid), (0, 0));
    let md = std::fs::metadata(host.path().join("d")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
}
