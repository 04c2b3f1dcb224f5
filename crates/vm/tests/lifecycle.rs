//! Faults around the VM's life: a guest kernel panic, a supervisor killed
//! with SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::busybox_config;
use msb_vm::{GuestPlan, Vm, VmError};

#[test]
fn kernel_panic_ends_the_boot_with_a_clear_error() {
    let Some(mut config) = busybox_config("kernel_panic_ends_the_boot_with_a_clear_error") else {
        return;
    };
    // No such init: the kernel finds no working init and panics.
    config.extra_cmdline = vec!["rdinit=/no-such-init".into(), "init=/no-such-init".into()];
    let t = Instant::now();
    let err = Vm::boot(&config, &GuestPlan::default()).unwrap_err();
    eprintln!("panic reported after {:?}: {err}", t.elapsed());
    match err {
        VmError::KernelPanic {
            message,
            console_log: _,
        } => {
            assert!(
                message.contains("init") || message.contains("VFS"),
                "{message}"
            )
        }
        other => panic!("expected a kernel panic, got {other}"),
    }
    // panic=-1 with -no-reboot: QEMU ended by itself, well before the boot timeout.
    assert!(t.elapsed() < config.boot_timeout);
}

const CHILD_ENV: &str = "MSB_VM_TEST_SUPERVISOR_CHILD";

fn alive(pid: u32) -> bool {
    // A zombie is as good as gone: it holds no guest and no memory.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent role spawns this same test as a child that boots a VM and
/// prints QEMU's pid, then SIGKILLs the child: QEMU must not survive it.
#[test]
fn killed_supervisor_leaves_no_qemu() {
    let Some(config) = busybox_config("killed_supervisor_leaves_no_qemu") else {
        return;
    };
    if std::env::var_os(CHILD_ENV).is_some() {
        let vm = Vm::boot(&config, &GuestPlan::default()).unwrap();
        println!("QEMU_PID {}", vm.qemu_pid());
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_supervisor_leaves_no_qemu",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest's own "test ... " may precede it on the line.
            if let Some((_, pid)) = line.split_once("QEMU_PID ") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let Ok(qemu_pid) = rx.recv_timeout(Duration::from_secs(120)) else {
        let _ = child.kill();
        panic!("the supervisor child booted no VM");
    };
    eprintln!(
        "supervisor child {} runs QEMU {qemu_pid}; killing the child",
        child.id()
    );
    assert!(alive(qemu_pid));
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("child killed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(qemu_pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {qemu_pid} outlived its killed supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next VM started clears the dead supervisor's run directory.
    let run_dir = std::env::temp_dir().join(format!("msb-vm-{}-0", child.id()));
    assert!(run_dir.exists(), "{} not where expected", run_dir.display());
    drop(Vm::boot(&config, &GuestPlan::default()).unwrap());
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

/// `Accel::Auto` boots with whatever works here: KVM only after a probe
/// boot proved it (cached per host), else TCG.
#[test]
fn auto_accel_boots_and_caches_the_kvm_probe() {
    let Some(mut config) = busybox_config("auto_accel_boots_and_caches_the_kvm_probe") else {
        return;
    };
    config.accel = msb_vm::Accel::Auto;
    let vm = Vm::boot(
        &config,
        &GuestPlan {
            env: vec!["PATH=/bin".into()],
            ..GuestPlan::default()
        },
    )
    .unwrap();
    eprintln!("auto picked {:?}", vm.accel());
    assert_eq!(common::run(&vm, &["true"]).status, 0);
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cached = std::fs::read_dir(common::assets())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("kvm-probe-"));
    assert_eq!(
        cached, kvm_usable,
        "a probe result is cached exactly when /dev/kvm is usable"
    );
    if !kvm_usable {
        assert_eq!(vm.accel(), msb_vm::Accel::Tcg);
    }
    assert!(vm.shutdown(Duration::from_secs(1)).unwrap().success());
}

/// QEMU refusing to start (here: more CPUs than the machine takes) ends
/// the boot with QEMU's own words, not a timeout.
#[test]
fn qemu_failing_to_start_says_why() {
    let Some(mut config) = busybox_config("qemu_failing_to_start_says_why") else {
        return;
    };
    // More virtual CPUs than the machine type takes.
    config.cpus = 100_000;
    let t = Instant::now();
    match Vm::boot(&config, &GuestPlan::default()) {
        Err(VmError::DiedBeforeReady { qemu_tail, .. }) => {
            assert!(qemu_tail.contains("CPUs"), "{qemu_tail}")
        }
        other => panic!("expected QEMU to refuse, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// A plan the guest cannot apply ends the boot with the guest's reason,
/// and the VM is gone.
#[test]
fn a_plan_the_guest_refuses_ends_the_boot() {
    let Some(config) = busybox_config("a_plan_the_guest_refuses_ends_the_boot") else {
        return;
    };
    let plan = GuestPlan {
        mounts: vec![msb_vm::GuestMount {
            guest_path: "/mnt/../escape".into(),
            source: msb_vm::MountSource::Tmpfs { size_mib: 1 },
            ro: false,
            noexec: false,
            nosuid: false,
            nodev: false,
        }],
        ..GuestPlan::default()
    };
    match Vm::boot(&config, &plan) {
        Err(VmError::Configure(message)) => {
            assert!(message.contains("/mnt/../escape"), "{message}")
        }
        other => panic!("expected the plan to be refused, got {other:?}"),
    }
}
