//! Real FUSE mounts of tempdirs through the server (needs root and
//! /dev/fuse; skipped with a printed reason otherwise).

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msb_fsserver::{HostPerms, IdMap, ServeConfig, Server, StatVirt, open_root};
use msb_quota::Budget;
use tempfile::TempDir;

const OWNER: (u32, u32) = (4242, 4343);
const MIB: u64 = 1 << 20;

fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is missing");
        return false;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: FUSE mounts need root");
        return false;
    }
    true
}

fn config(stat_virt: StatVirt) -> ServeConfig {
    ServeConfig {
        readonly: false,
        stat_virt,
        host_perms: HostPerms::Private,
        budget: None,
        owner: OWNER,
        id_map: IdMap::IDENTITY,
        gid_map: IdMap::IDENTITY,
    }
}

/// A host directory served on a mount point.
struct Mounted {
    host: TempDir,
    mnt: TempDir,
    server: Option<Server>,
}

impl Mounted {
    fn new(cfg: ServeConfig) -> Self {
        let host = tempfile::tempdir().unwrap();
        Self::on(host, cfg)
    }

    fn on(host: TempDir, cfg: ServeConfig) -> Self {
        let mnt = tempfile::tempdir().unwrap();
        let server = msb_fsserver::mount(host.path(), mnt.path(), cfg).unwrap();
        Mounted {
            host,
            mnt,
            server: Some(server),
        }
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    fn h(&self, rel: &str) -> PathBuf {
        self.host.path().join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.unmount().unwrap();
        }
        assert!(!msb_fsserver::is_served_mount(self.mnt.path()));
    }
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn budget(dir: &Path, limit: u64) -> Arc<Budget> {
    let p = dir.join("usage");
    if !p.exists() {
        Budget::create(&p, 0).unwrap();
    }
    Arc::new(Budget::open(&p, Some(limit)).unwrap())
}

#[test]
fn readonly_server_refuses_writes_even_on_a_writable_mount() {
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), b"data").unwrap();
    std::fs::create_dir(host.path().join("d")).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    // Mount read-write ourselves, so only the server can refuse.
    let fuse = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let data = CString::new(msb_fsserver::mount_data(fuse.as_raw_fd())).unwrap();
    rustix::mount::mount(
        "msb",
        mnt.path(),
        "fuse.msb",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .unwrap();
    let cfg = ServeConfig {
        readonly: true,
        ..config(StatVirt::Strict)
    };
    let wire = cfg.id_map;
    let server =
        msb_fsserver::serve(open_root(host.path(), false).unwrap(), fuse, cfg, wire).unwrap();
    let m = |r: &str| mnt.path().join(r);
    let rofs = Some(libc::EROFS);
    assert_eq!(std::fs::read(m("f")).unwrap(), b"data");
    assert_eq!(errno(File::create(m("new"))), rofs);
    assert_eq!(errno(OpenOptions::new().write(true).open(m("f"))), rofs);
    assert_eq!(
        errno(
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_TRUNC)
                .open(m("f"))
        ),
        rofs
    );
    assert_eq!(errno(std::fs::create_dir(m("nd"))), rofs);
    assert_eq!(errno(symlink("f", m("sl"))), rofs);
    assert_eq!(errno(std::fs::hard_link(m("f"), m("hl"))), rofs);
    assert_eq!(errno(std::fs::remove_file(m("f"))), rofs);
    assert_eq!(errno(std::fs::remove_dir(m("d"))), rofs);
    assert_eq!(errno(std::fs::rename(m("f"), m("g"))), rofs);
    assert_eq!(
        errno(std::fs::set_permissions(
            m("f"),
            std::fs::Permissions::from_mode(0o777)
        )),
        rofs
    );
    // SAFETY: plain libc calls on NUL-terminated paths.
    unsafe {
        assert_eq!(libc::mkfifo(cpath(&m("fifo")).as_ptr(), 0o644), -1);
        assert_eq!(*libc::__errno_location(), libc::EROFS);
        assert_eq!(libc::truncate(cpath(&m("f")).as_ptr(), 0), -1);
        assert_eq!(*libc::__errno_location(), libc::EROFS);
        assert_eq!(libc::chown(cpath(&m("f")).as_ptr(), 1, 1), -1);
        assert_eq!(*libc::__errno_location(), libc::EROFS);
    }
    let set = rustix::fs::setxattr(m("f"), "user.a", b"1", rustix::fs::XattrFlags::empty());
    assert_eq!(set, Err(rustix::io::Errno::ROFS));
    let rm = rustix::fs::removexattr(m("f"), "user.a");
    assert_eq!(rm, Err(rustix::io::Errno::ROFS));
    assert_eq!(std::fs::read(host.path().join("f")).unwrap(), b"data");
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 2);
    server.unmount().unwrap();
    msb_fsserver::unmount_path(mnt.path()).unwrap();
}

#[test]
fn quota_fails_with_enospc_and_writes_nothing_past_the_limit() {
    if !fuse_available() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let limit = MIB;
    let b = budget(state.path(), limit);
    let cfg = ServeConfig {
        budget: Some(b.clone()),
        ..config(StatVirt::Strict)
    };
    let m = Mounted::new(cfg);
    let mut f = File::create(m.m("big")).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0u64;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        assert!(written <= 4 * MIB, "writes never failed");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(f);
    let host_len = std::fs::metadata(m.h("big")).unwrap().len();
    assert_eq!(host_len, written);
    assert!(
        written <= limit && written >= limit - 64 * 1024,
        "{written}"
    );
    let used = msb_quota::scan(open_root(m.host.path(), false).unwrap()).unwrap();
    assert!(
        used <= limit,
        "{used} bytes allocated past the {limit} limit"
    );
    assert!(b.used() <= limit);
    // Extending truncate and fallocate past the limit fail too.
    let f = OpenOptions::new().write(true).open(m.m("big")).unwrap();
    assert_eq!(errno(f.set_len(4 * MIB)), Some(libc::ENOSPC));
    let rc = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 4 * MIB);
    assert_eq!(rc, Err(rustix::io::Errno::NOSPC));
    assert_eq!(std::fs::metadata(m.h("big")).unwrap().len(), written);
    // statfs shows the quota as size and the rest as free.
    let st = rustix::fs::statfs(m.mnt.path()).unwrap();
    assert_eq!(st.f_blocks as u64 * st.f_bsize as u64, limit);
    assert!(st.f_bfree as u64 * st.f_bsize as u64 <= limit - b.used().min(limit) + 4096);
    // Deleting credits the budget.
    drop(f);
    std::fs::remove_file(m.m("big")).unwrap();
    assert!(b.used() < 64 * 1024, "{} bytes still counted", b.used());
}

