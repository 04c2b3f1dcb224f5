//! Mounts of a sandbox: what the seed calls `MountConfig` and its factories.
//!
//! A [`Mount`] says what to mount (a host path, a named volume, a tmpfs, a
//! disk image) and how; a [`MountTable`] pairs mounts with guest paths and is
//! the validated form the runtime trusts: guest paths normalized and unique,
//! parents before children, policies only where a filesystem server can apply
//! them, named-volume options consistent, host paths absolute.
//!
//! The CLI grammar of the peer (`-v`, `--mount-dir`, `--mount-file`,
//! `--mount-named`, `--mount-disk`, `--tmpfs`) is parsed by [`parse_cli`].

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    HostPerms, Labels, StatVirt, VolumeConfig, VolumeConfigError, VolumeKind, VolumeName,
    parse_size_mib,
};

/// Why a mount, a guest path or a mount spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("invalid mount spec {spec:?}")]
    Spec {
        spec: String,
        #[source]
        problem: Box<MountError>,
    },
    #[error("mount at {path}")]
    At {
        path: String,
        #[source]
        problem: Box<MountError>,
    },
    #[error("guest path {0:?} must be absolute (start with /)")]
    NotAbsolute(String),
    #[error("guest path cannot be / (the sandbox root)")]
    Root,
    #[error("guest path {0:?} contains '..'")]
    DotDot(String),
    #[error("guest path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("guest path {0} is reserved for the sandbox's own procfs")]
    Reserved(String),
    #[error("guest path {0} is mounted twice")]
    Duplicate(String),
    #[error("stat virtualization off cannot be combined with host permissions mirror")]
    OffWithMirror,
    #[error(
        "{0} mounts take no stat-virt or host-perms policy; only bind and directory volumes do"
    )]
    PolicyNotAllowed(&'static str),
    #[error("named volume {name}")]
    Named {
        name: String,
        #[source]
        problem: VolumeConfigError,
    },
    #[error("size is only for disk volumes; a directory volume takes quota")]
    SizeOnDir,
    #[error("quota is only for directory volumes; a disk volume is limited by its size")]
    QuotaOnDisk,
    #[error("creating a disk volume needs size=")]
    CreateDiskWithoutSize,
    #[error("host path is empty")]
    EmptySource,
    #[error("missing guest path; expected SOURCE:/GUEST/PATH")]
    MissingDest,
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("option {key} has a bad value {value:?}: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("too many ':'-separated parts")]
    TooManyParts,
    #[error("unknown disk format {0:?}; expected raw, qcow2 or vmdk")]
    UnknownFormat(String),
    #[error("filesystem type {0:?} is not a plain name")]
    BadFstype(String),
    #[error("unknown named volume mode {0:?}; expected existing, create or ensure")]
    UnknownMode(String),
}

fn bad_value(key: &str, value: &str, reason: impl fmt::Display) -> MountError {
    MountError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A path inside the sandbox: absolute, not `/`, without `..`, normalized
/// (no `.`, no repeated or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GuestPath(String);

impl GuestPath {
    /// Validates and normalizes `path`.
    pub fn new(path: impl Into<String>) -> Result<Self, MountError> {
        let path = path.into();
        if path.contains('\0') {
            return Err(MountError::Nul(path));
        }
        if !path.starts_with('/') {
            return Err(MountError::NotAbsolute(path));
        }
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(MountError::DotDot(path)),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err(MountError::Root);
        }
        let normal = format!("/{}", parts.join("/"));
        if parts[0] == "proc" {
            return Err(MountError::Reserved(normal));
        }
        Ok(Self(normal))
    }

    /// The normalized path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the sandbox root (no leading `/`).
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// Number of components: a parent always has fewer than its children.
    pub fn depth(&self) -> usize {
        self.0.matches('/').count()
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &GuestPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for GuestPath {
    type Error = MountError;
    fn try_from(s: String) -> Result<Self, MountError> {
        Self::new(s)
    }
}

impl From<GuestPath> for String {
    fn from(p: GuestPath) -> String {
        p.0
    }
}

impl std::str::FromStr for GuestPath {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        Self::new(s)
    }
}

/// Options of bind and named mounts (the seed's `MountOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MountOptions {
    /// Mount read-only: writes fail with EROFS.
    pub readonly: bool,
    /// Direct execution of files on the mount fails.
    pub noexec: bool,
    /// setuid and setgid bits are ignored.
    pub nosuid: bool,
    /// Device files cannot be opened.
    pub nodev: bool,
    /// Stat virtualization policy; `None` keeps the default (strict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat_virt: Option<StatVirt>,
    /// Host permission policy; `None` keeps the default (private).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_perms: Option<HostPerms>,
}

impl MountOptions {
    fn flags(&self) -> MountFlags {
        MountFlags {
            readonly: self.readonly,
            noexec: self.noexec,
            nosuid: self.nosuid,
            nodev: self.nodev,
        }
    }

    fn has_policy(&self) -> bool {
        self.stat_virt.is_some() || self.host_perms.is_some()
    }
}

/// How a named mount treats a volume that exists or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamedMode {
    /// The volume must exist.
    #[default]
    Existing,
    /// The volume must not exist; it is created (and removed again if the
    /// sandbox fails to start).
    Create,
    /// Reuse a compatible existing volume, else create it.
    EnsureExists,
}

impl fmt::Display for NamedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamedMode::Existing => "existing",
            NamedMode::Create => "create",
            NamedMode::EnsureExists => "ensure-exists",
        })
    }
}

impl std::str::FromStr for NamedMode {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        match s {
            "existing" => Ok(NamedMode::Existing),
            "create" => Ok(NamedMode::Create),
            "ensure" | "ensure-exists" => Ok(NamedMode::EnsureExists),
            other => Err(MountError::UnknownMode(other.to_string())),
        }
    }
}

