//! Supervisor-side resolution of a [`SandboxSpec`] into an [`InitPlan`]:
//! named volumes looked up or created through the store and registered as
//! attached, disk images attached as block devices. Everything acquired is
//! held by [`Prepared`] for the sandbox's lifetime; a failed start rolls
//! back exactly what it did, removing only volumes it created.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use msb_blockdev::{DiskView, ViewError};
use msb_spec::{
    BindExpect, GuestPath, HostPerms, Mount, MountError, MountFlags, MountOptions, NamedMode,
    NamedVolumeOptions, StatVirt, VolumeKind, VolumeName,
};
use msb_store::{AttachMode, Attachment, Store, StoreError, VolumeInfo};
use serde::Serialize;

use crate::plan::{BackendKind, InitMount, InitPlan, InitRoot, InitSource, SandboxSpec, Security};

/// Why a sandbox's mounts could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("mount at {guest}: cannot use host path {path}")]
    HostPath {
        guest: GuestPath,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount at {guest}: {path} is not a {expected}")]
    WrongType {
        guest: GuestPath,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("mount at {guest}: {path} is a file; stat-virt and host-perms apply to directories")]
    PolicyOnFile { guest: GuestPath, path: PathBuf },
    #[error("mount at {guest}")]
    Store {
        guest: GuestPath,
        #[source]
        source: StoreError,
    },
    #[error(
        "mount at {guest}: volume {name} exists with {found}, not {wanted}; ensure-exists never changes an existing volume"
    )]
    Incompatible {
        guest: GuestPath,
        name: VolumeName,
        found: String,
        wanted: String,
    },
    #[error("mount at {guest}")]
    Config {
        guest: GuestPath,
        #[source]
        source: MountError,
    },
    #[error(
        "mount at {guest}: volume {name} is a disk volume; stat-virt and host-perms apply only to bind mounts and directory volumes"
    )]
    PolicyOnDisk { guest: GuestPath, name: VolumeName },
    #[error("mount at {guest}: cannot start the filesystem server")]
    Server {
        guest: GuestPath,
        #[source]
        source: msb_fsserver::FsServerError,
    },
    #[error("root filesystem {path}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: crate::IdmapError,
    },
    #[error(
        "mount at {guest}: {what}, which only root may make; run msb as root, or mount without it"
    )]
    NeedsRoot {
        guest: GuestPath,
        what: &'static str,
    },
    #[error(
        "mount at {guest}: quota, stat-virt and host-perms are served by a FUSE mount, and this user may not open /dev/fuse ({mode}); make it mode 0666 (as Debian ships it), run msb as root, or mount without them"
    )]
    FuseDenied { guest: GuestPath, mode: String },
    #[error("mount at {guest}")]
    Idmap {
        guest: GuestPath,
        #[source]
        source: crate::IdmapError,
    },
    #[error("mount at {guest}: cannot set the mount's flags")]
    Flags {
        guest: GuestPath,
        #[source]
        source: io::Error,
    },
    #[error("mount at {guest}")]
    Disk {
        guest: GuestPath,
        #[source]
        source: ViewError,
    },
    #[error(
        "mount at {guest}: {path} is neither a directory nor a regular file; a microVM sandbox mounts only those (use the namespace backend)"
    )]
    FileOnVm { guest: GuestPath, path: PathBuf },
    #[error("root filesystem {path}: cannot serve it to the microVM")]
    RootShare {
        path: PathBuf,
        #[source]
        source: msb_fsserver::FsServerError,
    },
    #[error("backend auto must be resolved before a sandbox is prepared")]
    Unresolved,
    #[error(
        "the privileged profile is for microVM sandboxes only (--backend vm): in a namespace sandbox it would expose the host's kernel"
    )]
    PrivilegedNamespace,
    #[error("no host ids are free for the sandbox")]
    Lease(#[source] crate::LeaseError),
}

/// A directory the filesystem server serves for the sandbox (to a VM's
/// guest over virtio-fs, or on a rootless sandbox's own FUSE mount), opened
/// (without following symlinks where the mount says so) when the sandbox
/// was prepared, with the policy it is served under.
pub struct Share {
    /// The served directory.
    pub root: OwnedFd,
    /// Read-only, quota, stat virtualization, host permissions, ids.
    pub config: msb_fsserver::ServeConfig,
    /// A single-file mount's file: `root` is then its directory, of which
    /// this one entry alone may be served.
    pub file: Option<std::ffi::OsString>,
}

