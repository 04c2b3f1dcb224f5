use msb_store::StoreError;

/// Errors of the msb API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume not found: {0}")]
    VolumeNotFound(String),
    #[error("volume already exists: {0}")]
    VolumeAlreadyExists(String),
    #[error("volume {name} is in use by {}", users.join(", "))]
    VolumeInUse { name: String, users: Vec<String> },
    #[error("invalid volume name {name:?}")]
    InvalidName {
        name: String,
        #[source]
        source: msb_spec::NameError,
    },
    #[error("invalid volume configuration: {0}")]
    InvalidConfig(String),
    #[error("I/O error")]
    Io(#[source] StoreError),
    #[error("database error")]
    Database(#[source] StoreError),
    #[error(transparent)]
    Files(#[from] msb_volfs::FsError),
    #[error("cannot open the disk volume's filesystem")]
    Disk(#[source] Box<dyn std::error::Error + Send + Sync>),
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