/// Provisioning of a named volume at sandbox start (the seed's
/// `NamedVolumeOptions`). Fields left `None` (or empty labels) are "not
/// stated": an existing volume is not compared on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamedVolumeOptions {
    /// Existing, create or ensure-exists.
    pub mode: NamedMode,
    /// Kind; a volume that must be created is a directory unless stated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<VolumeKind>,
    /// Capacity of a disk volume, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u32>,
    /// Quota of a directory volume, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_mib: Option<u32>,
    /// Labels for a created volume, and required of an existing one.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

impl NamedVolumeOptions {
    /// The kind a volume created for this mount gets.
    pub fn create_kind(&self) -> VolumeKind {
        self.kind.unwrap_or(if self.size_mib.is_some() {
            VolumeKind::Disk
        } else {
            VolumeKind::Dir
        })
    }

    /// The configuration of the volume to create for this mount.
    pub fn volume_config(&self, name: &VolumeName) -> Result<VolumeConfig, MountError> {
        let kind = self.create_kind();
        if kind == VolumeKind::Disk && self.size_mib.is_none() {
            return Err(MountError::CreateDiskWithoutSize);
        }
        VolumeConfig::new(
            name.clone(),
            kind,
            self.size_mib,
            self.quota_mib,
            self.labels.clone(),
        )
        .map_err(|problem| MountError::Named {
            name: name.to_string(),
            problem,
        })
    }

    fn check(&self, name: &VolumeName) -> Result<(), MountError> {
        let kind = self.create_kind();
        match kind {
            VolumeKind::Dir if self.size_mib.is_some() => return Err(MountError::SizeOnDir),
            VolumeKind::Disk if self.quota_mib.is_some() => return Err(MountError::QuotaOnDisk),
            _ => {}
        }
        match (self.mode, kind, self.size_mib) {
            (NamedMode::Existing, ..) => {}
            // ensure-exists may reuse a disk volume without restating its size
            (NamedMode::EnsureExists, VolumeKind::Disk, None) => {}
            (NamedMode::Create | NamedMode::EnsureExists, ..) => {
                self.volume_config(name)?;
            }
        }
        Ok(())
    }
}

/// Options of a tmpfs mount (the seed's `TmpfsOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TmpfsOptions {
    /// Size limit in MiB; `None` is the kernel default (half of RAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u32>,
    /// Mount read-only.
    pub readonly: bool,
    /// Direct execution fails.
    pub noexec: bool,
    /// setuid and setgid bits are ignored.
    pub nosuid: bool,
    /// Device files cannot be opened.
    pub nodev: bool,
}

/// Format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain image.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VMware disk.
    Vmdk,
}

impl DiskFormat {
    /// The format named by the file extension: `.qcow2`, `.vmdk`; anything
    /// else is raw.
    pub fn from_extension(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("qcow2") => DiskFormat::Qcow2,
            Some(e) if e.eq_ignore_ascii_case("vmdk") => DiskFormat::Vmdk,
            _ => DiskFormat::Raw,
        }
    }

    /// `"raw"`, `"qcow2"` or `"vmdk"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            "vmdk" => Ok(DiskFormat::Vmdk),
            other => Err(MountError::UnknownFormat(other.to_string())),
        }
    }
}

/// Options of a disk image mount (the seed's `DiskOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskOptions {
    /// Image format; `None` takes it from the file extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Filesystem inside; `None` detects it from the superblock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Mount read-only (and attach the image read-only).
    pub readonly: bool,
    /// Direct execution fails.
    pub noexec: bool,
    /// setuid and setgid bits are ignored.
    pub nosuid: bool,
    /// Device files cannot be opened.
    pub nodev: bool,
}

/// Which kind of file a bind mount expects at its host path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindExpect {
    /// A directory or a file.
    #[default]
    Any,
    /// A directory (`--mount-dir`).
    Dir,
    /// A single file (`--mount-file`).
    File,
}

/// One mount, as the seed's `Mount.*` factories build it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Mount {
    /// A host directory or single file.
    Bind {
        /// Host path; a relative one is made absolute when the table is built.
        host_path: PathBuf,
        /// What the host path must be.
        #[serde(default, skip_serializing_if = "is_any")]
        expect: BindExpect,
        /// Options.
        #[serde(default)]
        options: MountOptions,
    },
    /// A named volume.
    Named {
        /// The volume.
        name: VolumeName,
        /// Options.
        #[serde(default)]
        options: MountOptions,
        /// Provisioning.
        #[serde(default)]
        volume: NamedVolumeOptions,
    },
    /// A fresh in-memory filesystem.
    Tmpfs {
        /// Options.
        #[serde(default)]
        options: TmpfsOptions,
    },
    /// A disk image on the host.
    Disk {
        /// Image path; a relative one is made absolute when the table is built.
        host_path: PathBuf,
        /// Options.
        #[serde(default)]
        options: DiskOptions,
    },
}

fn is_any(e: &BindExpect) -> bool {
    *e == BindExpect::Any
}

impl Mount {
    /// Binds a host directory or file.
    pub fn bind(host_path: impl Into<PathBuf>, options: MountOptions) -> Self {
        Mount::Bind {
            host_path: host_path.into(),
            expect: BindExpect::Any,
            options,
        }
    }

    /// Mounts an existing named volume.
    pub fn named(name: VolumeName, options: MountOptions) -> Self {
        Self::named_with(name, options, NamedVolumeOptions::default())
    }

    /// Mounts a named volume, creating it as `volume` says.
    pub fn named_with(name: VolumeName, options: MountOptions, volume: NamedVolumeOptions) -> Self {
        Mount::Named {
            name,
            options,
            volume,
        }
    }

    /// Mounts a fresh tmpfs.
    pub fn tmpfs(options: TmpfsOptions) -> Self {
        Mount::Tmpfs { options }
    }

    /// Mounts the filesystem inside a disk image.
    pub fn disk(host_path: impl Into<PathBuf>, options: DiskOptions) -> Self {
        Mount::Disk {
            host_path: host_path.into(),
            options,
        }
    }

