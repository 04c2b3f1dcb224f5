//! The transport-neutral filesystem interface.
//!
//! Transports (FUSE on `/dev/fuse` today, vhost-user virtio-fs later) decode
//! requests into calls of [`FileSystem`] and encode the plain results below
//! back into their wire format. Nothing here knows about any transport.
//!
//! User and group ids are the guest's (a sandbox's own ids, 0 being its
//! root): a transport whose requests carry host ids translates them on the
//! way in and out.

use std::ffi::OsStr;

pub use rustix::io::Errno;

/// Result of a filesystem operation: an errno for the client on failure.
pub type FsResult<T> = Result<T, Errno>;

/// Node id of the served root.
pub const ROOT_NODE: u64 = 1;

/// The owner or group shown for a host id that has no guest id. No guest
/// process has it, so it grants nobody owner or group rights; kernels show
/// it as their overflow id (65534).
pub const NO_ID: u32 = u32::MAX;

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Caller's filesystem uid (guest id).
    pub uid: u32,
    /// Caller's filesystem gid (guest id).
    pub gid: u32,
}

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Time {
    /// Whole seconds.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

/// Attributes as the client sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number shown to the client.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: Time,
    /// Last modification.
    pub mtime: Time,
    /// Last status change.
    pub ctime: Time,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner (guest id, or [`NO_ID`]).
    pub uid: u32,
    /// Group (guest id, or [`NO_ID`]).
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

/// A looked-up node: the client holds one reference per entry returned until
/// it calls [`FileSystem::forget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Node id, stable while referenced.
    pub node: u64,
    /// Its attributes.
    pub attr: Attr,
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// The server's current time.
    Now,
    /// A given time.
    At(Time),
}

/// Attribute changes of one `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (the file type part is ignored).
    pub mode: Option<u32>,
    /// New owner (guest id).
    pub uid: Option<u32>,
    /// New group (guest id).
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// An opened file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Handle passed back with every I/O on it.
    pub fh: u64,
    /// The transport may let the kernel do I/O on the host file directly
    /// (the policy has nothing to check on reads and writes of this file).
    pub passthrough: bool,
}

/// One directory entry.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    /// Inode number shown to the client.
    pub ino: u64,
    /// Cookie to continue reading after this entry.
    pub offset: u64,
    /// File type bits (`S_IFMT` part of a mode).
    pub kind: u32,
    /// Entry name.
    pub name: &'a OsStr,
}

