//! A split-virtqueue driver (the guest side of virtio 1.x §2.7): writes
//! descriptors and the available ring, reads the used ring, kicks and waits
//! through eventfds. The used ring is written by the daemon under test, so
//! everything read from it is checked before use.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use vhost::VringConfigData;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::{self, GuestMem};

/// Errors of the queue driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory access failed.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// An eventfd could not be made, written or polled.
    #[error("eventfd {what} failed")]
    EventFd {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not enough free descriptors for a chain.
    #[error("queue full: {wanted} descriptors wanted, {free} free")]
    Full {
        /// Descriptors the chain needs.
        wanted: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain with no buffers.
    #[error("empty descriptor chain")]
    Empty,
    /// The device returned something that is not an outstanding chain.
    #[error(
        "the device returned used element {id} (len {len}), which is not an outstanding chain"
    )]
    BadUsed {
        /// The used element's id.
        id: u32,
        /// Its length.
        len: u32,
    },
    /// The device's used index moved by more than the queue size.
    #[error("the device's used index jumped from {last} to {now}")]
    UsedIndex {
        /// Last consumed.
        last: u16,
        /// Read now.
        now: u16,
    },
}

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub writable: bool,
}

/// A chain the device has finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The chain's head descriptor (what [`SplitQueue::add`] returned).
    pub head: u16,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// `vring_need_event` of the virtio spec.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver side of one split virtqueue.
pub struct SplitQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    /// Descriptors of each outstanding chain, by head (empty: not outstanding).
    chains: Vec<Vec<u16>>,
    next_avail: u16,
    published: u16,
    last_used: u16,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
}

impl SplitQueue {
    /// Allocates the rings of a queue of `size` (a power of two) in `mem`.
    pub fn new(mem: &mut GuestMem, size: u16, event_idx: bool) -> Result<SplitQueue, Error> {
        let n = u64::from(size);
        let desc = mem.alloc(16 * n, 16)?;
        let avail = mem.alloc(6 + 2 * n, 2)?;
        let used = mem.alloc(6 + 8 * n, 4)?;
        let eventfd =
            |what| EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd { what, source });
        Ok(SplitQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
            next_avail: 0,
            published: 0,
            last_used: 0,
            event_idx,
            kick: eventfd("create kick")?,
            call: eventfd("create call")?,
        })
    }

    /// The ring addresses for `SET_VRING_ADDR` (this process' addresses).
    pub fn config(&self, mem: &GuestMem) -> Result<VringConfigData, Error> {
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: mem.host_address(self.desc)?,
            used_ring_addr: mem.host_address(self.used)?,
            avail_ring_addr: mem.host_address(self.avail)?,
            log_addr: None,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The eventfd the driver writes to notify the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes to notify the driver.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Places a chain in the available ring (not yet visible to the device:
    /// see [`SplitQueue::publish`]). Returns its head.
    pub fn add(&mut self, mem: &GuestMem, bufs: &[Buffer]) -> Result<u16, Error> {
        if bufs.is_empty() {
            return Err(Error::Empty);
        }
        if bufs.len() > self.free.len() {
            return Err(Error::Full {
                wanted: bufs.len(),
                free: self.free.len(),
            });
        }
        let ids: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (buf, &id)) in bufs.iter().zip(&ids).enumerate() {
            let next = ids.get(i + 1).copied();
            let mut flags = if buf.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            if next.is_some() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&buf.addr.0.to_le_bytes());
            raw[8..12].copy_from_slice(&buf.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            mem.write(&raw, self.desc.unchecked_add(16 * u64::from(id)))?;
        }
        let head = ids[0];
        let slot = u64::from(self.next_avail % self.size);
        mem.write(&head.to_le_bytes(), self.avail.unchecked_add(4 + 2 * slot))?;
        self.chains[usize::from(head)] = ids;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(head)
    }

    fn access(addr: GuestAddress, e: vm_memory::GuestMemoryError) -> Error {
        Error::Memory(memory::Error::Access {
            addr: addr.0,
            message: e.to_string(),
        })
    }

    /// Makes the added chains visible to the device; returns whether the
    /// device asked to be notified (then call [`SplitQueue::kick`]).
    pub fn publish(&mut self, mem: &GuestMem) -> Result<bool, Error> {
        if self.next_avail == self.published {
            return Ok(false);
        }
        let idx_addr = self.avail.unchecked_add(2);
        mem.mem()
            .store(self.next_avail, idx_addr, Ordering::Release)
            .map_err(|e| Self::access(idx_addr, e))?;
        // The device's suppression state must be read after the index store.
        fence(Ordering::SeqCst);
        let old = self.published;
        self.published = self.next_avail;
        if self.event_idx {
            let addr = self.used.unchecked_add(4 + 8 * u64::from(self.size));
            let event: u16 = mem
                .mem()
                .load(addr, Ordering::Acquire)
                .map_err(|e| Self::access(addr, e))?;
            Ok(need_event(event, self.next_avail, old))
        } else {
            let flags: u16 = mem
                .mem()
                .load(self.used, Ordering::Acquire)
                .map_err(|e| Self::access(self.used, e))?;
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Notifies the device.
    pub fn kick(&self) -> Result<(), Error> {
        self.kick.write(1).map_err(|source| Error::EventFd {
            what: "kick",
            source,
        })
    }

    /// [`SplitQueue::publish`], then a kick if the device wants one.
    pub fn publish_and_kick(&mut self, mem: &GuestMem) -> Result<(), Error> {
        if self.publish(mem)? {
            self.kick()?;
        }
        Ok(())
    }

    /// The next chain the device has returned, if any.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<Used>, Error> {
        let idx_addr = self.used.unchecked_add(2);
        let now: u16 = mem
            .mem()
            .load(idx_addr, Ordering::Acquire)
            .map_err(|e| Self::access(idx_addr, e))?;
        if now == self.last_used {
            return Ok(None);
        }
        if now.wrapping_sub(self.last_used) > self.size {
            return Err(Error::UsedIndex {
                last: self.last_used,
                now,
            });
        }
        let slot = u64::from(self.last_used % self.size);
        let mut raw = [0u8; 8];
        mem.read(&mut raw, self.used.unchecked_add(4 + 8 * slot))?;
        let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .filter(|c| !c.is_empty())
            .ok_or(Error::BadUsed { id, len })?;
        self.free.append(chain);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            // Ask for a notification as soon as the device uses the next one.
            let addr = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            mem.mem()
                .store(self.last_used, addr, Ordering::Release)
                .map_err(|e| Self::access(addr, e))?;
        }
        Ok(Some(Used {
            head: id as u16,
            len,
        }))
    }

    /// Waits up to `timeout` for the device's notification; `Ok(false)` on
    /// timeout. Consumes the notification.
    pub fn wait(&self, timeout: Duration) -> Result<bool, Error> {
        wait_any(&[&self.call], timeout)
    }
}