/// Everything a sandbox holds on the host while it runs: attachments (the
/// in-use registration), block devices, and the record of volumes created
/// for it. Dropping it releases all of that; [`Prepared::rollback`] also
/// removes the volumes it created.
pub struct Prepared<'s> {
    /// The plan for the init.
    pub plan: InitPlan,
    store: &'s Store,
    // Drop order: block devices, then the in-use registrations. A view
    // served by qemu-storage-daemon holds the lease of the daemon's ids
    // (dropped after the view, so after the daemon).
    views: Vec<(DiskView, Option<crate::IdLease>)>,
    servers: Vec<msb_fsserver::Server>,
    shares: Vec<Share>,
    attachments: Vec<Attachment>,
    created: Vec<VolumeName>,
    recount: Vec<VolumeInfo>,
    passed: Vec<OwnedFd>,
    idmaps: crate::idmap::Idmaps,
    /// The sandbox's own host ids ([`InitPlan::ids`]), held until the
    /// sandbox and everything serving it are gone.
    _lease: Option<crate::IdLease>,
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("plan", &self.plan)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Prepared<'_> {
    /// Volumes created for this sandbox.
    pub fn created(&self) -> &[VolumeName] {
        &self.created
    }

    /// Descriptors the init must receive (see [`SandboxStdio::passed`]);
    /// [`InitSource::Detached`] mounts refer to them by number.
    ///
    /// [`SandboxStdio::passed`]: crate::SandboxStdio::passed
    pub fn take_passed_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.passed)
    }

    /// The directories a VM sandbox's guest mounts over virtio-fs;
    /// [`InitSource::Share`] refers to them by index. The first is the
    /// root's read-only lower layer: the host's `/usr` for a fresh root, the
    /// root filesystem directory, or `/` for the host's root. For a rootless
    /// namespace sandbox: the directories [`InitSource::Fuse`] mounts serve
    /// (see [`SandboxStdio::shares`]).
    ///
    /// [`SandboxStdio::shares`]: crate::SandboxStdio::shares
    pub fn take_shares(&mut self) -> Vec<Share> {
        std::mem::take(&mut self.shares)
    }

    /// Undoes a failed start: releases everything and removes the volumes
    /// this sandbox created (never one that already existed).
    pub fn rollback(mut self) {
        self.views.clear();
        self.servers.clear();
        self.shares.clear();
        self.attachments.clear();
        for name in std::mem::take(&mut self.created) {
            let _ = self.store.remove(&name);
        }
    }

    /// Ends a sandbox that ran: releases block devices, recounts the usage
    /// of directory volumes written through kernel bind mounts (the writes
    /// bypassed the usage counter), then releases the attachments.
    pub fn finish(mut self) {
        self.views.clear();
        self.servers.clear();
        for info in std::mem::take(&mut self.recount) {
            recount(self.store, &info);
        }
    }
}

fn recount(store: &Store, info: &VolumeInfo) {
    let Ok(Some(budget)) = store.budget(info) else {
        return;
    };
    let root = rustix::fs::open(
        &info.path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    );
    if let Ok(root) = root
        && let Ok(used) = msb_quota::scan(&root)
    {
        budget.set_used(used);
    }
}

/// A cgroup name for the sandbox `holder` started by this process: the
/// holder's letters and digits, this process's id and a count of the
/// sandboxes it prepared, which no other live sandbox has.
fn cgroup_name(holder: &str) -> String {
    static PREPARED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PREPARED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let plain: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!(
        "{}-{}-{n}",
        plain.trim_start_matches('-'),
        std::process::id()
    )
}

/// The environment every command gets before `--env`.
fn base_env() -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME".to_string(), "/root".to_string()),
        ("HOSTNAME".to_string(), "msb".to_string()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_string(), term));
    }
    env
}

fn merged_env(spec: &SandboxSpec) -> Vec<(String, String)> {
    let mut env = base_env();
    for (k, v) in &spec.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Flags as applied: nosuid,nodev on every mount. Whatever the mounts
/// come from (host directories, volumes a sandbox wrote, served records,
/// disk images), no file on them grants privileges or reaches a device.
fn effective_flags(mut f: MountFlags) -> MountFlags {
    f.nosuid = true;
    f.nodev = true;
    f
}

/// Resolves `spec` for the sandbox `holder` (e.g. `sandbox:run-42`),
/// creating and attaching volumes and disk images.
pub fn prepare<'s>(
    spec: &SandboxSpec,
    store: &'s Store,
    holder: &str,
) -> Result<Prepared<'s>, PrepareError> {
    let vm = match spec.backend {
        BackendKind::Namespace => false,
        BackendKind::Vm => true,
        BackendKind::Auto => return Err(PrepareError::Unresolved),
    };
    if !vm && spec.security == Security::Privileged {
        return Err(PrepareError::PrivilegedNamespace);
    }
    // A rootful namespace sandbox runs as a range of its own: a process
    // outside it with the same ids (a setuid file it left in a bind mount,
    // run by a host user) can then trace or signal only this sandbox.
    // A VM's processes are the guest's; its QEMU leases ids itself.
    let lease = if vm || rootless() {
        None
    } else {
        Some(crate::IdLease::acquire().map_err(PrepareError::Lease)?)
    };
    let ids = lease
        .as_ref()
        .map_or_else(crate::sandbox_ids, crate::IdLease::ids);
    let mut p = Prepared {
        plan: InitPlan {
            root: InitRoot::Fresh,
            name: cgroup_name(holder),
            resources: spec.resources,
            mounts: Vec::new(),
            workdir: spec
                .workdir
                .as_ref()
                .map_or_else(|| "/".to_string(), |w| w.to_string()),
            env: merged_env(spec),
            security: spec.security,
            command: spec.command.clone(),
            hostname: "msb".to_string(),
            ids,
            preserved: Vec::new(),
            fuse_channel: None,
        },
        store,
        views: Vec::new(),
        servers: Vec::new(),
        shares: Vec::new(),
        attachments: Vec::new(),
        created: Vec::new(),
        recount: Vec::new(),
        passed: Vec::new(),
        idmaps: crate::idmap::Idmaps::default(),
        _lease: lease,
    };
    let root = if vm {
        vm_root(&mut p, spec)
    } else {
        root(&mut p, spec)
    };
    match root {
        Ok(root) => p.plan.root = root,
        Err(e) => {
            p.rollback();
            return Err(e);
        }
    }
    for entry in spec.mounts.entries() {
        let flags = effective_flags(entry.mount.flags());
        let added = if vm {
            add_vm_mount(&mut p, &entry.guest, &entry.mount, flags, holder)
        } else {
            add_mount(&mut p, &entry.guest, &entry.mount, flags, holder)
        };
        match added {
            Ok(source) => p.plan.mounts.push(InitMount {
                guest: entry.guest.clone(),
                source,
                flags,
            }),
            Err(e) => {
                p.rollback();
                return Err(e);
            }
        }
    }
    Ok(p)
}

