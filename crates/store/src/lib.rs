//! The msb volume store.
//!
//! A store lives in a home directory (`$MSB_HOME`, else `~/.microsandbox`)
//! and keeps a SQLite catalog of named volumes next to their data; see
//! [`Layout`] for the files.
//!
//! # Crash safety
//! Every change to the set of volumes runs under one lock file and follows an
//! order that can be finished or undone from any point:
//!
//! * create: insert the row as `creating`; build the volume in
//!   `volumes/.staging/<name>.<token>`; rename it into place (no replace);
//!   mark the row `ready`.
//! * remove: mark the row `removing`; rename the volume into
//!   `volumes/.trash/<name>.<token>`; delete the row; delete the trash.
//!
//! Only `ready` rows are visible, so every listed volume has its data. A
//! process killed half way leaves a row in `creating`/`removing` or an entry
//! in staging or trash; the next command notices that cheaply and reconciles
//! (rolls a create back unless its rename happened, finishes a remove). The
//! store only ever deletes what is in staging or trash, or a volume it is
//! asked to remove: a directory it did not create is reported by
//! [`Store::doctor`], never deleted.
//!
//! # Ownership
//! A sandbox runs in its own user namespace, so its root is an unprivileged
//! host user ([`sandbox_ids`]). A new volume belongs to that user: a
//! directory volume's root directory, or the root of a disk volume's ext4
//! filesystem. Everything a sandbox then creates there is owned by its id
//! range, never by host root.
//!
//! # Concurrency
//! Any number of processes may use a store at once. Changes are serialized by
//! the lock; the catalog's primary key decides races on a name; readers never
//! block on writers (WAL); waits for SQLite's lock are retried internally.

mod attach;
mod catalog;
pub mod disk;
mod layout;
mod sandbox;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use catalog::{Catalog, State, VolumeRow};
use msb_quota::{Budget, QuotaError};
use msb_spec::{
    FilterSubject, IdMap, LabelFilter, Labels, VolumeConfig, VolumeFilter, VolumeKind, VolumeName,
};

pub use attach::{AttachMode, Attachment};
pub use catalog::CatalogError;
pub use disk::DiskError;
pub use layout::{DISK_IMAGE, Layout};
pub use sandbox::SandboxRecord;

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("volume not found: {0}")]
    NotFound(VolumeName),
    #[error("volume already exists: {0}")]
    AlreadyExists(VolumeName),
    #[error("sandbox not found: {0}")]
    SandboxNotFound(String),
    #[error("sandbox already exists: {0}")]
    SandboxExists(String),
    #[error("volume {name} is in use by {}", users.join(", "))]
    InUse {
        name: VolumeName,
        users: Vec<String>,
    },
    #[error(
        "{path} already exists but is not a volume msb knows; `msb volume doctor --adopt {}` makes it one, `msb volume doctor --remove-orphan {}` deletes it (or move it away)",
        leaf(path),
        leaf(path)
    )]
    PathOccupied { path: PathBuf },
    #[error("there is no orphaned data at {path} to adopt or remove")]
    NoOrphan { path: PathBuf },
    #[error("{path} is not a directory, so it cannot become a volume")]
    OrphanNotDir { path: PathBuf },
    #[error("cannot find the msb home: set MSB_HOME or HOME")]
    NoHome,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    #[error("cannot copy volume {name}: {message}")]
    Copy { name: VolumeName, message: String },
    #[error("cannot scan volume {name}")]
    Scan {
        name: VolumeName,
        #[source]
        source: msb_quota::ScanError,
    },
}

/// The last component of `path`, for messages naming an orphan.
fn leaf(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A volume as the catalog and its data describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: VolumeName,
    /// Directory or disk.
    pub kind: VolumeKind,
    /// Root of a directory volume; folder holding `disk.raw` of a disk volume.
    pub path: PathBuf,
    /// The image of a disk volume.
    pub disk_image: Option<PathBuf>,
    /// Quota of a directory volume, in MiB.
    pub quota_mib: Option<u32>,
    /// Capacity of a disk volume, in bytes.
    pub capacity_bytes: Option<u64>,
    /// Bytes in use (see the crate docs of msb-quota and [`disk::used_bytes`]).
    pub used_bytes: u64,
    /// Metadata labels.
    pub labels: Labels,
    /// When the volume was created.
    pub created_at: SystemTime,
}

