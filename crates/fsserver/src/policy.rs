//! The policy filesystem: a passthrough to a host directory that enforces
//! containment, read-only mounts, the quota and stat virtualization.
//!
//! Every node holds an `O_PATH | O_NOFOLLOW` descriptor of its host object
//! and every name is resolved one component at a time relative to its
//! parent's descriptor, so nothing a client names can leave the served tree
//! and no host symlink is ever followed by the server. Data I/O reopens the
//! node's own inode through `/proc/self/fd`, which never resolves a path.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use msb_quota::usage::{xattr_bytes_of, xattr_cost};
use msb_quota::{Budget, ENTRY_COST};
use msb_spec::{HostPerms, IdMap, StatVirt};
use rustix::fs::{
    AtFlags, CWD, FallocateFlags, Mode, OFlags, RawDir, RenameFlags, SeekFrom, Stat, Timespec,
    Timestamps, UTIME_NOW, UTIME_OMIT, XattrFlags,
};
use rustix::io::Errno;

use crate::filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, FsResult, NO_ID, Opened, ROOT_NODE, SetAttr,
    SetTime, StatFs, Time,
};
use crate::record::{RECORD_XATTR, Record, RecordCache, is_reserved};

const S_IFMT: u32 = libc::S_IFMT;
const S_IFDIR: u32 = libc::S_IFDIR;
const S_IFREG: u32 = libc::S_IFREG;
const S_IFLNK: u32 = libc::S_IFLNK;
const S_ISGID: u32 = libc::S_ISGID;
/// Worst-case allocation a write may add beyond its data: one block for an
/// unaligned start and one for file system metadata.
const SLACK: u64 = 2 * 4096;
/// Longest symlink target accepted.
const MAX_TARGET: usize = 4095;
/// A host file system block, the unit most allocations grow by.
const BLOCK: u64 = 4096;
/// Worst case a new object takes beyond its name's [`ENTRY_COST`] and its
/// content: a block of its own (a directory's, an xattr block for its
/// record) and one its parent directory may grow by.
const NEW_OBJECT: u64 = 2 * BLOCK;

/// What the server enforces on one served tree.
#[derive(Clone)]
pub struct Policy {
    /// Refuse every write-type operation with EROFS.
    pub readonly: bool,
    /// How ownership, mode and file type are presented.
    pub stat_virt: StatVirt,
    /// Whether guest permission bits reach host files.
    pub host_perms: HostPerms,
    /// Usage budget shared by all users of the volume; `None` = unmetered.
    pub budget: Option<Arc<Budget>>,
    /// Guest uid/gid shown for files without a metadata record.
    pub owner: (u32, u32),
    /// How the guest user ids this policy works in (callers, records,
    /// `owner`) relate to the host user ids on disk.
    pub id_map: IdMap,
    /// The same for group ids: a rootless sandbox's group 0 is its
    /// caller's group, whose id need not be the caller's user id.
    pub gid_map: IdMap,
}

/// Why a policy filesystem cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The root is not a directory.
    #[error("the served root is not a directory")]
    NotADirectory,
    /// strict stat virtualization needs user xattrs on the root.
    #[error("strict stat virtualization needs user xattrs, which the served root does not support")]
    NoXattrs(#[source] std::io::Error),
    /// The root could not be inspected.
    #[error("cannot open the served root")]
    Root(#[source] std::io::Error),
}

struct Inode {
    key: (u64, u64),
    /// Kernel file handle to reopen the object once its descriptor was
    /// closed to stay within the descriptor budget; `None` keeps it open.
    handle: Option<Box<[u8]>>,
    /// `O_PATH | O_NOFOLLOW` descriptor of the host object, while cached.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    refs: AtomicU64,
    /// Serializes metered size changes so before/after accounting is exact.
    io: Mutex<()>,
    /// Passthrough opens on an unlimited budget: how many, and the host
    /// allocation when the first one opened (settled when the last closes).
    passthrough: Mutex<Option<(u32, i64)>>,
}

impl Inode {
    fn new(key: (u64, u64), fd: OwnedFd, handle: Option<Box<[u8]>>) -> Self {
        Inode {
            key,
            handle,
            fd: Mutex::new(Some(Arc::new(fd))),
            refs: AtomicU64::new(1),
            io: Mutex::new(()),
            passthrough: Mutex::new(None),
        }
    }
}

/// A node in use: the inode and a descriptor of it held for the operation.
struct Node {
    inode: Arc<Inode>,
    fd: Arc<OwnedFd>,
}

impl std::ops::Deref for Node {
    type Target = Inode;
    fn deref(&self) -> &Inode {
        &self.inode
    }
}

/// Inodes whose descriptors are open and may be closed again, oldest first.
/// Keeps the server within its descriptor limit however many nodes the
/// kernel references.
struct FdCache {
    open: VecDeque<Weak<Inode>>,
    cap: usize,
}

struct Inodes {
    by_node: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
    root_dev: u64,
    next: u64,
}

/// Who creates a new object (see [`PolicyFs::creator`]).
struct Creator {
    /// The caller, in guest ids.
    guest: Context,
    /// Host uid and gid the object gets on disk.
    host: (u32, u32),
}

/// Node ids from here on are synthetic (see [`PolicyFs::intern`]).
const SYNTHETIC: u64 = 1 << 63;

/// Bytes of host directory entries read at a time while listing: about
/// what one FUSE reply (a page) holds.
const DIR_BATCH: usize = 4096;

/// Host identity of an object: device and inode number.
type Key = (u64, u64);

struct FileHandle {
    file: OwnedFd,
    key: Key,
    /// The node, when its data moves by passthrough (settled on release).
    passthrough: Option<Node>,
}

/// An open directory, listed straight from the host: each request seeks
/// the host directory to the cookie the client continues from (the host's
/// own `d_off`, stable while entries come and go) and reads a bounded
/// batch. A handle holds no listing, whatever the directory's size.
struct DirHandle {
    /// Serializes a request's seek and read.
    fd: Mutex<OwnedFd>,
    key: Key,
}

/// Open handles of one object while the volume is metered.
struct Opens {
    handles: u32,
    /// Its last name is gone: its space is credited when the last handle
    /// closes, not before (it is still held until then).
    unlinked: bool,
}

/// The policy passthrough filesystem over one host directory.
pub struct PolicyFs {
    policy: Policy,
    /// The served root opened for reading: the mount descriptor for
    /// reopening file handles (which refuses `O_PATH` descriptors).
    mount_fd: OwnedFd,
    inodes: RwLock<Inodes>,
    cache: Mutex<FdCache>,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    /// Objects with open handles, when metered.
    opens: Mutex<HashMap<Key, Opens>>,
    /// The served root, whose own growth is not counted (see
    /// [`msb_quota::usage`]).
    root_key: Key,
    /// Records of objects on the root's file system, when it is a local
    /// one whose ctimes come from this host's clock (see [`RecordCache`]).
    records: Option<Mutex<RecordCache>>,
    next_fh: AtomicU64,
}

fn io_err(e: Errno) -> std::io::Error {
    e.into()
}

fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(0)
}

fn to_u32<T: TryInto<u32>>(v: T) -> u32 {
    v.try_into().unwrap_or(u32::MAX)
}

fn time<S: TryInto<i64>, N: TryInto<u32>>(sec: S, nsec: N) -> Time {
    Time {
        sec: sec.try_into().unwrap_or(0),
        nsec: nsec.try_into().unwrap_or(0),
    }
}

/// Host bytes allocated to an object.
fn allocated(st: &Stat) -> i64 {
    i64::try_from(to_u64(st.st_blocks))
        .unwrap_or(i64::MAX)
        .saturating_mul(512)
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(4096).saturating_mul(4096)
}

