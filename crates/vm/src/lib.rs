//! The microVM backend's host side: the guest kernel (Debian's cloud
//! kernel, cached), an initramfs holding the static guest agent
//! (`msb-agent`) as PID 1, QEMU (microvm, KVM where a probe proved it works,
//! else TCG), and a [`Vm`] handle speaking the `msb-agent-protocol` control
//! channel over a virtio-serial port.
//!
//! ```no_run
//! use msb_vm::{ExecSpec, GuestPlan, Vm, VmConfig};
//! let vm = Vm::boot(&VmConfig::default(), &GuestPlan::default())?;
//! let out = vm.exec(ExecSpec::new(["true"]))?.output()?;
//! assert_eq!(out.status, 0);
//! vm.shutdown(std::time::Duration::from_secs(5))?;
//! # Ok::<(), msb_vm::VmError>(())
//! ```
//!
//! A [`Vm`] is `Send + Sync`: a supervisor can share it (in an `Arc`) among
//! threads serving `exec` requests; each [`Exec`] streams its own events
//! while clones of its [`ExecControl`] send stdin, signals and resizes.
//!
//! The VM's file servers are not started here: the caller runs them and
//! passes their vhost-user sockets as [`Share`]s.

mod assets;
mod initramfs;
mod probe;
mod qemu;
mod sandbox;
mod vm;

pub use assets::{AssetsError, GUEST_MODULES, Kernel, assets_dir};
pub use initramfs::{AGENT, Cpio, InitramfsEntry, InitramfsError};
pub use msb_agent_protocol::{
    ExecId, GuestFile, GuestMount, GuestPlan, MountSource, RootPlan, Security,
};
pub use probe::kvm_works;
pub use qemu::{Accel, Disk, DiskFormat, QemuError, Share};
pub use sandbox::{SandboxError, VmBackend, VmSandbox, auto_picks_vm};
pub use vm::{Exec, ExecControl, ExecEvent, ExecOutput, ExecSpec, Vm, VmConfig, VmError};

#[cfg(test)]
mod tests {
    /// A supervisor shares one `Vm` among the threads serving its clients.
    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<super::Vm>();
        send_sync::<super::ExecControl>();
        send::<super::Exec>();
    }
}
