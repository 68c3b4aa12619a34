//! The gateway's IPv6 side without a VM: frames built with `smoltcp::wire`
//! in, frames out of a recording `GuestTx`, real sockets on the host's
//! `::1`.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv6Packet,
    Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::tests::{
    dns_query, gateway, gateway_with, pump, Recorder, GUEST6, GUEST_MAC, GW6, GW_MAC, HOST6,
    PREFIX6,
};
use super::Gateway;
use crate::config::Ipv6Config;
use crate::stats::DropReason;
use crate::wire::ipv6::{icmp_raw_frame, IPV6_HEADER};
use crate::wire::{write_eth, Route, ETH_HEADER};

const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0x00ff, 0xfe12, 0x3456);

fn ip6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER + IPV6_HEADER + payload_len];
    write_eth(&mut buf, GUEST_MAC, GW_MAC, EthernetProtocol::Ipv6);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: next,
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut buf[ETH_HEADER..]));
    fill(&mut buf[ETH_HEADER + IPV6_HEADER..]);
    buf
}

/// An ICMPv6 message (checksum filled in) from the guest.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, message: &[u8]) -> Vec<u8> {
    let route = Route {
        src_mac: GUEST_MAC,
        dst_mac: GW_MAC,
        src_ip: src,
        dst_ip: dst,
    };
    icmp_raw_frame(route, hop_limit, message)
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let repr = Icmpv6Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"ping6",
    };
    ip6_frame(
        src,
        dst,
        hop_limit,
        IpProtocol::Icmpv6,
        repr.buffer_len(),
        |b| {
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(b),
                &ChecksumCapabilities::default(),
            )
        },
    )
}

fn udp6(sport: u16, dst: Ipv6Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    ip6_frame(GUEST6, dst, 64, IpProtocol::Udp, 8 + data.len(), |b| {
        repr.emit(
            &mut UdpPacket::new_unchecked(b),
            &IpAddress::Ipv6(GUEST6),
            &IpAddress::Ipv6(dst),
            data.len(),
            |p| p.copy_from_slice(data),
            &ChecksumCapabilities::default(),
        )
    })
}

fn tcp6(
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    data: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(65440),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: data,
    };
    ip6_frame(GUEST6, dst, 64, IpProtocol::Tcp, repr.buffer_len(), |b| {
        repr.emit(
            &mut TcpPacket::new_unchecked(b),
            &IpAddress::Ipv6(GUEST6),
            &IpAddress::Ipv6(dst),
            &ChecksumCapabilities::default(),
        )
    })
}

/// An IPv6 packet the gateway sent: (ip header, payload).
fn ip6_out(frame: &[u8]) -> Option<(Ipv6Repr, Vec<u8>, [u8; 6])> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv6 {
        return None;
    }
    let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
    let repr = Ipv6Repr::parse(&ip).ok()?;
    Some((repr, ip.payload().to_vec(), eth.dst_addr().0))
}

/// ICMPv6 messages the gateway sent: (ip header, message), checksum checked.
fn icmp6_out(tx: &Recorder) -> Vec<(Ipv6Repr, Vec<u8>)> {
    tx.frames
        .iter()
        .filter_map(|f| ip6_out(f))
        .filter(|(ip, _, _)| ip.next_header == IpProtocol::Icmpv6)
        .map(|(ip, body, _)| {
            let p = Icmpv6Packet::new_checked(&body[..]).unwrap();
            assert!(
                p.verify_checksum(&ip.src_addr, &ip.dst_addr),
                "bad ICMPv6 checksum"
            );
            (ip, body)
        })
        .collect()
}

fn tcp6_out(tx: &Recorder) -> Vec<(TcpControl, u32, Option<u32>, Vec<u8>)> {
    tx.frames
        .iter()
        .filter_map(|f| ip6_out(f))
        .filter(|(ip, _, _)| ip.next_header == IpProtocol::Tcp)
        .map(|(ip, body, _)| {
            let p = TcpPacket::new_checked(&body[..]).unwrap();
            assert!(p.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()));
            let r = TcpRepr::parse(
                &p,
                &ip.src_addr.into(),
                &ip.dst_addr.into(),
                &ChecksumCapabilities::default(),
            )
            .unwrap();
            (
                r.control,
                r.seq_number.0 as u32,
                r.ack_number.map(|a| a.0 as u32),
                r.payload.to_vec(),
            )
        })
        .collect()
}

