//! The gateway: everything between the guest's Ethernet frames and the
//! host's sockets, with no knowledge of what carries the frames (they come
//! in as byte slices and go out through [`GuestTx`]), so it is tested
//! without a VM.
//!
//! This file is the demultiplexer: it parses what the guest sends, decides
//! where it goes, and hands it to a service or a flow:
//! - IPv6 → [`ipv6`] (its own checks, NDP, ICMPv6, DHCPv6), whose TCP and
//!   UDP come back to the same dispatch as IPv4's;
//! - ARP for the gateway's addresses and off-link destinations → answered;
//! - DHCP (UDP 67) → [`crate::services::dhcp`]; DNS to the gateway →
//!   [`crate::services::dns`] (local names, local zones) or forwarded to
//!   the resolvers of the name's zone;
//! - ICMP echo → answered for the gateway and aliases, else a ping flow;
//! - TCP and UDP → a flow of [`crate::flows`], found by its key or opened.

#[cfg(test)]
mod dns_tests;
mod egress;
mod ipv6;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests6;
#[cfg(test)]
mod tests_offload;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use airlock_api::{FlowInfo, Proto};
use airlock_common::ratelimited;
use serde_json::json;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpCidr, IpProtocol, Ipv4Packet, TcpPacket,
    UdpPacket,
};
use vmm_sys_util::epoll::EventSet;

use crate::config::{Dest, GatewayConfig, Ipv6Config, PREFIX6_LEN};
use crate::flows::ping::{self, PingFlow};
use crate::flows::published::Listeners;
use crate::flows::tcp::TcpFlow;
use crate::flows::udp::{UdpFlow, MAX_DATAGRAM};
use crate::flows::{
    FlowKey, FlowTable, Flows, GuestPacket, Link, OpenError, Stack, Unreachable, Verdict,
};
use crate::host::Target;
use crate::phy::{FrameOffload, GuestSegmentation, GuestTx, IpDevice, NullTx};
use crate::poller::{FlowId, Poller, Source};
use crate::services::dhcp::{DhcpServer, LeaseInfo};
use crate::services::dhcpv6::Dhcpv6Server;
use crate::services::dns::bridge::DnsBridge;
use crate::services::dns::{self, forward, Plan};
use crate::services::ndp::Router;
use crate::shared::Shared;
use crate::stats::{DnsOutcome, DropReason};
use crate::wire;
use egress::EgressCheck;

