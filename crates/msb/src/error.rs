use msb_store::StoreError;

/// Errors of the volume API ([`crate::Volume`], [`crate::VolumeStore`],
/// [`crate::VolumeFiles`]). Each keeps its cause as
/// [`std::error::Error::source`]; the types it wraps are re-exported by
/// this crate, so they can be named and matched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No volume has this name.
    #[error("volume not found: {0}")]
    VolumeNotFound(String),
    /// A volume of this name exists already.
    #[error("volume already exists: {0}")]
    VolumeAlreadyExists(String),
    /// The volume cannot be changed or removed while these hold it:
    /// `sandbox:NAME` (a named sandbox, running or not, or a one-shot run
    /// `sandbox:run-PID-N`), `mount:DIR` (`msb volume mount`),
    /// `host:volume-files:PID` (another process's [`crate::VolumeFiles`]).
    #[error("volume {name} is in use by {}", users.join(", "))]
    VolumeInUse {
        /// The volume.
        name: String,
        /// Who holds it.
        users: Vec<String>,
    },
    /// The name is not a valid volume name.
    #[error("invalid volume name {name:?}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: crate::NameError,
    },
    /// The settings do not go together (a disk without a size, a quota on
    /// a disk, ...) or a label is invalid; the reason as text.
    #[error("invalid volume configuration: {0}")]
    InvalidConfig(String),
    /// The store's files could not be read or written (the store's error
    /// is the source).
    #[error("I/O error")]
    Io(#[source] StoreError),
    /// The store's catalog (SQLite) failed, or belongs to something else
    /// (the source says which).
    #[error("database error")]
    Database(#[source] StoreError),
    /// A confined file operation on a volume failed.
    #[error(transparent)]
    Files(#[from] msb_volfs::FsError),
    /// A disk volume's image could not be attached to a loop device or its
    /// ext4 filesystem mounted (this needs root).
    #[error("cannot open the disk volume's filesystem")]
    Disk(#[source] crate::ViewError),
    /// A blocking task the call ran on panicked or was cancelled.
    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(n) => Error::VolumeNotFound(n.to_string()),
            StoreError::AlreadyExists(n) => Error::VolumeAlreadyExists(n.to_string()),
            StoreError::InUse { name, users } => Error::VolumeInUse {
                name: name.to_string(),
                users,
            },
            e @ StoreError::Catalog(_) => Error::Database(e),
            e => Error::Io(e),
        }
    }
}
