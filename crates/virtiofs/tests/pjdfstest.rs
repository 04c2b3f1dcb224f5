//! POSIX conformance through virtio-fs: pjdfstest runs inside a real guest
//! (as guest root, strict stat virtualization) on a share served by the
//! policy file system. A failure listed in `pjdfstest-known-failures.txt`
//! is reported as known; any other failure fails the test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use msb_fsserver::{HostPerms, IdMap, ServeConfig, StatVirt, open_root};
use msb_virtiofs::{Server, policy_fs};

const CONFIG: &str = r#"[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// pjdfstest cases' assumptions: the usual umask, and a served root other
/// users can reach.
const SCRIPT: &str = r#"
umask 022
chmod 755 /mnt/pjd
cd /mnt/pjd
pjdfstest -c /etc/pjdfstest.toml -p /mnt/pjd 2>&1 | sed 's/^/PJD /'
"#;

/// Where pjdfstest is, if installed.
fn pjdfstest() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/pjdfstest"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pjdfstest"))
        .chain(home)
        .find(|p| p.is_file())
}

/// The shared libraries `bin` needs, as `ldd` names them.
fn libraries(bin: &Path) -> Vec<std::path::PathBuf> {
    let out = std::process::Command::new("ldd").arg(bin).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.into())
        })
        .collect()
}

fn known_failures() -> Vec<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest-known-failures.txt");
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn matches(glob: &str, case: &str) -> bool {
    match glob.split_once('*') {
        None => glob == case,
        Some((head, tail)) => {
            case.len() >= head.len() + tail.len() && case.starts_with(head) && case.ends_with(tail)
        }
    }
}

#[test]
fn pjdfstest_in_guest() {
    if let Some(why) = common::missing_qemu() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(bin) = pjdfstest() else {
        eprintln!("skipped: pjdfstest is not installed (cargo install --locked pjdfstest)");
        return;
    };
    let kernel = match common::kernel() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("skipped: no guest kernel: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    std::fs::create_dir(&dir).unwrap();
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
    let fs = policy_fs(open_root(&dir, false).unwrap(), cfg).unwrap();
    let share = common::Share {
        tag: "pjd".into(),
        socket: tmp.path().join("pjd.sock"),
    };
    let server = Server::start(&share.socket, fs, 4).unwrap();

    let initrd = tmp.path().join("initrd");
    let image = common::initramfs(kernel, &["pjd"], SCRIPT, |c| {
        c.dir("usr");
        c.dir("usr/bin");
        c.file("usr/bin/pjdfstest", 0o755, &std::fs::read(&bin).unwrap());
        c.file("etc/pjdfstest.toml", 0o644, CONFIG.as_bytes());
        for lib in libraries(&bin) {
            // Every parent directory first, as an initramfs wants.
            let rel = lib.strip_prefix("/").unwrap();
            let mut parent = std::path::PathBuf::new();
            for part in rel.parent().unwrap().components() {
                parent.push(part);
                c.dir(parent.to_str().unwrap());
            }
            c.file(rel.to_str().unwrap(), 0o755, &std::fs::read(&lib).unwrap());
        }
    });
    std::fs::write(&initrd, image).unwrap();
    let started = Instant::now();
    let console = common::run(
        common::qemu_command(kernel, &initrd, std::slice::from_ref(&share), 512),
        Duration::from_secs(600),
    )
    .unwrap();
    server.wait().unwrap();

    let out: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix("PJD "))
        .collect();
    let summary = out
        .iter()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("pjdfstest did not finish:\n{console}"));
    let known = known_failures();
    let mut unexpected = Vec::new();
    let mut known_hit = 0;
    for (i, line) in out.iter().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(case), Some("FAILED"), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if known.iter().any(|g| matches(g, case)) {
            known_hit += 1;
        } else {
            unexpected.push(format!("{case}: {}", out.get(i + 1).unwrap_or(&"")));
        }
    }
    eprintln!(
        "pjdfstest in the guest ({:?}): {summary}; {known_hit} known failures",
        started.elapsed()
    );
    assert!(unexpected.is_empty(), "pjdfstest failures: {unexpected:#?}");
}
