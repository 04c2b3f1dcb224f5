//! Attacks through disk images and on the microVM's host side, run through
//! the real binary on both backends:
//!
//! * a qcow2 or VMDK image can name other host files (a backing file, an
//!   external data file, a descriptor's extents), which QEMU would open with
//!   its caller's rights and show to the sandbox;
//! * QEMU, the first target of a guest escape, must run as a user of its
//!   own that can reach nothing of the host's msb state or of another VM.
//!
//! Needs root, `mke2fs` and `qemu-img` (skips with a reason otherwise); the
//! VM cases need QEMU and a guest kernel (as `tests/vm.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What the host file an image points at holds; the attack worked if a
/// sandbox printed it.
const SECRET: &str = "host file the image must not reach";

fn assets() -> PathBuf {
    std::env::var_os("MSB_VM_ASSETS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"),
        PathBuf::from,
    )
}

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home)
        .env("MSB_VM_ASSETS", assets())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: {name} is not installed (scripts/setup installs it)");
    }
    ok
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: disk images and unprivileged QEMU need msb to run as root");
    }
    root
}

fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", text(&o.stderr));
}

/// A scratch directory outside /tmp (qemu-storage-daemon gets a private
/// /tmp, and an attacker would point at host files elsewhere anyway).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("msb-hostile-images-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// An ext4 image holding `secret.txt`, and images of each kind that reach
/// it only by naming it: `(file name, what it does)`.
fn hostile_images(dir: &Path) -> Vec<(String, &'static str)> {
    let content = dir.join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("secret.txt"), SECRET).unwrap();
    let base = dir.join("host-file.raw");
    let base = base.to_str().unwrap();
    run(
        "mke2fs",
        &[
            "-q",
            "-t",
            "ext4",
            "-d",
            content.to_str().unwrap(),
            base,
            "8M",
        ],
    );
    let at = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base,
            "-F",
            "raw",
            &at("backing.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={base},data_file_raw=on"),
            &at("data-file.qcow2"),
            "8M",
        ],
    );
    std::fs::write(
        at("extent.vmdk"),
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\nRW 16384 FLAT \"{base}\" 0\n"
        ),
    )
    .unwrap();
    run(
        "qemu-img",
        &["convert", "-O", "vmdk", base, &at("parent.vmdk")],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            &at("parent.vmdk"),
            "-F",
            "vmdk",
            &at("child.vmdk"),
        ],
    );
    vec![
        ("backing.qcow2".into(), "qcow2 with a backing file"),
        ("data-file.qcow2".into(), "qcow2 with an external data file"),
        ("extent.vmdk".into(), "VMDK descriptor naming an extent"),
        ("child.vmdk".into(), "VMDK with a parent"),
    ]
}

