//! Idmapped mounts: a tree whose files appear to a sandbox as owned by the
//! sandbox's own ids. A root filesystem image extracted by host root is
//! owned by host ids 0..; mapped through the sandbox's [`IdMap`], its root
//! is the sandbox's root, so setuid programs, `apt` and friends work as in
//! the image, while the host ids behind them stay untouched (the sandbox
//! writes to a private layer over it, see the init). A disk image a user
//! mounts is mapped the same way: its ids are the image's, not the host's.
//! Volumes and bind mounts are mapped too: their files are stored under
//! one range shared by every sandbox ([`msb_store::sandbox_ids`]), while
//! each sandbox runs as a range leased to it alone ([`crate::IdLease`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use msb_spec::IdMap;
use rustix::mount::{OpenTreeFlags, open_tree};

/// Why an idmapped tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot create a user namespace to describe the id map")]
    Namespace(#[source] io::Error),
    #[error("cannot bind {path}")]
    Bind {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot map the ids of {path} (the filesystem may not support idmapped mounts)")]
    Map {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The id maps one sandbox's mounts are made with, each described by one
/// user namespace made on first use (making one costs a process).
#[derive(Default)]
pub(crate) struct Idmaps {
    made: Vec<(String, OwnedFd)>,
}

impl Idmaps {
    /// A detached copy of the mount at `path` whose files appear with ids
    /// mapped through `ids`: host id `ids.host_base + k` is written for
    /// the sandbox's id `k`, so ids `0..count` on disk are the sandbox's
    /// `0..count`.
    pub(crate) fn image_tree(&mut self, path: &Path, ids: IdMap) -> Result<OwnedFd, IdmapError> {
        let shown = || path.display().to_string();
        let tree = open_tree(
            rustix::fs::CWD,
            path,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| IdmapError::Bind {
            path: shown(),
            source: e.into(),
        })?;
        self.image(&tree, path, ids)?;
        Ok(tree)
    }

    /// Makes the detached mount `mount` (of `path`, for messages) show ids
    /// mapped through `ids`, as [`Idmaps::image_tree`] does: an image's
    /// own ids.
    pub(crate) fn image(
        &mut self,
        mount: &OwnedFd,
        path: &Path,
        ids: IdMap,
    ) -> Result<(), IdmapError> {
        self.set(mount, path, format!("0 {} {}\n", ids.host_base, ids.count))
    }

    /// Makes the detached mount `mount` of shared host storage (a volume,
    /// a bind) show the range files are stored under, `stored`, as the
    /// sandbox's `ids`; every other host id shows as itself, so the kernel
    /// still lets the sandbox write where a host owner's mode bits allow
    /// it (it refuses writes to files whose owner a mount cannot map). The
    /// ids of the leased ranges, `leased_low..stored.host_base`, show as
    /// no one.
    pub(crate) fn shared(
        &mut self,
        mount: &OwnedFd,
        path: &Path,
        stored: IdMap,
        ids: IdMap,
        leased_low: u32,
    ) -> Result<(), IdmapError> {
        let above = stored.host_base + stored.count;
        let lines = format!(
            "0 0 {leased_low}\n{} {} {}\n{above} {above} {}\n",
            stored.host_base,
            ids.host_base,
            ids.count,
            u32::MAX - above
        );
        self.set(mount, path, lines)
    }

    fn set(&mut self, mount: &OwnedFd, path: &Path, lines: String) -> Result<(), IdmapError> {
        let at = match self.made.iter().position(|(l, _)| *l == lines) {
            Some(i) => i,
            None => {
                let userns = msb_blockdev::id_map_namespace(&lines, &lines)
                    .map_err(IdmapError::Namespace)?;
                self.made.push((lines, userns));
                self.made.len() - 1
            }
        };
        crate::mounts::set_idmap(mount, &self.made[at].1).map_err(|e| IdmapError::Map {
            path: path.display().to_string(),
            source: e.into(),
        })
    }
}