#[test]
fn concurrent_writers_on_two_mounts_never_overshoot_a_shared_budget() {
    if !fuse_available() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let limit = 4 * MIB;
    let a = Mounted::new(ServeConfig {
        budget: Some(budget(state.path(), limit)),
        ..config(StatVirt::Strict)
    });
    // A second server over the same tree with its own mapping of the counter.
    let mnt_b = tempfile::tempdir().unwrap();
    let b = msb_fsserver::mount(
        a.host.path(),
        mnt_b.path(),
        ServeConfig {
            budget: Some(budget(state.path(), limit)),
            ..config(StatVirt::Strict)
        },
    )
    .unwrap();
    let writer = |mut f: File| {
        std::thread::spawn(move || {
            let chunk = vec![1u8; 128 << 10];
            let mut n = 0u64;
            while let Ok(w) = f.write(&chunk) {
                n += w as u64;
            }
            n
        })
    };
    // Both files exist before either writer can fill the budget.
    let one = File::create(a.m("one")).unwrap();
    let two = File::create(mnt_b.path().join("two")).unwrap();
    let t1 = writer(one);
    let t2 = writer(two);
    let total = t1.join().unwrap() + t2.join().unwrap();
    let used = msb_quota::scan(open_root(a.host.path(), false).unwrap()).unwrap();
    assert!(
        used <= limit,
        "{used} bytes allocated past the {limit} limit"
    );
    assert!(total <= limit && total >= limit - 512 * 1024, "{total}");
    assert!(Budget::peek(&state.path().join("usage")).unwrap() <= limit);
    b.unmount().unwrap();
}

