//! What a sandbox is asked to be ([`SandboxSpec`]) and the fully resolved
//! form the in-sandbox init applies ([`InitPlan`]): host paths, devices and
//! flags only, no store and no policy decisions left.

use std::path::PathBuf;

use msb_spec::{GuestPath, MountFlags, MountTable};
use serde::{Deserialize, Serialize};

use crate::cgroup::Resources;
pub use msb_security::Security;

/// Which isolation a sandbox gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Linux namespaces on the host's kernel.
    #[default]
    Namespace,
    /// A microVM with a kernel of its own (QEMU); mounts reach it over
    /// virtio-fs from the filesystem server and virtio-blk.
    Vm,
    /// The microVM where hardware virtualization works on this host, else
    /// the namespace backend. Resolved when the sandbox starts.
    Auto,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namespace" | "ns" => Ok(BackendKind::Namespace),
            "vm" => Ok(BackendKind::Vm),
            "auto" => Ok(BackendKind::Auto),
            other => Err(format!(
                "unknown backend {other:?}; expected namespace, vm or auto"
            )),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Namespace => "namespace",
            BackendKind::Vm => "vm",
            BackendKind::Auto => "auto",
        })
    }
}

/// A sandbox to run: validated mounts plus the process to start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Root filesystem directory; `None` is a fresh root holding the host's
    /// programs (`/usr`, read-only) and a generated `/etc`; `/` shares the
    /// host's root, read-only.
    pub rootfs: Option<PathBuf>,
    /// Working directory of the command inside the sandbox.
    pub workdir: Option<GuestPath>,
    /// Environment of the command, on top of PATH, HOME and TERM.
    pub env: Vec<(String, String)>,
    /// Privileges of the workload.
    pub security: Security,
    /// Memory, CPU and process limits.
    #[serde(default)]
    pub resources: Resources,
    /// The isolation; [`prepare`](crate::prepare) takes a resolved one
    /// (not [`BackendKind::Auto`]).
    #[serde(default)]
    pub backend: BackendKind,
    /// The mounts.
    pub mounts: MountTable,
    /// The command and its arguments. Empty: no command; the sandbox stays
    /// up, running whatever joins it, until it is signalled to stop.
    pub command: Vec<String>,
}

/// The resolved sandbox, as the in-sandbox init applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPlan {
    /// What the root filesystem is made of.
    pub root: InitRoot,
    /// The sandbox's cgroup name, unique on the host.
    pub name: String,
    /// Memory, CPU and process limits. Tmpfs mounts that state no size
    /// (the root, `/tmp`, `/dev/shm`, `/run`, `--tmpfs` without one) get
    /// the memory, which their pages are charged to anyway.
    pub resources: Resources,
    /// Mounts, parents before children.
    pub mounts: Vec<InitMount>,
    /// Working directory inside the sandbox.
    pub workdir: String,
    /// Full environment of the command.
    pub env: Vec<(String, String)>,
    /// Privileges of the workload.
    pub security: Security,
    /// The command and its arguments (empty: wait until signalled).
    pub command: Vec<String>,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// The host ids the sandbox's processes run as (its user namespace's
    /// map): as root, a range leased to this sandbox alone, distinct from
    /// the range volumes are stored under ([`msb_store::sandbox_ids`]).
    pub ids: msb_spec::IdMap,
    /// The numbers in the init of the descriptors the command gets as 3,
    /// 4, ... (set by the backend, which lays the descriptors out).
    #[serde(default)]
    pub preserved: Vec<i32>,
    /// The number in the init of the socket on which it hands the
    /// supervisor the `/dev/fuse` descriptors of its [`InitSource::Fuse`]
    /// mounts (set by the backend when there are any).
    #[serde(default)]
    pub fuse_channel: Option<i32>,
}

/// The root filesystem of a resolved sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum InitRoot {
    /// A fresh tmpfs holding the host's programs (`/usr`, read-only) and a
    /// generated `/etc`.
    Fresh,
    /// The host's root, read-only.
    Host,
    /// A directory, under a private writable layer: what the sandbox
    /// writes there never reaches the directory.
    Dir {
        /// Absolute host path.
        path: PathBuf,
        /// The number in the init of a detached, idmapped copy of it made
        /// by the supervisor (its files owned by host ids `0..` appear as
        /// the sandbox's own), or `None` to take the directory as it is.
        fd: Option<i32>,
    },
}

/// One resolved mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitMount {
    /// Where it appears.
    pub guest: GuestPath,
    /// What is mounted.
    pub source: InitSource,
    /// Kernel flags (restricted profile already applied).
    pub flags: MountFlags,
}

/// What a resolved mount mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum InitSource {
    /// A bind mount the init makes of a host path: a rootless sandbox's
    /// init reaches what its caller may, and the caller may not clone mounts
    /// in the host's namespace itself.
    Bind {
        /// Absolute host path.
        path: PathBuf,
        /// Whether it is a directory (else a single file).
        dir: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in MiB.
        size_mib: Option<u32>,
    },
    /// A mount the supervisor made in the host's user namespace, where the
    /// sandbox could not (a bind mount of a host path only host root may
    /// reach, a filesystem server's FUSE mount, a filesystem on a block
    /// device), flags already applied. The server runs before the
    /// sandbox starts, so the init can use it at once (a working directory
    /// or a nested mount point on it).
    Detached {
        /// The number in the init of the detached mount's descriptor.
        fd: i32,
        /// Whether it is a directory (else a single file).
        dir: bool,
    },
    /// A directory served to a rootless sandbox: the init opens
    /// `/dev/fuse` and makes the FUSE mount in the sandbox's user namespace
    /// (its caller may not mount in the host's), then hands the device to
    /// the supervisor, which serves entry `index` of
    /// [`Prepared::take_shares`](crate::Prepared::take_shares) on it.
    Fuse {
        /// Index into the prepared shares.
        index: usize,
    },
    /// A directory the VM backend serves to the guest over virtio-fs:
    /// entry `index` of [`Prepared::take_shares`](crate::Prepared::take_shares).
    Share {
        /// Index into the prepared shares.
        index: usize,
    },
    /// A disk image the VM backend attaches as a virtio block device; the
    /// guest mounts the filesystem on it.
    Image {
        /// Absolute host path of the image.
        path: PathBuf,
        /// Its format, as QEMU reads it.
        format: msb_spec::DiskFormat,
        /// The filesystem type, or `None` to let the guest detect it.
        fstype: Option<String>,
    },
}
