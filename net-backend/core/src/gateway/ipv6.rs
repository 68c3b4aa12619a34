//! The IPv6 side of the demultiplexer: header checks (version, length,
//! the guest's source address, extension headers, fragments, hop limit,
//! packets larger than the link), then Neighbor Discovery, ICMPv6 echo and
//! DHCPv6 answered here, and TCP and UDP handed to the dispatch IPv4 uses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use airlock_common::ratelimited;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, Icmpv6Packet, Icmpv6Repr, Icmpv6TimeExceeded, IpProtocol, Ipv6Packet, Ipv6Repr,
};

use super::{Gateway, ROUTER_TIMER};
use crate::config::{Dest, Ipv6Config};
use crate::flows::GuestPacket;
use crate::phy::GuestTx;
use crate::services::ndp::{self, NdpMessage};
use crate::stats::DropReason;
use crate::wire::ipv6::{self as wire6, IPV6_HEADER, ND_HOP_LIMIT};
use crate::wire::Route;

/// Extension headers walked before giving up on a packet.
const MAX_EXTENSION_HEADERS: usize = 8;
/// The all-nodes multicast group.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All DHCPv6 relay agents and servers.
const ALL_DHCP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// The minimum IPv6 MTU: ICMPv6 errors quote at most this much.
const MIN_MTU: usize = 1280;

/// ICMPv6 message types the demultiplexer looks at.
mod icmp {
    pub(super) const ECHO_REQUEST: u8 = 128;
}

impl Gateway {
    /// Handles the IPv6 packet in `payload` from the guest at `src_mac`.
    pub(super) fn ipv6(
        &mut self,
        src_mac: EthernetAddress,
        payload: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        let Ok(pkt) = Ipv6Packet::new_checked(payload) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        if pkt.version() != 6 {
            self.dropped(DropReason::Malformed);
            return;
        }
        // Strip Ethernet padding: the packet is exactly header + payload.
        let Some(ip_bytes) = payload.get(..IPV6_HEADER + usize::from(pkt.payload_len())) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let (src, dst, hop_limit) = (pkt.src_addr(), pkt.dst_addr(), pkt.hop_limit());
        // The guest may not speak as the gateway or an alias, nor from a
        // multicast address.
        if src.is_multicast() || self.cfg.is_ours6(src) {
            self.dropped(DropReason::SourceAddress);
            return;
        }
        let Some((next, offset)) = self.skip_extensions(ip_bytes, pkt.next_header()) else {
            return;
        };
        let l4 = &ip_bytes[offset..];
        let dest = if dst.is_multicast() {
            Dest::Unroutable
        } else {
            self.cfg.classify(dst.into())
        };
        if dest == Dest::Outside && hop_limit <= 1 {
            // A router's duty for what it forwards.
            self.icmp6_error(ip_bytes, src, Icmpv6Error::HopLimit, tx);
            return;
        }
        if ip_bytes.len() > self.cfg.mtu {
            // Larger than the link: the guest's MTU is above ours. IPv6
            // routers do not fragment; they say how large a packet may be.
            self.dropped(DropReason::Oversize);
            self.icmp6_error(ip_bytes, src, Icmpv6Error::TooBig, tx);
            return;
        }
        if src.is_unspecified() && next != IpProtocol::Icmpv6 {
            self.dropped(DropReason::SourceAddress);
            return;
        }
        match next {
            IpProtocol::Icmpv6 => {
                self.icmp6(src_mac, ip_bytes, src, dst, hop_limit, l4, partial_csum, tx)
            }
            IpProtocol::Tcp => {
                // smoltcp reads the fixed header only: give it the segment
                // right behind one.
                let compact;
                let ip = if offset == IPV6_HEADER {
                    ip_bytes
                } else {
                    compact = without_extensions(src, dst, hop_limit, IpProtocol::Tcp, l4);
                    &compact[..]
                };
                self.tcp(ip, src.into(), dst.into(), l4, partial_csum, tx)
            }
            IpProtocol::Udp => {
                let to_dhcp = l4.get(2..4) == Some(&547u16.to_be_bytes()[..])
                    && (dst == ALL_DHCP || dest == Dest::Gateway);
                if to_dhcp {
                    self.dhcp6(src_mac, src, l4, partial_csum, tx);
                } else {
                    self.udp(ip_bytes, src.into(), dst.into(), l4, tx);
                }
            }
            _ => self.dropped(DropReason::Unsupported),
        }
    }