#[test]
fn strict_keeps_guest_metadata_in_the_record() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(config(StatVirt::Strict));
    std::fs::write(m.h("hostfile"), b"h").unwrap();
    // No record: owned by the configured owner.
    let md = std::fs::symlink_metadata(m.m("hostfile")).unwrap();
    assert_eq!((md.uid(), md.gid()), OWNER);
    std::fs::write(m.m("f"), b"x").unwrap();
    std::os::unix::fs::chown(m.m("f"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    let md = std::fs::metadata(m.m("f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o4751)
    );
    let host = std::fs::metadata(m.h("f")).unwrap();
    assert_eq!((host.uid(), host.mode() & 0o7777), (0, 0o600));
    // Symlinks and device nodes are plain host files carrying the record.
    symlink("target/of/link", m.m("sl")).unwrap();
    assert_eq!(
        std::fs::read_link(m.m("sl")).unwrap(),
        Path::new("target/of/link")
    );
    assert!(
        std::fs::symlink_metadata(m.h("sl"))
            .unwrap()
            .file_type()
            .is_file()
    );
    let dev = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        m.m("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o640),
        dev,
    )
    .unwrap();
    let md = std::fs::symlink_metadata(m.m("null")).unwrap();
    assert_eq!(md.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(md.rdev(), dev);
    let host = std::fs::symlink_metadata(m.h("null")).unwrap();
    assert!(host.file_type().is_file() && host.len() == 0);
}

#[test]
fn mirror_applies_rwx_bits_to_host_files() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(ServeConfig {
        host_perms: HostPerms::Mirror,
        ..config(StatVirt::Strict)
    });
    std::fs::write(m.m("f"), b"x").unwrap();
    std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    assert_eq!(std::fs::metadata(m.m("f")).unwrap().mode() & 0o7777, 0o6755);
    // rwx reach the host, never setuid/setgid, with a floor of 0600.
    assert_eq!(std::fs::metadata(m.h("f")).unwrap().mode() & 0o7777, 0o755);
    std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o000)).unwrap();
    assert_eq!(std::fs::metadata(m.h("f")).unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn relaxed_and_off_keep_real_host_symlinks() {
    if !fuse_available() {
        return;
    }
    for mode in [StatVirt::Relaxed, StatVirt::Off] {
        let m = Mounted::new(config(mode));
        symlink("t", m.m("sl")).unwrap();
        assert!(
            std::fs::symlink_metadata(m.h("sl"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

#[test]
fn off_shows_raw_host_metadata_and_refuses_chown_and_devices() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(config(StatVirt::Off));
    std::fs::write(m.h("hostfile"), b"h").unwrap();
    std::os::unix::fs::chown(m.h("hostfile"), Some(77), Some(88)).unwrap();
    let md = std::fs::metadata(m.m("hostfile")).unwrap();
    assert_eq!((md.uid(), md.gid()), (77, 88));
    assert_eq!(
        errno(std::os::unix::fs::chown(m.m("hostfile"), Some(1), None)),
        Some(libc::EPERM)
    );
    let rc = rustix::fs::mknodat(
        rustix::fs::CWD,
        m.m("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(1, 3),
    );
    assert_eq!(rc, Err(rustix::io::Errno::OPNOTSUPP));
    std::fs::set_permissions(m.m("hostfile"), std::fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(
        std::fs::metadata(m.h("hostfile")).unwrap().mode() & 0o777,
        0o604
    );
}

#[test]
fn the_record_is_invisible_to_clients() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(config(StatVirt::Strict));
    std::fs::write(m.m("f"), b"x").unwrap();
    let none = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(m.m("f"), "user.mine", b"v", none).unwrap();
    // The host file has the record.
    assert!(rustix::fs::getxattr(m.h("f"), "user.msb.meta", &mut [0u8; 64][..]).is_ok());
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(m.m("f"), &mut list[..]).unwrap();
    assert_eq!(&list[..n], b"user.mine\0");
    let perm = Err(rustix::io::Errno::PERM);
    let mut buf = [0u8; 64];
    assert_eq!(
        rustix::fs::getxattr(m.m("f"), "user.msb.meta", &mut buf[..]).map(|_| ()),
        perm
    );
    assert_eq!(
        rustix::fs::setxattr(m.m("f"), "user.msb.meta", b"x", none),
        perm
    );
    assert_eq!(
        rustix::fs::setxattr(m.m("f"), "user.msb.other", b"x", none),
        perm
    );
    assert_eq!(rustix::fs::removexattr(m.m("f"), "user.msb.meta"), perm);
    assert_eq!(std::fs::metadata(m.m("f")).unwrap().uid(), 0);
}

#[test]
fn a_corrupt_record_gives_eio_and_the_server_lives_on() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(config(StatVirt::Strict));
    std::fs::write(m.h("bad"), b"x").unwrap();
    std::fs::write(m.h("good"), b"x").unwrap();
    let none = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(m.h("bad"), "user.msb.meta", &[9u8; 20], none).unwrap();
    assert_eq!(errno(std::fs::metadata(m.m("bad"))), Some(libc::EIO));
    assert_eq!(std::fs::read(m.m("good")).unwrap(), b"x");
}

#[test]
fn setuid_is_cleared_when_another_user_writes() {
    if !fuse_available() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // Passthrough (no budget) and server-side writes (metered).
    for b in [None, Some(budget(state.path(), 64 * MIB))] {
        let m = Mounted::new(ServeConfig {
            budget: b,
            ..config(StatVirt::Strict)
        });
        std::fs::write(m.m("f"), b"x").unwrap();
        std::os::unix::fs::chown(m.m("f"), Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o6775)).unwrap();
        std::fs::set_permissions(m.mnt.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let status = Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"])
            .arg(format!("echo more >> {}", m.m("f").display()))
            .status();
        let Ok(status) = status else {
            eprintln!("skipped: setpriv is missing");
            return;
        };
        assert!(status.success());
        assert_eq!(std::fs::read(m.m("f")).unwrap(), b"xmore\n");
        let mode = std::fs::metadata(m.m("f")).unwrap().mode();
        assert_eq!(
            mode & 0o7777,
            0o775,
            "setuid/setgid survived a write: {mode:o}"
        );
        // Truncation by another user clears them too.
        std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o6775)).unwrap();
        let status = Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "truncate",
                "-s",
                "1",
            ])
            .arg(m.m("f"))
            .status()
            .unwrap();
        assert!(status.success());
        let md = std::fs::metadata(m.m("f")).unwrap();
        assert_eq!((md.len(), md.mode() & 0o7777), (1, 0o775));
        // chown clears them even for root.
        std::fs::set_permissions(m.m("f"), std::fs::Permissions::from_mode(0o6775)).unwrap();
        std::os::unix::fs::chown(m.m("f"), Some(1001), None).unwrap();
        assert_eq!(std::fs::metadata(m.m("f")).unwrap().mode() & 0o7777, 0o775);
    }
}

/// Child side of [`server_process`].
fn serve_until_killed(spec: &str) -> ! {
    let (host, mnt) = spec.split_once('\n').unwrap();
    let _server =
        msb_fsserver::mount(Path::new(host), Path::new(mnt), config(StatVirt::Strict)).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Runs the server (strict, no quota) serving `host` on `mnt` in a process
/// of its own: this test binary running only `test`, which must start by
/// calling [`serve_until_killed`] when `MSB_FSSERVER_TEST_CHILD` is set.
/// Returns once `ready` (a name in `host`) shows through the mount.
fn server_process(test: &str, host: &Path, mnt: &Path, ready: &str) -> ServerProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(
            "MSB_FSSERVER_TEST_CHILD",
            format!("{}\n{}", host.display(), mnt.display()),
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mnt.join(ready).exists() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server process never mounted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ServerProcess(child)
}

/// A server process, killed on drop (a failed test leaves none behind).
struct ServerProcess(std::process::Child);

impl ServerProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_dying_server_gives_enotconn_and_leaves_no_mount() {
    if let Ok(spec) = std::env::var("MSB_FSSERVER_TEST_CHILD") {
        serve_until_killed(&spec);
    }
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), b"x").unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut child = server_process(
        "a_dying_server_gives_enotconn_and_leaves_no_mount",
        host.path(),
        mnt.path(),
        "f",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    // Opened before the death: the kernel must fail what only the server
    // can answer (file data may bypass the server by passthrough).
    let dir = File::open(mnt.path()).unwrap();
    child.kill();
    // Every request must fail promptly, not hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stat = rustix::fs::statat(&dir, "g", rustix::fs::AtFlags::empty())
            .map(|_| ())
            .map_err(|e| Some(e.raw_os_error()));
        let create = rustix::fs::openat(
            &dir,
            "new",
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .map(|_| ())
        .map_err(|e| Some(e.raw_os_error()));
        let _ = tx.send((stat, create));
    });
    let (stat, create) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a request hung");
    for res in [stat, create] {
        assert!(
            matches!(
                res,
                Err(Some(libc::ENOTCONN | libc::ECONNABORTED | libc::EIO))
            ),
            "{res:?}"
        );
    }
    while msb_fsserver::is_served_mount(mnt.path()) {
        assert!(Instant::now() < deadline, "the dead server's mount stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_dir(mnt.path()).unwrap().count(),
        0,
        "the mount point is not back to the empty directory"
    );
}

#[test]
fn many_files_stay_reachable_beyond_the_descriptor_cache() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(config(StatVirt::Strict));
    // More nodes than the cache holds with a small descriptor limit would
    // need descriptors; every one must stay usable.
    let n = 3000;
    for i in 0..n {
        std::fs::write(m.m(&format!("f{i}")), i.to_string()).unwrap();
    }
    for i in 0..n {
        assert_eq!(
            std::fs::read_to_string(m.m(&format!("f{i}"))).unwrap(),
            i.to_string()
        );
    }
    assert_eq!(std::fs::read_dir(m.mnt.path()).unwrap().count(), n);
    let err = std::fs::read(m.m("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Host id of guest id 0 in a rootful sandbox.
const BASE: u32 = IdMap::ROOTFUL.host_base;

/// Runs `script` with `sh -c` as host uid and gid `id` (no supplementary
/// groups), as a sandbox's process reaches a served mount.
fn sh_as(id: u32, script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(id)
        .gid(id)
        .output()
        .unwrap()
}

/// Every object below `root` (root included) owned by host uid or gid 0.
fn owned_by_host_root(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.uid() == 0 || md.gid() == 0 {
            found.push(p.clone());
        }
        if md.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

fn ids_of(p: &Path) -> (u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.uid(), md.gid())
}

#[test]
fn off_gives_new_objects_the_callers_host_ids_and_hides_unmapped_owners() {
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("rootfile"), b"r").unwrap();
    std::fs::set_permissions(
        host.path().join("rootfile"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::fs::write(host.path().join("seven"), b"7").unwrap();
    std::os::unix::fs::chown(host.path().join("seven"), Some(BASE + 7), Some(BASE + 8)).unwrap();
    // The host root owns the served root: an unmapped owner; open it up.
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let m = Mounted::on(
        host,
        ServeConfig {
            id_map: IdMap::ROOTFUL,
            gid_map: IdMap::ROOTFUL,
            ..config(StatVirt::Off)
        },
    );
    let out = sh_as(
        BASE + 5,
        &format!(
            "cd {} && echo x > f && mkdir d && echo y > d/g && ln -s f l && mkfifo p && chmod 4755 f",
            m.mnt.path().display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    for name in ["f", "d", "d/g", "l", "p"] {
        assert_eq!(ids_of(&m.h(name)), (BASE + 5, BASE + 5), "{name} on disk");
        assert_eq!(ids_of(&m.m(name)), (BASE + 5, BASE + 5), "{name} served");
    }
    assert_eq!(std::fs::metadata(m.h("f")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(ids_of(&m.m("seven")), (BASE + 7, BASE + 8));
    // Host root's file has no guest owner: shown as the host overflow id,
    // which no sandbox maps, so even the guest's own 65534 gets only the
    // "other" bits.
    assert_eq!(ids_of(&m.m("rootfile")), (65534, 65534));
    let out = sh_as(
        BASE + 65534,
        &format!("chmod 777 {}", m.m("rootfile").display()),
    );
    assert!(!out.status.success(), "chmod by a non-owner: {out:?}");
    assert_eq!(
        std::fs::metadata(m.h("rootfile")).unwrap().mode() & 0o7777,
        0o666
    );
    let found = owned_by_host_root(m.host.path());
    let expected = [m.host.path().to_path_buf(), m.h("rootfile")];
    assert_eq!(found, expected, "owned by host root");
}

fn record_of(p: &Path) -> msb_fsserver::record::Record {
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(p, "user.msb.meta", &mut buf[..]).unwrap();
    msb_fsserver::record::Record::decode(&buf[..n]).unwrap()
}

#[test]
fn strict_records_guest_ids_and_serves_them_as_mapped_host_ids() {
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("hostfile"), b"h").unwrap();
    std::fs::write(host.path().join("unmapped"), b"u").unwrap();
    let record = msb_fsserver::record::Record {
        uid: 70000,
        gid: 3,
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
    };
    rustix::fs::setxattr(
        host.path().join("unmapped"),
        "user.msb.meta",
        &record.encode(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let m = Mounted::on(
        host,
        ServeConfig {
            id_map: IdMap::ROOTFUL,
            gid_map: IdMap::ROOTFUL,
            owner: (0, 0),
            ..config(StatVirt::Strict)
        },
    );
    // Without a record: guest root's.
    assert_eq!(ids_of(m.mnt.path()), (BASE, BASE));
    assert_eq!(ids_of(&m.m("hostfile")), (BASE, BASE));
    let out = sh_as(
        BASE + 5,
        &format!(
            "cd {} && echo x > f && mkdir d && echo y > d/g && ln -s f l && mkfifo p",
            m.mnt.path().display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    for name in ["f", "d", "d/g", "l", "p"] {
        let r = record_of(&m.h(name));
        assert_eq!((r.uid, r.gid), (5, 5), "{name} record");
        assert_eq!(ids_of(&m.m(name)), (BASE + 5, BASE + 5), "{name} served");
        // On disk it belongs to guest root's host ids.
        assert_eq!(ids_of(&m.h(name)), (BASE, BASE), "{name} on disk");
    }
    // A host chown through the mount is recorded as the guest id.
    std::os::unix::fs::chown(m.m("f"), Some(BASE + 9), Some(BASE + 10)).unwrap();
    let r = record_of(&m.h("f"));
    assert_eq!((r.uid, r.gid), (9, 10));
    assert_eq!(ids_of(&m.m("f")), (BASE + 9, BASE + 10));
    // Host ids outside the map cannot be given.
    assert_eq!(
        errno(std::os::unix::fs::chown(m.m("f"), Some(1000), None)),
        Some(libc::EINVAL)
    );
    // A recorded guest id outside the map is shown as the host overflow id.
    assert_eq!(ids_of(&m.m("unmapped")), (65534, BASE + 3));
    let mut found = owned_by_host_root(m.host.path());
    found.retain(|p| !p.ends_with("hostfile") && !p.ends_with("unmapped"));
    assert_eq!(found, [m.host.path()], "owned by host root");
}

/// Runs `script` with `sh -c` as root of a new user namespace mapping ids
/// 0..65536 onto host ids BASE.. (a rootful sandbox's credentials; the
/// mount namespace is shared). Gives stdout, or panics with the output.
fn sh_in_sandbox_userns(script: &str) -> String {
    use rustix::pipe::{PipeFlags, pipe_with};
    let (pid_r, pid_w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    let (go_r, go_w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    // The child waits in its new namespace until the maps are written.
    let mapper = std::thread::spawn(move || {
        let mut pid = [0u8; 4];
        if rustix::io::read(&pid_r, &mut pid) != Ok(4) {
            return;
        }
        let pid = i32::from_ne_bytes(pid);
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), IdMap::ROOTFUL.proc_line()).unwrap();
        }
        rustix::io::write(&go_w, b"g").unwrap();
    });
    let (pid_w_raw, go_r_raw) = (pid_w.as_raw_fd(), go_r.as_raw_fd());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    // SAFETY: runs in the forked child before exec and only makes plain
    // system calls on descriptors the parent keeps open until the child
    // has exec'd; nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return fail();
            }
            let pid = libc::getpid().to_ne_bytes();
            let mut go = 0u8;
            if libc::write(pid_w_raw, pid.as_ptr().cast(), 4) != 4
                || libc::read(go_r_raw, (&raw mut go).cast(), 1) != 1
                || libc::setresgid(0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresuid(0, 0, 0) != 0
            {
                return fail();
            }
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    drop((pid_w, go_r));
    mapper.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_sandbox_user_namespace_sees_its_own_ids() {
    if !fuse_available() {
        return;
    }
    let strict = Mounted::new(ServeConfig {
        id_map: IdMap::ROOTFUL,
        gid_map: IdMap::ROOTFUL,
        owner: (0, 0),
        ..config(StatVirt::Strict)
    });
    std::fs::write(strict.h("hostfile"), b"h").unwrap();
    let out = sh_in_sandbox_userns(&format!(
        "cd {} && id -u && stat -c '%u %g' . hostfile && touch f && chown 5:6 f && \
         stat -c '%u %g' f && mkdir d && chown 7 d && stat -c %u d",
        strict.mnt.path().display()
    ));
    assert_eq!(out, "0\n0 0\n0 0\n5 6\n7\n");
    let r = record_of(&strict.h("f"));
    assert_eq!((r.uid, r.gid), (5, 6));
    assert_eq!(ids_of(&strict.h("f")), (BASE, BASE));

    let off = Mounted::new(ServeConfig {
        id_map: IdMap::ROOTFUL,
        gid_map: IdMap::ROOTFUL,
        ..config(StatVirt::Off)
    });
    std::fs::write(off.h("rootfile"), b"r").unwrap();
    std::os::unix::fs::chown(off.host.path(), Some(BASE), Some(BASE)).unwrap();
    let out = sh_in_sandbox_userns(&format!(
        "cd {} && stat -c '%u %g' . rootfile && touch f && stat -c '%u %g' f && \
         if chmod 666 rootfile; then echo chmod; fi",
        off.mnt.path().display()
    ));
    // Host root's file is the overflow id's, and guest root has no
    // capability over it.
    assert_eq!(out, "0 0\n65534 65534\n0 0\n");
    assert_eq!(ids_of(&off.h("f")), (BASE, BASE));
    assert_eq!(
        std::fs::metadata(off.h("rootfile")).unwrap().mode() & 0o777,
        0o644
    );
}

/// A loop device over a scratch image, detached on drop.
struct LoopDev {
    path: PathBuf,
    _image: tempfile::NamedTempFile,
}

impl LoopDev {
    fn new(content: &[u8]) -> Option<Self> {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        image.write_all(content).unwrap();
        image.as_file().set_len(1 << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("skipped: losetup failed: {out:?}");
            return None;
        }
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Some(LoopDev {
            path,
            _image: image,
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Plants a metadata record on a host file, as a hostile archive or an
/// earlier sandbox could.
fn plant_record(p: &Path, mode: u32, rdev: u32) {
    let record = msb_fsserver::record::Record {
        uid: 0,
        gid: 0,
        mode,
        rdev,
    };
    rustix::fs::setxattr(
        p,
        "user.msb.meta",
        &record.encode(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// Checks that a served mount honours neither device nodes nor setuid: a
/// record claiming a block device opens nothing, and one claiming a setuid
/// root program does not raise a user's privileges.
fn assert_no_devices_and_no_setuid(mnt: &Path, dev: &LoopDev, canary: &[u8]) {
    let st = rustix::fs::statvfs(mnt).unwrap();
    let flags = rustix::fs::StatVfsMountFlags::NOSUID | rustix::fs::StatVfsMountFlags::NODEV;
    assert!(st.f_flag.contains(flags), "mount flags {:?}", st.f_flag);
    let md = std::fs::symlink_metadata(mnt.join("disk")).unwrap();
    assert_eq!(md.mode() & libc::S_IFMT, libc::S_IFBLK);
    assert_eq!(md.rdev(), std::fs::metadata(&dev.path).unwrap().rdev());
    for write in [false, true] {
        let res = OpenOptions::new()
            .read(true)
            .write(write)
            .open(mnt.join("disk"));
        assert_eq!(errno(res), Some(libc::EACCES), "opened the device");
    }
    let mut head = vec![0u8; canary.len()];
    use std::io::Read;
    File::open(&dev.path)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, canary);
    let out = Command::new(mnt.join("id"))
        .arg("-u")
        .uid(1000)
        .gid(1000)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n", "{out:?}");
}

/// A served tree holding a planted block device of `dev` and a planted
/// setuid root copy of `id`.
fn hostile_tree(dev: &LoopDev) -> TempDir {
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(host.path().join("disk"), b"").unwrap();
    let rdev = std::fs::metadata(&dev.path).unwrap().rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let encoded = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    plant_record(&host.path().join("disk"), libc::S_IFBLK | 0o666, encoded);
    std::fs::copy("/usr/bin/id", host.path().join("id")).unwrap();
    plant_record(&host.path().join("id"), libc::S_IFREG | 0o4755, 0);
    host
}

#[test]
fn host_mounts_honour_no_planted_device_or_setuid_record() {
    if !fuse_available() {
        return;
    }
    let canary = b"msb canary: no I/O reaches this device";
    let Some(dev) = LoopDev::new(canary) else {
        return;
    };
    let m = Mounted::on(hostile_tree(&dev), config(StatVirt::Strict));
    std::fs::set_permissions(m.mnt.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_no_devices_and_no_setuid(m.mnt.path(), &dev, canary);
}

#[test]
fn detached_mounts_honour_no_planted_device_or_setuid_record() {
    if !fuse_available() {
        return;
    }
    let canary = b"msb canary: no I/O reaches this device";
    let Some(dev) = LoopDev::new(canary) else {
        return;
    };
    let host = hostile_tree(&dev);
    let mnt = tempfile::tempdir().unwrap();
    std::fs::set_permissions(mnt.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fuse = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let detached = msb_fsserver::mount_detached(&fuse).unwrap();
    let cfg = config(StatVirt::Strict);
    let wire = cfg.id_map;
    let server =
        msb_fsserver::serve(open_root(host.path(), false).unwrap(), fuse, cfg, wire).unwrap();
    rustix::mount::move_mount(
        &detached,
        "",
        rustix::fs::CWD,
        mnt.path(),
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .unwrap();
    assert_no_devices_and_no_setuid(mnt.path(), &dev, canary);
    rustix::mount::unmount(mnt.path(), rustix::mount::UnmountFlags::DETACH).unwrap();
    server.unmount().unwrap();
}

/// A mount of `host` metered by a fresh counter holding a scan of it, with
/// `room` bytes more as the limit (none: unlimited).
struct Metered {
    m: Mounted,
    budget: Arc<Budget>,
    _state: TempDir,
}

impl Metered {
    fn new(host: TempDir, stat_virt: StatVirt, room: Option<u64>) -> Self {
        let state = tempfile::tempdir().unwrap();
        let counter = state.path().join("usage");
        let used = msb_quota::scan(open_root(host.path(), false).unwrap()).unwrap();
        Budget::create(&counter, used).unwrap();
        let limit = room.map(|r| used + r);
        let budget = Arc::new(Budget::open(&counter, limit).unwrap());
        let m = Mounted::on(
            host,
            ServeConfig {
                budget: Some(budget.clone()),
                ..config(stat_virt)
            },
        );
        Metered {
            m,
            budget,
            _state: state,
        }
    }

    fn scan(&self) -> u64 {
        msb_quota::scan(open_root(self.m.host.path(), false).unwrap()).unwrap()
    }
}

/// Repeats `op` (given a counter) until it fails or `max` times; gives how
/// many succeeded and the error.
fn until_error(
    max: usize,
    mut op: impl FnMut(usize) -> std::io::Result<()>,
) -> (usize, Option<i32>) {
    for i in 0..max {
        if let Err(e) = op(i) {
            return (i, e.raw_os_error());
        }
    }
    (max, None)
}

#[test]
fn long_symlink_targets_count_against_the_quota() {
    if !fuse_available() {
        return;
    }
    let target = "t".repeat(4000);
    for mode in [StatVirt::Strict, StatVirt::Relaxed, StatVirt::Off] {
        let q = Metered::new(tempfile::tempdir().unwrap(), mode, Some(MIB));
        let (made, err) = until_error(1000, |i| symlink(&target, q.m.m(&format!("l{i}"))));
        assert_eq!(err, Some(libc::ENOSPC), "{mode:?}: {made} symlinks made");
        let used = q.scan();
        assert!(used <= MIB, "{mode:?}: {used} bytes held past the limit");
        assert_eq!(q.budget.used(), used, "{mode:?}: counter and scan");
    }
}

#[test]
fn client_xattrs_count_against_the_quota() {
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    for i in 0..400 {
        std::fs::write(host.path().join(format!("f{i}")), b"").unwrap();
    }
    let room = 256 * 1024;
    let q = Metered::new(host, StatVirt::Strict, Some(room));
    let base = q.budget.used();
    let value = vec![b'v'; 3000];
    let none = rustix::fs::XattrFlags::empty();
    let (set, err) = until_error(400, |i| {
        rustix::fs::setxattr(q.m.m(&format!("f{i}")), "user.blob", &value, none).map_err(Into::into)
    });
    assert_eq!(err, Some(libc::ENOSPC), "{set} xattrs of 3000 bytes set");
    let used = q.scan();
    assert!(used <= base + room, "{used} bytes held past the limit");
    assert_eq!(q.budget.used(), used, "counter and scan");
    // Replacing a value charges only the difference; removing credits it.
    rustix::fs::setxattr(q.m.m("f0"), "user.blob", b"short", none).unwrap();
    assert_eq!(q.budget.used(), q.scan());
    for i in 0..set {
        rustix::fs::removexattr(q.m.m(&format!("f{i}")), "user.blob").unwrap();
    }
    assert_eq!(q.budget.used(), q.scan());
    assert_eq!(q.budget.used(), base);
}

#[test]
fn empty_files_and_directories_count_against_the_quota() {
    if !fuse_available() {
        return;
    }
    let q = Metered::new(tempfile::tempdir().unwrap(), StatVirt::Strict, Some(MIB));
    let (files, err) = until_error(2000, |i| File::create(q.m.m(&format!("f{i}"))).map(drop));
    assert_eq!(err, Some(libc::ENOSPC), "{files} empty files made");
    assert!(files < 256, "{files} empty files made");
    assert_eq!(q.budget.used(), q.scan());
    for i in 0..files {
        std::fs::remove_file(q.m.m(&format!("f{i}"))).unwrap();
    }
    let (fifos, err) = until_error(2000, |i| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            q.m.m(&format!("p{i}")),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .map_err(Into::into)
    });
    assert_eq!(err, Some(libc::ENOSPC), "{fifos} FIFOs made");
    assert_eq!(q.budget.used(), q.scan());
    for i in 0..fifos {
        std::fs::remove_file(q.m.m(&format!("p{i}"))).unwrap();
    }
    let (dirs, err) = until_error(2000, |i| std::fs::create_dir(q.m.m(&format!("d{i}"))));
    assert_eq!(err, Some(libc::ENOSPC), "{dirs} directories made");
    assert_eq!(q.budget.used(), q.scan());
    assert!(q.scan() <= MIB);
    for i in 0..dirs {
        std::fs::remove_dir(q.m.m(&format!("d{i}"))).unwrap();
    }
    // Every name costs, hard links too: they would otherwise grow
    // directories for free.
    File::create(q.m.m("one")).unwrap();
    let (links, err) = until_error(2000, |i| {
        std::fs::hard_link(q.m.m("one"), q.m.m(&format!("{}{i}", "l".repeat(200))))
    });
    assert_eq!(err, Some(libc::ENOSPC), "{links} hard links made");
    assert_eq!(q.budget.used(), q.scan());
}

#[test]
fn an_unlinked_open_file_stays_charged_until_its_last_close() {
    if !fuse_available() {
        return;
    }
    let limit = 4 * MIB;
    let q = Metered::new(tempfile::tempdir().unwrap(), StatVirt::Strict, Some(limit));
    let chunk = vec![3u8; 256 << 10];
    let mut f = File::create(q.m.m("f")).unwrap();
    for _ in 0..12 {
        f.write_all(&chunk).unwrap();
    }
    std::fs::remove_file(q.m.m("f")).unwrap();
    // Still held: a second file gets only what is left.
    let mut g = File::create(q.m.m("g")).unwrap();
    let (n, err) = until_error(64, |_| g.write_all(&chunk));
    assert_eq!(err, Some(libc::ENOSPC), "{n} chunks written");
    assert!(n <= 4, "{n} chunks of 256 KiB written next to 3 MiB held");
    // Writing through the unlinked file's handle is charged too.
    assert_eq!(
        f.write_all(&chunk).err().and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC)
    );
    let held = q.budget.used();
    assert!(held <= limit, "{held}");
    drop(f);
    // The kernel sends the release after close returns.
    let freed = eventually(|| Some(held.saturating_sub(q.budget.used())).filter(|&f| f >= 3 * MIB));
    assert!(freed.is_some(), "the space was not credited at close");
    assert_eq!(q.budget.used(), q.scan());
    // The same without a limit: file data moves by passthrough and usage is
    // settled at close.
    let q = Metered::new(tempfile::tempdir().unwrap(), StatVirt::Strict, None);
    let mut f = File::create(q.m.m("f")).unwrap();
    f.write_all(&chunk).unwrap();
    std::fs::remove_file(q.m.m("f")).unwrap();
    f.write_all(&chunk).unwrap();
    drop(f);
    let scan = q.scan();
    assert_eq!(
        eventually(|| Some(q.budget.used()).filter(|&u| u == scan)),
        Some(scan)
    );
}

/// `check` polled until it gives something, for at most ten seconds.
fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_live_counter_agrees_with_a_scan() {
    if !fuse_available() {
        return;
    }
    let none = rustix::fs::XattrFlags::empty();
    for (mode, room) in [
        (StatVirt::Strict, Some(64 * MIB)),
        (StatVirt::Relaxed, Some(64 * MIB)),
        (StatVirt::Off, Some(64 * MIB)),
        // Unlimited: data moves by passthrough, settled at close.
        (StatVirt::Strict, None),
    ] {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("old")).unwrap();
        std::fs::write(host.path().join("old/data"), vec![1u8; 50_000]).unwrap();
        let q = Metered::new(host, mode, room);
        let m = &q.m;
        let agree = |step: &str| {
            let scan = q.scan();
            // Closes are settled when the kernel's release arrives.
            let used = eventually(|| Some(q.budget.used()).filter(|&u| u == scan));
            assert_eq!(used, Some(scan), "{mode:?} {room:?} after {step}");
        };
        std::fs::create_dir_all(m.m("a/b/c")).unwrap();
        std::fs::write(m.m("a/f"), vec![2u8; 300_000]).unwrap();
        std::fs::write(m.m("a/b/small"), b"s").unwrap();
        agree("writes");
        // Enough long names for the directory to grow several blocks.
        for i in 0..300 {
            File::create(m.m(&format!("a/b/c/{}{i}", "n".repeat(200)))).unwrap();
        }
        agree("many names");
        std::fs::hard_link(m.m("a/f"), m.m("a/b/f2")).unwrap();
        symlink("x".repeat(3000), m.m("a/long")).unwrap();
        symlink("short", m.m("a/short")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.m("a/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        rustix::fs::setxattr(m.m("a/f"), "user.big", &[7u8; 2000], none).unwrap();
        rustix::fs::setxattr(m.m("a/b"), "user.d", b"v", none).unwrap();
        agree("links and xattrs");
        std::os::unix::fs::chown(m.m("a/b/small"), Some(1), Some(1)).ok();
        OpenOptions::new()
            .write(true)
            .open(m.m("a/f"))
            .unwrap()
            .set_len(10)
            .unwrap();
        std::fs::rename(m.m("a/b/small"), m.m("a/b/f2")).unwrap();
        std::fs::create_dir(m.m("a/empty")).unwrap();
        std::fs::create_dir(m.m("a/gone")).unwrap();
        std::fs::rename(m.m("a/gone"), m.m("a/empty")).unwrap();
        std::fs::remove_file(m.m("old/data")).unwrap();
        agree("truncate and renames over");
        for i in 0..300 {
            std::fs::remove_file(m.m(&format!("a/b/c/{}{i}", "n".repeat(200)))).unwrap();
        }
        rustix::fs::removexattr(m.m("a/f"), "user.big").unwrap();
        agree("removals");
        std::fs::remove_dir_all(m.m("a")).unwrap();
        std::fs::remove_dir_all(m.m("old")).unwrap();
        agree("emptied");
        assert_eq!(q.budget.used(), 0, "{mode:?} {room:?}");
    }
}

/// Every name `dir` lists from where it stands, reading `size` bytes at a
/// time and calling `between` after each read (with how many so far);
/// panics on a name listed twice.
fn list_all(
    dir: &std::os::fd::OwnedFd,
    size: usize,
    mut between: impl FnMut(usize),
) -> HashSet<Vec<u8>> {
    let mut seen = HashSet::new();
    loop {
        let batch = getdents(dir, size);
        if batch.is_empty() {
            return seen;
        }
        for name in batch {
            let shown = String::from_utf8_lossy(&name).into_owned();
            assert!(seen.insert(name), "{shown} listed twice");
        }
        between(seen.len());
    }
}

/// Compares sets of names, reporting only the differences.
fn assert_same_names(got: &HashSet<Vec<u8>>, want: &HashSet<Vec<u8>>) {
    let show = |d: Vec<&Vec<u8>>| {
        d.iter()
            .take(5)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    };
    let missing = show(want.difference(got).collect());
    let extra = show(got.difference(want).collect());
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {} (e.g. {missing:?}), unexpected {} (e.g. {extra:?})",
        want.difference(got).count(),
        got.difference(want).count()
    );
}

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The names one getdents64 call of `size` bytes gives (none at the end).
fn getdents(dir: &std::os::fd::OwnedFd, size: usize) -> Vec<Vec<u8>> {
    let mut buf = vec![std::mem::MaybeUninit::uninit(); size];
    let mut raw = rustix::fs::RawDir::new(dir, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = raw.next() {
        names.push(entry.unwrap().file_name().to_bytes().to_vec());
        if raw.is_buffer_empty() {
            break;
        }
    }
    names
}

fn open_dir(p: &Path) -> std::os::fd::OwnedFd {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// A host directory of `n` empty files with 50-byte names.
fn big_dir(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    std::fs::create_dir(dir).unwrap();
    (0..n)
        .map(|i| {
            let name = format!("entry-{i:06}-{}", "x".repeat(37));
            File::create(dir.join(&name)).unwrap();
            name.into_bytes()
        })
        .collect()
}

#[test]
fn open_directory_handles_take_bounded_server_memory() {
    if let Ok(spec) = std::env::var("MSB_FSSERVER_TEST_CHILD") {
        serve_until_killed(&spec);
    }
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let names = big_dir(&host.path().join("big"), 50_000);
    let mnt = tempfile::tempdir().unwrap();
    let server = server_process(
        "open_directory_handles_take_bounded_server_memory",
        host.path(),
        mnt.path(),
        "big",
    );
    let big = mnt.path().join("big");
    let before = resident(server.0.id());
    let handles: Vec<_> = (0..300).map(|_| open_dir(&big)).collect();
    for h in &handles {
        assert!(!getdents(h, 1024).is_empty());
    }
    let after = resident(server.0.id());
    eprintln!(
        "server resident memory: {} MiB before, {} MiB with 300 handles open",
        before >> 20,
        after >> 20
    );
    // Another one read to the end: every entry once.
    let listed = list_all(&open_dir(&big), 4096, |_| {});
    let mut expected: HashSet<_> = names.into_iter().collect();
    expected.extend([b".".to_vec(), b"..".to_vec()]);
    assert_same_names(&listed, &expected);
    assert!(
        after.saturating_sub(before) < 64 * MIB,
        "300 open handles grew the server by {} MiB",
        (after - before) >> 20
    );
}

#[test]
fn a_listing_shows_unchanged_entries_once_while_the_directory_changes() {
    if !fuse_available() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let names = big_dir(&host.path().join("d"), 5000);
    let m = Mounted::on(host, config(StatVirt::Strict));
    let d = m.m("d");
    let removed: HashSet<_> = names[..500].iter().chain(&names[4500..]).cloned().collect();
    let added: HashSet<_> = (0..1000)
        .map(|i| format!("new-{i}-{}", "y".repeat(40)).into_bytes())
        .collect();
    let mut changed = false;
    // Small reads: many requests, the changes land in the middle.
    let listed = list_all(&open_dir(&d), 1024, |n| {
        if n >= 1000 && !changed {
            changed = true;
            for name in &added {
                File::create(d.join(OsStr::from_bytes(name))).unwrap();
            }
            for name in &removed {
                std::fs::remove_file(d.join(OsStr::from_bytes(name))).unwrap();
            }
        }
    });
    assert!(changed);
    let unchanged: HashSet<_> = names
        .iter()
        .filter(|n| !removed.contains(*n))
        .cloned()
        .chain([b".".to_vec(), b"..".to_vec()])
        .collect();
    let got_unchanged: HashSet<_> = listed
        .iter()
        .filter(|n| !removed.contains(*n) && !added.contains(*n))
        .cloned()
        .collect();
    assert_same_names(&got_unchanged, &unchanged);
    // Afterwards a listing is exact.
    let mut now: HashSet<_> = unchanged.union(&added).cloned().collect();
    now.extend([b".".to_vec(), b"..".to_vec()]);
    assert_same_names(&list_all(&open_dir(&d), 4096, |_| {}), &now);
}