fn udp6_out(tx: &Recorder) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    tx.frames
        .iter()
        .filter_map(|f| ip6_out(f))
        .filter(|(ip, _, _)| ip.next_header == IpProtocol::Udp)
        .map(|(ip, body, _)| {
            let p = UdpPacket::new_checked(&body[..]).unwrap();
            assert!(p.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()));
            (
                SocketAddr::from((ip.src_addr, p.src_port())),
                SocketAddr::from((ip.dst_addr, p.dst_port())),
                p.payload().to_vec(),
            )
        })
        .collect()
}

fn neighbor_solicit(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, with_ll: bool) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if with_ll {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&GUEST_MAC.0);
    }
    icmp6(src, dst, 255, &m)
}

#[test]
fn neighbor_solicitations_for_the_gateway_and_aliases_are_answered_dad_is_not() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let ll = Ipv6Config::link_local(GW_MAC);
    for target in [GW6, HOST6, ll] {
        let sn = crate::services::ndp::solicited_node(target);
        gw.guest_frame(
            &neighbor_solicit(LINK_LOCAL, sn, target, true),
            false,
            &mut tx,
        );
    }
    let out = icmp6_out(&tx);
    assert_eq!(out.len(), 3, "{out:?}");
    for ((ip, m), target) in out.iter().zip([GW6, HOST6, ll]) {
        assert_eq!(
            (ip.src_addr, ip.dst_addr, ip.hop_limit),
            (target, LINK_LOCAL, 255)
        );
        assert_eq!(m[0], 136);
        assert_eq!(m[4] & 0xe0, 0xe0, "router, solicited, override");
        assert_eq!(&m[8..24], &target.octets());
        assert_eq!(&m[24..32], &[2, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
    }
    // DAD for the guest's own address: no answer, and the gateway learns it.
    tx.frames.clear();
    let sn = crate::services::ndp::solicited_node(GUEST6);
    gw.guest_frame(
        &neighbor_solicit(Ipv6Addr::UNSPECIFIED, sn, GUEST6, false),
        false,
        &mut tx,
    );
    // Nor for another address in the prefix, or with a wrong hop limit.
    let other = Ipv6Addr::from(u128::from(PREFIX6) | 0x77);
    gw.guest_frame(
        &neighbor_solicit(LINK_LOCAL, other, other, true),
        false,
        &mut tx,
    );
    let mut bad_hop = neighbor_solicit(LINK_LOCAL, GW6, GW6, true);
    bad_hop[ETH_HEADER + 7] = 64;
    gw.guest_frame(&bad_hop, false, &mut tx);
    assert!(tx.frames.is_empty(), "{:?}", icmp6_out(&tx));
    assert_eq!(gw.flows.stack.link.guest_ip6, Some(GUEST6));
    assert_eq!(shared.stats.drop_count(DropReason::Malformed), 1);
}

#[test]
fn router_solicitation_gets_an_advertisement_at_most_every_three_seconds() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    let rs = icmp6(
        LINK_LOCAL,
        "ff02::2".parse().unwrap(),
        255,
        &[133, 0, 0, 0, 0, 0, 0, 0],
    );
    gw.guest_frame(&rs, false, &mut tx);
    gw.guest_frame(&rs, false, &mut tx);
    let out = icmp6_out(&tx);
    assert_eq!(out.len(), 1, "rate limited");
    let (ip, m) = &out[0];
    assert_eq!(ip.src_addr, Ipv6Config::link_local(GW_MAC));
    assert_eq!(ip.dst_addr, "ff02::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(ip.hop_limit, 255);
    assert_eq!(ip6_out(&tx.frames[0]).unwrap().2, [0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(m[0], 134);
    // smoltcp's parser agrees: prefix, MTU, source link-layer address.
    let p = smoltcp::wire::NdiscRepr::parse(&Icmpv6Packet::new_checked(&m[..]).unwrap()).unwrap();
    match p {
        smoltcp::wire::NdiscRepr::RouterAdvert {
            mtu,
            prefix_info,
            lladdr,
            ..
        } => {
            assert_eq!(mtu, Some(65520));
            let pi = prefix_info.unwrap();
            assert_eq!((pi.prefix, pi.prefix_len), (PREFIX6, 64));
            assert!(pi.is_valid_prefix_info());
            assert_eq!(lladdr.unwrap().as_bytes(), &GW_MAC.0);
        }
        other => panic!("not an RA: {other:?}"),
    }
}

#[test]
fn echo_to_the_gateway_and_host_alias_is_answered() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    for dst in [GW6, HOST6, Ipv6Config::link_local(GW_MAC)] {
        gw.guest_frame(&echo6(GUEST6, dst, 64), false, &mut tx);
    }
    let out = icmp6_out(&tx);
    assert_eq!(out.len(), 3);
    for ((ip, m), dst) in out.iter().zip([GW6, HOST6]) {
        assert_eq!((ip.src_addr, ip.dst_addr), (dst, GUEST6));
        assert_eq!(m[0], 129, "echo reply");
        assert_eq!(&m[8..], b"ping6");
    }
}

#[test]
fn spoofed_sources_fragments_and_deep_headers_are_dropped_and_counted() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    // The guest may not speak as the gateway or an alias.
    gw.guest_frame(&echo6(GW6, HOST6, 64), false, &mut tx);
    gw.guest_frame(&echo6(HOST6, GW6, 64), false, &mut tx);
    gw.guest_frame(&echo6("ff02::1".parse().unwrap(), GW6, 64), false, &mut tx);
    assert_eq!(shared.stats.drop_count(DropReason::SourceAddress), 3);
    // A fragment header.
    let frag = ip6_frame(GUEST6, GW6, 64, IpProtocol::Ipv6Frag, 16, |b| {
        b[0] = u8::from(IpProtocol::Udp);
        b[3] = 1; // more fragments
    });
    gw.guest_frame(&frag, false, &mut tx);
    assert_eq!(shared.stats.drop_count(DropReason::Fragment), 1);
    // A chain of destination-options headers longer than the walk allows,
    // and one that points past the packet: never a loop, never a panic.
    let chain = ip6_frame(GUEST6, GW6, 64, IpProtocol::Ipv6Opts, 8 * 12, |b| {
        for h in b.chunks_mut(8) {
            h[0] = u8::from(IpProtocol::Ipv6Opts);
        }
    });
    gw.guest_frame(&chain, false, &mut tx);
    let short = ip6_frame(GUEST6, GW6, 64, IpProtocol::HopByHop, 8, |b| {
        b[0] = u8::from(IpProtocol::Udp);
        b[1] = 9;
    });
    gw.guest_frame(&short, false, &mut tx);
    assert_eq!(shared.stats.drop_count(DropReason::Unsupported), 1);
    assert_eq!(shared.stats.drop_count(DropReason::Malformed), 1);
    assert!(tx.frames.is_empty());
}

#[test]
fn hop_limit_runs_out_and_oversize_packets_get_icmpv6_errors() {
    let (mut gw, _) = gateway_with(|c| c.mtu = 1400);
    let mut tx = Recorder::default();
    let outside: Ipv6Addr = "2001:db8::7".parse().unwrap();
    gw.guest_frame(&udp6(40000, outside, 9, b"x"), false, &mut tx);
    let mut last_hop = udp6(40000, outside, 9, b"x");
    last_hop[ETH_HEADER + 7] = 1;
    tx.frames.clear();
    gw.guest_frame(&last_hop, false, &mut tx);
    let out = icmp6_out(&tx);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0.src_addr, out[0].0.dst_addr), (GW6, GUEST6));
    assert_eq!(
        (out[0].1[0], out[0].1[1]),
        (3, 0),
        "time exceeded in transit"
    );
    tx.frames.clear();
    gw.guest_frame(&udp6(40000, outside, 9, &[0u8; 1400]), false, &mut tx);
    let out = icmp6_out(&tx);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1[0], 2, "packet too big");
    assert_eq!(u32::from_be_bytes(out[0].1[4..8].try_into().unwrap()), 1400);
    assert!(
        out[0].1.len() + IPV6_HEADER <= 1280,
        "errors fit the minimum MTU"
    );
}