/// A volume [`Store::prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The volume's name.
    pub name: VolumeName,
    /// Directory or disk.
    pub kind: VolumeKind,
    /// What its data held on the host when it went, counted as usage is
    /// (see msb-quota): a directory volume's tree, a disk volume's image.
    pub freed_bytes: u64,
}

/// What [`Store::doctor`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DoctorReport {
    /// Interrupted operations that were finished or undone.
    pub repaired: Vec<String>,
    /// Entries under `volumes/` that no catalog row claims; left in place.
    pub orphans: Vec<PathBuf>,
    /// Volumes whose data is missing from disk.
    pub missing: Vec<VolumeName>,
    /// Directory volumes whose usage counter was corrected: (name, old, new).
    pub usage_fixed: Vec<(VolumeName, u64, u64)>,
    /// Directory volumes whose root directory is owned by host root while
    /// sandboxes run as another user (see [`sandbox_ids`]), so a sandbox
    /// cannot write to them: made before volumes were given to sandboxes.
    /// Reported only; their owner is left as it is.
    pub owned_by_host_root: Vec<VolumeName>,
}

/// The host user ids of the sandboxes msb starts from this process:
/// [`IdMap::ROOTFUL`] when it runs as root (euid 0), else the rootless
/// [`IdMap::single`] of the calling user (guest root is the caller). New
/// volumes are owned by this map's root, so a sandbox's user namespace must
/// map its users with this same answer to write to them.
pub fn sandbox_ids() -> IdMap {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        IdMap::ROOTFUL
    } else {
        IdMap::single(euid.as_raw())
    }
}

/// Group ids, as [`sandbox_ids`] for users: [`IdMap::ROOTFUL`] when msb
/// runs as root, else [`IdMap::single`] of the caller's effective group.
pub fn sandbox_gids() -> IdMap {
    if rustix::process::geteuid().is_root() {
        IdMap::ROOTFUL
    } else {
        IdMap::single(rustix::process::getegid().as_raw())
    }
}

/// Who owns the root of a new volume: the sandboxes' root user and group.
fn volume_owner() -> (u32, u32) {
    (sandbox_ids().root(), sandbox_gids().root())
}

/// A volume store rooted at one home directory.
pub struct Store {
    layout: Layout,
    catalog: Mutex<Catalog>,
}

impl Store {
    /// Opens the store at `$MSB_HOME`, else `~/.microsandbox`.
    pub fn open_default() -> Result<Self, StoreError> {
        Self::open(default_home()?)
    }

    /// Opens (creating if needed) the store at `home`, and finishes any
    /// operation an earlier process left half done.
    pub fn open(home: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let layout = Layout::new(home);
        // Private: the catalog and every volume's data are the owner's
        // alone. Sandboxes reach their volumes through mounts made for
        // them, and a QEMU (running as a user of its own) through
        // descriptors, so neither needs a path in here.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        let db_dir = layout.db_dir();
        builder
            .create(&db_dir)
            .map_err(io_err("cannot create", &db_dir))?;
        make_private(&db_dir)?;
        // The catalog is checked before anything else is created, so a home
        // that belongs to something else is left as it was.
        let catalog = Catalog::open(&layout.db_file())?;
        for dir in [
            layout.staging_dir(),
            layout.trash_dir(),
            layout.usage_dir(),
            layout.attach_dir(),
        ] {
            builder
                .create(&dir)
                .map_err(io_err("cannot create", &dir))?;
        }
        // Homes made before these folders were private are tightened.
        for dir in [layout.volumes_dir(), layout.usage_dir(), layout.run_dir()] {
            make_private(&dir)?;
        }
        let store = Store {
            layout,
            catalog: Mutex::new(catalog),
        };
        if store.needs_reconcile()? {
            // Another process holding the lock is mid-operation; its rows are
            // not stale and it will finish them itself.
            if let Some(_lock) = store.try_lock()? {
                store.reconcile()?;
            }
        }
        Ok(store)
    }

    /// The on-disk layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a volume.
    pub fn create(&self, config: &VolumeConfig) -> Result<VolumeInfo, StoreError> {
        let _lock = self.lock()?;
        self.reconcile_if_needed()?;
        let row = VolumeRow {
            name: config.name().clone(),
            kind: config.kind(),
            state: State::Creating,
            quota_mib: config.quota_mib(),
            capacity_mib: config.size_mib(),
            labels: config.labels().clone(),
            created_us: now_us(),
            token: token(),
        };
        self.make(&row, |staging| self.build(&row, staging))
    }