    /// The kernel mount flags asked for.
    pub fn flags(&self) -> MountFlags {
        match self {
            Mount::Bind { options, .. } | Mount::Named { options, .. } => options.flags(),
            Mount::Tmpfs { options: o } => MountFlags {
                readonly: o.readonly,
                noexec: o.noexec,
                nosuid: o.nosuid,
                nodev: o.nodev,
            },
            Mount::Disk { options: o, .. } => MountFlags {
                readonly: o.readonly,
                noexec: o.noexec,
                nosuid: o.nosuid,
                nodev: o.nodev,
            },
        }
    }

    /// `bind`, `named`, `tmpfs` or `disk`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Mount::Bind { .. } => "bind",
            Mount::Named { .. } => "named",
            Mount::Tmpfs { .. } => "tmpfs",
            Mount::Disk { .. } => "disk",
        }
    }

    /// Checks the rules that need no I/O, makes host paths absolute against
    /// `cwd` and fills in the disk format from the extension.
    fn validate(mut self, cwd: &Path) -> Result<Self, MountError> {
        match &mut self {
            Mount::Bind {
                host_path, options, ..
            } => {
                check_policy(options)?;
                *host_path = absolute(host_path, cwd)?;
            }
            Mount::Named {
                name,
                options,
                volume,
            } => {
                check_policy(options)?;
                if options.has_policy() && volume.kind == Some(VolumeKind::Disk) {
                    return Err(MountError::PolicyNotAllowed("disk volume"));
                }
                volume.check(name)?;
            }
            Mount::Tmpfs { .. } => {}
            Mount::Disk { host_path, options } => {
                *host_path = absolute(host_path, cwd)?;
                if options.format.is_none() {
                    options.format = Some(DiskFormat::from_extension(host_path));
                }
                if let Some(t) = &options.fstype {
                    check_fstype(t)?;
                }
            }
        }
        Ok(self)
    }
}

fn check_policy(o: &MountOptions) -> Result<(), MountError> {
    if o.stat_virt == Some(StatVirt::Off) && o.host_perms == Some(HostPerms::Mirror) {
        return Err(MountError::OffWithMirror);
    }
    Ok(())
}

fn check_fstype(t: &str) -> Result<(), MountError> {
    let ok = !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(MountError::BadFstype(t.to_string()))
    }
}

/// `path` made absolute against `cwd`, with `.` components dropped. `..` is
/// kept: resolving it lexically could differ from what symlinks say.
fn absolute(path: &Path, cwd: &Path) -> Result<PathBuf, MountError> {
    if path.as_os_str().is_empty() {
        return Err(MountError::EmptySource);
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    Ok(joined
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

/// Kernel mount flags of one mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFlags {
    /// `MS_RDONLY`.
    pub readonly: bool,
    /// `MS_NOEXEC`.
    pub noexec: bool,
    /// `MS_NOSUID`.
    pub nosuid: bool,
    /// `MS_NODEV`.
    pub nodev: bool,
}

/// A mount at a guest path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Where the mount appears in the sandbox.
    pub guest: GuestPath,
    /// What is mounted.
    #[serde(flatten)]
    pub mount: Mount,
}

/// A validated set of mounts, parents before children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MountTable(Vec<MountEntry>);

impl MountTable {
    /// Validates `mounts`; relative host paths are resolved against `cwd`
    /// (the caller's working directory, passed in so this stays I/O-free).
    pub fn new(
        mounts: impl IntoIterator<Item = (GuestPath, Mount)>,
        cwd: &Path,
    ) -> Result<Self, MountError> {
        let mut entries = Vec::new();
        for (guest, mount) in mounts {
            let mount = mount.validate(cwd).map_err(|problem| MountError::At {
                path: guest.to_string(),
                problem: Box::new(problem),
            })?;
            if entries.iter().any(|e: &MountEntry| e.guest == guest) {
                return Err(MountError::Duplicate(guest.to_string()));
            }
            entries.push(MountEntry { guest, mount });
        }
        // Stable: equal depths keep the caller's order.
        entries.sort_by_key(|e| e.guest.depth());
        Ok(Self(entries))
    }

    /// The entries, parents before children.
    pub fn entries(&self) -> &[MountEntry] {
        &self.0
    }

    /// Number of mounts.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no mounts.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for MountTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<MountEntry>::deserialize(d)?;
        // JSON carries absolute paths; a relative one has no base to resolve
        // against, so it is refused rather than guessed.
        for e in &entries {
            if let Mount::Bind { host_path, .. } | Mount::Disk { host_path, .. } = &e.mount
                && !host_path.is_absolute()
            {
                return Err(serde::de::Error::custom(format!(
                    "host path {} of {} is not absolute",
                    host_path.display(),
                    e.guest
                )));
            }
        }
        MountTable::new(
            entries.into_iter().map(|e| (e.guest, e.mount)),
            Path::new("/"),
        )
        .map_err(serde::de::Error::custom)
    }
}

/// The CLI mount flags of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliFlag {
    /// `-v/--volume SRC:DEST[:OPTS]`: a path-like SRC binds, else a named
    /// volume (ensure-exists).
    Volume,
    /// `--mount-dir SRC:DEST[:OPTS]`.
    MountDir,
    /// `--mount-file SRC:DEST[:OPTS]`.
    MountFile,
    /// `--mount-named NAME:DEST[:OPTS]`.
    MountNamed,
    /// `--mount-disk IMG:DEST[:OPTS]`.
    MountDisk,
    /// `--tmpfs PATH[:SIZE][:OPTS]`.
    Tmpfs,
}

impl CliFlag {
    fn name(self) -> &'static str {
        match self {
            CliFlag::Volume => "--volume",
            CliFlag::MountDir => "--mount-dir",
            CliFlag::MountFile => "--mount-file",
            CliFlag::MountNamed => "--mount-named",
            CliFlag::MountDisk => "--mount-disk",
            CliFlag::Tmpfs => "--tmpfs",
        }
    }
}

