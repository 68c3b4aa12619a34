//! The harness' virtio-net driver: receive buffers on queue 0, frames to
//! send on queue 1, each prefixed by the 12-byte `virtio_net_hdr_v1`
//! (VIRTIO_F_VERSION_1; no mergeable buffers, so every receive buffer holds
//! a whole frame of up to 64 KiB).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vm_memory::{Address, GuestAddress};

use super::device::Device;
use super::frames;
use super::virtq::{self, wait_any, Buffer};

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue driver failed.
    #[error(transparent)]
    Queue(#[from] virtq::Error),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] super::memory::Error),
    /// A frame larger than a buffer.
    #[error("frame of {0} bytes does not fit a buffer")]
    TooBig(usize),
}

/// `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Bytes of each buffer: header plus the largest frame (MTU 65535).
pub const BUF_LEN: u32 = 12 + 65_535 + 14;
const RX: usize = 0;
const TX: usize = 1;

/// A frame received: its length and the first bytes (headers).
pub struct Received<'a> {
    /// Frame length (without the virtio-net header).
    pub len: usize,
    /// The first bytes of the frame, up to the headers asked for.
    pub head: &'a [u8],
}

/// virtio-net over a connected [`Device`].
pub struct NetDev {
    dev: Device,
    rx_bufs: HashMap<u16, GuestAddress>,
    tx_free: Vec<GuestAddress>,
    tx_inflight: HashMap<u16, GuestAddress>,
    head: Vec<u8>,
}

impl NetDev {
    /// Allocates `rx` receive and `tx` transmit buffers and posts the
    /// receive buffers.
    pub fn new(mut dev: Device, rx: usize, tx: usize) -> Result<NetDev, Error> {
        let mut rx_addrs = Vec::with_capacity(rx);
        for _ in 0..rx {
            rx_addrs.push(dev.mem.alloc(u64::from(BUF_LEN), 64)?);
        }
        let mut tx_free = Vec::with_capacity(tx);
        for _ in 0..tx {
            tx_free.push(dev.mem.alloc(u64::from(BUF_LEN), 64)?);
        }
        let mut net = NetDev {
            dev,
            rx_bufs: HashMap::new(),
            tx_free,
            tx_inflight: HashMap::new(),
            head: vec![0; 128],
        };
        for addr in rx_addrs {
            net.post_rx(addr)?;
        }
        net.dev.queues[RX].publish_and_kick(&net.dev.mem)?;
        Ok(net)
    }

    fn post_rx(&mut self, addr: GuestAddress) -> Result<(), Error> {
        let head = self.dev.queues[RX].add(
            &self.dev.mem,
            &[Buffer {
                addr,
                len: BUF_LEN,
                writable: true,
            }],
        )?;
        self.rx_bufs.insert(head, addr);
        Ok(())
    }

