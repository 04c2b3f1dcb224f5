//! The named sandbox API: real supervisors, real namespaces, a real store
//! in a temporary home; the helper is the `msb` binary next to the test
//! executable.

use std::path::Path;
use tokio::io::AsyncWriteExt;

use msb::{
    BackendKind, DiskOptions, ExecError, ExecEvent, LifecycleError, Mount, MountOptions, NamedMode,
    NamedVolumeOptions, SandboxState, SandboxStore, VolumeName, VolumeStore,
};

/// A temporary MSB_HOME whose running sandboxes are stopped when it goes
/// away, so a failing test leaves no supervisor behind.
struct Home(tempfile::TempDir);

impl Home {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.path().join("run/sandboxes")) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid")
                && let Ok(pids) = std::fs::read_to_string(entry.path())
                && let Some(pid) = pids.split_whitespace().nth(1)
                && let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn home() -> Home {
    Home(tempfile::tempdir().unwrap())
}

/// Whether sandboxes can run here: as root, or rootless as a user the
/// kernel lets create user namespaces (printed when not).
fn sandboxes() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let rootless = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rootless {
        eprintln!("skipped: sandboxes need root or unprivileged user namespaces");
    }
    rootless
}

/// A named volume mount that creates the volume if it is missing.
fn ensure(name: &str, volume: NamedVolumeOptions) -> Mount {
    Mount::named_with(
        VolumeName::new(name).unwrap(),
        MountOptions::default(),
        NamedVolumeOptions {
            mode: NamedMode::EnsureExists,
            ..volume
        },
    )
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[tokio::test]
async fn create_exec_output_stop_start_remove() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    let sb = store
        .builder("web")
        .volume("/data", ensure("data", NamedVolumeOptions::default()))
        .env("GREETING", "hi")
        .workdir("/data")
        .create()
        .await
        .unwrap();
    assert_eq!(sb.state(), SandboxState::Running);
    assert_eq!(sb.volumes(), [VolumeName::new("data").unwrap()]);

    let out = sb
        .exec(
            "sh",
            [
                "-c",
                "pwd; echo $GREETING > f; cat f; echo oops >&2; echo $$ >&2; exit 3",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(text(&out.stdout), "/data\nhi\n");
    // Joined the sandbox's pid namespace: its pids are small.
    let (oops, pid) = text(&out.stderr).split_once('\n').unwrap();
    assert_eq!(oops, "oops");
    assert!(pid.trim().parse::<u32>().unwrap() < 100, "{pid}");
    // Per-command environment and working directory win over the sandbox's.
    let out = sb
        .command("sh")
        .args(["-c", "pwd; echo $GREETING"])
        .env("GREETING", "bye")
        .workdir("/")
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "/\nbye\n");

    sb.stop().await.unwrap();
    assert_eq!(sb.state(), SandboxState::Stopped);
    let err = sb.exec("true", Vec::<String>::new()).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::NotRunning(n) if n == "web"),
        "{err}"
    );
    // Stopped, it still holds its volume.
    let volumes = VolumeStore::open(home.path()).unwrap();
    let err = volumes.remove("data").await.unwrap_err();
    assert!(
        matches!(&err, msb::Error::VolumeInUse { users, .. } if users == &["sandbox:web"]),
        "{err}"
    );
    assert_eq!(volumes.users("data").await.unwrap(), ["sandbox:web"]);
    let handle = volumes.get("data").await.unwrap();
    assert_eq!(handle.users().await.unwrap(), ["sandbox:web"]);

    // Started again, from another directory, it mounts the same data.
    let sb = store.start("web").await.unwrap();
    let out = sb.exec("cat", ["/data/f"]).await.unwrap();
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));

    let got = store.get("web").await.unwrap();
    assert_eq!(got.name(), "web");
    assert_eq!(got.state(), SandboxState::Running);
    assert_eq!(got.config().env(), [("GREETING".into(), "hi".into())]);
    assert_eq!(got.config().workdir().unwrap().as_str(), "/data");
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    assert_eq!(names, ["web"]);

    let err = store.remove("web").await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::Running(n) if n == "web"),
        "{err}"
    );
    let err = store.start("web").await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::AlreadyRunning(n) if n == "web"),
        "{err}"
    );
    store.force_remove("web").await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
    let err = store.get("web").await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::NotFound(n) if n == "web"),
        "{err}"
    );
    // Removing the sandbox released the volume; its data stayed until now.
    assert_eq!(
        std::fs::read_to_string(home.path().join("volumes/data/f")).unwrap(),
        "hi\n"
    );
    volumes.remove("data").await.unwrap();
}