/// Filesystem statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `frsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// A filesystem served to a client, in terms of node ids and handles.
///
/// Every method answers one client request; errors are errnos for the client.
/// Implementations must never panic on client input.
pub trait FileSystem: Send + Sync + 'static {
    /// Finds `name` in directory `parent` and takes a reference on it.
    fn lookup(&self, ctx: &Context, parent: u64, name: &OsStr) -> FsResult<Entry>;
    /// Drops `count` references on `node`.
    fn forget(&self, node: u64, count: u64);
    /// Current attributes.
    fn getattr(&self, node: u64) -> FsResult<Attr>;
    /// Changes attributes; `fh` is an open handle when the client has one.
    fn setattr(&self, ctx: &Context, node: u64, fh: Option<u64>, set: &SetAttr) -> FsResult<Attr>;
    /// Target of a symbolic link.
    fn readlink(&self, node: u64) -> FsResult<Vec<u8>>;
    /// Creates a regular file, device node, FIFO or socket.
    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<Entry>;
    /// Creates a directory.
    fn mkdir(&self, ctx: &Context, parent: u64, name: &OsStr, mode: u32) -> FsResult<Entry>;
    /// Removes a non-directory.
    fn unlink(&self, ctx: &Context, parent: u64, name: &OsStr) -> FsResult<()>;
    /// Removes an empty directory.
    fn rmdir(&self, ctx: &Context, parent: u64, name: &OsStr) -> FsResult<()>;
    /// Creates a symbolic link to `target`.
    fn symlink(&self, ctx: &Context, parent: u64, name: &OsStr, target: &OsStr) -> FsResult<Entry>;
    /// Renames; `flags` are `renameat2` flags.
    fn rename(
        &self,
        ctx: &Context,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()>;
    /// Adds a hard link to `node`.
    fn link(&self, ctx: &Context, node: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Entry>;
    /// Opens a file; `flags` are `open(2)` flags.
    fn open(&self, ctx: &Context, node: u64, flags: i32) -> FsResult<Opened>;
    /// Creates and opens a file.
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<(Entry, Opened)>;
    /// A host descriptor the transport may hand to the kernel for passthrough
    /// I/O on `node` (only asked for after open `fh` allowed it).
    fn passthrough_fd(&self, node: u64, fh: u64) -> FsResult<std::os::fd::OwnedFd>;
    /// Reads up to `size` bytes at `offset`.
    fn read(&self, node: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>>;
    /// Reads by handing the open host file of `fh` to `read`, which reads
    /// it itself (a transport that reads straight into client memory saves
    /// copying the data twice); returns what `read` returns. Reads have no
    /// policy to check beyond the open. Transports fall back to
    /// [`FileSystem::read`] on `NOSYS`, which the default returns.
    fn read_with(
        &self,
        node: u64,
        fh: u64,
        read: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>) -> std::io::Result<usize>,
    ) -> FsResult<usize> {
        let _ = (node, fh, read);
        Err(Errno::NOSYS)
    }
    /// Writes `data` at `offset`, returning how much was written.
    fn write(&self, ctx: &Context, node: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32>;
    /// Writes up to `size` bytes at `offset` by handing the open host file
    /// and a length to `write`, which writes that many bytes of the
    /// client's data at `offset` itself (a transport writing straight from
    /// client memory saves a copy); the policy checks and meters around it
    /// as for [`FileSystem::write`] (the length is shorter near the quota).
    /// Transports fall back to [`FileSystem::write`] on `NOSYS`, which the
    /// default returns.
    #[allow(clippy::too_many_arguments)]
    fn write_with(
        &self,
        ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        write: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>, usize) -> std::io::Result<usize>,
    ) -> FsResult<u32> {
        let _ = (ctx, node, fh, offset, size, write);
        Err(Errno::NOSYS)
    }
    /// Flushes a file to stable storage.
    fn fsync(&self, node: u64, fh: u64, datasync: bool) -> FsResult<()>;
    /// Closes a file handle.
    fn release(&self, node: u64, fh: u64);
    /// Opens a directory for reading.
    fn opendir(&self, ctx: &Context, node: u64) -> FsResult<u64>;
    /// Lists entries after cookie `offset`, calling `add` for each until it
    /// returns `true` (buffer full). With `plus`, each entry other than `.`
    /// and `..` comes with a looked-up [`Entry`] (one reference taken; the
    /// implementation drops it again when `add` refuses the entry).
    fn readdir(
        &self,
        ctx: &Context,
        node: u64,
        fh: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirEntry<'_>, Option<&Entry>) -> bool,
    ) -> FsResult<()>;
    /// Closes a directory handle.
    fn releasedir(&self, node: u64, fh: u64);
    /// Flushes a directory to stable storage.
    fn fsyncdir(&self, node: u64, fh: u64, datasync: bool) -> FsResult<()>;
    /// Filesystem statistics.
    fn statfs(&self, node: u64) -> FsResult<StatFs>;
    /// Sets an extended attribute; `flags` are `setxattr(2)` flags.
    fn setxattr(
        &self,
        ctx: &Context,
        node: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()>;
    /// Reads an extended attribute.
    fn getxattr(&self, node: u64, name: &OsStr) -> FsResult<Vec<u8>>;
    /// Lists extended attribute names, each NUL terminated.
    fn listxattr(&self, node: u64) -> FsResult<Vec<u8>>;
    /// Removes an extended attribute.
    fn removexattr(&self, ctx: &Context, node: u64, name: &OsStr) -> FsResult<()>;
    /// Allocates or deallocates space; `mode` are `fallocate(2)` flags.
    fn fallocate(&self, node: u64, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()>;
    /// Repositions for `SEEK_DATA` / `SEEK_HOLE` and friends.
    fn lseek(&self, node: u64, fh: u64, offset: i64, whence: i32) -> FsResult<i64>;
    /// Copies a byte range between open files.
    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        node_in: u64,
        fh_in: u64,
        offset_in: u64,
        node_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u64>;
    /// The client went away: release everything.
    fn destroy(&self);
}
