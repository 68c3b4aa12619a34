//! What the two vhost-user device daemons (airlock-net, airlock-fs) share
//! on the vhost-user side:
//!
//! - [`runner`]: serving one frontend (QEMU) after another on a listening
//!   socket, with a fresh device session, vring workers and guest memory
//!   each time;
//! - [`queue`]: draining a virtqueue the guest kicked — notification
//!   suppression with EVENT_IDX, and the guard against an available index
//!   more than a queue ahead (which used to make both devices spin).

pub mod queue;
pub mod runner;

pub use queue::{drain, Chain};
pub use runner::{GuestMemory, LifecycleArgs, RunError, Session, Vring, Worker};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

/// The vhost-user protocol features both devices offer: several queues,
/// replies to every request QEMU asks one for, and memory slots added one
/// at a time.
pub const PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);

/// The virtio features every Airlock device offers: virtio 1.x, indirect
/// descriptors, event-index notification suppression, and vhost-user
/// protocol features.
pub const BASE_FEATURES: u64 = (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// What the frontend set up for a device session: the guest's memory and
/// whether the rings use event indexes.
#[derive(Default)]
pub struct GuestState {
    mem: RwLock<Option<GuestMemory>>,
    event_idx: AtomicBool,
}

impl GuestState {
    /// The guest's memory, once the frontend has sent it.
    pub fn memory(&self) -> Option<GuestMemory> {
        self.mem.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_memory(&self, mem: GuestMemory) {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
    }

    /// Forgets the guest's memory (it went away).
    pub fn clear(&self) {
        self.mem.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed)
    }

    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }
}