/// The kernel's `new_encode_dev` form of a host `dev_t`, as FUSE carries it.
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A single path component the client may name.
fn component(name: &OsStr) -> FsResult<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::INVAL);
    }
    Ok(name)
}

/// The magic link reaching exactly the inode behind `fd`.
fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Whole seconds of the clock the kernel stamps ctimes from.
fn coarse_clock() -> i64 {
    rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec
}

/// Whether ctimes on the file system of `fd` come from this host's clock
/// (a network file system's come from its server's).
fn local_ctimes(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| {
        matches!(
            s.f_type,
            libc::EXT4_SUPER_MAGIC
                | libc::XFS_SUPER_MAGIC
                | libc::BTRFS_SUPER_MAGIC
                | libc::TMPFS_MAGIC
        )
    })
}

/// Reopens the inode behind an `O_PATH` descriptor for I/O.
fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> FsResult<OwnedFd> {
    rustix::fs::openat(CWD, proc_path(fd), flags | OFlags::CLOEXEC, Mode::empty())
}

/// The kernel's handle for the object behind `fd`, if its file system has
/// them: raw `struct file_handle` bytes.
fn file_handle(fd: BorrowedFd<'_>) -> Option<Box<[u8]>> {
    const MAX: usize = 128;
    let mut buf = vec![0u8; std::mem::size_of::<libc::file_handle>() + MAX];
    let mut mount_id = 0;
    // SAFETY: `buf` is a zeroed, large enough and suitably aligned (the
    // allocator aligns to at least 8) file_handle with handle_bytes set
    // below; the empty path with AT_EMPTY_PATH names `fd` itself.
    let rc = unsafe {
        let fh = buf.as_mut_ptr().cast::<libc::file_handle>();
        (*fh).handle_bytes = MAX as u32;
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            fh,
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return None;
    }
    let used = u32::from_ne_bytes(buf[..4].try_into().ok()?) as usize;
    buf.truncate(std::mem::size_of::<libc::file_handle>() + used);
    Some(buf.into_boxed_slice())
}

/// Reopens an object from its handle as an `O_PATH` descriptor.
fn open_by_handle(mount: BorrowedFd<'_>, handle: &[u8]) -> FsResult<OwnedFd> {
    let mut buf = handle.to_vec();
    // SAFETY: `buf` holds a file_handle produced by name_to_handle_at; the
    // kernel only reads it. A non-negative result is a new descriptor we own.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn host_type(st: &Stat) -> u32 {
    st.st_mode & S_IFMT
}

/// The file type bits of a host directory entry's type (0: unknown).
fn dirent_kind(t: rustix::fs::FileType) -> u32 {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => S_IFDIR,
        T::RegularFile => S_IFREG,
        T::Symlink => S_IFLNK,
        T::Fifo => libc::S_IFIFO,
        T::Socket => libc::S_IFSOCK,
        T::CharacterDevice => libc::S_IFCHR,
        T::BlockDevice => libc::S_IFBLK,
        T::Unknown => 0,
    }
}

fn key_of(st: &Stat) -> Key {
    (st.st_dev, st.st_ino)
}

/// A new object with the usage it adds: its name and its allocation.
fn made(entry: FsResult<Entry>) -> FsResult<(Entry, i64)> {
    let e = entry?;
    let bytes = i64::try_from(e.attr.blocks.saturating_mul(512)).unwrap_or(i64::MAX);
    Ok((e, bytes + ENTRY_COST as i64))
}

