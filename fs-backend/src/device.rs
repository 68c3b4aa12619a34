//! The vhost-user-fs device: virtqueues in, FUSE server out.
//!
//! Queue 0 is the high-priority queue (FORGET, INTERRUPT), queue 1 the
//! request queue. Each descriptor chain holds one FUSE request (readable
//! part) and room for its reply (writable part); `fuse_backend_rs::Server`
//! parses the request and calls [`AirlockFs`](crate::filesystem::AirlockFs).
//!
//! Requests are served on the vring worker thread, or, with
//! `--thread-pool-size N`, handed to N worker threads so a slow request
//! (fsync, a large read) doesn't hold up the queue.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use airlock_common::ratelimited;
use airlock_vhost::{Chain, GuestMemory, GuestState, Session, Vring};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::filesystem::AirlockFs;

/// Event id of the high-priority queue.
pub const HIPRIO_QUEUE_EVENT: u16 = 0;
/// Event id of the request queue.
pub const REQUEST_QUEUE_EVENT: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Largest queue the device accepts (libvirt's default `queue='1024'`).
pub const MAX_QUEUE_SIZE: usize = 1024;

type FuseServer = Server<Arc<AirlockFs>>;
type Job = Box<dyn FnOnce() + Send>;

/// Fixed set of threads serving requests off the vring worker.
struct Pool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    fn new(size: usize) -> io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(size);
        for i in 0..size {
            let rx = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fs-pool-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job();
                    })?,
            );
        }
        Ok(Pool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    fn spawn(&self, job: Job) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Lets queued jobs finish, then joins the threads.
    fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}

/// One frontend connection's virtio-fs device.
pub struct FsSession {
    server: Arc<FuseServer>,
    fs: Arc<AirlockFs>,
    /// Forget the guest's inodes and handles when it leaves (one file
    /// system instance serving frontend after frontend, `--sandbox chroot`).
    reset_on_detach: bool,
    guest: GuestState,
    pool: Option<Pool>,
}

impl FsSession {
    pub fn new(
        fs: Arc<AirlockFs>,
        thread_pool_size: usize,
        reset_on_detach: bool,
    ) -> io::Result<Self> {
        let pool = if thread_pool_size > 0 {
            Some(Pool::new(thread_pool_size)?)
        } else {
            None
        };
        Ok(FsSession {
            server: Arc::new(Server::new(fs.clone())),
            fs,
            reset_on_detach,
            guest: GuestState::default(),
            pool,
        })
    }

    /// Serves one FUSE request and returns its descriptor to the guest.
    /// A malformed request is answered with an empty used element (the
    /// guest's request fails) and a rate-limited log line; never a panic.
    fn serve(server: &FuseServer, vring: &Vring, chain: Chain) {
        let head = chain.head_index();
        let mem = chain.memory();
        let reply_len = match (
            Reader::from_descriptor_chain(mem, chain.clone()),
            VirtioFsWriter::new(mem, chain.clone()),
        ) {
            (Ok(reader), Ok(writer)) => {
                match server.handle_message(reader, writer.into(), None, None) {
                    Ok(n) => n,
                    Err(e) => {
                        ratelimited!(
                            log::Level::Warn,
                            "cannot handle FUSE request from the guest: {e}"
                        );
                        0
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                ratelimited!(
                    log::Level::Warn,
                    "malformed descriptor chain from the guest: {e}"
                );
                0
            }
        };
        if let Err(e) = vring.add_used(head, reply_len as u32) {
            ratelimited!(
                log::Level::Warn,
                "cannot return descriptor {head} to the guest: {e}"
            );
        }
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    ratelimited!(log::Level::Warn, "cannot notify the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => ratelimited!(log::Level::Warn, "cannot read the guest's event index: {e}"),
        }
    }

    fn process_queue(&self, vring: &Vring, queue: &str) -> io::Result<()> {
        let Some(mem) = self.guest.memory() else {
            return Ok(());
        };
        airlock_vhost::drain(vring, &mem, self.guest.event_idx(), queue, |chains| {
            for chain in chains {
                match &self.pool {
                    None => Self::serve(&self.server, vring, chain),
                    Some(pool) => {
                        let server = self.server.clone();
                        let vring = vring.clone();
                        pool.spawn(Box::new(move || Self::serve(&server, &vring, chain)));
                    }
                }
            }
            Ok(())
        })
    }
}

impl VhostUserBackend for FsSession {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        airlock_vhost::BASE_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        airlock_vhost::PROTOCOL_FEATURES
    }

    fn set_event_idx(&self, enabled: bool) {
        self.guest.set_event_idx(enabled);
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        self.guest.set_memory(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        airlock_vhost::runner::exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        match device_event {
            HIPRIO_QUEUE_EVENT | REQUEST_QUEUE_EVENT => {
                let vring = vrings
                    .get(usize::from(device_event))
                    .ok_or_else(|| io::Error::other("queue event without a vring"))?;
                let queue = if device_event == HIPRIO_QUEUE_EVENT {
                    "high-priority"
                } else {
                    "request"
                };
                self.process_queue(vring, queue)
            }
            other => Err(io::Error::other(format!("unknown device event {other}"))),
        }
    }
}

impl Session for FsSession {
    fn detach(&self) {
        if let Some(pool) = &self.pool {
            pool.shutdown();
        }
        self.guest.clear();
        if self.reset_on_detach {
            self.fs.destroy();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Duration;

    use airlock_testkit::queues::GuestQueues;
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};

    use super::*;
    use crate::filesystem::Policy;
    use crate::idmap::IdMap;

    /// With EVENT_IDX, an available index more than a queue ahead leaves
    /// nothing to consume and "more available" true forever: the handler
    /// must give up instead of going round again (it spun at 100% CPU
    /// with the queue dead; found by the fs_chain fuzz target).
    #[test]
    fn an_available_index_a_queue_ahead_does_not_make_the_handler_spin() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let (finished, done) = mpsc::channel();
        std::thread::spawn(move || {
            let inner = PassthroughFs::new(Config {
                root_dir: root.to_string_lossy().into_owned(),
                do_import: true,
                ..Default::default()
            })
            .unwrap();
            let policy = Policy {
                readonly: false,
                uid_map: IdMap::default(),
                gid_map: IdMap::default(),
                announce_submounts: false,
                audit: None,
            };
            let session = FsSession::new(
                Arc::new(AirlockFs::new(inner, Path::new(&root), policy)),
                0,
                false,
            )
            .unwrap();
            let mut queues = GuestQueues::new(&[16, 16]);
            queues.set_event_idx(true);
            session.set_event_idx(true);
            session.update_memory(queues.mem.clone()).unwrap();
            queues.set_avail_idx(usize::from(REQUEST_QUEUE_EVENT), 100);
            let res = session.handle_event(REQUEST_QUEUE_EVENT, EventSet::IN, &queues.vrings, 0);
            let _ = finished.send(res.is_ok());
        });
        assert_eq!(
            done.recv_timeout(Duration::from_secs(30)),
            Ok(true),
            "the request queue handler did not come back"
        );
    }
}
