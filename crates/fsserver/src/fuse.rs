//! FUSE transport: decodes `/dev/fuse` requests (via `fuser`) into
//! [`FileSystem`] calls. No policy lives here.
//!
//! A connection mounted in the host's user namespace carries host ids in
//! requests and attributes; the file system speaks guest ids. (One mounted
//! in the sandbox's namespace carries guest ids: the kernel translates, and
//! the transport's map is the identity.) Callers are
//! translated on the way in (a host id outside the map is the overflow id,
//! as a kernel shows it), owners on the way out (a guest id without a host
//! id, [`filesystem::NO_ID`] above all, is the host's overflow id, which no
//! sandbox maps).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use msb_spec::{IdMap, OVERFLOW_ID};

use crate::filesystem::{self, Attr, Context, FileSystem, SetAttr, SetTime, Time};

/// How long the kernel may cache entries and attributes. All changes made
/// through this mount refresh the kernel's copy, so this only bounds how long
/// host-side changes stay invisible.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(1);
/// Largest write request (the kernel's default page limit allows 1 MiB).
const MAX_WRITE: u32 = 1 << 20;

/// Attributes sent where the kernel ignores them (negative entries, `.`
/// and `..` in directory listings).
const NO_ATTR: Attr = Attr {
    ino: 0,
    size: 0,
    blocks: 0,
    atime: Time { sec: 0, nsec: 0 },
    mtime: Time { sec: 0, nsec: 0 },
    ctime: Time { sec: 0, nsec: 0 },
    mode: libc::S_IFDIR,
    nlink: 0,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: 0,
};

/// Whether the kernel is still being served; cleared when the owner stops
/// the server while the mount may live on elsewhere.
pub(crate) type Running = Arc<AtomicBool>;

/// Adapts a [`FileSystem`] to `fuser`.
pub(crate) struct FuseTransport<F: FileSystem> {
    fs: Arc<F>,
    running: Running,
    /// Guest ids of the file system against the host ids on the wire.
    ids: IdMap,
    passthrough: AtomicBool,
    /// Kernel backing files of passthrough opens, per node, with the number
    /// of open handles using them (the kernel wants one per inode).
    backing: Mutex<HashMap<u64, (BackingId, u32)>>,
    /// Handles opened in passthrough mode, and their nodes.
    passthrough_fhs: Mutex<HashMap<u64, u64>>,
}

impl<F: FileSystem> FuseTransport<F> {
    pub(crate) fn new(fs: Arc<F>, running: Running, ids: IdMap) -> Self {
        FuseTransport {
            fs,
            running,
            ids,
            passthrough: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            passthrough_fhs: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> Result<(), Errno> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Errno::from_i32(libc::ENOTCONN))
        }
    }

    /// The caller of a request, in guest ids.
    fn ctx(&self, req: &Request) -> Context {
        Context {
            uid: self.ids.to_guest_or_overflow(req.uid()),
            gid: self.ids.to_guest_or_overflow(req.gid()),
        }
    }

    /// The wire attributes of `node`, owned by host ids; the node id
    /// doubles as inode number.
    fn attr(&self, node: u64, a: &Attr) -> FileAttr {
        let host = |id| self.ids.to_host(id).unwrap_or(OVERFLOW_ID);
        FileAttr {
            uid: host(a.uid),
            gid: host(a.gid),
            ..file_attr(node, a)
        }
    }

    /// A requested owner or group as a guest id; EINVAL for a host id
    /// outside the map, as chown(2) answers for an unmappable id.
    fn guest_id(&self, host: Option<u32>) -> Result<Option<u32>, Errno> {
        host.map(|id| self.ids.to_guest(id).ok_or(Errno::EINVAL))
            .transpose()
    }

    /// Replies to an open: passthrough when the policy and kernel allow it.
    fn reply_open(&self, node: u64, opened: filesystem::Opened, reply: ReplyOpenLike<'_>) {
        let fh = FileHandle(opened.fh);
        if !(opened.passthrough && self.passthrough.load(Ordering::Relaxed)) {
            reply.plain(fh);
            return;
        }
        let Ok(mut backing) = self.backing.lock() else {
            reply.plain(fh);
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = backing.entry(node) {
            let id = self
                .fs
                .passthrough_fd(node, opened.fh)
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))
                .and_then(|fd| reply.open_backing(fd));
            match id {
                Ok(id) => {
                    slot.insert((id, 0));
                }
                Err(_) => {
                    // Stacking or permission limits: serve I/O ourselves.
                    reply.plain(fh);
                    return;
                }
            }
        }
        if let Some((id, users)) = backing.get_mut(&node) {
            *users += 1;
            if let Ok(mut fhs) = self.passthrough_fhs.lock() {
                fhs.insert(opened.fh, node);
            }
            reply.passthrough(fh, id);
        }
    }

    fn drop_backing(&self, fh: u64) {
        let node = self
            .passthrough_fhs
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&fh));
        if let (Some(node), Ok(mut backing)) = (node, self.backing.lock())
            && let Some((_, users)) = backing.get_mut(&node)
        {
            *users -= 1;
            if *users == 0 {
                backing.remove(&node);
            }
        }
    }
}

