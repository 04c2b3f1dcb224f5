//! The namespace backend for real: real namespaces, kernel mounts, loop
//! devices, qemu views and the store. Needs root (skips with a reason
//! otherwise).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use msb_runtime::{
    InitProgram, NamespaceBackend, RunError, SandboxSpec, SandboxStdio, Security, prepare,
};
use msb_spec::{
    DiskFormat, DiskOptions, GuestPath, Mount, MountOptions, MountTable, NamedMode,
    NamedVolumeOptions, TmpfsOptions, VolumeConfig, VolumeKind, VolumeName,
};
use msb_store::{Store, StoreError};

fn root() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: namespace sandboxes need root");
        return false;
    }
    true
}

struct Env {
    _home: tempfile::TempDir,
    store: Store,
    backend: NamespaceBackend,
}

fn env() -> Env {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    Env {
        _home: home,
        store,
        backend: NamespaceBackend::new(InitProgram {
            program: env!("CARGO_BIN_EXE_msb-sandbox-init").into(),
            args: Vec::new(),
        }),
    }
}

/// A host directory the sandbox's root owns (it is host uid
/// `IdMap::ROOTFUL.root()`, which may not write to a directory of host
/// root's).
fn sandbox_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = msb_spec::IdMap::ROOTFUL.root();
    std::os::unix::fs::chown(dir.path(), Some(root), Some(root)).unwrap();
    dir
}

fn gp(s: &str) -> GuestPath {
    GuestPath::new(s).unwrap()
}

fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

