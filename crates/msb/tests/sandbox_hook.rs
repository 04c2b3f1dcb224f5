//! A program that is its own sandbox helper: it calls
//! `msb::sandbox_init_hook()` first in `main`, so its named sandboxes' init
//! and supervisor are this very program, not the `msb` binary. (A test
//! without the harness, since the hook must run before anything else.)

use msb::{SandboxState, SandboxStore};

fn main() {
    msb::sandbox_init_hook();
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running sandboxes needs root");
        return;
    }
    // SAFETY: no other thread runs yet. `MSB_BIN` would take precedence
    // over the hook.
    unsafe { std::env::remove_var("MSB_BIN") };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(hooked_sandbox());
    println!("test hooked_sandbox ... ok");
}

async fn hooked_sandbox() {
    let home = tempfile::tempdir().unwrap();
    let store = SandboxStore::open(home.path()).unwrap();
    let sb = store
        .builder("hooked")
        .env("K", "v")
        .create()
        .await
        .unwrap();
    assert_eq!(sb.state(), SandboxState::Running);
    let pids = std::fs::read_to_string(home.path().join("run/sandboxes/hooked.pid")).unwrap();
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    for pid in pids.split_whitespace() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, me, "pid {pid} is not this program");
    }
    let out = sb.exec("sh", ["-c", "echo $K"]).await.unwrap();
    assert_eq!(
        out.stdout,
        b"v\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sb.stop().await.unwrap();
    assert_eq!(sb.state(), SandboxState::Stopped);
    store.remove("hooked").await.unwrap();
}
