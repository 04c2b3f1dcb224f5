//! `msb cp SRC DST`: copies files and directory trees between the host and a
//! volume, in docker's form (`msb cp HOSTPATH VOLUME:PATH`, `msb cp
//! VOLUME:PATH HOSTPATH`).
//!
//! The volume side goes only through the confined [`msb::VolumeFiles`], so
//! no path or symlink in the volume can lead outside it, and writes are
//! charged to the volume's quota. Copying in is a tar stream of the host
//! tree fed to [`archive::import`], which already extracts safely and
//! within the quota; copying out walks the volume with the same API. The
//! host side is the user's own and keeps ordinary `cp` semantics: a
//! destination that is an existing directory receives the source inside
//! it, under the source's name.
//!
//! Symlinks are copied as symlinks, including a symlink named as SRC (as
//! docker does); sockets, FIFOs and devices are refused going in and
//! skipped with a notice coming out. Permission bits are kept (less
//! setuid, setgid and sticky, which a copy must not grant); modification
//! times are the time of the copy unless `-a` keeps them (symlinks get the
//! time of the copy either way).
//!
//! `NAME:PATH` names a volume, or else a running named sandbox: a volume
//! and a sandbox of the same name mean the volume. Copying into a sandbox
//! pipes a tar stream to `tar -x` run inside it through the exec API, so
//! the sandbox's own tar, confined like any command there, does the
//! writing (PATH is absolute in the sandbox). Copying out of a sandbox
//! runs `tar -c` there and unpacks its output on the host with
//! [`super::untar`], which treats it as the hostile archive it may be.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use msb::{FsError, VolumeFs, VolumeName};
use msb_store::{Store, StoreError};
use msb_volfs::FileKind;
use msb_volfs::archive::{self, ImportFailure};

use super::CliResult;
use super::text::{escape, escape_error};

