//! Adapts our transport-neutral [`FileSystem`] to the `FileSystem` trait of
//! `fuse-backend-rs`, whose `Server` decodes FUSE requests from virtio
//! descriptor chains. No policy lives here.
//!
//! The guest kernel sends its own ids (0 is guest root), which are the ids
//! the policy works in, so callers and owners pass through untranslated.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FOPEN_IN_KILL_SUIDGID, WRITE_KILL_PRIV, stat64, statvfs64,
};
use fuse_backend_rs::api::filesystem::{
    self as fbr, Context as FuseContext, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use msb_fsserver::filesystem::{
    Attr, Context, Entry, Errno, FileSystem, FsResult, SetAttr, SetTime, Time,
};

/// How long the guest may cache entries and attributes of a coherent share:
/// the same as the FUSE transport's. Changes made through the mount refresh
/// the guest's copy at once, so this only bounds how late host-side changes
/// show.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// The same for an immutable share: as long as the guest cares to.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest read or write answered: what the init reply allows (256 pages
/// per request). A guest asking for more gets a short read, and a write
/// is never buffered beyond the data the request really carries, so no
/// size field a hostile guest sends makes the server allocate more.
const MAX_IO: u32 = 1 << 20;

/// Our [`FileSystem`] as `fuse-backend-rs` wants it.
pub(crate) struct Adapter {
    fs: Arc<dyn FileSystem>,
    /// Entry and attribute lifetime in the guest.
    ttl: Duration,
    /// Open flags of files: keep the guest's page cache across opens.
    open: OpenOptions,
}

impl Adapter {
    pub(crate) fn new(fs: Arc<dyn FileSystem>, caching: Caching) -> Self {
        let (ttl, open) = match caching {
            Caching::Coherent => (CACHE_TTL, OpenOptions::empty()),
            Caching::Immutable => (FOREVER, OpenOptions::KEEP_CACHE),
        };
        Adapter { fs, ttl, open }
    }

    /// Kills setuid/setgid of `inode` through the policy's own mode change
    /// (so the virtual mode of a stat-virtualization record is what
    /// changes, and a mirrored host mode with it).
    fn kill_privs(&self, c: &FuseContext, inode: u64) -> io::Result<()> {
        let a = res(self.fs.getattr(inode))?;
        if a.mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(());
        }
        if let Some(mode) = killed(a.mode) {
            let set = SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            };
            res(self.fs.setattr(&ctx(c), inode, None, &set))?;
        }
        Ok(())
    }

    fn entry(&self, e: &Entry) -> fbr::Entry {
        fbr::Entry {
            attr_timeout: self.ttl,
            entry_timeout: self.ttl,
            ..entry(e)
        }
    }
}

/// What the guest may keep of a share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Caching {
    /// Entries and attributes for a second and no file pages across opens,
    /// so changes made on the host show within a second (as on FUSE).
    #[default]
    Coherent,
    /// The share does not change while the guest runs (a sandbox's
    /// read-only root): the guest keeps entries, attributes and file pages
    /// as long as it likes, so programs start from its page cache.
    Immutable,
}

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn res<T>(r: FsResult<T>) -> io::Result<T> {
    r.map_err(err)
}

fn os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

fn ctx(c: &FuseContext) -> Context {
    Context {
        uid: c.uid,
        gid: c.gid,
    }
}

/// The wire attributes of `node`; the node id doubles as inode number, as
/// on the FUSE transport.
fn stat(node: u64, a: &Attr) -> stat64 {
    // SAFETY: stat64 is plain old data, for which all zeroes is valid.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = node;
    st.st_size = i64::try_from(a.size).unwrap_or(i64::MAX);
    st.st_blocks = i64::try_from(a.blocks).unwrap_or(i64::MAX);
    st.st_atime = a.atime.sec;
    st.st_atime_nsec = a.atime.nsec.into();
    st.st_mtime = a.mtime.sec;
    st.st_mtime_nsec = a.mtime.nsec.into();
    st.st_ctime = a.ctime.sec;
    st.st_ctime_nsec = a.ctime.nsec.into();
    st.st_mode = a.mode;
    st.st_nlink = a.nlink.into();
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_rdev = a.rdev.into();
    st.st_blksize = a.blksize.into();
    st
}