/// Parses one CLI mount spec. The error names the flag and spec.
///
/// The first `:` followed by `/` ends SOURCE (so host paths may contain
/// `:`); OPTS is a comma-separated list of `ro`, `rw`, `noexec`, `nosuid`,
/// `nodev`, `stat-virt=`, `host-perms=`, and per kind `kind=`, `size=`,
/// `quota=`, `mode=`, `label=K=V` (named), `format=`, `fstype=` (disk),
/// `size=` (tmpfs). On the CLI a named mount defaults to ensure-exists.
pub fn parse_cli(flag: CliFlag, spec: &str) -> Result<(GuestPath, Mount), MountError> {
    parse_inner(flag, spec).map_err(|problem| MountError::Spec {
        spec: format!("{} {spec}", flag.name()),
        problem: Box::new(problem),
    })
}

fn parse_inner(flag: CliFlag, spec: &str) -> Result<(GuestPath, Mount), MountError> {
    if flag == CliFlag::Tmpfs {
        return parse_tmpfs(spec);
    }
    let Some(split) = spec.find(":/") else {
        // `demo:data` names a guest path, just not an absolute one.
        return Err(match spec.split(':').nth(1) {
            Some(dest) if !dest.is_empty() => MountError::NotAbsolute(dest.to_string()),
            _ => MountError::MissingDest,
        });
    };
    let (source, rest) = (&spec[..split], &spec[split + 1..]);
    if source.is_empty() {
        return Err(MountError::EmptySource);
    }
    let (dest, opts) = match rest.split_once(':') {
        Some((d, o)) => (d, Some(o)),
        None => (rest, None),
    };
    let guest = GuestPath::new(dest)?;
    let opts = split_opts(opts);
    let path_like = source.starts_with(['/', '.', '~']) || source.contains('/');
    let mount = match flag {
        CliFlag::Volume if path_like => bind(source, BindExpect::Any, &opts)?,
        CliFlag::MountDir => bind(source, BindExpect::Dir, &opts)?,
        CliFlag::MountFile => bind(source, BindExpect::File, &opts)?,
        CliFlag::Volume | CliFlag::MountNamed => named(source, &opts)?,
        CliFlag::MountDisk => disk(source, &opts)?,
        CliFlag::Tmpfs => unreachable!("handled above"),
    };
    Ok((guest, mount))
}