/// The sandbox's root: a root filesystem directory is passed to the init
/// idmapped through the sandbox's ids where that is allowed (root).
fn root(p: &mut Prepared<'_>, spec: &SandboxSpec) -> Result<InitRoot, PrepareError> {
    let Some(path) = &spec.rootfs else {
        return Ok(InitRoot::Fresh);
    };
    if path == Path::new("/") {
        return Ok(InitRoot::Host);
    }
    if rootless() {
        // Rootless: the caller's own files are already the sandbox's.
        return Ok(InitRoot::Dir {
            path: path.clone(),
            fd: None,
        });
    }
    let tree = p
        .idmaps
        .image_tree(path, p.plan.ids)
        .map_err(|source| PrepareError::Rootfs {
            path: path.clone(),
            source,
        })?;
    Ok(InitRoot::Dir {
        path: path.clone(),
        fd: Some(pass(p, tree)),
    })
}

/// A VM's root: its read-only lower layer is served as share 0 with the
/// host's owners as they are (none is the guest's but the sandbox range's).
fn vm_root(p: &mut Prepared<'_>, spec: &SandboxSpec) -> Result<InitRoot, PrepareError> {
    let (dir, root) = match &spec.rootfs {
        None => (Path::new("/usr"), InitRoot::Fresh),
        Some(path) if path == Path::new("/") => (path.as_path(), InitRoot::Host),
        Some(path) => (
            path.as_path(),
            InitRoot::Dir {
                path: path.clone(),
                fd: None,
            },
        ),
    };
    let fd = msb_fsserver::open_root(dir, true).map_err(|source| PrepareError::RootShare {
        path: dir.to_path_buf(),
        source,
    })?;
    p.shares.push(Share {
        root: fd,
        config: sandbox_policy(true, StatVirt::Off, HostPerms::Private),
        file: None,
    });
    Ok(root)
}

/// The server configuration of a VM's directory mount: always served, with
/// the seed's defaults (stat virtualization strict, host permissions
/// private): the guest has users of its own.
fn vm_server_config(options: &MountOptions, flags: MountFlags) -> msb_fsserver::ServeConfig {
    sandbox_policy(
        flags.readonly,
        options.stat_virt.unwrap_or_default(),
        options.host_perms.unwrap_or_default(),
    )
}

/// A served directory's policy for this host's sandboxes: their ids, files
/// without a record shown as the sandbox root's, no quota (the caller adds
/// a volume's budget).
fn sandbox_policy(
    readonly: bool,
    stat_virt: StatVirt,
    host_perms: HostPerms,
) -> msb_fsserver::ServeConfig {
    msb_fsserver::ServeConfig {
        readonly,
        stat_virt,
        host_perms,
        budget: None,
        owner: (0, 0),
        id_map: crate::sandbox_ids(),
        gid_map: msb_store::sandbox_gids(),
    }
}

