//! The gateway's edge towards the guest, whatever carries the frames
//! (virtqueues, a stream socket, a test):
//! - [`GuestTx`]: where frames to the guest go, and [`Backlog`], the bounded
//!   queue a transport drains into the guest's receive buffers;
//! - `IpDevice`: the `smoltcp::phy::Device` that hands smoltcp at most one
//!   IP packet (the segment being processed) and writes whatever smoltcp
//!   transmits to the guest as Ethernet frames;
//! - segmentation offload both ways ([`Segmentation`]): a guest may send
//!   TCP segments larger than its MSS ([`FrameOffload`]), and take such
//!   segments from the gateway when it says so ([`GuestSegmentation`]);
//!   each such frame going to the guest is marked with a [`TxPartial`];
//! - checksum offload towards the guest: a guest that finishes TCP
//!   checksums gets frames with only the pseudo-header's sum in them,
//!   marked with a [`TxPartial`] too.
//!
//! smoltcp runs with `Medium::Ip`: the gateway owns the Ethernet layer (ARP,
//! MAC addresses), so smoltcp never needs a neighbour cache.

use std::collections::VecDeque;

use std::num::NonZeroUsize;

use smoltcp::phy::{
    self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, SegmentationCapabilities,
};
use smoltcp::time::Instant;
use smoltcp::wire::{
    checksum, EthernetAddress, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

use crate::wire::{write_eth, ETH_HEADER};

/// A TCP segment carried across the link in one piece although it is
/// larger than the receiver's MSS: the receiving side's stack takes it
/// whole, or its device cuts it into `size`-byte segments (virtio-net's
/// TSO, Linux's GSO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segmentation {
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Payload bytes per segment once cut.
    pub size: u16,
}

/// What the guest's transport says about a frame the guest sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOffload {
    /// The L4 checksum is not filled in (virtio-net's NEEDS_CSUM).
    pub partial_csum: bool,
    /// A TCP segment larger than the guest's MSS, sent whole (virtio-net's
    /// HOST_TSO4/6). The gateway checks it is one; its size is the guest's
    /// business (the segment is fed to the TCP layer whole).
    pub segmentation: Option<Segmentation>,
}

impl FrameOffload {
    /// A frame with only a checksum flag.
    pub fn csum(partial_csum: bool) -> FrameOffload {
        FrameOffload {
            partial_csum,
            segmentation: None,
        }
    }
}

/// Which TCP segments larger than its MSS the guest takes whole
/// (virtio-net's GUEST_TSO4/6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSegmentation {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl GuestSegmentation {
    fn allows(self, ipv6: bool) -> bool {
        if ipv6 {
            self.ipv6
        } else {
            self.ipv4
        }
    }
}

/// A TCP frame to the guest whose checksum the guest's side finishes: the
/// checksum field holds only the pseudo-header's sum, as a partial
/// checksum does (virtio-net's NEEDS_CSUM with the checksum's place; for
/// a segment larger than the guest's MSS also GSO type and size). The
/// guest's stack takes it unchecked when it delivers it locally, and
/// computes the sum when it forwards it (to a container's veth, a tunnel,
/// another NIC) — a frame only marked valid, with no sum in it, would
/// leave the guest with a wrong checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPartial {
    /// Offset of the TCP header in the frame (where checksumming starts).
    pub l4_offset: u16,
    /// Ethernet + IP + TCP header bytes.
    pub headers: u16,
    /// Set when the frame is one TCP segment larger than the guest's MSS,
    /// for the guest to take whole or cut into segments of this size.
    pub segmentation: Option<Segmentation>,
}

/// Offset of the checksum field in a TCP header.
pub const TCP_CSUM_OFFSET: u16 = 16;

/// Where the gateway's frames to the guest go.
pub trait GuestTx {
    /// Whether another frame may be queued now; false while the guest has
    /// posted no receive buffers and the backlog is full.
    fn has_room(&self) -> bool;
    /// Queues a frame of `len` bytes and returns it to be filled. Its
    /// contents are unspecified: the caller writes every byte.
    fn frame(&mut self, len: usize) -> &mut [u8];
    /// True if the guest finishes TCP checksums (it accepted checksum
    /// offload): TCP frames then carry the pseudo-header's sum only and
    /// are marked so ([`GuestTx::mark_partial`]), and IPv4 UDP datagrams
    /// go without a checksum (zero, which IPv4 allows).
    fn csum_offload(&self) -> bool;
    /// Which TCP segments larger than its MSS the guest takes (none unless
    /// the transport can say so per frame, see [`GuestTx::mark_partial`]).
    fn segmentation(&self) -> GuestSegmentation {
        GuestSegmentation::default()
    }
    /// Marks the frame last returned by [`GuestTx::frame`] as a TCP frame
    /// with a partial checksum; called only when [`GuestTx::csum_offload`]
    /// says so, and with a segmentation only for what
    /// [`GuestTx::segmentation`] allows.
    fn mark_partial(&mut self, partial: TxPartial);
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
    fn mark_partial(&mut self, _partial: TxPartial) {}
}

