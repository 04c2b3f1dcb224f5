//! The QEMU command line and the process: microvm with shared guest memory
//! (vhost-user needs it), the serial console to a log file, the control port,
//! virtio-fs shares and virtio-blk disks.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msb_agent_protocol::CONTROL_PORT_NAME;
use msb_security::child;

/// Initcalls of Debian's kernel that cost time under TCG and matter not to
/// a sandbox (measured with initcall_debug): the jitter entropy self-test,
/// the certificate list, kprobe tracing's setup and a KDF self-test.
const INITCALL_BLACKLIST: &str =
    "jent_mod_init,load_system_certificate_list,init_kprobe_trace,crypto_kdf108_init";

/// The descriptor number QEMU finds the control socket at; the console
/// follows, then every file [`Launch::spawn`] opens for QEMU, in order.
const FIRST_FD: i32 = 3;
/// The fd set holding `/dev/kvm`; disks take the ones after it.
const KVM_FDSET: usize = 0;
/// Where descriptors passed to QEMU are parked between fork and exec, above
/// every target number.
const PARK_FDS_AT: i32 = 256;

/// How guest code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM where a probe boot proved it works (cached per host), else TCG.
    #[default]
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// A virtio-fs share served by a running vhost-user server.
#[derive(Debug, Clone)]
pub struct Share {
    /// The tag the guest mounts it by.
    pub tag: String,
    /// The server's vhost-user socket.
    pub socket: PathBuf,
}

/// A disk image's format, read by QEMU's own drivers.
pub use msb_spec::DiskFormat;

/// A disk attached as virtio-blk.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub readonly: bool,
    /// The serial the guest finds it by (at most 20 bytes).
    pub serial: String,
}

