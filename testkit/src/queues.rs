//! Guest memory and split virtqueues for the descriptor-chain fuzz targets:
//! what the frontend sets up (memory regions, ring addresses, queue sizes)
//! is fixed and valid; what the guest controls (descriptor tables, the
//! available ring and its index, `used_event`, buffer contents) comes from
//! the fuzz input or from a target that lays out well-formed requests.
//!
//! Layout (guest physical addresses):
//!
//! | range | what |
//! |---|---|
//! | `0x0000..0x8000` | queue `i`: descriptors at `i * 0x4000`, avail ring `+0x1000`, used ring `+0x2000` |
//! | `0x8000..0x10000` | [`LOW_BUFFERS`] |
//! | `0x10000..0x20000` | a hole: no memory |
//! | `0x20000..0x60000` | [`HIGH_BUFFERS`] |

use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use airlock_vhost::{GuestMemory, Vring};

use crate::input::Input;

/// Largest queue the targets set up (two queues fit the ring area).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// How many queues fit the layout.
pub const MAX_QUEUES: usize = 2;
/// A buffer area in the first memory region.
pub const LOW_BUFFERS: std::ops::Range<u64> = 0x8000..0x10000;
/// The second memory region, all buffers.
pub const HIGH_BUFFERS: std::ops::Range<u64> = 0x20000..0x60000;

const QUEUE_STRIDE: u64 = 0x4000;
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x2000;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// Guest memory and the device's vrings over it.
pub struct GuestQueues {
    pub mem: GuestMemory,
    pub vrings: Vec<Vring>,
    sizes: Vec<u16>,
    /// The guest's view of each available ring's index.
    avail_idx: Vec<u16>,
}

fn desc_table(q: usize) -> u64 {
    q as u64 * QUEUE_STRIDE
}

fn avail_ring(q: usize) -> u64 {
    desc_table(q) + AVAIL_OFFSET
}

fn used_ring(q: usize) -> u64 {
    desc_table(q) + USED_OFFSET
}

impl GuestQueues {
    /// Memory and `sizes.len()` ready queues of those sizes (powers of two
    /// up to [`MAX_QUEUE_SIZE`]), with empty rings.
    pub fn new(sizes: &[u16]) -> GuestQueues {
        assert!(
            sizes.len() <= MAX_QUEUES,
            "the layout has room for two queues"
        );
        let regions = [
            (GuestAddress(0), 0x10000),
            (
                GuestAddress(HIGH_BUFFERS.start),
                (HIGH_BUFFERS.end - HIGH_BUFFERS.start) as usize,
            ),
        ];
        let mmap = GuestMemoryMmap::<()>::from_ranges(&regions).expect("cannot map guest memory");
        let mem = GuestMemoryAtomic::new(mmap);
        let mut vrings = Vec::with_capacity(sizes.len());
        for (q, &size) in sizes.iter().enumerate() {
            let vring = Vring::new(mem.clone(), MAX_QUEUE_SIZE).expect("cannot create a vring");
            vring.set_queue_size(size);
            vring
                .set_queue_info(desc_table(q), avail_ring(q), used_ring(q))
                .expect("the fixed ring addresses are valid");
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            vrings.push(vring);
        }
        GuestQueues {
            mem,
            vrings,
            sizes: sizes.to_vec(),
            avail_idx: vec![0; sizes.len()],
        }
    }

    /// Queues whose sizes, descriptor tables, available rings and buffer
    /// contents all come from `input` (see [`GuestQueues::guest_turn`]).
    pub fn from_input(count: usize, input: &mut Input) -> GuestQueues {
        let sizes: Vec<u16> = (0..count).map(|_| 1u16 << (input.u8() % 9)).collect();
        let queues = GuestQueues::new(&sizes);
        for q in 0..count {
            let n = usize::from(input.u8()).min(usize::from(queues.sizes[q]));
            for i in 0..n {
                queues.fuzz_desc(q, i as u16, input);
            }
        }
        queues.write(LOW_BUFFERS.start, input.chunk(usize::from(u16::MAX)));
        queues.write(HIGH_BUFFERS.start, input.chunk(usize::from(u16::MAX)));
        queues
    }

    /// Enables `VIRTIO_RING_F_EVENT_IDX` handling on every queue.
    pub fn set_event_idx(&self, on: bool) {
        for v in &self.vrings {
            v.set_queue_event_idx(on);
        }
    }

    pub fn size(&self, q: usize) -> u16 {
        self.sizes.get(q).copied().unwrap_or(0)
    }

