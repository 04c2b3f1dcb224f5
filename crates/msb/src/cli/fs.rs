//! `msb volume fs NAME ls|cat|write|mkdir|rm|stat|mv|cp`, `msb volume
//! export` and `msb volume import`: host-side access to a volume's files
//! through the confined [`VolumeFs`].

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use clap::{Args, Subcommand};
use msb_spec::VolumeName;
use msb_store::Store;
use msb_volfs::FileKind;
use msb_volfs::archive::{self, ArchiveError, Progress};

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
        /// Archive file, written whole or not at all (through a temporary
        /// `.FILE.msb-partial-*` beside it), or - for stdout, which must not
        /// be a terminal [default: -].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Extract a tar archive into an existing volume: all or nothing into an
    /// empty one (--merge adds to one that holds files).
    Import {
        /// The volume.
        #[arg(value_parser = parse_name)]
        name: VolumeName,
        /// Archive file, or - for stdin.
        input: PathBuf,
        /// Import into a volume that already holds files, entry by entry
        /// (files of the same name are replaced). Not all or nothing: an
        /// interruption or a bad entry may leave part of the archive
        /// imported.
        #[arg(long)]
        merge: bool,
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
    Ls {
        /// Directory in the volume, relative to its root [default: the root].
        path: Option<PathBuf>,
    },
    /// Print a file.
    Cat {
        /// File in the volume, relative to its root.
        path: PathBuf,
    },
    /// Write stdin to a file (created or truncated; parents must exist).
    Write {
        /// File in the volume, relative to its root.
        path: PathBuf,
    },
    /// Create a directory and its parents.
    Mkdir {
        /// Directory in the volume, relative to its root.
        path: PathBuf,
    },
    /// Remove a file, symlink or empty directory (-r: a whole tree).
    Rm {
        /// Remove a directory with everything in it.
        #[arg(short, long)]
        recursive: bool,
        /// What to remove, relative to the volume's root.
        path: PathBuf,
    },
    /// Show metadata (a final symlink is described, not followed).
    Stat {
        /// Path in the volume, relative to its root.
        path: PathBuf,
    },
    /// Rename a file or directory.
    Mv {
        /// Path in the volume to move.
        from: PathBuf,
        /// New path in the same volume.
        to: PathBuf,
    },
    /// Copy a file.
    Cp {
        /// File in the volume to copy (for host files, see `msb cp`).
        from: PathBuf,
        /// Path of the copy in the same volume.
        to: PathBuf,
    },
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
        FsCommand::Export { name, output } => export(store, &name, output),
        FsCommand::Import { name, input, merge } => import(store, &name, &input, merge),
    }
}

/// `msb volume export`: to a file through a temporary one (see
/// [`archive::export_to_path`]), or to stdout unless it is a terminal.
fn export(store: &Store, name: &VolumeName, output: Option<PathBuf>) -> CliResult {
    let output = output.filter(|o| o.as_os_str() != "-");
    if output.is_none() && io::stdout().is_terminal() {
        eprintln!(
            "error: refusing to write a tar archive to a terminal; name a file with -o FILE, or redirect stdout"
        );
        return Ok(ExitCode::from(2));
    }
    let v = open_volume(store, name, false)?;
    let mut bar = Progress::stderr("exporting", Some(info_used(store, name)));
    let mut tick = |n| bar.update(n);
    let report = match &output {
        None => archive::export(&v, io::stdout().lock(), &mut tick),
        Some(path) => archive::export_to_path(&v, path, stop_on_signals(), &mut tick),
    };
    bar.finish();
    let outcome = report.map_err(Into::into).map(|report| {
        for p in &report.skipped {
            eprintln!("skipped socket: {}", escape(p));
        }
        ExitCode::SUCCESS
    });
    end_if_stopped(outcome)
}

/// `msb volume import`: all or nothing into an empty volume, entry by
/// entry with `--merge`. SIGINT and SIGTERM stop it at its next read of
/// the archive, cleanly: the volume is left empty (or, merging, with what
/// was written listed).
fn import(store: &Store, name: &VolumeName, input: &Path, merge: bool) -> CliResult {
    let v = open_volume(store, name, true)?;
    // An import killed outright left its staging and may have been charged
    // for more than it wrote: remove it and recount while nobody writes.
    if !archive::remove_stale_staging(&v)?.is_empty() {
        store.get_current(name)?;
    }
    let (reader, len): (Box<dyn Read>, _) = if input.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let file = std::fs::File::open(input)
            .map_err(|e| format!("cannot open {}: {e}", input.display()))?;
        let len = file.metadata().map(|m| m.len()).ok();
        (Box::new(file), len)
    };
    let stop = stop_on_signals();
    let reader = StopReader {
        inner: reader,
        stop,
    };
    let mut bar = Progress::stderr("importing", len);
    let result = if merge {
        archive::import(&v, reader, &mut |n| bar.update(n))
    } else {
        archive::import_into_empty(&v, reader, &mut |n| bar.update(n))
    };
    bar.finish();
    let outcome: CliResult = match result {
        Ok(report) => {
            eprintln!("imported {report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) if matches!(failure.error, ArchiveError::NotEmpty) => Err(format!(
            "volume {name} already holds files; pass --merge to import into it anyway (an interruption may then leave part of the archive imported)"
        )
        .into()),
        Err(failure) if !merge => Err(Box::new(RolledBack {
            volume: name.to_string(),
            error: failure.error,
        })),
        Err(failure) => {
            for p in &failure.written.paths {
                eprintln!("written: {}", escape(p));
            }
            Err(failure.into())
        }
    };
    end_if_stopped(outcome)
}

/// An all-or-nothing import that failed and was undone.
#[derive(Debug, thiserror::Error)]
#[error("import failed; nothing was imported into volume {volume}")]
struct RolledBack {
    volume: String,
    #[source]
    error: ArchiveError,
}

/// The signal that asked an export or import to stop (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set with [`STOP_SIGNAL`], for the library's checks.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(sig: libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::Relaxed);
    STOP.store(true, Ordering::Relaxed);
}

/// Catches SIGINT and SIGTERM into [`STOP`], so that the operation can
/// clean up before the process ends. Without `SA_RESTART`, a read blocked
/// on a pipe returns `EINTR` and sees the flag at once.
pub(super) fn stop_on_signals() -> &'static AtomicBool {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `note_stop` only stores to atomics, which is
        // async-signal-safe; the struct is zeroed (a valid empty mask and
        // no flags) before the handler is set.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = note_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    &STOP
}

/// After a stop signal that made the operation fail (and the clean-up it
/// asked for), reports the failure and ends the process by that signal, as
/// it would have ended without the handler, so the caller sees a signal
/// death. An operation that finished before the signal could stop it
/// reports its success: its result is in place, whole.
pub(super) fn end_if_stopped(outcome: CliResult) -> CliResult {
    let sig = STOP_SIGNAL.load(Ordering::Relaxed);
    let Err(e) = outcome else {
        return outcome;
    };
    if sig == 0 {
        return Err(e);
    }
    super::report(escape_error(e).as_ref());
    // SAFETY: plain libc calls restoring the default action and raising
    // the signal on this process, which it ends.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    Ok(ExitCode::from(128 + sig as u8))
}

/// Reads the archive until a stop signal, then fails every read (a read
/// interrupted by the signal is retried only while no stop was asked for).
struct StopReader<R> {
    inner: R,
    stop: &'static AtomicBool,
}

impl<R: Read> Read for StopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(io::Error::other("interrupted by a signal"));
            }
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
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