#[tokio::test]
async fn streaming_exec_delivers_output_before_the_command_ends() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    let sb = store.builder("stream").create().await.unwrap();
    let mut run = sb
        .exec_stream(
            "sh",
            [
                "-c",
                "echo ready; read line; echo got $line; echo done >&2; exit 4",
            ],
        )
        .await
        .unwrap();
    // The command is blocked reading its input, yet its first line is here.
    assert_eq!(
        run.next().await,
        Some(ExecEvent::Stdout(b"ready\n".to_vec()))
    );
    let mut stdin = run.take_stdin().unwrap().expect("piped input");
    stdin.write_all(b"ping\n").await.unwrap();
    drop(stdin);
    let rest = run.output().await.unwrap();
    assert_eq!(rest.status, 4);
    assert_eq!(text(&rest.stdout), "got ping\n");
    assert_eq!(text(&rest.stderr), "done\n");

    // A signalled command reports 128+N.
    let run = sb.exec_stream("sleep", ["100"]).await.unwrap();
    run.signal(15).unwrap();
    assert_eq!(run.wait().await.unwrap(), 128 + 15);

    let err = sb.exec("no-such-command", ["x"]).await.unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
    store.force_remove("stream").await.unwrap();
}

#[tokio::test]
async fn a_rootfs_without_sleep_starts_and_runs_commands() {
    if !sandboxes() {
        return;
    }
    // The layout mounted below is Debian's (merged /usr, dash as sh).
    if !Path::new("/usr/bin/dash").is_file() || !Path::new("/usr/lib64").is_dir() {
        eprintln!("skipped: needs /usr/bin/dash and /usr/lib64 (a Debian-like host)");
        return;
    }
    let home = home();
    let rootfs = tempfile::tempdir().unwrap();
    // Nothing in it but the layout: a shell and its libraries come from
    // the host through mounts, and there is no `sleep` anywhere.
    std::os::unix::fs::symlink("usr/lib", rootfs.path().join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", rootfs.path().join("lib64")).unwrap();
    let ro = MountOptions {
        readonly: true,
        ..MountOptions::default()
    };
    let store = SandboxStore::open(home.path()).unwrap();
    let sb = store
        .builder("bare")
        .rootfs(rootfs.path())
        .volume("/usr/lib", Mount::bind("/usr/lib", ro))
        .volume("/usr/lib64", Mount::bind("/usr/lib64", ro))
        .volume("/bin/sh", Mount::bind("/usr/bin/dash", ro))
        .create()
        .await
        .unwrap();
    let out = sb
        .exec(
            "/bin/sh",
            ["-c", "command -v sleep || echo no sleep; echo $$"],
        )
        .await
        .unwrap();
    assert_eq!(out.status, 0, "{}", text(&out.stderr));
    let (first, pid) = text(&out.stdout).split_once('\n').unwrap();
    assert_eq!(first, "no sleep");
    assert!(pid.trim().parse::<u32>().unwrap() < 100, "{pid}");
    assert!(!Path::new(&rootfs.path().join("usr/bin/sleep")).exists());
    sb.stop().await.unwrap();
    assert_eq!(sb.state(), SandboxState::Stopped);
    store.remove("bare").await.unwrap();
}

#[tokio::test]
async fn refusals_are_typed_and_leave_nothing_behind() {
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    let volumes = VolumeStore::open(home.path()).unwrap();

    let err = store
        .builder("bad name")
        .create_stopped()
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::InvalidName { .. }), "{err}");
    let err = store
        .builder("web")
        .volume("relative", Mount::tmpfs(Default::default()))
        .create_stopped()
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Mount(_)), "{err}");
    let err = store
        .builder("web")
        .env("A=B", "c")
        .create_stopped()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LifecycleError::Env(k) if k == "A=B"),
        "{err}"
    );

    // An existing ensure-exists volume that does not match is refused at
    // create, before anything is recorded.
    volumes.builder("q").quota_mib(8).create().await.unwrap();
    let err = store
        .builder("web")
        .volume(
            "/q",
            ensure(
                "q",
                NamedVolumeOptions {
                    quota_mib: Some(16),
                    ..Default::default()
                },
            ),
        )
        .volume("/fresh", ensure("fresh", NamedVolumeOptions::default()))
        .create_stopped()
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Incompatible(_)), "{err}");
    let msg = format!("{}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("quota 8 MiB, not quota 16 MiB"), "{msg}");
    assert!(store.list().await.unwrap().is_empty());
    assert!(volumes.get("fresh").await.is_err(), "provisioned anyway");
    // The matching request is accepted (rootless, where this user may not
    // serve a quota mount, as a microVM sandbox, which needs no root).
    let backend = if rustix::process::geteuid().is_root() {
        BackendKind::Namespace
    } else {
        BackendKind::Vm
    };
    store
        .builder("web")
        .backend(backend)
        .volume(
            "/q",
            ensure(
                "q",
                NamedVolumeOptions {
                    quota_mib: Some(8),
                    ..Default::default()
                },
            ),
        )
        .create_stopped()
        .await
        .unwrap();

    let err = store.builder("web").create_stopped().await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::AlreadyExists(n) if n == "web"),
        "{err}"
    );
    let err = store.start("nope").await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::NotFound(n) if n == "nope"),
        "{err}"
    );
    let err = store.remove("nope").await.unwrap_err();
    assert!(matches!(err, LifecycleError::NotFound(_)), "{err}");
    let sb = store.get("web").await.unwrap();
    assert_eq!(sb.state(), SandboxState::Stopped);
    let err = sb.exec("true", Vec::<String>::new()).await.unwrap_err();
    assert!(matches!(err, ExecError::NotRunning(_)), "{err}");
    store.remove("web").await.unwrap();
    volumes.remove("q").await.unwrap();
}

