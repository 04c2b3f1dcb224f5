//! `msb volume fs NAME ls|cat|write|mkdir|rm|stat|mv|cp`, `msb volume
//! export` and `msb volume import`: host-side access to a volume's files
//! through the confined [`VolumeFs`].

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use msb_spec::VolumeName;
use msb_store::Store;
use msb_volfs::FileKind;
use msb_volfs::archive::{self, Progress};

use super::CliResult;
use super::text::{escape, escape_error};

/// File commands, flattened into `msb volume`.
#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Read and write a volume's files from the host (no sandbox needed).
    Fs(FsArgs),
    /// Write a volume's files to a tar archive (modes, symlinks, metadata
    /// records kept).
    Export {
        /// The volume.
        #[arg(value_parser = parse_name)]
        name: VolumeName,
        /// Archive file, or - for stdout.
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
    },
    /// Extract a tar archive into an existing volume, safely.
    Import {
        /// The volume.
        #[arg(value_parser = parse_name)]
        name: VolumeName,
        /// Archive file, or - for stdin.
        input: PathBuf,
    },
}

/// `msb volume fs NAME ...`.
#[derive(Debug, Args)]
pub struct FsArgs {
    /// The volume.
    #[arg(value_parser = parse_name)]
    name: VolumeName,
    #[command(subcommand)]
    op: FsOp,
}

/// One file operation; every PATH is relative to the volume root.
#[derive(Debug, Subcommand)]
enum FsOp {
    /// List a directory (directories end in '/', symlinks show their target).
    Ls { path: Option<PathBuf> },
    /// Print a file.
    Cat { path: PathBuf },
    /// Write stdin to a file (created or truncated; parents must exist).
    Write { path: PathBuf },
    /// Create a directory and its parents.
    Mkdir { path: PathBuf },
    /// Remove a file, symlink or empty directory (-r: a whole tree).
    Rm {
        #[arg(short, long)]
        recursive: bool,
        path: PathBuf,
    },
    /// Show metadata (a final symlink is described, not followed).
    Stat { path: PathBuf },
    /// Rename a file or directory.
    Mv { from: PathBuf, to: PathBuf },
    /// Copy a file.
    Cp { from: PathBuf, to: PathBuf },
}

fn parse_name(s: &str) -> Result<VolumeName, String> {
    VolumeName::new(s).map_err(|e| e.to_string())
}

/// Opens `name`'s files (see [`msb::VolumeFiles`]).
fn open_volume(
    store: &Store,
    name: &VolumeName,
    write: bool,
) -> Result<msb::VolumeFiles, Box<dyn std::error::Error>> {
    Ok(msb::VolumeFiles::open(store, name, write)?)
}

/// Runs a file command. Names from the volume or an archive are printed
/// escaped ([`escape`]), errors too; file contents are data and pass as
/// they are.
pub fn run(store: &Store, cmd: FsCommand) -> CliResult {
    dispatch(store, cmd).map_err(escape_error)
}

fn dispatch(store: &Store, cmd: FsCommand) -> CliResult {
    match cmd {
        FsCommand::Fs(args) => run_op(store, args),
        FsCommand::Export { name, output } => {
            let v = open_volume(store, &name, false)?;
            let mut bar = Progress::stderr("exporting", Some(info_used(store, &name)));
            let mut tick = |n| bar.update(n);
            let report = if output.as_os_str() == "-" {
                archive::export(&v, io::stdout().lock(), &mut tick)?
            } else {
                let file = std::fs::File::create(&output)
                    .map_err(|e| format!("cannot create {}: {e}", output.display()))?;
                archive::export(&v, file, &mut tick)?
            };
            bar.finish();
            for p in &report.skipped {
                eprintln!("skipped socket: {}", escape(p));
            }
            Ok(ExitCode::SUCCESS)
        }
        FsCommand::Import { name, input } => {
            let v = open_volume(store, &name, true)?;
            let result = if input.as_os_str() == "-" {
                let mut bar = Progress::stderr("importing", None);
                let r = archive::import(&v, io::stdin().lock(), &mut |n| bar.update(n));
                bar.finish();
                r
            } else {
                let file = std::fs::File::open(&input)
                    .map_err(|e| format!("cannot open {}: {e}", input.display()))?;
                let len = file.metadata().map(|m| m.len()).ok();
                let mut bar = Progress::stderr("importing", len);
                let r = archive::import(&v, file, &mut |n| bar.update(n));
                bar.finish();
                r
            };
            match result {
                Ok(report) => {
                    eprintln!("imported {report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    for p in &failure.written.paths {
                        eprintln!("written: {}", escape(p));
                    }
                    Err(failure.into())
                }
            }
        }
    }
}

fn info_used(store: &Store, name: &VolumeName) -> u64 {
    store.get(name).map(|i| i.used_bytes).unwrap_or(0)
}

fn run_op(store: &Store, args: FsArgs) -> CliResult {
    let write = matches!(
        args.op,
        FsOp::Write { .. }
            | FsOp::Mkdir { .. }
            | FsOp::Rm { .. }
            | FsOp::Mv { .. }
            | FsOp::Cp { .. }
    );
    let v = open_volume(store, &args.name, write)?;
    let fs = &v;
    let mut out = io::stdout().lock();
    match args.op {
        FsOp::Ls { path } => {
            let path = path.unwrap_or_default();
            let meta = fs.stat(&path)?;
            if meta.kind() != FileKind::Dir && meta.kind() != FileKind::Symlink {
                writeln!(out, "{}", escape(&path))?;
                return Ok(ExitCode::SUCCESS);
            }
            for e in fs.list(&path)? {
                let name = escape(e.name());
                match e.kind() {
                    FileKind::Dir => writeln!(out, "{name}/")?,
                    FileKind::Symlink => {
                        let target = fs.read_link(path.join(e.name()))?;
                        writeln!(out, "{name} -> {}", escape(&target))?
                    }
                    _ => writeln!(out, "{name}")?,
                }
            }
        }
        FsOp::Cat { path } => {
            let mut file = fs.open_file(&path)?;
            io::copy(&mut file, &mut out)?;
        }
        FsOp::Write { path } => {
            let mut w = fs.create(&path)?;
            io::copy(&mut io::stdin().lock(), &mut w).map_err(
                |e| -> Box<dyn std::error::Error> {
                    match e.into_inner() {
                        Some(inner) => inner,
                        None => "cannot read stdin".into(),
                    }
                },
            )?;
            w.finish()?;
        }
        FsOp::Mkdir { path } => fs.mkdir(&path)?,
        FsOp::Rm { recursive, path } => {
            if recursive {
                fs.remove_all(&path)?
            } else {
                fs.remove(&path)?
            }
        }
        FsOp::Stat { path } => {
            let m = fs.stat(&path)?;
            writeln!(out, "Path:     {}", escape(&path))?;
            writeln!(out, "Kind:     {}", m.kind().as_str())?;
            writeln!(out, "Size:     {}", m.len())?;
            writeln!(out, "Mode:     {:04o}", m.mode())?;
            writeln!(out, "Links:    {}", m.nlink())?;
            writeln!(out, "Owner:    {}:{}", m.uid(), m.gid())?;
            writeln!(out, "Modified: {}", rfc3339(m.modified()))?;
            if m.kind() == FileKind::Symlink {
                writeln!(out, "Target:   {}", escape(&fs.read_link(&path)?))?;
            }
        }
        FsOp::Mv { from, to } => fs.rename(&from, &to)?,
        FsOp::Cp { from, to } => {
            fs.copy(&from, &to)
                .map_err(|e| super::cp::fs_cp_hint(e, &args.name, &from, &to))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
