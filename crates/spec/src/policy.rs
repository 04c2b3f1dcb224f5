use std::fmt;

use serde::{Deserialize, Serialize};

/// How the filesystem server presents ownership, mode and file type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatVirt {
    /// Guest metadata lives in a record on each host file; the root must
    /// support xattrs; guest symlinks and device nodes are plain host files.
    #[default]
    Strict,
    /// As strict, without the xattr probe, with real host symlinks.
    Relaxed,
    /// Raw host metadata.
    Off,
}

/// Whether guest permission changes reach the host files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostPerms {
    /// Guest chmod lives only in the record; host files stay 0600/0700.
    #[default]
    Private,
    /// rwx bits are also applied to host files, with a floor of 0600/0700.
    Mirror,
}

/// An unknown policy word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected {expected}")]
pub struct PolicyParseError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl std::str::FromStr for StatVirt {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, PolicyParseError> {
        match s {
            "strict" => Ok(Self::Strict),
            "relaxed" => Ok(Self::Relaxed),
            "off" => Ok(Self::Off),
            _ => Err(PolicyParseError {
                what: "stat virtualization",
                value: s.into(),
                expected: "strict, relaxed or off",
            }),
        }
    }
}

impl std::str::FromStr for HostPerms {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, PolicyParseError> {
        match s {
            "private" => Ok(Self::Private),
            "mirror" => Ok(Self::Mirror),
            _ => Err(PolicyParseError {
                what: "host permissions",
                value: s.into(),
                expected: "private or mirror",
            }),
        }
    }
}

impl fmt::Display for StatVirt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Relaxed => "relaxed",
            Self::Off => "off",
        })
    }
}

impl fmt::Display for HostPerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Private => "private",
            Self::Mirror => "mirror",
        })
    }
}
