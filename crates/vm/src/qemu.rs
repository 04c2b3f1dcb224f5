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

/// Initcalls of Debian's kernel that cost time under TCG and matter not to
/// a sandbox (measured with initcall_debug): the jitter entropy self-test,
/// the certificate list, kprobe tracing's setup and a KDF self-test.
const INITCALL_BLACKLIST: &str =
    "jent_mod_init,load_system_certificate_list,init_kprobe_trace,crypto_kdf108_init";

/// The descriptor number QEMU finds the control socket at.
const CONTROL_FD: i32 = 3;
/// The descriptor number QEMU finds the console socket at.
const CONSOLE_FD: i32 = 4;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// qcow2.
    Qcow2,
    /// VMDK.
    Vmdk,
}

impl DiskFormat {
    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

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
}

/// Doubles commas, QEMU's escape inside option values.
fn esc(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
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

    /// QEMU's arguments; the control socket is expected at descriptor 3.
    pub fn args(&self) -> Result<Vec<OsString>, QemuError> {
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
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            _ => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
        }
        let mem = format!("{}M", self.memory_mib);
        push(&["-smp", &self.cpus.to_string(), "-m", &mem]);
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ]);
        push(&[
            "-kernel",
            &esc(self.kernel),
            "-initrd",
            &esc(self.initramfs),
            "-append",
            &self.cmdline(),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=con,fd={CONSOLE_FD}"),
            "-serial",
            "chardev:con",
        ]);
        push(&["-device", "virtio-serial-device,max_ports=2"]);
        push(&["-chardev", &format!("socket,id=ctl,fd={CONTROL_FD}")]);
        push(&[
            "-device",
            &format!("virtserialport,chardev=ctl,name={CONTROL_PORT_NAME}"),
        ]);
        for (i, share) in self.shares.iter().enumerate() {
            push(&[
                "-chardev",
                &format!("socket,id=fs{i},path={}", esc(&share.socket)),
            ]);
            push(&[
                "-device",
                &format!(
                    "vhost-user-fs-device,chardev=fs{i},tag={}",
                    share.tag.replace(',', ",,")
                ),
            ]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if disk.serial.len() > 20 {
                return Err(QemuError::SerialTooLong(disk.serial.clone()));
            }
            let ro = if disk.readonly { "on" } else { "off" };
            push(&[
                "-drive",
                &format!(
                    "file={},format={},if=none,id=disk{i},readonly={ro}",
                    esc(&disk.path),
                    disk.format.name()
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
        Ok(a.into_iter().map(OsString::from).collect())
    }

    /// Starts QEMU with `control` as its control socket and `console` as
    /// the serial console. QEMU gets SIGKILL when the calling thread ends,
    /// so call this from a thread that lives as long as the VM.
    pub fn spawn(
        &self,
        control: &OwnedFd,
        console: &OwnedFd,
    ) -> Result<std::process::Child, QemuError> {
        let args = self.args()?;
        let log = fs::File::create(self.qemu_log)
            .map_err(|e| QemuError::File(self.qemu_log.to_owned(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| QemuError::File(self.qemu_log.to_owned(), e))?;
        let (control_fd, console_fd) = (control.as_raw_fd(), console.as_raw_fd());
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut cmd = Command::new(self.qemu);
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, syscall, prctl,
        // getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Fresh copies above the targets first, so neither dup2
                // clobbers the other source.
                let control = libc::fcntl(control_fd, libc::F_DUPFD_CLOEXEC, 10);
                let console = libc::fcntl(console_fd, libc::F_DUPFD_CLOEXEC, 10);
                if control < 0
                    || console < 0
                    || libc::dup2(control, CONTROL_FD) < 0
                    || libc::dup2(console, CONSOLE_FD) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Nothing else the supervisor has open reaches QEMU; marking
                // instead of closing keeps std's exec error pipe working.
                // Kernels before 5.11 lack the call; the descriptors are
                // then only as leaky as without it.
                libc::syscall(
                    libc::SYS_close_range,
                    CONSOLE_FD + 1,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| QemuError::Spawn(self.qemu.to_owned(), e))
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