fn entry(e: &Entry) -> fbr::Entry {
    fbr::Entry {
        inode: e.node,
        generation: 0,
        attr: stat(e.node, &e.attr),
        attr_flags: 0,
        attr_timeout: CACHE_TTL,
        entry_timeout: CACHE_TTL,
    }
}

/// Runs `f` on the host file behind `fd` without duplicating the
/// descriptor: a dup and a close for every read and write otherwise.
fn with_file<T>(fd: BorrowedFd<'_>, f: impl FnOnce(&mut File) -> T) -> T {
    // SAFETY: the File only borrows `fd`, which stays open for the whole
    // call; ManuallyDrop keeps it from closing the descriptor, even if `f`
    // panics.
    let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    f(&mut file)
}

/// The permission bits left once setuid/setgid are killed (on a write,
/// truncation or chown the guest asked the server to handle): setuid goes,
/// setgid only with group execute (without it, it marks mandatory locking,
/// not privilege), as the guest kernel clears them itself without
/// `HANDLE_KILLPRIV_V2`. `None` when nothing changes.
fn killed(mode: u32) -> Option<u32> {
    let mut m = mode & 0o7777;
    m &= !libc::S_ISUID;
    if m & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        m &= !libc::S_ISGID;
    }
    (m != mode & 0o7777).then_some(m)
}

fn set_time(now: bool, sec: i64, nsec: i64) -> SetTime {
    if now {
        SetTime::Now
    } else {
        SetTime::At(Time {
            sec,
            nsec: u32::try_from(nsec).unwrap_or(0),
        })
    }
}

