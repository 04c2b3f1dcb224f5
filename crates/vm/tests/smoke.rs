use msb_vm::*;
use std::time::{Duration, Instant};

#[test]
fn smoke() {
    let mut config = VmConfig { accel: Accel::Tcg, ..VmConfig::default() };
    config.initramfs_extra = vec![
        InitramfsEntry::Dir { path: "/bin".into(), mode: 0o755 },
        InitramfsEntry::File { path: "/bin/busybox".into(), source: "/bin/busybox".into(), mode: 0o755 },
    ];
    for a in ["sh", "true", "false", "cat", "echo", "sleep", "mount"] {
        config.initramfs_extra.push(InitramfsEntry::Symlink { path: format!("/bin/{a}"), target: "busybox".into() });
    }
    config.run_dir = Some("/tmp/vmsmoke".into());
    let plan = GuestPlan { env: vec!["PATH=/bin".into()], workdir: "/".into(), ..GuestPlan::default() };
    let t = Instant::now();
    let vm = Vm::boot(&config, &plan).unwrap();
    eprintln!("boot {:?}", t.elapsed());
    let t = Instant::now();
    let out = vm.exec(ExecSpec::new(["sh", "-c", "echo hi; exit 7"])).unwrap().output().unwrap();
    eprintln!("exec {:?} {:?}", t.elapsed(), out);
    eprintln!("ping {:?}", vm.ping());
    let t = Instant::now();
    eprintln!("shutdown {:?} {:?}", vm.shutdown(Duration::from_secs(1)), t.elapsed());
}
