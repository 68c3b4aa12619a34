//! `net_chain`: the virtio-net device's descriptor-chain handling — the TX
//! queue read by `read_frame`, the RX queue filled by `place_frame` (with
//! and without `VIRTIO_NET_F_MRG_RXBUF`), used-ring publication and
//! interrupt suppression — through [`NetSession`]'s event handler, the
//! entry the vring worker calls.
//!
//! Input: negotiated features, then the guest's queues (sizes, descriptor
//! tables, buffer contents: see
//! [`GuestQueues`](airlock_testkit::queues::GuestQueues)), then
//! steps: a device event, or a guest turn between events (new available
//! chains, an available index anywhere, rewritten descriptors and
//! buffers). Malformed chains, loops, out-of-range and unmapped addresses,
//! zero lengths and indirect tables all come from there.
//!
//! After every event: the handler succeeded (an error stops the device's
//! worker, so the guest must not be able to cause one) and the device
//! published at most a ring's worth of chains per queue (see
//! `GuestQueues::check_device_used`: buffers may lie on the rings).
//!
//! [`NetSession`]: airlock_net::device::NetSession

use airlock_testkit::queues::GuestQueues;
use airlock_testkit::Input;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use vmm_sys_util::epoll::EventSet;

use super::{gateway_config, shared};
use airlock_net::device::{
    NetSession, Offloads, CONTROL_EVENT, HOST_SOCKETS_EVENT, RX_QUEUE_EVENT, TIMER_EVENT,
    TX_QUEUE_EVENT,
};

const MAX_STEPS: usize = 64;
const RX: usize = 0;
const TX: usize = 1;

pub fn fuzz_net_chain(data: &[u8]) {
    run(data);
}

/// Bytes the device wrote into the guest's receive buffers (for the
/// harness's own tests).
pub fn run(data: &[u8]) -> u64 {
    let mut input = Input::new(data);
    let features = input.u8();
    let mut acked = 0u64;
    if features & 1 != 0 {
        acked |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if features & 2 != 0 {
        acked |= 1 << VIRTIO_NET_F_GUEST_CSUM;
    }
    let event_idx = features & 4 != 0;
    let mtu = if features & 8 != 0 { 1500 } else { 65_520 };
    // Partial checksums and larger TCP segments from the guest: its
    // virtio_net_hdr (flags, gso_type, gso_size, hdr_len, csum_start,
    // csum_offset) comes from the input like the rest of each buffer.
    if features & 16 != 0 {
        acked |= 1 << VIRTIO_NET_F_CSUM;
    }
    if features & 32 != 0 {
        acked |= (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6);
    }
    // Larger segments to the guest.
    if features & 64 != 0 {
        acked |= (1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6);
    }
    let offloads = Offloads {
        csum: true,
        tso: true,
    };

    let session = NetSession::new(gateway_config(mtu), shared(), offloads, None)
        .expect("cannot create the net session");
    let mut queues = GuestQueues::from_input(2, &mut input);
    queues.set_event_idx(event_idx);
    session.acked_features(acked);
    session.set_event_idx(event_idx);
    session
        .update_memory(queues.mem.clone())
        .expect("cannot hand guest memory to the session");

    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let event = match input.u8() % 8 {
            0 | 1 => TX_QUEUE_EVENT,
            2 => RX_QUEUE_EVENT,
            3 => HOST_SOCKETS_EVENT,
            4 => TIMER_EVENT,
            5 => CONTROL_EVENT,
            _ => {
                queues.guest_turn(&mut input);
                continue;
            }
        };
        let before = [queues.device_used_idx(RX), queues.device_used_idx(TX)];
        if let Err(e) = session.handle_event(event, EventSet::IN, &queues.vrings, 0) {
            panic!("event {event} stopped the device: {e}");
        }
        queues.check_device_used(RX, before[RX]);
        queues.check_device_used(TX, before[TX]);
    }
    (0..queues.device_used_idx(RX))
        .map(|n| u64::from(queues.used_elem(RX, n).1))
        .sum()
}