fn split_opts(opts: Option<&str>) -> Vec<&str> {
    opts.map(|o| o.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// Applies a flag option common to every kind; `Ok(false)` if `opt` is not one.
fn common_flag(opt: &str, f: &mut MountFlags) -> Result<bool, MountError> {
    match opt {
        "ro" | "readonly" => f.readonly = true,
        "rw" => f.readonly = false,
        "noexec" => f.noexec = true,
        "nosuid" => f.nosuid = true,
        "nodev" => f.nodev = true,
        "exec" | "suid" | "dev" => {
            return Err(bad_value(opt, "", "it is already the default"));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Applies `stat-virt=`/`host-perms=`; `Ok(false)` if `opt` is not one.
fn policy_opt(opt: &str, o: &mut MountOptions) -> Result<bool, MountError> {
    if let Some(v) = opt.strip_prefix("stat-virt=") {
        o.stat_virt = Some(v.parse().map_err(|e| bad_value("stat-virt", v, e))?);
    } else if let Some(v) = opt.strip_prefix("host-perms=") {
        o.host_perms = Some(v.parse().map_err(|e| bad_value("host-perms", v, e))?);
    } else {
        return Ok(false);
    }
    Ok(true)
}

fn is_policy(opt: &str) -> bool {
    opt.starts_with("stat-virt=") || opt.starts_with("host-perms=")
}

fn mount_options(
    opts: &[&str],
    mut extra: impl FnMut(&str) -> Result<bool, MountError>,
) -> Result<MountOptions, MountError> {
    let mut o = MountOptions::default();
    let mut f = MountFlags::default();
    for opt in opts {
        if !(common_flag(opt, &mut f)? || policy_opt(opt, &mut o)? || extra(opt)?) {
            return Err(MountError::UnknownOption(opt.to_string()));
        }
    }
    o.readonly = f.readonly;
    o.noexec = f.noexec;
    o.nosuid = f.nosuid;
    o.nodev = f.nodev;
    check_policy(&o)?;
    Ok(o)
}

fn bind(source: &str, expect: BindExpect, opts: &[&str]) -> Result<Mount, MountError> {
    let options = mount_options(opts, |_| Ok(false))?;
    Ok(Mount::Bind {
        host_path: PathBuf::from(source),
        expect,
        options,
    })
}

fn named(source: &str, opts: &[&str]) -> Result<Mount, MountError> {
    let name = VolumeName::new(source).map_err(|e| bad_value("name", source, e))?;
    let mut volume = NamedVolumeOptions {
        mode: NamedMode::EnsureExists,
        ..Default::default()
    };
    let options = mount_options(opts, |opt| {
        let Some((key, value)) = opt.split_once('=') else {
            return Ok(false);
        };
        match key {
            "kind" => volume.kind = Some(value.parse().map_err(|e| bad_value(key, value, e))?),
            "size" => {
                volume.size_mib = Some(parse_size_mib(value).map_err(|e| bad_value(key, value, e))?)
            }
            "quota" => {
                volume.quota_mib =
                    Some(parse_size_mib(value).map_err(|e| bad_value(key, value, e))?)
            }
            "mode" => volume.mode = value.parse()?,
            "label" => volume
                .labels
                .insert_pair(value)
                .map_err(|e| bad_value(key, value, e))?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let mount = Mount::named_with(name, options, volume);
    mount.validate(Path::new("/"))
}

fn disk(source: &str, opts: &[&str]) -> Result<Mount, MountError> {
    let mut options = DiskOptions::default();
    let mut f = MountFlags::default();
    for opt in opts {
        if common_flag(opt, &mut f)? {
            continue;
        }
        if is_policy(opt) {
            return Err(MountError::PolicyNotAllowed("disk image"));
        }
        match opt.split_once('=') {
            Some(("format", v)) => options.format = Some(v.parse()?),
            Some(("fstype", v)) => {
                check_fstype(v)?;
                options.fstype = Some(v.to_string());
            }
            _ => return Err(MountError::UnknownOption(opt.to_string())),
        }
    }
    options.readonly = f.readonly;
    options.noexec = f.noexec;
    options.nosuid = f.nosuid;
    options.nodev = f.nodev;
    Ok(Mount::disk(source, options))
}

fn parse_tmpfs(spec: &str) -> Result<(GuestPath, Mount), MountError> {
    let mut parts = spec.split(':');
    let guest = GuestPath::new(parts.next().unwrap_or_default())?;
    let rest: Vec<&str> = parts.collect();
    let (size, opts) = match rest.as_slice() {
        [] => (None, None),
        // A lone second part is a size when it parses as one, else options.
        [one] if parse_size_mib(one).is_ok() || one.starts_with(|c: char| c.is_ascii_digit()) => {
            (Some(*one), None)
        }
        [one] => (None, Some(*one)),
        [size, opts] => (Some(*size), Some(*opts)),
        _ => return Err(MountError::TooManyParts),
    };
    let mut options = TmpfsOptions::default();
    if let Some(s) = size.filter(|s| !s.is_empty()) {
        options.size_mib = Some(parse_size_mib(s).map_err(|e| bad_value("size", s, e))?);
    }
    let mut f = MountFlags::default();
    for opt in split_opts(opts) {
        if common_flag(opt, &mut f)? {
            continue;
        }
        if is_policy(opt) {
            return Err(MountError::PolicyNotAllowed("tmpfs"));
        }
        match opt.split_once('=') {
            Some(("size", v)) => {
                options.size_mib = Some(parse_size_mib(v).map_err(|e| bad_value("size", v, e))?)
            }
            _ => return Err(MountError::UnknownOption(opt.to_string())),
        }
    }
    options.readonly = f.readonly;
    options.noexec = f.noexec;
    options.nosuid = f.nosuid;
    options.nodev = f.nodev;
    Ok((guest, Mount::tmpfs(options)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp(s: &str) -> GuestPath {
        GuestPath::new(s).unwrap()
    }

    fn name(s: &str) -> VolumeName {
        VolumeName::new(s).unwrap()
    }

    fn problem(e: MountError) -> MountError {
        match e {
            MountError::Spec { problem, .. } | MountError::At { problem, .. } => *problem,
            other => other,
        }
    }

    fn parse_err(flag: CliFlag, spec: &str) -> MountError {
        let e = parse_cli(flag, spec).unwrap_err();
        let msg = error_chain(&e);
        assert!(msg.contains(spec), "{msg}");
        problem(e)
    }

    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    }

    #[test]
    fn guest_paths_are_normalized() {
        assert_eq!(gp("/data").as_str(), "/data");
        assert_eq!(gp("//data//x/./y/").as_str(), "/data/x/y");
        assert_eq!(gp("/a/b").relative(), "a/b");
        assert_eq!(gp("/a/b").depth(), 2);
        assert!(gp("/a/b").is_within(&gp("/a")));
        assert!(gp("/a").is_within(&gp("/a")));
        assert!(!gp("/ab").is_within(&gp("/a")));
    }

    #[test]
    fn guest_path_rules() {
        assert_eq!(
            GuestPath::new("data"),
            Err(MountError::NotAbsolute("data".into()))
        );
        assert_eq!(GuestPath::new(""), Err(MountError::NotAbsolute("".into())));
        assert_eq!(GuestPath::new("/"), Err(MountError::Root));
        assert_eq!(GuestPath::new("//./"), Err(MountError::Root));
        assert_eq!(
            GuestPath::new("/a/../b"),
            Err(MountError::DotDot("/a/../b".into()))
        );
        assert_eq!(GuestPath::new("/a\0"), Err(MountError::Nul("/a\0".into())));
        assert_eq!(
            GuestPath::new("/proc/x"),
            Err(MountError::Reserved("/proc/x".into()))
        );
        assert!(GuestPath::new("/procfs").is_ok());
    }

    #[test]
    fn table_orders_parents_first_and_rejects_duplicates() {
        let t = MountTable::new(
            [
                (gp("/a/b/c"), Mount::tmpfs(TmpfsOptions::default())),
                (gp("/z"), Mount::tmpfs(TmpfsOptions::default())),
                (gp("/a/b"), Mount::tmpfs(TmpfsOptions::default())),
                (gp("/a"), Mount::tmpfs(TmpfsOptions::default())),
            ],
            Path::new("/"),
        )
        .unwrap();
        let order: Vec<_> = t.entries().iter().map(|e| e.guest.as_str()).collect();
        assert_eq!(order, ["/z", "/a", "/a/b", "/a/b/c"]);
        let dup = MountTable::new(
            [
                (gp("/a"), Mount::tmpfs(TmpfsOptions::default())),
                (gp("/a/"), Mount::bind("/x", MountOptions::default())),
            ],
            Path::new("/"),
        );
        assert_eq!(dup, Err(MountError::Duplicate("/a".into())));
    }

    #[test]
    fn relative_host_paths_become_absolute() {
        let t = MountTable::new(
            [
                (gp("/a"), Mount::bind("./src/../x", MountOptions::default())),
                (gp("/b"), Mount::disk("img.qcow2", DiskOptions::default())),
            ],
            Path::new("/work/dir"),
        )
        .unwrap();
        match &t.entries()[0].mount {
            Mount::Bind { host_path, .. } => {
                assert_eq!(host_path, Path::new("/work/dir/src/../x"))
            }
            m => panic!("{m:?}"),
        }
        match &t.entries()[1].mount {
            Mount::Disk { host_path, options } => {
                assert_eq!(host_path, Path::new("/work/dir/img.qcow2"));
                assert_eq!(options.format, Some(DiskFormat::Qcow2));
            }
            m => panic!("{m:?}"),
        }
        let empty = MountTable::new(
            [(gp("/a"), Mount::bind("", MountOptions::default()))],
            Path::new("/"),
        );
        assert_eq!(empty.map_err(problem), Err(MountError::EmptySource));
    }

    #[test]
    fn disk_format_from_extension_unless_given() {
        assert_eq!(
            DiskFormat::from_extension(Path::new("a.QCOW2")),
            DiskFormat::Qcow2
        );
        assert_eq!(
            DiskFormat::from_extension(Path::new("a.vmdk")),
            DiskFormat::Vmdk
        );
        assert_eq!(
            DiskFormat::from_extension(Path::new("a.raw")),
            DiskFormat::Raw
        );
        assert_eq!(
            DiskFormat::from_extension(Path::new("a.img")),
            DiskFormat::Raw
        );
        assert_eq!(DiskFormat::from_extension(Path::new("a")), DiskFormat::Raw);
        let t = MountTable::new(
            [(
                gp("/d"),
                Mount::disk(
                    "/x.qcow2",
                    DiskOptions {
                        format: Some(DiskFormat::Raw),
                        ..Default::default()
                    },
                ),
            )],
            Path::new("/"),
        )
        .unwrap();
        assert!(matches!(
            &t.entries()[0].mount,
            Mount::Disk { options, .. } if options.format == Some(DiskFormat::Raw)
        ));
    }

    #[test]
    fn policy_rules() {
        let off_mirror = MountOptions {
            stat_virt: Some(StatVirt::Off),
            host_perms: Some(HostPerms::Mirror),
            ..Default::default()
        };
        let t = MountTable::new([(gp("/a"), Mount::bind("/x", off_mirror))], Path::new("/"));
        assert_eq!(t.map_err(problem), Err(MountError::OffWithMirror));
        let t = MountTable::new(
            [(gp("/a"), Mount::named(name("v"), off_mirror))],
            Path::new("/"),
        );
        assert_eq!(t.map_err(problem), Err(MountError::OffWithMirror));
        let relaxed = MountOptions {
            stat_virt: Some(StatVirt::Relaxed),
            ..Default::default()
        };
        let t = MountTable::new(
            [(
                gp("/a"),
                Mount::named_with(
                    name("v"),
                    relaxed,
                    NamedVolumeOptions {
                        kind: Some(VolumeKind::Disk),
                        ..Default::default()
                    },
                ),
            )],
            Path::new("/"),
        );
        assert_eq!(
            t.map_err(problem),
            Err(MountError::PolicyNotAllowed("disk volume"))
        );
        assert!(MountTable::new([(gp("/a"), Mount::bind("/x", relaxed))], Path::new("/")).is_ok());
        assert_eq!(
            parse_err(CliFlag::Tmpfs, "/t:stat-virt=off"),
            MountError::PolicyNotAllowed("tmpfs")
        );
        assert_eq!(
            parse_err(CliFlag::MountDisk, "/i.raw:/d:host-perms=mirror"),
            MountError::PolicyNotAllowed("disk image")
        );
        assert_eq!(
            parse_err(CliFlag::Volume, "/x:/d:stat-virt=off,host-perms=mirror"),
            MountError::OffWithMirror
        );
        // The policy may not be smuggled into tmpfs or disk through JSON.
        let json = r#"[{"guest":"/t","type":"tmpfs","options":{"stat_virt":"off"}}]"#;
        assert!(serde_json::from_str::<MountTable>(json).is_err());
    }

    #[test]
    fn named_option_rules() {
        let with = |v: NamedVolumeOptions| {
            MountTable::new(
                [(
                    gp("/a"),
                    Mount::named_with(name("v"), MountOptions::default(), v),
                )],
                Path::new("/"),
            )
            .map_err(problem)
        };
        assert!(with(NamedVolumeOptions::default()).is_ok());
        assert_eq!(
            with(NamedVolumeOptions {
                kind: Some(VolumeKind::Dir),
                size_mib: Some(64),
                ..Default::default()
            }),
            Err(MountError::SizeOnDir)
        );
        assert_eq!(
            with(NamedVolumeOptions {
                kind: Some(VolumeKind::Disk),
                quota_mib: Some(64),
                ..Default::default()
            }),
            Err(MountError::QuotaOnDisk)
        );
        assert_eq!(
            with(NamedVolumeOptions {
                mode: NamedMode::Create,
                kind: Some(VolumeKind::Disk),
                ..Default::default()
            }),
            Err(MountError::CreateDiskWithoutSize)
        );
        // ensure-exists may reuse a disk without restating its size
        assert!(
            with(NamedVolumeOptions {
                mode: NamedMode::EnsureExists,
                kind: Some(VolumeKind::Disk),
                ..Default::default()
            })
            .is_ok()
        );
        assert!(matches!(
            with(NamedVolumeOptions {
                mode: NamedMode::Create,
                size_mib: Some(1),
                ..Default::default()
            }),
            Err(MountError::Named {
                problem: VolumeConfigError::DiskSizeOutOfRange(1),
                ..
            })
        ));
        assert!(matches!(
            with(NamedVolumeOptions {
                mode: NamedMode::Create,
                quota_mib: Some(0),
                ..Default::default()
            }),
            Err(MountError::Named {
                problem: VolumeConfigError::ZeroQuota,
                ..
            })
        ));
        // size without kind means disk
        let o = NamedVolumeOptions {
            size_mib: Some(64),
            ..Default::default()
        };
        assert_eq!(o.create_kind(), VolumeKind::Disk);
        assert_eq!(o.volume_config(&name("v")).unwrap().size_mib(), Some(64));
        assert_eq!(NamedVolumeOptions::default().create_kind(), VolumeKind::Dir);
    }

    #[test]
    fn cli_volume_bind_or_named() {
        let (g, m) = parse_cli(CliFlag::Volume, "/host/dir:/data:ro,noexec").unwrap();
        assert_eq!(g.as_str(), "/data");
        assert_eq!(
            m,
            Mount::Bind {
                host_path: "/host/dir".into(),
                expect: BindExpect::Any,
                options: MountOptions {
                    readonly: true,
                    noexec: true,
                    ..Default::default()
                }
            }
        );
        let (_, m) = parse_cli(CliFlag::Volume, "./rel:/data").unwrap();
        assert!(matches!(m, Mount::Bind { ref host_path, .. } if host_path == Path::new("./rel")));
        let (_, m) = parse_cli(CliFlag::Volume, "a/b:/data").unwrap();
        assert!(matches!(m, Mount::Bind { .. }));
        let (_, m) = parse_cli(CliFlag::Volume, "demo:/data").unwrap();
        assert_eq!(
            m,
            Mount::Named {
                name: name("demo"),
                options: MountOptions::default(),
                volume: NamedVolumeOptions {
                    mode: NamedMode::EnsureExists,
                    ..Default::default()
                }
            }
        );
        // SOURCE ends at the first ':' followed by '/'
        let (g, m) = parse_cli(CliFlag::Volume, "/a:b/c:/data:rw").unwrap();
        assert_eq!(g.as_str(), "/data");
        assert!(matches!(m, Mount::Bind { ref host_path, .. } if host_path == Path::new("/a:b/c")));
        let (_, m) = parse_cli(
            CliFlag::Volume,
            "/x:/d:ro,rw,nosuid,nodev,stat-virt=relaxed,host-perms=mirror",
        )
        .unwrap();
        assert_eq!(
            m.flags(),
            MountFlags {
                readonly: false,
                noexec: false,
                nosuid: true,
                nodev: true
            }
        );
        assert!(matches!(
            m,
            Mount::Bind { options, .. }
                if options.stat_virt == Some(StatVirt::Relaxed)
                    && options.host_perms == Some(HostPerms::Mirror)
        ));
    }

    #[test]
    fn cli_dir_and_file() {
        let (_, m) = parse_cli(CliFlag::MountDir, "src:/s").unwrap();
        assert!(matches!(
            m,
            Mount::Bind {
                expect: BindExpect::Dir,
                ..
            }
        ));
        let (_, m) = parse_cli(CliFlag::MountFile, "/etc/hosts:/etc/hosts:ro").unwrap();
        assert!(matches!(
            m,
            Mount::Bind {
                expect: BindExpect::File,
                ..
            }
        ));
    }

    #[test]
    fn cli_named() {
        let (_, m) = parse_cli(
            CliFlag::MountNamed,
            "cache:/c:kind=dir,quota=1G,mode=create,label=team=ci,ro",
        )
        .unwrap();
        let mut labels = Labels::new();
        labels.insert("team", "ci").unwrap();
        assert_eq!(
            m,
            Mount::Named {
                name: name("cache"),
                options: MountOptions {
                    readonly: true,
                    ..Default::default()
                },
                volume: NamedVolumeOptions {
                    mode: NamedMode::Create,
                    kind: Some(VolumeKind::Dir),
                    size_mib: None,
                    quota_mib: Some(1024),
                    labels,
                }
            }
        );
        let (_, m) = parse_cli(CliFlag::MountNamed, "d:/d:kind=disk,size=64M").unwrap();
        assert!(matches!(m, Mount::Named { ref volume, .. }
            if volume.kind == Some(VolumeKind::Disk) && volume.size_mib == Some(64)
                && volume.mode == NamedMode::EnsureExists));
        for (spec, mode) in [
            ("d:/d:mode=existing", NamedMode::Existing),
            ("d:/d:mode=ensure", NamedMode::EnsureExists),
            ("d:/d:mode=ensure-exists", NamedMode::EnsureExists),
        ] {
            let (_, m) = parse_cli(CliFlag::MountNamed, spec).unwrap();
            assert!(matches!(m, Mount::Named { ref volume, .. } if volume.mode == mode));
        }
        assert_eq!(
            parse_err(CliFlag::MountNamed, "d:/d:mode=maybe"),
            MountError::UnknownMode("maybe".into())
        );
        assert!(matches!(
            parse_err(CliFlag::MountNamed, "d:/d:kind=tape"),
            MountError::BadValue { ref key, .. } if key == "kind"
        ));
        assert!(matches!(
            parse_err(CliFlag::MountNamed, "d:/d:size=lots"),
            MountError::BadValue { ref key, .. } if key == "size"
        ));
        assert!(matches!(
            parse_err(CliFlag::MountNamed, "d:/d:quota=0"),
            MountError::BadValue { ref key, .. } if key == "quota"
        ));
        assert!(matches!(
            parse_err(CliFlag::MountNamed, "d:/d:label=novalue"),
            MountError::BadValue { ref key, .. } if key == "label"
        ));
        assert!(matches!(
            parse_err(CliFlag::MountNamed, "-bad:/d"),
            MountError::BadValue { ref key, .. } if key == "name"
        ));
        assert_eq!(
            parse_err(CliFlag::MountNamed, "d:/d:kind=dir,size=64"),
            MountError::SizeOnDir
        );
        assert_eq!(
            parse_err(CliFlag::MountNamed, "d:/d:kind=disk,quota=64"),
            MountError::QuotaOnDisk
        );
        assert_eq!(
            parse_err(CliFlag::MountNamed, "d:/d:mode=create,kind=disk"),
            MountError::CreateDiskWithoutSize
        );
        assert_eq!(
            parse_err(CliFlag::Volume, "d:/d:format=raw"),
            MountError::UnknownOption("format=raw".into())
        );
    }

    #[test]
    fn cli_disk() {
        let (g, m) = parse_cli(
            CliFlag::MountDisk,
            "/img/a.qcow2:/disk:format=raw,fstype=ext4,ro,nodev",
        )
        .unwrap();
        assert_eq!(g.as_str(), "/disk");
        assert_eq!(
            m,
            Mount::Disk {
                host_path: "/img/a.qcow2".into(),
                options: DiskOptions {
                    format: Some(DiskFormat::Raw),
                    fstype: Some("ext4".into()),
                    readonly: true,
                    nodev: true,
                    ..Default::default()
                }
            }
        );
        assert_eq!(
            parse_err(CliFlag::MountDisk, "/a.img:/d:format=iso"),
            MountError::UnknownFormat("iso".into())
        );
        assert_eq!(
            parse_err(CliFlag::MountDisk, "/a.img:/d:fstype=ext4;rm"),
            MountError::BadFstype("ext4;rm".into())
        );
        assert_eq!(
            parse_err(CliFlag::MountDisk, "/a.img:/d:quota=1"),
            MountError::UnknownOption("quota=1".into())
        );
    }

    #[test]
    fn cli_tmpfs() {
        let (g, m) = parse_cli(CliFlag::Tmpfs, "/scratch").unwrap();
        assert_eq!(g.as_str(), "/scratch");
        assert_eq!(m, Mount::tmpfs(TmpfsOptions::default()));
        let (_, m) = parse_cli(CliFlag::Tmpfs, "/s:64M").unwrap();
        assert_eq!(
            m,
            Mount::tmpfs(TmpfsOptions {
                size_mib: Some(64),
                ..Default::default()
            })
        );
        let (_, m) = parse_cli(CliFlag::Tmpfs, "/s:1G:noexec,ro").unwrap();
        assert_eq!(
            m,
            Mount::tmpfs(TmpfsOptions {
                size_mib: Some(1024),
                noexec: true,
                readonly: true,
                ..Default::default()
            })
        );
        let (_, m) = parse_cli(CliFlag::Tmpfs, "/s:nosuid,size=8").unwrap();
        assert_eq!(
            m,
            Mount::tmpfs(TmpfsOptions {
                size_mib: Some(8),
                nosuid: true,
                ..Default::default()
            })
        );
        assert!(matches!(
            parse_err(CliFlag::Tmpfs, "/s:10X"),
            MountError::BadValue { ref key, .. } if key == "size"
        ));
        assert_eq!(
            parse_err(CliFlag::Tmpfs, "/s:1:ro:x"),
            MountError::TooManyParts
        );
        assert_eq!(
            parse_err(CliFlag::Tmpfs, "s:1"),
            MountError::NotAbsolute("s".into())
        );
        assert_eq!(
            parse_err(CliFlag::Tmpfs, "/s:bogus"),
            MountError::UnknownOption("bogus".into())
        );
    }

    #[test]
    fn cli_spec_errors_name_spec_and_problem() {
        assert_eq!(parse_err(CliFlag::Volume, "demo"), MountError::MissingDest);
        assert_eq!(
            parse_err(CliFlag::Volume, "demo:data"),
            MountError::NotAbsolute("data".into())
        );
        assert_eq!(
            parse_err(CliFlag::MountNamed, "demo:data:ro"),
            MountError::NotAbsolute("data".into())
        );
        assert_eq!(parse_err(CliFlag::Volume, ":/d"), MountError::EmptySource);
        assert_eq!(parse_err(CliFlag::Volume, "/x:/"), MountError::Root);
        assert_eq!(
            parse_err(CliFlag::Volume, "/x:/a/../b"),
            MountError::DotDot("/a/../b".into())
        );
        assert_eq!(
            parse_err(CliFlag::Volume, "/x:/d:bogus"),
            MountError::UnknownOption("bogus".into())
        );
        assert!(matches!(
            parse_err(CliFlag::Volume, "/x:/d:exec"),
            MountError::BadValue { .. }
        ));
        assert!(matches!(
            parse_err(CliFlag::Volume, "/x:/d:stat-virt=loose"),
            MountError::BadValue { ref key, .. } if key == "stat-virt"
        ));
        assert!(matches!(
            parse_err(CliFlag::Volume, "/x:/d:host-perms=all"),
            MountError::BadValue { ref key, .. } if key == "host-perms"
        ));
        let msg = error_chain(&parse_cli(CliFlag::MountNamed, "v:/d:kind=dir,size=1").unwrap_err());
        assert!(
            msg.starts_with("invalid mount spec \"--mount-named v:/d:kind=dir,size=1\""),
            "{msg}"
        );
        assert!(msg.contains("size is only for disk volumes"), "{msg}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let table = MountTable::new(
            [
                (
                    gp("/d/sub"),
                    Mount::tmpfs(TmpfsOptions {
                        size_mib: Some(4),
                        ..Default::default()
                    }),
                ),
                (
                    gp("/d"),
                    parse_cli(CliFlag::MountNamed, "v:/d:quota=5,stat-virt=relaxed")
                        .unwrap()
                        .1,
                ),
                (gp("/img"), Mount::disk("/a.vmdk", DiskOptions::default())),
                (
                    gp("/b"),
                    parse_cli(CliFlag::MountFile, "/etc/hosts:/b").unwrap().1,
                ),
            ],
            Path::new("/"),
        )
        .unwrap();
        let json = serde_json::to_string(&table).unwrap();
        let back: MountTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
        assert!(json.contains(r#""format":"vmdk""#), "{json}");
        for bad in [
            r#"[{"guest":"/","type":"tmpfs"}]"#,
            r#"[{"guest":"/a","type":"tmpfs"},{"guest":"/a/","type":"tmpfs"}]"#,
            r#"[{"guest":"/a","type":"bind","host_path":"rel"}]"#,
            r#"[{"guest":"/a","type":"named","name":"-x"}]"#,
            r#"[{"guest":"/a","type":"floppy"}]"#,
            r#"[{"guest":"/a","type":"bind","host_path":"/x","options":{"stat_virt":"off","host_perms":"mirror"}}]"#,
        ] {
            assert!(serde_json::from_str::<MountTable>(bad).is_err(), "{bad}");
        }
    }
}