    /// Makes the volume `row` describes: records it as being created, has
    /// `fill` make its folder at `staging` (returning the bytes it uses),
    /// moves that into place and marks it ready, or undoes all of it. The
    /// caller holds the lock.
    fn make(
        &self,
        row: &VolumeRow,
        fill: impl FnOnce(&Path) -> Result<u64, StoreError>,
    ) -> Result<VolumeInfo, StoreError> {
        let name = &row.name;
        if self.catalog().get(name)?.is_some() {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        let target = self.layout.volume_dir(name);
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::PathOccupied { path: target });
        }
        if !self.catalog().insert_creating(row)? {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        let staging = self.staging_path(row);
        let made = fill(&staging).and_then(|used| {
            move_into_place(&staging, &target)?;
            Ok(used)
        });
        match made {
            Ok(used) => {
                self.catalog().set_state(name, State::Ready)?;
                Ok(self.info(row, used))
            }
            Err(e) => {
                let _ = remove_tree(&staging);
                let _ = std::fs::remove_file(self.layout.usage_file(name));
                self.catalog().delete(name)?;
                Err(e)
            }
        }
    }

    /// Makes a new, empty volume's folder at `staging`.
    fn build(&self, row: &VolumeRow, staging: &Path) -> Result<u64, StoreError> {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(staging)
            .map_err(io_err("cannot create", staging))?;
        match (row.kind, row.capacity_mib) {
            (VolumeKind::Disk, Some(size)) => {
                disk::make_image(&staging.join(DISK_IMAGE), size, volume_owner())?
            }
            _ => {
                // Rootless, the caller already owns it, as it should.
                if rustix::process::geteuid().is_root() {
                    give_to_sandboxes(staging)?;
                }
                Budget::create(&self.layout.usage_file(&row.name), 0)?
            }
        }
        Ok(0)
    }

    /// Creates `dst` as a copy of the volume `src`: same kind, quota,
    /// capacity and labels, and all its files with their modes, owners,
    /// times, links, holes and extended attributes (reflinked where the
    /// filesystem can). Refused while anything uses `src` read-write; the
    /// store stays locked during the copy, so no sandbox can start writing
    /// to it meanwhile (other changes to the store wait as well). Crash-safe
    /// like [`Store::create`]: an interrupted clone leaves no volume.
    pub fn clone_volume(
        &self,
        src: &VolumeName,
        dst: &VolumeName,
    ) -> Result<VolumeInfo, StoreError> {
        let _lock = self.lock()?;
        self.reconcile_if_needed()?;
        let source = self.ready_row(src)?;
        unused(src, self.live_writers(src)?)?;
        let row = VolumeRow {
            name: dst.clone(),
            state: State::Creating,
            created_us: now_us(),
            token: token(),
            ..source
        };
        self.make(&row, |staging| self.copy(src, &row, staging))
    }

    /// Copies the volume `src` to `staging` and counts a directory
    /// volume's usage; returns the bytes used.
    fn copy(&self, src: &VolumeName, row: &VolumeRow, staging: &Path) -> Result<u64, StoreError> {
        let failed = |message: String| StoreError::Copy {
            name: src.clone(),
            message,
        };
        let out = disk::die_with_caller(&mut std::process::Command::new("cp"))
            .args([
                "-a",
                "--reflink=auto",
                "--sparse=always",
                "--no-target-directory",
            ])
            .arg(self.layout.volume_dir(src))
            .arg(staging)
            .output()
            .map_err(|e| failed(format!("cannot run cp: {e}")))?;
        if !out.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let used = match row.kind {
            VolumeKind::Disk => 0,
            VolumeKind::Dir => {
                let root = open_dir_nofollow(staging)?;
                let used = msb_quota::scan(&root).map_err(|source| StoreError::Scan {
                    name: row.name.clone(),
                    source,
                })?;
                Budget::create(&self.layout.usage_file(&row.name), used)?;
                used
            }
        };
        Ok(used)
    }

