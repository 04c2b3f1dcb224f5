//! Lexical validation of volume-relative paths, done once before any
//! system call.
//!
//! `.` and empty components are dropped and `..` is folded into the
//! component before it, the way Go's `filepath.Clean` does, so the kernel
//! never sees a caller's `..`. A `..` with nothing left to fold into leaves
//! the root and is a path escape, as is an absolute path. Symlink targets
//! are not touched here: they are resolved by the kernel (or the walker)
//! beneath the root.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::FsError;
use crate::error::shown;

/// Longest component Linux filesystems accept.
pub(crate) const NAME_MAX: usize = 255;
/// Longest path the kernel accepts in one call, without the NUL.
pub(crate) const PATH_MAX: usize = 4095;

/// A validated path beneath the root: `.` for the root itself, else
/// components joined by `/`, none of them empty, `.` or `..`.
#[derive(Debug)]
pub(crate) struct Clean {
    path: CString,
    /// Byte offset of the last component; 0 for the root and for a single
    /// component.
    leaf: usize,
    root: bool,
}

impl Clean {
    /// Validates `raw`.
    pub(crate) fn parse(raw: &Path) -> Result<Clean, FsError> {
        let bytes = raw.as_os_str().as_bytes();
        let invalid = |reason| FsError::InvalidPath {
            path: shown(raw),
            reason,
        };
        if bytes.contains(&0) {
            return Err(invalid("contains a NUL byte"));
        }
        if bytes.first() == Some(&b'/') {
            return Err(FsError::PathEscape { path: shown(raw) });
        }
        if bytes.len() > PATH_MAX {
            return Err(invalid("is longer than 4095 bytes"));
        }
        let mut comps: Vec<&[u8]> = Vec::new();
        for c in bytes.split(|&b| b == b'/') {
            if c.len() > NAME_MAX {
                return Err(invalid("has a component longer than 255 bytes"));
            }
            match c {
                b"" | b"." => {}
                b".." => {
                    if comps.pop().is_none() {
                        return Err(FsError::PathEscape { path: shown(raw) });
                    }
                }
                c => comps.push(c),
            }
        }
        Ok(Self::from_components(&comps))
    }

    fn from_components(comps: &[&[u8]]) -> Clean {
        if comps.is_empty() {
            return Clean {
                path: c".".to_owned(),
                leaf: 0,
                root: true,
            };
        }
        let mut joined = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
        let mut leaf = 0;
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                joined.push(b'/');
            }
            leaf = joined.len();
            joined.extend_from_slice(c);
        }
        Clean {
            // Components were checked for NUL bytes above.
            path: CString::new(joined).expect("no NUL in a validated path"),
            leaf,
            root: false,
        }
    }

    /// True when the path names the root itself.
    pub(crate) fn is_root(&self) -> bool {
        self.root
    }

    /// The whole path, for openat2.
    pub(crate) fn as_cstr(&self) -> &CStr {
        &self.path
    }

    /// The last component (meaningless for the root).
    pub(crate) fn leaf(&self) -> &CStr {
        // The tail of a C string is a C string.
        CStr::from_bytes_with_nul(&self.path.as_bytes_with_nul()[self.leaf..])
            .expect("tail of a C string")
    }

    /// The parent directory, `None` when it is the root.
    pub(crate) fn parent(&self) -> Option<Clean> {
        if self.root || self.leaf == 0 {
            return None;
        }
        let comps: Vec<&[u8]> = self.path.as_bytes()[..self.leaf - 1]
            .split(|&b| b == b'/')
            .collect();
        Some(Self::from_components(&comps))
    }

    /// The components, first to last.
    pub(crate) fn components(&self) -> impl Iterator<Item = &[u8]> {
        let bytes = if self.root {
            &[][..]
        } else {
            self.path.as_bytes()
        };
        bytes.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The first `n` components as a path of their own.
    pub(crate) fn prefix(&self, n: usize) -> Clean {
        let comps: Vec<&[u8]> = self.components().take(n).collect();
        Self::from_components(&comps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<String, String> {
        Clean::parse(Path::new(s))
            .map(|c| c.as_cstr().to_string_lossy().into_owned())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn folds_dots_lexically() {
        assert_eq!(clean("a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(clean("a/../b").unwrap(), "b");
        assert_eq!(clean("").unwrap(), ".");
        assert_eq!(clean("./a/..").unwrap(), ".");
    }

    #[test]
    fn rejects_escapes_and_bad_bytes() {
        assert_eq!(clean("/etc").unwrap_err(), "path escapes volume root: /etc");
        assert_eq!(
            clean("a/../../x").unwrap_err(),
            "path escapes volume root: a/../../x"
        );
        assert_eq!(clean("..").unwrap_err(), "path escapes volume root: ..");
        assert!(clean("a\0b").unwrap_err().contains("NUL"));
        assert!(clean(&"x".repeat(256)).unwrap_err().contains("255"));
        assert!(clean(&"x".repeat(255)).is_ok());
        assert!(clean(&"a/".repeat(2100)).unwrap_err().contains("4095"));
    }

    #[test]
    fn splits_parent_and_leaf() {
        let c = Clean::parse(Path::new("a/b/c")).unwrap();
        assert_eq!(c.leaf().to_bytes(), b"c");
        assert_eq!(c.parent().unwrap().as_cstr().to_bytes(), b"a/b");
        assert_eq!(c.prefix(1).as_cstr().to_bytes(), b"a");
        let top = Clean::parse(Path::new("x")).unwrap();
        assert_eq!(top.leaf().to_bytes(), b"x");
        assert!(top.parent().is_none());
        assert_eq!(top.components().count(), 1);
        assert_eq!(
            Clean::parse(Path::new(".")).unwrap().components().count(),
            0
        );
    }
}
