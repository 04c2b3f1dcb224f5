//! Named sandbox records: a sandbox's persisted config and the volumes it
//! references. A referenced volume is in use for as long as the record
//! exists, whether the sandbox runs or not.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msb_spec::VolumeName;

use crate::catalog::{SandboxRow, State};
use crate::{Store, StoreError, now_us};

/// A sandbox as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The sandbox's name.
    pub name: String,
    /// Its config, as JSON with absolute host paths (the caller's format).
    pub config: String,
    /// Volumes the sandbox references, sorted.
    pub volumes: Vec<VolumeName>,
    /// When the sandbox was created.
    pub created_at: SystemTime,
}

impl From<SandboxRow> for SandboxRecord {
    fn from(row: SandboxRow) -> Self {
        SandboxRecord {
            name: row.name,
            config: row.config,
            volumes: row.volumes,
            created_at: UNIX_EPOCH + Duration::from_micros(row.created_us.max(0) as u64),
        }
    }
}

impl Store {
    /// Records a sandbox referencing `volumes`, each of which must exist.
    /// The name is validated by the caller.
    pub fn create_sandbox(
        &self,
        name: &str,
        config: &str,
        volumes: &[VolumeName],
    ) -> Result<SandboxRecord, StoreError> {
        // Under the store lock, so no volume can be removed between the
        // check and the insert.
        let _lock = self.lock()?;
        for v in volumes {
            match self.catalog().get(v)? {
                Some(row) if row.state == State::Ready => {}
                _ => return Err(StoreError::NotFound(v.clone())),
            }
        }
        let mut volumes = volumes.to_vec();
        volumes.sort();
        volumes.dedup();
        let row = SandboxRow {
            name: name.to_string(),
            config: config.to_string(),
            created_us: now_us(),
            volumes,
        };
        if !self.catalog().insert_sandbox(&row)? {
            return Err(StoreError::SandboxExists(name.to_string()));
        }
        Ok(row.into())
    }

    /// Looks a sandbox up.
    pub fn sandbox(&self, name: &str) -> Result<SandboxRecord, StoreError> {
        match self.catalog().get_sandbox(name)? {
            Some(row) => Ok(row.into()),
            None => Err(StoreError::SandboxNotFound(name.to_string())),
        }
    }

    /// Every sandbox, newest first.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        Ok(self
            .catalog()
            .list_sandboxes()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Deletes a sandbox's record, releasing the volumes it referenced. The
    /// caller makes sure the sandbox is not running.
    pub fn remove_sandbox(&self, name: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        if self.catalog().delete_sandbox(name)? {
            Ok(())
        } else {
            Err(StoreError::SandboxNotFound(name.to_string()))
        }
    }
}
