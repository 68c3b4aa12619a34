//! The edge between the gateway and smoltcp: a `phy::Device` that hands
//! smoltcp at most one IPv4 packet (the segment being processed) and writes
//! whatever smoltcp transmits to the guest as Ethernet frames.
//!
//! smoltcp runs with `Medium::Ip`: the gateway owns the Ethernet layer (ARP,
//! MAC addresses), so smoltcp never needs a neighbour cache.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

use super::wire::{write_eth, ETH_HEADER};
use super::GuestTx;

pub struct IpDevice<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut dyn GuestTx,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    mtu: usize,
}

impl<'a> IpDevice<'a> {
    pub fn new(
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
    pub fn with_packet(mut self, packet: &'a [u8]) -> Self {
        self.rx = Some(packet);
        self
    }
}

pub struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

pub struct TxToken<'b> {
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
        write_eth(buf, self.src_mac, self.dst_mac, EthernetProtocol::Ipv4);
        let r = f(&mut buf[ETH_HEADER..]);
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

/// Computes the TCP checksum of the IPv4 packet in `packet` (a no-op for
/// anything else): frames for a guest without checksum offload.
pub fn fill_tcp_checksum(packet: &mut [u8]) {
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