/// Frames waiting for guest receive buffers, bounded in bytes: when full,
/// [`GuestTx::has_room`] is false and TCP holds its data back. A transport
/// moves its frames into the guest ([`Backlog::front`], [`Backlog::pop`]).
pub struct Backlog {
    frames: VecDeque<(Vec<u8>, Option<TxPartial>)>,
    bytes: usize,
    limit: usize,
    pool: Vec<Vec<u8>>,
    offload: bool,
    segmentation: GuestSegmentation,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Backlog {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
            pool: Vec::new(),
            offload: false,
            segmentation: GuestSegmentation::default(),
        }
    }

    /// Whether the guest finishes TCP checksums (see
    /// [`GuestTx::csum_offload`]).
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    /// Which larger TCP segments the guest takes; only with checksum
    /// offload (a segment's checksum is left partial).
    pub fn set_segmentation(&mut self, segmentation: GuestSegmentation) {
        self.segmentation = segmentation;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn clear(&mut self) {
        while let Some((f, _)) = self.frames.pop_front() {
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
        self.frames.front().map(|(f, _)| &f[..])
    }

    /// The first frame's partial checksum (and segmentation), if it is a
    /// TCP frame the guest finishes.
    pub fn front_partial(&self) -> Option<TxPartial> {
        self.frames.front().and_then(|(_, s)| *s)
    }

    pub fn pop(&mut self) {
        if let Some((f, _)) = self.frames.pop_front() {
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
        self.frames.push_back((f, None));
        match self.frames.back_mut() {
            Some((f, _)) => &mut f[..],
            None => unreachable!("a frame was just pushed"),
        }
    }

    fn csum_offload(&self) -> bool {
        self.offload
    }

    fn segmentation(&self) -> GuestSegmentation {
        if self.offload {
            self.segmentation
        } else {
            GuestSegmentation::default()
        }
    }

    fn mark_partial(&mut self, partial: TxPartial) {
        if let Some((_, p)) = self.frames.back_mut() {
            *p = Some(partial);
        }
    }
}

pub(crate) struct IpDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut dyn GuestTx,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    mtu: usize,
    /// The guest's MSS on the connection being polled (see
    /// [`IpDevice::with_mss`]).
    mss: Option<u16>,
    /// What smoltcp is told at the interface's creation.
    segmentation: GuestSegmentation,
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
            mss: None,
            segmentation: GuestSegmentation::default(),
        }
    }

    /// The device an interface is created with: smoltcp reads its
    /// capabilities once, so an interface that may send TCP segments
    /// larger than the guest's MSS is built with `segmentation` (and
    /// rebuilt when the guest's offloads change).
    pub(crate) fn with_segmentation(mut self, segmentation: GuestSegmentation) -> Self {
        self.segmentation = segmentation;
        self
    }

    /// The MSS the guest announced on the TCP connection being polled:
    /// TCP segments from smoltcp larger than it go out as one frame marked
    /// for the guest to take whole ([`GuestTx::mark_partial`]).
    pub(crate) fn with_mss(mut self, mss: u16) -> Self {
        self.mss = Some(mss);
        self
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
    mss: Option<u16>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let offload = self.tx.csum_offload();
        let allowed = self.tx.segmentation();
        let buf = self.tx.frame(ETH_HEADER + len);
        let r = f(&mut buf[ETH_HEADER..]);
        // smoltcp wrote the IP packet; its version says the EtherType.
        let ethertype = match buf.get(ETH_HEADER).map(|b| b >> 4) {
            Some(6) => EthernetProtocol::Ipv6,
            _ => EthernetProtocol::Ipv4,
        };
        write_eth(buf, self.src_mac, self.dst_mac, ethertype);
        // Without offload, or for anything but a TCP segment, the checksum
        // is whole (a no-op for what smoltcp already summed).
        let partial = if offload {
            partial_tcp(&mut buf[ETH_HEADER..], self.mss, allowed)
        } else {
            None
        };
        match partial {
            Some(p) => self.tx.mark_partial(p),
            None => fill_tcp_checksum(&mut buf[ETH_HEADER..]),
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
                mss: self.mss,
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
            mss: self.mss,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // smoltcp reads these once, when the Interface is created, so they
        // cannot follow per-packet flags: it never touches TCP checksums, and
        // the gateway verifies them, and fills them in or leaves them
        // partial (see `fill_tcp_checksum`, `partial_tcp`).
        let mut checksum = ChecksumCapabilities::default();
        checksum.tcp = Checksum::None;
        caps.checksum = checksum;
        // TCP segments up to a whole IP packet of the link's MTU where the
        // guest takes them (smoltcp's own limit is one MSS otherwise). An
        // IPv6 segment must also fit the MTU: smoltcp drops larger ones.
        let whole = NonZeroUsize::new(self.mtu);
        let mut segmentation = SegmentationCapabilities::default();
        segmentation.tcpv4 = whole.filter(|_| self.segmentation.ipv4);
        segmentation.tcpv6 = whole.filter(|_| self.segmentation.ipv6);
        caps.segmentation = segmentation;
        caps
    }
}

