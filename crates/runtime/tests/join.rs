//! A sandbox without a command (wait mode) joined by other processes:
//! real namespaces, the standalone init. Needs root (skips with a reason
//! otherwise).

use std::path::Path;
use std::process::{Command, Stdio};

use msb_runtime::{
    Backend, InitProgram, NamespaceBackend, Running, SandboxSpec, SandboxStdio, Security, prepare,
};
use msb_spec::{GuestPath, Mount, MountOptions, MountTable};
use msb_store::Store;

fn root() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: namespace sandboxes need root");
        return false;
    }
    true
}

#[test]
fn wait_mode_needs_nothing_from_the_rootfs_and_stops_when_signalled() {
    if !root() {
        return;
    }
    // The layout mounted below is Debian's (merged /usr, dash as sh).
    if !Path::new("/usr/bin/dash").is_file() || !Path::new("/usr/lib64").is_dir() {
        eprintln!("skipped: needs /usr/bin/dash and /usr/lib64 (a Debian-like host)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let backend = NamespaceBackend::new(InitProgram {
        program: env!("CARGO_BIN_EXE_msb-sandbox-init").into(),
        args: Vec::new(),
    });
    // An empty root: no sleep, no shell. The shell joins through a mount.
    let rootfs = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("usr/lib", rootfs.path().join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", rootfs.path().join("lib64")).unwrap();
    let ro = MountOptions {
        readonly: true,
        ..MountOptions::default()
    };
    let mounts = [
        ("/usr/lib", "/usr/lib"),
        ("/usr/lib64", "/usr/lib64"),
        ("/bin/sh", "/usr/bin/dash"),
    ]
    .map(|(g, h)| (GuestPath::new(g).unwrap(), Mount::bind(h, ro)));
    let spec = SandboxSpec {
        rootfs: Some(rootfs.path().to_path_buf()),
        mounts: MountTable::new(mounts, Path::new("/")).unwrap(),
        command: Vec::new(),
        ..Default::default()
    };
    let mut prepared = prepare(&spec, &store, "sandbox:wait-test").unwrap();
    let mut stdio = SandboxStdio::default();
    stdio.passed.extend(prepared.take_passed_fds());
    stdio.shares.extend(prepared.take_shares());
    let mut sandbox = backend.start(&prepared.plan, stdio).unwrap();
    let init = sandbox.pid();

    // Joined from a helper thread; that thread's later children are ours again.
    let namespaces = msb_runtime::SandboxNamespaces::open(init).unwrap();
    let (inside, outside) = std::thread::spawn(move || {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo $$; [ -e /usr/bin/sleep ] || echo no-sleep"])
            .stdout(Stdio::piped());
        let inside = namespaces
            .spawn(&mut cmd, "/", Security::Default, 0)
            .unwrap()
            .wait_with_output()
            .unwrap();
        let outside = Command::new("readlink")
            .arg("/proc/self/ns/pid")
            .output()
            .unwrap();
        (inside, outside)
    })
    .join()
    .unwrap();
    let inside = String::from_utf8(inside.stdout).unwrap();
    let (pid, rest) = inside.split_once('\n').unwrap();
    assert!(pid.parse::<u32>().unwrap() < 100, "{inside}");
    assert_eq!(rest, "no-sleep\n");
    let outside = String::from_utf8(outside.stdout).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_eq!(
        outside.trim(),
        ours.to_str().unwrap(),
        "the thread stayed joined"
    );

    // Still up after the joined command ended, and after a signal that
    // does not mean stop; a stop signal ends it cleanly.
    sandbox
        .signal(rustix::process::Signal::USR1.as_raw())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let state = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap();
    let state = state.rsplit_once(')').unwrap().1.trim_start();
    assert!(!state.starts_with('Z'), "init ended on SIGUSR1: {state}");
    sandbox.signal(libc_sigterm()).unwrap();
    assert_eq!(sandbox.wait(false).unwrap(), 0);
    drop(sandbox);
    prepared.finish();
}

/// SIGTERM's number (libc is not a dependency of the tests).
fn libc_sigterm() -> i32 {
    rustix::process::Signal::TERM.as_raw()
}