/// `msb cp [-a] SRC DST`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Keep modification times too (permission bits are always kept,
    /// less setuid, setgid and sticky).
    #[arg(short = 'a', long = "archive")]
    archive: bool,
    /// What to copy: a host path, VOLUME:PATH, or SANDBOX:PATH in a
    /// running sandbox.
    src: OsString,
    /// Where to copy it: a host path, VOLUME:PATH, or SANDBOX:PATH in a
    /// running sandbox. An existing directory receives SRC inside it.
    dst: OsString,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    #[error("neither side names a volume; write one as VOLUME:PATH")]
    NoVolume,
    #[error(
        "both sides name a volume; copy out to the host and back in, or use `msb volume fs NAME cp` within one volume"
    )]
    TwoVolumes,
    #[error("sandbox {0} is not running; start it, or copy into one of its volumes")]
    SandboxStopped(String),
    #[error("{0} is not UTF-8; a sandbox path must be")]
    NotUtf8(PathBuf),
    #[error("tar in sandbox {name} failed with status {status}: {stderr}")]
    SandboxTar {
        name: String,
        status: i32,
        stderr: String,
    },
    #[error("the sandbox's tar wrote more after its archive ended")]
    TarTrailer,
    #[error("tar in sandbox {0} did not end after writing its archive")]
    TarHung(String),
    #[error(transparent)]
    Untar(#[from] super::untar::UntarError),
    #[error(transparent)]
    Exec(#[from] msb::ExecError),
    #[error("no volume named {0}")]
    NoSuchVolume(String),
    #[error("{0} has no name to copy it under; name the destination itself")]
    NoName(PathBuf),
    #[error("cannot copy {0}: only files, directories and symlinks can be copied")]
    Special(PathBuf),
    #[error("cannot read {path}")]
    HostRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    HostWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Only until what it wrote is cleaned up; then [`CpError::Archive`].
    #[error(transparent)]
    Import(#[from] Box<ImportFailure>),
    #[error(transparent)]
    Archive(Box<archive::ArchiveError>),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Msb(#[from] msb::Error),
}

/// `msb volume fs NAME cp FROM TO` given a host path as FROM.
#[derive(Debug, thiserror::Error)]
#[error(
    "{from} is not inside the volume; to copy it in from the host, use `msb cp {from} {volume}:{to}`"
)]
pub struct FsCpHint {
    from: PathBuf,
    volume: String,
    to: PathBuf,
    #[source]
    source: FsError,
}

/// One side of a copy.
enum Side {
    Host(PathBuf),
    Volume { name: String, path: PathBuf },
}

/// Reads `arg` as docker does: a path starting with `/` or `.` is the
/// host's, as is one without a `:` before its first `/`; otherwise the part
/// before the first `:` names a volume.
fn side(arg: &OsStr) -> Side {
    let b = arg.as_bytes();
    if !b.starts_with(b"/")
        && !b.starts_with(b".")
        && let Some(i) = b.iter().position(|&c| c == b':')
        && i > 0
        && !b[..i].contains(&b'/')
    {
        // Volume paths are relative to its root; `/data` there means `data`.
        let rest = &b[i + 1..];
        let start = rest.iter().position(|&c| c != b'/').unwrap_or(rest.len());
        return Side::Volume {
            name: String::from_utf8_lossy(&b[..i]).into_owned(),
            path: PathBuf::from(OsStr::from_bytes(&rest[start..])),
        };
    }
    Side::Host(PathBuf::from(arg))
}

pub fn run(args: CpArgs) -> CliResult {
    super::fs::end_if_stopped(
        copy(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| escape_error(e.into())),
    )
}

fn copy(args: CpArgs) -> Result<(), CpError> {
    match (side(&args.src), side(&args.dst)) {
        (Side::Host(src), Side::Volume { name, path }) => {
            let store = Store::open_default()?;
            match open_side(&store, &name, true)? {
                Remote::Volume(v) => copy_in(&v, &src, &path, args.archive),
                Remote::Sandbox(sb) => copy_into_sandbox(&sb, &src, &path, args.archive),
            }
        }
        (Side::Volume { name, path }, Side::Host(dst)) => {
            let store = Store::open_default()?;
            match open_side(&store, &name, false)? {
                Remote::Volume(v) => copy_out(&v, &path, &name, &dst, args.archive),
                Remote::Sandbox(sb) => copy_out_of_sandbox(&sb, &path, &dst, args.archive),
            }
        }
        (Side::Host(_), Side::Host(_)) => Err(CpError::NoVolume),
        (Side::Volume { .. }, Side::Volume { .. }) => Err(CpError::TwoVolumes),
    }
}

/// What `NAME:` names.
enum Remote {
    Volume(msb::VolumeFiles),
    Sandbox(msb::Sandbox),
}

/// Opens volume `name`, or else finds the running sandbox `name`: a
/// volume's name wins over a sandbox's.
fn open_side(store: &Store, name: &str, write: bool) -> Result<Remote, CpError> {
    if let Ok(vn) = VolumeName::new(name) {
        match store.get(&vn) {
            Ok(_) => return Ok(Remote::Volume(msb::VolumeFiles::open(store, &vn, write)?)),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let found = runtime()?.block_on(async {
        match msb::SandboxStore::default_home() {
            Ok(s) => s.get(name).await.ok(),
            Err(_) => None,
        }
    });
    match found {
        Some(sb) if sb.state() == msb::SandboxState::Running => Ok(Remote::Sandbox(sb)),
        Some(_) => Err(CpError::SandboxStopped(name.to_owned())),
        None => Err(CpError::NoSuchVolume(name.to_owned())),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CpError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CpError::Runtime)
}

/// Copies host `src` to `dst` in the running sandbox `sb` by piping a tar
/// stream into `tar -x` inside it: the sandbox's own tar, confined as any
/// command there, does the writing.
fn copy_into_sandbox(
    sb: &msb::Sandbox,
    src: &Path,
    dst: &Path,
    keep_times: bool,
) -> Result<(), CpError> {
    fs::symlink_metadata(src).map_err(|source| CpError::HostRead {
        path: src.to_owned(),
        source,
    })?;
    // Sandbox paths are absolute, as `msb exec` sees them.
    let dst = Path::new("/").join(dst);
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| CpError::NotUtf8(p.to_owned()))
    };
    let rt = runtime()?;
    let is_dir = rt.block_on(sb.command("test").args(["-d", &utf8(&dst)?]).output())?;
    let (dir, name) = if is_dir.status == 0 {
        (dst.clone(), host_name(src)?)
    } else {
        match (dst.parent(), dst.file_name()) {
            (Some(dir), Some(name)) => (dir.to_owned(), name.to_owned()),
            _ => return Err(CpError::NoName(dst)),
        }
    };
    let mut tar = rt.block_on(
        sb.command("tar")
            .args(["-x", "-f", "-", "-C", &utf8(&dir)?])
            .spawn(),
    )?;
    // Taking the input makes a Tokio pipe, which needs the runtime entered.
    let entered = rt.enter();
    let stdin = tar
        .take_stdin()?
        .expect("a spawned command's stdin is piped")
        .into_blocking_fd()
        .map_err(|source| CpError::HostWrite {
            path: dst.clone(),
            source,
        })?;
    drop(entered);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (produced, out) = std::thread::scope(|s| {
        let producer =
            s.spawn(|| write_tar(src, Path::new(&name), keep_times, now, File::from(stdin)));
        let out = rt.block_on(tar.output());
        let produced = producer.join().expect("tar writer does not panic");
        (produced, out)
    });
    let out = out?;
    // tar's complaint explains a broken pipe; a host read error stands.
    if out.status != 0 {
        return Err(CpError::SandboxTar {
            name: sb.name().to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr)
                .lines()
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    produced
}

/// Copies `src` in the running sandbox `sb` to host `dst`: the sandbox's
/// `tar -c` writes it, the host unpacks it confined to the target (see
/// [`super::untar`]) and moves it into place only once tar has ended
/// well. SIGINT and SIGTERM stop it, leaving the host as it was.
fn copy_out_of_sandbox(
    sb: &msb::Sandbox,
    src: &Path,
    dst: &Path,
    keep_times: bool,
) -> Result<(), CpError> {
    // Sandbox paths are absolute, as `msb exec` sees them.
    let src = Path::new("/").join(src);
    let (dir, top) = if src == Path::new("/") {
        (src.clone(), OsString::from("."))
    } else {
        match (src.parent(), src.file_name()) {
            (Some(dir), Some(top)) => (dir.to_owned(), top.to_owned()),
            _ => return Err(CpError::NoName(src)),
        }
    };
    let target = if fs::metadata(dst).is_ok_and(|m| m.is_dir()) {
        // The sandbox's root goes in under the sandbox's name.
        dst.join(if top == "." {
            OsStr::new(sb.name())
        } else {
            &top
        })
    } else {
        dst.to_owned()
    };
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| CpError::NotUtf8(p.to_owned()))
    };
    // `./NAME`: a name starting with `-` is not taken for an option.
    let member = Path::new(".").join(&top);
    let rt = runtime()?;
    let stop = super::fs::stop_on_signals();
    let mut tar = rt.block_on(
        sb.command("tar")
            .args(["-c", "-f", "-", "-C", &utf8(&dir)?, &utf8(&member)?])
            .spawn(),
    )?;
    tar.close_stdin();
    let mut out = SandboxOutput {
        rt: &rt,
        stream: &mut tar,
        chunk: Vec::new(),
        pos: 0,
        stderr: Vec::new(),
        stop,
        ended: false,
    };
    let staged = super::untar::stage(&mut out, &top, &target, keep_times);
    // GNU tar pads its archive; more than that after the end is not tar's.
    let trailer = out.drain(1 << 20);
    let stderr = std::mem::take(&mut out.stderr);
    if staged.is_err() || trailer.is_err() {
        let _ = tar.signal(libc::SIGKILL);
    }
    // A process the sandbox left holding the output open must not hold
    // the copy up: its status is then unknown.
    let status = match rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), tar.wait()).await
    }) {
        Ok(status) => status?,
        Err(_) if staged.is_err() => -1,
        Err(_) => return Err(CpError::TarHung(sb.name().to_owned())),
    };
    let tar_failed = || CpError::SandboxTar {
        name: sb.name().to_owned(),
        status,
        stderr: String::from_utf8_lossy(&stderr)
            .lines()
            .collect::<Vec<_>>()
            .join("; "),
    };
    match staged {
        Ok(staged) => {
            trailer?;
            if status != 0 {
                return Err(tar_failed());
            }
            staged.land()?;
            Ok(())
        }
        // tar's complaint explains an archive that ended early or never
        // began; a refused entry stands on its own.
        Err(e @ (super::untar::UntarError::Read(_) | super::untar::UntarError::Empty)) => Err(
            if status != 0 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tar_failed()
            } else {
                e.into()
            },
        ),
        Err(e) => Err(e.into()),
    }
}