/// Waits up to `timeout` for any of `fds` to be signalled, consuming the
/// signals; `Ok(false)` on timeout.
pub fn wait_any(fds: &[&EventFd], timeout: Duration) -> Result<bool, Error> {
    use std::os::fd::AsRawFd;
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pollfds` is a valid array of `pollfds.len()` pollfd structs
    // that lives across the call; poll only writes their `revents`.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::EventFd {
            what: "poll",
            source: e,
        });
    }
    let mut any = false;
    for (fd, p) in fds.iter().zip(&pollfds) {
        if p.revents & libc::POLLIN != 0 {
            // Non-blocking: EAGAIN just means another reader got it.
            let _ = fd.read();
            any = true;
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the device: takes the next available chain and returns it used.
    fn device_use(mem: &GuestMem, q: &SplitQueue, consumed: &mut u16, len: u32) {
        let mut raw = [0u8; 2];
        mem.read(
            &mut raw,
            q.avail.unchecked_add(4 + 2 * u64::from(*consumed % q.size)),
        )
        .unwrap();
        let head = u16::from_le_bytes(raw);
        let used_idx: u16 = mem
            .mem()
            .load(q.used.unchecked_add(2), Ordering::Acquire)
            .unwrap();
        let slot = u64::from(used_idx % q.size);
        let mut elem = [0u8; 8];
        elem[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write(&elem, q.used.unchecked_add(4 + 8 * slot))
            .unwrap();
        mem.mem()
            .store(
                used_idx.wrapping_add(1),
                q.used.unchecked_add(2),
                Ordering::Release,
            )
            .unwrap();
        *consumed = consumed.wrapping_add(1);
    }

    fn buf(addr: u64, writable: bool) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len: 64,
            writable,
        }
    }

    #[test]
    fn chains_round_trip_and_descriptors_are_recycled() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 4, false).unwrap();
        let mut consumed = 0;
        for round in 0..10u32 {
            let head = q
                .add(&mem, &[buf(0x8000, false), buf(0x9000, true)])
                .unwrap();
            assert!(q.publish(&mem).unwrap(), "no NO_NOTIFY flag: kick");
            assert_eq!(q.pop_used(&mem).unwrap(), None);
            device_use(&mem, &q, &mut consumed, round);
            let used = q.pop_used(&mem).unwrap().unwrap();
            assert_eq!((used.head, used.len), (head, round));
            assert_eq!(q.free_descriptors(), 4);
        }
        assert!(matches!(
            q.add(&mem, &[buf(0, false); 5]),
            Err(Error::Full { wanted: 5, free: 4 })
        ));
    }

    #[test]
    fn a_bogus_used_element_is_an_error() {
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 4, true).unwrap();
        q.add(&mem, &[buf(0x8000, true)]).unwrap();
        q.publish(&mem).unwrap();
        // The device claims descriptor 3, which is not a head in flight.
        mem.write(&[3, 0, 0, 0, 0, 0, 0, 0], q.used.unchecked_add(4))
            .unwrap();
        mem.mem()
            .store(1u16, q.used.unchecked_add(2), Ordering::Release)
            .unwrap();
        assert!(matches!(
            q.pop_used(&mem),
            Err(Error::BadUsed { id: 3, .. })
        ));
        // An index far ahead is refused too.
        mem.mem()
            .store(100u16, q.used.unchecked_add(2), Ordering::Release)
            .unwrap();
        assert!(matches!(q.pop_used(&mem), Err(Error::UsedIndex { .. })));
    }

    #[test]
    fn event_index_suppression() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 2));
        assert!(need_event(2, 3, 2));
        let mut mem = GuestMem::new(1 << 20).unwrap();
        let mut q = SplitQueue::new(&mut mem, 8, true).unwrap();
        // avail_event = 0: the device wants a kick for the first chain.
        q.add(&mem, &[buf(0x8000, true)]).unwrap();
        assert!(q.publish(&mem).unwrap());
        // avail_event still 0: no kick for the second.
        q.add(&mem, &[buf(0x8000, true)]).unwrap();
        assert!(!q.publish(&mem).unwrap());
    }
}