/// If `packet` is a TCP segment: leaves a partial checksum (the
/// pseudo-header's sum) in it and says where it is. With the guest's `mss`
/// on the connection, a segment whose payload is larger than what one
/// segment of that MSS carries (less the segment's own TCP options, as the
/// sender counts it) is also marked for segmentation, if the guest takes
/// such segments for its IP version.
fn partial_tcp(
    packet: &mut [u8],
    mss: Option<u16>,
    allowed: GuestSegmentation,
) -> Option<TxPartial> {
    let ipv6 = packet.first()? >> 4 == 6;
    let (ip_header, tcp_len, pseudo) = if ipv6 {
        let ip = Ipv6Packet::new_checked(&*packet).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let len = usize::from(ip.payload_len());
        let sum =
            checksum::pseudo_header_v6(&ip.src_addr(), &ip.dst_addr(), IpProtocol::Tcp, len as u32);
        (ip.header_len(), len, sum)
    } else {
        let ip = Ipv4Packet::new_checked(&*packet).ok()?;
        if ip.next_header() != IpProtocol::Tcp {
            return None;
        }
        let header = usize::from(ip.header_len());
        let len = usize::from(ip.total_len()).checked_sub(header)?;
        let sum =
            checksum::pseudo_header_v4(&ip.src_addr(), &ip.dst_addr(), IpProtocol::Tcp, len as u32);
        (header, len, sum)
    };
    let mut tcp = TcpPacket::new_checked(packet.get_mut(ip_header..)?).ok()?;
    let tcp_header = usize::from(tcp.header_len());
    let payload = tcp_len.checked_sub(tcp_header)?;
    tcp.set_checksum(pseudo);
    // Each cut segment repeats the options: it carries that much less.
    let size = mss
        .filter(|_| allowed.allows(ipv6))
        .and_then(|mss| usize::from(mss).checked_sub(tcp_header.saturating_sub(20)))
        .filter(|&size| size > 0 && payload > size);
    Some(TxPartial {
        l4_offset: u16::try_from(ETH_HEADER + ip_header).ok()?,
        headers: u16::try_from(ETH_HEADER + ip_header + tcp_header).ok()?,
        segmentation: match size {
            Some(size) => Some(Segmentation {
                ipv6,
                size: u16::try_from(size).ok()?,
            }),
            None => None,
        },
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Repr, TcpRepr, TcpSeqNumber};

    /// An IPv4 TCP packet with `payload` bytes and, if `timestamps`, the
    /// 12 bytes of a timestamp option.
    fn packet(payload: usize, timestamps: bool) -> Vec<u8> {
        let data = vec![1u8; payload];
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: smoltcp::wire::TcpControl::None,
            seq_number: TcpSeqNumber(1),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 100,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: timestamps.then_some(smoltcp::wire::TcpTimestampRepr::new(1, 2)),
            payload: &data,
        };
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; 20 + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut buf[20..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &caps,
        );
        buf
    }

    const V4: GuestSegmentation = GuestSegmentation {
        ipv4: true,
        ipv6: false,
    };

    #[test]
    fn every_tcp_segment_gets_a_partial_checksum_and_larger_ones_a_size() {
        let seg = |p: &mut [u8], mss, allowed| {
            partial_tcp(p, Some(mss), allowed).and_then(|t| t.segmentation)
        };
        // 1460 bytes of payload: one full segment, nothing to cut, but the
        // checksum is still left for the guest to finish.
        let mut p = packet(1460, false);
        let t = partial_tcp(&mut p, Some(1460), V4).unwrap();
        assert_eq!(t.segmentation, None);
        assert_eq!((t.l4_offset, t.headers), (14 + 20, 14 + 40));
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_partial_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        // One byte more is cut into segments of the MSS.
        let mut p = packet(1461, false);
        let t = partial_tcp(&mut p, Some(1460), V4).unwrap();
        assert_eq!(
            t.segmentation,
            Some(Segmentation {
                ipv6: false,
                size: 1460
            })
        );
        assert_eq!((t.l4_offset, t.headers), (14 + 20, 14 + 40));
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_partial_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        // With 12 bytes of options each segment carries 12 bytes less.
        assert_eq!(seg(&mut packet(1448, true), 1460, V4), None);
        let t = partial_tcp(&mut packet(1449, true), Some(1460), V4).unwrap();
        assert_eq!(t.segmentation.map(|s| s.size), Some(1448));
        assert_eq!(t.headers, 14 + 20 + 32);
        // Not cut for a guest that takes no IPv4 segments, nor with an MSS
        // the options eat up, nor without a connection's MSS.
        assert_eq!(
            seg(&mut packet(3000, false), 1460, GuestSegmentation::default()),
            None
        );
        assert_eq!(seg(&mut packet(3000, true), 12, V4), None);
        assert_eq!(
            partial_tcp(&mut packet(3000, false), None, V4).map(|t| t.segmentation),
            Some(None)
        );
        // Not TCP, or not a packet: left alone.
        assert_eq!(partial_tcp(&mut [0x45, 0, 0], Some(1460), V4), None);
    }
}