    /// Walks the extension headers after the fixed header: the protocol
    /// they lead to and where its header starts, or `None` (counted) for a
    /// fragment, a routing header with segments left, too many headers or
    /// one that runs past the packet.
    fn skip_extensions(&self, ip: &[u8], first: IpProtocol) -> Option<(IpProtocol, usize)> {
        let (mut next, mut at) = (first, IPV6_HEADER);
        for _ in 0..MAX_EXTENSION_HEADERS {
            match next {
                IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route => {
                    let Some(&[nh, len]) = ip.get(at..at + 2) else {
                        self.dropped(DropReason::Malformed);
                        return None;
                    };
                    let len = (usize::from(len) + 1) * 8;
                    if at + len > ip.len() {
                        self.dropped(DropReason::Malformed);
                        return None;
                    }
                    // A routing header still to be followed names this
                    // gateway as a hop; it routes nothing of the kind.
                    if next == IpProtocol::Ipv6Route && ip.get(at + 3).is_some_and(|s| *s != 0) {
                        self.dropped(DropReason::Unsupported);
                        return None;
                    }
                    next = IpProtocol::from(nh);
                    at += len;
                }
                IpProtocol::Ipv6Frag => {
                    // The guest's MTU is the gateway's: fragments mean
                    // datagrams larger than the link. Not reassembled.
                    self.dropped(DropReason::Fragment);
                    return None;
                }
                IpProtocol::Ipv6NoNxt => return None,
                other => return Some((other, at)),
            }
        }
        self.dropped(DropReason::Unsupported);
        None
    }

    /// ICMPv6 from the guest: Neighbor Discovery, echo requests; other
    /// messages (MLD reports, errors) need no answer.
    #[allow(clippy::too_many_arguments)]
    fn icmp6(
        &mut self,
        src_mac: EthernetAddress,
        ip_bytes: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        body: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        if body.len() < 4 || (!partial_csum && !wire6::icmp_checksum_ok(src, dst, body)) {
            self.dropped(DropReason::Malformed);
            return;
        }
        match body[0] {
            icmp::ECHO_REQUEST => self.echo6(ip_bytes, src, dst, body, tx),
            ndp::kind::ROUTER_SOLICIT
            | ndp::kind::NEIGHBOR_SOLICIT
            | ndp::kind::NEIGHBOR_ADVERT => match ndp::parse(body, src, hop_limit) {
                Ok(m) => self.ndp(src_mac, src, m, tx),
                Err(e) => {
                    ratelimited!(log::Level::Info, "ignoring NDP message from the guest: {e}");
                    self.dropped(DropReason::Malformed);
                }
            },
            _ => {}
        }
    }

