//! Measures the microVM backend against its floors (run by scripts/bench-vm):
//!
//! 1. boot: `Vm::boot` plus running `true` to its exit report, against the
//!    same QEMU, kernel and initramfs whose `/init` powers off at once;
//! 2. exec: the round trip of `true` on a running VM, against one bare
//!    Ping/Pong on the same channel plus the guest's own fork+exec+wait of
//!    `true` (measured in the guest).
//!
//! With `BENCH_MSB=path/to/msb`, the same two through the `msb` binary
//! (`msb run --backend vm true`; `msb exec NAME true` on a VM sandbox whose
//! root is the host's /usr over virtio-fs, against the ping above plus the
//! guest's own fork+exec+wait of that `true`), and an idle sandbox's memory.
//!
//! `BENCH_SECURITY=default|restricted` runs the commands under that
//! profile.
//!
//! Needs qemu-system-x86_64 and /bin/busybox (busybox-static).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msb_vm::{Accel, ExecSpec, GuestPlan, InitramfsEntry, Vm, VmConfig, VmError};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let execs: u32 = std::env::var("BENCH_EXECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let accel = match std::env::var("BENCH_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("auto") => Accel::Auto,
        _ => Accel::Tcg,
    };
    let mut extra = vec![
        InitramfsEntry::Dir {
            path: "/bin".into(),
            mode: 0o755,
        },
        InitramfsEntry::File {
            path: "/bin/busybox".into(),
            source: "/bin/busybox".into(),
            mode: 0o755,
        },
        InitramfsEntry::Symlink {
            path: "/bin/true".into(),
            target: "busybox".into(),
        },
    ];
    let config = VmConfig {
        accel,
        initramfs_extra: extra.clone(),
        ..VmConfig::default()
    };
    // The floor: the same archive with an init that powers off at once
    // (a later cpio entry replaces an earlier one).
    extra.push(InitramfsEntry::Bytes {
        path: "/init".into(),
        contents: b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n".to_vec(),
        mode: 0o755,
    });
    let floor_config = VmConfig {
        initramfs_extra: extra,
        run_dir: std::env::var_os("BENCH_FLOOR_RUN_DIR").map(Into::into),
        ..config.clone()
    };
    // BENCH_SECURITY=default|restricted: commands run confined, as a
    // sandbox's do (spawned by fork instead of posix_spawn).
    let security = std::env::var("BENCH_SECURITY").ok().map(|s| {
        s.parse()
            .unwrap_or_else(|e: String| panic!("BENCH_SECURITY: {e}"))
    });
    let plan = GuestPlan {
        env: vec!["PATH=/bin".into()],
        workdir: "/".into(),
        security,
        ..GuestPlan::default()
    };

    println!("accel {accel:?}, {rounds} boots each, {execs} execs");
    let (mut floors, mut boots, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        match Vm::boot(&floor_config, &plan) {
            Err(VmError::DiedBeforeReady { status, .. }) if status.contains("exit status: 0") => {}
            other => panic!("the floor guest did not just power off: {other:?}"),
        }
        floors.push(t.elapsed());

        let t = Instant::now();
        let vm = Vm::boot(&config, &plan).expect("boot");
        let out = vm
            .exec(ExecSpec::new(["true"]))
            .expect("exec")
            .output()
            .expect("output");
        assert_eq!(out.status, 0);
        boots.push(t.elapsed());
        vm.shutdown(Duration::from_secs(1)).expect("shutdown");
        totals.push(t.elapsed());
    }
    let (floor, boot, total) = (median(floors), median(boots), median(totals));
    println!(
        "boot to exit of `true`: {:.0} ms; floor (init powers off at once): {:.0} ms; ratio {:.2}",
        ms(boot),
        ms(floor),
        boot.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "boot, `true` and shutdown until QEMU exits: {:.0} ms; ratio to the floor {:.2}",
        ms(total),
        total.as_secs_f64() / floor.as_secs_f64()
    );

    let vm = Vm::boot(&config, &plan).expect("boot");
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", vm.qemu_pid())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?");
    println!(
        "idle VM ({} MiB guest memory): QEMU {rss}",
        config.memory_mib
    );
    for _ in 0..5 {
        vm.exec(ExecSpec::new(["true"])).unwrap().output().unwrap();
        vm.ping().unwrap();
    }
    // Interleaved batches, so that load from elsewhere on the host weighs
    // on both sides alike; medians of the batches.
    let batch = 10;
    let (mut exec_t, mut ping_t, mut spawn_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..execs.div_ceil(batch) {
        let t = Instant::now();
        for _ in 0..batch {
            assert_eq!(
                vm.exec(ExecSpec::new(["true"]))
                    .unwrap()
                    .output()
                    .unwrap()
                    .status,
                0
            );
        }
        exec_t.push(t.elapsed() / batch);
        let t = Instant::now();
        for _ in 0..batch {
            vm.ping().unwrap();
        }
        ping_t.push(t.elapsed() / batch);
        let (spawn, failures) = vm.time_spawn(&["true"], batch).unwrap();
        assert_eq!(failures, 0);
        spawn_t.push(spawn);
    }
    let (exec, ping, spawn) = (median(exec_t), median(ping_t), median(spawn_t));
    vm.shutdown(Duration::from_secs(1)).unwrap();
    println!(
        "exec `true` round trip: {:.2} ms; ping {:.2} ms + guest fork+exec+wait {:.2} ms = {:.2} ms; ratio {:.2}",
        ms(exec),
        ms(ping),
        ms(spawn),
        ms(ping + spawn),
        exec.as_secs_f64() / (ping + spawn).as_secs_f64()
    );
    if let Some(msb) = std::env::var_os("BENCH_MSB") {
        msb_cli(Path::new(&msb), rounds, execs, floor, ping);
    }
}