#[test]
fn tcp_to_the_v6_host_alias_reaches_the_hosts_loopback() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(
        &tcp6(41000, HOST6, port, TcpControl::Syn, 1000, None, &[]),
        false,
        &mut tx,
    );
    let (mut server, peer) = listener.accept().unwrap();
    assert!(peer.ip().is_loopback());
    pump(&mut gw, &mut tx, |t| {
        tcp6_out(t).iter().any(|s| s.0 == TcpControl::Syn)
    });
    let synack = tcp6_out(&tx)
        .into_iter()
        .find(|s| s.0 == TcpControl::Syn)
        .unwrap();
    assert_eq!(synack.2, Some(1001));
    let isn = synack.1;
    gw.guest_frame(
        &tcp6(
            41000,
            HOST6,
            port,
            TcpControl::Psh,
            1001,
            Some(isn + 1),
            b"hello6",
        ),
        false,
        &mut tx,
    );
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello6");
    server.write_all(b"world6").unwrap();
    pump(&mut gw, &mut tx, |t| {
        tcp6_out(t).iter().any(|s| s.3 == b"world6")
    });
}

#[test]
fn tcp_to_an_unroutable_or_refusing_v6_destination_is_reset_at_once() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    // v4-mapped: an IPv4 address in disguise is never NATed.
    let mapped: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
    gw.guest_frame(
        &tcp6(41001, mapped, 80, TcpControl::Syn, 5, None, &[]),
        false,
        &mut tx,
    );
    let out = tcp6_out(&tx);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, TcpControl::Rst);
    assert_eq!(gw.flow_count(), 0);
}