impl fbr::FileSystem for Adapter {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        // The server keeps what the guest offers of these. No writeback
        // cache (writes must reach the quota check when they happen), no
        // ATOMIC_O_TRUNC (truncation arrives as setattr, metered there).
        // HANDLE_KILLPRIV_V2: the server clears setuid/setgid on write,
        // truncation and chown when the request says so. Without it the
        // guest asks for `security.capability` before every write (one
        // more round trip each); with it the guest marks a file checked
        // until its attributes change. READDIRPLUS_AUTO as virtiofsd: with
        // READDIRPLUS for every batch, `ls -lR` of 10,000 entries sent 400
        // requests instead of 10,000 LOOKUPs but was no faster (the TCG
        // guest's own work dominates) and lost to virtiofsd more often.
        Ok(FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::HANDLE_KILLPRIV_V2)
    }

    fn destroy(&self) {
        self.fs.destroy();
    }

    fn lookup(&self, c: &FuseContext, parent: u64, name: &CStr) -> io::Result<fbr::Entry> {
        match self.fs.lookup(&ctx(c), parent, os(name)) {
            Ok(e) => Ok(self.entry(&e)),
            // Node id 0 is a negative entry the guest may cache like others.
            Err(Errno::NOENT) => Ok(fbr::Entry {
                entry_timeout: self.ttl,
                ..fbr::Entry::default()
            }),
            Err(e) => Err(err(e)),
        }
    }

    fn forget(&self, _c: &FuseContext, inode: u64, count: u64) {
        self.fs.forget(inode, count);
    }

    fn getattr(
        &self,
        _c: &FuseContext,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let a = res(self.fs.getattr(inode))?;
        Ok((stat(inode, &a), self.ttl))
    }

    fn setattr(
        &self,
        c: &FuseContext,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let has = |f| valid.contains(f);
        let mut mode = has(SetattrValid::MODE).then_some(attr.st_mode);
        if has(SetattrValid::KILL_SUIDGID) {
            // Sent with a chown, or a truncation by a caller without
            // CAP_FSETID: the guest left the mode to the server.
            let base = match mode {
                Some(m) => m,
                None => res(self.fs.getattr(inode))?.mode,
            };
            if base & libc::S_IFMT != libc::S_IFDIR
                && let Some(m) = killed(base)
            {
                mode = Some(m);
            }
        }
        let set = SetAttr {
            mode,
            uid: has(SetattrValid::UID).then_some(attr.st_uid),
            gid: has(SetattrValid::GID).then_some(attr.st_gid),
            size: has(SetattrValid::SIZE).then(|| u64::try_from(attr.st_size).unwrap_or(0)),
            atime: has(SetattrValid::ATIME).then(|| {
                set_time(
                    has(SetattrValid::ATIME_NOW),
                    attr.st_atime,
                    attr.st_atime_nsec,
                )
            }),
            mtime: has(SetattrValid::MTIME).then(|| {
                set_time(
                    has(SetattrValid::MTIME_NOW),
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                )
            }),
        };
        let a = res(self.fs.setattr(&ctx(c), inode, handle, &set))?;
        Ok((stat(inode, &a), self.ttl))
    }

    fn readlink(&self, _c: &FuseContext, inode: u64) -> io::Result<Vec<u8>> {
        res(self.fs.readlink(inode))
    }

    fn symlink(
        &self,
        c: &FuseContext,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<fbr::Entry> {
        res(self.fs.symlink(&ctx(c), parent, os(name), os(linkname))).map(|e| self.entry(&e))
    }

    fn mknod(
        &self,
        c: &FuseContext,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        _umask: u32,
    ) -> io::Result<fbr::Entry> {
        res(self.fs.mknod(&ctx(c), parent, os(name), mode, rdev)).map(|e| self.entry(&e))
    }

    fn mkdir(
        &self,
        c: &FuseContext,
        parent: u64,
        name: &CStr,
        mode: u32,
        _umask: u32,
    ) -> io::Result<fbr::Entry> {
        res(self.fs.mkdir(&ctx(c), parent, os(name), mode)).map(|e| self.entry(&e))
    }

    fn unlink(&self, c: &FuseContext, parent: u64, name: &CStr) -> io::Result<()> {
        res(self.fs.unlink(&ctx(c), parent, os(name)))
    }

    fn rmdir(&self, c: &FuseContext, parent: u64, name: &CStr) -> io::Result<()> {
        res(self.fs.rmdir(&ctx(c), parent, os(name)))
    }

    fn rename(
        &self,
        c: &FuseContext,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        res(self
            .fs
            .rename(&ctx(c), olddir, os(oldname), newdir, os(newname), flags))
    }

    fn link(
        &self,
        c: &FuseContext,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<fbr::Entry> {
        res(self.fs.link(&ctx(c), inode, newparent, os(newname))).map(|e| self.entry(&e))
    }

    fn open(
        &self,
        c: &FuseContext,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let o = res(self.fs.open(&ctx(c), inode, flags as i32))?;
        if fuse_flags & FOPEN_IN_KILL_SUIDGID != 0
            && let Err(e) = self.kill_privs(c, inode)
        {
            self.fs.release(inode, o.fh);
            return Err(e);
        }
        Ok((Some(o.fh), self.open, None))
    }

    fn create(
        &self,
        c: &FuseContext,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(fbr::Entry, Option<u64>, OpenOptions, Option<u32>)> {
        // `args.fuse_flags` may ask to kill setuid/setgid (O_TRUNC), but
        // the file is new: it keeps the mode it was created with, as when
        // the guest kernel handled this itself.
        let (e, o) = res(self
            .fs
            .create(&ctx(c), parent, os(name), args.mode, args.flags as i32))?;
        Ok((self.entry(&e), Some(o.fh), OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _c: &FuseContext,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let size = size.min(MAX_IO);
        // Straight from the host file into guest memory.
        let direct = self.fs.read_with(inode, handle, &mut |fd| {
            with_file(fd, |file| w.write_from(file, size as usize, offset))
        });
        match direct {
            Err(Errno::NOSYS) => {}
            r => return res(r),
        }
        let data = res(self.fs.read(inode, handle, offset, size))?;
        w.write_all(&data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        c: &FuseContext,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        if fuse_flags & WRITE_KILL_PRIV != 0 {
            // A writer without CAP_FSETID: as the kernel's
            // file_remove_privs, before the data lands.
            self.kill_privs(c, inode)?;
        }
        // Straight from guest memory into the host file, as much as the
        // policy allows; the request carries the data (a guest claiming
        // more than it sent gets a short write).
        let direct = self
            .fs
            .write_with(&ctx(c), inode, handle, offset, size, &mut |fd, len| {
                with_file(fd, |file| r.read_to(file, len, offset))
            });
        match direct {
            Err(Errno::NOSYS) => {}
            r => return res(r).map(|n| n as usize),
        }
        let mut data = Vec::with_capacity(size.min(MAX_IO) as usize);
        r.take(size.into()).read_to_end(&mut data)?;
        if data.len() != size as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let n = res(self.fs.write(&ctx(c), inode, handle, offset, &data))?;
        Ok(n as usize)
    }

    fn fsync(&self, _c: &FuseContext, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        res(self.fs.fsync(inode, handle, datasync))
    }

    fn fallocate(
        &self,
        _c: &FuseContext,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        res(self
            .fs
            .fallocate(inode, handle, offset, length, mode as i32))
    }

    fn release(
        &self,
        _c: &FuseContext,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.fs.release(inode, handle);
        Ok(())
    }

    fn statfs(&self, _c: &FuseContext, inode: u64) -> io::Result<statvfs64> {
        let s = res(self.fs.statfs(inode))?;
        // SAFETY: statvfs64 is plain old data, for which all zeroes is valid.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = s.bsize.into();
        st.f_frsize = s.frsize.into();
        st.f_blocks = s.blocks;
        st.f_bfree = s.bfree;
        st.f_bavail = s.bavail;
        st.f_files = s.files;
        st.f_ffree = s.ffree;
        st.f_namemax = s.namelen.into();
        Ok(st)
    }

    fn setxattr(
        &self,
        c: &FuseContext,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        res(self
            .fs
            .setxattr(&ctx(c), inode, os(name), value, flags as i32))
    }

    fn getxattr(
        &self,
        _c: &FuseContext,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let v = res(self.fs.getxattr(inode, os(name)))?;
        xattr_reply(v, size).map(|r| match r {
            XattrReply::Count(n) => GetxattrReply::Count(n),
            XattrReply::Data(v) => GetxattrReply::Value(v),
        })
    }

    fn listxattr(&self, _c: &FuseContext, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let v = res(self.fs.listxattr(inode))?;
        xattr_reply(v, size).map(|r| match r {
            XattrReply::Count(n) => ListxattrReply::Count(n),
            XattrReply::Data(v) => ListxattrReply::Names(v),
        })
    }

    fn removexattr(&self, c: &FuseContext, inode: u64, name: &CStr) -> io::Result<()> {
        res(self.fs.removexattr(&ctx(c), inode, os(name)))
    }

    fn opendir(
        &self,
        c: &FuseContext,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let fh = res(self.fs.opendir(&ctx(c), inode))?;
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        c: &FuseContext,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(fbr::DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        res(self
            .fs
            .readdir(&ctx(c), inode, handle, offset, false, &mut |de, _| {
                let d = fbr::DirEntry {
                    ino: de.ino,
                    offset: de.offset,
                    type_: de.kind >> 12,
                    name: de.name.as_bytes(),
                };
                // 0 bytes taken (or an error) means the reply is full.
                !matches!(add_entry(d), Ok(n) if n > 0)
            }))
    }

    fn readdirplus(
        &self,
        c: &FuseContext,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(fbr::DirEntry, fbr::Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        res(self
            .fs
            .readdir(&ctx(c), inode, handle, offset, true, &mut |de, e| {
                let (ino, e) = match e {
                    Some(e) => (e.node, self.entry(e)),
                    // `.` and `..` carry no entry: node id 0 tells the
                    // guest to skip its attributes.
                    None => (de.ino, fbr::Entry::default()),
                };
                let d = fbr::DirEntry {
                    ino,
                    offset: de.offset,
                    type_: de.kind >> 12,
                    name: de.name.as_bytes(),
                };
                !matches!(add_entry(d, e), Ok(n) if n > 0)
            }))
    }

    fn fsyncdir(
        &self,
        _c: &FuseContext,
        inode: u64,
        datasync: bool,
        handle: u64,
    ) -> io::Result<()> {
        res(self.fs.fsyncdir(inode, handle, datasync))
    }

    fn releasedir(&self, _c: &FuseContext, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.fs.releasedir(inode, handle);
        Ok(())
    }

    fn access(&self, _c: &FuseContext, _inode: u64, _mask: u32) -> io::Result<()> {
        // The guest kernel checks permissions itself (virtiofs always
        // mounts with default_permissions), as on the FUSE transport.
        Ok(())
    }

    fn lseek(
        &self,
        _c: &FuseContext,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let at = res(self.fs.lseek(inode, handle, offset as i64, whence as i32))?;
        Ok(at as u64)
    }
}

/// A sized xattr reply: the size alone when asked with 0, ERANGE when the
/// value does not fit the caller's buffer.
enum XattrReply {
    Count(u32),
    Data(Vec<u8>),
}

fn xattr_reply(v: Vec<u8>, size: u32) -> io::Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Count(
            u32::try_from(v.len()).unwrap_or(u32::MAX),
        ))
    } else if v.len() > size as usize {
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    } else {
        Ok(XattrReply::Data(v))
    }
}
