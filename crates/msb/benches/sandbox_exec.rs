//! In-process named sandbox API, interleaved in one run: median round trip
//! of `Sandbox::exec("true")` against `nsenter` into the same namespaces
//! (the floor, a whole process), and of builder `create` (two mounts) +
//! first exec + stop. Needs root. Run with
//! `cargo bench -p msb --bench sandbox_exec`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msb::{Mount, MountOptions, NamedMode, NamedVolumeOptions, SandboxStore, VolumeName};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running sandboxes needs root");
        return;
    }
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("MSB_BIN", env!("CARGO_BIN_EXE_msb")) };
    let home = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    const REPS: usize = 50;
    rt.block_on(async {
        let store = SandboxStore::open(home.path()).unwrap();
        let ensure = |name: &str| {
            Mount::named_with(
                VolumeName::new(name).unwrap(),
                MountOptions::default(),
                NamedVolumeOptions {
                    mode: NamedMode::EnsureExists,
                    ..Default::default()
                },
            )
        };
        let warm = store
            .builder("warm")
            .volume("/data", ensure("data"))
            .create()
            .await
            .unwrap();
        let pids = std::fs::read_to_string(home.path().join("run/sandboxes/warm.pid")).unwrap();
        let init = pids.split_whitespace().next().unwrap().to_string();
        let (mut execs, mut floors, mut cycles) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..REPS {
            let t = Instant::now();
            let out = warm.exec("true", Vec::<String>::new()).await.unwrap();
            execs.push(t.elapsed());
            assert_eq!(out.status, 0);

            let t = Instant::now();
            let st = Command::new("nsenter")
                .args(["-t", &init, "-m", "-u", "-i", "-n", "-p", "-C", "--", "true"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            floors.push(t.elapsed());
            assert!(st.success());

            let name = format!("s{i}");
            let ro = MountOptions {
                readonly: true,
                ..MountOptions::default()
            };
            let t = Instant::now();
            let sb = store
                .builder(name.as_str())
                .volume("/data", ensure(&format!("vol{i}")))
                .volume("/host", Mount::bind(host.path(), ro))
                .create()
                .await
                .unwrap();
            sb.exec("true", Vec::<String>::new()).await.unwrap();
            sb.stop().await.unwrap();
            cycles.push(t.elapsed());
            store.remove(&name).await.unwrap();
        }
        store.force_remove("warm").await.unwrap();
        let (e, f, c) = (median(execs), median(floors), median(cycles));
        println!(
            "Sandbox::exec(true):        median {:.2} ms (nsenter floor {:.2} ms, ratio {:.2}) over {REPS} runs",
            ms(e),
            ms(f),
            ms(e) / ms(f)
        );
        println!(
            "create+exec+stop (API):     median {:.2} ms (two mounts) over {REPS} runs",
            ms(c)
        );
    });
}
