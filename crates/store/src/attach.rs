//! Who uses a volume right now.
//!
//! An attachment is a catalog row plus a lock file the holder keeps locked
//! for as long as it uses the volume. A holder that dies releases the lock
//! with its last descriptor, so a dead process cannot keep a volume in use:
//! rows whose lock can be taken are stale and are swept away when found.

use std::fs::File;
use std::path::PathBuf;

use msb_spec::{VolumeKind, VolumeName};
use rustix::fs::FlockOperation;

use crate::catalog::{AttachRow, Catalog, State};
use crate::{Store, StoreError, io_err, open_lock_file, token};

/// How a holder uses a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Reads and writes.
    ReadWrite,
    /// Only reads.
    ReadOnly,
}

/// A registered use of a volume, released on drop or when the process dies.
#[derive(Debug)]
pub struct Attachment {
    id: String,
    db: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Attachment {
    /// The attachment's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Best effort: if this fails the row is stale and swept later.
        if let Ok(mut cat) = Catalog::open(&self.db) {
            let _ = cat.delete_attachment(&self.id);
        }
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

impl Store {
    /// Registers `holder` (e.g. `sandbox:web`) as using `name`. A disk volume
    /// can be attached read-write by one holder at a time, and not read-write
    /// while others read it.
    pub fn attach(
        &self,
        name: &VolumeName,
        holder: &str,
        mode: AttachMode,
    ) -> Result<Attachment, StoreError> {
        let _lock = self.lock()?;
        let row = match self.catalog().get(name)? {
            Some(row) if row.state == State::Ready => row,
            _ => return Err(StoreError::NotFound(name.clone())),
        };
        let live = self.live_attachments(name)?;
        let conflict = row.kind == VolumeKind::Disk
            && live
                .iter()
                .any(|a| a.read_write || mode == AttachMode::ReadWrite);
        if conflict {
            return Err(StoreError::InUse {
                name: name.clone(),
                users: live.into_iter().map(|a| a.holder).collect(),
            });
        }
        let id = token();
        let lock_path = self.layout.attach_dir().join(format!("{id}.lock"));
        let lock = open_lock_file(&lock_path)?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("cannot lock", &lock_path)(e.into()))?;
        let row = AttachRow {
            id: id.clone(),
            holder: holder.to_string(),
            read_write: mode == AttachMode::ReadWrite,
        };
        if let Err(e) = self.catalog().insert_attachment(name, &row) {
            let _ = std::fs::remove_file(&lock_path);
            return Err(e.into());
        }
        Ok(Attachment {
            id,
            db: self.layout.db_file(),
            lock_path,
            _lock: lock,
        })
    }

    /// Live attachments of `name`, sweeping stale ones.
    fn live_attachments(&self, name: &VolumeName) -> Result<Vec<AttachRow>, StoreError> {
        let rows = self.catalog().attachments(name)?;
        let mut live = Vec::with_capacity(rows.len());
        for row in rows {
            let path = self.layout.attach_dir().join(format!("{}.lock", row.id));
            let alive = match File::open(&path) {
                Ok(f) => matches!(
                    rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared),
                    Err(rustix::io::Errno::WOULDBLOCK)
                ),
                Err(_) => false,
            };
            if alive {
                live.push(row);
            } else {
                self.catalog().delete_attachment(&row.id)?;
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(live)
    }

    /// Live attachments' holders, then every sandbox that references the
    /// volume (running or stopped) as `sandbox:NAME`.
    /// Holders that use the volume read-write now.
    pub(crate) fn live_writers(&self, name: &VolumeName) -> Result<Vec<String>, StoreError> {
        Ok(self
            .live_attachments(name)?
            .into_iter()
            .filter(|a| a.read_write)
            .map(|a| a.holder)
            .collect())
    }

    pub(crate) fn live_users(&self, name: &VolumeName) -> Result<Vec<String>, StoreError> {
        let mut users: Vec<String> = self
            .live_attachments(name)?
            .into_iter()
            .map(|a| a.holder)
            .collect();
        for sandbox in self.catalog().sandboxes_using(name)? {
            let holder = format!("sandbox:{sandbox}");
            if !users.contains(&holder) {
                users.push(holder);
            }
        }
        Ok(users)
    }
}
