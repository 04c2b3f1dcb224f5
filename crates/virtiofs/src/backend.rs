//! The vhost-user side: a virtio-fs device whose queues feed FUSE requests
//! to a pool of worker threads.
//!
//! Queue 0 is the high-priority queue (forgets and interrupts, which need
//! no reply worth waiting for): its event thread serves it inline. Queue 1
//! is the request queue: its event thread pops every chain available,
//! answers one itself and hands the rest to the workers, which decode, run
//! and answer each request and return the chain to the guest. Requests
//! the guest issues together thus run in parallel (one thread at a time
//! was several times slower), while a lone request waits for no thread to
//! wake up.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use fuse_backend_rs::api::server::Server as FuseServer;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringState, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::adapter::Adapter;

/// The high-priority queue, then one request queue: guest kernels before
/// 6.11 use only the first request queue anyway.
const NUM_QUEUES: usize = 2;
const HIPRIO_QUEUE: u16 = 0;
const REQUEST_QUEUE: u16 = 1;
/// Largest queue the guest may set up.
const MAX_QUEUE_SIZE: usize = 1024;

type Memory = GuestMemoryMmap<()>;
type Chain = DescriptorChain<Arc<Memory>>;

/// One request for a worker: the chain and the queue to return it to.
pub(crate) struct Job {
    chain: Chain,
    vring: VringRwLock,
    event_idx: bool,
}

/// The device state shared by the vhost-user threads.
pub(crate) struct Backend {
    server: Arc<FuseServer<Adapter>>,
    mem: Mutex<Option<GuestMemoryAtomic<Memory>>>,
    event_idx: Mutex<bool>,
    /// Hands request chains to the workers; taken away to stop them.
    jobs: Mutex<Option<Sender<Job>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Backend {
    pub(crate) fn new(server: Arc<FuseServer<Adapter>>, jobs: Sender<Job>) -> Self {
        Backend {
            server,
            mem: Mutex::new(None),
            event_idx: Mutex::new(false),
            jobs: Mutex::new(Some(jobs)),
        }
    }

    /// Stops handing out requests: the workers end once the queued ones
    /// are answered.
    pub(crate) fn close_jobs(&self) {
        lock(&self.jobs).take();
    }

    /// Pops every available chain of `vring`, passing each batch (what
    /// was available at once) to `each`; with event suppression,
    /// re-checks after enabling notifications so no request that arrived
    /// meanwhile is left waiting.
    fn drain(
        &self,
        vring: &VringRwLock,
        mut each: impl FnMut(Vec<Chain>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(mem) = lock(&self.mem).as_ref().map(|m| m.memory().into_inner()) else {
            return Ok(());
        };
        let event_idx = *lock(&self.event_idx);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mut batch = Vec::new();
            {
                let mut state = vring.get_mut();
                while let Some(c) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                    batch.push(c);
                }
            }
            if !batch.is_empty() {
                each(batch)?;
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

/// Decodes and answers one request, then gives the chain back.
pub(crate) fn serve_chain(
    server: &FuseServer<Adapter>,
    chain: Chain,
    vring: &VringRwLock,
    event_idx: bool,
) {
    let head = chain.head_index();
    let mem = chain.memory();
    let written = match (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain.clone()),
    ) {
        // A request that cannot be decoded (or makes the decoder panic:
        // the guest is hostile) is returned with nothing written; the
        // guest sees it fail, and this thread keeps serving.
        (Ok(r), Ok(w)) => std::panic::catch_unwind(AssertUnwindSafe(|| {
            server.handle_message(r, w.into(), None, None)
        }))
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0),
        _ => 0,
    };
    let mut state = vring.get_mut();
    complete(&mut state, head, written, event_idx);
}

fn complete(state: &mut VringState<GuestMemoryAtomic<Memory>>, head: u16, len: usize, idx: bool) {
    if state
        .add_used(head, u32::try_from(len).unwrap_or(0))
        .is_err()
    {
        return;
    }
    if !idx || state.needs_notification().unwrap_or(true) {
        let _ = state.signal_used_queue();
    }
}

/// A worker: answers requests until the sender is gone.
pub(crate) fn worker(server: Arc<FuseServer<Adapter>>, jobs: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let job = match lock(&jobs).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        serve_chain(&server, job.chain, &job.vring, job.event_idx);
    }
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        *lock(&self.event_idx) = enabled;
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Memory>) -> io::Result<()> {
        *lock(&self.mem) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One event thread per queue, so forgets never wait behind requests.
        (0..NUM_QUEUES).map(|q| 1 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one, an event thread could never be told to end.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected event on a queue"));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other("event for an unknown queue"))?;
        let event_idx = *lock(&self.event_idx);
        match device_event {
            HIPRIO_QUEUE => self.drain(vring, |batch| {
                for chain in batch {
                    serve_chain(&self.server, chain, vring, event_idx);
                }
                Ok(())
            }),
            REQUEST_QUEUE => {
                let jobs = lock(&self.jobs).clone();
                let Some(jobs) = jobs else {
                    return Ok(());
                };
                self.drain(vring, |mut batch| {
                    // Work first: this thread answers one request itself
                    // and the workers take the rest, so a lone request
                    // (sequential I/O) waits for no thread to wake up.
                    let own = batch.pop();
                    for chain in batch {
                        jobs.send(Job {
                            chain,
                            vring: vring.clone(),
                            event_idx,
                        })
                        .map_err(|_| io::Error::other("the workers are gone"))?;
                    }
                    if let Some(chain) = own {
                        serve_chain(&self.server, chain, vring, event_idx);
                    }
                    Ok(())
                })
            }
            _ => Err(io::Error::other("event for an unknown queue")),
        }
    }
}