/// Resolves one mount of a VM sandbox: directories become shares, disks
/// block devices; nothing is mounted on the host.
fn add_vm_mount(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    mount: &Mount,
    flags: MountFlags,
    holder: &str,
) -> Result<InitSource, PrepareError> {
    let server_err = |source| PrepareError::Server {
        guest: guest.clone(),
        source,
    };
    match mount {
        Mount::Bind {
            host_path,
            expect,
            options,
        } => {
            let meta = check_bind(guest, host_path, *expect, options, flags)?;
            if meta.is_file() {
                return vm_file_share(p, guest, host_path, options, flags);
            }
            if !meta.is_dir() {
                return Err(PrepareError::FileOnVm {
                    guest: guest.clone(),
                    path: host_path.clone(),
                });
            }
            let root = msb_fsserver::open_root(host_path, true).map_err(server_err)?;
            Ok(share(p, root, vm_server_config(options, flags)))
        }
        Mount::Named {
            name,
            options,
            volume,
        } => {
            let store_err = |source| PrepareError::Store {
                guest: guest.clone(),
                source,
            };
            let info = attach_named(p, guest, (name, options, volume), flags, holder)?;
            match info.kind {
                VolumeKind::Dir => {
                    let mut cfg = vm_server_config(options, flags);
                    if !flags.readonly {
                        cfg.budget = p.store.budget(&info).map_err(store_err)?.map(Arc::new);
                    }
                    let root = msb_fsserver::open_root(&info.path, false).map_err(server_err)?;
                    Ok(share(p, root, cfg))
                }
                VolumeKind::Disk => Ok(InitSource::Image {
                    path: info
                        .disk_image
                        .unwrap_or_else(|| p.store.layout().disk_image(name)),
                    format: msb_spec::DiskFormat::Raw,
                    fstype: Some("ext4".to_string()),
                }),
            }
        }
        Mount::Tmpfs { options } => Ok(InitSource::Tmpfs {
            size_mib: options.size_mib,
        }),
        Mount::Disk { host_path, options } => {
            let meta = std::fs::metadata(host_path).map_err(|source| PrepareError::HostPath {
                guest: guest.clone(),
                path: host_path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(PrepareError::WrongType {
                    guest: guest.clone(),
                    path: host_path.clone(),
                    expected: "disk image file",
                });
            }
            Ok(InitSource::Image {
                path: host_path.clone(),
                format: options
                    .format
                    .unwrap_or_else(|| msb_spec::DiskFormat::from_extension(host_path)),
                fstype: options.fstype.clone(),
            })
        }
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("root", &self.root)
            .field("readonly", &self.config.readonly)
            .finish_non_exhaustive()
    }
}

/// Looks up (or creates) the named volume and registers
/// `holder` as its user, read-only or read-write as the mount is. A disk
/// volume takes no stat-virt or host-perms.
fn attach_named(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    (name, options, volume): (&VolumeName, &MountOptions, &NamedVolumeOptions),
    flags: MountFlags,
    holder: &str,
) -> Result<VolumeInfo, PrepareError> {
    let info = resolve_named(p, guest, name, volume)?;
    if info.kind == VolumeKind::Disk
        && (options.stat_virt.is_some() || options.host_perms.is_some())
    {
        return Err(PrepareError::PolicyOnDisk {
            guest: guest.clone(),
            name: name.clone(),
        });
    }
    let mode = if flags.readonly {
        AttachMode::ReadOnly
    } else {
        AttachMode::ReadWrite
    };
    let attachment = p
        .store
        .attach(name, holder, mode)
        .map_err(|source| PrepareError::Store {
            guest: guest.clone(),
            source,
        })?;
    p.attachments.push(attachment);
    Ok(info)
}

/// A VM's single-file mount: the file's directory (symlinks resolved, so
/// the entry is the file itself), of which the VM backend serves that one
/// file and nothing else.
fn vm_file_share(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    host_path: &Path,
    options: &MountOptions,
    flags: MountFlags,
) -> Result<InitSource, PrepareError> {
    let host_err = |source| PrepareError::HostPath {
        guest: guest.clone(),
        path: host_path.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(host_path).map_err(host_err)?;
    let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
        return Err(host_err(io::Error::from(io::ErrorKind::InvalidInput)));
    };
    let root = msb_fsserver::open_root(dir, false).map_err(|source| PrepareError::Server {
        guest: guest.clone(),
        source,
    })?;
    p.shares.push(Share {
        root,
        config: vm_server_config(options, flags),
        file: Some(name.to_owned()),
    });
    Ok(InitSource::Share {
        index: p.shares.len() - 1,
    })
}

/// Records a share of the VM and the source that names it.
fn share(p: &mut Prepared<'_>, root: OwnedFd, config: msb_fsserver::ServeConfig) -> InitSource {
    p.shares.push(Share {
        root,
        config,
        file: None,
    });
    InitSource::Share {
        index: p.shares.len() - 1,
    }
}

/// A bind mount's host path: present, of the expected type, and a
/// directory when a policy needs the filesystem server.
fn check_bind(
    guest: &GuestPath,
    host_path: &Path,
    expect: BindExpect,
    options: &MountOptions,
    flags: MountFlags,
) -> Result<std::fs::Metadata, PrepareError> {
    let meta = std::fs::metadata(host_path).map_err(|source| PrepareError::HostPath {
        guest: guest.clone(),
        path: host_path.to_path_buf(),
        source,
    })?;
    let expected = match expect {
        BindExpect::Dir if !meta.is_dir() => Some("directory"),
        BindExpect::File if meta.is_dir() => Some("file"),
        _ => None,
    };
    if let Some(expected) = expected {
        return Err(PrepareError::WrongType {
            guest: guest.clone(),
            path: host_path.to_path_buf(),
            expected,
        });
    }
    if server_config(options, flags, None).is_some() && !meta.is_dir() {
        return Err(PrepareError::PolicyOnFile {
            guest: guest.clone(),
            path: host_path.to_path_buf(),
        });
    }
    Ok(meta)
}

fn add_mount(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    mount: &Mount,
    flags: MountFlags,
    holder: &str,
) -> Result<InitSource, PrepareError> {
    match mount {
        Mount::Bind {
            host_path,
            expect,
            options,
        } => {
            let meta = check_bind(guest, host_path, *expect, options, flags)?;
            if let Some(cfg) = server_config(options, flags, None) {
                return serve(p, guest, host_path, true, cfg, flags);
            }
            bind(p, guest, host_path, (meta.is_dir(), true), flags)
        }
        Mount::Named {
            name,
            options,
            volume,
        } => {
            let store_err = |source| PrepareError::Store {
                guest: guest.clone(),
                source,
            };
            let info = attach_named(p, guest, (name, options, volume), flags, holder)?;
            match info.kind {
                VolumeKind::Dir => {
                    let quota = info.quota_mib.filter(|_| !flags.readonly);
                    if let Some(mut cfg) = server_config(options, flags, quota) {
                        cfg.budget = p.store.budget(&info).map_err(store_err)?.map(Arc::new);
                        return serve(p, guest, &info.path, false, cfg, flags);
                    }
                    if !flags.readonly {
                        p.recount.push(info.clone());
                    }
                    bind(p, guest, &info.path, (true, false), flags)
                }
                VolumeKind::Disk => {
                    let image = info
                        .disk_image
                        .unwrap_or_else(|| p.store.layout().disk_image(name));
                    let raw = msb_spec::DiskFormat::Raw;
                    attach_disk(p, guest, &image, raw, None, flags, false)
                }
            }
        }
        Mount::Tmpfs { options } => Ok(InitSource::Tmpfs {
            size_mib: options.size_mib,
        }),
        Mount::Disk { host_path, options } => attach_disk(
            p,
            guest,
            host_path,
            options
                .format
                .unwrap_or_else(|| msb_spec::DiskFormat::from_extension(host_path)),
            options.fstype.as_deref(),
            flags,
            true,
        ),
    }
}

/// Mounts a disk image for the sandbox; with `image_ids`, its files' ids
/// are the image's own (0 is the sandbox's root), else (a disk volume)
/// they are stored under the volume owner's range, as a directory
/// volume's.
fn attach_disk(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    image: &Path,
    format: msb_spec::DiskFormat,
    fstype: Option<&str>,
    flags: MountFlags,
    image_ids: bool,
) -> Result<InitSource, PrepareError> {
    if rootless() {
        return Err(PrepareError::NeedsRoot {
            guest: guest.clone(),
            what: "a disk image is attached to a loop device",
        });
    }
    let disk_err = |source| PrepareError::Disk {
        guest: guest.clone(),
        source,
    };
    // qcow2 and vmdk are parsed by qemu-storage-daemon, as ids of its own
    // (no sandbox's, so no sandbox can signal or trace it).
    let lease = match format {
        msb_spec::DiskFormat::Raw => None,
        msb_spec::DiskFormat::Qcow2 | msb_spec::DiskFormat::Vmdk => {
            Some(crate::IdLease::acquire_swept().map_err(PrepareError::Lease)?)
        }
    };
    let user = lease.as_ref().map(|l| msb_blockdev::DaemonUser {
        uid: l.ids().root(),
        gid: l.ids().root(),
    });
    let view = DiskView::open(image, format, fstype, flags.readonly, user).map_err(disk_err)?;
    // Made here: a sandbox's user namespace may not mount block devices.
    let mount = view
        .mount_detached(crate::mounts::attrs(flags))
        .map_err(disk_err)?
        .into_fd();
    let mapped = if image_ids {
        p.idmaps.image(&mount, image, p.plan.ids)
    } else {
        let stored = crate::sandbox_ids();
        p.idmaps
            .shared(&mount, image, stored, p.plan.ids, crate::lease::LEASED_LOW)
    };
    mapped.map_err(|source| PrepareError::Idmap {
        guest: guest.clone(),
        source,
    })?;
    p.views.push((view, lease));
    Ok(InitSource::Detached {
        fd: pass(p, mount),
        dir: true,
    })
}

/// The server configuration for a mount that needs the filesystem server,
/// or `None` when a kernel bind mount gives the same result: no stat
/// virtualization record (strict/relaxed), no permission mirroring and no
/// quota to enforce. Unstated stat virtualization on a server-backed mount
/// is `off`, the raw host metadata a bind mount shows too.
fn server_config(
    options: &MountOptions,
    flags: MountFlags,
    quota_mib: Option<u32>,
) -> Option<msb_fsserver::ServeConfig> {
    let virt = matches!(
        options.stat_virt,
        Some(StatVirt::Strict | StatVirt::Relaxed)
    );
    let mirror = options.host_perms == Some(HostPerms::Mirror);
    (virt || mirror || quota_mib.is_some()).then(|| {
        sandbox_policy(
            flags.readonly,
            options.stat_virt.unwrap_or(if mirror {
                StatVirt::Strict
            } else {
                StatVirt::Off
            }),
            options.host_perms.unwrap_or_default(),
        )
    })
}

/// Serves `dir` through a filesystem server, started now on a detached
/// FUSE mount that the init attaches.
fn serve(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    dir: &Path,
    follow_symlinks: bool,
    cfg: msb_fsserver::ServeConfig,
    flags: MountFlags,
) -> Result<InitSource, PrepareError> {
    let server_err = |source| PrepareError::Server {
        guest: guest.clone(),
        source,
    };
    if rootless() {
        // The init mounts it in the sandbox's user namespace; the device
        // it opens there must be open to this user.
        check_fuse_access(guest)?;
    }
    let root = msb_fsserver::open_root(dir, follow_symlinks).map_err(server_err)?;
    if rootless() {
        p.shares.push(Share {
            root,
            config: cfg,
            file: None,
        });
        return Ok(InitSource::Fuse {
            index: p.shares.len() - 1,
        });
    }
    let fuse = rustix::fs::open(
        FUSE_DEVICE,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| server_err(msb_fsserver::FsServerError::OpenFuse(e.into())))?;
    let mount = msb_fsserver::mount_detached(&fuse).map_err(server_err)?;
    crate::mounts::set_attrs(&mount, crate::mounts::attrs(flags), false).map_err(|e| {
        PrepareError::Flags {
            guest: guest.clone(),
            source: e.into(),
        }
    })?;
    p.servers
        .push(msb_fsserver::serve(root, fuse, cfg, p.plan.ids).map_err(server_err)?);
    // The init holds the only reference to the mount, so the file system
    // (and with it the server) ends with the sandbox.
    Ok(InitSource::Detached {
        fd: pass(p, mount),
        dir: true,
    })
}

/// Whether this user may open `/dev/fuse`, as a rootless sandbox's init
/// (the same host user) will; a refusal names the device's permissions.
fn check_fuse_access(guest: &GuestPath) -> Result<(), PrepareError> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(FUSE_DEVICE, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            let mode = match rustix::fs::stat(FUSE_DEVICE) {
                Ok(st) => format!(
                    "mode {:04o}, owner uid {} gid {}",
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid
                ),
                Err(e) => format!("cannot stat it: {e}"),
            };
            Err(PrepareError::FuseDenied {
                guest: guest.clone(),
                mode,
            })
        }
        Err(e) => Err(PrepareError::Server {
            guest: guest.clone(),
            source: msb_fsserver::FsServerError::OpenFuse(e.into()),
        }),
    }
}

