//! Listening on the vhost-user socket and running one session.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server as FuseServer;
use msb_fsserver::ServeConfig;
use msb_fsserver::filesystem::FileSystem;
use msb_fsserver::policy::{PolicyError, PolicyFs};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::adapter::{Adapter, Caching};
use crate::backend::{Backend, worker};

/// Errors of starting or running a virtio-fs server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The served directory is unusable under the policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server threads could not start.
    #[error("cannot start the server threads")]
    Spawn(#[source] io::Error),
    /// The vhost-user session with the frontend failed.
    #[error("the vhost-user session failed")]
    Session(#[source] io::Error),
}

/// A virtio-fs server for one frontend (QEMU). Dropping it stops it.
pub struct Server {
    socket: PathBuf,
    /// The listening socket, shared with the session thread: shut down to
    /// wake an accept still waiting for a frontend, whatever became of the
    /// socket's path.
    listener: UnixListener,
    /// Set once the owner ends the session: a failure from then on (the
    /// accept that was woken) is the end asked for.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Builds the policy file system that serves the directory `root` (a
/// descriptor as from [`msb_fsserver::open_root`]) under `cfg`, the same as
/// the FUSE transport builds it. Raises the descriptor limit first, since
/// the node cache sizes itself from it.
pub fn policy_fs(root: impl AsFd, cfg: ServeConfig) -> Result<Arc<PolicyFs>, ServerError> {
    msb_fsserver::raise_fd_limit();
    Ok(Arc::new(PolicyFs::new(root, cfg)?))
}

impl Server {
    /// Listens on the unix socket `socket` (replacing a stale socket
    /// there) and serves `fs` to the first frontend that connects, with
    /// `threads` workers answering requests (at least one). Returns once
    /// the socket exists; the session runs on background threads and ends
    /// when the frontend disconnects or the Server is stopped or dropped.
    /// The socket file is removed once a frontend is connected (no second
    /// one is served) or the server ends.
    pub fn start(
        socket: &Path,
        fs: Arc<dyn FileSystem>,
        threads: usize,
    ) -> Result<Server, ServerError> {
        Server::start_with(socket, fs, threads, Caching::Coherent)
    }

    /// [`Server::start`] with what the guest may cache of the share.
    pub fn start_with(
        socket: &Path,
        fs: Arc<dyn FileSystem>,
        threads: usize,
        caching: Caching,
    ) -> Result<Server, ServerError> {
        if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(socket);
        }
        let listener = UnixListener::bind(socket).map_err(|source| ServerError::Listen {
            path: socket.into(),
            source,
        })?;
        let path = socket.to_path_buf();
        let ours = listener.try_clone().map_err(ServerError::Spawn)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("msb-virtiofs".into())
            .spawn(move || {
                let res = run(listener, &path, fs, threads.max(1), caching).or_else(|e| {
                    if asked.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                });
                let _ = std::fs::remove_file(&path);
                res
            });
        match thread {
            Ok(thread) => Ok(Server {
                socket: socket.into(),
                listener: ours,
                stopping,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(socket);
                Err(ServerError::Spawn(e))
            }
        }
    }

    /// Whether the session has ended (the frontend disconnected).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Blocks until the frontend disconnects and everything is released.
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join()
    }

    /// Ends the session now (the guest's mount fails from then on) and
    /// waits until everything is released.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.end();
        self.join()
    }

    fn end(&self) {
        let Some(thread) = &self.thread else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        while !thread.is_finished() {
            // Wake an accept still waiting for a frontend (it fails with
            // EINVAL), and cut the connection to one already there.
            // SAFETY: shutdown(2) of a socket this Server owns.
            unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
            shutdown_connections(&self.socket);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn join(&mut self) -> Result<(), ServerError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(ServerError::Session(io::Error::other(
                "a server thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
        let _ = self.join();
    }
}

/// Serves one frontend on `listener`, then releases everything the guest
/// held.
fn run(
    listener: UnixListener,
    path: &Path,
    fs: Arc<dyn FileSystem>,
    threads: usize,
    caching: Caching,
) -> Result<(), ServerError> {
    let server = Arc::new(FuseServer::new(Adapter::new(fs.clone(), caching)));
    let (jobs, queue) = mpsc::channel();
    let queue = Arc::new(Mutex::new(queue));
    let mut workers = Vec::new();
    let backend = Arc::new(Backend::new(server.clone(), jobs));
    let mut res = Ok(());
    for i in 0..threads {
        let (server, queue) = (server.clone(), queue.clone());
        match std::thread::Builder::new()
            .name(format!("msb-virtiofs-{i}"))
            .spawn(move || worker(server, queue))
        {
            Ok(t) => workers.push(t),
            Err(e) => {
                res = Err(ServerError::Spawn(e));
                break;
            }
        }
    }
    if res.is_ok() {
        res = session(listener, path, backend.clone());
    }
    // The event threads are gone with the session: no new requests come,
    // and the workers end once the queued ones are answered.
    backend.close_jobs();
    drop(backend);
    for w in workers {
        let _ = w.join();
    }
    fs.destroy();
    res
}

fn session(listener: UnixListener, path: &Path, backend: Arc<Backend>) -> Result<(), ServerError> {
    let err = |e: vhost_user_backend::Error| ServerError::Session(io::Error::other(e.to_string()));
    let mut daemon = VhostUserDaemon::new(
        "msb-virtiofs".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(err)?;
    let mut listener = Listener::from(listener);
    daemon.start(&mut listener).map_err(err)?;
    drop(listener);
    let _ = std::fs::remove_file(path);
    match daemon.wait() {
        Ok(()) => Ok(()),
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Shuts down every connection this process accepted on the socket `path`
/// (the vhost-user library keeps its connection to itself; this is how a
/// session is ended from outside).
fn shutdown_connections(path: &Path) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        if accepted_on(fd, path) {
            // SAFETY: shutdown(2) on a descriptor number; if it was closed
            // and reused since the check, it fails or hits a socket that is
            // bound to our path too, which is one of ours.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}

/// Whether `fd` is a connected socket accepted on the unix socket `path`
/// (it carries the listener's address).
fn accepted_on(fd: RawFd, path: &Path) -> bool {
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let mut listening: libc::c_int = 0;
    let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: both calls write at most the given lengths into locals and
    // fail harmlessly on a descriptor that is not a socket.
    let ok = unsafe {
        libc::getsockname(fd, (&raw mut addr).cast(), &mut len) == 0
            && libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&raw mut listening).cast(),
                &mut optlen,
            ) == 0
    };
    if !ok || listening != 0 || addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return false;
    }
    let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let n = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    let bytes: Vec<u8> = addr.sun_path[..n]
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    !bytes.is_empty() && Path::new(OsStr::from_bytes(&bytes)) == path
}