    fn echo6(
        &mut self,
        ip_bytes: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        body: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        let caps = ChecksumCapabilities::ignored();
        let Ok(Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv6Packet::new_checked(body).and_then(|p| Icmpv6Repr::parse(&src, &dst, &p, &caps))
        else {
            self.dropped(DropReason::Malformed);
            return;
        };
        if src.is_unspecified() {
            return;
        }
        match self.cfg.classify(dst.into()) {
            Dest::Gateway | Dest::HostAlias | Dest::ProxyAlias => {
                let reply = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                let mut cx = self.flows.cx(tx);
                let frame = wire6::icmp_frame(cx.route(dst, src), &reply);
                cx.send_frame(&frame);
            }
            Dest::Outside => {
                let packet = GuestPacket {
                    ip: ip_bytes,
                    payload: body,
                };
                self.ping(src.into(), ident, dst.into(), &packet, tx);
            }
            Dest::OnLink | Dest::Unroutable => {}
        }
    }

    fn ndp(
        &mut self,
        src_mac: EthernetAddress,
        src: Ipv6Addr,
        m: NdpMessage,
        tx: &mut dyn GuestTx,
    ) {
        match m {
            NdpMessage::RouterSolicit => {
                let now = Instant::now();
                if self.router.as_mut().is_some_and(|r| r.solicited(now)) {
                    self.send_advertisement(tx);
                }
            }
            NdpMessage::NeighborSolicit { target, .. } => {
                if self.cfg.is_ours6(target) {
                    let solicited = !src.is_unspecified();
                    let to = if solicited { src } else { ALL_NODES };
                    let advert = ndp::neighbor_advert(target, self.cfg.gateway_mac, solicited);
                    let mut cx = self.flows.cx(tx);
                    let mut route = cx.route(target, to);
                    if !solicited {
                        route.dst_mac = wire6::multicast_mac(ALL_NODES);
                    } else {
                        route.dst_mac = src_mac;
                    }
                    cx.send_frame(&wire6::icmp_raw_frame(route, ND_HOP_LIMIT, &advert));
                } else if src.is_unspecified() {
                    // Duplicate Address Detection: the guest claims
                    // `target`. Unanswered, it gets it.
                    self.learn_guest_address(target, src_mac);
                }
            }
            NdpMessage::NeighborAdvert { .. } => {}
        }
    }

    /// Remembers the guest's address in the prefix (where published ports
    /// reach it): its SLAAC address wins over others it claims.
    fn learn_guest_address(&mut self, a: Ipv6Addr, mac: EthernetAddress) {
        let Some(v6) = &self.cfg.ipv6 else {
            return;
        };
        if !v6.in_prefix(a) {
            return;
        }
        let slaac = v6.address(crate::config::eui64(mac));
        let link = &mut self.flows.stack.link;
        if link.guest_ip6.is_none() || a == slaac {
            link.guest_ip6 = Some(a);
        }
    }

    /// Sends the Router Advertisement to all nodes.
    fn send_advertisement(&mut self, tx: &mut dyn GuestTx) {
        let Some(router) = &self.router else {
            return;
        };
        let advert = router.advertisement();
        let ll = Ipv6Config::link_local(self.cfg.gateway_mac);
        let mut cx = self.flows.cx(tx);
        let mut route = cx.route(ll, ALL_NODES);
        route.dst_mac = wire6::multicast_mac(ALL_NODES);
        cx.send_frame(&wire6::icmp_raw_frame(route, ND_HOP_LIMIT, &advert));
    }

    /// Queues the next periodic Router Advertisement.
    pub(super) fn schedule_router(&mut self) {
        if let Some(r) = &self.router {
            self.flows
                .stack
                .poller
                .schedule(r.next_periodic(), ROUTER_TIMER);
        }
    }

    /// The periodic Router Advertisement's timer fired.
    pub(super) fn router_timer(&mut self, now: Instant, tx: &mut dyn GuestTx) {
        if self.router.as_mut().is_some_and(|r| r.periodic_due(now)) {
            self.send_advertisement(tx);
        }
        self.schedule_router();
    }

    /// A DHCPv6 message from the guest (`l4`: its UDP datagram).
    fn dhcp6(
        &mut self,
        src_mac: EthernetAddress,
        src: Ipv6Addr,
        l4: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        let Ok(dgram) = smoltcp::wire::UdpPacket::new_checked(l4) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let ll = Ipv6Config::link_local(self.cfg.gateway_mac);
        let sum_ok = partial_csum
            || dgram.verify_checksum(&src.into(), &ALL_DHCP.into())
            || dgram.verify_checksum(&src.into(), &ll.into())
            || self
                .cfg
                .ipv6
                .as_ref()
                .is_some_and(|v6| dgram.verify_checksum(&src.into(), &v6.gateway.into()));
        let payload = usize::from(dgram.len())
            .checked_sub(8)
            .and_then(|n| dgram.payload().get(..n));
        let (Some(payload), true) = (payload, sum_ok) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        if src.is_unspecified() {
            self.dropped(DropReason::SourceAddress);
            return;
        }
        let Some(server) = self.dhcp6.as_mut() else {
            return;
        };
        match server.handle(payload, src_mac, Instant::now()) {
            Ok(Some(reply)) => {
                if let Some(a) = reply.leased {
                    self.learn_guest_address(a, src_mac);
                }
                let from = SocketAddr::new(IpAddr::V6(ll), 547);
                let to = SocketAddr::new(IpAddr::V6(src), dgram.src_port());
                self.flows
                    .cx(tx)
                    .send_udp(from, to, &reply.payload, Some(src_mac));
            }
            Ok(None) => {}
            Err(e) => {
                ratelimited!(
                    log::Level::Info,
                    "ignoring DHCPv6 message from the guest: {e}"
                );
                self.dropped(DropReason::Malformed);
            }
        }
    }

    /// Tells the guest its packet `ip` was not forwarded: its hop limit ran
    /// out, or it was larger than the link.
    fn icmp6_error(&mut self, ip: &[u8], src: Ipv6Addr, why: Icmpv6Error, tx: &mut dyn GuestTx) {
        if src.is_unspecified() {
            return;
        }
        // Never an error about an error (RFC 4443 §2.4 e).
        let Ok(pkt) = Ipv6Packet::new_checked(ip) else {
            return;
        };
        let Ok(header) = Ipv6Repr::parse(&pkt) else {
            return;
        };
        if header.next_header == IpProtocol::Icmpv6
            && pkt.payload().first().is_some_and(|t| *t < 128)
        {
            return;
        }
        let Some(v6) = &self.cfg.ipv6 else {
            return;
        };
        let quoted_max = MIN_MTU - IPV6_HEADER - 8 - IPV6_HEADER;
        let data = &pkt.payload()[..pkt.payload().len().min(quoted_max)];
        let repr = match why {
            Icmpv6Error::HopLimit => Icmpv6Repr::TimeExceeded {
                reason: Icmpv6TimeExceeded::HopLimitExceeded,
                header,
                data,
            },
            Icmpv6Error::TooBig => Icmpv6Repr::PktTooBig {
                mtu: u32::try_from(self.cfg.mtu).unwrap_or(u32::MAX),
                header,
                data,
            },
        };
        let gateway = v6.gateway;
        let mut cx = self.flows.cx(tx);
        let route: Route<Ipv6Addr> = cx.route(gateway, src);
        let frame = wire6::icmp_frame(route, &repr);
        cx.send_frame(&frame);
    }
}

/// An ICMPv6 error the gateway sends as a router.
#[derive(Copy, Clone, Debug)]
enum Icmpv6Error {
    /// Time Exceeded: hop limit exceeded in transit.
    HopLimit,
    /// Packet Too Big, with the link's MTU.
    TooBig,
}

/// The packet `src` → `dst` carrying `payload` as `next`, with no
/// extension headers.
fn without_extensions(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next: IpProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; IPV6_HEADER + payload.len()];
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: next,
        payload_len: payload.len(),
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
    out[IPV6_HEADER..].copy_from_slice(payload);
    out
}
