//! Building the frames the gateway sends to the guest: Ethernet + ARP,
//! Ethernet + IPv4 + UDP/ICMP ([`ipv6`]: Ethernet + IPv6 + UDP/ICMPv6).
//! Parsing uses `smoltcp::wire` directly.

pub(crate) mod ipv6;

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

/// Length of an Ethernet II header.
pub(crate) const ETH_HEADER: usize = 14;
/// Length of an IPv4 header without options.
pub(crate) const IPV4_HEADER: usize = 20;
/// Length of a UDP header.
pub(crate) const UDP_HEADER: usize = 8;
/// Default TTL of packets the gateway originates.
pub(crate) const TTL: u8 = 64;

/// Writes an Ethernet header into the first 14 bytes of `buf`.
pub(crate) fn write_eth(
    buf: &mut [u8],
    src: EthernetAddress,
    dst: EthernetAddress,
    ty: EthernetProtocol,
) {
    let mut frame = EthernetFrame::new_unchecked(buf);
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: ty,
    }
    .emit(&mut frame);
}

/// An ARP reply frame telling `target` that `sender_ip` is at `sender_mac`.
pub(crate) fn arp_reply(
    sender_mac: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_mac: EthernetAddress,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: sender_mac,
        source_protocol_addr: sender_ip,
        target_hardware_addr: target_mac,
        target_protocol_addr: target_ip,
    };
    let mut buf = vec![0u8; ETH_HEADER + repr.buffer_len()];
    write_eth(&mut buf, sender_mac, target_mac, EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[ETH_HEADER..]));
    buf
}

/// Addresses of a frame to the guest (`A`: the IP address type).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route<A = Ipv4Addr> {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src_ip: A,
    pub dst_ip: A,
}

/// Checksums for an IPv4 UDP datagram to the guest: with `offload` (the
/// guest accepted checksum offload: the host's kernel checked the data,
/// and the ring is memory) the UDP checksum is zero, "none", which IPv4
/// allows and every receiver and router takes as it is.
fn udp_checksums(offload: bool) -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    if offload {
        caps.udp = smoltcp::phy::Checksum::None;
    }
    caps
}

/// Total frame length of a UDP datagram with `payload_len` bytes.
pub(crate) fn udp_frame_len(payload_len: usize) -> usize {
    ETH_HEADER + IPV4_HEADER + UDP_HEADER + payload_len
}

/// Writes an Ethernet + IPv4 + UDP frame into `buf` (exactly
/// [`udp_frame_len`] bytes). With `offload`, the UDP checksum is left zero
/// (see [`udp_checksums`]).
pub(crate) fn write_udp(
    buf: &mut [u8],
    route: Route,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    offload: bool,
) {
    write_eth(buf, route.src_mac, route.dst_mac, EthernetProtocol::Ipv4);
    let udp = UdpRepr { src_port, dst_port };
    let ip_repr = Ipv4Repr {
        src_addr: route.src_ip,
        dst_addr: route.dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: UDP_HEADER + payload.len(),
        hop_limit: TTL,
    };
    let caps = udp_checksums(offload);
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]);
    ip_repr.emit(&mut packet, &caps);
    let mut dgram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut dgram,
        &ip_repr.src_addr.into(),
        &ip_repr.dst_addr.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
}

/// An Ethernet + IPv4 + ICMP frame.
pub(crate) fn icmp_frame(route: Route, repr: &Icmpv4Repr) -> Vec<u8> {
    let ip_repr = Ipv4Repr {
        src_addr: route.src_ip,
        dst_addr: route.dst_ip,
        next_header: IpProtocol::Icmp,
        payload_len: repr.buffer_len(),
        hop_limit: TTL,
    };
    let mut buf = vec![0u8; ETH_HEADER + IPV4_HEADER + repr.buffer_len()];
    write_eth(
        &mut buf,
        route.src_mac,
        route.dst_mac,
        EthernetProtocol::Ipv4,
    );
    let caps = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]);
    ip_repr.emit(&mut packet, &caps);
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW_MAC: EthernetAddress = EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
    const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    #[test]
    fn udp_frame_parses_back_with_valid_checksums() {
        let route = Route {
            src_mac: GW_MAC,
            dst_mac: GUEST_MAC,
            src_ip: Ipv4Addr::new(192, 168, 127, 1),
            dst_ip: Ipv4Addr::new(192, 168, 127, 2),
        };
        let mut buf = vec![0u8; udp_frame_len(5)];
        write_udp(&mut buf, route, 53, 40000, b"hello", false);
        let eth = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(eth.dst_addr(), GUEST_MAC);
        let ipp = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ipp.verify_checksum());
        let udp = UdpPacket::new_checked(ipp.payload()).unwrap();
        assert!(udp.verify_checksum(&ipp.src_addr().into(), &ipp.dst_addr().into()));
        assert_eq!(udp.payload(), b"hello");
        assert_eq!((udp.src_port(), udp.dst_port()), (53, 40000));

        // Offloaded: the checksum is left zero ("none" for IPv4 UDP).
        write_udp(&mut buf, route, 53, 40000, b"hello", true);
        let ipp = Ipv4Packet::new_checked(&buf[ETH_HEADER..]).unwrap();
        assert!(ipp.verify_checksum());
        assert_eq!(UdpPacket::new_checked(ipp.payload()).unwrap().checksum(), 0);
    }

    #[test]
    fn arp_reply_answers_the_asker() {
        let f = arp_reply(
            GW_MAC,
            Ipv4Addr::new(192, 168, 127, 254),
            GUEST_MAC,
            Ipv4Addr::new(192, 168, 127, 2),
        );
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        match repr {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Reply);
                assert_eq!(source_hardware_addr, GW_MAC);
                assert_eq!(source_protocol_addr, Ipv4Addr::new(192, 168, 127, 254));
            }
            _ => panic!("not an IPv4 ARP reply"),
        }
    }
}
