//! `msb create`, `msb ls`, `msb inspect`, `msb rm`: named sandboxes as
//! records in the store. A record holds the validated config with absolute
//! host paths, so the same sandbox means the same mounts from any directory,
//! and keeps every named volume it references in use until it is removed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::ValueEnum;
use msb_runtime::Security;
use msb_spec::{
    CliFlag, GuestPath, Mount, MountError, MountTable, NamedMode, VolumeName, parse_cli,
};
use msb_store::{SandboxRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::CliResult;

/// Arguments of `msb create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The sandbox's name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Root filesystem directory (default: the host's root, read-only).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// default or restricted (see `msb run --help`).
    #[arg(long, default_value = "default", value_parser = parse_security)]
    pub security: Security,
    /// SRC:DEST[:OPTS]: a path-like SRC is bind-mounted, else it names a
    /// volume (created as a directory volume if missing).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DEST[:OPTS]")]
    pub volumes: Vec<String>,
    /// HOST_DIR:DEST[:OPTS]: bind-mount a host directory.
    #[arg(long = "mount-dir", value_name = "SRC:DEST[:OPTS]")]
    pub mount_dirs: Vec<String>,
    /// HOST_FILE:DEST[:OPTS]: bind-mount a single host file.
    #[arg(long = "mount-file", value_name = "SRC:DEST[:OPTS]")]
    pub mount_files: Vec<String>,
    /// NAME:DEST[:OPTS] with kind=, size=, quota=, mode=existing|create|ensure.
    #[arg(long = "mount-named", value_name = "NAME:DEST[:OPTS]")]
    pub mount_named: Vec<String>,
    /// IMG:DEST[:OPTS] with format=raw|qcow2|vmdk, fstype=.
    #[arg(long = "mount-disk", value_name = "IMG:DEST[:OPTS]")]
    pub mount_disks: Vec<String>,
    /// PATH[:SIZE][:OPTS]: a fresh tmpfs.
    #[arg(long = "tmpfs", value_name = "PATH[:SIZE][:OPTS]")]
    pub tmpfs: Vec<String>,
}

/// Arguments of `msb ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Arguments of `msb inspect` and `msb rm`.
#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The sandbox's name.
    pub name: String,
}

/// Output format of `msb ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
}

/// What a sandbox record stores: everything `start` needs, validated, with
/// absolute host paths.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxConfig {
    rootfs: Option<PathBuf>,
    workdir: Option<GuestPath>,
    env: Vec<(String, String)>,
    security: Security,
    mounts: MountTable,
}

/// A sandbox as `ls` and `inspect` show it.
#[derive(Debug, Serialize)]
struct View {
    name: String,
    /// Sandboxes have no supervisor yet (`msb start` is not built), so every
    /// recorded sandbox is stopped.
    state: &'static str,
    created_at: String,
    volumes: Vec<VolumeName>,
    config: SandboxConfig,
}

fn parse_security(s: &str) -> Result<Security, String> {
    s.parse()
}

/// A usage error: printed, exit 2.
fn usage(msg: impl std::fmt::Display) -> CliResult {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

fn chain(e: &MountError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

fn sandbox_name(s: &str) -> Result<String, String> {
    VolumeName::new(s)
        .map(|n| n.as_str().to_string())
        .map_err(|e| format!("invalid sandbox name {s:?}: {e}"))
}

/// The arguments as a validated config, or a usage message.
fn config(args: &CreateArgs) -> Result<SandboxConfig, String> {
    let mut mounts = Vec::new();
    for (flag, specs) in [
        (CliFlag::Volume, &args.volumes),
        (CliFlag::MountDir, &args.mount_dirs),
        (CliFlag::MountFile, &args.mount_files),
        (CliFlag::MountNamed, &args.mount_named),
        (CliFlag::MountDisk, &args.mount_disks),
        (CliFlag::Tmpfs, &args.tmpfs),
    ] {
        for s in specs {
            mounts.push(parse_cli(flag, s).map_err(|e| chain(&e))?);
        }
    }
    let cwd = std::env::current_dir()
        .map_err(|e| format!("cannot resolve relative host paths: current directory: {e}"))?;
    let mounts = MountTable::new(mounts, &cwd).map_err(|e| chain(&e))?;
    let workdir = match args.workdir.as_deref() {
        None | Some("/") => None,
        Some(w) => Some(GuestPath::new(w).map_err(|e| format!("invalid --workdir: {e}"))?),
    };
    let mut env = Vec::new();
    for e in &args.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => return Err(format!("invalid --env {e:?}: expected K=V")),
        }
    }
    let rootfs = match &args.rootfs {
        Some(r) => Some(
            std::fs::canonicalize(r)
                .map_err(|e| format!("invalid --rootfs {}: {e}", r.display()))?,
        ),
        None => None,
    };
    Ok(SandboxConfig {
        rootfs,
        workdir,
        env,
        security: args.security,
        mounts,
    })
}