/// Mounts each hostile image into a sandbox of `backend` and fails if any
/// printed the host file, or was not refused with a reason.
fn images_are_refused(backend: &str) {
    let dir = scratch();
    let home = dir.path().join("home");
    let mut found = Vec::new();
    for (image, what) in hostile_images(dir.path()) {
        let spec = format!("{}:/mnt:ro,fstype=ext4", dir.path().join(&image).display());
        let o = msb(
            &home,
            &[
                "run",
                "--backend",
                backend,
                "--mount-disk",
                &spec,
                "--",
                "cat",
                "/mnt/secret.txt",
            ],
        );
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        if out.contains(SECRET) {
            found.push(format!("{what}: the sandbox read the host file"));
        } else if o.status.success() || !err.contains("refusing disk image") {
            found.push(format!(
                "{what}: not refused for what it names (status {:?}): {err}",
                o.status.code()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "on the {backend} backend:\n{}",
        found.join("\n")
    );
}

#[test]
fn images_naming_host_files_are_refused_in_namespaces() {
    if !root() || !tool("mke2fs") || !tool("qemu-img") || !tool("qemu-storage-daemon") {
        return;
    }
    images_are_refused("namespace");
}

#[test]
fn images_naming_host_files_are_refused_in_vms() {
    if !root() || !tool("mke2fs") || !tool("qemu-img") || !tool("qemu-system-x86_64") {
        return;
    }
    images_are_refused("vm");
}

/// Kills, when dropped (a failed assertion included), the supervisors of
/// every sandbox started under a home; each takes its QEMU with it.
struct Supervisors<'a>(&'a Path);

impl Drop for Supervisors<'_> {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.0.join("run/sandboxes")) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pids) = std::fs::read_to_string(entry.path())
                && let Some(Ok(pid)) = pids.split_whitespace().nth(1).map(str::parse::<i32>)
                && pid > 1
            {
                // SAFETY: a plain kill(2) of a supervisor this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `(uid, CapEff)` of a running process.
fn ids_of(pid: i32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uids = field("Uid:");
    assert!(uids.iter().all(|u| u == &uids[0]), "mixed uids {uids:?}");
    (uids[0].parse().unwrap(), field("CapEff:")[0].clone())
}

#[test]
fn each_qemu_runs_as_its_own_unprivileged_user() {
    if !root() || !tool("qemu-system-x86_64") || !tool("qemu-img") || !tool("mke2fs") {
        return;
    }
    let dir = scratch();
    let home = dir.path().join("home");
    let _sandboxes = Supervisors(&home);
    let image = ext4_qcow2(dir.path());
    let o = msb(&home, &["volume", "create", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let disk = format!("{}:/disk,fstype=ext4", image.display());
    let mut qemus = Vec::new();
    for name in ["one", "two"] {
        // A disk image and a volume: QEMU reaches both by descriptors only.
        let mut args = vec!["create", name, "--backend", "vm", "-v", "data:/data"];
        if name == "one" {
            args.extend(["--mount-disk", disk.as_str()]);
        }
        let o = msb(&home, &args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o = msb(&home, &["start", name]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let pids = std::fs::read_to_string(home.join(format!("run/sandboxes/{name}.pid"))).unwrap();
        qemus.push(
            pids.split_whitespace()
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap(),
        );
    }
    let o = msb(
        &home,
        &[
            "exec",
            "one",
            "--",
            "sh",
            "-c",
            "echo ok > /data/f && cat /data/f",
        ],
    );
    assert_eq!(text(&o.stdout), "ok\n", "{}", text(&o.stderr));
    let (a, caps_a) = ids_of(qemus[0]);
    let (b, caps_b) = ids_of(qemus[1]);
    let sandbox_range = 0x6FFF_0000u32..0x7000_0000;
    for (uid, caps) in [(a, &caps_a), (b, &caps_b)] {
        assert_ne!(uid, 0, "QEMU runs as host root");
        assert!(
            !sandbox_range.contains(&uid),
            "QEMU runs as sandbox ids ({uid})"
        );
        assert_eq!(caps, "0000000000000000", "QEMU holds capabilities");
    }
    assert_ne!(
        a, b,
        "two VMs' QEMUs share a user and could trace each other"
    );
    // That user reaches none of msb's state.
    let db = home.join("db/msb.db");
    assert!(db.exists());
    let o = Command::new("setpriv")
        .args([
            "--reuid",
            &a.to_string(),
            "--regid",
            &a.to_string(),
            "--clear-groups",
        ])
        .args(["cat", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "QEMU's user {a} can read the catalog {}",
        db.display()
    );
    for name in ["one", "two"] {
        let o = msb(&home, &["stop", name]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // The disk the VM had mounted read-write was left clean: it mounts
    // read-only (an unreplayed journal would refuse that).
    let ro = format!("{}:/disk:ro,fstype=ext4", image.display());
    let o = msb(&home, &["run", "--mount-disk", &ro, "--", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for name in ["one", "two"] {
        msb(&home, &["rm", name]);
    }
}

/// The processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// An empty 8 MiB ext4 file system as a qcow2 image in `dir`.
fn ext4_qcow2(dir: &Path) -> PathBuf {
    let raw = dir.join("disk.raw");
    let image = dir.join("disk.qcow2");
    run("mke2fs", &["-q", "-t", "ext4", raw.to_str().unwrap(), "8M"]);
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );
    image
}

/// The pid of the `qemu-storage-daemon` that is a child of `parent`.
fn daemon_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines().any(|l| l == "Name:\tqemu-storage-da")
                    && s.lines().any(|l| l == format!("PPid:\t{parent}"))
            })
        })
}

#[test]
fn the_image_daemon_of_a_namespace_sandbox_runs_as_its_own_user() {
    use std::io::BufRead;
    if !root()
        || !tool("mke2fs")
        || !tool("qemu-img")
        || !tool("qemu-storage-daemon")
        || !Path::new("/dev/fuse").exists()
    {
        return;
    }
    let dir = scratch();
    let home = dir.path().join("home");
    let image = ext4_qcow2(dir.path());
    let disk = format!("{}:/disk,fstype=ext4", image.display());
    // A sleep no other process on the host runs, to find the sandbox by.
    let nap = format!("{}", 80_000 + std::process::id() % 9_999);
    let mut child = Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(["run", "--mount-disk", &disk, "--", "sh", "-c"])
        .arg(format!("echo ready; exec sleep {nap}"))
        .env("MSB_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // Read while msb runs; killing it ends the daemon too. The shell
    // prints before it execs sleep, so look until both are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (daemon, sandboxed) = loop {
        let found = (daemon_of(child.id()), pids_running(&["sleep", &nap]));
        if (found.0.is_some() && !found.1.is_empty()) || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let seen = daemon.zip(sandboxed.first()).map(|(d, &s)| {
        let status = std::fs::read_to_string(format!("/proc/{d}/status")).unwrap();
        (d, ids_of(d), ids_of(s).0, status)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line, "ready\n");
    let Some((daemon, (uid, caps), sandbox_uid, status)) = seen else {
        panic!("no daemon ({daemon:?}) or no sandboxed sleep ({sandboxed:?})");
    };
    assert_ne!(uid, 0, "qemu-storage-daemon runs as host root");
    assert_eq!(
        caps, "0000000000000000",
        "qemu-storage-daemon holds capabilities"
    );
    assert!(
        status.lines().any(|l| l.trim_end() == "Groups:"),
        "qemu-storage-daemon has supplementary groups: {status}"
    );
    // The sandbox's root is the first id of its range of 65536.
    assert!(
        !(sandbox_uid..sandbox_uid + 65536).contains(&uid),
        "qemu-storage-daemon runs as the sandbox's ids ({uid})"
    );
    // It died with msb.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(&format!("/proc/{daemon}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-storage-daemon {daemon} outlived msb"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
