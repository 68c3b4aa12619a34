//! The vhost-user frontend: connects to a daemon's socket the way QEMU does
//! (features, memory table, vrings, enable) and owns the harness' guest
//! memory and queues.

use std::path::Path;

use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::VhostBackend;

use super::memory::{self, GuestMem};
use super::virtq::{self, SplitQueue};

/// Errors setting up a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vhost-user request failed.
    #[error("vhost-user {request} failed")]
    VhostUser {
        /// The request.
        request: &'static str,
        /// The protocol error.
        #[source]
        source: vhost::Error,
    },
    /// The daemon lacks a feature the harness needs.
    #[error("the daemon does not offer {0}")]
    Missing(&'static str),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// A queue could not be set up.
    #[error(transparent)]
    Queue(#[from] virtq::Error),
}

/// virtio 1.0 (`VIRTIO_F_VERSION_1`).
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// What to negotiate.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Queues to start (index 0 up).
    pub queues: usize,
    /// Size of each.
    pub queue_size: u16,
    /// Device feature bits wanted (taken where offered); VERSION_1 is required.
    pub features: u64,
    /// Guest memory size.
    pub memory: usize,
}

/// A connected, running vhost-user device.
pub struct Device {
    frontend: Frontend,
    /// The guest memory.
    pub mem: GuestMem,
    /// The started queues.
    pub queues: Vec<SplitQueue>,
    /// Feature bits acknowledged.
    pub acked: u64,
}

fn vu(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::VhostUser { request, source }
}

impl Device {
    /// Connects to `socket` and starts `setup.queues` queues.
    pub fn connect(socket: &Path, setup: Setup) -> Result<Device, Error> {
        let mut frontend = Frontend::connect(socket, setup.queues as u64).map_err(vu("connect"))?;
        frontend.set_owner().map_err(vu("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(vu("GET_FEATURES"))?;
        if offered & F_VERSION_1 == 0 {
            return Err(Error::Missing("VIRTIO_F_VERSION_1"));
        }
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let acked = offered & (setup.features | F_VERSION_1 | protocol);
        frontend.set_features(acked).map_err(vu("SET_FEATURES"))?;
        if acked & protocol != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(vu("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
                .map_err(vu("SET_PROTOCOL_FEATURES"))?;
        }
        let mut mem = GuestMem::new(setup.memory)?;
        let event_idx = acked & F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(setup.queues);
        for _ in 0..setup.queues {
            queues.push(SplitQueue::new(&mut mem, setup.queue_size, event_idx)?);
        }
        frontend
            .set_mem_table(&mem.regions()?)
            .map_err(vu("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            frontend
                .set_vring_num(i, q.size())
                .map_err(vu("SET_VRING_NUM"))?;
            frontend
                .set_vring_base(i, 0)
                .map_err(vu("SET_VRING_BASE"))?;
            frontend
                .set_vring_addr(i, &q.config(&mem)?)
                .map_err(vu("SET_VRING_ADDR"))?;
            frontend
                .set_vring_call(i, q.call_fd())
                .map_err(vu("SET_VRING_CALL"))?;
            frontend
                .set_vring_kick(i, q.kick_fd())
                .map_err(vu("SET_VRING_KICK"))?;
        }
        if acked & protocol != 0 {
            for i in 0..queues.len() {
                frontend
                    .set_vring_enable(i, true)
                    .map_err(vu("SET_VRING_ENABLE"))?;
            }
        }
        Ok(Device {
            frontend,
            mem,
            queues,
            acked,
        })
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.acked & F_EVENT_IDX != 0
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Stop the rings before the memory goes away (as QEMU does on reset).
        for i in 0..self.queues.len() {
            let _ = self.frontend.get_vring_base(i);
        }
    }
}
