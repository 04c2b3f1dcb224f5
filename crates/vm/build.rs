//! Builds the guest agent as a static executable and leaves it in OUT_DIR,
//! where the library embeds it. A nested cargo with its own target
//! directory keeps `+crt-static` away from the rest of the workspace (a
//! target rustflag in .cargo/config.toml would apply to every crate).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest.join("../..");
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("agent-target");

    for dir in [
        "crates/agent",
        "crates/agent-protocol",
        "crates/security",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    let status = Command::new(cargo)
        .current_dir(&workspace)
        // --target keeps the flags off build scripts and proc macros;
        // --offline because the outer build already fetched every crate.
        .args([
            "build",
            "--offline",
            "--release",
            "-p",
            "msb-agent",
            "--target",
            &target,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\u{1f}-Cstrip=symbols",
        )
        .env_remove("RUSTFLAGS")
        // A plain build even when the outer one runs under clippy.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("running cargo to build msb-agent");
    assert!(status.success(), "building msb-agent failed");
    let built = target_dir.join(&target).join("release/msb-agent");
    std::fs::copy(&built, out.join("msb-agent")).expect("copying msb-agent into OUT_DIR");
}
