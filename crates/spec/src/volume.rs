use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Labels, VolumeName};

/// Smallest disk volume, in MiB: below this ext4 cannot hold a journal.
pub const DISK_MIN_MIB: u32 = 16;
/// Largest disk volume, in MiB (16 TiB − 1 MiB): the largest file an ext4
/// host with 4 KiB blocks can hold.
pub const DISK_MAX_MIB: u32 = 16 * 1024 * 1024 - 1;

/// What backs a named volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A host directory: `<home>/volumes/<name>/` is the volume root.
    #[default]
    Dir,
    /// A sparse raw ext4 image at `<home>/volumes/<name>/disk.raw`.
    Disk,
}

impl VolumeKind {
    /// `"dir"` or `"disk"`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Dir => "dir",
            VolumeKind::Disk => "disk",
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown volume kind string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown volume kind {0:?}; expected \"dir\" or \"disk\"")]
pub struct VolumeKindError(pub String);

impl std::str::FromStr for VolumeKind {
    type Err = VolumeKindError;
    fn from_str(s: &str) -> Result<Self, VolumeKindError> {
        match s {
            "dir" => Ok(VolumeKind::Dir),
            "disk" => Ok(VolumeKind::Disk),
            other => Err(VolumeKindError(other.to_string())),
        }
    }
}

/// Why a volume configuration is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeConfigError {
    #[error("a disk volume needs a size (capacity in MiB)")]
    DiskWithoutSize,
    #[error("a disk volume cannot have a quota; its size is already a hard limit")]
    DiskWithQuota,
    #[error("a directory volume has no size; use a quota to limit it")]
    DirWithSize,
    #[error("quota must be at least 1 MiB")]
    ZeroQuota,
    #[error(
        "disk size {0} MiB is out of range; a disk volume holds {DISK_MIN_MIB} MiB to {DISK_MAX_MIB} MiB"
    )]
    DiskSizeOutOfRange(u32),
}

/// A validated request to create a named volume.
///
/// Quota semantics: `None` is unlimited; a quota is a positive number of MiB
/// (zero is rejected rather than meaning "unlimited", so a typo cannot
/// silently remove a limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    name: VolumeName,
    kind: VolumeKind,
    size_mib: Option<u32>,
    quota_mib: Option<u32>,
    labels: Labels,
}

impl VolumeConfig {
    /// Checks that kind, size and quota fit together.
    pub fn new(
        name: VolumeName,
        kind: VolumeKind,
        size_mib: Option<u32>,
        quota_mib: Option<u32>,
        labels: Labels,
    ) -> Result<Self, VolumeConfigError> {
        if quota_mib == Some(0) {
            return Err(VolumeConfigError::ZeroQuota);
        }
        match kind {
            VolumeKind::Dir if size_mib.is_some() => return Err(VolumeConfigError::DirWithSize),
            VolumeKind::Disk if quota_mib.is_some() => {
                return Err(VolumeConfigError::DiskWithQuota);
            }
            VolumeKind::Disk => match size_mib {
                None => return Err(VolumeConfigError::DiskWithoutSize),
                Some(s) if !(DISK_MIN_MIB..=DISK_MAX_MIB).contains(&s) => {
                    return Err(VolumeConfigError::DiskSizeOutOfRange(s));
                }
                Some(_) => {}
            },
            VolumeKind::Dir => {}
        }
        Ok(Self {
            name,
            kind,
            size_mib,
            quota_mib,
            labels,
        })
    }

    /// The volume name.
    pub fn name(&self) -> &VolumeName {
        &self.name
    }
    /// The volume kind.
    pub fn kind(&self) -> VolumeKind {
        self.kind
    }
    /// Disk capacity in MiB (disk volumes only).
    pub fn size_mib(&self) -> Option<u32> {
        self.size_mib
    }
    /// Quota in MiB (directory volumes only); `None` is unlimited.
    pub fn quota_mib(&self) -> Option<u32> {
        self.quota_mib
    }
    /// Metadata labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        kind: VolumeKind,
        size: Option<u32>,
        quota: Option<u32>,
    ) -> Result<VolumeConfig, VolumeConfigError> {
        VolumeConfig::new(
            VolumeName::new("v").unwrap(),
            kind,
            size,
            quota,
            Labels::new(),
        )
    }

    #[test]
    fn kind_rules() {
        assert!(cfg(VolumeKind::Dir, None, None).is_ok());
        assert!(cfg(VolumeKind::Dir, None, Some(10)).is_ok());
        assert_eq!(
            cfg(VolumeKind::Dir, None, Some(0)),
            Err(VolumeConfigError::ZeroQuota)
        );
        assert_eq!(
            cfg(VolumeKind::Dir, Some(10), None),
            Err(VolumeConfigError::DirWithSize)
        );
        assert_eq!(
            cfg(VolumeKind::Disk, None, None),
            Err(VolumeConfigError::DiskWithoutSize)
        );
        assert_eq!(
            cfg(VolumeKind::Disk, Some(64), Some(1)),
            Err(VolumeConfigError::DiskWithQuota)
        );
        assert!(cfg(VolumeKind::Disk, Some(DISK_MIN_MIB), None).is_ok());
        assert!(cfg(VolumeKind::Disk, Some(DISK_MAX_MIB), None).is_ok());
        assert_eq!(
            cfg(VolumeKind::Disk, Some(15), None),
            Err(VolumeConfigError::DiskSizeOutOfRange(15))
        );
        assert_eq!(
            cfg(VolumeKind::Disk, Some(DISK_MAX_MIB + 1), None),
            Err(VolumeConfigError::DiskSizeOutOfRange(DISK_MAX_MIB + 1))
        );
    }

    #[test]
    fn out_of_range_message_states_the_rule() {
        let msg = cfg(VolumeKind::Disk, Some(1), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("16 MiB to 16777215 MiB"), "{msg}");
    }

    #[test]
    fn kind_parses() {
        assert_eq!("dir".parse(), Ok(VolumeKind::Dir));
        assert_eq!("disk".parse(), Ok(VolumeKind::Disk));
        assert!("Disk".parse::<VolumeKind>().is_err());
    }
}