/// The standard output of a command in a sandbox as a reader, keeping the
/// first 4 KiB of its standard error for an error message, and failing
/// once a stop signal came.
struct SandboxOutput<'a> {
    rt: &'a tokio::runtime::Runtime,
    stream: &'a mut msb::ExecStream,
    chunk: Vec<u8>,
    pos: usize,
    stderr: Vec<u8>,
    stop: &'static std::sync::atomic::AtomicBool,
    ended: bool,
}

impl SandboxOutput<'_> {
    /// Reads on to the end of the output, failing past `limit` bytes.
    fn drain(&mut self, limit: u64) -> Result<(), CpError> {
        match io::copy(&mut io::Read::take(&mut *self, limit + 1), &mut io::sink()) {
            Ok(n) if n <= limit => Ok(()),
            _ => Err(CpError::TarTrailer),
        }
    }
}

impl io::Read for SandboxOutput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::other("interrupted by a signal"));
            }
            // Woken now and then to notice a stop signal.
            let next = self.rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(100), self.stream.next())
                    .await
            });
            match next {
                Err(_) => {}
                Ok(None) => self.ended = true,
                Ok(Some(msb::ExecEvent::Stdout(b))) => {
                    self.chunk = b;
                    self.pos = 0;
                }
                Ok(Some(msb::ExecEvent::Stderr(b))) => {
                    let room = (4usize << 10).saturating_sub(self.stderr.len());
                    self.stderr.extend(&b[..b.len().min(room)]);
                }
            }
        }
    }
}

