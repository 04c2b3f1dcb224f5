use std::path::{Path, PathBuf};

use msb_spec::VolumeName;

/// Where everything lives under an msb home.
///
/// ```text
/// <home>/db/msb.db              catalog (SQLite, WAL)
/// <home>/volumes/<name>/        a directory volume's root, or the folder of a disk volume
/// <home>/volumes/<name>/disk.raw  a disk volume's sparse ext4 image
/// <home>/volumes/.staging/      volumes being created (renamed into place when complete)
/// <home>/volumes/.trash/        volumes being removed (renamed out first, then deleted)
/// <home>/usage/<name>           a directory volume's usage counter (see msb-quota)
/// <home>/run/                   locks and per-process runtime state
/// ```
///
/// Staging and trash sit inside `volumes/` so that moving a volume in or out
/// is one atomic rename on one filesystem. Their names start with `.`, which
/// no volume name can.
#[derive(Debug, Clone)]
pub struct Layout {
    home: PathBuf,
}

impl Layout {
    /// A layout rooted at `home` (nothing is created).
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
    /// The folder holding the catalog.
    pub fn db_dir(&self) -> PathBuf {
        self.home.join("db")
    }
    /// The catalog file.
    pub fn db_file(&self) -> PathBuf {
        self.db_dir().join("msb.db")
    }
    /// The folder holding all volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        self.home.join("volumes")
    }
    /// A volume's folder: the root of a directory volume, the folder holding
    /// `disk.raw` for a disk volume.
    pub fn volume_dir(&self, name: &VolumeName) -> PathBuf {
        self.volumes_dir().join(name.as_str())
    }
    /// A disk volume's image.
    pub fn disk_image(&self, name: &VolumeName) -> PathBuf {
        self.volume_dir(name).join(DISK_IMAGE)
    }
    /// Volumes being created.
    pub fn staging_dir(&self) -> PathBuf {
        self.volumes_dir().join(".staging")
    }
    /// Volumes being removed.
    pub fn trash_dir(&self) -> PathBuf {
        self.volumes_dir().join(".trash")
    }
    /// Usage counters.
    pub fn usage_dir(&self) -> PathBuf {
        self.home.join("usage")
    }
    /// A directory volume's usage counter.
    pub fn usage_file(&self, name: &VolumeName) -> PathBuf {
        self.usage_dir().join(name.as_str())
    }
    /// Locks and runtime state.
    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }
    /// Attachment lock files.
    pub fn attach_dir(&self) -> PathBuf {
        self.run_dir().join("attach")
    }
    /// The lock serializing every change to the set of volumes.
    pub fn store_lock(&self) -> PathBuf {
        self.run_dir().join("store.lock")
    }
}

/// File name of a disk volume's image inside its folder.
pub const DISK_IMAGE: &str = "disk.raw";
