//! The volume filesystem server over vhost-user virtio-fs, for VM
//! sandboxes.
//!
//! The second transport of [`msb_fsserver`]'s policy file system: QEMU
//! (the vhost-user frontend) connects to a unix socket, and the guest
//! kernel's virtio-fs driver sends FUSE requests over virtqueues in guest
//! memory (`-object memory-backend-memfd,...,share=on`). `fuse-backend-rs`
//! decodes them from the descriptor chains; an adapter turns them into
//! calls of [`msb_fsserver::filesystem::FileSystem`], so containment,
//! read-only (EROFS), the quota (ENOSPC, from the same shared budget file
//! as the FUSE transport's, so a volume served to a VM and to a namespace
//! sandbox at once has one limit), stat virtualization and host
//! permissions are exactly [`PolicyFs`](msb_fsserver::policy::PolicyFs)'s.
//!
//! Differences from the FUSE transport, all on the wire only:
//! - ids are the guest's own (its root is 0), which is what the policy
//!   works in, so nothing is translated;
//! - no passthrough (the guest has no host descriptors): all data goes
//!   through the server, and the policy settles usage as usual;
//! - init flags: no writeback cache (writes must meet the quota when they
//!   happen); `HANDLE_KILLPRIV_V2`, unlike FUSE: the server clears
//!   setuid/setgid on a write, truncation or chown that asks for it (in the
//!   virtual mode of a stat-virtualization record), which spares the guest
//!   a `security.capability` lookup before every write.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! let root = msb_fsserver::open_root(Path::new("/srv/vol"), false)?;
//! # let cfg: msb_fsserver::ServeConfig = todo!();
//! let fs = msb_virtiofs::policy_fs(&root, cfg)?;
//! let server = msb_virtiofs::Server::start(Path::new("/run/vol.sock"), fs, 4)?;
//! // qemu ... -chardev socket,id=fs0,path=/run/vol.sock
//! //          -device vhost-user-fs-device,chardev=fs0,tag=vol
//! server.wait()?;
//! # Ok(()) }
//! ```

mod adapter;
mod backend;
mod server;

pub use adapter::Caching;
pub use server::{Server, ServerError, policy_fs};