impl PolicyFs {
    /// Serves the directory `root` under `policy`. strict probes the root for
    /// user xattr support.
    pub fn new(root: impl AsFd, policy: Policy) -> Result<Self, PolicyError> {
        let fd = rustix::fs::openat(
            root.as_fd(),
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => PolicyError::NotADirectory,
            e => PolicyError::Root(io_err(e)),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| PolicyError::Root(io_err(e)))?;
        if host_type(&st) != S_IFDIR {
            return Err(PolicyError::NotADirectory);
        }
        if policy.stat_virt == StatVirt::Strict {
            let path = proc_path(fd.as_fd());
            let probe = "user.msb.probe";
            rustix::fs::setxattr(&path, probe, b"1", XattrFlags::empty())
                .and_then(|()| rustix::fs::removexattr(&path, probe))
                .map_err(|e| PolicyError::NoXattrs(io_err(e)))?;
        }
        let key = (st.st_dev, st.st_ino);
        let mount_fd = rustix::fs::openat(
            &fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PolicyError::Root(io_err(e)))?;
        let records = local_ctimes(fd.as_fd()).then(|| Mutex::new(RecordCache::default()));
        let root_fd = Arc::new(fd);
        let root = Arc::new(Inode {
            key,
            handle: None,
            fd: Mutex::new(Some(root_fd.clone())),
            refs: AtomicU64::new(1),
            io: Mutex::new(()),
            passthrough: Mutex::new(None),
        });
        let inodes = Inodes {
            by_node: HashMap::from([(ROOT_NODE, root)]),
            by_key: HashMap::from([(key, ROOT_NODE)]),
            root_dev: st.st_dev,
            next: SYNTHETIC,
        };
        // Half the descriptor limit for cached nodes; the rest serves open
        // files, directories and the transport.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        let cap = usize::try_from(limit / 2)
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 16);
        Ok(PolicyFs {
            policy,
            mount_fd,
            inodes: RwLock::new(inodes),
            cache: Mutex::new(FdCache {
                open: VecDeque::new(),
                cap,
            }),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            root_key: key,
            records,
            next_fh: AtomicU64::new(1),
        })
    }

    fn virt(&self) -> bool {
        self.policy.stat_virt != StatVirt::Off
    }

    fn writable(&self) -> FsResult<()> {
        if self.policy.readonly {
            Err(Errno::ROFS)
        } else {
            Ok(())
        }
    }

    fn inode(&self, node: u64) -> FsResult<Node> {
        let inode = {
            let t = self.inodes.read().map_err(|_| Errno::IO)?;
            t.by_node.get(&node).cloned().ok_or(Errno::STALE)?
        };
        self.hold(inode)
    }

    /// Gets a descriptor for `inode`, reopening it by handle if it was closed.
    fn hold(&self, inode: Arc<Inode>) -> FsResult<Node> {
        let mut slot = inode.fd.lock().map_err(|_| Errno::IO)?;
        if let Some(fd) = &*slot {
            let fd = fd.clone();
            drop(slot);
            return Ok(Node { fd, inode });
        }
        let handle = inode.handle.as_deref().ok_or(Errno::STALE)?;
        let fd = Arc::new(open_by_handle(self.mount_fd.as_fd(), handle)?);
        *slot = Some(fd.clone());
        drop(slot);
        self.cached(&inode);
        Ok(Node { inode, fd })
    }

    /// Notes that `inode` holds an open descriptor, closing the oldest
    /// cached ones beyond the budget.
    fn cached(&self, inode: &Arc<Inode>) {
        if inode.handle.is_none() {
            return;
        }
        let Ok(mut c) = self.cache.lock() else {
            return;
        };
        c.open.push_back(Arc::downgrade(inode));
        while c.open.len() > c.cap {
            if let Some(old) = c.open.pop_front().and_then(|w| w.upgrade())
                && let Ok(mut slot) = old.fd.lock()
            {
                *slot = None;
            }
        }
    }

    fn file(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        let t = self.files.read().map_err(|_| Errno::IO)?;
        t.get(&fh).cloned().ok_or(Errno::BADF)
    }

    fn dir(&self, fh: u64) -> FsResult<Arc<DirHandle>> {
        let t = self.dirs.read().map_err(|_| Errno::IO)?;
        t.get(&fh).cloned().ok_or(Errno::BADF)
    }

    /// Registers a looked-up host object, taking one client reference.
    fn intern(&self, fd: OwnedFd, st: &Stat) -> FsResult<u64> {
        let key = (st.st_dev, st.st_ino);
        {
            let t = self.inodes.read().map_err(|_| Errno::IO)?;
            if let Some(&node) = t.by_key.get(&key)
                && let Some(inode) = t.by_node.get(&node)
            {
                inode.refs.fetch_add(1, Ordering::AcqRel);
                return Ok(node);
            }
        }
        // Objects on other file systems keep their descriptor: a handle is
        // only reopened through the root's mount.
        let root_dev = self.inodes.read().map_err(|_| Errno::IO)?.root_dev;
        let same_fs = key.0 == root_dev;
        let handle = if same_fs {
            file_handle(fd.as_fd())
        } else {
            None
        };
        let mut t = self.inodes.write().map_err(|_| Errno::IO)?;
        if let Some(&node) = t.by_key.get(&key)
            && let Some(inode) = t.by_node.get(&node)
        {
            inode.refs.fetch_add(1, Ordering::AcqRel);
            return Ok(node);
        }
        // Host inode numbers make stable node ids on the root's file system;
        // anything else (other mounts, the reserved ids) gets a synthetic one.
        let node = if same_fs && key.1 > ROOT_NODE && key.1 < SYNTHETIC {
            key.1
        } else {
            t.next += 1;
            t.next
        };
        let inode = Arc::new(Inode::new(key, fd, handle));
        t.by_node.insert(node, inode.clone());
        t.by_key.insert(key, node);
        drop(t);
        self.cached(&inode);
        Ok(node)
    }

    fn read_record(&self, fd: BorrowedFd<'_>, st: &Stat) -> FsResult<Option<Record>> {
        if host_type(st) == S_IFLNK {
            // Host symlinks cannot carry user xattrs.
            return Ok(None);
        }
        let key = (st.st_dev, st.st_ino);
        let ctime = (st.st_ctime, st.st_ctime_nsec);
        let cache = self.records.as_ref().filter(|_| key.0 == self.root_key.0);
        let read_at = coarse_clock();
        if let Some(c) = cache
            && let Some(r) = c.lock().map_err(|_| Errno::IO)?.get(key, ctime, read_at)
        {
            return Ok(r);
        }
        let mut buf = [0u8; 32];
        let record = match rustix::fs::getxattr(proc_path(fd), RECORD_XATTR, &mut buf[..]) {
            Ok(n) => {
                let r = Record::decode(&buf[..n]).map_err(|_| Errno::IO)?;
                let ok = match host_type(st) {
                    S_IFDIR => r.kind() == S_IFDIR,
                    S_IFREG => r.kind() != S_IFDIR,
                    t => r.kind() == t,
                };
                if !ok {
                    return Err(Errno::IO);
                }
                Some(r)
            }
            // A value longer than any valid record is corrupt too.
            Err(Errno::RANGE) => return Err(Errno::IO),
            Err(Errno::NODATA | Errno::OPNOTSUPP) => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = cache {
            c.lock()
                .map_err(|_| Errno::IO)?
                .insert(key, ctime, record, read_at);
        }
        Ok(record)
    }

    fn write_record(&self, fd: BorrowedFd<'_>, r: &Record) -> FsResult<()> {
        rustix::fs::setxattr(
            proc_path(fd),
            RECORD_XATTR,
            &r.encode(),
            XattrFlags::empty(),
        )
    }

    /// What the client sees of a host object.
    fn attr_of(&self, fd: BorrowedFd<'_>, st: &Stat) -> FsResult<Attr> {
        let record = if self.virt() {
            self.read_record(fd, st)?
        } else {
            None
        };
        Ok(self.attr_with(st, record.as_ref()))
    }

    /// What the client sees of a host object with metadata record `record`.
    fn attr_with(&self, st: &Stat, record: Option<&Record>) -> Attr {
        let mut a = Attr {
            ino: st.st_ino,
            size: to_u64(st.st_size),
            blocks: to_u64(st.st_blocks),
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
            nlink: to_u32(st.st_nlink),
            uid: self.guest_id(st.st_uid),
            gid: self.guest_gid(st.st_gid),
            rdev: encode_dev(st.st_rdev),
            blksize: to_u32(st.st_blksize),
        };
        if !self.virt() {
            return a;
        }
        match record {
            Some(r) => {
                a.uid = r.uid;
                a.gid = r.gid;
                a.mode = r.mode;
                a.rdev = match r.kind() {
                    libc::S_IFCHR | libc::S_IFBLK => r.rdev,
                    _ => 0,
                };
            }
            None => {
                (a.uid, a.gid) = self.policy.owner;
            }
        }
        a
    }

    /// The record of an object, or one describing how it looks without one.
    fn record_or_default(&self, fd: BorrowedFd<'_>, st: &Stat) -> FsResult<Record> {
        Ok(self.read_record(fd, st)?.unwrap_or(Record {
            uid: self.policy.owner.0,
            gid: self.policy.owner.1,
            mode: st.st_mode & (S_IFMT | 0o7777),
            rdev: 0,
        }))
    }

    fn stat_attr(&self, inode: &Node) -> FsResult<Attr> {
        let st = rustix::fs::fstat(&inode.fd)?;
        self.attr_of(inode.fd.as_fd(), &st)
    }

    fn do_lookup(&self, parent: &Node, name: &OsStr) -> FsResult<Entry> {
        let fd = rustix::fs::openat(
            &parent.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let attr = self.attr_of(fd.as_fd(), &st)?;
        let node = self.intern(fd, &st)?;
        Ok(Entry { node, attr })
    }

    /// Host permission bits for a new object with guest mode `mode`. In
    /// `off` none until the object has its owner ([`Self::init_meta`] then
    /// sets the exact mode): it is never a usable host root file, not even
    /// for a moment.
    fn host_mode(&self, mode: u32, dir: bool) -> u32 {
        let floor = if dir { 0o700 } else { 0o600 };
        match (self.policy.stat_virt, self.policy.host_perms) {
            (StatVirt::Off, _) => 0,
            (_, HostPerms::Private) => floor,
            (_, HostPerms::Mirror) => (mode & 0o777) | floor,
        }
    }

    /// The guest id of a host owner or group: [`NO_ID`] when it has none,
    /// so no guest process gets the rights of an unmapped owner (host root
    /// above all).
    fn guest_id(&self, host: u32) -> u32 {
        self.policy.id_map.to_guest(host).unwrap_or(NO_ID)
    }

    /// [`Self::guest_id`] for a host group.
    fn guest_gid(&self, host: u32) -> u32 {
        self.policy.gid_map.to_guest(host).unwrap_or(NO_ID)
    }

    /// Who a new object made for `ctx` belongs to, decided before anything
    /// is created. On disk: in `off` the creator's own host ids; under
    /// virtualization (the guest owner lives in the record) the host ids of
    /// guest root. Never host root unless guest ids are host ids. EPERM for
    /// a creator without host ids.
    fn creator(&self, ctx: &Context) -> FsResult<Creator> {
        let (uid, gid) = if self.virt() {
            (0, 0)
        } else {
            (ctx.uid, ctx.gid)
        };
        let (users, groups) = (&self.policy.id_map, &self.policy.gid_map);
        match (users.to_host(uid), groups.to_host(gid)) {
            (Some(host_uid), Some(host_gid)) => Ok(Creator {
                guest: *ctx,
                host: (host_uid, host_gid),
            }),
            _ => Err(Errno::PERM),
        }
    }

    /// Gives a new host object its owner on disk and its guest ownership and
    /// mode: a record, or in `off` the real owner and mode.
    fn init_meta(
        &self,
        creator: &Creator,
        parent: &Attr,
        fd: BorrowedFd<'_>,
        st: &Stat,
        guest_mode: u32,
        rdev: u32,
    ) -> FsResult<Option<Record>> {
        let sgid_parent = parent.mode & S_ISGID != 0;
        let gid = if sgid_parent {
            parent.gid
        } else {
            creator.guest.gid
        };
        let mut mode = guest_mode;
        if sgid_parent && mode & S_IFMT == S_IFDIR {
            mode |= S_ISGID;
        }
        let is_link = host_type(st) == S_IFLNK;
        let (host_uid, mut host_gid) = creator.host;
        if !self.virt() && sgid_parent {
            // The group the host gave it from its parent, as a kernel does.
            host_gid = st.st_gid;
        }
        if (st.st_uid, st.st_gid) != (host_uid, host_gid) {
            rustix::fs::chownat(
                fd,
                "",
                Some(rustix::fs::Uid::from_raw(host_uid)),
                Some(rustix::fs::Gid::from_raw(host_gid)),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if !self.virt() {
            if !is_link {
                // Exact mode: the server's umask and the host's rules must
                // not alter what the client asked for.
                rustix::fs::chmodat(
                    CWD,
                    proc_path(fd),
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
            return Ok(None);
        }
        if is_link {
            return Ok(None);
        }
        let record = Record {
            uid: creator.guest.uid,
            gid,
            mode,
            rdev,
        };
        self.write_record(fd, &record)?;
        if self.policy.host_perms == HostPerms::Mirror {
            let host = self.host_mode(mode, mode & S_IFMT == S_IFDIR);
            rustix::fs::chmodat(
                CWD,
                proc_path(fd),
                Mode::from_raw_mode(host),
                AtFlags::empty(),
            )?;
        }
        Ok(Some(record))
    }

    /// Finishes creating `name` in `parent`: opens it, sets its metadata and
    /// registers it. On failure the half-made object is removed again.
    fn finish_new(
        &self,
        creator: &Creator,
        parent: &Node,
        parent_attr: &Attr,
        name: &OsStr,
        guest_mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let done = (|| {
            let fd = rustix::fs::openat(
                &parent.fd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&fd)?;
            let record = self.init_meta(creator, parent_attr, fd.as_fd(), &st, guest_mode, rdev)?;
            let st = rustix::fs::fstat(&fd)?;
            let attr = self.attr_with(&st, record.as_ref());
            Ok((fd, st, attr))
        })();
        match done {
            Ok((fd, st, attr)) => Ok(Entry {
                node: self.intern(fd, &st)?,
                attr,
            }),
            Err(e) => {
                let flags = if guest_mode & S_IFMT == S_IFDIR {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                };
                let _ = rustix::fs::unlinkat(&parent.fd, name, flags);
                Err(e)
            }
        }
    }

    fn reserve(&self, bytes: u64) -> FsResult<u64> {
        match &self.policy.budget {
            Some(b) => b.reserve(bytes).map(|()| bytes).map_err(|_| Errno::NOSPC),
            None => Ok(0),
        }
    }

    /// Settles a reservation against what a change really allocated.
    fn settle(&self, before: i64, after: i64, reserved: u64) {
        if let Some(b) = &self.policy.budget {
            b.adjust(after - before - i64::try_from(reserved).unwrap_or(i64::MAX));
        }
    }

    /// Runs a change of the names in `dirs` with its usage settled:
    /// `reserve` bytes are taken first (ENOSPC when refused); `op` gives the
    /// usage it added (negative: freed), and the directories' own growth
    /// is added to it. The directories are locked meanwhile so their
    /// growth is measured once.
    fn in_dirs<T>(
        &self,
        dirs: &[&Node],
        reserve: u64,
        op: impl FnOnce() -> FsResult<(T, i64)>,
    ) -> FsResult<T> {
        let Some(budget) = &self.policy.budget else {
            return op().map(|(t, _)| t);
        };
        let mut dirs: Vec<&Node> = dirs
            .iter()
            .copied()
            .filter(|d| d.key != self.root_key)
            .collect();
        // One order for every caller: two changes never wait on each other.
        dirs.sort_by_key(|d| d.key);
        dirs.dedup_by_key(|d| d.key);
        let mut guards = Vec::with_capacity(dirs.len());
        for d in &dirs {
            guards.push(d.io.lock().map_err(|_| Errno::IO)?);
        }
        let size = |d: &Node| rustix::fs::fstat(&d.fd).map(|st| allocated(&st));
        let before = dirs.iter().map(|d| size(d)).collect::<FsResult<Vec<_>>>()?;
        budget.reserve(reserve).map_err(|_| Errno::NOSPC)?;
        let res = op();
        let grown: i64 = dirs
            .iter()
            .zip(before)
            .map(|(d, b)| size(d).map_or(0, |a| a - b))
            .sum();
        let made = res.as_ref().map_or(0, |(_, u)| *u);
        budget.adjust(made + grown - i64::try_from(reserve).unwrap_or(i64::MAX));
        res.map(|(t, _)| t)
    }

    /// Runs `op` (given the object's path) changing the xattr `name` of
    /// `inode`, to a value of `new_len` bytes or removed (`None`), with its
    /// usage settled: the growth in counted bytes and room for a new xattr
    /// block are reserved first (ENOSPC when refused), then settled against
    /// what really changed.
    fn xattr_change(
        &self,
        inode: &Node,
        name: &OsStr,
        new_len: Option<usize>,
        op: impl FnOnce(&str) -> FsResult<()>,
    ) -> FsResult<()> {
        let path = proc_path(inode.fd.as_fd());
        let Some(budget) = &self.policy.budget else {
            return op(&path);
        };
        let _guard = inode.io.lock().map_err(|_| Errno::IO)?;
        let before = rustix::fs::fstat(&inode.fd)?;
        if host_type(&before) == S_IFLNK {
            // Refused by the host: symlinks take no user xattrs.
            return op(&path);
        }
        let cost = |len| i64::try_from(xattr_cost(name.as_bytes(), len)).unwrap_or(i64::MAX);
        let old = match rustix::fs::getxattr_query(&path, name) {
            Ok(len) => cost(len),
            Err(Errno::NODATA) => 0,
            Err(e) => return Err(e),
        };
        let new = new_len.map_or(0, cost);
        let reserve = match new_len {
            Some(_) => (new - old).max(0).unsigned_abs() + BLOCK,
            None => 0,
        };
        budget.reserve(reserve).map_err(|_| Errno::NOSPC)?;
        let res = op(&path);
        let grown = rustix::fs::fstat(&inode.fd).map_or(0, |a| allocated(&a) - allocated(&before));
        let changed = if res.is_ok() { new - old } else { 0 };
        budget.adjust(changed + grown - i64::try_from(reserve).unwrap_or(i64::MAX));
        res
    }

    /// What an object holds beyond its names: its allocation and its
    /// counted xattrs.
    fn held(&self, fd: BorrowedFd<'_>, st: &Stat) -> i64 {
        let xattrs = if host_type(st) == S_IFLNK {
            0
        } else {
            xattr_bytes_of(fd).unwrap_or(0)
        };
        allocated(st).saturating_add(i64::try_from(xattrs).unwrap_or(i64::MAX))
    }

    /// Opens `name` in `dir` to follow it through its removal (metered
    /// only).
    fn victim(&self, dir: &Node, name: &OsStr) -> Option<OwnedFd> {
        self.policy.budget.as_ref()?;
        rustix::fs::openat(
            &dir.fd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    }

    /// The usage freed by removing a name of `victim`: the name's cost, and
    /// what the object holds once its last name is gone, unless this
    /// server still has it open (then credited at the last close).
    fn removed(&self, victim: Option<OwnedFd>) -> i64 {
        let mut freed = ENTRY_COST as i64;
        if let Some(fd) = victim
            && let Ok(st) = rustix::fs::fstat(&fd)
            && st.st_nlink == 0
            && !self.defer_until_closed(key_of(&st))
        {
            freed += self.held(fd.as_fd(), &st);
        }
        -freed
    }

    /// Marks an open object as unlinked; false if it has no open handle.
    fn defer_until_closed(&self, key: Key) -> bool {
        let Ok(mut opens) = self.opens.lock() else {
            return false;
        };
        match opens.get_mut(&key) {
            Some(o) => {
                o.unlinked = true;
                true
            }
            None => false,
        }
    }

    /// Notes an open handle of `key` (metered only).
    fn handle_opened(&self, key: Key) -> FsResult<()> {
        if self.policy.budget.is_none() {
            return Ok(());
        }
        let mut opens = self.opens.lock().map_err(|_| Errno::IO)?;
        opens
            .entry(key)
            .or_insert(Opens {
                handles: 0,
                unlinked: false,
            })
            .handles += 1;
        Ok(())
    }

    /// Settles a closed file handle: passthrough growth, then the space of
    /// an unlinked file at its last close.
    fn file_closed(&self, h: &FileHandle) {
        if let Some(inode) = &h.passthrough {
            self.passthrough_closed(inode);
        }
        self.handle_closed(h.key, h.file.as_fd());
    }

    /// Settles a closed directory handle (see [`Self::handle_closed`]).
    fn dir_closed(&self, d: &DirHandle) {
        if let Ok(fd) = d.fd.lock() {
            self.handle_closed(d.key, fd.as_fd());
        }
    }

    /// Notes a handle of `key` closing; at the last one of an unlinked
    /// object credits what it held. `fd` is the handle's descriptor, still
    /// open.
    fn handle_closed(&self, key: Key, fd: BorrowedFd<'_>) {
        let Some(budget) = &self.policy.budget else {
            return;
        };
        let Ok(mut opens) = self.opens.lock() else {
            return;
        };
        let Some(o) = opens.get_mut(&key) else {
            return;
        };
        o.handles -= 1;
        if o.handles > 0 {
            return;
        }
        let unlinked = o.unlinked;
        opens.remove(&key);
        drop(opens);
        if unlinked
            && let Ok(st) = rustix::fs::fstat(fd)
            && st.st_nlink == 0
        {
            budget.adjust(-self.held(fd, &st));
        }
    }

    /// Runs `op` on an object with quota accounting around it: `reserve`
    /// bytes are taken first (ENOSPC when refused) and settled against the
    /// change of its allocation (seen through `file`) afterwards.
    fn metered<T>(
        &self,
        inode: &Node,
        file: BorrowedFd<'_>,
        reserve: impl FnOnce(&Stat) -> u64,
        op: impl FnOnce() -> FsResult<T>,
    ) -> FsResult<T> {
        if self.policy.budget.is_none() {
            return op();
        }
        let _guard = inode.io.lock().map_err(|_| Errno::IO)?;
        let before = rustix::fs::fstat(file)?;
        let reserved = self.reserve(reserve(&before))?;
        let res = op();
        let after = rustix::fs::fstat(file)
            .map(|st| allocated(&st))
            .unwrap_or(allocated(&before));
        self.settle(allocated(&before), after, reserved);
        if let Ok(mut pt) = inode.passthrough.lock()
            && let Some((_, base)) = pt.as_mut()
        {
            // Already accounted: the passthrough settlement must not count it again.
            *base += after - allocated(&before);
        }
        res
    }

    /// Whether file data may bypass the server: always without a budget;
    /// with an unlimited one too, settling usage when the file is closed.
    fn passthrough_ok(&self) -> bool {
        self.policy
            .budget
            .as_ref()
            .is_none_or(|b| b.limit().is_none())
    }

    /// Notes a passthrough open of `inode` for later settlement.
    fn passthrough_opened(&self, inode: &Node) -> FsResult<()> {
        if self.policy.budget.is_none() {
            return Ok(());
        }
        let mut pt = inode.passthrough.lock().map_err(|_| Errno::IO)?;
        match pt.as_mut() {
            Some((n, _)) => *n += 1,
            None => *pt = Some((1, allocated(&rustix::fs::fstat(&inode.fd)?))),
        }
        Ok(())
    }

    /// Settles usage when the last passthrough open of `inode` closes.
    fn passthrough_closed(&self, inode: &Node) {
        let Some(budget) = &self.policy.budget else {
            return;
        };
        let Ok(mut pt) = inode.passthrough.lock() else {
            return;
        };
        if let Some((n, base)) = pt.as_mut() {
            *n -= 1;
            if *n == 0 {
                if let Ok(st) = rustix::fs::fstat(&inode.fd) {
                    budget.adjust(allocated(&st) - *base);
                }
                *pt = None;
            }
        }
    }

    fn truncate(&self, inode: &Node, st: &Stat, size: u64) -> FsResult<()> {
        match host_type(st) {
            S_IFREG => {}
            S_IFDIR => return Err(Errno::ISDIR),
            _ => return Err(Errno::INVAL),
        }
        let file = reopen(inode.fd.as_fd(), OFlags::WRONLY)?;
        let old = to_u64(st.st_size);
        self.metered(
            inode,
            file.as_fd(),
            // The quota is a size limit: an extension must fit even though
            // the host keeps it sparse; settling gives back what is unused.
            |_| size.saturating_sub(old),
            || rustix::fs::ftruncate(&file, size),
        )
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an open file; data I/O needs the server only when writes
    /// must be checked against a limit.
    fn add_file(&self, file: OwnedFd, inode: Node, both_ways: bool) -> FsResult<Opened> {
        let passthrough = self.passthrough_ok() && both_ways;
        let key = inode.key;
        self.handle_opened(key)?;
        if passthrough && let Err(e) = self.passthrough_opened(&inode) {
            self.handle_closed(key, file.as_fd());
            return Err(e);
        }
        let fh = self.new_fh();
        let handle = FileHandle {
            file,
            key,
            passthrough: passthrough.then_some(inode),
        };
        self.files
            .write()
            .map_err(|_| Errno::IO)?
            .insert(fh, Arc::new(handle));
        Ok(Opened { fh, passthrough })
    }

    /// Open flags for reopening a host file: creation and truncation were
    /// handled already, appends arrive with explicit offsets.
    /// When data moves by passthrough, the handle's descriptor also
    /// serves as the kernel's backing file, which must allow both
    /// directions (the client's own open mode still limits the client).
    fn io_flags(&self, flags: i32, promote: bool) -> OFlags {
        let strip = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_APPEND;
        let mut flags = flags & !strip;
        if promote && self.passthrough_ok() && !self.policy.readonly {
            flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
    }

    fn check_xattr_name(name: &OsStr) -> FsResult<()> {
        let b = name.as_bytes();
        if is_reserved(b) {
            return Err(Errno::PERM);
        }
        if !b.starts_with(b"user.") {
            // Only the unprivileged namespace is passed to host files.
            return Err(Errno::OPNOTSUPP);
        }
        Ok(())
    }

    /// The guest file type of a directory entry without taking a reference.
    /// `host_kind` is what the host listing says.
    fn entry_kind(&self, parent: &Node, name: &OsStr, host_kind: u32) -> u32 {
        if !self.virt() || (host_kind != S_IFREG && host_kind != 0) {
            return host_kind;
        }
        let probe = || -> FsResult<u32> {
            let fd = rustix::fs::openat(
                &parent.fd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&fd)?;
            Ok(self.attr_of(fd.as_fd(), &st)?.mode & S_IFMT)
        };
        probe().unwrap_or(host_kind)
    }
}

fn set_time(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(SetTime::At(t)) => Timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec.into(),
        },
    }
}

impl FileSystem for PolicyFs {
    fn lookup(&self, _ctx: &Context, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let name = component(name)?;
        let parent = self.inode(parent)?;
        self.do_lookup(&parent, name)
    }

    fn forget(&self, node: u64, count: u64) {
        if node == ROOT_NODE {
            return;
        }
        let Ok(mut t) = self.inodes.write() else {
            return;
        };
        let Some(inode) = t.by_node.get(&node) else {
            return;
        };
        let left = inode.refs.load(Ordering::Acquire).saturating_sub(count);
        inode.refs.store(left, Ordering::Release);
        if left == 0 {
            let key = inode.key;
            t.by_node.remove(&node);
            if t.by_key.get(&key) == Some(&node) {
                t.by_key.remove(&key);
            }
        }
    }

    fn getattr(&self, node: u64) -> FsResult<Attr> {
        self.stat_attr(&self.inode(node)?)
    }

    fn setattr(
        &self,
        _ctx: &Context,
        node: u64,
        _fh: Option<u64>,
        set: &SetAttr,
    ) -> FsResult<Attr> {
        self.writable()?;
        let inode = self.inode(node)?;
        let fd = inode.fd.as_fd();
        let st = rustix::fs::fstat(fd)?;
        let is_link = host_type(&st) == S_IFLNK;
        let owner_change = set.uid.is_some() || set.gid.is_some();
        if self.virt() && (owner_change || set.mode.is_some()) {
            if is_link {
                // Real host symlinks (relaxed) have nowhere to keep a record.
                return Err(Errno::OPNOTSUPP);
            }
            let mut rec = self.record_or_default(fd, &st)?;
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            if let Some(mode) = set.mode {
                rec.mode = (rec.mode & S_IFMT) | (mode & 0o7777);
            }
            // A first record may take an xattr block.
            self.metered(&inode, fd, |_| 0, || self.write_record(fd, &rec))?;
            if set.mode.is_some() && self.policy.host_perms == HostPerms::Mirror {
                let host = self.host_mode(rec.mode, host_type(&st) == S_IFDIR);
                rustix::fs::chmodat(
                    CWD,
                    proc_path(fd),
                    Mode::from_raw_mode(host),
                    AtFlags::empty(),
                )?;
            }
        } else {
            if owner_change {
                // off shows raw host ownership, which the guest may not change.
                return Err(Errno::PERM);
            }
            if let Some(mode) = set.mode {
                if is_link {
                    return Err(Errno::OPNOTSUPP);
                }
                rustix::fs::chmodat(
                    CWD,
                    proc_path(fd),
                    Mode::from_raw_mode(mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
        }
        if let Some(size) = set.size {
            self.truncate(&inode, &st, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: set_time(set.atime),
                last_modification: set_time(set.mtime),
            };
            rustix::fs::utimensat(fd, "", &times, AtFlags::EMPTY_PATH)
                .or_else(|_| rustix::fs::utimensat(CWD, proc_path(fd), &times, AtFlags::empty()))?;
        }
        self.stat_attr(&inode)
    }

    fn readlink(&self, node: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(node)?;
        let st = rustix::fs::fstat(&inode.fd)?;
        match host_type(&st) {
            S_IFLNK => Ok(rustix::fs::readlinkat(&inode.fd, "", Vec::new())?.into_bytes()),
            S_IFREG if self.virt() => {
                let attr = self.attr_of(inode.fd.as_fd(), &st)?;
                if attr.mode & S_IFMT != S_IFLNK {
                    return Err(Errno::INVAL);
                }
                let file = reopen(inode.fd.as_fd(), OFlags::RDONLY)?;
                let mut buf = vec![0u8; MAX_TARGET + 1];
                let n = rustix::io::pread(&file, &mut buf[..], 0)?;
                buf.truncate(n.min(MAX_TARGET));
                Ok(buf)
            }
            _ => Err(Errno::INVAL),
        }
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        self.writable()?;
        let name = component(name)?;
        let p = self.inode(parent)?;
        let creator = self.creator(ctx)?;
        let pattr = self.stat_attr(&p)?;
        let kind = match mode & S_IFMT {
            0 => S_IFREG,
            k => k,
        };
        let perm = mode & 0o7777;
        if !self.virt() && matches!(kind, libc::S_IFCHR | libc::S_IFBLK) {
            return Err(Errno::OPNOTSUPP);
        }
        if !matches!(
            kind,
            S_IFREG | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK
        ) {
            return Err(Errno::INVAL);
        }
        self.in_dirs(&[&p], ENTRY_COST + NEW_OBJECT, || {
            if self.virt() {
                // Under virtualization every special file is a plain host
                // file carrying the record: nothing special exists on the host.
                let host = self.host_mode(perm, false);
                rustix::fs::openat(
                    &p.fd,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(host),
                )?;
            } else {
                let ft = rustix::fs::FileType::from_raw_mode(kind);
                // No permissions until it has its owner (see `host_mode`).
                rustix::fs::mknodat(&p.fd, name, ft, Mode::empty(), 0)?;
            }
            let rdev = if self.virt() { rdev } else { 0 };
            made(self.finish_new(&creator, &p, &pattr, name, kind | perm, rdev))
        })
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &OsStr, mode: u32) -> FsResult<Entry> {
        self.writable()?;
        let name = component(name)?;
        let p = self.inode(parent)?;
        let creator = self.creator(ctx)?;
        let pattr = self.stat_attr(&p)?;
        self.in_dirs(&[&p], ENTRY_COST + NEW_OBJECT, || {
            let host = self.host_mode(mode, true);
            rustix::fs::mkdirat(&p.fd, name, Mode::from_raw_mode(host))?;
            made(self.finish_new(&creator, &p, &pattr, name, S_IFDIR | (mode & 0o7777), 0))
        })
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let name = component(name)?;
        let p = self.inode(parent)?;
        let victim = self.victim(&p, name);
        self.in_dirs(&[&p], 0, || {
            rustix::fs::unlinkat(&p.fd, name, AtFlags::empty())?;
            Ok(((), self.removed(victim)))
        })
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let name = component(name)?;
        let p = self.inode(parent)?;
        let victim = self.victim(&p, name);
        self.in_dirs(&[&p], 0, || {
            rustix::fs::unlinkat(&p.fd, name, AtFlags::REMOVEDIR)?;
            Ok(((), self.removed(victim)))
        })
    }

    fn symlink(&self, ctx: &Context, parent: u64, name: &OsStr, target: &OsStr) -> FsResult<Entry> {
        self.writable()?;
        let name = component(name)?;
        let target = target.as_bytes();
        if target.is_empty() || target.len() > MAX_TARGET || target.contains(&0) {
            return Err(Errno::INVAL);
        }
        let p = self.inode(parent)?;
        let creator = self.creator(ctx)?;
        let pattr = self.stat_attr(&p)?;
        // A long target takes blocks of its own, in a host symlink too.
        let content = round_up(target.len() as u64);
        self.in_dirs(&[&p], ENTRY_COST + NEW_OBJECT + content, || {
            if self.policy.stat_virt == StatVirt::Strict {
                // The link is a plain host file holding the target: the host
                // never sees a symlink it could follow.
                let host = self.host_mode(0o777, false);
                let file = rustix::fs::openat(
                    &p.fd,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(host),
                )?;
                let written = rustix::io::pwrite(&file, target, 0).and_then(|n| {
                    if n == target.len() {
                        Ok(())
                    } else {
                        Err(Errno::IO)
                    }
                });
                if let Err(e) = written {
                    let _ = rustix::fs::unlinkat(&p.fd, name, AtFlags::empty());
                    return Err(e);
                }
            } else {
                rustix::fs::symlinkat(OsStr::from_bytes(target), &p.fd, name)?;
            }
            made(self.finish_new(&creator, &p, &pattr, name, S_IFLNK | 0o777, 0))
        })
    }

    fn rename(
        &self,
        _ctx: &Context,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.writable()?;
        let name = component(name)?;
        let new_name = component(new_name)?;
        let flags = RenameFlags::from_bits(flags).ok_or(Errno::INVAL)?;
        if flags.contains(RenameFlags::WHITEOUT) {
            // A whiteout is a device node on the host.
            return Err(Errno::INVAL);
        }
        let p = self.inode(parent)?;
        let np = self.inode(new_parent)?;
        let victim = if flags.contains(RenameFlags::EXCHANGE) {
            None
        } else {
            self.victim(&np, new_name)
        };
        self.in_dirs(&[&p, &np], 0, || {
            let src = match &victim {
                Some(_) => Some(key_of(&rustix::fs::statat(
                    &p.fd,
                    name,
                    AtFlags::SYMLINK_NOFOLLOW,
                )?)),
                None => None,
            };
            rustix::fs::renameat_with(&p.fd, name, &np.fd, new_name, flags)?;
            // Renaming onto another name of the same inode removes nothing.
            let replaced =
                victim.filter(|v| rustix::fs::fstat(v).is_ok_and(|v| Some(key_of(&v)) != src));
            let freed = if replaced.is_some() {
                self.removed(replaced)
            } else {
                0
            };
            Ok(((), freed))
        })
    }

    fn link(
        &self,
        _ctx: &Context,
        node: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FsResult<Entry> {
        self.writable()?;
        let new_name = component(new_name)?;
        let inode = self.inode(node)?;
        let np = self.inode(new_parent)?;
        // A name costs the same whatever it names.
        self.in_dirs(&[&np], ENTRY_COST + BLOCK, || {
            rustix::fs::linkat(&inode.fd, "", &np.fd, new_name, AtFlags::EMPTY_PATH)?;
            Ok((self.do_lookup(&np, new_name)?, ENTRY_COST as i64))
        })
    }

    fn open(&self, _ctx: &Context, node: u64, flags: i32) -> FsResult<Opened> {
        let inode = self.inode(node)?;
        let st = rustix::fs::fstat(&inode.fd)?;
        match host_type(&st) {
            S_IFREG => {}
            S_IFDIR => return Err(Errno::ISDIR),
            S_IFLNK => return Err(Errno::LOOP),
            // Device nodes, FIFOs and sockets are never opened on the host.
            _ => return Err(Errno::PERM),
        }
        if self.policy.readonly
            && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0)
        {
            return Err(Errno::ROFS);
        }
        let (file, both_ways) = match reopen(inode.fd.as_fd(), self.io_flags(flags, true)) {
            Ok(f) => (f, true),
            // A host file the server may not write (read-only host mount,
            // immutable file): open it as asked and serve its I/O itself.
            Err(Errno::ROFS | Errno::ACCESS | Errno::PERM | Errno::TXTBSY) => (
                reopen(inode.fd.as_fd(), self.io_flags(flags, false))?,
                false,
            ),
            Err(e) => return Err(e),
        };
        self.add_file(file, inode, both_ways)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<(Entry, Opened)> {
        self.writable()?;
        let name = component(name)?;
        let p = self.inode(parent)?;
        let creator = self.creator(ctx)?;
        let pattr = self.stat_attr(&p)?;
        let host = self.host_mode(mode, false);
        let oflags = self.io_flags(flags, true) | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let created = self.in_dirs(&[&p], ENTRY_COST + NEW_OBJECT, || match rustix::fs::openat(
            &p.fd,
            name,
            oflags,
            Mode::from_raw_mode(host),
        ) {
            Ok(file) => {
                let guest_mode = S_IFREG | (mode & 0o7777);
                let (entry, usage) =
                    made(self.finish_new(&creator, &p, &pattr, name, guest_mode, 0))?;
                Ok((Some((entry, file)), usage))
            }
            Err(Errno::EXIST) if flags & libc::O_EXCL == 0 => Ok((None, 0)),
            Err(e) => Err(e),
        })?;
        if let Some((entry, file)) = created {
            let opened = self.add_file(file, self.inode(entry.node)?, true)?;
            return Ok((entry, opened));
        }
        // Lost a race with another creator: open what is there.
        let entry = self.do_lookup(&p, name)?;
        match self.open(ctx, entry.node, flags) {
            Ok(o) => Ok((entry, o)),
            Err(e) => {
                self.forget(entry.node, 1);
                Err(e)
            }
        }
    }

    fn passthrough_fd(&self, node: u64, fh: u64) -> FsResult<OwnedFd> {
        if let Ok(h) = self.file(fh)
            && h.passthrough.is_some()
        {
            // Opened for both directions (see `io_flags`, or read-only
            // mounts, where reads are all there is): share it.
            return h.file.try_clone().map_err(|_| Errno::MFILE);
        }
        let inode = self.inode(node)?;
        let flags = if self.policy.readonly {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        reopen(inode.fd.as_fd(), flags)
    }

    fn read(&self, _node: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let n = rustix::io::pread(&h.file, &mut buf[..], offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn read_with(
        &self,
        _node: u64,
        fh: u64,
        read: &mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<usize>,
    ) -> FsResult<usize> {
        let h = self.file(fh)?;
        read(h.file.as_fd()).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
    }

    fn write(&self, ctx: &Context, node: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::INVAL)?;
        self.write_with(ctx, node, fh, offset, len, &mut |fd, n| {
            Ok(rustix::io::pwrite(fd, &data[..n], offset)?)
        })
    }

    fn write_with(
        &self,
        _ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        write: &mut dyn FnMut(BorrowedFd<'_>, usize) -> std::io::Result<usize>,
    ) -> FsResult<u32> {
        let io = |e: std::io::Error| Errno::from_io_error(&e).unwrap_or(Errno::IO);
        self.writable()?;
        let h = self.file(fh)?;
        let budget = match &self.policy.budget {
            // Unmetered, or settled when the file closes.
            Some(b) if h.passthrough.is_none() => b,
            _ => return write(h.file.as_fd(), size as usize).map(to_u32).map_err(io),
        };
        let inode = self.inode(node)?;
        let _guard = inode.io.lock().map_err(|_| Errno::IO)?;
        let before = rustix::fs::fstat(&h.file)?;
        let file_size = to_u64(before.st_size);
        let end = offset.saturating_add(size.into());
        // Overwriting inside a fully allocated file allocates nothing.
        let dense = to_u64(allocated(&before)) >= round_up(file_size);
        let estimate = |len: u64| {
            if end <= file_size && dense {
                0
            } else {
                round_up(len) + SLACK
            }
        };
        let mut len = u64::from(size);
        let reserved = match budget.reserve(estimate(len)) {
            Ok(()) => estimate(len),
            Err(_) => {
                // Write what fits below the limit (a short write), never past it.
                let room = budget.available().unwrap_or(0).saturating_sub(SLACK) / 4096 * 4096;
                len = len.min(room);
                if len == 0 {
                    return Err(Errno::NOSPC);
                }
                budget.reserve(estimate(len)).map_err(|_| Errno::NOSPC)?;
                estimate(len)
            }
        };
        let res = write(h.file.as_fd(), len as usize);
        let after = rustix::fs::fstat(&h.file)
            .map(|st| allocated(&st))
            .unwrap_or(allocated(&before));
        self.settle(allocated(&before), after, reserved);
        res.map(to_u32).map_err(io)
    }

    fn fsync(&self, _node: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.file(fh)?;
        if datasync {
            rustix::fs::fdatasync(&h.file)
        } else {
            rustix::fs::fsync(&h.file)
        }
    }

    fn release(&self, _node: u64, fh: u64) {
        let handle = self.files.write().ok().and_then(|mut t| t.remove(&fh));
        if let Some(h) = handle {
            self.file_closed(&h);
        }
    }

    fn opendir(&self, _ctx: &Context, node: u64) -> FsResult<u64> {
        let inode = self.inode(node)?;
        let fd = rustix::fs::openat(
            &inode.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.handle_opened(inode.key)?;
        let Ok(mut dirs) = self.dirs.write() else {
            self.handle_closed(inode.key, fd.as_fd());
            return Err(Errno::IO);
        };
        let fh = self.new_fh();
        let handle = DirHandle {
            fd: Mutex::new(fd),
            key: inode.key,
        };
        dirs.insert(fh, Arc::new(handle));
        Ok(fh)
    }

    fn readdir(
        &self,
        _ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirEntry<'_>, Option<&Entry>) -> bool,
    ) -> FsResult<()> {
        let d = self.dir(fh)?;
        let parent = self.inode(node)?;
        let fd = d.fd.lock().map_err(|_| Errno::IO)?;
        rustix::fs::seek(&*fd, SeekFrom::Start(offset))?;
        let mut buf = [MaybeUninit::uninit(); DIR_BATCH];
        let mut entries = RawDir::new(&*fd, &mut buf);
        while let Some(ent) = entries.next() {
            let ent = ent?;
            let name = OsStr::from_bytes(ent.file_name().to_bytes());
            let dots = name == "." || name == "..";
            let mut de = DirEntry {
                ino: ent.ino(),
                offset: ent.next_entry_cookie(),
                kind: dirent_kind(ent.file_type()),
                name,
            };
            if plus && !dots {
                // An entry that vanished since it was read is skipped.
                let Ok(entry) = self.do_lookup(&parent, name) else {
                    continue;
                };
                de.kind = entry.attr.mode & S_IFMT;
                if add(&de, Some(&entry)) {
                    self.forget(entry.node, 1);
                    break;
                }
            } else {
                if !dots {
                    de.kind = self.entry_kind(&parent, name, de.kind);
                }
                if add(&de, None) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn releasedir(&self, _node: u64, fh: u64) {
        let handle = self.dirs.write().ok().and_then(|mut t| t.remove(&fh));
        if let Some(d) = handle {
            self.dir_closed(&d);
        }
    }

    fn fsyncdir(&self, _node: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let d = self.dir(fh)?;
        let fd = d.fd.lock().map_err(|_| Errno::IO)?;
        if datasync {
            rustix::fs::fdatasync(&*fd)
        } else {
            rustix::fs::fsync(&*fd)
        }
    }

    fn statfs(&self, node: u64) -> FsResult<StatFs> {
        let inode = self.inode(node)?;
        let v = rustix::fs::fstatvfs(&inode.fd)?;
        let mut s = StatFs {
            blocks: v.f_blocks,
            bfree: v.f_bfree,
            bavail: v.f_bavail,
            files: v.f_files,
            ffree: v.f_ffree,
            bsize: to_u32(v.f_bsize),
            namelen: to_u32(v.f_namemax),
            frsize: to_u32(v.f_frsize),
        };
        if let Some(b) = &self.policy.budget
            && let Some(limit) = b.limit()
        {
            // The quota is the size; what is left of it is free.
            let free = b.available().unwrap_or(0) / 4096;
            s.bsize = 4096;
            s.frsize = 4096;
            s.blocks = limit / 4096;
            s.bfree = free.min(v.f_bfree.saturating_mul(to_u64(v.f_frsize)) / 4096);
            s.bavail = s.bfree;
        }
        Ok(s)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        node: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.writable()?;
        Self::check_xattr_name(name)?;
        let inode = self.inode(node)?;
        let flags = XattrFlags::from_bits_retain(flags as u32);
        self.xattr_change(&inode, name, Some(value.len()), |path| {
            rustix::fs::setxattr(path, name, value, flags)
        })
    }

    fn getxattr(&self, node: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        Self::check_xattr_name(name)?;
        let inode = self.inode(node)?;
        let path = proc_path(inode.fd.as_fd());
        // Most values are small: one call without asking the size first.
        let mut buf = vec![0u8; 256];
        loop {
            match rustix::fs::getxattr(&path, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // Larger (or grew in between): ask its size, then again.
                Err(Errno::RANGE) => {
                    buf = vec![0u8; rustix::fs::getxattr_query(&path, name)?.max(1)];
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn listxattr(&self, node: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(node)?;
        let path = proc_path(inode.fd.as_fd());
        let raw = loop {
            let len = rustix::fs::listxattr_query(&path)?;
            let mut buf = vec![0u8; len];
            match rustix::fs::listxattr(&path, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break buf;
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !is_reserved(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    fn removexattr(&self, _ctx: &Context, node: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        Self::check_xattr_name(name)?;
        let inode = self.inode(node)?;
        self.xattr_change(&inode, name, None, |path| {
            rustix::fs::removexattr(path, name)
        })
    }

    fn fallocate(&self, node: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.writable()?;
        let h = self.file(fh)?;
        let inode = self.inode(node)?;
        let flags = FallocateFlags::from_bits(mode as u32).ok_or(Errno::OPNOTSUPP)?;
        let frees = flags.intersects(FallocateFlags::PUNCH_HOLE | FallocateFlags::COLLAPSE_RANGE);
        self.metered(
            &inode,
            h.file.as_fd(),
            |_| if frees { 0 } else { round_up(len) + SLACK },
            || rustix::fs::fallocate(&h.file, flags, offset, len),
        )
    }

    fn lseek(&self, _node: u64, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let h = self.file(fh)?;
        let off = u64::try_from(offset).map_err(|_| Errno::NXIO)?;
        let pos = match whence {
            libc::SEEK_DATA => SeekFrom::Data(off),
            libc::SEEK_HOLE => SeekFrom::Hole(off),
            libc::SEEK_SET => SeekFrom::Start(off),
            _ => return Err(Errno::INVAL),
        };
        rustix::fs::seek(&h.file, pos).map(|p| i64::try_from(p).unwrap_or(i64::MAX))
    }

    fn copy_file_range(
        &self,
        _node_in: u64,
        fh_in: u64,
        offset_in: u64,
        node_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        self.writable()?;
        let src = self.file(fh_in)?;
        let dst = self.file(fh_out)?;
        let inode = self.inode(node_out)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
        self.metered(
            &inode,
            dst.file.as_fd(),
            |_| round_up(len as u64) + SLACK,
            || {
                let (mut off_in, mut off_out) = (offset_in, offset_out);
                rustix::fs::copy_file_range(
                    &src.file,
                    Some(&mut off_in),
                    &dst.file,
                    Some(&mut off_out),
                    len,
                )
                .map(to_u64)
            },
        )
    }

    fn destroy(&self) {
        // Closed like any release: unlinked files give their space back.
        let files = self.files.write().map(|mut t| std::mem::take(&mut *t));
        for h in files.into_iter().flat_map(HashMap::into_values) {
            self.file_closed(&h);
        }
        let dirs = self.dirs.write().map(|mut t| std::mem::take(&mut *t));
        for d in dirs.into_iter().flat_map(HashMap::into_values) {
            self.dir_closed(&d);
        }
        if let Ok(mut t) = self.inodes.write() {
            t.by_node.retain(|&n, _| n == ROOT_NODE);
            t.by_key.retain(|_, n| *n == ROOT_NODE);
        }
    }
}