/// The last component of `p`, after resolving `.` and `..` on the host.
fn host_name(p: &Path) -> Result<OsString, CpError> {
    if let Some(n) = p.file_name() {
        return Ok(n.to_owned());
    }
    let abs = fs::canonicalize(p).map_err(|source| CpError::HostRead {
        path: p.to_owned(),
        source,
    })?;
    abs.file_name()
        .map(OsStr::to_owned)
        .ok_or_else(|| CpError::NoName(p.to_owned()))
}

/// Copies host `src` to `dst` in the volume.
fn copy_in(v: &VolumeFs, src: &Path, dst: &Path, keep_times: bool) -> Result<(), CpError> {
    let host_err = |source| CpError::HostRead {
        path: src.to_owned(),
        source,
    };
    fs::symlink_metadata(src).map_err(host_err)?;
    let into_dir = match v.stat(dst) {
        Ok(m) => match m.kind() {
            FileKind::Dir => true,
            // A symlink to a directory inside the volume is a directory to
            // copy into; `list` follows it only while it stays inside.
            FileKind::Symlink => v.list(dst).is_ok(),
            _ => false,
        },
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e.into()),
    };
    let target = if into_dir {
        dst.join(host_name(src)?)
    } else {
        dst.to_owned()
    };
    // Also refuses a target that escapes before anything is written.
    let existed = v.exists(&target)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let (reader, writer) = io::pipe().map_err(host_err)?;
    let result = std::thread::scope(|s| {
        let producer = s.spawn(|| write_tar(src, &target, keep_times, now, writer));
        let imported = archive::import(v, reader, &mut |_| {});
        let produced = producer.join().expect("tar writer does not panic");
        match (produced, imported) {
            // The importer stopped reading (a refused entry, the quota):
            // its reason is the cause.
            (Err(CpError::HostRead { source, .. }), Err(i))
                if source.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(i.into())
            }
            // Otherwise a failed host read is the cause, and the importer
            // only saw a cut-off archive.
            (Err(p), _) => Err(p),
            (Ok(()), imported) => imported.map(drop).map_err(CpError::from),
        }
    });
    if let Err(e) = result {
        // Leave nothing partial: a new target goes entirely, and what was
        // written into an existing one is taken out again.
        if !existed {
            let _ = v.remove_all(&target);
        } else if let CpError::Import(f) = &e {
            for p in f.written.paths.iter().rev() {
                let _ = v.remove(p);
            }
        }
        // What the import had written is gone again: only its reason stays.
        return Err(match e {
            CpError::Import(f) => CpError::Archive(Box::new(f.error)),
            e => e,
        });
    }
    Ok(())
}

/// Writes the host tree at `src` as a tar archive whose names start at
/// `target`; `keep_times` keeps modification times, else they are `now`.
fn write_tar(
    src: &Path,
    target: &Path,
    keep_times: bool,
    now: u64,
    out: impl Write,
) -> Result<(), CpError> {
    let mut tar = tar::Builder::new(out);
    add_entry(&mut tar, src, target, keep_times, now)?;
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| CpError::HostRead {
            path: src.to_owned(),
            source,
        })
}

