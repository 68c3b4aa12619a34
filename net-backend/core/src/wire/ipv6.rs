//! Ethernet + IPv6 frames to the guest: UDP datagrams and ICMPv6 messages
//! (smoltcp's representations, or a message the gateway encoded itself, as
//! Neighbor Discovery with options smoltcp does not know).

use std::net::Ipv6Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    checksum, EthernetAddress, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol,
    Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};

use super::{write_eth, Route, ETH_HEADER, TTL, UDP_HEADER};

/// Length of the fixed IPv6 header.
pub(crate) const IPV6_HEADER: usize = 40;
/// Hop limit of Neighbor Discovery messages (RFC 4861 §6.1: receivers drop
/// anything else).
pub(crate) const ND_HOP_LIMIT: u8 = 255;

/// The Ethernet address of an IPv6 multicast group (RFC 2464 §7).
pub(crate) fn multicast_mac(group: Ipv6Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Total frame length of a UDP datagram with `payload_len` bytes.
pub(crate) fn udp_frame_len(payload_len: usize) -> usize {
    ETH_HEADER + IPV6_HEADER + UDP_HEADER + payload_len
}

fn write_ip(buf: &mut [u8], route: &Route<Ipv6Addr>, next: IpProtocol, len: usize, hop: u8) {
    write_eth(buf, route.src_mac, route.dst_mac, EthernetProtocol::Ipv6);
    let repr = Ipv6Repr {
        src_addr: route.src_ip,
        dst_addr: route.dst_ip,
        next_header: next,
        payload_len: len,
        hop_limit: hop,
    };
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[ETH_HEADER..]));
}

/// Writes an Ethernet + IPv6 + UDP frame into `buf` (exactly
/// [`udp_frame_len`] bytes). The UDP checksum is always filled in: IPv6
/// receivers drop datagrams whose checksum is zero (RFC 8200 §8.1), even
/// when the device marks them valid.
pub(crate) fn write_udp(
    buf: &mut [u8],
    route: Route<Ipv6Addr>,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    _offload: bool,
) {
    write_ip(
        buf,
        &route,
        IpProtocol::Udp,
        UDP_HEADER + payload.len(),
        TTL,
    );
    let mut dgram = UdpPacket::new_unchecked(&mut buf[ETH_HEADER + IPV6_HEADER..]);
    UdpRepr { src_port, dst_port }.emit(
        &mut dgram,
        &IpAddress::Ipv6(route.src_ip),
        &IpAddress::Ipv6(route.dst_ip),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
}

/// An Ethernet + IPv6 + ICMPv6 frame (hop limit 64).
pub(crate) fn icmp_frame(route: Route<Ipv6Addr>, repr: &Icmpv6Repr) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + repr.buffer_len()];
    write_ip(&mut buf, &route, IpProtocol::Icmpv6, repr.buffer_len(), TTL);
    repr.emit(
        &route.src_ip,
        &route.dst_ip,
        &mut Icmpv6Packet::new_unchecked(&mut buf[ETH_HEADER + IPV6_HEADER..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// An Ethernet + IPv6 + ICMPv6 frame around `message` (type, code, a zero
/// checksum and the body), with the checksum filled in.
pub(crate) fn icmp_raw_frame(route: Route<Ipv6Addr>, hop_limit: u8, message: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + message.len()];
    write_ip(
        &mut buf,
        &route,
        IpProtocol::Icmpv6,
        message.len(),
        hop_limit,
    );
    let body = &mut buf[ETH_HEADER + IPV6_HEADER..];
    body.copy_from_slice(message);
    if body.len() >= 4 {
        body[2..4].fill(0);
        let sum = !checksum::combine(&[
            checksum::pseudo_header_v6(
                &route.src_ip,
                &route.dst_ip,
                IpProtocol::Icmpv6,
                message.len() as u32,
            ),
            checksum::data(body),
        ]);
        body[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    buf
}

/// Whether the ICMPv6 message in `message` (sent from `src` to `dst`) has
/// a valid checksum.
pub(crate) fn icmp_checksum_ok(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> bool {
    checksum::combine(&[
        checksum::pseudo_header_v6(&src, &dst, IpProtocol::Icmpv6, message.len() as u32),
        checksum::data(message),
    ]) == !0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_icmp_frames_parse_back_with_valid_checksums() {
        let route = Route {
            src_mac: EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]),
            dst_mac: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            src_ip: "fd00::1".parse().unwrap(),
            dst_ip: "fd00::2".parse().unwrap(),
        };
        let mut buf = vec![0u8; udp_frame_len(5)];
        write_udp(&mut buf, route, 53, 40000, b"hello", true);
        let ip = Ipv6Packet::new_checked(&buf[ETH_HEADER..]).unwrap();
        assert_eq!(ip.payload_len(), 13);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_ne!(udp.checksum(), 0, "IPv6 UDP needs its checksum");
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(udp.payload(), b"hello");

        let frame = icmp_raw_frame(route, ND_HOP_LIMIT, &[128, 0, 0xff, 0xff, 0, 1, 0, 2]);
        let ip = Ipv6Packet::new_checked(&frame[ETH_HEADER..]).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        assert!(icmp_checksum_ok(ip.src_addr(), ip.dst_addr(), ip.payload()));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        assert_eq!(
            multicast_mac("ff02::1:ff12:3456".parse().unwrap()),
            EthernetAddress([0x33, 0x33, 0xff, 0x12, 0x34, 0x56])
        );
    }
}