/// Errors starting QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started.
    #[error("starting {0} failed")]
    Spawn(PathBuf, #[source] io::Error),
    /// Creating a file QEMU uses failed.
    #[error("creating {0} failed")]
    File(PathBuf, #[source] io::Error),
    /// A disk serial longer than virtio-blk keeps.
    #[error("disk serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// A file QEMU is handed could not be opened.
    #[error("opening {0} for QEMU failed")]
    Open(PathBuf, #[source] io::Error),
    /// A file server's socket could not be reached.
    #[error("connecting to the file server at {0} failed")]
    Connect(PathBuf, #[source] io::Error),
    /// A disk image names other files.
    #[error("refusing disk image {0}")]
    Image(PathBuf, #[source] msb_blockdev::ImageError),
}

/// The unprivileged ids QEMU runs as when msb runs as root (with no
/// supplementary groups).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Everything one QEMU run needs.
pub(crate) struct Launch<'a> {
    pub qemu: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub qemu_log: &'a Path,
    pub extra_cmdline: &'a [String],
    pub shares: &'a [Share],
    pub disks: &'a [Disk],
    pub run_as: Option<&'a RunAs>,
}

/// Descriptors QEMU inherits, and the numbers it finds them at.
struct Passed {
    files: Vec<OwnedFd>,
}

impl Passed {
    /// Hands `fd` to QEMU; returns the number QEMU sees it at.
    fn add(&mut self, fd: OwnedFd) -> i32 {
        self.files.push(fd);
        FIRST_FD + self.files.len() as i32 - 1
    }
}

/// The host TSC frequency in kHz, from /proc/cpuinfo; an emulated guest
/// given it skips a calibration that hangs now and then on a busy host.
fn host_tsc_khz() -> Option<u64> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
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

impl Launch<'_> {
    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        let mut c = vec![
            "console=ttyS0".to_owned(),
            "quiet".into(),
            "panic=-1".into(),
            "rdinit=/init".into(),
            "cryptomgr.notests".into(),
            "random.trust_cpu=on".into(),
            format!("initcall_blacklist={INITCALL_BLACKLIST}"),
        ];
        if self.accel == Accel::Tcg
            && let Some(khz) = host_tsc_khz()
        {
            c.push(format!("tsc_early_khz={khz}"));
        }
        c.extend(self.extra_cmdline.iter().cloned());
        c.join(" ")
    }

    /// QEMU's arguments, with every file it reads passed as a descriptor
    /// (opened here, by the caller, so QEMU itself needs no access to any
    /// path): QEMU runs as an unprivileged user and the msb home is not
    /// its to read. Disk images are checked to name no other file.
    fn args(
        &self,
        control: &OwnedFd,
        console: &OwnedFd,
    ) -> Result<(Vec<OsString>, Passed), QemuError> {
        let mut passed = Passed { files: Vec::new() };
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| QemuError::File(PathBuf::from("(socket)"), e))
        };
        let control_fd = passed.add(dup(control)?);
        let console_fd = passed.add(dup(console)?);
        let open_read = |path: &Path| {
            fs::File::open(path)
                .map(OwnedFd::from)
                .map_err(|e| QemuError::Open(path.to_owned(), e))
        };
        let kernel_fd = passed.add(open_read(self.kernel)?);
        let initramfs_fd = passed.add(open_read(self.initramfs)?);
        let kvm_fd = match self.accel {
            Accel::Kvm => {
                let kvm = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .map_err(|e| QemuError::Open("/dev/kvm".into(), e))?;
                Some(passed.add(OwnedFd::from(kvm)))
            }
            _ => None,
        };
        let mut share_fds = Vec::new();
        for share in self.shares {
            let sock = std::os::unix::net::UnixStream::connect(&share.socket)
                .map_err(|e| QemuError::Connect(share.socket.clone(), e))?;
            share_fds.push(passed.add(OwnedFd::from(sock)));
        }
        let mut disk_fds = Vec::new();
        for disk in self.disks {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(!disk.readonly)
                .open(&disk.path)
                .map_err(|e| QemuError::Open(disk.path.clone(), e))?;
            msb_blockdev::check_self_contained(&file, disk.format)
                .map_err(|e| QemuError::Image(disk.path.clone(), e))?;
            disk_fds.push(passed.add(OwnedFd::from(file)));
        }
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        // The guest is hostile and QEMU its first target: QEMU's own system
        // call filter (no exec, no change of ids, no obsolete calls). QEMU
        // keeps the caller's ids: dropping them would clear the parent-death
        // signal that ends it with its supervisor.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        push(&["-M", "microvm,memory-backend=mem"]);
        match kvm_fd {
            // Through an fd set: QEMU's user may not open /dev/kvm itself.
            Some(fd) => push(&[
                "-add-fd",
                &format!("fd={fd},set={KVM_FDSET}"),
                "-accel",
                &format!("kvm,device=/dev/fdset/{KVM_FDSET}"),
                "-cpu",
                "host",
            ]),
            None => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
        }
        let mem = format!("{}M", self.memory_mib);
        push(&["-smp", &self.cpus.to_string(), "-m", &mem]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        push(&[
            "-kernel",
            &format!("/proc/self/fd/{kernel_fd}"),
            "-initrd",
            &format!("/proc/self/fd/{initramfs_fd}"),
            "-append",
            &self.cmdline(),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=con,fd={console_fd}"),
            "-serial",
            "chardev:con",
        ]);
        push(&["-device", "virtio-serial-device,max_ports=2"]);
        push(&["-chardev", &format!("socket,id=ctl,fd={control_fd}")]);
        push(&[
            "-device",
            &format!("virtserialport,chardev=ctl,name={CONTROL_PORT_NAME}"),
        ]);
        for (i, (share, fd)) in self.shares.iter().zip(share_fds).enumerate() {
            push(&["-chardev", &format!("socket,id=fs{i},fd={fd}")]);
            push(&[
                "-device",
                &format!(
                    "vhost-user-fs-device,chardev=fs{i},tag={}",
                    share.tag.replace(',', ",,")
                ),
            ]);
        }
        for (i, (disk, fd)) in self.disks.iter().zip(disk_fds).enumerate() {
            if disk.serial.len() > 20 {
                return Err(QemuError::SerialTooLong(disk.serial.clone()));
            }
            // The descriptor goes through an fd set (QEMU reopens nothing
            // by path); the format layer may not open a backing file even
            // if the checked header had named one.
            let set = KVM_FDSET + 1 + i;
            push(&["-add-fd", &format!("fd={fd},set={set}")]);
            let backing = match disk.format {
                DiskFormat::Raw => "",
                DiskFormat::Qcow2 | DiskFormat::Vmdk => r#","backing":null"#,
            };
            push(&[
                "-blockdev",
                &format!(
                    r#"{{"driver":"{}","node-name":"disk{i}","read-only":{},"file":{{"driver":"file","filename":"/dev/fdset/{set}","read-only":{}}}{backing}}}"#,
                    disk.format.as_str(),
                    disk.readonly,
                    disk.readonly,
                ),
            ]);
            push(&[
                "-device",
                &format!(
                    "virtio-blk-device,drive=disk{i},serial={}",
                    disk.serial.replace(',', ",,")
                ),
            ]);
        }
        Ok((a.into_iter().map(OsString::from).collect(), passed))
    }

    /// Starts QEMU with `control` as its control socket and `console` as
    /// the serial console, as [`Launch::run_as`] where given. QEMU gets
    /// SIGKILL when the calling thread ends, so call this from a thread
    /// that lives as long as the VM.
    pub fn spawn(
        &self,
        control: &OwnedFd,
        console: &OwnedFd,
    ) -> Result<std::process::Child, QemuError> {
        let (args, passed) = self.args(control, console)?;
        let log = fs::File::create(self.qemu_log)
            .map_err(|e| QemuError::File(self.qemu_log.to_owned(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| QemuError::File(self.qemu_log.to_owned(), e))?;
        let sources: Vec<i32> = passed.files.iter().map(|f| f.as_raw_fd()).collect();
        let run_as = self.run_as.copied();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(self.qemu);
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, syscall, prctl,
        // getppid, _exit) between fork and exec, on data made before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(io::Error::last_os_error());
                // Park copies above every target first, so no dup2 below
                // clobbers a source still to be placed.
                let mut parked = [0i32; 64];
                if sources.len() > parked.len() {
                    return Err(io::Error::other("too many descriptors for QEMU"));
                }
                for (i, &fd) in sources.iter().enumerate() {
                    parked[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PARK_FDS_AT);
                    if parked[i] < 0 {
                        return fail();
                    }
                }
                for (i, &fd) in parked[..sources.len()].iter().enumerate() {
                    if libc::dup2(fd, FIRST_FD + i as i32) < 0 {
                        return fail();
                    }
                }
                // Nothing else the supervisor has open reaches QEMU; marking
                // instead of closing keeps std's exec error pipe working.
                // Kernels before 5.11 lack the call; the descriptors are
                // then only as leaky as without it.
                libc::syscall(
                    libc::SYS_close_range,
                    FIRST_FD + sources.len() as i32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if let Some(r) = &run_as {
                    child::take_ids(r.uid, r.gid)?;
                }
                child::die_with(parent)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| QemuError::Spawn(self.qemu.to_owned(), e));
        drop(passed);
        child
    }
}

/// Copies the guest console from `socket` into `log`, keeping at most
/// `cap` bytes: the guest is hostile and could otherwise fill the disk.
/// Reads on after the cap so the guest never stalls on a full console.
pub(crate) fn pump_console(mut socket: std::os::unix::net::UnixStream, log: &Path, cap: u64) {
    use std::io::{Read, Write};
    let Ok(mut file) = fs::File::create(log) else {
        return;
    };
    let (mut kept, mut dropped) = (0u64, 0u64);
    let mut buf = [0u8; 8192];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = cap.saturating_sub(kept).min(n as u64) as usize;
        if room > 0 && file.write_all(&buf[..room]).is_ok() {
            kept += room as u64;
        }
        dropped += (n - room) as u64;
    }
    if dropped > 0 {
        let _ = writeln!(file, "\n[msb: {dropped} more console bytes dropped]");
    }
}