#[tokio::test]
async fn a_volume_created_for_a_sandbox_is_reused_by_later_starts() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    let create = Mount::named_with(
        VolumeName::new("own").unwrap(),
        MountOptions::default(),
        NamedVolumeOptions {
            mode: NamedMode::Create,
            ..Default::default()
        },
    );
    let sb = store
        .builder("owner")
        .volume("/own", create)
        .create()
        .await
        .unwrap();
    let out = sb.exec("sh", ["-c", "echo kept > /own/f"]).await.unwrap();
    assert_eq!(out.status, 0, "{}", text(&out.stderr));
    sb.stop().await.unwrap();
    // `create` applied once, at create: starting again mounts that volume.
    let sb = store.start("owner").await.unwrap();
    let out = sb.exec("cat", ["/own/f"]).await.unwrap();
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    store.force_remove("owner").await.unwrap();
    // Another sandbox asking to create it is refused: it exists.
    let err = store
        .builder("second")
        .volume(
            "/own",
            Mount::named_with(
                VolumeName::new("own").unwrap(),
                MountOptions::default(),
                NamedVolumeOptions {
                    mode: NamedMode::Create,
                    ..Default::default()
                },
            ),
        )
        .create_stopped()
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Provision { .. }), "{err}");
}

#[tokio::test]
async fn a_sandbox_that_cannot_start_is_not_kept() {
    if !sandboxes() {
        return;
    }
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    // An image holding no filesystem passes create's checks and fails to
    // mount at start.
    let image = home.path().join("blank.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let err = store
        .builder("broken")
        .volume("/v", ensure("made", NamedVolumeOptions::default()))
        .volume("/h", Mount::disk(&image, DiskOptions::default()))
        .create()
        .await
        .unwrap_err();
    if rustix::process::geteuid().is_root() {
        assert!(
            matches!(&err, LifecycleError::StartFailed { name, reason }
                if name == "broken" && reason.contains("blank.img holds no filesystem")),
            "{err}"
        );
    } else {
        // Rootless, create already knows: loop devices need root.
        let why = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            matches!(err, LifecycleError::Unstartable(_))
                && why.is_some_and(|w| w.contains("loop device, which only root may make")),
            "{err}"
        );
    }
    assert!(store.list().await.unwrap().is_empty());
    // The volume created for it went with it.
    let volumes = VolumeStore::open(home.path()).unwrap();
    assert!(volumes.get("made").await.is_err());
}

#[test]
fn handles_and_futures_can_move_between_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let home = home();
    let store = SandboxStore::open(home.path()).unwrap();
    send_sync(&store);
    send(&store.builder("x").create());
    send(&store.get("x"));
    let sb = async {
        let sb = store.get("x").await.unwrap();
        send_sync(&sb);
        send(&sb.exec("true", ["a"]));
        send(&sb.exec_stream("true", ["a"]));
        send(&sb.command("true").spawn_pty(None));
        send(&sb.stop());
    };
    // Only compiled: the store has no sandbox "x".
    drop(sb);
}