    /// Looks a volume up; its usage is the counter's figure (see
    /// [`Store::get_current`]).
    pub fn get(&self, name: &VolumeName) -> Result<VolumeInfo, StoreError> {
        Ok(self.info_with_usage(&self.ready_row(name)?, None))
    }

    /// Looks a volume up with its usage as it is now. The counter of a
    /// directory volume only sees writes made through msb (a sandbox, a
    /// host mount, the file API); anything written to its directory on the
    /// host directly is missed, so the tree is scanned and the scanned
    /// figure returned. When nothing uses the volume read-write, the counter
    /// is set to that figure too, so listings catch up. Costs a walk of the
    /// tree (a disk volume's figure is always current: its superblock).
    pub fn get_current(&self, name: &VolumeName) -> Result<VolumeInfo, StoreError> {
        let row = self.ready_row(name)?;
        if row.kind != VolumeKind::Dir {
            return Ok(self.info_with_usage(&row, None));
        }
        let used = self.current_dir_usage(name)?;
        Ok(self.info(&row, used))
    }

    /// Scans a directory volume and, if it can do so safely, sets its
    /// counter to the result.
    fn current_dir_usage(&self, name: &VolumeName) -> Result<u64, StoreError> {
        // Attaching takes the store lock: while this process holds it, a
        // volume with no writer now gets none until the counter is set, so
        // no reservation can land between the scan and the reset. Without
        // the lock (another change in progress) or with a writer, a reset
        // could drop that writer's bytes; the counter is then left as is.
        let lock = self.try_lock()?;
        let quiet = lock.is_some() && self.live_writers(name)?.is_empty();
        let used = self.scan(name)?;
        if quiet {
            self.set_counter(name, used)?;
        }
        Ok(used)
    }

    /// Sets a directory volume's usage counter, recreating it if it is
    /// missing or damaged. The caller holds the lock.
    fn set_counter(&self, name: &VolumeName, used: u64) -> Result<(), StoreError> {
        let path = self.layout.usage_file(name);
        match Budget::open(&path, None) {
            Ok(b) => b.set_used(used),
            Err(_) => Budget::create(&path, used)?,
        }
        Ok(())
    }

    /// The catalog row of a volume that exists (not one being created or
    /// removed).
    fn ready_row(&self, name: &VolumeName) -> Result<VolumeRow, StoreError> {
        match self.catalog().get(name)? {
            Some(row) if row.state == State::Ready => Ok(row),
            _ => Err(StoreError::NotFound(name.clone())),
        }
    }

    /// Lists volumes, newest first, keeping those matching every filter.
    pub fn list(&self, filters: &[LabelFilter]) -> Result<Vec<VolumeInfo>, StoreError> {
        let rows = self.catalog().list_ready()?;
        let usage_dir = open_dir_nofollow(&self.layout.usage_dir()).ok();
        Ok(rows
            .iter()
            .filter(|r| filters.iter().all(|f| f.matches(&r.labels)))
            .map(|r| self.info_with_usage(r, usage_dir.as_ref()))
            .collect())
    }

    /// Removes a volume and its data. Refused while it is in use.
    pub fn remove(&self, name: &VolumeName) -> Result<(), StoreError> {
        self.remove_row(name, |_| true, false).map(drop)
    }

    /// Removes `name` if `wanted` accepts its row; with `measure`, counts
    /// what its data held (see [`Pruned::freed_bytes`]).
    fn remove_row(
        &self,
        name: &VolumeName,
        wanted: impl FnOnce(&VolumeRow) -> bool,
        measure: bool,
    ) -> Result<u64, StoreError> {
        let trash = {
            let _lock = self.lock()?;
            self.reconcile_if_needed()?;
            let row = self.ready_row(name)?;
            if !wanted(&row) {
                return Err(StoreError::NotFound(name.clone()));
            }
            unused(name, self.live_users(name)?)?;
            self.catalog().set_state(name, State::Removing)?;
            self.finish_remove(&row)?
        };
        // In the trash nothing can reach the data any more, so the count is
        // what the delete gives back. The volume is gone from the catalog
        // either way: a tree that cannot be counted counts nothing rather
        // than failing a remove that has happened.
        let freed = if measure {
            open_dir_nofollow(&trash)
                .ok()
                .and_then(|dir| msb_quota::scan(&dir).ok())
                .unwrap_or(0)
        } else {
            0
        };
        remove_tree(&trash)?;
        Ok(freed)
    }