    /// Frees transmit buffers the device is done with; returns how many.
    pub fn reap_tx(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(used) = self.dev.queues[TX].pop_used(&self.dev.mem)? {
            if let Some(addr) = self.tx_inflight.remove(&used.head) {
                self.tx_free.push(addr);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Queues `frame` for sending (not yet visible: [`NetDev::flush`]).
    /// `Ok(false)` when no transmit buffer is free.
    pub fn send(&mut self, frame: &[u8]) -> Result<bool, Error> {
        if frame.len() + HDR_LEN > BUF_LEN as usize {
            return Err(Error::TooBig(frame.len()));
        }
        let Some(addr) = self.tx_free.pop() else {
            return Ok(false);
        };
        self.dev.mem.write(&[0u8; HDR_LEN], addr)?;
        self.dev
            .mem
            .write(frame, addr.unchecked_add(HDR_LEN as u64))?;
        self.queue_tx(addr, frame.len())?;
        Ok(true)
    }

    fn queue_tx(&mut self, addr: GuestAddress, frame_len: usize) -> Result<(), Error> {
        let head = self.dev.queues[TX].add(
            &self.dev.mem,
            &[Buffer {
                addr,
                len: (HDR_LEN + frame_len) as u32,
                writable: false,
            }],
        )?;
        self.tx_inflight.insert(head, addr);
        Ok(())
    }

    /// Writes `frame` into every free transmit buffer and returns their
    /// addresses, for [`NetDev::resend`] without copying again.
    pub fn prefill(&mut self, frame: &[u8]) -> Result<Vec<GuestAddress>, Error> {
        if frame.len() + HDR_LEN > BUF_LEN as usize {
            return Err(Error::TooBig(frame.len()));
        }
        for &addr in &self.tx_free {
            self.dev.mem.write(&[0u8; HDR_LEN], addr)?;
            self.dev
                .mem
                .write(frame, addr.unchecked_add(HDR_LEN as u64))?;
        }
        Ok(self.tx_free.clone())
    }

    /// Queues a free, prefilled transmit buffer again; `Ok(false)` if none
    /// is free.
    pub fn resend(&mut self, frame_len: usize) -> Result<bool, Error> {
        let Some(addr) = self.tx_free.pop() else {
            return Ok(false);
        };
        self.queue_tx(addr, frame_len)?;
        Ok(true)
    }

    /// Makes queued frames visible and notifies the device if it wants.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.dev.queues[TX].publish_and_kick(&self.dev.mem)?;
        Ok(())
    }

    /// Hands every received frame's first `peek` bytes to `f`, reposting
    /// the buffers; returns how many frames there were.
    pub fn poll_rx(
        &mut self,
        peek: usize,
        mut f: impl FnMut(Received<'_>),
    ) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(used) = self.dev.queues[RX].pop_used(&self.dev.mem)? {
            let Some(addr) = self.rx_bufs.remove(&used.head) else {
                continue;
            };
            let len = (used.len as usize)
                .saturating_sub(HDR_LEN)
                .min(BUF_LEN as usize - HDR_LEN);
            let take = peek.min(len).min(self.head.len());
            self.dev
                .mem
                .read(&mut self.head[..take], addr.unchecked_add(HDR_LEN as u64))?;
            f(Received {
                len,
                head: &self.head[..take],
            });
            self.post_rx(addr)?;
            n += 1;
        }
        if n > 0 {
            self.dev.queues[RX].publish_and_kick(&self.dev.mem)?;
        }
        Ok(n)
    }

    /// Reads whole received frames (for the TCP stack): each frame is
    /// copied into `out`.
    pub fn recv_frames(&mut self, out: &mut Vec<Vec<u8>>) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(used) = self.dev.queues[RX].pop_used(&self.dev.mem)? {
            let Some(addr) = self.rx_bufs.remove(&used.head) else {
                continue;
            };
            let len = (used.len as usize)
                .saturating_sub(HDR_LEN)
                .min(BUF_LEN as usize - HDR_LEN);
            let mut frame = vec![0u8; len];
            self.dev
                .mem
                .read(&mut frame, addr.unchecked_add(HDR_LEN as u64))?;
            out.push(frame);
            self.post_rx(addr)?;
            n += 1;
        }
        if n > 0 {
            self.dev.queues[RX].publish_and_kick(&self.dev.mem)?;
        }
        Ok(n)
    }

    /// Whether a transmit buffer is free.
    pub fn tx_room(&self) -> bool {
        !self.tx_free.is_empty()
    }

    /// Asks for `ip`'s MAC (ARP), up to five times 400 ms; `None` if it
    /// never answered.
    pub fn resolve(&mut self, ip: [u8; 4]) -> Result<Option<[u8; 6]>, Error> {
        let request = frames::arp_request(ip);
        for _ in 0..5 {
            self.send(&request)?;
            self.flush()?;
            let deadline = Instant::now() + Duration::from_millis(400);
            while Instant::now() < deadline {
                self.wait(Duration::from_millis(50))?;
                self.reap_tx()?;
                let mut received = Vec::new();
                self.recv_frames(&mut received)?;
                if let Some(mac) = received.iter().find_map(|f| frames::arp_reply_from(f, ip)) {
                    return Ok(Some(mac));
                }
            }
        }
        Ok(None)
    }

    /// Waits up to `timeout` for a notification on either queue.
    pub fn wait(&self, timeout: Duration) -> Result<bool, Error> {
        Ok(wait_any(
            &[self.dev.queues[RX].call_fd(), self.dev.queues[TX].call_fd()],
            timeout,
        )?)
    }
}
