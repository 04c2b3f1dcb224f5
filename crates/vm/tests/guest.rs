//! One VM, many checks: the guest agent's exec semantics, streams, pty,
//! signals, mounts and shutdown, under TCG with the real kernel.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{busybox_config, run, sh};
use msb_vm::{
    Disk, DiskFormat, ExecEvent, ExecSpec, GuestMount, GuestPlan, MountSource, Security, Vm,
    VmError,
};

/// Room for the boot messages, not for what the test floods in.
const CONSOLE_CAP: u64 = 64 << 10;

fn mount(path: &str, source: MountSource, ro: bool, noexec: bool) -> GuestMount {
    GuestMount {
        guest_path: path.into(),
        source,
        ro,
        noexec,
        nosuid: true,
        nodev: true,
    }
}

/// An ext4 image holding `hello`, made by mke2fs without mounting.
fn ext4_image(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let content = dir.join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), "from the disk\n").unwrap();
    let image = dir.join("disk.img");
    let ok = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(image)
}

#[test]
fn one_guest_many_checks() {
    let Some(mut config) = busybox_config("one_guest_many_checks") else {
        return;
    };
    config.console_cap = CONSOLE_CAP;
    // A filesystem module beyond the default set, loaded at boot.
    config.extra_modules = vec!["isofs".into()];
    let dir = tempfile::tempdir().unwrap();
    let mut mounts = vec![
        mount("/mnt/ro", MountSource::Tmpfs { size_mib: 4 }, true, false),
        mount(
            "/mnt/noexec",
            MountSource::Tmpfs { size_mib: 8 },
            false,
            true,
        ),
        mount(
            "/mnt/small",
            MountSource::Tmpfs { size_mib: 1 },
            false,
            false,
        ),
    ];
    let image = ext4_image(dir.path());
    match &image {
        Some(image) => {
            config.disks.push(Disk {
                path: image.clone(),
                format: DiskFormat::Raw,
                readonly: true,
                serial: "msb-data0".into(),
            });
            mounts.push(mount(
                "/disk",
                MountSource::Block {
                    serial: "msb-data0".into(),
                    fstype: "ext4".into(),
                },
                true,
                false,
            ));
        }
        None => eprintln!("one_guest_many_checks: mke2fs missing, skipping the disk checks"),
    }
    let plan = GuestPlan {
        hostname: "guest-one".into(),
        root: None,
        mounts,
        workdir: "/tmp".into(),
        env: vec!["PATH=/bin".into(), "FROM_PLAN=plan".into()],
        // Every check below also holds for a confined command (started by
        // fork rather than posix_spawn), the pty's included.
        security: Some(Security::Default),
    };
    let started = Instant::now();
    let vm = Vm::boot(&config, &plan).unwrap();
    eprintln!("booted in {:?}", started.elapsed());

    // The plan's profile: the filter, the default capability set.
    assert_eq!(
        sh(
            &vm,
            "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'"
        ),
        "CapEff:00000000a00405fb\nNoNewPrivs:0\nSeccomp:2\n"
    );

    // Exit statuses.
    assert_eq!(run(&vm, &["true"]).status, 0);
    assert_eq!(run(&vm, &["false"]).status, 1);
    assert_eq!(run(&vm, &["sh", "-c", "exit 7"]).status, 7);

    // stdout and stderr apart.
    let out = run(&vm, &["sh", "-c", "echo out; echo err >&2; echo more"]);
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\nmore\n"[..], &b"err\n"[..])
    );

    // Environment, workdir, hostname from the plan and the exec.
    let mut spec = ExecSpec::new(["sh", "-c", "echo $FROM_PLAN $FROM_EXEC; pwd; hostname"]);
    spec.env = vec!["FROM_EXEC=exec".into()];
    let out = vm.exec(spec).unwrap().output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "plan exec\n/tmp\nguest-one\n"
    );
    let mut spec = ExecSpec::new(["pwd"]);
    spec.workdir = Some("/proc".into());
    assert_eq!(vm.exec(spec).unwrap().output().unwrap().stdout, b"/proc\n");

    // Start failures: 127 for a missing program, 126 for a missing workdir.
    match vm.exec(ExecSpec::new(["/no/such/program"])) {
        Err(VmError::StartFailed { code: 127, .. }) => {}
        other => panic!("missing program gave {other:?}"),
    }
    match vm.exec(ExecSpec::new(["no-such-program-on-path"])) {
        Err(VmError::StartFailed { code: 127, .. }) => {}
        other => panic!("missing program gave {other:?}"),
    }
    let mut spec = ExecSpec::new(["true"]);
    spec.workdir = Some("/nowhere".into());
    assert!(matches!(
        vm.exec(spec),
        Err(VmError::StartFailed { code: 126, .. })
    ));

    // A file that cannot be executed fails in the launcher's exec: 126.
    assert!(matches!(
        vm.exec(ExecSpec::new(["/proc/version"])),
        Err(VmError::StartFailed { code: 126, .. })
    ));

    // The launcher that starts confined commands is not dumpable: a
    // command (without CAP_SYS_PTRACE) cannot read its memory or
    // environment, nor trace it.
    // (The name is put together so that this script's own command line
    // does not hold it.)
    let probe = "name=msb; name=\"$name-launcher\"; for p in /proc/[0-9]*; do \
                     if grep -q \"$name\" $p/cmdline 2>/dev/null; then \
                         cat $p/environ >/dev/null 2>&1 && echo readable || echo refused; \
                     fi; \
                 done";
    assert_eq!(sh(&vm, probe), "refused\n");
    // A command may kill it (it is the guest's root); the next command
    // gets a new one, confined as before.
    run(&vm, &["sh", "-c", "kill -9 -1"]);
    assert_eq!(
        sh(
            &vm,
            "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'"
        ),
        "CapEff:00000000a00405fb\nNoNewPrivs:0\nSeccomp:2\n"
    );

    // stdin round trip, larger than one frame and than a pipe buffer.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut spec = ExecSpec::new(["cat"]);
    spec.stdin = true;
    let cat = vm.exec(spec).unwrap();
    let control = cat.control();
    let feed = data.clone();
    let writer = std::thread::spawn(move || {
        control.write_stdin(&feed).unwrap();
        control.close_stdin().unwrap();
    });
    let out = cat.output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status, 0);
    assert!(
        out.stdout == data,
        "cat returned {} bytes, not the {} sent",
        out.stdout.len(),
        data.len()
    );

    // Signals: 128+N, whether sent by the host or by the command itself.
    let sleeper = vm.exec(ExecSpec::new(["sleep", "100"])).unwrap();
    sleeper.signal(libc::SIGKILL).unwrap();
    assert_eq!(sleeper.output().unwrap().status, 128 + libc::SIGKILL);
    let sleeper = vm.exec(ExecSpec::new(["sleep", "100"])).unwrap();
    sleeper.signal(libc::SIGTERM).unwrap();
    assert_eq!(sleeper.output().unwrap().status, 128 + libc::SIGTERM);
    assert_eq!(
        run(&vm, &["sh", "-c", "kill -SEGV $$"]).status,
        128 + libc::SIGSEGV
    );

    // Several commands at once, each with its own output.
    let execs: Vec<_> = (0..6)
        .map(|i| {
            vm.exec(ExecSpec::new([
                "sh",
                "-c",
                &format!("sleep 0.$((6 - {i})); echo n{i}; exit {i}"),
            ]))
            .unwrap()
        })
        .collect();
    for (i, exec) in execs.into_iter().enumerate() {
        let out = exec.output().unwrap();
        assert_eq!(
            (out.status, out.stdout),
            (i as i32, format!("n{i}\n").into_bytes())
        );
    }

    // The agent keeps only so many worker threads for later commands: after
    // more commands at once than it keeps, and after many in a row, its
    // thread count settles within main, reaper, kept workers and the one
    // serving the count itself.
    let bound = 2 + 8 + 1;
    let settles = |vm: &Vm| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = run(vm, &["sh", "-c", "ls /proc/1/task | wc -l"]);
            let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            if n <= bound {
                return;
            }
            assert!(Instant::now() < deadline, "the agent keeps {n} threads");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let execs: Vec<_> = (0..12)
        .map(|_| vm.exec(ExecSpec::new(["sleep", "0.5"])).unwrap())
        .collect();
    for exec in execs {
        assert_eq!(exec.output().unwrap().status, 0);
    }
    settles(&vm);
    for _ in 0..10 {
        assert_eq!(run(&vm, &["true"]).status, 0);
    }
    settles(&vm);

    // A background process that keeps the pipes open does not hold the exit back.
    let t = Instant::now();
    let out = run(&vm, &["sh", "-c", "sleep 30 & echo started"]);
    assert_eq!((out.status, out.stdout.as_slice()), (0, &b"started\n"[..]));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "exit report waited for the background process"
    );

    // PID 1 reaps orphans: no zombies after a double fork.
    sh(&vm, "(sleep 0.1 &) ; true");
    std::thread::sleep(Duration::from_millis(500));
    let zombies = sh(
        &vm,
        "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true",
    );
    assert_eq!(zombies.trim(), "0", "zombies left in the guest");

    // A pty with the asked window size, resized while it runs.
    let mut spec = ExecSpec::new([
        "sh",
        "-c",
        "test -t 0 && test -t 1 && stty size; read line; stty size",
    ]);
    spec.tty = Some((24, 80));
    spec.stdin = true;
    let tty = vm.exec(spec).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        match tty.next_event_timeout(Duration::from_secs(30)).unwrap() {
            Some(ExecEvent::Stdout(d)) => seen.extend(d),
            other => panic!(
                "tty gave {other:?} after {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    tty.resize(40, 132).unwrap();
    tty.write_stdin(b"go\n").unwrap();
    let out = tty.output().unwrap();
    assert_eq!(out.status, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("40 132"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stderr.is_empty(), "a tty merges stderr into its output");

    // tmpfs mounts with their options honoured.
    let ro = run(&vm, &["touch", "/mnt/ro/x"]);
    assert_ne!(ro.status, 0);
    assert!(
        String::from_utf8_lossy(&ro.stderr).contains("Read-only"),
        "{:?}",
        String::from_utf8_lossy(&ro.stderr)
    );
    sh(
        &vm,
        "cp /bin/busybox /mnt/noexec/bb && echo ok > /mnt/noexec/data",
    );
    let noexec = run(&vm, &["sh", "-c", "/mnt/noexec/bb true"]);
    assert_eq!(noexec.status, 126, "exec from noexec gave {noexec:?}");
    assert!(matches!(
        vm.exec(ExecSpec::new(["/mnt/noexec/bb"])),
        Err(VmError::StartFailed { code: 126, .. })
    ));
    let mounts = sh(&vm, "grep ' /mnt/' /proc/mounts");
    for (path, opts) in [
        ("/mnt/ro", "ro,nosuid,nodev"),
        ("/mnt/noexec", "rw,nosuid,nodev,noexec"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.contains(&format!("{path} tmpfs {opts}"))),
            "{path} not {opts}: {mounts}"
        );
    }
    let full = run(
        &vm,
        &["sh", "-c", "head -c 2000000 /dev/zero > /mnt/small/big"],
    );
    assert_ne!(full.status, 0, "a 1 MiB tmpfs took 2 MB");

    // The disk, found by its serial, read-only.
    if image.is_some() {
        assert_eq!(sh(&vm, "cat /disk/hello"), "from the disk\n");
        assert_ne!(run(&vm, &["touch", "/disk/new"]).status, 0);
    }

    // A guest flooding its console cannot fill the host's disk.
    let t = Instant::now();
    sh(&vm, "head -c 100000 /dev/zero | tr '\\0' x > /dev/console");
    let log = vm.console_log().to_owned();
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() < CONSOLE_CAP && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(size(), CONSOLE_CAP, "console log not capped");
    eprintln!("100 kB of console took {:?}", t.elapsed());

    // The extra module is loaded.
    assert!(sh(&vm, "cat /proc/filesystems").contains("iso9660"));

    // The channel itself.
    let rtt = vm.ping().unwrap();
    eprintln!("ping {rtt:?}");

    // Shutdown: one command ends on SIGTERM, one ignores it and is killed
    // after the grace period; both exits are reported.
    let polite = vm
        .exec(ExecSpec::new([
            "sh",
            "-c",
            "trap 'echo term; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
        ]))
        .unwrap();
    let stubborn = vm
        .exec(ExecSpec::new([
            "sh",
            "-c",
            "trap '' TERM; echo ready; sleep 100",
        ]))
        .unwrap();
    for exec in [&polite, &stubborn] {
        assert_eq!(
            exec.next_event_timeout(Duration::from_secs(30)).unwrap(),
            Some(ExecEvent::Stdout(b"ready\n".to_vec()))
        );
    }
    let grace = Duration::from_secs(2);
    let t = Instant::now();
    let status = vm.shutdown(grace).unwrap();
    let took = t.elapsed();
    assert!(status.success(), "QEMU ended with {status}");
    assert!(
        took >= grace && took < grace + Duration::from_secs(10),
        "shutdown took {took:?}"
    );
    let polite = polite.output().unwrap();
    assert_eq!(
        (polite.status, polite.stdout.as_slice()),
        (3, &b"term\n"[..])
    );
    assert_eq!(stubborn.output().unwrap().status, 128 + libc::SIGKILL);
    assert!(matches!(
        vm.exec(ExecSpec::new(["true"])),
        Err(VmError::Gone)
    ));
    let _ = std::io::stderr().flush();
}