/// Errors of sandbox commands beyond the store's own.
#[derive(Debug, thiserror::Error)]
enum SandboxCliError {
    #[error("cannot provision volume {name} for {guest}")]
    Provision {
        name: VolumeName,
        guest: GuestPath,
        #[source]
        source: StoreError,
    },
    #[error("invalid settings for volume {name} at {guest}")]
    Settings {
        name: VolumeName,
        guest: GuestPath,
        #[source]
        source: MountError,
    },
    #[error("stored config of sandbox {name} is unreadable")]
    BadRecord {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Looks up or creates each named volume as its mode says; returns the
/// names referenced and those created here (to undo on failure).
fn provision(
    store: &Store,
    mounts: &MountTable,
) -> Result<(Vec<VolumeName>, Vec<VolumeName>), SandboxCliError> {
    let mut used = Vec::new();
    let mut created = Vec::new();
    for entry in mounts.entries() {
        let Mount::Named { name, volume, .. } = &entry.mount else {
            continue;
        };
        let fail = |source: StoreError| SandboxCliError::Provision {
            name: name.clone(),
            guest: entry.guest.clone(),
            source,
        };
        let create = |created: &mut Vec<VolumeName>| -> Result<(), SandboxCliError> {
            let config =
                volume
                    .volume_config(name)
                    .map_err(|source| SandboxCliError::Settings {
                        name: name.clone(),
                        guest: entry.guest.clone(),
                        source,
                    })?;
            match store.create(&config) {
                Ok(_) => {
                    created.push(name.clone());
                    Ok(())
                }
                // Lost a race with another creator: ensure-exists reuses theirs.
                Err(StoreError::AlreadyExists(_)) if volume.mode == NamedMode::EnsureExists => {
                    store.get(name).map(drop).map_err(fail)
                }
                Err(e) => Err(fail(e)),
            }
        };
        match volume.mode {
            NamedMode::Existing => store.get(name).map(drop).map_err(fail)?,
            NamedMode::Create => create(&mut created)?,
            NamedMode::EnsureExists => match store.get(name) {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => create(&mut created)?,
                Err(e) => return Err(fail(e)),
            },
        }
        used.push(name.clone());
    }
    Ok((used, created))
}

pub fn create(args: CreateArgs) -> CliResult {
    let name = match sandbox_name(&args.name) {
        Ok(n) => n,
        Err(msg) => return usage(msg),
    };
    let config = match config(&args) {
        Ok(c) => c,
        Err(msg) => return usage(msg),
    };
    let store = Store::open_default()?;
    // Refuse a taken name before provisioning anything for it.
    match store.sandbox(&name) {
        Ok(_) => return Err(StoreError::SandboxExists(name).into()),
        Err(StoreError::SandboxNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (used, created) = provision(&store, &config.mounts)?;
    let json = serde_json::to_string(&config)?;
    if let Err(e) = store.create_sandbox(&name, &json, &used) {
        // Volumes made for this sandbox alone go with it.
        for v in &created {
            let _ = store.remove(v);
        }
        return Err(e.into());
    }
    println!("{name}");
    Ok(ExitCode::SUCCESS)
}

fn view(rec: SandboxRecord) -> Result<View, SandboxCliError> {
    let config =
        serde_json::from_str(&rec.config).map_err(|source| SandboxCliError::BadRecord {
            name: rec.name.clone(),
            source,
        })?;
    Ok(View {
        name: rec.name,
        state: "stopped",
        created_at: rfc3339(rec.created_at),
        volumes: rec.volumes,
        config,
    })
}

pub fn ls(args: LsArgs) -> CliResult {
    let store = Store::open_default()?;
    let views = store
        .sandboxes()?
        .into_iter()
        .map(view)
        .collect::<Result<Vec<_>, _>>()?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Table => {
            let width = views.iter().map(|v| v.name.len()).max().unwrap_or(0).max(4);
            println!("{:width$}  {:8}  {:6}  CREATED", "NAME", "STATE", "MOUNTS");
            for v in &views {
                println!(
                    "{:width$}  {:8}  {:6}  {}",
                    v.name,
                    v.state,
                    v.config.mounts.len(),
                    v.created_at
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: NameArg) -> CliResult {
    let store = Store::open_default()?;
    let v = view(store.sandbox(&args.name)?)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

pub fn rm(args: NameArg) -> CliResult {
    let store = Store::open_default()?;
    store.remove_sandbox(&args.name)?;
    println!("{}", args.name);
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
