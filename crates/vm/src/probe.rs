//! Whether KVM works on this host: decided by one probe boot, not by the
//! device's presence (a paravirtual /dev/kvm can exist on which stock guest
//! kernels crash), and cached per host kernel and guest kernel.

use std::fs;
use std::path::Path;
use std::time::Duration;

use msb_agent_protocol::GuestPlan;

use crate::assets::Kernel;
use crate::qemu::Accel;
use crate::vm::{Vm, VmConfig};

/// How long a probe boot may take; KVM boots in about a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// True if a guest booted under KVM on this host (cached in `assets`).
pub fn kvm_works(assets: &Path, kernel: &Kernel, config: &VmConfig) -> bool {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cache = assets.join(format!("kvm-probe-{}-{}", host.trim(), kernel.release));
    match fs::read_to_string(&cache).as_deref() {
        Ok("works") => return true,
        Ok("fails") => return false,
        _ => {}
    }
    let probe = VmConfig {
        boot_timeout: PROBE_TIMEOUT,
        shares: Vec::new(),
        disks: Vec::new(),
        initramfs_extra: Vec::new(),
        run_dir: None,
        ..config.clone()
    };
    let works = match Vm::boot_with(&probe, &GuestPlan::default(), kernel, Accel::Kvm) {
        Ok(vm) => {
            let ok = vm.ping().is_ok();
            let _ = vm.shutdown(Duration::ZERO);
            ok
        }
        Err(_) => false,
    };
    // Best effort: without the cache the next boot probes again.
    let tmp = assets.join(format!(".kvm-probe-{}", std::process::id()));
    if fs::write(&tmp, if works { "works" } else { "fails" }).is_ok() {
        let _ = fs::rename(&tmp, &cache);
    }
    works
}