/// The FUSE device, as every sandbox's init sees it before it pivots.
pub(crate) const FUSE_DEVICE: &str = "/dev/fuse";

/// A kernel bind mount of `path`, made here: the sandbox's root may not
/// reach host paths only host root may (a volume under a 0700 home).
fn bind(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    path: &Path,
    (dir, follow): (bool, bool),
    flags: MountFlags,
) -> Result<InitSource, PrepareError> {
    if rootless() {
        return Ok(InitSource::Bind {
            path: path.to_path_buf(),
            dir,
        });
    }
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC
            | rustix::mount::OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| PrepareError::HostPath {
        guest: guest.clone(),
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    crate::mounts::set_attrs(&tree, crate::mounts::attrs(flags), true).map_err(|e| {
        PrepareError::Flags {
            guest: guest.clone(),
            source: e.into(),
        }
    })?;
    // Files are stored under the volume owner's range whichever sandbox
    // writes them, so none is owned by the sandbox's own (leased, later
    // reused) ids: a setuid file it leaves here gives a host user no
    // sandbox's processes.
    let stored = crate::sandbox_ids();
    let ids = p.plan.ids;
    match p
        .idmaps
        .shared(&tree, path, stored, ids, crate::lease::LEASED_LOW)
    {
        Ok(()) => {}
        // A filesystem without idmapped mounts: the server maps the ids.
        Err(crate::IdmapError::Map { .. }) if dir => {
            let cfg = sandbox_policy(flags.readonly, StatVirt::Off, HostPerms::default());
            return serve(p, guest, path, follow, cfg, flags);
        }
        Err(source) => {
            return Err(PrepareError::Idmap {
                guest: guest.clone(),
                source,
            });
        }
    }
    Ok(InitSource::Detached {
        fd: pass(p, tree),
        dir,
    })
}

/// Whether sandboxes run rootless here (the caller alone is their root).
fn rootless() -> bool {
    crate::sandbox_ids().count == 1
}

/// Hands a detached mount to the init: the number it will have there.
fn pass(p: &mut Prepared<'_>, mount: OwnedFd) -> i32 {
    let fd = crate::init::PASSED_FD_BASE + p.passed.len() as i32;
    p.passed.push(mount);
    fd
}

/// Looks the volume up or creates it, as `opts.mode` says.
fn resolve_named(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    name: &VolumeName,
    opts: &NamedVolumeOptions,
) -> Result<VolumeInfo, PrepareError> {
    let store_err = |source| PrepareError::Store {
        guest: guest.clone(),
        source,
    };
    let create = |p: &mut Prepared<'_>| -> Result<Result<VolumeInfo, StoreError>, PrepareError> {
        let config = opts
            .volume_config(name)
            .map_err(|source| PrepareError::Config {
                guest: guest.clone(),
                source,
            })?;
        let made = p.store.create(&config);
        if made.is_ok() {
            p.created.push(name.clone());
        }
        Ok(made)
    };
    match opts.mode {
        NamedMode::Existing => p.store.get(name).map_err(store_err),
        NamedMode::Create => create(p)?.map_err(store_err),
        NamedMode::EnsureExists => {
            let info = match p.store.get(name) {
                Ok(info) => info,
                Err(StoreError::NotFound(_)) => match create(p)? {
                    Ok(info) => return Ok(info),
                    // Lost a race with another creator: reuse theirs.
                    Err(StoreError::AlreadyExists(_)) => p.store.get(name).map_err(store_err)?,
                    Err(e) => return Err(store_err(e)),
                },
                Err(e) => return Err(store_err(e)),
            };
            check_compatible(guest, &info, opts)?;
            Ok(info)
        }
    }
}

