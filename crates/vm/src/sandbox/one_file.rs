//! A single-file share: one file of a host directory served as the only
//! entry, [`FILE_SHARE_ENTRY`], of an otherwise empty root, for
//! `--mount-file` into a VM. virtio-fs serves directories, so the file's
//! own directory is served, through [`PolicyFs`] and its policy, behind a
//! filter that lets a hostile guest reach nothing else of it: the one name
//! resolves only to the file it named when the sandbox started (same
//! inode), the root lists nothing, and nothing can be created, removed,
//! renamed or linked, so the root and that file are the only nodes the
//! guest can ever hold.

use std::ffi::{OsStr, OsString};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use msb_agent_protocol::FILE_SHARE_ENTRY;
use msb_fsserver::filesystem::{
    Attr, Context, DirEntry, Entry, Errno, FileSystem, FsResult, Opened, ROOT_NODE, SetAttr, StatFs,
};
use msb_fsserver::policy::PolicyFs;

/// [`PolicyFs`] over a file's directory, narrowed to that file.
pub struct OneFile {
    inner: Arc<PolicyFs>,
    /// The file's name in the served directory.
    name: OsString,
    /// Its inode when the share was set up.
    ino: u64,
}

impl OneFile {
    /// Serves the entry `name` of the directory `dir` alone; it must be a
    /// regular file now, and stays that very file.
    pub fn new(inner: Arc<PolicyFs>, dir: BorrowedFd<'_>, name: OsString) -> std::io::Result<Self> {
        let st = rustix::fs::statat(dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::INVAL.into());
        }
        Ok(OneFile {
            inner,
            name,
            ino: st.st_ino,
        })
    }
}

/// Refuses what would change the served directory's entries.
fn no_changes<T>() -> FsResult<T> {
    Err(Errno::PERM)
}

impl FileSystem for OneFile {
    fn lookup(&self, ctx: &Context, parent: u64, name: &OsStr) -> FsResult<Entry> {
        if parent != ROOT_NODE {
            // The file is no directory: the inner answer is an error.
            return self.inner.lookup(ctx, parent, name);
        }
        if name != FILE_SHARE_ENTRY {
            return Err(Errno::NOENT);
        }
        let entry = self.inner.lookup(ctx, ROOT_NODE, &self.name)?;
        if entry.attr.ino != self.ino || entry.attr.mode & libc::S_IFMT != libc::S_IFREG {
            // Replaced on the host since: not the file the mount named.
            self.inner.forget(entry.node, 1);
            return Err(Errno::NOENT);
        }
        Ok(entry)
    }

    fn forget(&self, node: u64, count: u64) {
        self.inner.forget(node, count)
    }

    fn getattr(&self, node: u64) -> FsResult<Attr> {
        self.inner.getattr(node)
    }

    fn setattr(&self, ctx: &Context, node: u64, fh: Option<u64>, set: &SetAttr) -> FsResult<Attr> {
        if node == ROOT_NODE {
            return no_changes();
        }
        self.inner.setattr(ctx, node, fh, set)
    }

    fn readlink(&self, node: u64) -> FsResult<Vec<u8>> {
        self.inner.readlink(node)
    }

    fn mknod(&self, _: &Context, _: u64, _: &OsStr, _: u32, _: u32) -> FsResult<Entry> {
        no_changes()
    }

    fn mkdir(&self, _: &Context, _: u64, _: &OsStr, _: u32) -> FsResult<Entry> {
        no_changes()
    }

    fn unlink(&self, _: &Context, _: u64, _: &OsStr) -> FsResult<()> {
        no_changes()
    }

    fn rmdir(&self, _: &Context, _: u64, _: &OsStr) -> FsResult<()> {
        no_changes()
    }

    fn symlink(&self, _: &Context, _: u64, _: &OsStr, _: &OsStr) -> FsResult<Entry> {
        no_changes()
    }

