//! Draining a virtqueue: every available descriptor chain, in batches,
//! until the guest has added no more.

use std::io;

use airlock_common::ratelimited;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::runner::{GuestMemory, Vring};

/// A descriptor chain in guest memory.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>;

/// Takes every available chain off the queue under one lock; `None` when
/// nothing can be taken (the available index is more than a queue ahead,
/// or a ring is outside guest memory).
fn available(vring: &Vring, mem: &GuestMemory, queue: &str) -> Option<Vec<Chain>> {
    let mut state = vring.get_mut();
    match state.get_queue_mut().iter(mem.memory()) {
        Ok(iter) => Some(iter.collect()),
        Err(e) => {
            ratelimited!(log::Level::Warn, "guest {queue} queue: {e}");
            None
        }
    }
}

/// Hands every chain the guest made available on `vring` to `batch`, one
/// batch per pass, until no more arrive. With `event_idx`, guest
/// notifications are off while a batch is handled and the queue is checked
/// again after they are back on, so chains added meanwhile are not missed.
///
/// A queue in an invalid state (its available index more than a queue
/// ahead) yields an empty batch and ends the drain: nothing can be
/// consumed from it, and going round again on "more available" would spin
/// forever.
pub fn drain(
    vring: &Vring,
    mem: &GuestMemory,
    event_idx: bool,
    queue: &str,
    mut batch: impl FnMut(Vec<Chain>) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        if event_idx {
            vring.disable_notification().map_err(io::Error::other)?;
        }
        let chains = available(vring, mem, queue);
        let broken = chains.is_none();
        batch(chains.unwrap_or_default())?;
        if !event_idx || !vring.enable_notification().map_err(io::Error::other)? || broken {
            return Ok(());
        }
    }
}
