//! Supervisor-side resolution of a [`SandboxSpec`] into an [`InitPlan`]:
//! named volumes looked up or created through the store and registered as
//! attached, disk images attached as block devices. Everything acquired is
//! held by [`Prepared`] for the sandbox's lifetime; a failed start rolls
//! back exactly what it did, removing only volumes it created.

use std::io;
use std::path::{Path, PathBuf};

use msb_blockdev::{DiskView, ViewError};
use msb_spec::{
    BindExpect, GuestPath, Mount, MountError, MountFlags, MountOptions, NamedMode,
    NamedVolumeOptions, VolumeKind, VolumeName,
};
use msb_store::{AttachMode, Attachment, Store, StoreError, VolumeInfo};
use serde::Serialize;

use crate::plan::{InitMount, InitPlan, InitSource, SandboxSpec, Security};

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
    #[error(
        "mount at {guest}: {why} needs the msb filesystem server, which this build does not have yet"
    )]
    NeedsServer { guest: GuestPath, why: String },
    #[error("mount at {guest}")]
    Disk {
        guest: GuestPath,
        #[source]
        source: ViewError,
    },
}

/// Everything a sandbox holds on the host while it runs: attachments (the
/// in-use registration), block devices, and the record of volumes created
/// for it. Dropping it releases all of that; [`Prepared::rollback`] also
/// removes the volumes it created.
pub struct Prepared<'s> {
    /// The plan for the init.
    pub plan: InitPlan,
    store: &'s Store,
    // Drop order: block devices, then the in-use registrations.
    views: Vec<DiskView>,
    attachments: Vec<Attachment>,
    created: Vec<VolumeName>,
    recount: Vec<VolumeInfo>,
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

    /// Pids of qemu daemons serving disk views.
    pub fn daemon_pids(&self) -> Vec<u32> {
        self.views.iter().filter_map(DiskView::daemon_pid).collect()
    }

    /// Undoes a failed start: releases everything and removes the volumes
    /// this sandbox created (never one that already existed).
    pub fn rollback(mut self) {
        self.views.clear();
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

/// Flags as applied: the restricted profile forces nosuid,nodev.
fn effective_flags(mut f: MountFlags, security: Security) -> MountFlags {
    if security == Security::Restricted {
        f.nosuid = true;
        f.nodev = true;
    }
    f
}

/// Resolves `spec` for the sandbox `holder` (e.g. `sandbox:run-42`),
/// creating and attaching volumes and disk images.
pub fn prepare<'s>(
    spec: &SandboxSpec,
    store: &'s Store,
    holder: &str,
) -> Result<Prepared<'s>, PrepareError> {
    let mut p = Prepared {
        plan: InitPlan {
            rootfs: spec.rootfs.clone(),
            mounts: Vec::new(),
            workdir: spec
                .workdir
                .as_ref()
                .map_or_else(|| "/".to_string(), |w| w.to_string()),
            env: merged_env(spec),
            security: spec.security,
            command: spec.command.clone(),
            hostname: "msb".to_string(),
        },
        store,
        views: Vec::new(),
        attachments: Vec::new(),
        created: Vec::new(),
        recount: Vec::new(),
    };
    for entry in spec.mounts.entries() {
        let flags = effective_flags(entry.mount.flags(), spec.security);
        match add_mount(&mut p, &entry.guest, &entry.mount, flags, holder) {
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
            let meta = std::fs::metadata(host_path).map_err(|source| PrepareError::HostPath {
                guest: guest.clone(),
                path: host_path.clone(),
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
                    path: host_path.clone(),
                    expected,
                });
            }
            check_server(guest, options, None)?;
            Ok(InitSource::Bind {
                path: host_path.clone(),
                dir: meta.is_dir(),
            })
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
            let info = resolve_named(p, guest, name, volume)?;
            let mode = if flags.readonly {
                AttachMode::ReadOnly
            } else {
                AttachMode::ReadWrite
            };
            match info.kind {
                VolumeKind::Dir => {
                    check_server(guest, options, info.quota_mib.filter(|_| !flags.readonly))?;
                    p.attachments
                        .push(p.store.attach(name, holder, mode).map_err(store_err)?);
                    if !flags.readonly {
                        p.recount.push(info.clone());
                    }
                    Ok(InitSource::Bind {
                        path: info.path,
                        dir: true,
                    })
                }
                VolumeKind::Disk => {
                    if options.stat_virt.is_some() || options.host_perms.is_some() {
                        return Err(PrepareError::PolicyOnDisk {
                            guest: guest.clone(),
                            name: name.clone(),
                        });
                    }
                    p.attachments
                        .push(p.store.attach(name, holder, mode).map_err(store_err)?);
                    let image = info
                        .disk_image
                        .unwrap_or_else(|| p.store.layout().disk_image(name));
                    attach_disk(p, guest, &image, msb_spec::DiskFormat::Raw, None, flags)
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
        ),
    }
}

fn attach_disk(
    p: &mut Prepared<'_>,
    guest: &GuestPath,
    image: &Path,
    format: msb_spec::DiskFormat,
    fstype: Option<&str>,
    flags: MountFlags,
) -> Result<InitSource, PrepareError> {
    let view = DiskView::open(image, format, fstype, flags.readonly).map_err(|source| {
        PrepareError::Disk {
            guest: guest.clone(),
            source,
        }
    })?;
    let source = InitSource::Block {
        device: view.device().to_path_buf(),
        fstype: view.fstype().to_string(),
    };
    p.views.push(view);
    Ok(source)
}

/// Policies a kernel bind mount cannot provide. Without the filesystem
/// server they are refused rather than silently ignored.
fn check_server(
    guest: &GuestPath,
    options: &MountOptions,
    quota_mib: Option<u32>,
) -> Result<(), PrepareError> {
    let why = if let Some(s) = options.stat_virt {
        Some(format!("stat-virt={s}"))
    } else if let Some(h) = options.host_perms {
        Some(format!("host-perms={h}"))
    } else {
        quota_mib.map(|q| format!("enforcing the {q} MiB quota of a writable mount"))
    };
    match why {
        Some(why) => Err(PrepareError::NeedsServer {
            guest: guest.clone(),
            why,
        }),
        None => Ok(()),
    }
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
    /// Root filesystem (`null`: the host's, read-only).
    pub rootfs: Option<PathBuf>,
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
}

/// Describes what [`prepare`] would do, without doing it.
pub fn dry_run(spec: &SandboxSpec, store: &Store) -> Result<DryRun, PrepareError> {
    let mut mounts = Vec::new();
    for entry in spec.mounts.entries() {
        let flags = effective_flags(entry.mount.flags(), spec.security);
        let (action, host_path) = match &entry.mount {
            Mount::Bind { host_path, .. } => ("bind", Some(host_path.clone())),
            Mount::Tmpfs { .. } => ("tmpfs", None),
            Mount::Disk { host_path, .. } => ("attach", Some(host_path.clone())),
            Mount::Named { name, volume, .. } => match store.get(name) {
                Ok(info) if volume.mode != NamedMode::Create => {
                    if volume.mode == NamedMode::EnsureExists {
                        check_compatible(&entry.guest, &info, volume)?;
                    }
                    let path = info.disk_image.clone().unwrap_or(info.path.clone());
                    ("reuse", Some(path))
                }
                Err(StoreError::NotFound(_)) if volume.mode != NamedMode::Existing => {
                    volume
                        .volume_config(name)
                        .map_err(|source| PrepareError::Config {
                            guest: entry.guest.clone(),
                            source,
                        })?;
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
        });
    }
    Ok(DryRun {
        rootfs: spec.rootfs.clone(),
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