    /// The volumes [`Store::prune`] would remove now: those matching
    /// `filters` that nothing uses, newest first, with their usage as
    /// [`Store::get_current`] counts it; and, for matching volumes kept
    /// because they are in use, why.
    pub fn prune_candidates(
        &self,
        filters: &[VolumeFilter],
    ) -> Result<(Vec<VolumeInfo>, Vec<StoreError>), StoreError> {
        let mut found = Vec::new();
        let mut kept = Vec::new();
        // Bound first: the catalog guard must not live through the loop.
        let rows = self.catalog().list_ready()?;
        for row in rows {
            let created_at = self.info(&row, 0).created_at;
            let subject = FilterSubject {
                name: row.name.as_str(),
                kind: row.kind,
                labels: &row.labels,
                created_at,
            };
            if !VolumeFilter::all_match(filters, &subject) {
                continue;
            }
            if let Err(e) = unused(&row.name, self.live_users(&row.name)?) {
                kept.push(e);
                continue;
            }
            match self.get_current(&row.name) {
                Ok(info) => found.push(info),
                // Removed meanwhile: nothing left to prune.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((found, kept))
    }

    /// Removes the volumes `candidates` lists (as [`Store::prune_candidates`]
    /// found them). Each is checked again as it goes: one that is in use
    /// by now, or was removed, or was replaced by a new volume of the same
    /// name since it was listed, is skipped, so only what was listed is
    /// ever removed. Returns what was removed and, for the skipped, why.
    pub fn prune(
        &self,
        candidates: &[VolumeInfo],
    ) -> Result<(Vec<Pruned>, Vec<StoreError>), StoreError> {
        let mut removed = Vec::new();
        let mut skipped = Vec::new();
        for info in candidates {
            let same = |row: &VolumeRow| self.info(row, 0).created_at == info.created_at;
            match self.remove_row(&info.name, same, true) {
                Ok(freed_bytes) => removed.push(Pruned {
                    name: info.name.clone(),
                    kind: info.kind,
                    freed_bytes,
                }),
                Err(e @ (StoreError::InUse { .. } | StoreError::NotFound(_))) => skipped.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok((removed, skipped))
    }

    /// Who is using a volume right now (live attachments).
    pub fn users(&self, name: &VolumeName) -> Result<Vec<String>, StoreError> {
        self.get(name)?;
        self.live_users(name)
    }

    /// Opens a directory volume's usage budget (with its quota as the limit).
    /// Disk volumes have none: their filesystem is the limit. A missing or
    /// damaged counter is rebuilt by scanning the volume.
    pub fn budget(&self, info: &VolumeInfo) -> Result<Option<Budget>, StoreError> {
        if info.kind != VolumeKind::Dir {
            return Ok(None);
        }
        let path = self.layout.usage_file(&info.name);
        let limit = info.quota_mib.map(|q| u64::from(q) << 20);
        match Budget::open(&path, limit) {
            Ok(b) => Ok(Some(b)),
            Err(QuotaError::Missing { .. } | QuotaError::Damaged { .. }) => {
                let _lock = self.lock()?;
                Budget::create(&path, self.scan(&info.name)?)?;
                Ok(Some(Budget::open(&path, limit)?))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes interrupted operations, recounts every directory volume's
    /// usage, and reports what is on disk but not in the catalog (and the
    /// reverse). Never deletes a directory the store did not create.
    pub fn doctor(&self) -> Result<DoctorReport, StoreError> {
        let _lock = self.lock()?;
        let mut report = DoctorReport {
            repaired: self.reconcile()?,
            ..Default::default()
        };
        let rows = self.catalog().list_ready()?;
        for row in &rows {
            let dir = self.layout.volume_dir(&row.name);
            let present = match row.kind {
                VolumeKind::Dir => dir.is_dir(),
                VolumeKind::Disk => self.layout.disk_image(&row.name).is_file(),
            };
            if !present {
                report.missing.push(row.name.clone());
                continue;
            }
            if row.kind == VolumeKind::Dir {
                if sandbox_ids().root() != 0
                    && std::fs::symlink_metadata(&dir).is_ok_and(|m| m.uid() == 0)
                {
                    report.owned_by_host_root.push(row.name.clone());
                }
                let actual = self.scan(&row.name)?;
                let path = self.layout.usage_file(&row.name);
                let recorded = Budget::peek(&path).ok();
                if recorded != Some(actual) {
                    match Budget::open(&path, None) {
                        Ok(b) => b.set_used(actual),
                        Err(_) => Budget::create(&path, actual)?,
                    }
                    report
                        .usage_fixed
                        .push((row.name.clone(), recorded.unwrap_or(0), actual));
                }
            }
        }
        let volumes = self.layout.volumes_dir();
        for entry in std::fs::read_dir(&volumes).map_err(io_err("cannot read", &volumes))? {
            let entry = entry.map_err(io_err("cannot read", &volumes))?;
            let file_name = entry.file_name();
            let Some(s) = file_name.to_str() else {
                report.orphans.push(entry.path());
                continue;
            };
            if s.starts_with('.') {
                continue;
            }
            if !rows.iter().any(|r| r.name.as_str() == s) {
                report.orphans.push(entry.path());
            }
        }
        Ok(report)
    }

    /// Makes the orphaned data at `volumes/NAME` (see
    /// [`DoctorReport::orphans`]) the volume `name`, as it is: a disk
    /// volume if the folder holds only an ext4 `disk.raw` (its capacity the
    /// image's size), else a directory volume without quota or labels,
    /// its usage counted now. Its owner is left as it is (doctor reports a
    /// root sandboxes cannot write to).
    pub fn adopt_orphan(&self, name: &VolumeName) -> Result<VolumeInfo, StoreError> {
        let _lock = self.lock()?;
        self.reconcile_if_needed()?;
        let dir = self.orphan(name)?;
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(StoreError::OrphanNotDir { path: dir });
        }
        let capacity_mib = self.orphan_disk_mib(name, &dir)?;
        let row = VolumeRow {
            name: name.clone(),
            kind: if capacity_mib.is_some() {
                VolumeKind::Disk
            } else {
                VolumeKind::Dir
            },
            state: State::Creating,
            quota_mib: None,
            capacity_mib,
            labels: Labels::new(),
            created_us: now_us(),
            token: token(),
        };
        if !self.catalog().insert_creating(&row)? {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        // A row in `creating` whose data is in place and staging empty is
        // completed by the next reconcile, so a crash here adopts it anyway.
        let used = match row.kind {
            VolumeKind::Dir => {
                let counted = self.scan(name).and_then(|used| {
                    Budget::create(&self.layout.usage_file(name), used)?;
                    Ok(used)
                });
                match counted {
                    Ok(used) => used,
                    Err(e) => {
                        self.catalog().delete(name)?;
                        return Err(e);
                    }
                }
            }
            VolumeKind::Disk => disk::used_bytes(&self.layout.disk_image(name)).unwrap_or(0),
        };
        self.catalog().set_state(name, State::Ready)?;
        Ok(self.info(&row, used))
    }

    /// Deletes the orphaned data at `volumes/NAME` (see
    /// [`DoctorReport::orphans`]): moved to the trash under the lock, then
    /// deleted.
    pub fn remove_orphan(&self, name: &VolumeName) -> Result<(), StoreError> {
        let trash = {
            let _lock = self.lock()?;
            self.reconcile_if_needed()?;
            let dir = self.orphan(name)?;
            let trash = self.layout.trash_dir().join(format!("{name}.{}", token()));
            std::fs::rename(&dir, &trash).map_err(io_err("cannot move to trash", &dir))?;
            trash
        };
        remove_tree(&trash)
    }

    /// The path of the orphan `name`: present under `volumes/` with no
    /// catalog row. The caller holds the lock.
    fn orphan(&self, name: &VolumeName) -> Result<PathBuf, StoreError> {
        if self.catalog().get(name)?.is_some() {
            return Err(StoreError::AlreadyExists(name.clone()));
        }
        let dir = self.layout.volume_dir(name);
        match dir.symlink_metadata() {
            Ok(_) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NoOrphan { path: dir })
            }
            Err(e) => Err(io_err("cannot read", &dir)(e)),
        }
    }

    /// The capacity in MiB if the orphan folder `dir` is a disk volume's:
    /// nothing in it but `disk.raw`, a whole number of MiB holding ext4.
    fn orphan_disk_mib(&self, name: &VolumeName, dir: &Path) -> Result<Option<u32>, StoreError> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("cannot read", dir))? {
            entries.push(entry.map_err(io_err("cannot read", dir))?.file_name());
        }
        if entries != [std::ffi::OsString::from(DISK_IMAGE)] {
            return Ok(None);
        }
        let image = self.layout.disk_image(name);
        let Ok(meta) = image.symlink_metadata() else {
            return Ok(None);
        };
        let mib = meta.len() >> 20;
        let whole = meta.is_file() && meta.len() & ((1 << 20) - 1) == 0 && mib > 0;
        if !whole || disk::used_bytes(&image).is_err() {
            return Ok(None);
        }
        Ok(u32::try_from(mib).ok())
    }

    fn scan(&self, name: &VolumeName) -> Result<u64, StoreError> {
        let dir = self.layout.volume_dir(name);
        let root = open_dir_nofollow(&dir)?;
        msb_quota::scan(&root).map_err(|source| StoreError::Scan {
            name: name.clone(),
            source,
        })
    }

    fn info(&self, row: &VolumeRow, used_bytes: u64) -> VolumeInfo {
        let disk = row.kind == VolumeKind::Disk;
        VolumeInfo {
            name: row.name.clone(),
            kind: row.kind,
            path: self.layout.volume_dir(&row.name),
            disk_image: disk.then(|| self.layout.disk_image(&row.name)),
            quota_mib: row.quota_mib,
            capacity_bytes: row.capacity_mib.map(|m| u64::from(m) << 20),
            used_bytes,
            labels: row.labels.clone(),
            created_at: UNIX_EPOCH + Duration::from_micros(row.created_us.max(0) as u64),
        }
    }

    /// Usage is a cheap read: a 16-byte counter for directories, the
    /// superblock for disks. An unreadable figure shows as 0 rather than
    /// failing a listing; `doctor` repairs counters.
    fn info_with_usage(&self, row: &VolumeRow, usage_dir: Option<&OwnedFd>) -> VolumeInfo {
        let used = match (row.kind, usage_dir) {
            (VolumeKind::Dir, Some(dir)) => Budget::peek_at(dir, Path::new(row.name.as_str())),
            (VolumeKind::Dir, None) => Budget::peek(&self.layout.usage_file(&row.name)),
            (VolumeKind::Disk, _) => {
                Ok(disk::used_bytes(&self.layout.disk_image(&row.name)).unwrap_or(0))
            }
        }
        .unwrap_or(0);
        self.info(row, used)
    }

    fn staging_path(&self, row: &VolumeRow) -> PathBuf {
        self.layout
            .staging_dir()
            .join(format!("{}.{}", row.name, row.token))
    }

    fn trash_path(&self, row: &VolumeRow) -> PathBuf {
        self.layout
            .trash_dir()
            .join(format!("{}.{}", row.name, row.token))
    }

    /// Moves a `removing` volume to the trash and drops its row. Returns the
    /// trash path, to be deleted without holding the lock.
    fn finish_remove(&self, row: &VolumeRow) -> Result<PathBuf, StoreError> {
        let dir = self.layout.volume_dir(&row.name);
        let trash = self.trash_path(row);
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot move to trash", &dir)(e)),
        }
        match std::fs::remove_file(self.layout.usage_file(&row.name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_err("cannot remove", &self.layout.usage_file(&row.name))(
                    e,
                ));
            }
        }
        self.catalog().delete(&row.name)?;
        Ok(trash)
    }

    fn needs_reconcile(&self) -> Result<bool, StoreError> {
        if !self.catalog().list_unfinished()?.is_empty() {
            return Ok(true);
        }
        for dir in [self.layout.staging_dir(), self.layout.trash_dir()] {
            let mut entries = std::fs::read_dir(&dir).map_err(io_err("cannot read", &dir))?;
            if entries.next().is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn reconcile_if_needed(&self) -> Result<(), StoreError> {
        if self.needs_reconcile()? {
            self.reconcile()?;
        }
        Ok(())
    }

    /// Finishes or undoes what dead processes left. Caller holds the lock, so
    /// nothing found here belongs to a live operation.
    fn reconcile(&self) -> Result<Vec<String>, StoreError> {
        let mut done = Vec::new();
        let unfinished = self.catalog().list_unfinished()?;
        for row in unfinished {
            let staging = self.staging_path(&row);
            let target = self.layout.volume_dir(&row.name);
            match row.state {
                State::Creating if !staging.exists() && target.exists() => {
                    self.catalog().set_state(&row.name, State::Ready)?;
                    done.push(format!("completed interrupted create of {}", row.name));
                }
                State::Creating => {
                    remove_tree(&staging)?;
                    let _ = std::fs::remove_file(self.layout.usage_file(&row.name));
                    self.catalog().delete(&row.name)?;
                    done.push(format!("rolled back interrupted create of {}", row.name));
                }
                State::Removing => {
                    let trash = self.finish_remove(&row)?;
                    remove_tree(&trash)?;
                    done.push(format!("finished interrupted remove of {}", row.name));
                }
                State::Ready => {}
            }
        }
        // Staging and trash hold only what this store put there; with the
        // lock held and the rows settled above, all of it is leftover.
        for dir in [self.layout.staging_dir(), self.layout.trash_dir()] {
            for entry in std::fs::read_dir(&dir).map_err(io_err("cannot read", &dir))? {
                let path = entry.map_err(io_err("cannot read", &dir))?.path();
                remove_tree(&path)?;
                done.push(format!("deleted leftover {}", path.display()));
            }
        }
        let usage = self.layout.usage_dir();
        for entry in std::fs::read_dir(&usage).map_err(io_err("cannot read", &usage))? {
            let entry = entry.map_err(io_err("cannot read", &usage))?;
            let stale = match entry.file_name().to_str().map(VolumeName::new) {
                Some(Ok(name)) => self.catalog().get(&name)?.is_none(),
                _ => true,
            };
            if stale {
                let _ = std::fs::remove_file(entry.path());
                done.push(format!(
                    "deleted stale usage counter {}",
                    entry.path().display()
                ));
            }
        }
        Ok(done)
    }

    fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.layout.store_lock();
        let file = open_lock_file(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("cannot lock", &path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    fn try_lock(&self) -> Result<Option<StoreLock>, StoreError> {
        let path = self.layout.store_lock();
        let file = open_lock_file(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(io_err("cannot lock", &path)(e.into())),
        }
    }
}

/// Held while changing the set of volumes; released when dropped (or when the
/// process dies).
struct StoreLock {
    _file: File,
}

/// Refuses to change volume `name` while it has `users`.
fn unused(name: &VolumeName, users: Vec<String>) -> Result<(), StoreError> {
    if users.is_empty() {
        Ok(())
    } else {
        Err(StoreError::InUse {
            name: name.clone(),
            users,
        })
    }
}

/// Renames a finished `staging` folder to the volume's `target`, never
/// over something that appeared there.
fn move_into_place(staging: &Path, target: &Path) -> Result<(), StoreError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        staging,
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| match e {
        rustix::io::Errno::EXIST => StoreError::PathOccupied {
            path: target.to_path_buf(),
        },
        e => StoreError::Io {
            what: "cannot move into place",
            path: target.to_path_buf(),
            source: e.into(),
        },
    })
}

/// Takes group and other access away from `dir`, one of the home's own
/// folders.
fn make_private(dir: &Path) -> Result<(), StoreError> {
    let mode = std::fs::symlink_metadata(dir)
        .map_err(io_err("cannot inspect", dir))?
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot make private", dir))?;
    }
    Ok(())
}

/// Makes a new directory volume's root the sandboxes' (mode 0755 whatever
/// the umask, so a sandbox's other users can reach it too).
fn give_to_sandboxes(staging: &Path) -> Result<(), StoreError> {
    let (uid, gid) = volume_owner();
    let dir = open_dir_nofollow(staging)?;
    rustix::fs::fchown(
        &dir,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .and_then(|()| rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(0o755)))
    .map_err(|e| io_err("cannot set the owner of", staging)(e.into()))
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("cannot open", path))
}

fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, StoreError> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("cannot open", path)(e.into()))
}

/// Deletes a tree without following symlinks; a missing path is fine.
fn remove_tree(path: &Path) -> Result<(), StoreError> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot delete", path)(e)),
    }
}

/// `$MSB_HOME` as given, else `~/.microsandbox`.
pub fn default_home() -> Result<PathBuf, StoreError> {
    if let Some(home) = std::env::var_os("MSB_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(StoreError::NoHome)?;
    Ok(PathBuf::from(home).join(".microsandbox"))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A name suffix unique across processes and time.
fn token() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