pub struct Gateway {
    cfg: GatewayConfig,
    flows: Flows,
    dhcp: DhcpServer,
    /// IPv6 services (`None` with `--no-ipv6`).
    router: Option<Router>,
    dhcp6: Option<Dhcpv6Server>,
    listeners: Listeners,
    egress: EgressCheck,
    /// A socket set with no sockets: smoltcp answers segments no flow owns.
    no_sockets: SocketSet<'static>,
    events: Vec<(FlowId, Source, EventSet)>,
    due: Vec<FlowId>,
    /// The DNS settings DHCP was last given ([`Gateway::sync_dns`]).
    dns_generation: Option<u64>,
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, shared: Arc<Shared>) -> io::Result<Gateway> {
        let epoch = Instant::now();
        let mut addrs = vec![IpCidr::new(cfg.gateway_ip.into(), cfg.prefix_len)];
        if let Some(v6) = &cfg.ipv6 {
            addrs.push(IpCidr::new(v6.gateway.into(), PREFIX6_LEN));
            let ll = Ipv6Config::link_local(cfg.gateway_mac);
            addrs.push(IpCidr::new(ll.into(), PREFIX6_LEN));
        }
        let link = Link {
            gateway_mac: cfg.gateway_mac,
            guest_mac: EthernetAddress::BROADCAST,
            guest_ip6: None,
            mtu: cfg.mtu,
            epoch,
        };
        let segmentation = GuestSegmentation::default();
        let stack = Stack {
            iface: interface(&link, &addrs, segmentation),
            addrs,
            segmentation,
            poller: Poller::new()?,
            shared,
            link,
            scratch: vec![0u8; MAX_DATAGRAM],
        };
        let seed = iface_cfg_seed();
        let router = cfg.ipv6.as_ref().map(|v6| Router::new(&cfg, v6, seed));
        let dhcp6 = cfg.ipv6.as_ref().map(|v6| Dhcpv6Server::new(&cfg, v6));
        let mut gateway = Gateway {
            dhcp: DhcpServer::new(cfg.dhcp.clone()),
            router,
            dhcp6,
            flows: Flows {
                table: FlowTable::new(cfg.max_flows),
                stack,
                starved: false,
            },
            cfg,
            listeners: Listeners::default(),
            egress: EgressCheck::default(),
            no_sockets: SocketSet::new(Vec::new()),
            events: Vec::new(),
            due: Vec::new(),
            dns_generation: None,
        };
        gateway.listeners.sync(&gateway.flows);
        gateway.sync_dns();
        gateway.schedule_router();
        Ok(gateway)
    }

    /// The epoll fd of host sockets (readable when one is ready).
    pub fn host_fd(&self) -> std::os::unix::io::RawFd {
        self.flows.stack.poller.epoll_fd()
    }

    /// The timer fd (readable when a flow deadline passed).
    pub fn timer_fd(&self) -> std::os::unix::io::RawFd {
        self.flows.stack.poller.timer_fd()
    }

    fn shared(&self) -> &Shared {
        &self.flows.stack.shared
    }

    fn dropped(&self, why: DropReason) {
        self.shared().stats.dropped(why);
    }

    #[cfg(test)]
    pub(crate) fn flow_count(&self) -> usize {
        self.flows.table.live()
    }

    /// Every current flow.
    pub fn flows(&self) -> Vec<FlowInfo> {
        let now = Instant::now();
        self.flows.table.iter().map(|(_, f)| f.info(now)).collect()
    }

    /// The DHCP leases: DHCPv4's, then DHCPv6's.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        let now = Instant::now();
        let mut leases = self.dhcp.leases(now);
        if let Some(d) = &self.dhcp6 {
            leases.extend(d.leases(now));
        }
        leases
    }

    // ---- frames from the guest ---------------------------------------------

    /// Handles one Ethernet frame from the guest. `partial_csum`: the guest
    /// marked it NEEDS_CSUM (its L4 checksum is not filled in).
    pub fn guest_frame(&mut self, frame: &[u8], partial_csum: bool, tx: &mut dyn GuestTx) {
        self.guest_frame_offload(frame, FrameOffload::csum(partial_csum), tx);
    }

    /// Handles one Ethernet frame from the guest with what its transport
    /// said about it. A frame claiming to be a larger TCP segment must be
    /// one (TCP over the IP version it names), or it is dropped as
    /// [`DropReason::BadOffload`]; it then goes to its flow whole.
    pub fn guest_frame_offload(
        &mut self,
        frame: &[u8],
        offload: FrameOffload,
        tx: &mut dyn GuestTx,
    ) {
        self.shared().stats.frame_from_guest(frame.len());
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let src = eth.src_addr();
        if src.is_unicast() {
            self.flows.stack.link.guest_mac = src;
        }
        let partial_csum = offload.partial_csum;
        if let Some(seg) = offload.segmentation {
            if !is_tcp_segment(eth.ethertype(), eth.payload(), seg) {
                self.dropped(DropReason::BadOffload);
                return;
            }
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(eth.payload(), tx),
            EthernetProtocol::Ipv4 => self.ipv4(eth.payload(), partial_csum, tx),
            EthernetProtocol::Ipv6 if self.cfg.ipv6.is_some() => {
                self.ipv6(src, eth.payload(), partial_csum, tx)
            }
            _ => self.dropped(DropReason::Unsupported),
        }
    }

    fn arp(&mut self, payload: &[u8], tx: &mut dyn GuestTx) {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = repr
        else {
            return;
        };
        // Answer for the gateway's own addresses and anything off-link (all
        // of it is reached through us). Other addresses in the subnet have
        // no host behind them, and the guest's own address must stay
        // unanswered (its duplicate-address probes would fail).
        let answer = target_protocol_addr != source_protocol_addr
            && (self.cfg.is_ours(target_protocol_addr)
                || !self.cfg.in_subnet(target_protocol_addr));
        if answer {
            let reply = wire::arp_reply(
                self.cfg.gateway_mac,
                target_protocol_addr,
                source_hardware_addr,
                source_protocol_addr,
            );
            self.flows.cx(tx).send_frame(&reply);
        }
    }

    fn ipv4(&mut self, payload: &[u8], partial_csum: bool, tx: &mut dyn GuestTx) {
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        if !pkt.verify_checksum() {
            self.dropped(DropReason::Malformed);
            return;
        }
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            // The guest's MTU equals ours; fragments mean a guest sending
            // oversized datagrams. Not reassembled.
            self.dropped(DropReason::Unsupported);
            return;
        }
        // Strip Ethernet padding: the IP packet is exactly total_len bytes.
        let total = usize::from(pkt.total_len());
        let Some(ip_bytes) = payload.get(..total) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let body = pkt.payload();
        match pkt.next_header() {
            IpProtocol::Tcp => self.tcp(ip_bytes, src.into(), dst.into(), body, partial_csum, tx),
            IpProtocol::Udp => self.udp(ip_bytes, src.into(), dst.into(), body, tx),
            IpProtocol::Icmp => self.icmp(ip_bytes, src, dst, body, partial_csum, tx),
            _ => self.dropped(DropReason::Unsupported),
        }
    }

    // ---- TCP ------------------------------------------------------------------

    /// Lets smoltcp answer a segment no flow owns (with a RST, unless the
    /// segment is itself a RST).
    fn tcp_reset(&mut self, ip_bytes: &[u8], tx: &mut dyn GuestTx) {
        let stack = &mut self.flows.stack;
        let now =
            smoltcp::time::Instant::from_micros(stack.link.epoch.elapsed().as_micros() as i64);
        let link = stack.link;
        let mut dev =
            IpDevice::new(tx, link.gateway_mac, link.guest_mac, link.mtu).with_packet(ip_bytes);
        stack.iface.poll(now, &mut dev, &mut self.no_sockets);
    }

    /// Where a new TCP connection from the guest goes, or `None` to refuse.
    fn tcp_target(&self, dst: IpAddr, port: u16) -> Option<Target> {
        match self.cfg.classify(dst) {
            Dest::HostAlias => Some(Target::Tcp(SocketAddr::new(host_loopback(dst), port))),
            Dest::ProxyAlias => match &self.cfg.proxy {
                Some((p, target)) if *p == port => Some(target.clone()),
                _ => None,
            },
            Dest::Outside => Some(Target::Tcp(SocketAddr::new(dst, port))),
            Dest::Gateway | Dest::OnLink | Dest::Unroutable => None,
        }
    }

    fn tcp(
        &mut self,
        ip_bytes: &[u8],
        src: IpAddr,
        dst: IpAddr,
        body: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        let Ok(seg) = TcpPacket::new_checked(body) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        // A partial checksum (NEEDS_CSUM) is the guest's promise, not data
        // to check; a full one is verified here, as smoltcp does not.
        if !partial_csum && !seg.verify_checksum(&src.into(), &dst.into()) {
            self.dropped(DropReason::Malformed);
            return;
        }
        let guest = SocketAddr::new(src, seg.src_port());
        let remote = SocketAddr::new(dst, seg.dst_port());
        let packet = GuestPacket {
            ip: ip_bytes,
            payload: body,
        };
        if let Some(id) = self.flows.table.lookup(&FlowKey::Tcp(guest, remote)) {
            self.flows
                .with(id, tx, |flow, id, cx| flow.guest_packet(id, &packet, cx));
            return;
        }
        if !seg.syn() || seg.ack() {
            // A segment for no connection: smoltcp answers with RST.
            self.tcp_reset(ip_bytes, tx);
            return;
        }
        if self.cfg.classify(dst) == Dest::Gateway && seg.dst_port() == 53 {
            self.tcp_dns(guest, remote, &packet, tx);
            return;
        }
        let Some(target) = self.tcp_target(dst, seg.dst_port()) else {
            self.dropped(DropReason::NoService);
            self.shared().stats.flow_refused(Proto::Tcp);
            self.tcp_reset(ip_bytes, tx);
            return;
        };
        let decision = self
            .egress
            .check(&self.flows.stack.shared, Proto::Tcp, guest, remote);
        if !decision.allowed() {
            self.tcp_reset(ip_bytes, tx);
            return;
        }
        let limits = self.cfg.tcp;
        let to = target.clone();
        let opened = self.flows.open(tx, |id, cx| {
            Ok(Box::new(TcpFlow::open(id, guest, remote, to, limits, cx)?))
        });
        match opened {
            Ok(id) => {
                log::debug!("tcp {guest} -> {remote} via {target}");
                self.shared().audit(json!({
                    "event": "flow-open", "direction": "outbound", "proto": "tcp",
                    "guest": guest.to_string(), "remote": remote.to_string(),
                    "host_side": target.to_string(), "decision": decision.describe(),
                }));
                self.flows
                    .with(id, tx, |flow, id, cx| flow.guest_packet(id, &packet, cx));
            }
            Err(OpenError::Limit) => {
                ratelimited!(
                    log::Level::Warn,
                    "flow limit ({}) reached: refusing tcp {guest} -> {remote}",
                    self.cfg.max_flows,
                );
                self.dropped(DropReason::FlowLimit);
                self.shared().stats.flow_refused(Proto::Tcp);
                self.tcp_reset(ip_bytes, tx);
            }
            Err(OpenError::Io(e)) => {
                // No route (a host without IPv6), refused at once …: a RST
                // now rather than a guest waiting for its SYN-ACK.
                log::debug!("tcp {guest} -> {remote}: cannot connect to {target}: {e}");
                self.shared().stats.flow_refused(Proto::Tcp);
                self.tcp_reset(ip_bytes, tx);
            }
        }
    }

    /// A guest's DNS-over-TCP connection to the gateway.
    fn tcp_dns(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        packet: &GuestPacket,
        tx: &mut dyn GuestTx,
    ) {
        let bridge = DnsBridge::new(self.shared().dns.view());
        let limits = self.cfg.tcp;
        let opened = self.flows.open(tx, |_, cx| {
            Ok(Box::new(TcpFlow::open_dns(
                guest, remote, bridge, limits, cx.now,
            )?))
        });
        match opened {
            Ok(id) => {
                self.flows
                    .with(id, tx, |flow, id, cx| flow.guest_packet(id, packet, cx));
            }
            Err(OpenError::Limit) => {
                self.dropped(DropReason::FlowLimit);
                self.shared().stats.flow_refused(Proto::Tcp);
                self.tcp_reset(packet.ip, tx);
            }
            Err(OpenError::Io(e)) => {
                log::debug!("dns/tcp {guest}: {e}");
                self.tcp_reset(packet.ip, tx);
            }
        }
    }

    // ---- UDP ------------------------------------------------------------------

    fn udp(
        &mut self,
        ip_bytes: &[u8],
        src: IpAddr,
        dst: IpAddr,
        body: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        let Ok(dgram) = UdpPacket::new_checked(body) else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let Some(payload) = dgram
            .len()
            .checked_sub(8)
            .and_then(|n| dgram.payload().get(..usize::from(n)))
        else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let guest = SocketAddr::new(src, dgram.src_port());
        let remote = SocketAddr::new(dst, dgram.dst_port());
        let packet = GuestPacket {
            ip: ip_bytes,
            payload,
        };
        // An answer to a client of a published port, or more of a flow?
        for key in [
            FlowKey::PublishedUdp(guest, remote),
            FlowKey::Udp(guest, remote),
        ] {
            if let Some(id) = self.flows.table.lookup(&key) {
                self.flows
                    .with(id, tx, |flow, id, cx| flow.guest_packet(id, &packet, cx));
                return;
            }
        }
        let broadcast = match dst {
            IpAddr::V4(d) => d.is_broadcast() || d == self.cfg.broadcast(),
            IpAddr::V6(_) => false,
        };
        if remote.port() == 67 && (dst == IpAddr::V4(self.cfg.gateway_ip) || broadcast) {
            self.dhcp_request(payload, tx);
            return;
        }
        let dest = self.cfg.classify(dst);
        if dest == Dest::Gateway && remote.port() == 53 {
            self.dns_query(guest, remote, payload, tx);
            return;
        }
        if broadcast || dst.is_multicast() {
            return; // mDNS, SSDP, NetBIOS …: nobody to deliver to.
        }
        let target = match dest {
            Dest::HostAlias => SocketAddr::new(host_loopback(dst), remote.port()),
            Dest::Outside => remote,
            _ => {
                self.dropped(DropReason::NoService);
                return;
            }
        };
        let decision = self
            .egress
            .check(&self.flows.stack.shared, Proto::Udp, guest, remote);
        if !decision.allowed() {
            self.flows
                .cx(tx)
                .unreachable(guest, remote, Unreachable::Prohibited);
            return;
        }
        let timeout = self.cfg.udp_timeout;
        let opened = self.flows.open(tx, |id, cx| {
            Ok(Box::new(UdpFlow::open(
                id, guest, remote, target, timeout, cx,
            )?))
        });
        match opened {
            Ok(id) => {
                self.shared().audit(json!({
                    "event": "flow-open", "direction": "outbound", "proto": "udp",
                    "guest": guest.to_string(), "remote": remote.to_string(),
                    "host_side": target.to_string(),
                }));
                self.flows
                    .with(id, tx, |flow, id, cx| flow.guest_packet(id, &packet, cx));
            }
            Err(OpenError::Limit) => {
                ratelimited!(
                    log::Level::Warn,
                    "flow limit ({}) reached: refusing udp {guest} -> {remote}",
                    self.cfg.max_flows
                );
                self.dropped(DropReason::FlowLimit);
                self.shared().stats.flow_refused(Proto::Udp);
                // Say so, as for a denied flow, instead of letting the
                // guest's socket wait for an answer that never comes.
                self.flows
                    .cx(tx)
                    .unreachable(guest, remote, Unreachable::Prohibited);
            }
            Err(OpenError::Io(e)) if no_route(&e) => {
                // A host without a route there (IPv6 on an IPv4-only
                // host): the guest hears so at once.
                log::debug!("udp {guest} -> {target}: {e}");
                self.shared().stats.flow_refused(Proto::Udp);
                self.dropped(DropReason::HostSendFailed);
                self.flows
                    .cx(tx)
                    .unreachable(guest, remote, Unreachable::NoRoute);
            }
            Err(OpenError::Io(e)) => {
                ratelimited!(
                    log::Level::Warn,
                    "udp {guest} -> {target}: cannot open a host socket: {e}"
                );
                self.shared().stats.flow_refused(Proto::Udp);
                self.dropped(DropReason::HostSendFailed);
            }
        }
    }

    fn dhcp_request(&mut self, payload: &[u8], tx: &mut dyn GuestTx) {
        match self.dhcp.handle(payload, Instant::now()) {
            Ok(Some(reply)) => {
                let dst_mac = EthernetAddress(reply.dst_mac);
                self.flows.cx(tx).send_udp(
                    SocketAddrV4::new(self.cfg.gateway_ip, 67).into(),
                    SocketAddrV4::new(reply.dst_ip, 68).into(),
                    &reply.payload,
                    Some(dst_mac),
                );
            }
            Ok(None) => {}
            Err(e) => {
                ratelimited!(
                    log::Level::Info,
                    "ignoring DHCP message from the guest: {e}"
                );
                self.dropped(DropReason::Malformed);
            }
        }
    }

    fn dns_query(
        &mut self,
        guest: SocketAddr,
        gateway: SocketAddr,
        msg: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        let shared = self.flows.stack.shared.clone();
        let (stats, live) = (&shared.stats, &shared.dns);
        let view = live.view();
        let reply = match dns::plan(msg, &view, None) {
            Ok(Plan::Answer(reply)) => {
                stats.dns_query(DnsOutcome::Local);
                live.count_local();
                Some(reply)
            }
            Ok(Plan::NxDomain(reply)) => {
                stats.dns_query(DnsOutcome::LocalNxdomain);
                live.count_local();
                Some(reply)
            }
            Ok(Plan::NoUpstream(reply)) => {
                stats.dns_query(DnsOutcome::NoUpstream);
                live.count_failed();
                Some(reply)
            }
            Ok(Plan::Forward(fwd)) => {
                stats.dns_query(DnsOutcome::Forwarded);
                live.count_forwarded();
                let timeout = self.cfg.udp_timeout;
                forward::forward(&mut self.flows, guest, gateway, msg, fwd, timeout, tx);
                None
            }
            Err(e) => {
                stats.dns_query(DnsOutcome::Malformed);
                ratelimited!(log::Level::Info, "malformed DNS query from the guest: {e}");
                self.dropped(DropReason::Malformed);
                e.reply_rcode().and_then(|rc| dns::error_reply(msg, rc))
            }
        };
        if let Some(reply) = reply {
            self.flows.cx(tx).send_udp(gateway, guest, &reply, None);
        }
    }

    /// Hands the DNS service's search list, the one source of it, to
    /// DHCP, DHCPv6 and the Router Advertisements when it changed (a
    /// renewing guest picks it up): DHCP's option 15 is its first domain,
    /// option 119 all of them; DHCPv6's option 24 and the RA's DNSSL all of
    /// them. A changed DNSSL is advertised at once (rate-limited).
    fn sync_dns(&mut self) {
        let view = self.shared().dns.view();
        if self.dns_generation == Some(view.generation) {
            return;
        }
        // At start the first periodic advertisement carries it.
        let started = self.dns_generation.replace(view.generation).is_some();
        let search = view.search();
        self.dhcp
            .set_domains(search.first().cloned(), search.to_vec());
        if let Some(d) = &mut self.dhcp6 {
            d.set_search(search);
        }
        if let Some(r) = &mut self.router {
            if r.set_search(search) && started {
                r.changed(Instant::now());
                self.schedule_router();
            }
        }
    }

    // ---- ICMP -----------------------------------------------------------------

    fn icmp(
        &mut self,
        ip_bytes: &[u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        body: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        let mut caps = ChecksumCapabilities::default();
        if partial_csum {
            caps.icmpv4 = smoltcp::phy::Checksum::None;
        }
        let Ok(repr) = Icmpv4Packet::new_checked(body).and_then(|p| Icmpv4Repr::parse(&p, &caps))
        else {
            self.dropped(DropReason::Malformed);
            return;
        };
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = repr
        else {
            return;
        };
        if self.cfg.is_ours(dst) {
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            let mut cx = self.flows.cx(tx);
            let frame = wire::icmp_frame(cx.route(dst, src), &reply);
            cx.send_frame(&frame);
            return;
        }
        if self.cfg.classify(dst.into()) != Dest::Outside {
            return;
        }
        let packet = GuestPacket {
            ip: ip_bytes,
            payload: body,
        };
        self.ping(src.into(), ident, dst.into(), &packet, tx);
    }

    /// An echo request to an outside address: through the ping flow of
    /// (guest, identifier, destination), opened if the policy allows.
    fn ping(
        &mut self,
        src: IpAddr,
        ident: u16,
        dst: IpAddr,
        packet: &GuestPacket,
        tx: &mut dyn GuestTx,
    ) {
        if let Some(id) = self.flows.table.lookup(&FlowKey::Ping(src, ident, dst)) {
            self.flows
                .with(id, tx, |flow, id, cx| flow.guest_packet(id, packet, cx));
            return;
        }
        let decision = self.egress.check(
            &self.flows.stack.shared,
            Proto::Icmp,
            SocketAddr::new(src, 0),
            SocketAddr::new(dst, 0),
        );
        if !decision.allowed() {
            return;
        }
        let timeout = self.cfg.udp_timeout;
        let opened = self.flows.open(tx, |id, cx| {
            Ok(Box::new(PingFlow::open(id, src, ident, dst, timeout, cx)?))
        });
        match opened {
            Ok(id) => self
                .flows
                .with(id, tx, |flow, id, cx| flow.guest_packet(id, packet, cx)),
            Err(OpenError::Limit) => {
                self.dropped(DropReason::FlowLimit);
                self.shared().stats.flow_refused(Proto::Icmp);
            }
            Err(OpenError::Io(e)) => {
                self.shared().stats.flow_refused(Proto::Icmp);
                if ping::not_permitted(&e) {
                    self.dropped(DropReason::PingNotPermitted);
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    ONCE.call_once(|| {
                        log::warn!(
                            "ping to outside addresses is unavailable: unprivileged ICMP sockets are \
                             not permitted for this user (sysctl net.ipv4.ping_group_range); \
                             echo requests are dropped"
                        )
                    });
                } else {
                    ratelimited!(
                        log::Level::Warn,
                        "icmp to {dst}: cannot open a ping socket: {e}"
                    );
                    self.dropped(DropReason::HostSendFailed);
                }
            }
        }
    }

    // ---- host side and timers ---------------------------------------------

    /// Handles every ready host socket.
    pub fn host_events(&mut self, tx: &mut dyn GuestTx) -> io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.flows.stack.poller.ready(&mut events)?;
        for &(id, source, ev) in &events {
            if source == Source::Listener {
                self.listeners.ready(id, &mut self.flows, &self.cfg, tx);
            } else {
                self.flows
                    .with(id, tx, |flow, id, cx| flow.host_event(id, source, ev, cx));
            }
        }
        self.events = events;
        Ok(())
    }

    /// Handles every flow whose deadline passed.
    pub fn timers(&mut self, tx: &mut dyn GuestTx) {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.flows.stack.poller.due(now, &mut due);
        for &id in &due {
            if id == ROUTER_TIMER {
                self.router_timer(now, tx);
                continue;
            }
            if self.flows.table.woken(id, now) {
                self.flows.with(id, tx, |flow, id, cx| flow.timer(id, cx));
            } else {
                // Woken early (the deadline moved): wait for the new one.
                self.flows.table.schedule(id, &mut self.flows.stack.poller);
            }
        }
        self.due = due;
        let table = &self.flows.table;
        self.flows.stack.poller.compact(table.live(), |id, _| {
            *id == ROUTER_TIMER || table.is_live(*id)
        });
    }

    /// Whether something was held back for lack of guest buffers: the
    /// transport calls [`Gateway::guest_room`] once it has room again.
    pub fn starved(&self) -> bool {
        self.flows.starved
    }

    /// The guest has room again: let flows that were held back send, and
    /// watch paused UDP sockets again (their pending datagrams wake the
    /// next round).
    pub fn guest_room(&mut self, tx: &mut dyn GuestTx) {
        if !std::mem::take(&mut self.flows.starved) {
            return;
        }
        for id in self.flows.table.ids() {
            if !tx.has_room() {
                self.flows.starved = true;
                break;
            }
            self.flows
                .with(id, tx, |flow, id, cx| flow.guest_room(id, cx));
        }
    }

    /// Closes every flow (the guest went away): host TCP peers get a RST.
    pub fn shutdown(&mut self) {
        let mut sink = NullTx::default();
        for id in self.flows.table.ids() {
            self.flows.with(id, &mut sink, |flow, _, cx| {
                flow.shutdown(cx);
                Verdict::Done
            });
        }
    }

    /// Ports, the policy, the DNS settings or a query changed (control
    /// API, SIGHUP, resolv.conf): register new published sockets, close
    /// established flows the policy now denies, pass the search list on to
    /// DHCP, and answer the control API's questions about this guest.
    pub fn control(&mut self, tx: &mut dyn GuestTx) {
        let queries = self.shared().take_notification();
        self.listeners.sync(&self.flows);
        self.sync_dns();
        let policy = self.shared().policy();
        let denied: Vec<(FlowId, Proto, String)> = self
            .flows
            .table
            .iter()
            .filter(|(_, f)| !f.service())
            .filter_map(|(id, f)| {
                let (proto, remote) = f.egress()?;
                let port = (proto != Proto::Icmp).then_some(remote.port());
                let d = policy.decide(proto, remote.ip(), port);
                (!d.allowed()).then(|| (id, proto, d.describe()))
            })
            .collect();
        for (id, proto, why) in denied {
            log::info!("policy reload closes a {proto} flow: {why}");
            self.shared().audit(json!({"event": "flow-deny", "reason": "policy-reload", "proto": proto, "decision": why}));
            self.flows.with(id, tx, |flow, _, cx| {
                flow.reset(cx);
                Verdict::Done
            });
        }
        for query in queries {
            query.answer(self.flows(), self.leases());
        }
    }
}

