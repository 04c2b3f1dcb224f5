//! A fresh root described as data, for a guest that builds it itself (the
//! microVM's agent): the same directories, generated `/etc` and host
//! programs the namespace init lays out, without host mounts.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::init::{ETC_COPIED, FRESH_DIRS, HOST_PROGRAMS, generated_etc};

/// Largest `/etc` file taken from the host (the loader cache is the big one).
const MAX_ETC_FILE: u64 = 16 << 20;

/// One entry of a fresh root, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RootEntry {
    /// An empty directory.
    Dir {
        /// Path relative to the root.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A file with these contents.
    File {
        /// Path relative to the root.
        path: String,
        /// Contents.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Path relative to the root.
        path: String,
        /// Its target, as on the host.
        target: PathBuf,
    },
}

/// The entries of a fresh root apart from `/usr` (which the guest takes
/// read-only from the host): its empty directories, the merged-`/usr`
/// symlinks the host has (`bin -> usr/bin`, ...), the generated `/etc`
/// and the host `/etc` files a fresh root takes (directories among them
/// copied one level deep: the alternatives are symlinks, `ld.so.conf.d`
/// small files). Top-level host program directories that are not
/// symlinks (a host without merged `/usr`) are not reproduced.
pub fn fresh_root_entries(hostname: &str) -> io::Result<Vec<RootEntry>> {
    let mut out: Vec<RootEntry> = FRESH_DIRS
        .iter()
        .map(|(path, mode)| RootEntry::Dir {
            path: (*path).to_string(),
            mode: *mode,
        })
        .collect();
    for name in HOST_PROGRAMS {
        let host = Path::new("/").join(name);
        if let Ok(target) = std::fs::read_link(&host) {
            out.push(RootEntry::Symlink {
                path: name.to_string(),
                target,
            });
        }
    }
    for (path, data) in generated_etc(hostname) {
        out.push(RootEntry::File {
            path: path.to_string(),
            data,
            mode: 0o644,
        });
    }
    for name in ETC_COPIED {
        let rel = format!("etc/{name}");
        copy_host(&Path::new("/etc").join(name), &rel, true, &mut out)?;
    }
    Ok(out)
}

/// Adds the host's `host` as `rel`: a file, a symlink, or (with
/// `descend`) a directory and its entries one level down.
fn copy_host(host: &Path, rel: &str, descend: bool, out: &mut Vec<RootEntry>) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(host) else {
        return Ok(());
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        out.push(RootEntry::Symlink {
            path: rel.to_string(),
            target: std::fs::read_link(host)?,
        });
    } else if ft.is_file() && meta.len() <= MAX_ETC_FILE {
        out.push(RootEntry::File {
            path: rel.to_string(),
            data: std::fs::read(host)?,
            mode: 0o644,
        });
    } else if ft.is_dir() && descend {
        out.push(RootEntry::Dir {
            path: rel.to_string(),
            mode: 0o755,
        });
        let mut names: Vec<_> = std::fs::read_dir(host)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let Some(name) = name.to_str() else { continue };
            copy_host(&host.join(name), &format!("{rel}/{name}"), false, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_root_has_generated_etc_and_no_host_secrets() {
        let entries = fresh_root_entries("box").unwrap();
        let file = |p: &str| {
            entries.iter().find_map(|e| match e {
                RootEntry::File { path, data, .. } if path == p => Some(data.clone()),
                _ => None,
            })
        };
        assert_eq!(file("etc/hostname").unwrap(), b"box\n");
        assert!(
            String::from_utf8(file("etc/passwd").unwrap())
                .unwrap()
                .starts_with("root:x:0:0:")
        );
        for e in &entries {
            let path = match e {
                RootEntry::Dir { path, .. }
                | RootEntry::File { path, .. }
                | RootEntry::Symlink { path, .. } => path,
            };
            assert!(
                !path.contains("shadow")
                    && !path.starts_with("home/")
                    && !path.starts_with("root/"),
                "{path}"
            );
        }
        // Parents come before their children.
        let var = entries
            .iter()
            .position(|e| matches!(e, RootEntry::Dir { path, .. } if path == "var"));
        let var_tmp = entries
            .iter()
            .position(|e| matches!(e, RootEntry::Dir { path, .. } if path == "var/tmp"));
        assert!(var < var_tmp);
    }
}