#[test]
fn udp_to_the_v6_host_alias_round_trips() {
    let Ok(server) = UdpSocket::bind("[::1]:0") else {
        return;
    };
    let port = server.local_addr().unwrap().port();
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(&udp6(40001, HOST6, port, b"q6"), false, &mut tx);
    let mut buf = [0u8; 16];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, peer) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"q6");
    server.send_to(b"a6", peer).unwrap();
    pump(&mut gw, &mut tx, |t| !udp6_out(t).is_empty());
    let (from, to, data) = udp6_out(&tx).remove(0);
    assert_eq!(
        (from, to, data),
        (
            SocketAddr::from((HOST6, port)),
            SocketAddr::from((GUEST6, 40001)),
            b"a6".to_vec()
        )
    );
}

#[test]
fn dns_over_v6_answers_aaaa_for_local_names() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    let mut q = dns_query(9, "host.airlock.internal");
    // QTYPE AAAA.
    let at = q.len() - 4;
    q[at..at + 2].copy_from_slice(&28u16.to_be_bytes());
    gw.guest_frame(&udp6(5353, GW6, 53, &q), false, &mut tx);
    let out = udp6_out(&tx);
    assert_eq!(out.len(), 1);
    let reply = &out[0].2;
    assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
    assert_eq!(&reply[reply.len() - 16..], &HOST6.octets());
    assert_eq!(out[0].0, SocketAddr::from((GW6, 53)));
}

#[test]
fn no_ipv6_drops_every_ipv6_frame() {
    let (mut gw, shared) = gateway_with(|c| c.ipv6 = None);
    let mut tx = Recorder::default();
    let rs = icmp6(
        LINK_LOCAL,
        "ff02::2".parse().unwrap(),
        255,
        &[133, 0, 0, 0, 0, 0, 0, 0],
    );
    gw.guest_frame(&rs, false, &mut tx);
    assert!(tx.frames.is_empty());
    assert_eq!(shared.stats.drop_count(DropReason::Unsupported), 1);
    // And the periodic timer never advertises.
    assert!(gw.router.is_none());
}

