//! The gateway's edge towards the guest, whatever carries the frames
//! (virtqueues, a stream socket, a test):
//! - [`GuestTx`]: where frames to the guest go, and [`Backlog`], the bounded
//!   queue a transport drains into the guest's receive buffers;
//! - `IpDevice`: the `smoltcp::phy::Device` that hands smoltcp at most one
//!   IP packet (the segment being processed) and writes whatever smoltcp
//!   transmits to the guest as Ethernet frames.
//!
//! smoltcp runs with `Medium::Ip`: the gateway owns the Ethernet layer (ARP,
//! MAC addresses), so smoltcp never needs a neighbour cache.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

use crate::wire::{write_eth, ETH_HEADER};

/// Where the gateway's frames to the guest go.
pub trait GuestTx {
    /// Whether another frame may be queued now; false while the guest has
    /// posted no receive buffers and the backlog is full.
    fn has_room(&self) -> bool;
    /// Queues a frame of `len` bytes and returns it to be filled. Its
    /// contents are unspecified: the caller writes every byte.
    fn frame(&mut self, len: usize) -> &mut [u8];
    /// True if frames may leave L4 checksums out (the guest accepted
    /// checksum offload and frames are marked as carrying valid data).
    fn csum_offload(&self) -> bool;
}

/// A `GuestTx` that discards everything (startup, shutdown).
#[derive(Default)]
pub(crate) struct NullTx(Vec<u8>);

impl GuestTx for NullTx {
    fn has_room(&self) -> bool {
        true
    }
    fn frame(&mut self, len: usize) -> &mut [u8] {
        self.0.resize(len, 0);
        &mut self.0[..]
    }
    fn csum_offload(&self) -> bool {
        false
    }
}

/// Frames waiting for guest receive buffers, bounded in bytes: when full,
/// [`GuestTx::has_room`] is false and TCP holds its data back. A transport
/// moves its frames into the guest ([`Backlog::front`], [`Backlog::pop`]).
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

    /// Whether frames go out marked valid (virtio-net DATA_VALID) instead of
    /// with L4 checksums.
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

pub(crate) struct IpDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut dyn GuestTx,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    mtu: usize,
}

impl<'a> IpDevice<'a> {
    pub(crate) fn new(
        tx: &'a mut dyn GuestTx,
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        mtu: usize,
    ) -> Self {
        IpDevice {
            rx: None,
            tx,
            src_mac,
            dst_mac,
            mtu,
        }
    }

    /// Sets the one packet smoltcp will receive on its next poll. Its TCP
    /// checksum is not checked here: the gateway verified it (or the guest
    /// marked it partial, NEEDS_CSUM, which virtio makes trustworthy).
    pub(crate) fn with_packet(mut self, packet: &'a [u8]) -> Self {
        self.rx = Some(packet);
        self
    }
}

pub(crate) struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

pub(crate) struct TxToken<'b> {
    tx: &'b mut dyn GuestTx,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let fill = !self.tx.csum_offload();
        let buf = self.tx.frame(ETH_HEADER + len);
        let r = f(&mut buf[ETH_HEADER..]);
        // smoltcp wrote the IP packet; its version says the EtherType.
        let ethertype = match buf.get(ETH_HEADER).map(|b| b >> 4) {
            Some(6) => EthernetProtocol::Ipv6,
            _ => EthernetProtocol::Ipv4,
        };
        write_eth(buf, self.src_mac, self.dst_mac, ethertype);
        if fill {
            fill_tcp_checksum(&mut buf[ETH_HEADER..]);
        }
        r
    }
}

impl phy::Device for IpDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((
            RxToken(packet),
            TxToken {
                tx: &mut *self.tx,
                src_mac: self.src_mac,
                dst_mac: self.dst_mac,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if !self.tx.has_room() {
            return None;
        }
        Some(TxToken {
            tx: &mut *self.tx,
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // smoltcp reads these once, when the Interface is created, so they
        // cannot follow per-packet flags: it never touches TCP checksums, and
        // the gateway verifies and fills them (see `fill_tcp_checksum`).
        let mut checksum = ChecksumCapabilities::default();
        checksum.tcp = Checksum::None;
        caps.checksum = checksum;
        caps
    }
}

/// Computes the TCP checksum of the IP packet in `packet` (a no-op for
/// anything else): frames for a guest without checksum offload.
pub(crate) fn fill_tcp_checksum(packet: &mut [u8]) {
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        let Ok(mut ip) = Ipv6Packet::new_checked(packet) else {
            return;
        };
        if ip.next_header() != IpProtocol::Tcp {
            return;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
            tcp.fill_checksum(&src.into(), &dst.into());
        }
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(packet) else {
        return;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(&src.into(), &dst.into());
    }
}
