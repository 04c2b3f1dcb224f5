//! Named volumes: the seed's `CreateVolume`/`GetVolume`/`ListVolumes`/
//! `RemoveVolume` in Rust idiom.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use msb_spec::{LabelFilter, Labels, VolumeConfig, VolumeKind, VolumeName};
use msb_store::{Store, VolumeInfo};

use crate::{Error, Result, VolumeFiles};

/// The store at `$MSB_HOME`, else `~/.microsandbox`, opened once per
/// process and home and shared by volumes and sandboxes.
pub(crate) fn default_store() -> Result<Arc<Store>, msb_store::StoreError> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<Store>>>> = OnceLock::new();
    let home = msb_store::default_home()?;
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(s) = open.get(&home) {
        return Ok(s.clone());
    }
    let s = Arc::new(Store::open(home.clone())?);
    open.insert(home, s.clone());
    Ok(s)
}

/// A store of volumes at one home directory. Cheap to clone.
#[derive(Clone)]
pub struct VolumeStore {
    store: Arc<Store>,
}

impl VolumeStore {
    /// Opens the store at `home` (created if missing).
    pub fn open(home: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            store: Arc::new(Store::open(home)?),
        })
    }

    /// The store at `$MSB_HOME`, else `~/.microsandbox`, opened once per
    /// process and home.
    pub fn default_home() -> Result<Self> {
        Ok(Self {
            store: default_store()?,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.store.layout().home()
    }

    /// Creates a volume.
    pub async fn create(&self, config: VolumeConfig) -> Result<Volume> {
        let info = self.blocking(move |s| s.create(&config)).await?;
        Ok(Volume {
            name: info.name.to_string(),
            path: info.path,
            kind: info.kind,
            store: self.clone(),
        })
    }

    /// Creates the volume `dst` as a copy of `src`: its kind, quota,
    /// capacity, labels and files (modes, owners, links, holes kept).
    /// Refused while something uses `src` read-write; other changes to the
    /// store wait until the copy is done.
    pub async fn clone_volume(&self, src: &str, dst: &str) -> Result<Volume> {
        let (src, dst) = (parse_name(src)?, parse_name(dst)?);
        let info = self.blocking(move |s| s.clone_volume(&src, &dst)).await?;
        Ok(Volume {
            name: info.name.to_string(),
            path: info.path,
            kind: info.kind,
            store: self.clone(),
        })
    }

    /// Looks a volume up, with its usage counted now: a directory volume's
    /// tree is scanned, so files written to its directory on the host
    /// behind msb's back are counted (see [`VolumeHandle::used_bytes`]).
    pub async fn get(&self, name: &str) -> Result<VolumeHandle> {
        let name = parse_name(name)?;
        let info = self.blocking(move |s| s.get_current(&name)).await?;
        Ok(VolumeHandle {
            info,
            store: self.clone(),
        })
    }

    /// All volumes, newest first, that match every filter. Cheap: usage
    /// figures are the counters' (see [`VolumeHandle::used_bytes`]).
    pub async fn list(&self, filters: Vec<LabelFilter>) -> Result<Vec<VolumeHandle>> {
        let infos = self.blocking(move |s| s.list(&filters)).await?;
        Ok(infos
            .into_iter()
            .map(|info| VolumeHandle {
                info,
                store: self.clone(),
            })
            .collect())
    }

    /// Removes a volume and its data; refused while it is in use. A host
    /// mount of it whose server was killed is detached.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let name = parse_name(name)?;
        self.blocking(move |s| {
            s.remove(&name)?;
            msb_fsserver::detach_mounts_of(&s.layout().volume_dir(&name));
            Ok(())
        })
        .await
    }

    /// Who uses a volume now, as [`VolumeStore::remove`] would name them:
    /// sandboxes that exist, running or stopped (`sandbox:NAME`), and host
    /// mounts (`mount:DIR`).
    pub async fn users(&self, name: &str) -> Result<Vec<String>> {
        let name = parse_name(name)?;
        self.blocking(move |s| s.users(&name)).await
    }

    /// Host-side access to a volume's files; `write` asks for write access.
    pub async fn files(&self, name: &str, write: bool) -> Result<VolumeFiles> {
        let name = parse_name(name)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || VolumeFiles::open(&store, &name, write)).await?
    }

    /// A builder for a volume in this store.
    pub fn builder(&self, name: impl Into<String>) -> VolumeBuilder {
        VolumeBuilder {
            store: Some(self.clone()),
            ..VolumeBuilder::new(name.into())
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> std::result::Result<T, msb_store::StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
    }
}

fn parse_name(name: &str) -> Result<VolumeName> {
    VolumeName::new(name).map_err(|source| Error::InvalidName {
        name: name.to_string(),
        source,
    })
}

/// A named persistent volume, as returned by [`VolumeBuilder::create`].
pub struct Volume {
    name: String,
    path: PathBuf,
    kind: VolumeKind,
    store: VolumeStore,
}

impl Volume {
    /// Starts describing a new volume called `name` (a directory volume
    /// unless told otherwise).
    pub fn builder(name: impl Into<String>) -> VolumeBuilder {
        VolumeBuilder::new(name.into())
    }

    /// Creates a volume from a validated config in the default home.
    pub async fn create(config: VolumeConfig) -> Result<Volume> {
        VolumeStore::default_home()?.create(config).await
    }

    /// Looks a volume up in the default home.
    pub async fn get(name: &str) -> Result<VolumeHandle> {
        VolumeStore::default_home()?.get(name).await
    }

    /// All volumes in the default home, newest first.
    pub async fn list() -> Result<Vec<VolumeHandle>> {
        VolumeStore::default_home()?.list(Vec::new()).await
    }