#[test]
fn dhcpv6_solicit_gets_the_slaac_address_and_dns_from_the_link_local_address() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    // A Solicit with client id, IA_NA and rapid commit.
    let mut m = vec![1, 0xab, 0xcd, 0xef];
    m.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]);
    m.extend_from_slice(&GUEST_MAC.0);
    m.extend_from_slice(&[0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&[0, 14, 0, 0]);
    gw.guest_frame(&dhcp6_frame(&m), false, &mut tx);
    let out = udp6_out(&tx);
    assert_eq!(out.len(), 1);
    let (from, to, reply) = &out[0];
    assert_eq!(
        *from,
        SocketAddr::from((Ipv6Config::link_local(GW_MAC), 547))
    );
    assert_eq!(*to, SocketAddr::from((LINK_LOCAL, 546)));
    assert_eq!(reply[0], 7, "rapid commit: a Reply");
    assert!(
        reply.windows(16).any(|w| w == GUEST6.octets()),
        "the SLAAC address"
    );
    assert!(
        reply.windows(16).any(|w| w == GW6.octets()),
        "the DNS server"
    );
    let leases = gw.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].ip, std::net::IpAddr::V6(GUEST6));
    assert_eq!(gw.flows.stack.link.guest_ip6, Some(GUEST6));
    let _ = Instant::now();
}

/// A DHCPv6 message from the guest's link-local address to all servers.
fn dhcp6_frame(m: &[u8]) -> Vec<u8> {
    let all_dhcp: Ipv6Addr = "ff02::1:2".parse().unwrap();
    let repr = UdpRepr {
        src_port: 546,
        dst_port: 547,
    };
    ip6_frame(LINK_LOCAL, all_dhcp, 1, IpProtocol::Udp, 8 + m.len(), |b| {
        repr.emit(
            &mut UdpPacket::new_unchecked(b),
            &IpAddress::Ipv6(LINK_LOCAL),
            &IpAddress::Ipv6(all_dhcp),
            m.len(),
            |p| p.copy_from_slice(m),
            &ChecksumCapabilities::default(),
        )
    })
}

/// The options of an RA (after its 16-byte header) or of a DHCPv6 reply
/// (after its 4-byte header), as (code, body).
fn ra_options(m: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 16;
    while at + 2 <= m.len() {
        let len = usize::from(m[at + 1]) * 8;
        assert!(len > 0 && at + len <= m.len(), "bad RA option at {at}");
        out.push((m[at], m[at + 2..at + len].to_vec()));
        at += len;
    }
    out
}