    /// Writes guest memory; bytes that fall outside it are dropped.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.memory().write_slice(bytes, GuestAddress(addr));
    }

    /// Reads guest memory; bytes outside it read as zero.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let _ = self.mem.memory().read_slice(&mut out, GuestAddress(addr));
        out
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn set_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.write(desc_table(q) + u64::from(i) * 16, &d);
    }

    /// Makes chain `head` available on queue `q` and publishes the index.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let size = self.size(q).max(1);
        let idx = self.avail_idx[q];
        let slot = u64::from(idx % size);
        self.write(avail_ring(q) + 4 + slot * 2, &head.to_le_bytes());
        self.set_avail_idx(q, idx.wrapping_add(1));
    }

    /// Publishes `idx` as queue `q`'s available index, whatever it is.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.avail_idx[q] = idx;
        let addr = GuestAddress(avail_ring(q) + 2);
        let _ = self
            .mem
            .memory()
            .store(u16::to_le(idx), addr, Ordering::Release);
    }

    /// The used ring's index as the device left it.
    pub fn used_idx(&self, q: usize) -> u16 {
        let addr = GuestAddress(used_ring(q) + 2);
        let idx: u16 = self
            .mem
            .memory()
            .load(addr, Ordering::Acquire)
            .unwrap_or_default();
        u16::from_le(idx)
    }

    /// Used element `n` (counting from 0 over the ring's life) of queue `q`:
    /// (head, length).
    pub fn used_elem(&self, q: usize, n: u16) -> (u32, u32) {
        let size = self.size(q).max(1);
        let addr = used_ring(q) + 4 + u64::from(n % size) * 8;
        let b = self.read(addr, 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    /// One descriptor of queue `q` from the input: an address in one of the
    /// buffer areas, in the hole, at a ring, or anything; a length that is
    /// zero, small, or anything; any flags and any `next`.
    fn fuzz_desc(&self, q: usize, i: u16, input: &mut Input) {
        let mode = input.u8();
        let addr = match (mode & 7) % 5 {
            0 => LOW_BUFFERS.start + u64::from(input.u16()) % (LOW_BUFFERS.end - LOW_BUFFERS.start),
            1 => HIGH_BUFFERS.start + u64::from(input.u16()),
            2 => HIGH_BUFFERS.start - 0x100 + u64::from(input.u8()),
            3 => u64::from(input.u16()),
            _ => input.u64(),
        };
        let len = match (mode >> 3) & 3 {
            0 => u32::from(input.u8()),
            1 => u32::from(input.u16()),
            2 => 0,
            _ => input.u32(),
        };
        let flags = input.u16();
        let next = input.u16();
        self.set_desc(q, i, addr, len, flags, next);
    }

    /// A turn of the guest between two device events, from the input:
    /// make chains available, move the available index anywhere, rewrite
    /// a descriptor, a buffer, `used_event` or avail flags.
    pub fn guest_turn(&mut self, input: &mut Input) {
        let q = usize::from(input.u8()) % self.vrings.len().max(1);
        if q >= self.vrings.len() {
            return;
        }
        match input.u8() % 6 {
            0 => {
                for _ in 0..=(input.u8() % 8) {
                    let head = match input.u8() {
                        0xff => input.u16(),
                        h => u16::from(h) % self.size(q).max(1),
                    };
                    self.push_avail(q, head);
                }
            }
            1 => {
                let idx = input.u16();
                self.set_avail_idx(q, idx);
            }
            2 => {
                let i = u16::from(input.u8()) % self.size(q).max(1);
                self.fuzz_desc(q, i, input);
            }
            3 => {
                let addr = match input.bool() {
                    true => LOW_BUFFERS.start + u64::from(input.u16() % 0x8000),
                    false => HIGH_BUFFERS.start + u64::from(input.u16()),
                };
                self.write(addr, input.chunk(4096));
            }
            4 => {
                // used_event, after the avail ring's entries.
                let addr = avail_ring(q) + 4 + 2 * u64::from(self.size(q));
                self.write(addr, &input.u16().to_le_bytes());
            }
            _ => {
                // avail flags (VRING_AVAIL_F_NO_INTERRUPT and junk).
                self.write(avail_ring(q), &input.u16().to_le_bytes());
            }
        }
    }

    /// The device's own next used index of queue `q` (what it has
    /// published, whatever the guest's memory now says).
    pub fn device_used_idx(&self, q: usize) -> u16 {
        self.vrings[q].get_ref().get_queue().next_used()
    }

    /// For chains the input shapes: checks that the device published no
    /// more than a ring's worth on queue `q` since `before` (from
    /// [`GuestQueues::device_used_idx`]). The device's counter is checked,
    /// not the used ring in memory: a guest may place its buffers on its
    /// own rings, and then the device's writes into those buffers rewrite
    /// the ring — the guest's own doing, which the ring's contents cannot
    /// tell from a device fault. The heads the device publishes need no
    /// check here: virtio-queue's `add_used` refuses one outside the ring
    /// before writing anything (both devices log that and go on).
    pub fn check_device_used(&self, q: usize, before: u16) {
        let size = self.size(q);
        let added = self.device_used_idx(q).wrapping_sub(before);
        assert!(
            added <= size,
            "queue {q}: the device published {added} chains on a ring of {size}"
        );
    }

    /// For well-formed layouts (no buffer on a ring): checks what the
    /// device published on queue `q` since `before` in the used ring: no
    /// more than a ring's worth, and only heads that exist.
    pub fn check_used(&self, q: usize, before: u16) {
        let size = self.size(q);
        let now = self.used_idx(q);
        let added = now.wrapping_sub(before);
        assert!(
            added <= size,
            "queue {q}: used index moved by {added} on a ring of {size}"
        );
        for n in 0..added {
            let (head, _) = self.used_elem(q, before.wrapping_add(n));
            assert!(
                head < u32::from(size),
                "queue {q}: used element names descriptor {head} of {size}"
            );
        }
    }
}
