//! Shared setup of the VM tests: real QEMU, the real Debian kernel (fetched
//! once into a shared cache), busybox in the initramfs for a root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_vm::{Accel, ExecOutput, ExecSpec, InitramfsEntry, Vm, VmConfig};

/// Programs linked to busybox in the test initramfs.
const APPLETS: &[&str] = &[
    "sh", "true", "false", "cat", "echo", "sleep", "mount", "stty", "touch", "cp", "grep",
    "hostname", "pwd", "ls", "kill", "head", "wc", "test", "sync", "tr", "env",
];

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The shared asset cache: `$MSB_VM_ASSETS`, else one under the target
/// directory, so the kernel is fetched once for all test runs.
pub fn assets() -> PathBuf {
    std::env::var_os("MSB_VM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-assets"))
}

/// A config for a guest whose root is the initramfs with busybox in it;
/// `None` (with the reason printed) where QEMU or busybox is missing.
pub fn busybox_config(test: &str) -> Option<VmConfig> {
    let qemu = std::env::var_os("MSB_QEMU")
        .map(PathBuf::from)
        .or_else(|| on_path("qemu-system-x86_64"));
    let Some(qemu) = qemu else {
        eprintln!("skipping {test}: qemu-system-x86_64 is not installed");
        return None;
    };
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        eprintln!("skipping {test}: /bin/busybox (busybox-static) is not installed");
        return None;
    }
    let mut extra = vec![
        InitramfsEntry::Dir {
            path: "/bin".into(),
            mode: 0o755,
        },
        InitramfsEntry::File {
            path: "/bin/busybox".into(),
            source: busybox.into(),
            mode: 0o755,
        },
    ];
    for applet in APPLETS {
        extra.push(InitramfsEntry::Symlink {
            path: format!("/bin/{applet}"),
            target: "busybox".into(),
        });
    }
    Some(VmConfig {
        // Everything here must pass under TCG, which CI has.
        accel: Accel::Tcg,
        qemu: Some(qemu),
        assets_dir: Some(assets()),
        initramfs_extra: extra,
        boot_timeout: Duration::from_secs(90),
        ..VmConfig::default()
    })
}

/// Runs a command to its end.
pub fn run(vm: &Vm, argv: &[&str]) -> ExecOutput {
    vm.exec(ExecSpec::new(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .output()
        .unwrap()
}

/// Runs `sh -c script` and returns its stdout, asserting it exits 0.
pub fn sh(vm: &Vm, script: &str) -> String {
    let out = run(vm, &["sh", "-c", script]);
    assert_eq!(
        out.status,
        0,
        "{script}: stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