fn spec(mounts: Vec<(&str, Mount)>, script: &str) -> SandboxSpec {
    SandboxSpec {
        mounts: MountTable::new(mounts.into_iter().map(|(g, m)| (gp(g), m)), Path::new("/"))
            .unwrap(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

#[derive(Debug)]
struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn run(e: &Env, spec: &SandboxSpec) -> Result<Out, RunError> {
    let (out_r, out_w) = msb_runtime::pipe().unwrap();
    let (err_r, err_w) = msb_runtime::pipe().unwrap();
    let readers = [out_r, err_r].map(|r| {
        std::thread::spawn(move || {
            let mut s = String::new();
            std::fs::File::from(r).read_to_string(&mut s).unwrap();
            s
        })
    });
    let status = msb_runtime::run(
        spec,
        &e.store,
        &e.backend,
        "sandbox:test",
        SandboxStdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
            ..Default::default()
        },
        false,
    );
    let [stdout, stderr] = readers.map(|h| h.join().unwrap());
    status.map(|status| Out {
        status,
        stdout,
        stderr,
    })
}

fn ok(e: &Env, spec: &SandboxSpec) -> String {
    let out = run(e, spec).unwrap();
    assert_eq!(
        out.status, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// An error with its causes, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn loop_backing_files() -> Vec<String> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(f) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            v.push(f.trim().to_string());
        }
    }
    v
}

fn ext4_image(dir: &Path, file: &str) -> PathBuf {
    let src = dir.join(format!("{file}.src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("inside.txt"), "from the image\n").unwrap();
    let img = dir.join(file);
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

#[test]
fn default_root_is_readonly_host_with_fresh_proc_dev_tmp() {
    if !root() {
        return;
    }
    let e = env();
    let out = ok(
        &e,
        &spec(
            vec![],
            "echo pid=$$; hostname; touch /usr/msb-probe 2>&1; echo touch=$?; \
             echo t > /tmp/t && cat /tmp/t; ls /dev | tr '\\n' ' '; echo; \
             head -c 4 /dev/urandom | wc -c; echo runfiles=$(ls /run | wc -l); ip link 2>/dev/null | grep -c '^[0-9]' || cat /proc/net/dev | tail -n +3 | wc -l",
        ),
    );
    assert!(out.contains("pid=2\n"), "{out}");
    assert!(out.contains("msb\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("touch=1"), "{out}");
    assert!(out.contains("t\n"), "{out}");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(out.contains(d), "{d} missing: {out}");
    }
    assert!(out.contains("4\n"), "{out}");
    assert!(
        out.contains("runfiles=0\n"),
        "the host's /run is not exposed: {out}"
    );
    // Only loopback in the new network namespace.
    assert!(out.trim_end().ends_with('1'), "{out}");
    assert!(!Path::new("/usr/msb-probe").exists());
}

#[test]
fn exit_status_and_signals() {
    if !root() {
        return;
    }
    let e = env();
    assert_eq!(run(&e, &spec(vec![], "exit 7")).unwrap().status, 7);
    assert_eq!(run(&e, &spec(vec![], "kill -KILL $$")).unwrap().status, 137);
    assert_eq!(run(&e, &spec(vec![], "kill -TERM $$")).unwrap().status, 143);
    let mut s = spec(vec![], "");
    s.command = vec!["/no/such/program".into()];
    let err = run(&e, &s).unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
    assert!(err.to_string().contains("command not found"), "{err}");
    s.command = vec!["/etc".into()];
    assert_eq!(run(&e, &s).unwrap_err().exit_code(), 126);
}

#[test]
fn bind_dir_file_readonly_and_flags() {
    if !root() {
        return;
    }
    let e = env();
    let host = sandbox_dir();
    std::fs::write(host.path().join("f"), "file content").unwrap();
    let ro = MountOptions {
        readonly: true,
        ..Default::default()
    };
    let out = run(
        &e,
        &spec(
            vec![
                ("/rw", Mount::bind(host.path(), MountOptions::default())),
                ("/ro", Mount::bind(host.path(), ro)),
                ("/etc/hostname", Mount::bind(host.path().join("f"), ro)),
            ],
            "cat /etc/hostname; echo; echo w > /rw/new; echo x > /ro/new2; echo ro=$?; \
             grep -E ' /ro | /etc/hostname ' /proc/self/mountinfo",
        ),
    )
    .unwrap();
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    let out = out.stdout;
    assert!(out.starts_with("file content\n"), "{out}");
    assert!(out.contains("ro=2"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("new")).unwrap(),
        "w\n"
    );
    assert!(!host.path().join("new2").exists());
    for line in out.lines().filter(|l| l.contains(" - ")) {
        assert!(line.contains(" ro,"), "{line}");
    }
    // A policy needs the filesystem server, which serves directories only.
    let strict = MountOptions {
        stat_virt: Some(msb_spec::StatVirt::Strict),
        ..Default::default()
    };
    let s = spec(
        vec![("/f", Mount::bind(host.path().join("f"), strict))],
        "true",
    );
    let err = chain(&run(&e, &s).unwrap_err());
    assert!(
        err.contains("is a file; stat-virt and host-perms apply to directories"),
        "{err}"
    );
}

#[test]
fn noexec_nosuid_nodev_are_kernel_flags() {
    if !root() {
        return;
    }
    let e = env();
    let host = sandbox_dir();
    std::fs::write(host.path().join("s.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        host.path().join("s.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let opts = MountOptions {
        noexec: true,
        nosuid: true,
        nodev: true,
        ..Default::default()
    };
    let out = run(
        &e,
        &spec(
            vec![("/x", Mount::bind(host.path(), opts))],
            "/x/s.sh; echo direct=$?; sh /x/s.sh; grep ' /x ' /proc/self/mountinfo",
        ),
    )
    .unwrap();
    assert!(out.stdout.contains("direct=126"), "{}", out.stdout);
    assert!(out.stdout.contains("ran\n"), "{}", out.stdout);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    let line = out.stdout.lines().last().unwrap();
    for f in ["nosuid", "nodev", "noexec"] {
        assert!(line.contains(f), "{line}");
    }
}

#[test]
fn tmpfs_size_gives_enospc() {
    if !root() {
        return;
    }
    let e = env();
    let t = Mount::tmpfs(TmpfsOptions {
        size_mib: Some(4),
        ..Default::default()
    });
    let out = run(
        &e,
        &spec(
            vec![("/scratch", t)],
            "dd if=/dev/zero of=/scratch/big bs=1M count=8; echo dd=$?; df -k /scratch | tail -1",
        ),
    )
    .unwrap();
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("dd=1"), "{}", out.stdout);
    assert!(out.stdout.contains(" 4096 "), "{}", out.stdout);
}

#[test]
fn parents_before_children_whatever_the_order() {
    if !root() {
        return;
    }
    let e = env();
    let host = sandbox_dir();
    let out = ok(
        &e,
        &spec(
            vec![
                ("/a/b/c", Mount::tmpfs(TmpfsOptions::default())),
                ("/a", Mount::bind(host.path(), MountOptions::default())),
                ("/a/b", Mount::tmpfs(TmpfsOptions::default())),
            ],
            "echo deep > /a/b/c/f && cat /a/b/c/f && grep -c ' /a' /proc/self/mountinfo",
        ),
    );
    assert_eq!(out, "deep\n3\n");
    // The child mount point was created inside the bound directory.
    assert!(host.path().join("b").is_dir());
}

#[test]
fn named_dir_volume_modes_and_in_use() {
    if !root() {
        return;
    }
    let e = env();
    let cfg = VolumeConfig::new(
        name("data"),
        VolumeKind::Dir,
        None,
        None,
        Default::default(),
    )
    .unwrap();
    e.store.create(&cfg).unwrap();
    let host = sandbox_dir();
    let fifo = host.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let s = spec(
        vec![
            ("/data", Mount::named(name("data"), MountOptions::default())),
            ("/ctl", Mount::bind(host.path(), MountOptions::default())),
        ],
        "echo hello > /data/greeting; echo up > /ctl/up; read x < /ctl/fifo; echo done",
    );
    std::thread::scope(|scope| {
        let h = scope.spawn(|| ok(&e, &s));
        // A sandbox that failed never writes `up`: its thread has ended, and
        // joining it reports why (polling on would hang the suite).
        while !host.path().join("up").exists() {
            if h.is_finished() {
                panic!("the sandbox ended before it got going: {:?}", h.join());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let removed = e.store.remove(&name("data"));
        // Let the sandbox finish before any assertion can fail: the scope
        // waits for its thread, which blocks on the fifo until then.
        std::fs::write(&fifo, "go\n").unwrap();
        let out = h.join().unwrap();
        match removed {
            Err(StoreError::InUse { users, .. }) => assert_eq!(users, ["sandbox:test"]),
            other => panic!("expected in use, got {other:?}"),
        }
        assert_eq!(out, "done\n");
    });
    let info = e.store.get(&name("data")).unwrap();
    assert_eq!(
        std::fs::read_to_string(info.path.join("greeting")).unwrap(),
        "hello\n"
    );
    // Usage was recounted after writes through the kernel bind mount.
    assert!(info.used_bytes > 0, "{info:?}");
    // Released after the run.
    assert!(e.store.users(&name("data")).unwrap().is_empty());

    // existing: a missing volume is an error and nothing is created
    let missing = spec(
        vec![("/m", Mount::named(name("nope"), MountOptions::default()))],
        "true",
    );
    let err = chain(&run(&e, &missing).unwrap_err());
    assert!(err.contains("mount at /m"), "{err}");
    assert!(matches!(
        e.store.get(&name("nope")),
        Err(StoreError::NotFound(_))
    ));

    // create: fails if it exists
    let create = |n: &str| {
        Mount::named_with(
            name(n),
            MountOptions::default(),
            NamedVolumeOptions {
                mode: NamedMode::Create,
                ..Default::default()
            },
        )
    };
    assert!(run(&e, &spec(vec![("/d", create("data"))], "true")).is_err());
    ok(&e, &spec(vec![("/d", create("fresh"))], "echo > /d/x"));
    assert!(e.store.get(&name("fresh")).is_ok());
}

#[test]
fn ensure_exists_reuses_compatible_never_mutates() {
    if !root() {
        return;
    }
    let e = env();
    let ensure = |n: &str, v: NamedVolumeOptions| {
        Mount::named_with(
            name(n),
            MountOptions::default(),
            NamedVolumeOptions {
                mode: NamedMode::EnsureExists,
                ..v
            },
        )
    };
    // Created as a disk volume when missing ...
    let disk = NamedVolumeOptions {
        kind: Some(VolumeKind::Disk),
        size_mib: Some(32),
        ..Default::default()
    };
    ok(
        &e,
        &spec(vec![("/d", ensure("dk", disk.clone()))], "echo one > /d/f"),
    );
    // ... reused without restating the size ...
    let out = ok(
        &e,
        &spec(
            vec![("/d", ensure("dk", NamedVolumeOptions::default()))],
            "cat /d/f",
        ),
    );
    assert_eq!(out, "one\n");
    // ... and refused when the request contradicts it.
    let before = e.store.get(&name("dk")).unwrap();
    let wrong = NamedVolumeOptions {
        kind: Some(VolumeKind::Disk),
        size_mib: Some(64),
        ..Default::default()
    };
    let err = run(&e, &spec(vec![("/d", ensure("dk", wrong))], "true")).unwrap_err();
    let err = chain(&err);
    assert!(err.contains("size 32 MiB, not size 64 MiB"), "{err}");
    let kind = NamedVolumeOptions {
        kind: Some(VolumeKind::Dir),
        ..Default::default()
    };
    let err = run(&e, &spec(vec![("/d", ensure("dk", kind))], "true")).unwrap_err();
    let err = chain(&err);
    assert!(err.contains("kind disk, not kind dir"), "{err}");
    assert_eq!(
        e.store.get(&name("dk")).unwrap().capacity_bytes,
        before.capacity_bytes
    );
}

#[test]
fn failed_start_removes_only_created_volumes() {
    if !root() {
        return;
    }
    let e = env();
    let cfg =
        VolumeConfig::new(name("old"), VolumeKind::Dir, None, None, Default::default()).unwrap();
    e.store.create(&cfg).unwrap();
    let ensure = |n: &str| {
        Mount::named_with(
            name(n),
            MountOptions::default(),
            NamedVolumeOptions {
                mode: NamedMode::EnsureExists,
                ..Default::default()
            },
        )
    };
    // The command cannot start: the new volume goes, the old one stays.
    let mut s = spec(vec![("/old", ensure("old")), ("/new", ensure("new"))], "");
    s.command = vec!["/no/such/program".into()];
    assert_eq!(run(&e, &s).unwrap_err().exit_code(), 127);
    assert!(e.store.get(&name("old")).is_ok());
    assert!(matches!(
        e.store.get(&name("new")),
        Err(StoreError::NotFound(_))
    ));
    // A later mount fails to prepare: same.
    let s = spec(
        vec![
            ("/new", ensure("new")),
            ("/old", ensure("old")),
            ("/zz", Mount::bind("/no/such/dir", MountOptions::default())),
        ],
        "true",
    );
    let err = chain(&run(&e, &s).unwrap_err());
    assert!(err.contains("/no/such/dir"), "{err}");
    assert!(e.store.get(&name("old")).is_ok());
    assert!(matches!(
        e.store.get(&name("new")),
        Err(StoreError::NotFound(_))
    ));
    // The setup inside the sandbox fails (a mount point missing in a
    // read-only mount): same.
    let host = sandbox_dir();
    let ro = MountOptions {
        readonly: true,
        ..Default::default()
    };
    let s = spec(
        vec![
            ("/new", ensure("new")),
            ("/ro", Mount::bind(host.path(), ro)),
            ("/ro/msb-no-such-dir", Mount::tmpfs(TmpfsOptions::default())),
        ],
        "true",
    );
    let err = chain(&run(&e, &s).unwrap_err());
    assert!(
        err.contains("cannot create the mount point /ro/msb-no-such-dir: /ro is read-only"),
        "{err}"
    );
    assert!(matches!(
        e.store.get(&name("new")),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn disk_images_raw_qcow2_vmdk_and_teardown() {
    if !root() {
        return;
    }
    let qemu = Command::new("qemu-img").arg("--version").output().is_ok();
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let raw = ext4_image(dir.path(), "a.raw");
    let mut images = vec![(raw.clone(), "raw")];
    if qemu {
        for fmt in ["qcow2", "vmdk"] {
            let out_path = raw.with_extension(fmt);
            let out = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", fmt])
                .arg(&raw)
                .arg(&out_path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            images.push((out_path, fmt));
        }
    } else {
        eprintln!("qcow2/vmdk part skipped: qemu-img (qemu-utils) not installed");
    }
    for (img, fmt) in images {
        let s = spec(
            vec![("/disk", Mount::disk(&img, DiskOptions::default()))],
            &format!(
                "cat /disk/inside.txt; echo {fmt} > /disk/w; grep ' /disk ' /proc/self/mountinfo"
            ),
        );
        let out = ok(&e, &s);
        assert!(out.starts_with("from the image\n"), "{out}");
        assert!(out.contains(" - ext4 /dev/loop"), "{out}");
        // Teardown: the loop device and any daemon are gone.
        let backing = loop_backing_files();
        assert!(
            !backing
                .iter()
                .any(|b| b.contains(dir.path().to_str().unwrap())),
            "{backing:?}"
        );
        // The write persisted; read-only mounts refuse writes.
        let ro = DiskOptions {
            readonly: true,
            format: Some(match fmt {
                "qcow2" => DiskFormat::Qcow2,
                "vmdk" => DiskFormat::Vmdk,
                _ => DiskFormat::Raw,
            }),
            ..Default::default()
        };
        let out = run(
            &e,
            &spec(
                vec![("/disk", Mount::disk(&img, ro))],
                "cat /disk/w; echo x > /disk/y",
            ),
        )
        .unwrap();
        assert_eq!(out.stdout, format!("{fmt}\n"));
        assert!(
            out.stderr.contains("Read-only file system"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn disk_volume_single_writer() {
    if !root() {
        return;
    }
    let e = env();
    let cfg = VolumeConfig::new(
        name("dv"),
        VolumeKind::Disk,
        Some(32),
        None,
        Default::default(),
    )
    .unwrap();
    e.store.create(&cfg).unwrap();
    let s = spec(
        vec![("/v", Mount::named(name("dv"), MountOptions::default()))],
        "echo x > /v/x",
    );
    // While one holder writes, a second writable start is refused and
    // nothing of it is left attached.
    let p = prepare(&s, &e.store, "sandbox:first").unwrap();
    let err = chain(&run(&e, &s).unwrap_err());
    assert!(err.contains("in use by sandbox:first"), "{err}");
    drop(p);
    ok(&e, &s);
    assert!(e.store.users(&name("dv")).unwrap().is_empty());
    // Read-only sharing is allowed, and excludes a writer meanwhile.
    let ro = spec(
        vec![(
            "/v",
            Mount::named(
                name("dv"),
                MountOptions {
                    readonly: true,
                    ..Default::default()
                },
            ),
        )],
        "cat /v/x",
    );
    let first = prepare(&ro, &e.store, "sandbox:reader").unwrap();
    assert_eq!(ok(&e, &ro), "x\n");
    let err = chain(&run(&e, &s).unwrap_err());
    assert!(err.contains("in use by sandbox:reader"), "{err}");
    drop(first);
}

#[test]
fn restricted_profile_cannot_remount() {
    if !root() {
        return;
    }
    let e = env();
    let host = sandbox_dir();
    let mut s = spec(
        vec![(
            "/data",
            Mount::bind(
                host.path(),
                MountOptions {
                    readonly: true,
                    ..Default::default()
                },
            ),
        )],
        "mount -o remount,rw /data 2>/dev/null; echo remount=$?; \
         mount -t tmpfs none /tmp 2>/dev/null; echo mount=$?; \
         grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; \
         grep ' /data ' /proc/self/mountinfo; echo x > /data/x",
    );
    s.security = Security::Restricted;
    let out = run(&e, &s).unwrap();
    assert!(out.stdout.contains("remount=32"), "{}", out.stdout);
    assert!(out.stdout.contains("mount=32"), "{}", out.stdout);
    assert!(
        out.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{}", out.stdout);
    let line = out.stdout.lines().find(|l| l.contains(" /data ")).unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    assert!(!host.path().join("x").exists());
    // The default profile cannot remount either (no CAP_SYS_ADMIN).
    s.security = Security::Default;
    let out = run(&e, &s).unwrap();
    assert!(out.stdout.contains("remount=32"), "{}", out.stdout);
    assert!(out.stdout.contains("NoNewPrivs:\t0"), "{}", out.stdout);
}

#[test]
fn rootfs_directory() {
    if !root() {
        return;
    }
    let e = env();
    // A rootfs made of the host's /usr (merged-usr Debian) plus links.
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    for d in ["usr", "etc"] {
        std::fs::create_dir(r.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        let target = std::fs::read_link(Path::new("/").join(l))
            .unwrap_or_else(|_| PathBuf::from(format!("usr/{l}")));
        std::os::unix::fs::symlink(target, r.join(l)).unwrap();
    }
    std::fs::write(r.join("etc/marker"), "rootfs\n").unwrap();
    let mut s = spec(
        vec![(
            "/usr",
            Mount::bind(
                "/usr",
                MountOptions {
                    readonly: true,
                    ..Default::default()
                },
            ),
        )],
        "cat /etc/marker; echo w > /etc/written; cat /etc/written >&2; ls /",
    );
    s.rootfs = Some(r.to_path_buf());
    s.workdir = Some(gp("/etc"));
    let out = ok(&e, &s);
    assert!(out.starts_with("rootfs\n"), "{out}");
    // The root is writable through a private layer: nothing reaches the
    // directory.
    assert!(!r.join("etc/written").exists());
    assert!(!out.contains("home"), "{out}");
}

#[test]
fn quota_and_stat_virt_go_through_the_filesystem_server() {
    if !root() {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs /dev/fuse");
        return;
    }
    let e = env();
    let cfg = VolumeConfig::new(
        name("q"),
        VolumeKind::Dir,
        None,
        Some(4),
        Default::default(),
    )
    .unwrap();
    e.store.create(&cfg).unwrap();
    // The quota is a hard limit inside the sandbox, and usage is counted.
    let out = run(
        &e,
        &spec(
            vec![("/q", Mount::named(name("q"), MountOptions::default()))],
            "dd if=/dev/zero of=/q/big bs=1M count=8; echo dd=$?; grep ' /q ' /proc/self/mountinfo",
        ),
    )
    .unwrap();
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("dd=1"), "{}", out.stdout);
    assert!(out.stdout.contains(" - fuse msb "), "{}", out.stdout);
    let used = e.store.get(&name("q")).unwrap().used_bytes;
    assert!(used > 3 << 20 && used <= 4 << 20, "{used}");
    // Read-only through the server too.
    let ro = MountOptions {
        readonly: true,
        ..Default::default()
    };
    let out = run(
        &e,
        &spec(vec![("/q", Mount::named(name("q"), ro))], "rm /q/big"),
    )
    .unwrap();
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );

    // Stat virtualization on a bind mount: guest ownership lives in the
    // record, host files stay private.
    let host = sandbox_dir();
    let strict = MountOptions {
        stat_virt: Some(msb_spec::StatVirt::Strict),
        ..Default::default()
    };
    let out = ok(
        &e,
        &spec(
            vec![("/s", Mount::bind(host.path(), strict))],
            "touch /s/f && chown 1234:5678 /s/f && chmod 0755 /s/f && stat -c '%u %g %a' /s/f",
        ),
    );
    assert_eq!(out, "1234 5678 755\n");
    let meta = std::fs::metadata(host.path().join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    // Owned by the sandbox's root on the host, never by host root.
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (msb_spec::IdMap::ROOTFUL.root(), 0o600)
    );
}
