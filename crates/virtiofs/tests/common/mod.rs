//! Boots a real guest kernel under QEMU with virtio-fs shares: the harness
//! of the tests and of the benchmark (`examples/bench.rs`).
//!
//! The guest is Debian's cloud kernel with an initramfs written here: a
//! static busybox as init, the virtio-fs modules, and a shell script that
//! mounts every share, runs the checks and powers off. Results come back
//! as lines on the serial console.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A guest kernel unpacked from a Debian package.
pub struct Kernel {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>/kernel`.
    pub modules: PathBuf,
}

/// Modules the guest loads, in dependency order (their modinfo
/// `depends=`).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "fs/fuse/fuse.ko",
    "fs/fuse/virtiofs.ko",
];

fn find_kernel(dir: &Path) -> Option<Kernel> {
    let vmlinuz = std::fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
    let version = vmlinuz.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let modules = dir.join("lib/modules").join(version).join("kernel");
    MODULES
        .iter()
        .all(|m| modules.join(m).is_file())
        .then_some(Kernel { vmlinuz, modules })
}

/// Where downloaded kernels are kept between runs.
fn cache_dir() -> PathBuf {
    option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("msb-vm-kernel")
}

/// Fetches the kernel package `linux-image-cloud-amd64` depends on and
/// unpacks it (no root needed, nothing installed).
fn fetch_kernel(dest: &Path) -> Result<(), String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or("apt-cache names no kernel package for linux-image-cloud-amd64")?
        .to_string();
    let work = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let status = Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&work)
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !status.success() {
        return Err(format!("apt-get download {pkg} failed"));
    }
    let deb = std::fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no package")?;
    let tree = work.join("tree");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .status()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !status.success() {
        return Err("dpkg-deb -x failed".into());
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tree, dest).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The guest kernel: `$MSB_VM_KERNEL` (an unpacked kernel package) if set,
/// else one fetched once into a cache. `Err` says why there is none.
pub fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("MSB_VM_KERNEL") {
                let dir = PathBuf::from(dir);
                return find_kernel(&dir).ok_or(format!(
                    "MSB_VM_KERNEL={} holds no usable kernel",
                    dir.display()
                ));
            }
            let cache = cache_dir();
            if let Some(k) = find_kernel(&cache) {
                return Ok(k);
            }
            fetch_kernel(&cache)?;
            find_kernel(&cache).ok_or("the fetched kernel package is unusable".into())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Why a QEMU guest cannot run here, if it cannot.
pub fn missing_qemu() -> Option<String> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    None
}

/// A `newc` cpio archive, as the kernel unpacks an initramfs. Written here
/// so that `/dev/console` can be in it without root.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    /// The archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// A virtio-fs share of the guest, mounted at `/mnt/<tag>`.
pub struct Share {
    /// The mount tag.
    pub tag: String,
    /// The vhost-user socket of its server.
    pub socket: PathBuf,
}

/// Shell helpers the guest script can use: each check prints one
/// `MSB-OK name` or `MSB-FAIL name: detail` line.
const HELPERS: &str = r#"
ok() { echo "MSB-OK $1"; }
bad() { echo "MSB-FAIL $1: $2"; }
# check NAME CMD...: CMD succeeds.
check() { n=$1; shift; if out=$("$@" 2>&1); then ok "$n"; else bad "$n" "$out"; fi; }
# fails NAME MESSAGE CMD...: CMD fails and says MESSAGE.
fails() { n=$1; m=$2; shift 2; out=$("$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && echo "$out" | grep -q "$m"; then ok "$n"; else bad "$n" "rc $rc: $out"; fi; }
# eq NAME WANT GOT
eq() { if [ "$3" = "$2" ]; then ok "$1"; else bad "$1" "want '$2' got '$3'"; fi; }
"#;

/// An initramfs whose init mounts `tags` and runs `script` (with the
/// helpers above), then unmounts them and powers off. `extra` adds files.
pub fn initramfs(
    kernel: &Kernel,
    tags: &[&str],
    script: &str,
    extra: impl FnOnce(&mut Cpio),
) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        c.dir(d);
    }
    // Unprivileged guest users: `user` for `su user -c ...`, the others
    // for pjdfstest.
    c.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n\
          tests:x:1001:1001::/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    );
    c.file(
        "etc/group",
        0o644,
        b"root:x:0:\nuser:x:1000:\ntests:x:1001:\nnogroup:x:65534:\n",
    );
    // glibc programs look users up in these files only (a built-in module).
    c.file("etc/nsswitch.conf", 0o644, b"passwd: files\ngroup: files\n");
    c.chardev("dev/console", 5, 1);
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").expect("read /bin/busybox"),
    );
    c.symlink("bin/sh", "busybox");
    for m in MODULES {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        let data = std::fs::read(kernel.modules.join(m)).expect("read a kernel module");
        c.file(&format!("lib/modules/{name}"), 0o644, &data);
    }
    let mounts: String = tags
        .iter()
        .map(|t| format!("mountfs {t} /mnt/{t}\n"))
        .collect();
    let unmounts: String = tags.iter().map(|t| format!("umount /mnt/{t}\n")).collect();
    let init = format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in virtio_ring virtio virtio_mmio fuse virtiofs; do
  insmod /lib/modules/$m.ko || echo "MSB-FAIL insmod-$m: cannot load"
done
# Devices appear once virtio_mmio has probed them.
mountfs() {{
  mkdir -p $2; i=0
  until mount -t virtiofs $1 $2 2>/dev/null; do
    i=$((i+1)); [ $i -gt 200 ] && {{ echo "MSB-FAIL mount-$1: no share"; return 1; }}
    sleep 0.05
  done
}}
{HELPERS}
{mounts}
echo MSB-READY
. /test.sh
cd /
sync
{unmounts}
echo MSB-DONE
poweroff -f
"#
    );
    c.file("init", 0o755, init.as_bytes());
    c.file("test.sh", 0o644, script.as_bytes());
    extra(&mut c);
    c.finish()
}

/// The host's TSC frequency in kHz, which the guest would otherwise
/// calibrate (under TCG, on a loaded host, that sometimes hangs).
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The QEMU command line of a guest with `shares`: microvm, guest memory
/// shared with the vhost-user servers, TCG.
pub fn qemu_command(kernel: &Kernel, initrd: &Path, shares: &[Share], mem_mb: u32) -> Command {
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    if let Some(khz) = tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,memory-backend=mem", "-object"])
        .arg(format!(
            "memory-backend-memfd,id=mem,size={mem_mb}M,share=on"
        ))
        .args(["-m", &format!("{mem_mb}M")])
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
        .args([
            "-no-reboot",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append]);
    for (i, s) in shares.iter().enumerate() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=fs{i},path={}", s.socket.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-fs-device,chardev=fs{i},tag={},queue-size=1024",
                s.tag
            ));
    }
    cmd
}

/// Runs a guest to its end and returns its console output; `Err` on a
/// timeout (the guest is killed) or if QEMU cannot start.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).replace('\r', "")
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let timed_out = loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break false;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if timed_out {
        return Err(format!(
            "the guest did not finish in {timeout:?}\nconsole:\n{out}\nqemu:\n{err}"
        ));
    }
    if !out.contains("MSB-DONE") {
        return Err(format!(
            "the guest did not finish\nconsole:\n{out}\nqemu:\n{err}"
        ));
    }
    Ok(out)
}

/// The results of the guest's checks: names that passed, and failures
/// with their detail.
pub fn results(console: &str) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for line in console.lines() {
        if let Some(n) = line.strip_prefix("MSB-OK ") {
            ok.push(n.trim().to_string());
        } else if let Some(f) = line.strip_prefix("MSB-FAIL ") {
            failed.push(f.trim().to_string());
        }
    }
    (ok, failed)
}

/// A guest running in the background.
pub struct Guest {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Guest {
    /// Starts QEMU; its console lines arrive through [`Guest::wait_for`].
    pub fn spawn(mut cmd: Command) -> Guest {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start QEMU");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line.replace('\r', "")).is_err() {
                    return;
                }
            }
        });
        Guest { child, lines }
    }

    /// Waits for a console line containing `marker`.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        let mut seen = String::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(marker) => return Ok(()),
                Ok(l) => {
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => return Err(format!("no {marker:?} on the console:\n{seen}")),
            }
        }
    }

    /// SIGKILLs QEMU and reaps it.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