/// The two open replies share the passthrough logic.
enum ReplyOpenLike<'a> {
    Open(ReplyOpen),
    Create(ReplyCreate, &'a FileAttr),
}

impl ReplyOpenLike<'_> {
    fn plain(self, fh: FileHandle) {
        match self {
            ReplyOpenLike::Open(r) => r.opened(fh, FopenFlags::empty()),
            ReplyOpenLike::Create(r, attr) => {
                r.created(&CACHE_TTL, attr, Generation(0), fh, FopenFlags::empty())
            }
        }
    }

    fn open_backing(&self, fd: std::os::fd::OwnedFd) -> std::io::Result<BackingId> {
        match self {
            ReplyOpenLike::Open(r) => r.open_backing(fd),
            ReplyOpenLike::Create(r, _) => r.open_backing(fd),
        }
    }

    fn passthrough(self, fh: FileHandle, id: &BackingId) {
        match self {
            ReplyOpenLike::Open(r) => r.opened_passthrough(fh, FopenFlags::empty(), id),
            ReplyOpenLike::Create(r, attr) => {
                r.created_passthrough(&CACHE_TTL, attr, Generation(0), fh, FopenFlags::empty(), id)
            }
        }
    }
}

fn errno(e: filesystem::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec.unsigned_abs(), t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

fn time_of(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Time { sec, nsec }
        }
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The wire attributes of `node` with ids as they are (see
/// [`FuseTransport::attr`]).
fn file_attr(node: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(node),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: kind_of(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(time_of(t)),
    })
}

macro_rules! live_or {
    ($self:ident, $reply:ident) => {
        if let Err(e) = $self.live() {
            $reply.error(e);
            return;
        }
    };
}

impl<F: FileSystem> fuser::Filesystem for FuseTransport<F> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(64);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Ok(mut b) = self.backing.lock() {
            b.clear();
        }
        self.fs.destroy();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        live_or!(self, reply);
        match self.fs.lookup(&self.ctx(req), parent.0, name) {
            Ok(e) => reply.entry(&CACHE_TTL, &self.attr(e.node, &e.attr), Generation(0)),
            // Node id 0 is a negative entry the kernel may cache like others.
            Err(e) if e == filesystem::Errno::NOENT => {
                reply.entry(&CACHE_TTL, &file_attr(0, &NO_ATTR), Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        live_or!(self, reply);
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&CACHE_TTL, &self.attr(ino.0, &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        live_or!(self, reply);
        let (uid, gid) = match (self.guest_id(uid), self.guest_id(gid)) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            (Err(e), _) | (_, Err(e)) => {
                reply.error(e);
                return;
            }
        };
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self
            .fs
            .setattr(&self.ctx(req), ino.0, fh.map(|f| f.0), &set)
        {
            Ok(a) => reply.attr(&CACHE_TTL, &self.attr(ino.0, &a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        live_or!(self, reply);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        live_or!(self, reply);
        match self.fs.mknod(&self.ctx(req), parent.0, name, mode, rdev) {
            Ok(e) => reply.entry(&CACHE_TTL, &self.attr(e.node, &e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        live_or!(self, reply);
        match self.fs.mkdir(&self.ctx(req), parent.0, name, mode) {
            Ok(e) => reply.entry(&CACHE_TTL, &self.attr(e.node, &e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        live_or!(self, reply);
        match self.fs.unlink(&self.ctx(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        live_or!(self, reply);
        match self.fs.rmdir(&self.ctx(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        live_or!(self, reply);
        match self
            .fs
            .symlink(&self.ctx(req), parent.0, link_name, target.as_os_str())
        {
            Ok(e) => reply.entry(&CACHE_TTL, &self.attr(e.node, &e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        live_or!(self, reply);
        match self.fs.rename(
            &self.ctx(req),
            parent.0,
            name,
            newparent.0,
            newname,
            flags.bits(),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        live_or!(self, reply);
        match self.fs.link(&self.ctx(req), ino.0, newparent.0, newname) {
            Ok(e) => reply.entry(&CACHE_TTL, &self.attr(e.node, &e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        live_or!(self, reply);
        match self.fs.open(&self.ctx(req), ino.0, flags.0) {
            Ok(o) => self.reply_open(ino.0, o, ReplyOpenLike::Open(reply)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        live_or!(self, reply);
        match self.fs.create(&self.ctx(req), parent.0, name, mode, flags) {
            Ok((e, o)) => {
                let attr = self.attr(e.node, &e.attr);
                self.reply_open(e.node, o, ReplyOpenLike::Create(reply, &attr));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        live_or!(self, reply);
        match self.fs.read(ino.0, fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        live_or!(self, reply);
        match self.fs.write(&self.ctx(req), ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered in the server; ENOSYS tells the kernel to stop
        // sending flushes, saving a round trip per close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_backing(fh.0);
        self.fs.release(ino.0, fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        live_or!(self, reply);
        match self.fs.fsync(ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        live_or!(self, reply);
        match self.fs.opendir(&self.ctx(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        live_or!(self, reply);
        let res = self
            .fs
            .readdir(&self.ctx(req), ino.0, fh.0, offset, false, &mut |de, _| {
                reply.add(INodeNo(de.ino), de.offset, kind_of(de.kind), de.name)
            });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        live_or!(self, reply);
        let res = self.fs.readdir(
            &self.ctx(req),
            ino.0,
            fh.0,
            offset,
            true,
            &mut |de, entry| {
                match entry {
                    Some(e) => reply.add(
                        INodeNo(e.node),
                        de.offset,
                        de.name,
                        &CACHE_TTL,
                        &self.attr(e.node, &e.attr),
                        Generation(0),
                    ),
                    // `.` and `..` carry no entry; the kernel skips them.
                    None => reply.add(
                        INodeNo(0),
                        de.offset,
                        de.name,
                        &Duration::ZERO,
                        &file_attr(0, &NO_ATTR),
                        Generation(0),
                    ),
                }
            },
        );
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(ino.0, fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        live_or!(self, reply);
        match self.fs.fsyncdir(ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        live_or!(self, reply);
        match self.fs.statfs(ino.0) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        live_or!(self, reply);
        match self.fs.setxattr(&self.ctx(req), ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        live_or!(self, reply);
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        live_or!(self, reply);
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        live_or!(self, reply);
        match self.fs.removexattr(&self.ctx(req), ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        live_or!(self, reply);
        match self.fs.fallocate(ino.0, fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        live_or!(self, reply);
        match self.fs.lseek(ino.0, fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        live_or!(self, reply);
        match self.fs.copy_file_range(
            ino_in.0, fh_in.0, offset_in, ino_out.0, fh_out.0, offset_out, len,
        ) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(u32::try_from(value.len()).unwrap_or(u32::MAX));
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
