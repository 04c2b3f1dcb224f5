use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted volume name, in bytes. Checked up front so that no
/// operation fails half way with `ENAMETOOLONG`.
pub const NAME_MAX_LEN: usize = 128;

/// Why a string is not a valid volume name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} characters long; the limit is {NAME_MAX_LEN}")]
    TooLong(usize),
    #[error("name must start with a letter or digit")]
    BadStart,
    #[error("name contains {0:?}; only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// A validated volume name: `^[A-Za-z0-9][A-Za-z0-9._-]*$`, 1 to 128 bytes,
/// case-sensitive. A valid name is always a single safe path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

impl VolumeName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let mut chars = name.chars();
        let first = chars.next().ok_or(NameError::Empty)?;
        if name.len() > NAME_MAX_LEN {
            return Err(NameError::TooLong(name.chars().count()));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        if let Some(c) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VolumeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl std::str::FromStr for VolumeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "a",
            "A",
            "0",
            "data",
            "my-vol_1.2",
            "X".repeat(128).as_str(),
        ] {
            assert_eq!(VolumeName::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(VolumeName::new(""), Err(NameError::Empty));
        assert_eq!(
            VolumeName::new("a".repeat(129)),
            Err(NameError::TooLong(129))
        );
        for n in [".hidden", "-x", "_x", ".", ".."] {
            assert_eq!(VolumeName::new(n), Err(NameError::BadStart), "{n}");
        }
        assert_eq!(VolumeName::new("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(VolumeName::new("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(VolumeName::new("aé"), Err(NameError::BadChar('é')));
        assert_eq!(VolumeName::new("a\0"), Err(NameError::BadChar('\0')));
    }

    #[test]
    fn is_case_sensitive() {
        assert_ne!(
            VolumeName::new("Data").unwrap(),
            VolumeName::new("data").unwrap()
        );
    }
}
