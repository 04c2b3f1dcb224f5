//! `msb doctor`: which backends work on this host, and why not. Each
//! backend is tried for real (a sandbox runs `true`), then what it rests on
//! is listed.

use std::process::ExitCode;

use msb::{BackendKind, RunBuilder};
use serde::Serialize;

use super::CliResult;

/// Arguments of `msb doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One backend's verdict.
#[derive(Debug, Serialize)]
struct Verdict {
    backend: &'static str,
    works: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What it rests on: (what, state).
    facts: Vec<(String, String)>,
}

fn try_backend(kind: BackendKind) -> (bool, Option<String>) {
    let run = RunBuilder::new("true").backend(kind).output();
    let out = tokio::runtime::Builder::new_current_thread()
        .build()
        .map(|rt| rt.block_on(run));
    match out {
        Ok(Ok(o)) if o.status == 0 => (true, None),
        Ok(Ok(o)) => (
            false,
            Some(format!(
                "`true` exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        ),
        Ok(Err(e)) => (false, Some(super::chain(&e))),
        Err(e) => (false, Some(e.to_string())),
    }
}

fn yes_no(ok: bool, yes: &str, no: &str) -> String {
    if ok { yes.to_string() } else { no.to_string() }
}

fn openable(path: &str, write: bool) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .is_ok()
}

fn namespace() -> Verdict {
    let (works, error) = try_backend(BackendKind::Namespace);
    let root = rustix::process::geteuid().is_root();
    let cgroups = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| !c.trim().is_empty())
    {
        "v2"
    } else if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
        "v1"
    } else {
        "none found"
    };
    Verdict {
        backend: "namespace",
        works,
        error,
        facts: vec![
            (
                "mode".into(),
                yes_no(
                    root,
                    "rootful (each sandbox runs as ids of its own; files are stored as 1878982656..)",
                    "rootless (the sandbox's root is you)",
                ),
            ),
            (
                "limits (cgroups)".into(),
                if root {
                    cgroups.to_string()
                } else {
                    "not applied rootless".into()
                },
            ),
            (
                "served mounts (/dev/fuse)".into(),
                yes_no(
                    openable("/dev/fuse", true),
                    "yes",
                    "no: /dev/fuse cannot be opened",
                ),
            ),
            (
                "disk images (loop devices)".into(),
                yes_no(
                    root && openable("/dev/loop-control", true),
                    "yes",
                    "no: needs root and /dev/loop-control",
                ),
            ),
        ],
    }
}

fn vm() -> Verdict {
    let qemu = std::process::Command::new(
        std::env::var_os("MSB_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()),
    )
    .arg("--version")
    .output()
    .ok()
    .filter(|o| o.status.success())
    .and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .map(str::to_string)
    });
    let assets = msb_vm::assets_dir();
    let (works, error) = if qemu.is_some() {
        try_backend(BackendKind::Vm)
    } else {
        (
            false,
            Some("qemu-system-x86_64 is not installed (scripts/setup installs it)".into()),
        )
    };
    let kvm = if !openable("/dev/kvm", true) {
        "no /dev/kvm (or no access): TCG".to_string()
    } else if msb_vm::auto_picks_vm() {
        "works: KVM".to_string()
    } else {
        "a probe boot failed under /dev/kvm: TCG".to_string()
    };
    let kernel = match msb_vm::Kernel::at(&assets.join("kernel")) {
        Ok(k) => format!("{} in {}", k.release, assets.display()),
        Err(_) => format!(
            "not fetched yet (the first VM fetches it into {})",
            assets.display()
        ),
    };
    Verdict {
        backend: "vm",
        works,
        error,
        facts: vec![
            ("qemu".into(), qemu.unwrap_or_else(|| "not found".into())),
            ("guest kernel".into(), kernel),
            ("acceleration".into(), kvm),
        ],
    }
}

pub fn run(args: DoctorArgs) -> CliResult {
    let verdicts = [namespace(), vm()];
    let auto = if verdicts[1].works && msb_vm::auto_picks_vm() {
        "vm"
    } else {
        "namespace"
    };
    if args.json {
        let v = serde_json::json!({ "backends": verdicts, "auto": auto });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for v in &verdicts {
            let state = match &v.error {
                None => "works".to_string(),
                Some(e) => format!("does not work: {e}"),
            };
            println!("{} backend: {state}", v.backend);
            for (what, fact) in &v.facts {
                println!("  {what}: {fact}");
            }
        }
        println!("--backend auto picks: {auto}");
    }
    let any = verdicts.iter().any(|v| v.works);
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
