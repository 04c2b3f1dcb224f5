//! The volume filesystem server: a policy passthrough filesystem.
//!
//! Bind mounts and directory volumes reach a sandbox through this server. It
//! is built in two layers, like virtiofsd:
//!
//! - [`policy::PolicyFs`] implements [`filesystem::FileSystem`] over a host
//!   directory with plain Rust types: containment, read-only mounts, the
//!   volume quota ([`msb_quota::Budget`]) and stat virtualization live here.
//! - a transport decodes client requests into those calls. Today that is
//!   `/dev/fuse` (the host kernel's FUSE client, through `fuser`); a
//!   vhost-user virtio-fs transport would be a second adapter over the same
//!   trait.
//!
//! # Stat virtualization
//!
//! With `strict` or `relaxed`, the guest-visible owner, group, mode and file
//! type of a host file live in a record in the `user.msb.meta` xattr (format
//! in [`record`]). Host files keep mode 0600/0700 (`private`) or the guest's
//! rwx bits with that floor (`mirror`); never setuid/setgid, never the guest's
//! uid/gid. Files without a record appear owned by [`ServeConfig::owner`].
//! `strict` checks at start that the root takes user xattrs and stores guest
//! symlinks, device nodes, FIFOs and sockets as plain host files carrying the
//! record; `relaxed` keeps real host symlinks (which cannot carry a record,
//! so they show the owner and refuse chown). `off` shows raw host metadata,
//! refuses chown with EPERM and device nodes with EOPNOTSUPP. Every xattr
//! under `user.msb.` is invisible to clients: filtered from listings, and
//! reading, setting or removing it fails with EPERM. A corrupt record gives
//! EIO.
//!
//! # User and group ids
//!
//! The policy works in guest ids ([`ServeConfig::id_map`] and
//! [`ServeConfig::gid_map`] relate them to host user and group ids):
//! callers, records and [`ServeConfig::owner`] are guest ids, 0 being the
//! sandbox's root. The FUSE transport translates, since its requests carry
//! host ids (`msb volume mount` on the host uses [`IdMap::IDENTITY`]),
//! except on a mount made in the sandbox's own user namespace
//! ([`serve_guest`]), where the kernel already did. In `off` the host owner is shown as its guest id
//! ([`filesystem::NO_ID`] when it has none: no guest process owns it), and
//! new objects belong on disk to their creator's host ids. Under
//! virtualization new host objects belong to the host ids of guest root.
//! So nothing a sandbox creates is owned by host root.
//!
//! # setuid and setgid
//!
//! The server runs the FUSE connection without `HANDLE_KILLPRIV(_V2)`, so
//! the kernel applies the same rules itself: a write or truncate by a caller
//! without `CAP_FSETID`, and every chown, arrives as an explicit mode change
//! clearing the bits, which the server stores like any chmod.
//!
//! Served mounts are always `nosuid,nodev`: a record can be planted by
//! anything that writes the volume's host files (an imported archive, an
//! earlier sandbox), so no device node or setuid bit it claims may take
//! effect.
//!
//! # Quota
//!
//! Usage is every byte the volume holds, as [`msb_quota::usage`] defines it
//! for the scanner too: a fixed cost per name (empty files, directories and
//! hard links count), each inode's allocation (long symlink targets and
//! directory blocks included) and client xattrs. Writes, fallocate,
//! extending truncates, copies, new names and xattrs reserve a worst case
//! from the shared budget first (ENOSPC if refused; a write that only partly
//! fits is shortened), and settle against what the host really allocated
//! afterwards, including the growth of the directories involved; removals,
//! truncates and renames over a name credit what they free. The space of an
//! unlinked file (or directory) this server still has open stays counted
//! until its last handle closes. `statfs` reports the quota as size and what
//! is left as free.
//! Without a limit, file data moves by FUSE passthrough (the kernel reads
//! and writes the host file directly) and a file's growth is settled into
//! the usage counter when its last handle closes.
//!
//! # Descriptors
//!
//! Every node the kernel references is resolved to an `O_PATH` descriptor,
//! but only a bounded number stay open (half the descriptor limit, at most
//! 65536): older ones are closed and reopened from their kernel file handle
//! (`open_by_handle_at`) when used again, so a tree of any size can be
//! served within the process limits.
//!
//! An open directory holds one host descriptor and no listing: each read
//! continues on the host directory from the host's own cookie (`d_off`),
//! so memory does not grow with directory size or open handles, and entries
//! added or removed meanwhile never repeat unchanged ones.
//!
//! # Caching
//!
//! The kernel caches entries, negative lookups and attributes for one
//! second (FUSE transport); changes made through the mount refresh its
//! copy at once, so only host-side changes can be that late.
//!
//! The server itself keeps the stat-virtualization records it read last
//! (of 16,000 to 32,000 objects, on the root's file system when that is
//! ext4, XFS, Btrfs or tmpfs), each only while its object's ctime is
//! unchanged, which every xattr change moves: a client that dropped its
//! caches looks an unchanged tree up again without an xattr read per
//! object, and a record changed by anyone shows at the next lookup.

pub mod filesystem;
mod fuse;
pub mod host;
pub mod policy;
pub mod record;
mod server;

pub use msb_spec::{HostPerms, IdMap, StatVirt};
pub use server::{
    FsServerError, ServeConfig, Server, detach_mounts_of, is_served_mount, mount, mount_data,
    mount_detached, open_root, raise_fd_limit, serve, serve_guest, unmount_path,
};