/// Ensure-exists reuses a volume only if it matches what the request
/// states: kind, quota, capacity, labels.
fn check_compatible(
    guest: &GuestPath,
    info: &VolumeInfo,
    opts: &NamedVolumeOptions,
) -> Result<(), PrepareError> {
    let mismatch = |found: String, wanted: String| PrepareError::Incompatible {
        guest: guest.clone(),
        name: info.name.clone(),
        found,
        wanted,
    };
    if let Some(kind) = opts.kind
        && kind != info.kind
    {
        return Err(mismatch(
            format!("kind {}", info.kind),
            format!("kind {kind}"),
        ));
    }
    if let Some(q) = opts.quota_mib
        && info.quota_mib != Some(q)
    {
        let found = info
            .quota_mib
            .map_or("no quota".to_string(), |f| format!("quota {f} MiB"));
        return Err(mismatch(found, format!("quota {q} MiB")));
    }
    if let Some(s) = opts.size_mib
        && info.capacity_bytes != Some(u64::from(s) << 20)
    {
        let found = info
            .capacity_bytes
            .map_or("no size".to_string(), |b| format!("size {} MiB", b >> 20));
        return Err(mismatch(found, format!("size {s} MiB")));
    }
    for (k, v) in opts.labels.iter() {
        if info.labels.get(k) != Some(v) {
            let found = info
                .labels
                .get(k)
                .map_or(format!("no label {k}"), |f| format!("label {k}={f}"));
            return Err(mismatch(found, format!("label {k}={v}")));
        }
    }
    Ok(())
}