    fn rename(&self, _: &Context, _: u64, _: &OsStr, _: u64, _: &OsStr, _: u32) -> FsResult<()> {
        no_changes()
    }

    fn link(&self, _: &Context, _: u64, _: u64, _: &OsStr) -> FsResult<Entry> {
        no_changes()
    }

    fn open(&self, ctx: &Context, node: u64, flags: i32) -> FsResult<Opened> {
        self.inner.open(ctx, node, flags)
    }

    fn create(&self, _: &Context, _: u64, _: &OsStr, _: u32, _: i32) -> FsResult<(Entry, Opened)> {
        no_changes()
    }

    fn passthrough_fd(&self, node: u64, fh: u64) -> FsResult<OwnedFd> {
        self.inner.passthrough_fd(node, fh)
    }

    fn read(&self, node: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.inner.read(node, fh, offset, size)
    }

    fn read_with(
        &self,
        node: u64,
        fh: u64,
        read: &mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<usize>,
    ) -> FsResult<usize> {
        self.inner.read_with(node, fh, read)
    }

    fn write(&self, ctx: &Context, node: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.inner.write(ctx, node, fh, offset, data)
    }

    fn write_with(
        &self,
        ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        write: &mut dyn FnMut(BorrowedFd<'_>, usize) -> std::io::Result<usize>,
    ) -> FsResult<u32> {
        self.inner.write_with(ctx, node, fh, offset, size, write)
    }

    fn fsync(&self, node: u64, fh: u64, datasync: bool) -> FsResult<()> {
        self.inner.fsync(node, fh, datasync)
    }

    fn release(&self, node: u64, fh: u64) {
        self.inner.release(node, fh)
    }

    fn opendir(&self, ctx: &Context, node: u64) -> FsResult<u64> {
        self.inner.opendir(ctx, node)
    }

    fn readdir(
        &self,
        ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirEntry<'_>, Option<&Entry>) -> bool,
    ) -> FsResult<()> {
        if node == ROOT_NODE {
            // Listing the directory would name (and, with plus, look up)
            // its other entries; the agent only looks the file up.
            return Ok(());
        }
        self.inner.readdir(ctx, node, fh, offset, plus, add)
    }

    fn releasedir(&self, node: u64, fh: u64) {
        self.inner.releasedir(node, fh)
    }

    fn fsyncdir(&self, node: u64, fh: u64, datasync: bool) -> FsResult<()> {
        self.inner.fsyncdir(node, fh, datasync)
    }

    fn statfs(&self, node: u64) -> FsResult<StatFs> {
        self.inner.statfs(node)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        node: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        if node == ROOT_NODE {
            return no_changes();
        }
        self.inner.setxattr(ctx, node, name, value, flags)
    }

    fn getxattr(&self, node: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if node == ROOT_NODE {
            return Err(Errno::NODATA);
        }
        self.inner.getxattr(node, name)
    }

    fn listxattr(&self, node: u64) -> FsResult<Vec<u8>> {
        if node == ROOT_NODE {
            return Ok(Vec::new());
        }
        self.inner.listxattr(node)
    }

    fn removexattr(&self, ctx: &Context, node: u64, name: &OsStr) -> FsResult<()> {
        if node == ROOT_NODE {
            return no_changes();
        }
        self.inner.removexattr(ctx, node, name)
    }

    fn fallocate(&self, node: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.inner.fallocate(node, fh, offset, len, mode)
    }

    fn lseek(&self, node: u64, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        self.inner.lseek(node, fh, offset, whence)
    }

    fn copy_file_range(
        &self,
        node_in: u64,
        fh_in: u64,
        offset_in: u64,
        node_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        self.inner
            .copy_file_range(node_in, fh_in, offset_in, node_out, fh_out, offset_out, len)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_fsserver::{HostPerms, IdMap, ServeConfig, StatVirt};
    use std::os::fd::AsFd;

    /// What a hostile guest could send, straight at the filter over a real
    /// directory: only the named file is ever reachable.
    #[test]
    fn only_the_one_file_is_reachable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), "mine\n").unwrap();
        std::fs::write(dir.path().join("sibling"), "secret\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/deep"), "secret\n").unwrap();
        let root = msb_fsserver::open_root(dir.path(), false).unwrap();
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let cfg = ServeConfig {
            readonly: false,
            stat_virt: StatVirt::Strict,
            host_perms: HostPerms::Private,
            budget: None,
            owner: (0, 0),
            id_map: IdMap::single(uid),
            gid_map: IdMap::single(gid),
        };
        let inner = msb_virtiofs::policy_fs(&root, cfg).unwrap();
        assert!(OneFile::new(Arc::clone(&inner), root.as_fd(), "sub".into()).is_err());
        let fs = OneFile::new(inner, root.as_fd(), "target".into()).unwrap();
        let ctx = Context { uid: 0, gid: 0 };

        for name in ["target", "sibling", "sub", ".", "..", "file/..", ""] {
            assert!(
                fs.lookup(&ctx, ROOT_NODE, OsStr::new(name)).is_err(),
                "{name}"
            );
        }
        let file = fs
            .lookup(&ctx, ROOT_NODE, OsStr::new(FILE_SHARE_ENTRY))
            .unwrap();
        assert!(fs.lookup(&ctx, file.node, OsStr::new("..")).is_err());

        // Writes reach the host file.
        let opened = fs.open(&ctx, file.node, libc::O_RDWR).unwrap();
        assert_eq!(
            fs.write(&ctx, file.node, opened.fh, 5, b"more\n").unwrap(),
            5
        );
        fs.release(file.node, opened.fh);
        let host = std::fs::read_to_string(dir.path().join("target")).unwrap();
        assert_eq!(host, "mine\nmore\n");

        // Listing the root names nothing, with or without lookups.
        let fh = fs.opendir(&ctx, ROOT_NODE).unwrap();
        for plus in [false, true] {
            let mut seen = Vec::new();
            fs.readdir(&ctx, ROOT_NODE, fh, 0, plus, &mut |e, _| {
                seen.push(e.name.to_owned());
                false
            })
            .unwrap();
            assert!(seen.is_empty(), "{seen:?}");
        }
        fs.releasedir(ROOT_NODE, fh);

        // No node but the root and the file exists, whatever id is guessed.
        for node in (0..4096).filter(|&n| n != ROOT_NODE && n != file.node) {
            assert!(fs.getattr(node).is_err(), "node {node}");
        }

        // Nothing in the directory changes.
        let name = OsStr::new("new");
        let perm = Err(Errno::PERM);
        assert_eq!(fs.mknod(&ctx, ROOT_NODE, name, 0o100644, 0).map(drop), perm);
        assert_eq!(fs.mkdir(&ctx, ROOT_NODE, name, 0o755).map(drop), perm);
        assert_eq!(fs.create(&ctx, ROOT_NODE, name, 0o644, 0).map(drop), perm);
        assert_eq!(fs.symlink(&ctx, ROOT_NODE, name, name).map(drop), perm);
        assert_eq!(fs.link(&ctx, file.node, ROOT_NODE, name).map(drop), perm);
        let file_name = OsStr::new(FILE_SHARE_ENTRY);
        assert_eq!(fs.unlink(&ctx, ROOT_NODE, file_name), perm);
        assert_eq!(
            fs.rename(&ctx, ROOT_NODE, file_name, ROOT_NODE, name, 0),
            perm
        );
        let chmod = SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        };
        assert_eq!(fs.setattr(&ctx, ROOT_NODE, None, &chmod).map(drop), perm);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");

        // A file put in its place on the host is not the file mounted.
        fs.forget(file.node, 1);
        std::fs::rename(dir.path().join("sibling"), dir.path().join("target")).unwrap();
        assert_eq!(
            fs.lookup(&ctx, ROOT_NODE, file_name).map(drop),
            Err(Errno::NOENT)
        );
    }
}
