//! Frames over virtqueues: reading Ethernet frames the guest transmits, and
//! writing frames into the buffers the guest posts for receiving, with
//! `VIRTIO_NET_F_MRG_RXBUF` so a large frame may span several buffers.
//!
//! Every descriptor chain comes from the guest and is treated as hostile:
//! lengths are checked before anything is copied, and a chain that does not
//! fit is rejected, never trusted.

use std::io::{self, Read, Write};

use airlock_netcore::{FrameOffload, Segmentation, TxPartial, TCP_CSUM_OFFSET};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

/// `struct virtio_net_hdr_v1` (with `num_buffers`): 12 bytes.
pub(crate) const HDR_LEN: usize = 12;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// Largest frame accepted from the guest (an MTU of 65535 plus Ethernet).
pub(crate) const MAX_FRAME: usize = 65_535 + 14;

pub(crate) type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("descriptor chain is not readable guest memory")]
    Chain(#[source] virtio_queue::Error),
    #[error("frame of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    #[error("frame of {0} bytes exceeds the largest accepted ({MAX_FRAME})")]
    Oversize(usize),
    #[error("cannot copy the frame out of guest memory")]
    Copy(#[source] io::Error),
}

/// `struct virtio_net_hdr_v1` without `num_buffers` (little endian, as
/// VIRTIO_F_VERSION_1 has it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl NetHdr {
    pub(crate) fn parse(raw: &[u8; HDR_LEN]) -> NetHdr {
        let le = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
        NetHdr {
            flags: raw[0],
            gso_type: raw[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// The header with `num_buffers`.
    pub(crate) fn bytes(&self, num_buffers: u16) -> [u8; HDR_LEN] {
        let mut raw = [0u8; HDR_LEN];
        raw[0] = self.flags;
        raw[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            raw[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        raw
    }

    /// The header of a frame to the guest: a TCP frame whose checksum the
    /// guest finishes (NEEDS_CSUM and the checksum's place; for a larger
    /// segment to take whole also GSO type, size and header length, which
    /// Linux sets for segments only), or a frame whose checksums are all
    /// filled in (no flag).
    pub(crate) fn to_guest(partial: Option<TxPartial>) -> NetHdr {
        let Some(p) = partial else {
            return NetHdr::default();
        };
        let (gso_type, hdr_len, gso_size) = match p.segmentation {
            Some(s) if s.ipv6 => (VIRTIO_NET_HDR_GSO_TCPV6 as u8, p.headers, s.size),
            Some(s) => (VIRTIO_NET_HDR_GSO_TCPV4 as u8, p.headers, s.size),
            None => (VIRTIO_NET_HDR_GSO_NONE as u8, 0, 0),
        };
        NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: p.l4_offset,
            csum_offset: TCP_CSUM_OFFSET,
        }
    }
}

/// Why a frame's header was refused: the guest claims an offload it did
/// not negotiate, or metadata that does not fit the frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OffloadError {
    #[error("partial checksum without VIRTIO_NET_F_CSUM")]
    CsumNotNegotiated,
    #[error("partial checksum at {start}+{offset} beyond a frame of {len} bytes")]
    CsumOutside { start: u16, offset: u16, len: usize },
    #[error("segmentation type {0:#x} not negotiated")]
    GsoNotNegotiated(u8),
    #[error("segmentation without a partial checksum")]
    GsoWithoutCsum,
    #[error("segmentation with a segment size of 0")]
    GsoSizeZero,
}

/// What a transmitted frame's header says, checked against the features
/// the driver acknowledged (`acked`) and the frame's length: a partial
/// checksum needs VIRTIO_NET_F_CSUM and a place inside the frame; a larger
/// TCP segment needs HOST_TSO4/6, a partial checksum (as the virtio spec
/// requires) and a segment size. Anything else is refused, never trusted.
/// `hdr_len` is a hint and not used: the gateway parses the headers itself.
pub(crate) fn offload(
    hdr: &NetHdr,
    acked: u64,
    frame_len: usize,
) -> Result<FrameOffload, OffloadError> {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let partial_csum = hdr.flags & F_NEEDS_CSUM != 0;
    if partial_csum {
        if !has(VIRTIO_NET_F_CSUM) {
            return Err(OffloadError::CsumNotNegotiated);
        }
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        if end > frame_len {
            return Err(OffloadError::CsumOutside {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: frame_len,
            });
        }
    }
    let ipv6 = match u32::from(hdr.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => return Ok(FrameOffload::csum(partial_csum)),
        VIRTIO_NET_HDR_GSO_TCPV4 if has(VIRTIO_NET_F_HOST_TSO4) => false,
        VIRTIO_NET_HDR_GSO_TCPV6 if has(VIRTIO_NET_F_HOST_TSO6) => true,
        // Not acknowledged, or never offered: UDP fragmentation and
        // segmentation, the ECN bit (HOST_ECN).
        _ => return Err(OffloadError::GsoNotNegotiated(hdr.gso_type)),
    };
    if !partial_csum {
        return Err(OffloadError::GsoWithoutCsum);
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    Ok(FrameOffload {
        partial_csum,
        segmentation: Some(Segmentation {
            ipv6,
            size: hdr.gso_size,
        }),
    })
}

/// Copies the frame in a TX chain into `buf`; returns its header.
pub(crate) fn read_frame(chain: Chain, buf: &mut Vec<u8>) -> Result<NetHdr, FrameError> {
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
    Ok(NetHdr::parse(&hdr))
}

/// Result of trying to place one frame in the guest's receive buffers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placed {
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

/// Writes `frame` (after `hdr`) into the guest's RX queue and publishes the
/// buffers it used with [`publish_used`]: all of a frame's buffers at once.
pub(crate) fn place_frame<Q: QueueT + QueueOwnedT>(
    queue: &mut Q,
    mem: GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
    frame: &[u8],
    mergeable: bool,
    hdr: &NetHdr,
) -> Result<Placed, virtio_queue::Error> {
    let guard = mem.clone();
    let mut used: Vec<(u16, u32)> = Vec::new();
    let placed = fill_buffers(queue, mem, frame, mergeable, hdr, &mut used);
    let published = publish_used(queue, &*guard, &used);
    let placed = placed?;
    published?;
    Ok(placed)
}

/// Puts `used` (head, length) in the used ring and only then moves the used
/// index past all of them, in one store. The guest may be reading the ring
/// at the same time: with `VIRTIO_NET_F_MRG_RXBUF` it takes a frame's first
/// buffer, reads `num_buffers` from its header and expects the other
/// buffers to be there already — publishing them one by one (what
/// `add_used` does) made it drop the frame as "missing buffers"
/// (`rx_length_errors`), and TCP to the guest stalled on retransmissions.
pub(crate) fn publish_used<Q: QueueT, M: vm_memory::GuestMemory>(
    queue: &mut Q,
    mem: &M,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    use std::num::Wrapping;
    use std::sync::atomic::Ordering;
    use vm_memory::{Address, Bytes, GuestAddress};

    if used.is_empty() {
        return Ok(());
    }
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let next = Wrapping(queue.next_used());
    for (i, &(head, len)) in used.iter().enumerate() {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let slot = (next + Wrapping(i as u16)).0 % size;
        // flags, idx, then 8-byte elements.
        let addr = ring
            .checked_add(4 + u64::from(slot) * 8)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        // struct virtq_used_elem { le32 id; le32 len; }
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
    }
    let new = next + Wrapping(used.len() as u16);
    let idx = ring
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    mem.store(u16::to_le(new.0), idx, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    queue.set_next_used(new.0);
    Ok(())
}

/// Whether the guest wants an interrupt for the used entries from `old` to
/// the queue's `next_used` (the split ring's rule: `used_event` with
/// EVENT_IDX, else the avail ring's NO_INTERRUPT flag). Used instead of
/// the queue's own `needs_notification`, which only counts entries added
/// through `add_used`.
pub(crate) fn guest_wants_interrupt<Q: QueueT, M: vm_memory::GuestMemory>(
    queue: &Q,
    mem: &M,
    old: u16,
) -> Result<bool, virtio_queue::Error> {
    use std::num::Wrapping;
    use std::sync::atomic::{fence, Ordering};
    use vm_memory::{Address, Bytes, GuestAddress};

    let new = Wrapping(queue.next_used());
    let old = Wrapping(old);
    if new == old {
        return Ok(false);
    }
    // The used index stores must be visible before the guest's request is
    // read (the driver does the mirror image).
    fence(Ordering::SeqCst);
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        // used_event sits after the avail ring's flags, idx and entries.
        let addr = avail
            .checked_add(4 + 2 * u64::from(queue.size()))
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let used_event = Wrapping(u16::from_le(
            mem.load(addr, Ordering::Acquire)
                .map_err(virtio_queue::Error::GuestMemory)?,
        ));
        Ok(new - used_event - Wrapping(1) < new - old)
    } else {
        let flags = u16::from_le(
            mem.load(avail, Ordering::Acquire)
                .map_err(virtio_queue::Error::GuestMemory)?,
        );
        Ok(flags & 1 == 0) // VRING_AVAIL_F_NO_INTERRUPT
    }
}

/// [`place_frame`]'s work before publication; `used` gets every buffer
/// taken, whatever the outcome.
fn fill_buffers<Q: QueueT + QueueOwnedT>(
    queue: &mut Q,
    mem: GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
    frame: &[u8],
    mergeable: bool,
    hdr: &NetHdr,
    used: &mut Vec<(u16, u32)>,
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
            used.push((chain.head_index(), 0));
            return Ok(Placed::TooBig);
        }
        for _ in 0..chains.len() {
            queue.go_to_previous_position();
        }
        return Ok(Placed::NoRoom);
    }
    let count = chains.len();
    let hdr = hdr.bytes(count as u16);
    let mut rest = frame;
    let mut failed = None;
    for (i, (chain, cap)) in chains.into_iter().enumerate() {
        let head = chain.head_index();
        if failed.is_some() {
            // A bad buffer earlier in this frame: return the rest unused.
            used.push((head, 0));
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
                used.push((head, written as u32));
            }
            Err(e) => {
                used.push((head, 0));
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Placed::Done { buffers: count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 16;

    fn setup(mem: &GuestMemoryMmap<()>) -> (MockSplitQueue<'_, GuestMemoryMmap<()>>, Queue) {
        let vq = MockSplitQueue::new(mem, SIZE);
        let q: Queue = vq.create_queue().unwrap();
        (vq, q)
    }

    const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    const TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    const TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;

    fn tso(gso_type: u32, gso_size: u16) -> NetHdr {
        NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso_type as u8,
            hdr_len: 54,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn headers_round_trip_little_endian() {
        let h = tso(VIRTIO_NET_HDR_GSO_TCPV6, 1440);
        let raw = h.bytes(3);
        assert_eq!(raw, [1, 4, 54, 0, 0xa0, 5, 34, 0, 16, 0, 3, 0]);
        assert_eq!(NetHdr::parse(&raw), h);
    }

    #[test]
    fn offloads_are_taken_only_as_negotiated_and_inside_the_frame() {
        let none = NetHdr::default();
        assert_eq!(offload(&none, 0, 60), Ok(FrameOffload::default()));
        // A partial checksum needs CSUM and a place in the frame.
        let partial = NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..NetHdr::default()
        };
        assert_eq!(offload(&partial, CSUM, 52), Ok(FrameOffload::csum(true)));
        assert_eq!(
            offload(&partial, 0, 52),
            Err(OffloadError::CsumNotNegotiated)
        );
        assert!(matches!(
            offload(&partial, CSUM, 51),
            Err(OffloadError::CsumOutside { len: 51, .. })
        ));
        let far = NetHdr {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..partial
        };
        assert!(matches!(
            offload(&far, CSUM, 60),
            Err(OffloadError::CsumOutside { .. })
        ));
        // TSO: negotiated per IP version, with a partial checksum and a size.
        let v4 = tso(VIRTIO_NET_HDR_GSO_TCPV4, 1448);
        assert_eq!(
            offload(&v4, CSUM | TSO4, 9000),
            Ok(FrameOffload {
                partial_csum: true,
                segmentation: Some(Segmentation {
                    ipv6: false,
                    size: 1448
                }),
            })
        );
        assert_eq!(
            offload(&v4, CSUM | TSO6, 9000),
            Err(OffloadError::GsoNotNegotiated(1))
        );
        let v6 = tso(VIRTIO_NET_HDR_GSO_TCPV6, 1428);
        assert!(offload(&v6, CSUM | TSO6, 9000).is_ok());
        assert!(offload(&v6, CSUM | TSO4, 9000).is_err());
        let no_csum = NetHdr { flags: 0, ..v4 };
        assert_eq!(
            offload(&no_csum, CSUM | TSO4, 9000),
            Err(OffloadError::GsoWithoutCsum)
        );
        assert_eq!(
            offload(&tso(VIRTIO_NET_HDR_GSO_TCPV4, 0), CSUM | TSO4, 9000),
            Err(OffloadError::GsoSizeZero)
        );
        // Never offered: UDP fragmentation and segmentation, ECN.
        for t in [3u32, 5, 0x81, 0xff] {
            assert_eq!(
                offload(&tso(t, 1400), u64::MAX, 9000),
                Err(OffloadError::GsoNotNegotiated(t as u8)),
                "gso_type {t:#x}"
            );
        }
    }

    #[test]
    fn frames_to_the_guest_carry_their_partial_checksum_and_segmentation() {
        let seg = TxPartial {
            l4_offset: 54,
            headers: 86,
            segmentation: Some(Segmentation {
                ipv6: true,
                size: 1428,
            }),
        };
        assert_eq!(
            NetHdr::to_guest(Some(seg)),
            NetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
                hdr_len: 86,
                gso_size: 1428,
                csum_start: 54,
                csum_offset: 16,
            }
        );
        // An ordinary TCP frame: the checksum's place only.
        let partial = TxPartial {
            l4_offset: 34,
            headers: 54,
            segmentation: None,
        };
        assert_eq!(
            NetHdr::to_guest(Some(partial)),
            NetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
                hdr_len: 0,
                gso_size: 0,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert_eq!(NetHdr::to_guest(None), NetHdr::default());

        // Written ahead of the frame, with num_buffers, into the guest's
        // receive buffer.
        use airlock_testkit::queues::{GuestQueues, F_WRITE, HIGH_BUFFERS};
        use vhost_user_backend::VringT;
        use vm_memory::GuestAddressSpace;
        let mut queues = GuestQueues::new(&[16]);
        queues.set_desc(0, 0, HIGH_BUFFERS.start, 4096, F_WRITE, 0);
        queues.push_avail(0, 0);
        let frame = [0xab_u8; 100];
        let hdr = NetHdr::to_guest(Some(seg));
        let placed = {
            let mut state = queues.vrings[0].get_mut();
            let mem = queues.mem.memory();
            place_frame(state.get_queue_mut(), mem, &frame, true, &hdr).unwrap()
        };
        assert_eq!(placed, Placed::Done { buffers: 1 });
        assert_eq!(queues.read(HIGH_BUFFERS.start, HDR_LEN), hdr.bytes(1));
        assert_eq!(
            queues.read(HIGH_BUFFERS.start + HDR_LEN as u64, frame.len()),
            frame
        );
        assert_eq!(queues.used_elem(0, 0), (0, (HDR_LEN + frame.len()) as u32));
    }

    #[test]
    fn a_frames_buffers_are_published_with_one_index_store() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (vq, mut q) = setup(&mem);
        q.set_next_used(SIZE - 1); // wraps inside the frame
        publish_used(&mut q, &mem, &[(3, 100), (7, 4096), (9, 12)]).unwrap();
        let used = vq.used_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, SIZE + 2);
        assert_eq!(q.next_used(), SIZE + 2);
        let elem = |slot: u64| -> (u32, u32) {
            let a = used + 4 + slot * 8;
            (
                mem.read_obj(GuestAddress(a)).unwrap(),
                mem.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        };
        assert_eq!(elem(u64::from(SIZE) - 1), (3, 100));
        assert_eq!(elem(0), (7, 4096));
        assert_eq!(elem(1), (9, 12));
        assert!(matches!(
            publish_used(&mut q, &mem, &[(SIZE, 1)]),
            Err(virtio_queue::Error::InvalidDescriptorIndex)
        ));
        assert_eq!(q.next_used(), SIZE + 2, "a bad head publishes nothing");
    }

    #[test]
    fn interrupts_follow_used_event_or_the_no_interrupt_flag() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (vq, mut q) = setup(&mem);
        let avail = vq.avail_addr().0;
        let used_event = GuestAddress(avail + 4 + 2 * u64::from(SIZE));
        publish_used(&mut q, &mem, &[(0, 1), (1, 1), (2, 1)]).unwrap();
        assert!(!guest_wants_interrupt(&q, &mem, 3).unwrap(), "nothing new");

        q.set_event_idx(true);
        // The guest asks to hear once entry 1 is used: 0..3 crosses it.
        mem.write_obj(1u16, used_event).unwrap();
        assert!(guest_wants_interrupt(&q, &mem, 0).unwrap());
        // It has seen up to 5 already (after our 3): no interrupt.
        mem.write_obj(5u16, used_event).unwrap();
        assert!(!guest_wants_interrupt(&q, &mem, 0).unwrap());

        q.set_event_idx(false);
        mem.write_obj(0u16, GuestAddress(avail)).unwrap();
        assert!(guest_wants_interrupt(&q, &mem, 0).unwrap());
        mem.write_obj(1u16, GuestAddress(avail)).unwrap(); // NO_INTERRUPT
        assert!(!guest_wants_interrupt(&q, &mem, 0).unwrap());
    }
}