/// What `--dry-run` shows: the validated spec and, per mount, what would
/// happen. Only reads the store.
#[derive(Debug, Serialize)]
pub struct DryRun {
    /// The isolation (as asked: `auto` is resolved when it starts).
    pub backend: BackendKind,
    /// Root filesystem directory (`null`: a fresh root with the host's
    /// programs; `/`: the host's root, read-only).
    pub rootfs: Option<PathBuf>,
    /// How the sandbox's user and group ids map onto the host's.
    pub ids: msb_spec::IdMap,
    /// Memory, CPU and process limits (not applied rootless).
    pub resources: crate::Resources,
    /// Working directory.
    pub workdir: String,
    /// Full environment.
    pub env: Vec<(String, String)>,
    /// Security profile.
    pub security: Security,
    /// Command.
    pub command: Vec<String>,
    /// Mounts, parents first.
    pub mounts: Vec<DryRunMount>,
}

/// One mount of a [`DryRun`].
#[derive(Debug, Serialize)]
pub struct DryRunMount {
    /// The mount as validated.
    #[serde(flatten)]
    pub entry: msb_spec::MountEntry,
    /// Kernel flags as applied.
    pub flags: MountFlags,
    /// What would happen: `bind`, `reuse`, `create`, `tmpfs`, `attach`.
    pub action: &'static str,
    /// Host path used (volume root, image), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<PathBuf>,
    /// Whether the filesystem server carries it (stat virtualization,
    /// permission mirroring, quota) instead of a kernel bind mount.
    pub served: bool,
}

/// Describes what [`prepare`] would do, without doing it.
pub fn dry_run(spec: &SandboxSpec, store: &Store) -> Result<DryRun, PrepareError> {
    // A VM's guest reaches every directory through the server.
    let vm = spec.backend == BackendKind::Vm;
    let mut mounts = Vec::new();
    for entry in spec.mounts.entries() {
        let flags = effective_flags(entry.mount.flags());
        let mut served = false;
        let (action, host_path) = match &entry.mount {
            Mount::Bind {
                host_path,
                expect,
                options,
            } => {
                let meta = check_bind(&entry.guest, host_path, *expect, options, flags)?;
                served = (vm && (meta.is_dir() || meta.is_file()))
                    || (meta.is_dir() && server_config(options, flags, None).is_some());
                ("bind", Some(host_path.clone()))
            }
            Mount::Tmpfs { .. } => ("tmpfs", None),
            Mount::Disk { host_path, .. } => {
                std::fs::metadata(host_path).map_err(|source| PrepareError::HostPath {
                    guest: entry.guest.clone(),
                    path: host_path.clone(),
                    source,
                })?;
                ("attach", Some(host_path.clone()))
            }
            Mount::Named {
                name,
                volume,
                options,
            } => match store.get(name) {
                Ok(info) if volume.mode != NamedMode::Create => {
                    if volume.mode == NamedMode::EnsureExists {
                        check_compatible(&entry.guest, &info, volume)?;
                    }
                    let quota = info.quota_mib.filter(|_| !flags.readonly);
                    served = info.kind == VolumeKind::Dir
                        && (vm || server_config(options, flags, quota).is_some());
                    let path = info.disk_image.clone().unwrap_or(info.path.clone());
                    ("reuse", Some(path))
                }
                Err(StoreError::NotFound(_)) if volume.mode != NamedMode::Existing => {
                    let config =
                        volume
                            .volume_config(name)
                            .map_err(|source| PrepareError::Config {
                                guest: entry.guest.clone(),
                                source,
                            })?;
                    let quota = config.quota_mib().filter(|_| !flags.readonly);
                    served = config.kind() == VolumeKind::Dir
                        && (vm || server_config(options, flags, quota).is_some());
                    ("create", None)
                }
                Ok(_) => {
                    return Err(PrepareError::Store {
                        guest: entry.guest.clone(),
                        source: StoreError::AlreadyExists(name.clone()),
                    });
                }
                Err(source) => {
                    return Err(PrepareError::Store {
                        guest: entry.guest.clone(),
                        source,
                    });
                }
            },
        };
        mounts.push(DryRunMount {
            entry: entry.clone(),
            flags,
            action,
            host_path,
            served,
        });
    }
    Ok(DryRun {
        backend: spec.backend,
        rootfs: spec.rootfs.clone(),
        ids: crate::sandbox_ids(),
        resources: spec.resources,
        workdir: spec
            .workdir
            .as_ref()
            .map_or_else(|| "/".to_string(), |w| w.to_string()),
        env: merged_env(spec),
        security: spec.security,
        command: spec.command.clone(),
        mounts,
    })
}

