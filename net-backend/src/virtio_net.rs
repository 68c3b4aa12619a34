//! Frames over virtqueues: reading Ethernet frames the guest transmits, and
//! writing frames into the buffers the guest posts for receiving, with
//! `VIRTIO_NET_F_MRG_RXBUF` so a large frame may span several buffers.
//!
//! Every descriptor chain comes from the guest and is treated as hostile:
//! lengths are checked before anything is copied, and a chain that does not
//! fit is rejected, never trusted.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::gateway::GuestTx;

/// `struct virtio_net_hdr_v1` (with `num_buffers`): 12 bytes.
pub const HDR_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the L4 checksum need not be checked.
pub const F_DATA_VALID: u8 = 2;
/// Largest frame accepted from the guest (an MTU of 65535 plus Ethernet).
pub const MAX_FRAME: usize = 65_535 + 14;

pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("descriptor chain is not readable guest memory")]
    Chain(#[source] virtio_queue::Error),
    #[error("frame of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    #[error("frame of {0} bytes exceeds the largest accepted ({MAX_FRAME})")]
    Oversize(usize),
    #[error("cannot copy the frame out of guest memory")]
    Copy(#[source] io::Error),
}

/// Copies the frame in a TX chain into `buf`; returns the header flags.
pub fn read_frame(chain: Chain, buf: &mut Vec<u8>) -> Result<u8, FrameError> {
    let mem = chain.memory();
    let mut reader = virtio_queue::Reader::new(mem, chain.clone()).map_err(FrameError::Chain)?;
    let total = reader.available_bytes();
    if total < HDR_LEN {
        return Err(FrameError::Short(total));
    }
    let len = total - HDR_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::Oversize(len));
    }
    let mut hdr = [0u8; HDR_LEN];
    reader.read_exact(&mut hdr).map_err(FrameError::Copy)?;
    buf.resize(len, 0);
    reader.read_exact(buf).map_err(FrameError::Copy)?;
    Ok(hdr[0])
}

/// Frames waiting for guest receive buffers, bounded in bytes: when full,
/// [`GuestTx::has_room`] is false and TCP holds its data back.
pub struct Backlog {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    limit: usize,
    pool: Vec<Vec<u8>>,
    offload: bool,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            pool: Vec::new(),
            offload: false,
        }
    }

    /// Whether frames go out with DATA_VALID instead of L4 checksums.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn clear(&mut self) {
        while let Some(f) = self.frames.pop_front() {
            self.recycle(f);
        }
        self.bytes = 0;
    }

    fn recycle(&mut self, f: Vec<u8>) {
        if self.pool.len() < 64 {
            self.pool.push(f);
        }
    }

    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f[..])
    }

    pub fn pop(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.len();
            self.recycle(f);
        }
    }
}

impl GuestTx for Backlog {
    fn has_room(&self) -> bool {
        self.bytes < self.limit
    }

    fn frame(&mut self, len: usize) -> &mut [u8] {
        let mut f = self.pool.pop().unwrap_or_default();
        // Reuse old bytes instead of zeroing: the caller writes all of them.
        if f.len() >= len {
            f.truncate(len);
        } else {
            f.resize(len, 0);
        }
        self.bytes += len;
        self.frames.push_back(f);
        match self.frames.back_mut() {
            Some(f) => &mut f[..],
            None => unreachable!("a frame was just pushed"),
        }
    }

    fn csum_offload(&self) -> bool {
        self.offload
    }
}

/// Result of trying to place one frame in the guest's receive buffers.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// Written; `buffers` chains used.
    Done { buffers: usize },
    /// Not enough buffers posted yet; nothing was consumed.
    NoRoom,
    /// The frame can never fit (no MRG_RXBUF and the buffer is too small):
    /// the buffer was returned unused and the frame must be dropped.
    TooBig,
}

fn writable_len(chain: &Chain) -> usize {
    chain
        .clone()
        .writable()
        .fold(0usize, |acc, d| acc.saturating_add(d.len() as usize))
}

/// Writes `frame` (with a virtio-net header) into the guest's RX queue.
/// `add_used(head, len)` records each used buffer.
pub fn place_frame<Q: QueueT + QueueOwnedT>(
    queue: &mut Q,
    mem: GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
    frame: &[u8],
    mergeable: bool,
    flags: u8,
    mut add_used: impl FnMut(&mut Q, u16, u32),
) -> Result<Placed, virtio_queue::Error> {
    let need = HDR_LEN + frame.len();
    let mut chains: Vec<(Chain, usize)> = Vec::new();
    let mut room = 0usize;
    {
        let mut iter = queue.iter(mem)?;
        while room < need {
            let Some(chain) = iter.next() else { break };
            let len = writable_len(&chain);
            room = room.saturating_add(len);
            chains.push((chain, len));
            if !mergeable {
                break;
            }
        }
    }
    if room < need {
        if !mergeable && !chains.is_empty() {
            // One buffer per frame and this one is too small: hand it back
            // empty rather than stall the queue forever.
            let (chain, _) = chains.remove(0);
            add_used(queue, chain.head_index(), 0);
            return Ok(Placed::TooBig);
        }
        for _ in 0..chains.len() {
            queue.go_to_previous_position();
        }
        return Ok(Placed::NoRoom);
    }
    let count = chains.len();
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = flags;
    // num_buffers (little endian) is the last field of the v1 header.
    hdr[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    let mut rest = frame;
    let mut failed = None;
    for (i, (chain, cap)) in chains.into_iter().enumerate() {
        let head = chain.head_index();
        if failed.is_some() {
            // A bad buffer earlier in this frame: return the rest unused.
            add_used(queue, head, 0);
            continue;
        }
        let mem = chain.memory();
        let res = virtio_queue::Writer::new(mem, chain.clone()).and_then(|mut writer| {
            let mut written = 0;
            if i == 0 {
                writer
                    .write_all(&hdr)
                    .map_err(|_| virtio_queue::Error::InvalidChain)?;
                written += HDR_LEN;
            }
            let n = rest.len().min(cap.saturating_sub(written));
            writer
                .write_all(&rest[..n])
                .map_err(|_| virtio_queue::Error::InvalidChain)?;
            Ok((written + n, n))
        });
        match res {
            Ok((written, n)) => {
                rest = &rest[n..];
                add_used(queue, head, written as u32);
            }
            Err(e) => {
                add_used(queue, head, 0);
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Placed::Done { buffers: count })
}