/// The same measures through the `msb` binary: a sandbox with the real
/// root (the host's /usr over virtio-fs), the supervisor, the relay.
fn msb_cli(msb: &Path, rounds: usize, execs: u32, floor: Duration, ping: Duration) {
    let home = std::env::temp_dir().join(format!("msb-bench-vm-{}", std::process::id()));
    let run = |args: &[&str]| {
        let o = Command::new(msb)
            .args(args)
            .env("MSB_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .expect("run msb");
        assert!(
            o.status.success(),
            "msb {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        run(&["run", "--backend", "vm", "true"]);
        runs.push(t.elapsed());
    }
    let one_shot = median(runs);
    println!(
        "msb run --backend vm true: {:.0} ms; floor {:.0} ms; ratio {:.2}",
        ms(one_shot),
        ms(floor),
        one_shot.as_secs_f64() / floor.as_secs_f64()
    );
    run(&["create", "bench", "--backend", "vm"]);
    for _ in 0..5 {
        run(&["exec", "bench", "true"]);
    }
    let batch = 10;
    let (mut exec_t, mut spawn_t) = (Vec::new(), Vec::new());
    for _ in 0..execs.div_ceil(batch) {
        let t = Instant::now();
        for _ in 0..batch {
            run(&["exec", "bench", "true"]);
        }
        exec_t.push(t.elapsed() / batch);
        // The guest's own fork+exec+wait of the same `true`, timed inside.
        let script = format!(
            "a=$(date +%s%N); i=0; while [ $i -lt {batch} ]; do /usr/bin/true; i=$((i+1)); done; b=$(date +%s%N); echo $(( (b-a)/{batch} ))"
        );
        let ns: u64 = run(&["exec", "bench", "sh", "-c", &script])
            .trim()
            .parse()
            .expect("guest time");
        spawn_t.push(Duration::from_nanos(ns));
    }
    let (exec, spawn) = (median(exec_t), median(spawn_t));
    println!(
        "msb exec bench true: {:.2} ms; ping {:.2} ms + guest fork+exec+wait {:.2} ms = {:.2} ms; ratio {:.2}",
        ms(exec),
        ms(ping),
        ms(spawn),
        ms(ping + spawn),
        exec.as_secs_f64() / (ping + spawn).as_secs_f64()
    );
    let pids = std::fs::read_to_string(home.join("run/sandboxes/bench.pid")).unwrap_or_default();
    let rss = |pid: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    let mut it = pids.split_whitespace();
    let (qemu, supervisor) = (it.next().unwrap_or("0"), it.next().unwrap_or("0"));
    println!(
        "idle msb VM sandbox: QEMU {} MiB + supervisor (with the file servers) {} MiB",
        rss(qemu) / 1024,
        rss(supervisor) / 1024
    );
    run(&["rm", "-f", "bench"]);
    let _ = std::fs::remove_dir_all(&home);
}
