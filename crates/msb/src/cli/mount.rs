//! `msb volume mount NAME DIR` and `msb volume unmount DIR`: serve a
//! directory volume on a host directory through the filesystem server.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msb_fsserver::host::{
    Detached, Ready, block_stop_signals, detach, invoking_user, wait_stop_signal,
};
use msb_fsserver::{HostPerms, ServeConfig, StatVirt};
use msb_spec::{VolumeKind, VolumeName};
use msb_store::{AttachMode, Store};

use super::CliResult;

/// Arguments of `msb volume mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The directory volume to mount.
    #[arg(value_parser = parse_name)]
    pub name: VolumeName,
    /// Existing directory to mount it on.
    pub dir: PathBuf,
    /// Refuse every write (EROFS), in the kernel and in the server.
    #[arg(long)]
    pub readonly: bool,
    /// strict, relaxed or off: how ownership, mode and file type are kept.
    #[arg(long, default_value = "strict", value_parser = parse_stat_virt)]
    pub stat_virt: StatVirt,
    /// private or mirror: whether permission changes reach the host files.
    #[arg(long, default_value = "private", value_parser = parse_host_perms)]
    pub host_perms: HostPerms,
    /// Run in the background; `msb volume unmount DIR` stops it.
    #[arg(short = 'd', long)]
    pub detach: bool,
}

/// Arguments of `msb volume unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// Where the volume is mounted.
    pub dir: PathBuf,
}

fn parse_name(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}
fn parse_stat_virt(s: &str) -> Result<StatVirt, String> {
    s.parse()
        .map_err(|e: msb_spec::PolicyParseError| e.to_string())
}
fn parse_host_perms(s: &str) -> Result<HostPerms, String> {
    s.parse()
        .map_err(|e: msb_spec::PolicyParseError| e.to_string())
}

/// Runs `msb volume mount`: foreground until SIGINT/SIGTERM or until the
/// mount is removed; with `-d` in a background process.
pub fn mount(args: MountArgs) -> CliResult {
    if args.stat_virt == StatVirt::Off && args.host_perms == HostPerms::Mirror {
        return Err("--host-perms mirror needs stat virtualization (strict or relaxed)".into());
    }
    if !args.detach {
        return serve(&args, None);
    }
    // Fork before anything opens the store or starts threads.
    match detach()? {
        Detached::Parent(Ok(())) => Ok(ExitCode::SUCCESS),
        Detached::Parent(Err(msg)) => Err(msg.into()),
        Detached::Child(ready) => {
            let res = serve(&args, Some(ready));
            // The background process ends here without unwinding further.
            std::process::exit(i32::from(res.is_err()));
        }
    }
}

fn serve(args: &MountArgs, ready: Option<Ready>) -> CliResult {
    let started = (|| -> Result<_, Box<dyn std::error::Error>> {
        let store = Store::open_default()?;
        let info = store.get(&args.name)?;
        if info.kind != VolumeKind::Dir {
            return Err(format!(
                "volume {} is a disk volume; only directory volumes can be mounted on the host",
                args.name
            )
            .into());
        }
        let dir = std::path::absolute(&args.dir)?;
        if let Some(existing) = mounted_on(&store, &dir) {
            return Err(format!(
                "{} already has {existing} mounted on it; unmount that first (a second mount would hide it)",
                dir.display()
            )
            .into());
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(MountPointError::NotDir(dir).into()),
            Err(source) => return Err(MountPointError::Unusable { dir, source }.into()),
        }
        let mode = if args.readonly {
            AttachMode::ReadOnly
        } else {
            AttachMode::ReadWrite
        };
        let attachment = store.attach(&args.name, &format!("mount:{}", dir.display()), mode)?;
        let budget = store.budget(&info)?.map(Arc::new);
        block_stop_signals()?;
        let cfg = ServeConfig {
            readonly: args.readonly,
            stat_virt: args.stat_virt,
            host_perms: args.host_perms,
            budget,
            owner: invoking_user(),
            // Served on the host: host ids as they are.
            id_map: msb_spec::IdMap::IDENTITY,
            gid_map: msb_spec::IdMap::IDENTITY,
        };
        let server = msb_fsserver::mount(&info.path, &dir, cfg)?;
        Ok((server, attachment, dir))
    })();
    let (server, attachment, dir) = match (started, ready) {
        (Ok(s), Some(ready)) => {
            ready.ok();
            s
        }
        (Ok(s), None) => s,
        (Err(e), Some(ready)) => {
            // The whole chain: the caller's terminal sees only this.
            ready.fail(&super::describe(e.as_ref(), super::Purpose::Use));
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let stop_dir = dir.clone();
    std::thread::spawn(move || {
        wait_stop_signal();
        let _ = msb_fsserver::unmount_path(&stop_dir);
    });
    let res = server.wait();
    drop(attachment);
    res?;
    Ok(ExitCode::SUCCESS)
}

/// A mount point `msb volume mount` cannot use.
#[derive(Debug, thiserror::Error)]
enum MountPointError {
    #[error("cannot mount on {}: it is not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("cannot mount on {}: the mount point must be an existing directory (create it first)", dir.display())]
    Unusable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is mounted on `dir`, described for an error (the top mount when
/// several are stacked), or `None` if `dir` is not a mount point.
fn mounted_on(store: &Store, dir: &Path) -> Option<String> {
    // mountinfo names mount points by their real path. Only the parent is
    // resolved: resolving a dead mount point itself would fail (ENOTCONN).
    let point = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().ok()?.join(name),
        _ => dir.to_path_buf(),
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (fstype, source) = info
        .lines()
        // The top mount of a stack is listed last.
        .rev()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = unescape(right.next()?);
            (unescape(left.split(' ').nth(4)?) == point.as_os_str().as_bytes())
                .then(|| (fstype.to_string(), source))
        })?;
    let source = PathBuf::from(OsString::from_vec(source));
    if fstype != "fuse.msb" {
        return Some(format!("a {fstype} filesystem ({})", source.display()));
    }
    // The server's source is the volume's directory.
    let volume = source
        .parent()
        .filter(|p| *p == store.layout().volumes_dir())
        .and(source.file_name());
    Some(match volume {
        Some(name) => format!("volume {} (msb volume mount)", name.to_string_lossy()),
        None => format!("the msb volume at {} (msb volume mount)", source.display()),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Runs `msb volume unmount`, returning once the serving process has let go
/// of the volume (so a following `msb volume rm` finds it free).
pub fn unmount(args: UnmountArgs) -> CliResult {
    let dir = std::path::absolute(&args.dir)?;
    msb_fsserver::unmount_path(&dir)?;
    let holder = format!("mount:{}", dir.display());
    let store = Store::open_default()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(&store, &holder) {
        if Instant::now() > deadline {
            return Err(format!("the server of {} did not exit", dir.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether some volume is still attached by `holder`.
fn held(store: &Store, holder: &str) -> bool {
    store.list(&[]).is_ok_and(|vols| {
        vols.iter().any(|v| {
            store
                .users(&v.name)
                .is_ok_and(|u| u.iter().any(|h| h == holder))
        })
    })
}