/// Checks what a start of `spec` needs of this user beyond what
/// [`dry_run`] (whose result `dry` is) checks: on the namespace backend, a
/// rootless user cannot attach disk images (loop devices are root's) and
/// needs `/dev/fuse` open to it for served mounts. Every start would fail
/// the same way, so a sandbox can be refused before it is recorded. A
/// microVM needs neither. The backend must be resolved.
pub fn check_user(spec: &SandboxSpec, dry: &DryRun, store: &Store) -> Result<(), PrepareError> {
    if spec.backend == BackendKind::Namespace && spec.security == Security::Privileged {
        return Err(PrepareError::PrivilegedNamespace);
    }
    if spec.backend != BackendKind::Namespace || !rootless() {
        return Ok(());
    }
    for m in &dry.mounts {
        let disk = match &m.entry.mount {
            Mount::Disk { .. } => true,
            Mount::Named { name, volume, .. } => match store.get(name) {
                Ok(info) => info.kind == VolumeKind::Disk,
                Err(_) => volume
                    .volume_config(name)
                    .is_ok_and(|c| c.kind() == VolumeKind::Disk),
            },
            _ => false,
        };
        if disk {
            return Err(PrepareError::NeedsRoot {
                guest: m.entry.guest.clone(),
                what: "a disk image is attached to a loop device",
            });
        }
        if m.served {
            check_fuse_access(&m.entry.guest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_spec::Labels;

    fn gp() -> GuestPath {
        GuestPath::new("/g").unwrap()
    }

    fn info(kind: VolumeKind, quota: Option<u32>, cap: Option<u64>, labels: Labels) -> VolumeInfo {
        VolumeInfo {
            name: VolumeName::new("v").unwrap(),
            kind,
            path: "/home/v".into(),
            disk_image: None,
            quota_mib: quota,
            capacity_bytes: cap,
            used_bytes: 0,
            labels,
            created_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn kernel_bind_unless_a_policy_or_quota_needs_the_server() {
        let rw = MountFlags::default();
        assert!(server_config(&MountOptions::default(), rw, None).is_none());
        let off = MountOptions {
            stat_virt: Some(StatVirt::Off),
            host_perms: Some(HostPerms::Private),
            ..Default::default()
        };
        assert!(server_config(&off, rw, None).is_none());
        let cfg = server_config(&MountOptions::default(), rw, Some(5)).unwrap();
        assert_eq!(
            cfg.stat_virt,
            StatVirt::Off,
            "quota alone keeps raw metadata"
        );
        let strict = MountOptions {
            stat_virt: Some(StatVirt::Strict),
            ..Default::default()
        };
        let ro = MountFlags {
            readonly: true,
            ..Default::default()
        };
        let cfg = server_config(&strict, ro, None).unwrap();
        assert!(cfg.readonly);
        assert_eq!(cfg.owner, (0, 0));
        let mirror = MountOptions {
            host_perms: Some(HostPerms::Mirror),
            ..Default::default()
        };
        let cfg = server_config(&mirror, rw, None).unwrap();
        assert_eq!(
            (cfg.stat_virt, cfg.host_perms),
            (StatVirt::Strict, HostPerms::Mirror)
        );
    }

    #[test]
    fn every_mount_is_nosuid_nodev() {
        let f = MountFlags {
            noexec: true,
            ..Default::default()
        };
        let r = effective_flags(f);
        assert!(r.nosuid && r.nodev && r.noexec && !r.readonly);
    }

    #[test]
    fn env_overrides_defaults() {
        let spec = SandboxSpec {
            env: vec![("HOME".into(), "/work".into()), ("A".into(), "1".into())],
            ..Default::default()
        };
        let env = merged_env(&spec);
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/work"));
        assert_eq!(get("A"), Some("1"));
        assert!(get("PATH").unwrap().contains("/usr/bin"));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }

    #[test]
    fn ensure_exists_compatibility() {
        let mut labels = Labels::new();
        labels.insert("team", "ci").unwrap();
        let dir = info(VolumeKind::Dir, Some(10), None, labels.clone());
        let ok = |o: NamedVolumeOptions| check_compatible(&gp(), &dir, &o);
        assert!(ok(NamedVolumeOptions::default()).is_ok());
        assert!(
            ok(NamedVolumeOptions {
                quota_mib: Some(10),
                labels: labels.clone(),
                ..Default::default()
            })
            .is_ok()
        );
        let msg = |o| ok(o).unwrap_err().to_string();
        assert!(
            msg(NamedVolumeOptions {
                kind: Some(VolumeKind::Disk),
                ..Default::default()
            })
            .contains("kind dir, not kind disk")
        );
        assert!(
            msg(NamedVolumeOptions {
                quota_mib: Some(20),
                ..Default::default()
            })
            .contains("quota 10 MiB, not quota 20 MiB")
        );
        let mut other = Labels::new();
        other.insert("team", "web").unwrap();
        assert!(
            msg(NamedVolumeOptions {
                labels: other,
                ..Default::default()
            })
            .contains("label team=ci, not label team=web")
        );
        let disk = info(VolumeKind::Disk, None, Some(64 << 20), Labels::new());
        let size = |s| NamedVolumeOptions {
            size_mib: Some(s),
            ..Default::default()
        };
        assert!(check_compatible(&gp(), &disk, &size(64)).is_ok());
        assert!(
            check_compatible(&gp(), &disk, &size(65))
                .unwrap_err()
                .to_string()
                .contains("size 64 MiB, not size 65 MiB")
        );
    }
}
