//! One mount-semantics suite, run against each backend: a named sandbox
//! with every mount kind and option is started once (a VM boot is the
//! expensive part), then each check is a command in it plus what the host
//! sees. The real binary, a real store, real FUSE or virtio-fs, real
//! `mke2fs`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The sandbox range's root (`IdMap::ROOTFUL`): what a sandbox's root is on
/// the host.
const SANDBOX_ROOT: u32 = 1_878_982_656;

fn msb(home: &Path, args: &[&str]) -> Output {
    // One guest kernel cache for every home of the run.
    let assets = std::env::var_os("MSB_VM_ASSETS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"),
        PathBuf::from,
    );
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home)
        .env("MSB_VM_ASSETS", assets)
        .current_dir(home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills what a failed run left behind: the sandbox stops with its
/// supervisor.
struct Sandbox<'a> {
    home: &'a Path,
    name: &'static str,
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        let _ = msb(self.home, &["rm", "-f", self.name]);
    }
}

/// Fixtures on the host.
struct Host {
    _dir: tempfile::TempDir,
    rw: PathBuf,
    ro: PathBuf,
    virt: PathBuf,
    image: PathBuf,
    /// A directory with a file mounted read-write (`rw-file`), one mounted
    /// read-only (`ro-file`) and one not mounted (`sibling`).
    files: PathBuf,
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let sub = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        p
    };
    let (rw, ro, virt, files) = (sub("rw"), sub("ro"), sub("virt"), sub("files"));
    for (name, data) in [
        ("rw-file", "file on the host\n"),
        ("ro-file", "read-only file\n"),
        ("sibling", "not mounted\n"),
    ] {
        std::fs::write(files.join(name), data).unwrap();
    }
    // The sandbox's root may write it, as a bind directory it owns.
    std::os::unix::fs::chown(
        files.join("rw-file"),
        Some(SANDBOX_ROOT),
        Some(SANDBOX_ROOT),
    )
    .unwrap();
    // A directory the sandbox's root may write: it keeps its host owner.
    std::os::unix::fs::chown(&rw, Some(SANDBOX_ROOT), Some(SANDBOX_ROOT)).unwrap();
    std::os::unix::fs::chown(&virt, Some(SANDBOX_ROOT), Some(SANDBOX_ROOT)).unwrap();
    std::fs::write(ro.join("hello"), "from the host\n").unwrap();
    std::fs::write(rw.join("script"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        rw.join("script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // A raw ext4 image holding one file, owned by the image's root.
    let seed = sub("seed");
    std::fs::write(seed.join("inside"), "in the image\n").unwrap();
    let image = dir.path().join("disk.img");
    let o = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&seed)
        .arg(&image)
        .arg("16M")
        .output()
        .unwrap();
    assert!(o.status.success(), "mke2fs: {}", text(&o.stderr));
    Host {
        _dir: dir,
        rw,
        ro,
        virt,
        image,
        files,
    }
}

/// Runs `script` in the sandbox; returns (status, stdout, stderr).
fn sh(home: &Path, name: &str, script: &str) -> (i32, String, String) {
    let o = msb(home, &["exec", name, "sh", "-c", script]);
    (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    )
}

/// The suite, for `backend` (`namespace` or `vm`).
fn suite(backend: &str) {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let h = host();
    let name = "semantics";
    let args: Vec<String> = [
        "create",
        name,
        "--backend",
        backend,
        "-v",
        &format!("{}:/rw", h.rw.display()),
        "-v",
        &format!("{}:/ro:ro", h.ro.display()),
        "-v",
        &format!("{}:/nx:noexec", h.rw.display()),
        "-v",
        &format!("{}:/virt:stat-virt=strict", h.virt.display()),
        "--mount-named",
        "quota:/q:quota=2M",
        "--mount-named",
        "dvol:/dv:kind=disk,size=64M",
        "--mount-disk",
        &format!("{}:/img", h.image.display()),
        "--tmpfs",
        "/small:1M",
        "--mount-file",
        &format!("{}:/etc/mounted", h.files.join("rw-file").display()),
        "--mount-file",
        &format!("{}:/ro-file:ro", h.files.join("ro-file").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = msb(home, &args);
    assert!(o.status.success(), "create: {}", text(&o.stderr));
    let _sandbox = Sandbox { home, name };
    let mut failures = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };

    // Status, stdout and stderr pass through.
    let (code, out, err) = sh(home, name, "echo out; echo err >&2; exit 7");
    check(
        "status and streams",
        code == 7 && out == "out\n" && err == "err\n",
        format!("{code} {out:?} {err:?}"),
    );

    // The root's own scratch space.
    let (code, out, err) = sh(
        home,
        name,
        "touch /tmp/x /run/x && grep -E ' /(tmp|run) tmpfs' /proc/mounts | wc -l",
    );
    check(
        "/tmp and /run are fresh tmpfs",
        code == 0 && out.trim() == "2",
        format!("{code} {out:?} {err}"),
    );

    // A read-write bind: written inside, seen on the host.
    let (code, _, err) = sh(home, name, "echo data > /rw/new && cat /rw/new");
    check("bind write", code == 0, err);
    check(
        "bind write reaches the host",
        std::fs::read_to_string(h.rw.join("new")).ok().as_deref() == Some("data\n"),
        "host file missing".into(),
    );
    check(
        "files the sandbox makes are not host root's",
        std::fs::metadata(h.rw.join("new")).is_ok_and(|m| m.uid() != 0),
        "owned by host root".into(),
    );

    // Read-only: readable, writes refused.
    let (code, out, _) = sh(home, name, "cat /ro/hello");
    check("ro read", code == 0 && out == "from the host\n", out);
    let (code, _, err) = sh(home, name, "echo x > /ro/hello");
    check(
        "ro write refused",
        code != 0 && err.contains("Read-only file system"),
        err,
    );
    check(
        "ro host file unchanged",
        std::fs::read_to_string(h.ro.join("hello")).unwrap() == "from the host\n",
        "changed".into(),
    );

    // noexec: the same file runs from /rw, not from /nx.
    let (code, out, _) = sh(home, name, "/rw/script");
    check("exec from rw", code == 0 && out == "ran\n", out);
    let (code, _, err) = sh(home, name, "/nx/script");
    check("noexec refuses", code == 126, format!("{code} {err}"));

    // Quota: a hard limit.
    let (code, _, err) = sh(
        home,
        name,
        "dd if=/dev/zero of=/q/big bs=64k count=64 2>/dev/null; echo $?; rm -f /q/big",
    );
    check("quota write runs", code == 0, err.clone());
    let (code, _, err) = sh(home, name, "dd if=/dev/zero of=/q/big bs=64k count=64");
    check(
        "quota gives ENOSPC",
        code != 0 && err.contains("No space left"),
        format!("{code} {err}"),
    );
    let _ = sh(home, name, "rm -f /q/big");

    // Stat virtualization: ownership the guest sets is its own; the host
    // file stays private to the sandbox's root.
    let (code, out, err) = sh(
        home,
        name,
        "echo v > /virt/f && chown 123:456 /virt/f && chmod 4755 /virt/f && stat -c '%u:%g %a' /virt/f",
    );
    check(
        "stat-virt records owner and mode",
        code == 0 && out.trim() == "123:456 4755",
        format!("{code} {out:?} {err}"),
    );
    let meta = std::fs::metadata(h.virt.join("f"));
    check(
        "stat-virt host file is private",
        meta.as_ref().is_ok_and(|m| {
            m.uid() == SANDBOX_ROOT && m.mode() & 0o7077 == 0 && m.mode() & 0o600 == 0o600
        }),
        format!("{meta:?}"),
    );

    // Disk volume: an ext4 filesystem of its own.
    let (code, out, err) = sh(
        home,
        name,
        "echo d > /dv/file && cat /dv/file && ls -d /dv/lost+found",
    );
    check(
        "disk volume",
        code == 0 && out == "d\n/dv/lost+found\n",
        format!("{code} {out:?} {err}"),
    );

    // Disk image: its files keep the image's ids (0 is the sandbox's root).
    let (code, out, err) = sh(home, name, "cat /img/inside && stat -c %u /img/inside");
    check(
        "disk image",
        code == 0 && out == "in the image\n0\n",
        format!("{code} {out:?} {err}"),
    );

    // tmpfs: sized as asked.
    let (code, _, err) = sh(home, name, "dd if=/dev/zero of=/small/f bs=64k count=32");
    check(
        "tmpfs size",
        code != 0 && err.contains("No space left"),
        format!("{code} {err}"),
    );

    // Every mount is nosuid: a setuid file gives no privilege.
    let (_, out, _) = sh(home, name, "grep -E ' /(rw|q|dv|img|virt) ' /proc/mounts");
    check(
        "mounts are nosuid,nodev",
        !out.is_empty()
            && out
                .lines()
                .all(|l| l.contains("nosuid") && l.contains("nodev")),
        out,
    );

    // Single files: read and written through to the host, read-only
    // refused, neither removed nor renamed, and nothing else of their
    // directory reachable.
    let (code, out, err) = sh(
        home,
        name,
        "cat /etc/mounted && stat -c %F /etc/mounted && echo more >> /etc/mounted",
    );
    check(
        "file mount read and write",
        code == 0 && out == "file on the host\nregular file\n",
        format!("{code} {out:?} {err}"),
    );
    check(
        "file mount write reaches the host",
        std::fs::read_to_string(h.files.join("rw-file"))
            .ok()
            .as_deref()
            == Some("file on the host\nmore\n"),
        "host file unchanged".into(),
    );
    let (code, out, err) = sh(home, name, "cat /ro-file && echo x > /ro-file");
    check(
        "file mount ro",
        code != 0 && out == "read-only file\n" && err.contains("Read-only file system"),
        format!("{code} {out:?} {err}"),
    );
    let (code, _, err) = sh(
        home,
        name,
        "rm -f /etc/mounted || mv /etc/mounted /etc/moved || exit 0; exit 1",
    );
    check("file mount stays", code == 0, err);
    let (_, out, _) = sh(
        home,
        name,
        "ls -a / /dev /etc; grep -c -e sibling -e msb-file /proc/mounts",
    );
    check(
        "file mount shows nothing else of its directory",
        !out.contains("sibling") && !out.contains("msb-file") && out.ends_with("0\n"),
        out,
    );
    let mut names: Vec<_> = std::fs::read_dir(&h.files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    check(
        "file mount directory unchanged on the host",
        names == ["ro-file", "rw-file", "sibling"]
            && std::fs::read_to_string(h.files.join("ro-file")).unwrap() == "read-only file\n",
        format!("{names:?}"),
    );

    // Every command, exec'd ones too, runs under the default profile:
    // the filter and the container capability set, no new namespaces.
    let (code, out, err) = sh(
        home,
        name,
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; unshare -U -r true",
    );
    check(
        "exec under the default profile",
        code != 0
            && out.replace('\t', " ") == "CapEff: 00000000a00405fb\nNoNewPrivs: 0\nSeccomp: 2\n",
        format!("{code} {out:?} {err}"),
    );

    // In use while the sandbox is up.
    let o = msb(home, &["volume", "rm", "quota"]);
    check(
        "volume in use",
        !o.status.success() && text(&o.stderr).contains("in use"),
        text(&o.stderr),
    );

    let o = msb(home, &["stop", name]);
    check("stop", o.status.success(), text(&o.stderr));
    // The disk volume's data survives a stop and a new start.
    let o = msb(home, &["start", name]);
    check("restart", o.status.success(), text(&o.stderr));
    let (code, out, _) = sh(home, name, "cat /dv/file");
    check("disk data kept", code == 0 && out == "d\n", out);

    assert!(failures.is_empty(), "{backend}: {failures:#?}");
}

fn can_run_sandboxes() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: served mounts and disk images need root");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: no /dev/fuse");
        return false;
    }
    true
}

#[test]
fn namespace_backend() {
    if can_run_sandboxes() {
        suite("namespace");
    }
}

/// Whether a microVM can be had here: QEMU installed, and a guest kernel
/// cached or fetchable (the suite's cache is shared through
/// `MSB_VM_ASSETS`, set by scripts/test).
fn can_run_vms() -> bool {
    if !can_run_sandboxes() {
        return false;
    }
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu {
        eprintln!("skipped: qemu-system-x86_64 is not installed (scripts/setup installs it)");
        return false;
    }
    true
}

#[test]
fn vm_backend() {
    if can_run_vms() {
        suite("vm");
    }
}