fn add_entry(
    tar: &mut tar::Builder<impl Write>,
    host: &Path,
    rel: &Path,
    keep_times: bool,
    now: u64,
) -> Result<(), CpError> {
    let read_err = |source| CpError::HostRead {
        path: host.to_owned(),
        source,
    };
    let m = fs::symlink_metadata(host).map_err(read_err)?;
    let mut head = tar::Header::new_gnu();
    head.set_mode(m.mode() & 0o777);
    head.set_mtime(if keep_times {
        u64::try_from(m.mtime()).unwrap_or(0)
    } else {
        now
    });
    let ft = m.file_type();
    if ft.is_file() {
        let file = File::open(host).map_err(read_err)?;
        // The open file's size: the one its data is read at.
        let len = file.metadata().map_err(read_err)?.len();
        head.set_entry_type(tar::EntryType::Regular);
        head.set_size(len);
        // A file that shrank while read would leave the header's promise
        // unkept: the builder fails on the short read.
        tar.append_data(&mut head, rel, io::Read::take(file, len))
            .map_err(read_err)?;
    } else if ft.is_dir() {
        head.set_entry_type(tar::EntryType::Directory);
        head.set_size(0);
        tar.append_data(&mut head, rel, io::empty())
            .map_err(read_err)?;
        let mut names = fs::read_dir(host)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err)?;
        names.sort();
        for n in names {
            add_entry(tar, &host.join(&n), &rel.join(&n), keep_times, now)?;
        }
    } else if ft.is_symlink() {
        let to = fs::read_link(host).map_err(read_err)?;
        head.set_entry_type(tar::EntryType::Symlink);
        head.set_size(0);
        tar.append_link(&mut head, rel, &to).map_err(read_err)?;
    } else {
        return Err(CpError::Special(host.to_owned()));
    }
    Ok(())
}

/// Copies `src` in the volume `volume` to host `dst`.
fn copy_out(
    v: &VolumeFs,
    src: &Path,
    volume: &str,
    dst: &Path,
    keep_times: bool,
) -> Result<(), CpError> {
    let meta = v.stat(src)?;
    let target = if fs::metadata(dst).is_ok_and(|m| m.is_dir()) {
        // The volume's root goes in under the volume's name.
        dst.join(src.file_name().unwrap_or(OsStr::new(volume)))
    } else {
        dst.to_owned()
    };
    out_entry(v, src, meta.kind(), &target, keep_times)
}

fn out_entry(
    v: &VolumeFs,
    rel: &Path,
    kind: FileKind,
    host: &Path,
    keep_times: bool,
) -> Result<(), CpError> {
    let write_err = |source| CpError::HostWrite {
        path: host.to_owned(),
        source,
    };
    match kind {
        FileKind::File => {
            let mut from = v.open_file(rel)?;
            let m = from.metadata().map_err(|source| CpError::HostRead {
                path: rel.to_owned(),
                source,
            })?;
            let mut to = File::create(host).map_err(write_err)?;
            io::copy(&mut from, &mut to).map_err(write_err)?;
            to.set_permissions(fs::Permissions::from_mode(m.mode() & 0o777))
                .map_err(write_err)?;
            if keep_times {
                to.set_modified(m.modified().map_err(write_err)?)
                    .map_err(write_err)?;
            }
        }
        FileKind::Dir => {
            let m = v.stat(rel)?;
            match fs::create_dir(host) {
                Ok(()) => {}
                // Merging into an existing directory, as `cp -r` does.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && host.is_dir() => {}
                Err(e) => return Err(write_err(e)),
            }
            // Writable while it is filled, whatever its final mode.
            fs::set_permissions(host, fs::Permissions::from_mode(0o700)).map_err(write_err)?;
            for e in v.list(rel)? {
                out_entry(
                    v,
                    &rel.join(e.name()),
                    e.kind(),
                    &host.join(e.name()),
                    keep_times,
                )?;
            }
            fs::set_permissions(host, fs::Permissions::from_mode(m.mode() & 0o777))
                .map_err(write_err)?;
            if keep_times {
                File::open(host)
                    .and_then(|d| d.set_modified(m.modified()))
                    .map_err(write_err)?;
            }
        }
        FileKind::Symlink => {
            let to = v.read_link(rel)?;
            // Replaced, as `cp` replaces a file; a directory there stays
            // and makes the symlink fail.
            if fs::symlink_metadata(host).is_ok_and(|m| !m.is_dir()) {
                fs::remove_file(host).map_err(write_err)?;
            }
            std::os::unix::fs::symlink(&to, host).map_err(write_err)?;
        }
        other => eprintln!("skipped {}: {}", other.as_str(), escape(rel)),
    }
    Ok(())
}

/// The hint for `msb volume fs NAME cp FROM TO` when FROM leaves the
/// volume: a FROM that looks like a host path was probably meant for
/// `msb cp`.
pub(super) fn fs_cp_hint(
    e: FsError,
    volume: &VolumeName,
    from: &Path,
    to: &Path,
) -> Box<dyn std::error::Error> {
    let hostish = from.is_absolute() || from.starts_with("..") || from.starts_with("~");
    if e.is_path_escape() && hostish {
        Box::new(FsCpHint {
            from: from.to_owned(),
            volume: volume.to_string(),
            to: to.to_owned(),
            source: e,
        })
    } else {
        e.into()
    }
}