    /// Volumes in the default home matching every label filter.
    pub async fn list_filtered(filters: Vec<LabelFilter>) -> Result<Vec<VolumeHandle>> {
        VolumeStore::default_home()?.list(filters).await
    }

    /// Removes a volume of the default home.
    pub async fn remove(name: &str) -> Result<()> {
        VolumeStore::default_home()?.remove(name).await
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Host path of the volume: the data directory of a directory volume,
    /// the folder holding `disk.raw` of a disk volume.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Directory or disk.
    pub fn kind(&self) -> VolumeKind {
        self.kind
    }
    /// Deletes this volume (refused while a sandbox uses it).
    pub async fn delete(self) -> Result<()> {
        self.store.remove(&self.name).await
    }
    /// Host-side access to the volume's files (see [`VolumeFiles`]).
    pub async fn fs(&self) -> Result<VolumeFiles> {
        self.store.files(&self.name, true).await
    }
}

/// Metadata of a volume, as returned by [`Volume::get`] and [`Volume::list`].
pub struct VolumeHandle {
    info: VolumeInfo,
    store: VolumeStore,
}

impl VolumeHandle {
    /// The volume's name.
    pub fn name(&self) -> &str {
        self.info.name.as_str()
    }
    /// Host path (see [`Volume::path`]).
    pub fn path(&self) -> &Path {
        &self.info.path
    }
    /// Directory or disk.
    pub fn kind(&self) -> VolumeKind {
        self.info.kind
    }
    /// Quota in MiB, `None` if unlimited (always `None` for disk volumes).
    pub fn quota_mib(&self) -> Option<u32> {
        self.info.quota_mib
    }
    /// Bytes in use: allocated by the tree for a directory volume, used
    /// inside the filesystem for a disk volume, as of the lookup.
    ///
    /// From [`VolumeStore::get`] / [`Volume::get`] a directory volume's
    /// figure is a fresh scan of its tree, and the shared counter is set to
    /// it when nothing writes to the volume through msb. From a listing it
    /// is the counter, which sees every write made through msb (sandboxes,
    /// host mounts, [`VolumeFiles`]) but not files put in the directory on
    /// the host directly, until the next `get`, `msb volume inspect` or
    /// `msb volume doctor`.
    pub fn used_bytes(&self) -> u64 {
        self.info.used_bytes
    }
    /// Capacity in bytes of a disk volume.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.info.capacity_bytes
    }
    /// `"raw"` for disk volumes.
    pub fn disk_format(&self) -> Option<&'static str> {
        (self.info.kind == VolumeKind::Disk).then_some("raw")
    }
    /// `"ext4"` for disk volumes.
    pub fn disk_fstype(&self) -> Option<&'static str> {
        (self.info.kind == VolumeKind::Disk).then_some("ext4")
    }
    /// Metadata labels.
    pub fn labels(&self) -> &Labels {
        &self.info.labels
    }
    /// Creation time.
    pub fn created_at(&self) -> SystemTime {
        self.info.created_at
    }
    /// Deletes this volume (refused while a sandbox uses it).
    pub async fn delete(self) -> Result<()> {
        self.store.remove(self.info.name.as_str()).await
    }
    /// Who uses it now (see [`VolumeStore::users`]).
    pub async fn users(&self) -> Result<Vec<String>> {
        self.store.users(self.info.name.as_str()).await
    }
    /// Host-side access to the volume's files (see [`VolumeFiles`]).
    pub async fn fs(&self) -> Result<VolumeFiles> {
        self.store.files(self.info.name.as_str(), true).await
    }
    /// Read-only host-side access; for a disk volume this is allowed while
    /// sandboxes read it too.
    pub async fn fs_read_only(&self) -> Result<VolumeFiles> {
        self.store.files(self.info.name.as_str(), false).await
    }
}

/// Describes a volume to create. Validation happens in [`create`](Self::create)
/// and reports the first problem.
pub struct VolumeBuilder {
    name: String,
    kind: VolumeKind,
    size_mib: Option<u32>,
    quota_mib: Option<u32>,
    labels: Vec<(String, String)>,
    store: Option<VolumeStore>,
}

impl VolumeBuilder {
    fn new(name: String) -> Self {
        Self {
            name,
            kind: VolumeKind::Dir,
            size_mib: None,
            quota_mib: None,
            labels: Vec::new(),
            store: None,
        }
    }
    /// A directory volume (the default).
    pub fn directory(mut self) -> Self {
        self.kind = VolumeKind::Dir;
        self
    }
    /// A disk volume (needs [`size_mib`](Self::size_mib)).
    pub fn disk(mut self) -> Self {
        self.kind = VolumeKind::Disk;
        self
    }
    /// The kind.
    pub fn kind(mut self, kind: VolumeKind) -> Self {
        self.kind = kind;
        self
    }
    /// Disk capacity in MiB.
    pub fn size_mib(mut self, mib: u32) -> Self {
        self.size_mib = Some(mib);
        self
    }
    /// Directory quota in MiB.
    pub fn quota_mib(mut self, mib: u32) -> Self {
        self.quota_mib = Some(mib);
        self
    }
    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Validates into a [`VolumeConfig`].
    pub fn build(&self) -> Result<VolumeConfig> {
        let name = parse_name(&self.name)?;
        let mut labels = Labels::new();
        for (k, v) in &self.labels {
            labels
                .insert(k.clone(), v.clone())
                .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        }
        VolumeConfig::new(name, self.kind, self.size_mib, self.quota_mib, labels)
            .map_err(|e| Error::InvalidConfig(e.to_string()))
    }

    /// Creates the volume.
    pub async fn create(self) -> Result<Volume> {
        let config = self.build()?;
        let store = match self.store {
            Some(s) => s,
            None => VolumeStore::default_home()?,
        };
        store.create(config).await
    }
}
