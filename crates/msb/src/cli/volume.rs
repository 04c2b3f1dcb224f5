//! `msb volume create|ls|inspect|rm|prune|doctor`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Subcommand, ValueEnum};
use msb_spec::{
    Labels, VolumeConfig, VolumeFilter, VolumeKind, VolumeName, format_bytes, parse_size_mib,
};
use msb_store::{Store, VolumeInfo};
use serde::Serialize;

use super::text::escape;
use super::{CliResult, Purpose, report, report_for};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a named volume and print its name.
    Create {
        /// Volume name: letters, digits, '.', '_', '-'; at most 128 characters.
        #[arg(value_parser = parse_name)]
        name: VolumeName,
        /// dir (a host directory) or disk (a sparse ext4 image).
        #[arg(long, default_value = "dir", value_parser = parse_kind)]
        kind: VolumeKind,
        /// Capacity of a disk volume (bare number = MiB; 10G, 1.5G, 512M, 1T).
        #[arg(long, value_parser = parse_mib)]
        size: Option<u32>,
        /// Size limit of a directory volume (same forms as --size).
        #[arg(long, value_parser = parse_mib)]
        quota: Option<u32>,
        /// A metadata label KEY=VALUE, or KEY for an empty value (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List volumes, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Output format (json has the keys of `inspect --format json`,
        /// less in_use_by).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        /// Show only matching volumes: label=K[=V], label!=K[=V],
        /// name=TEXT, kind=dir|disk, until=TIME (as for prune; repeatable).
        #[arg(long = "filter", value_name = "FILTER", value_parser = parse_volume_filter)]
        filters: Vec<VolumeFilter>,
    },
    /// Show volumes in detail, with usage counted now (a directory volume's
    /// tree is scanned; `ls` shows the running counter).
    Inspect {
        /// The volumes to show.
        #[arg(required = true, value_parser = parse_name)]
        names: Vec<VolumeName>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Create a volume as a copy of another (kind, quota, labels and files)
    Clone {
        /// The volume to copy (no sandbox may be writing to it).
        #[arg(value_parser = parse_name)]
        source: VolumeName,
        /// The new volume's name.
        #[arg(value_parser = parse_name)]
        name: VolumeName,
    },
    /// Remove volumes and their data (refused for a volume in use).
    #[command(visible_alias = "remove")]
    Rm {
        /// The volumes to remove.
        #[arg(required = true)]
        names: Vec<String>,
        /// Print nothing on success.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove every volume that is not in use (and matches the filters).
    Prune {
        /// label=K[=V], label!=K[=V], name=TEXT, kind=dir|disk, until=TIME
        /// (RFC 3339, Unix time, or a duration back from now: 24h, 30m)
        /// (repeatable; as docker combines them).
        #[arg(long = "filter", value_name = "FILTER", value_parser = parse_volume_filter)]
        filters: Vec<VolumeFilter>,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Finish interrupted operations, recount usage, report orphaned data
    /// (folders under the store's volumes/ that no volume claims).
    Doctor {
        /// Make the orphaned folder volumes/NAME the volume NAME, as it is
        /// (a directory volume, or a disk volume if it holds only an ext4
        /// disk.raw), first (repeatable).
        #[arg(long, value_name = "NAME", value_parser = parse_name)]
        adopt: Vec<VolumeName>,
        /// Delete the orphaned folder volumes/NAME and its data, first
        /// (repeatable).
        #[arg(long, value_name = "NAME", value_parser = parse_name)]
        remove_orphan: Vec<VolumeName>,
    },
    #[command(flatten)]
    Files(super::fs::FsCommand),
    /// Serve a directory volume on a host directory (foreground; -d detaches).
    Mount(super::mount::MountArgs),
    /// Unmount a volume mounted with `msb volume mount`.
    Unmount(super::mount::UnmountArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn parse_name(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}
fn parse_kind(s: &str) -> Result<VolumeKind, String> {
    s.parse()
        .map_err(|e: msb_spec::VolumeKindError| e.to_string())
}
fn parse_mib(s: &str) -> Result<u32, String> {
    parse_size_mib(s).map_err(|e| e.to_string())
}
/// A label checked while parsing, so a bad one is a usage error.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    Labels::new().insert(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}
fn parse_volume_filter(s: &str) -> Result<VolumeFilter, String> {
    VolumeFilter::parse_cli(s).map_err(|e| e.to_string())
}

pub fn run(cmd: VolumeCommand) -> CliResult {
    let store = Store::open_default()?;
    match cmd {
        VolumeCommand::Mount(args) => super::mount::mount(args),
        VolumeCommand::Unmount(args) => super::mount::unmount(args),
        VolumeCommand::Create {
            name,
            kind,
            size,
            quota,
            labels,
            quiet,
        } => {
            let mut parsed = Labels::new();
            for (k, v) in labels {
                parsed.insert(k, v)?;
            }
            // Flags that do not go together are a usage error, named as flags.
            let config = match VolumeConfig::new(name, kind, size, quota, parsed) {
                Ok(c) => c,
                Err(e) => {
                    use msb_spec::VolumeConfigError as E;
                    let msg = match e {
                        E::DiskWithoutSize => {
                            "a disk volume needs --size (e.g. --size 10G)".to_string()
                        }
                        E::DirWithSize => "--size is for disk volumes (--kind disk); limit a directory volume with --quota".to_string(),
                        E::DiskWithQuota => "--quota is for directory volumes; a disk volume's --size is already its hard limit".to_string(),
                        e => e.to_string(),
                    };
                    eprintln!("error: {msg}");
                    return Ok(ExitCode::from(2));
                }
            };
            let info = store.create(&config)?;
            if !quiet {
                println!("{}", escape(info.name.as_str()));
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Ls {
            format,
            quiet,
            filters,
        } => {
            let vols: Vec<_> = store
                .list(&[])?
                .into_iter()
                .filter(|v| {
                    let subject = msb_spec::FilterSubject {
                        name: v.name.as_str(),
                        kind: v.kind,
                        labels: &v.labels,
                        created_at: v.created_at,
                    };
                    VolumeFilter::all_match(&filters, &subject)
                })
                .collect();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if quiet {
                for v in &vols {
                    writeln!(out, "{}", escape(v.name.as_str()))?;
                }
            } else if format == Format::Json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &vols.iter().map(JsonVolume::from).collect::<Vec<_>>(),
                )?;
                writeln!(out)?;
            } else if vols.is_empty() {
                eprintln!("no volumes");
            } else {
                print_table(&mut out, &vols)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { names, format } => {
            let mut found = Vec::new();
            let mut failed = false;
            for name in &names {
                match store.get_current(name) {
                    Ok(info) => found.push(info),
                    Err(e) => {
                        report(&e);
                        failed = true;
                    }
                }
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if format == Format::Json {
                let detailed = found
                    .iter()
                    .map(|v| {
                        Ok(JsonDetails {
                            volume: JsonVolume::from(v),
                            in_use_by: store.users(&v.name)?,
                        })
                    })
                    .collect::<Result<Vec<_>, msb_store::StoreError>>()?;
                serde_json::to_writer_pretty(&mut out, &detailed)?;
                writeln!(out)?;
            } else {
                for (i, v) in found.iter().enumerate() {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    print_details(&mut out, &store, v)?;
                }
            }
            out.flush()?;
            Ok(exit(failed))
        }
        VolumeCommand::Clone { source, name } => {
            let staging = store.layout().staging_dir();
            let done = AtomicBool::new(false);
            // The usage as it is now (a scan), as the bar's end: the
            // running counter misses what was written on the host.
            let total = if std::io::stderr().is_terminal() {
                Some(store.get_current(&source)?.used_bytes)
            } else {
                None
            };
            let cloned = std::thread::scope(|s| {
                if let Some(total) = total {
                    let (staging, name, done) = (&staging, &name, &done);
                    s.spawn(move || watch_clone(staging, name, total, done));
                }
                let cloned = store.clone_volume(&source, &name);
                done.store(true, Ordering::Relaxed);
                cloned
            });
            cloned?;
            println!("{}", escape(name.as_str()));
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { names, quiet } => {
            let mut failed = false;
            for name in &names {
                let result = VolumeName::new(name.as_str())
                    .map_err(|e| -> Box<dyn std::error::Error> {
                        format!("invalid volume name {name:?}: {e}").into()
                    })
                    .and_then(|n| {
                        store.remove(&n)?;
                        detach_dead_mounts(&store, &n);
                        Ok(())
                    });
                match result {
                    Ok(()) if !quiet => println!("{}", escape(name)),
                    Ok(()) => {}
                    Err(e) => {
                        report_for(e.as_ref(), Purpose::Removal);
                        failed = true;
                    }
                }
            }
            Ok(exit(failed))
        }
        VolumeCommand::Prune { filters, force } => prune(&store, &filters, force),
        VolumeCommand::Files(cmd) => super::fs::run(&store, cmd),
        VolumeCommand::Doctor {
            adopt,
            remove_orphan,
        } => {
            let mut failed = false;
            for name in &adopt {
                match store.adopt_orphan(name) {
                    Ok(v) => println!(
                        "adopted: {} as a {} volume using {}",
                        escape(name.as_str()),
                        v.kind,
                        format_bytes(v.used_bytes)
                    ),
                    Err(e) => {
                        report(&e);
                        failed = true;
                    }
                }
            }
            for name in &remove_orphan {
                match store.remove_orphan(name) {
                    Ok(()) => println!(
                        "removed: orphaned {}",
                        escape(&store.layout().volume_dir(name))
                    ),
                    Err(e) => {
                        report(&e);
                        failed = true;
                    }
                }
            }
            // First, so that the recount below sees the volumes without
            // them. Disk volumes are left to their next import: opening one
            // needs it free of sandboxes.
            for v in store.list(&[])? {
                if v.kind != VolumeKind::Dir {
                    continue;
                }
                let removed = msb::VolumeFiles::open(&store, &v.name, true)
                    .map_err(Box::<dyn std::error::Error>::from)
                    .and_then(|files| Ok(msb_volfs::archive::remove_stale_staging(&files)?));
                match removed {
                    Ok(stale) => {
                        for rel in stale {
                            println!(
                                "repaired: removed {} from volume {}, left by an import that was killed",
                                escape(&rel),
                                escape(v.name.as_str())
                            );
                        }
                    }
                    Err(e) => report(e.as_ref()),
                }
            }
            let r = store.doctor()?;
            for line in &r.repaired {
                println!("repaired: {}", escape(line));
            }
            for (name, old, new) in &r.usage_fixed {
                println!(
                    "usage: {}: counter said {old} bytes, tree holds {new} bytes; corrected",
                    escape(name.as_str())
                );
            }
            for p in &r.orphans {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| VolumeName::new(n).ok());
                match name {
                    Some(n) => println!(
                        "orphan: {} is not a volume msb knows; left in place (`msb volume doctor --adopt {n}` makes it one, `msb volume doctor --remove-orphan {n}` deletes it)",
                        escape(p)
                    ),
                    None => println!(
                        "orphan: {} is not a volume msb knows and not a volume name; left in place (move it away)",
                        escape(p)
                    ),
                }
            }
            for name in &r.missing {
                println!(
                    "missing: volume {} has no data on disk",
                    escape(name.as_str())
                );
            }
            let (uid, gid) = (
                msb_store::sandbox_ids().root(),
                msb_store::sandbox_gids().root(),
            );
            for name in &r.owned_by_host_root {
                // --from=0: only what host root owns changes hands.
                println!(
                    "owner: volume {}'s root is owned by host root, so sandboxes (host uid {uid}) cannot write to it; left as is. To fix: chown -R --from=0 {uid}:{gid} {}",
                    escape(name.as_str()),
                    escape(&store.layout().volume_dir(name))
                );
            }
            let problems =
                !r.orphans.is_empty() || !r.missing.is_empty() || !r.owned_by_host_root.is_empty();
            if r.repaired.is_empty() && r.usage_fixed.is_empty() && !problems && !failed {
                println!("store is consistent");
            }
            Ok(exit(problems || failed))
        }
    }
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `msb volume prune`: shows what would go and asks (unless `force`),
/// then removes exactly that, listing each volume removed (stdout) and the
/// space freed (stderr). Declining is an answer, not a failure.
fn prune(store: &Store, filters: &[VolumeFilter], force: bool) -> CliResult {
    let (listed, kept) = store.prune_candidates(filters)?;
    for e in &kept {
        eprintln!("skipped: {}", escape(&e.to_string()));
    }
    if listed.is_empty() {
        eprintln!("no volumes to remove");
        return Ok(ExitCode::SUCCESS);
    }
    if !force {
        let total: u64 = listed.iter().map(|v| v.used_bytes).sum();
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "These volumes are not in use and would be removed with their data:"
        )?;
        print_usage_table(&mut err, &listed)?;
        drop(err);
        let question = format!(
            "Remove {} ({} in all)? [y/N] ",
            volumes(listed.len()),
            format_bytes(total)
        );
        if !confirm(&question)? {
            eprintln!("nothing removed");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let (removed, skipped) = store.prune(&listed)?;
    for p in &removed {
        detach_dead_mounts(store, &p.name);
        println!("{}", escape(p.name.as_str()));
    }
    for e in &skipped {
        eprintln!("skipped: {}", escape(&e.to_string()));
    }
    let freed: u64 = removed.iter().map(|p| p.freed_bytes).sum();
    eprintln!(
        "removed {}, freed {} ({freed} bytes)",
        volumes(removed.len()),
        format_bytes(freed)
    );
    Ok(ExitCode::SUCCESS)
}

fn volumes(n: usize) -> String {
    if n == 1 {
        "1 volume".into()
    } else {
        format!("{n} volumes")
    }
}

/// NAME, KIND and USED of each volume, for the prune prompt.
fn print_usage_table(out: &mut impl Write, vols: &[VolumeInfo]) -> std::io::Result<()> {
    let names: Vec<String> = vols.iter().map(|v| escape(v.name.as_str())).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
    writeln!(out, "  {:width$}  {:4}  {:>10}", "NAME", "KIND", "USED")?;
    for (v, name) in vols.iter().zip(&names) {
        writeln!(
            out,
            "  {:width$}  {:4}  {:>10}",
            name,
            v.kind.as_str(),
            format_bytes(v.used_bytes)
        )?;
    }
    Ok(())
}

/// Asks on stderr and reads one line of stdin, terminal or not (so a
/// script can answer); only y or yes agrees, and end of input declines.
fn confirm(question: &str) -> Result<bool, std::io::Error> {
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The JSON form of a volume; exactly these keys.
#[derive(Serialize)]
struct JsonVolume<'a> {
    name: &'a str,
    kind: VolumeKind,
    path: String,
    quota_mib: Option<u32>,
    used_bytes: u64,
    capacity_bytes: Option<u64>,
    disk_format: Option<&'static str>,
    disk_fstype: Option<&'static str>,
    labels: &'a Labels,
    created_at: String,
}

/// `msb volume inspect --format json`: the listing's keys and who uses the
/// volume.
#[derive(Serialize)]
struct JsonDetails<'a> {
    #[serde(flatten)]
    volume: JsonVolume<'a>,
    in_use_by: Vec<String>,
}

impl<'a> From<&'a VolumeInfo> for JsonVolume<'a> {
    fn from(v: &'a VolumeInfo) -> Self {
        let disk = v.kind == VolumeKind::Disk;
        JsonVolume {
            name: v.name.as_str(),
            kind: v.kind,
            path: v.path.display().to_string(),
            quota_mib: v.quota_mib,
            used_bytes: v.used_bytes,
            capacity_bytes: v.capacity_bytes,
            disk_format: disk.then_some("raw"),
            disk_fstype: disk.then_some("ext4"),
            labels: &v.labels,
            created_at: super::rfc3339(v.created_at),
        }
    }
}

fn limit(v: &VolumeInfo) -> String {
    match (v.quota_mib, v.capacity_bytes) {
        (Some(q), _) => format_bytes(u64::from(q) << 20),
        (None, Some(c)) => format_bytes(c),
        (None, None) => "-".into(),
    }
}

fn print_table(out: &mut impl Write, vols: &[VolumeInfo]) -> std::io::Result<()> {
    let names: Vec<String> = vols.iter().map(|v| escape(v.name.as_str())).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
    writeln!(
        out,
        "{:width$}  {:4}  {:>10}  {:>10}  CREATED",
        "NAME", "KIND", "USED", "LIMIT"
    )?;
    for (v, name) in vols.iter().zip(&names) {
        writeln!(
            out,
            "{:width$}  {:4}  {:>10}  {:>10}  {}",
            name,
            v.kind.as_str(),
            format_bytes(v.used_bytes),
            limit(v),
            super::rfc3339(v.created_at)
        )?;
    }
    Ok(())
}

fn print_details(
    out: &mut impl Write,
    store: &Store,
    v: &VolumeInfo,
) -> Result<(), Box<dyn std::error::Error>> {
    writeln!(out, "Name:      {}", escape(v.name.as_str()))?;
    writeln!(out, "Kind:      {}", v.kind)?;
    writeln!(out, "Path:      {}", escape(&v.path))?;
    writeln!(
        out,
        "Used:      {} ({} bytes)",
        format_bytes(v.used_bytes),
        v.used_bytes
    )?;
    match (v.quota_mib, v.capacity_bytes) {
        (Some(q), _) => writeln!(out, "Quota:     {q} MiB")?,
        (None, Some(c)) => writeln!(out, "Capacity:  {} (raw, ext4)", format_bytes(c))?,
        (None, None) => writeln!(out, "Quota:     unlimited")?,
    }
    for (k, val) in v.labels.iter() {
        writeln!(out, "Label:     {}={}", escape(k), escape(val))?;
    }
    writeln!(out, "Created:   {}", super::rfc3339(v.created_at))?;
    let users = store.users(&v.name)?;
    writeln!(
        out,
        "In use by: {}",
        if users.is_empty() {
            "-".to_string()
        } else {
            escape(&users.join(", "))
        }
    )?;
    Ok(())
}

/// Detaches what is left of host mounts of a removed volume (a server
/// killed together with its watchdog leaves a dead mount behind).
fn detach_dead_mounts(store: &Store, name: &VolumeName) {
    for point in msb_fsserver::detach_mounts_of(&store.layout().volume_dir(name)) {
        eprintln!(
            "detached the dead mount of {name} at {} (its server was gone)",
            escape(&point)
        );
    }
}

/// Shows a clone's progress on a terminal until `done`: the space its
/// copy in the store's staging directory (`NAME.TOKEN`) takes so far,
/// against the source's usage.
fn watch_clone(staging: &Path, name: &VolumeName, total: u64, done: &AtomicBool) {
    let mut bar = msb_volfs::archive::Progress::stderr("cloning", Some(total));
    bar.update(0);
    let prefix = format!("{name}.");
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let copy = std::fs::read_dir(staging).ok().and_then(|d| {
            d.flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        });
        if let Some(copy) = copy {
            bar.update(allocated(&copy.path()));
        }
    }
    bar.finish();
}

/// Bytes allocated to the tree at `p` (symlinks not followed); what
/// vanishes meanwhile counts as nothing.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut bytes = m.blocks() * 512;
    if m.is_dir()
        && let Ok(entries) = std::fs::read_dir(p)
    {
        bytes += entries.flatten().map(|e| allocated(&e.path())).sum::<u64>();
    }
    bytes
}