/// The loopback address of the host alias's family: `127.0.0.1` or `::1`.
fn host_loopback(alias: IpAddr) -> IpAddr {
    match alias {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

/// Whether a host socket error means "no route there".
fn no_route(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) | Some(libc::EADDRNOTAVAIL)
    )
}

/// The poller token of the gateway's own timer (periodic Router
/// Advertisements): a slot no flow can have.
const ROUTER_TIMER: FlowId = FlowId {
    slot: u32::MAX,
    generation: 0,
};

fn iface_cfg_seed() -> u64 {
    random_seed()
}

/// Whether `payload` of an Ethernet frame of `ethertype` is what a larger
/// TCP segment `seg` claims to be: TCP directly over the IP version it
/// names (Linux sends no extension headers with TSO up to 64 KiB).
fn is_tcp_segment(
    ethertype: EthernetProtocol,
    payload: &[u8],
    seg: crate::phy::Segmentation,
) -> bool {
    if seg.size == 0 {
        return false;
    }
    match ethertype {
        EthernetProtocol::Ipv4 if !seg.ipv6 => {
            Ipv4Packet::new_checked(payload).is_ok_and(|p| p.next_header() == IpProtocol::Tcp)
        }
        EthernetProtocol::Ipv6 if seg.ipv6 => smoltcp::wire::Ipv6Packet::new_checked(payload)
            .is_ok_and(|p| p.next_header() == IpProtocol::Tcp),
        _ => false,
    }
}

/// The smoltcp interface every TCP flow is polled through: the gateway's
/// addresses, accepting segments for every destination (each flow's socket
/// listens on the exact address the guest connected to), sending TCP
/// segments as large as `segmentation` lets the guest take.
pub(crate) fn interface(
    link: &Link,
    addrs: &[IpCidr],
    segmentation: GuestSegmentation,
) -> Interface {
    let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
    iface_cfg.random_seed = random_seed();
    let mut sink = NullTx::default();
    let mut dev = IpDevice::new(
        &mut sink,
        link.gateway_mac,
        EthernetAddress::BROADCAST,
        link.mtu,
    )
    .with_segmentation(segmentation);
    let mut iface = Interface::new(iface_cfg, &mut dev, smoltcp::time::Instant::ZERO);
    iface.update_ip_addrs(|list| {
        for a in addrs {
            let _ = list.push(*a);
        }
    });
    iface.set_any_ip(true);
    iface
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