fn dhcp6_options(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= m.len() {
        let code = u16::from_be_bytes([m[at], m[at + 1]]);
        let len = usize::from(u16::from_be_bytes([m[at + 2], m[at + 3]]));
        out.push((code, m[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

/// The DNS service's search list, changed at run time (a reload of the
/// host's resolv.conf), reaches the IPv6 side: the next Router
/// Advertisement's DNSSL, sent without waiting for the periodic one, and
/// DHCPv6's domain list.
#[test]
fn the_live_search_list_reaches_dnssl_and_dhcpv6() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let rs = icmp6(
        LINK_LOCAL,
        "ff02::2".parse().unwrap(),
        255,
        &[133, 0, 0, 0, 0, 0, 0, 0],
    );
    gw.guest_frame(&rs, false, &mut tx);
    let (_, ra) = icmp6_out(&tx).pop().expect("an RA");
    assert!(
        ra_options(&ra).iter().all(|(code, _)| *code != 31),
        "no DNSSL yet"
    );
    let info_request = [
        11, 0, 0, 7, 0, 1, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56,
    ];
    let domain_list = |gw: &mut Gateway, tx: &mut Recorder| {
        tx.frames.clear();
        gw.guest_frame(&dhcp6_frame(&info_request), false, tx);
        let (_, _, reply) = udp6_out(tx).pop().expect("a DHCPv6 reply");
        assert_eq!(reply[0], 7);
        dhcp6_options(&reply)
            .into_iter()
            .find(|(code, _)| *code == 24)
            .map(|(_, body)| body)
    };
    assert_eq!(domain_list(&mut gw, &mut tx), None);
    let periodic = gw.router.as_ref().unwrap().next_periodic();

    shared.dns_set_upstreams(
        &[],
        Some(vec!["corp.test".into(), "lab.corp.test".into()]),
        "test",
    );
    gw.control(&mut tx);
    let wire = b"\x04corp\x04test\x00\x03lab\x04corp\x04test\x00".to_vec();
    assert_eq!(domain_list(&mut gw, &mut tx), Some(wire.clone()));
    // Due once the 3 s between advertisements have passed, not at the
    // periodic time.
    let due = gw.router.as_ref().unwrap().next_periodic();
    assert!(due < periodic);
    assert!(due <= Instant::now() + crate::services::ndp::MIN_DELAY_BETWEEN_RAS);
    tx.frames.clear();
    gw.router_timer(due, &mut tx);
    let (ip, ra) = icmp6_out(&tx).pop().expect("an RA for the change");
    assert_eq!(ip.dst_addr, "ff02::1".parse::<Ipv6Addr>().unwrap());
    let dnssl = ra_options(&ra)
        .into_iter()
        .find(|(code, _)| *code == 31)
        .map(|(_, body)| body)
        .expect("a DNSSL option");
    // Reserved, lifetime, the names, zero padding.
    assert_eq!(&dnssl[6..6 + wire.len()], &wire[..]);
    assert!(dnssl[6 + wire.len()..].iter().all(|b| *b == 0));

    // The same list again changes nothing; an empty one removes both.
    let next = gw.router.as_ref().unwrap().next_periodic();
    shared.dns_set_upstreams(
        &[],
        Some(vec!["corp.test".into(), "lab.corp.test".into()]),
        "test",
    );
    gw.control(&mut tx);
    assert_eq!(gw.router.as_ref().unwrap().next_periodic(), next);
    shared.dns_set_upstreams(&[], Some(Vec::new()), "test");
    gw.control(&mut tx);
    assert_eq!(domain_list(&mut gw, &mut tx), None);
}

/// A record added at run time (control API) answers AAAA as well as A, to
/// queries over either family.
#[test]
fn runtime_records_answer_aaaa_and_a_over_v6() {
    use crate::services::dns::RecordData;
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let v6: Ipv6Addr = "fd00::5".parse().unwrap();
    for data in [
        RecordData::Aaaa(v6),
        RecordData::A(std::net::Ipv4Addr::new(10, 0, 0, 5)),
    ] {
        assert!(shared.dns_add_record("db.test", data).unwrap());
    }
    gw.control(&mut tx);
    let ask = |gw: &mut Gateway, tx: &mut Recorder, qtype: u16| {
        tx.frames.clear();
        let mut q = dns_query(10, "db.test");
        let at = q.len() - 4;
        q[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
        gw.guest_frame(&udp6(5354, GW6, 53, &q), false, tx);
        let (_, _, reply) = udp6_out(tx).pop().expect("a reply");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        reply
    };
    assert!(ask(&mut gw, &mut tx, 28).ends_with(&v6.octets()));
    assert!(ask(&mut gw, &mut tx, 1).ends_with(&[10, 0, 0, 5]));
    // Removed: the name is no longer local (no resolver here: SERVFAIL).
    shared.dns_remove_records("db.test", None).unwrap();
    tx.frames.clear();
    let mut q = dns_query(11, "db.test");
    let at = q.len() - 4;
    q[at..at + 2].copy_from_slice(&28u16.to_be_bytes());
    gw.guest_frame(&udp6(5354, GW6, 53, &q), false, &mut tx);
    let (_, _, reply) = udp6_out(&tx).pop().expect("a reply");
    assert_eq!(reply[3] & 0x0f, 2, "SERVFAIL");
}
