//! Flows the guest starts: TCP and UDP NAT, the gateway's own services
//! (DHCP, DNS over UDP and TCP) and ICMP echo.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use airlock_common::ratelimited;
use serde_json::json;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Repr,
    TcpPacket, UdpPacket,
};

use super::host::Target;
use super::icmp::{self, PingFlow};
use super::poller::FlowId;
use super::smol::IpDevice;
use super::stats::{DropReason, Proto};
use super::tcp::TcpFlow;
use super::udp::{Received, UdpFlow};
use super::{dns_tcp, in_zone, is_routable, wire, Flow, Gateway, GuestTx, Key};
use crate::dns::{self, LocalOutcome};

impl Gateway {
    /// Lets smoltcp answer a segment no flow owns (with a RST, unless the
    /// segment is itself a RST).
    pub(super) fn tcp_reset(&mut self, ip_bytes: &[u8], tx: &mut dyn GuestTx) {
        let now = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
        let mut dev = IpDevice::new(tx, self.cfg.gateway_mac, self.guest_mac, self.cfg.mtu)
            .with_packet(ip_bytes);
        self.iface.poll(now, &mut dev, &mut self.empty);
    }

    /// Where a new TCP connection from the guest goes, or `None` to refuse.
    pub(super) fn tcp_target(&self, dst: Ipv4Addr, port: u16) -> Option<Target> {
        if dst == self.cfg.gateway_ip {
            return None;
        }
        if Some(dst) == self.cfg.host_ip {
            return Some(Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        if dst == self.cfg.proxy_ip {
            return match &self.cfg.proxy {
                Some((p, target)) if *p == port => Some(target.clone()),
                _ => None,
            };
        }
        if self.cfg.in_subnet(dst) || !is_routable(dst) {
            return None;
        }
        Some(Target::Tcp(SocketAddr::from((dst, port))))
    }

    pub(super) fn tcp(
        &mut self,
        ip_bytes: &[u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        body: &[u8],
        partial_csum: bool,
        tx: &mut dyn GuestTx,
    ) {
        let Ok(seg) = TcpPacket::new_checked(body) else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        // A partial checksum (NEEDS_CSUM) is the guest's promise, not data
        // to check; a full one is verified here, as smoltcp does not.
        if !partial_csum && !seg.verify_checksum(&src.into(), &dst.into()) {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        }
        let key = (
            SocketAddrV4::new(src, seg.src_port()),
            SocketAddrV4::new(dst, seg.dst_port()),
        );
        if let Some(&id) = self.tcp_index.get(&key) {
            self.with_tcp(id, tx, |flow, id, env| flow.ingress(id, ip_bytes, env));
            return;
        }
        if !seg.syn() || seg.ack() {
            // A segment for no connection: smoltcp answers with RST.
            self.tcp_reset(ip_bytes, tx);
            return;
        }
        if dst == self.cfg.gateway_ip && seg.dst_port() == 53 {
            self.tcp_dns(key, ip_bytes, tx);
            return;
        }
        let Some(target) = self.tcp_target(dst, seg.dst_port()) else {
            self.shared.stats.dropped(DropReason::NoService);
            self.shared.stats.flow_refused(Proto::Tcp);
            self.tcp_reset(ip_bytes, tx);
            return;
        };
        let decision = self.check_policy(Proto::Tcp, key.0, key.1);
        if !decision.allowed() {
            self.tcp_reset(ip_bytes, tx);
            return;
        }
        let Some(id) = self.alloc() else {
            ratelimited!(
                log::Level::Warn,
                "flow limit ({}) reached: refusing tcp {} -> {}",
                self.cfg.max_flows,
                key.0,
                key.1
            );
            self.shared.stats.dropped(DropReason::FlowLimit);
            self.shared.stats.flow_refused(Proto::Tcp);
            self.tcp_reset(ip_bytes, tx);
            return;
        };
        let mut env = Self::env(
            &mut self.iface,
            &mut self.poller,
            tx,
            &self.cfg,
            self.guest_mac,
            self.epoch,
        );
        match TcpFlow::open(id, key.0, key.1, target.clone(), self.cfg.tcp, &mut env) {
            Ok(flow) => {
                log::debug!("tcp {} -> {} via {target}", key.0, key.1);
                self.shared.stats.flow_opened(Proto::Tcp);
                self.shared.audit(json!({
                    "event": "flow-open", "direction": "outbound", "proto": "tcp",
                    "guest": key.0.to_string(), "remote": key.1.to_string(),
                    "host_side": target.to_string(), "decision": decision.describe(),
                }));
                self.install(id, Flow::Tcp(Box::new(flow)));
                self.tcp_index.insert(key, id);
                self.with_tcp(id, tx, |flow, id, env| flow.ingress(id, ip_bytes, env));
            }
            Err(e) => {
                self.release(id);
                log::debug!(
                    "tcp {} -> {}: cannot connect to {target}: {e}",
                    key.0,
                    key.1
                );
                self.shared.stats.flow_refused(Proto::Tcp);
                self.tcp_reset(ip_bytes, tx);
            }
        }
    }

    /// A guest's DNS-over-TCP connection to the gateway.
    pub(super) fn tcp_dns(&mut self, key: Key, ip_bytes: &[u8], tx: &mut dyn GuestTx) {
        let Some(id) = self.alloc() else {
            self.shared.stats.dropped(DropReason::FlowLimit);
            self.shared.stats.flow_refused(Proto::Tcp);
            self.tcp_reset(ip_bytes, tx);
            return;
        };
        let bridge = dns_tcp::DnsBridge::new(
            self.cfg.records.clone(),
            self.cfg.dns_upstreams.first().copied(),
        );
        match TcpFlow::open_dns(key.0, key.1, bridge, self.cfg.tcp, self.now()) {
            Ok(flow) => {
                self.shared.stats.flow_opened(Proto::Tcp);
                self.install(id, Flow::Tcp(Box::new(flow)));
                self.tcp_index.insert(key, id);
                self.with_tcp(id, tx, |flow, id, env| flow.ingress(id, ip_bytes, env));
            }
            Err(e) => {
                self.release(id);
                log::debug!("dns/tcp {}: {e}", key.0);
                self.tcp_reset(ip_bytes, tx);
            }
        }
    }

    pub(super) fn reply_route(&self, from: Ipv4Addr, to: Ipv4Addr) -> wire::Route {
        wire::Route {
            src_mac: self.cfg.gateway_mac,
            dst_mac: self.guest_mac,
            src_ip: from,
            dst_ip: to,
        }
    }

    /// Sends a UDP datagram to the guest.
    pub(super) fn udp_to_guest(
        &mut self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
        dst_mac: Option<EthernetAddress>,
        tx: &mut dyn GuestTx,
    ) {
        let len = wire::udp_frame_len(payload.len());
        if len - wire::ETH_HEADER > self.cfg.mtu {
            self.shared.stats.dropped(DropReason::Oversize);
            return;
        }
        if !tx.has_room() {
            self.starved = true;
            self.shared.stats.dropped(DropReason::GuestRxFull);
            return;
        }
        let mut route = self.reply_route(*from.ip(), *to.ip());
        if let Some(mac) = dst_mac {
            route.dst_mac = mac;
        }
        let offload = tx.csum_offload();
        let buf = tx.frame(len);
        wire::write_udp(buf, route, from.port(), to.port(), payload, offload);
    }

    pub(super) fn udp(&mut self, src: Ipv4Addr, dst: Ipv4Addr, body: &[u8], tx: &mut dyn GuestTx) {
        let Ok(dgram) = UdpPacket::new_checked(body) else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        let Some(payload) = dgram
            .len()
            .checked_sub(8)
            .and_then(|n| dgram.payload().get(..usize::from(n)))
        else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        let guest = SocketAddrV4::new(src, dgram.src_port());
        let remote = SocketAddrV4::new(dst, dgram.dst_port());
        // An answer to a client of a published UDP port?
        if self.udp_to_client((guest, remote), payload) {
            return;
        }

        if remote.port() == 67
            && (dst == self.cfg.gateway_ip || dst.is_broadcast() || dst == self.cfg.broadcast())
        {
            self.dhcp_request(payload, tx);
            return;
        }
        if dst == self.cfg.gateway_ip && remote.port() == 53 {
            self.dns_query(guest, remote, payload, tx);
            return;
        }
        if dst.is_broadcast() || dst.is_multicast() || dst == self.cfg.broadcast() {
            return; // mDNS, SSDP, NetBIOS …: nobody to deliver to.
        }
        let target = if Some(dst) == self.cfg.host_ip {
            SocketAddr::from((Ipv4Addr::LOCALHOST, remote.port()))
        } else if self.cfg.is_ours(dst) || self.cfg.in_subnet(dst) || !is_routable(dst) {
            self.shared.stats.dropped(DropReason::NoService);
            return;
        } else {
            SocketAddr::V4(remote)
        };
        if !self.udp_index.contains_key(&(guest, remote))
            && !self.check_policy(Proto::Udp, guest, remote).allowed()
        {
            self.unreachable(guest, remote, Icmpv4DstUnreachable::CommProhibited, tx);
            return;
        }
        self.udp_forward(guest, remote, target, payload, false, tx);
    }

    /// Sends a guest datagram through its UDP flow, creating it if needed.
    pub(super) fn udp_forward(
        &mut self,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        target: SocketAddr,
        payload: &[u8],
        service: bool,
        tx: &mut dyn GuestTx,
    ) -> Option<FlowId> {
        let now = self.now();
        let id = match self.udp_index.get(&(guest, remote)) {
            Some(&id) => id,
            None => {
                let Some(id) = self.alloc() else {
                    ratelimited!(
                        log::Level::Warn,
                        "flow limit ({}) reached: refusing udp {guest} -> {remote}",
                        self.cfg.max_flows
                    );
                    self.shared.stats.dropped(DropReason::FlowLimit);
                    self.shared.stats.flow_refused(Proto::Udp);
                    // Say so, as for a denied flow, instead of letting the
                    // guest's socket wait for an answer that never comes.
                    if !service {
                        self.unreachable(guest, remote, Icmpv4DstUnreachable::CommProhibited, tx);
                    }
                    return None;
                };
                match UdpFlow::open(id, guest, remote, target, now, &self.poller) {
                    Ok(mut flow) => {
                        flow.service = service;
                        self.shared.stats.flow_opened(Proto::Udp);
                        if !service {
                            self.shared.audit(json!({
                                "event": "flow-open", "direction": "outbound", "proto": "udp",
                                "guest": guest.to_string(), "remote": remote.to_string(),
                                "host_side": target.to_string(),
                            }));
                        }
                        self.poller.schedule(flow.expiry(self.cfg.udp_timeout), id);
                        self.install(id, Flow::Udp(flow));
                        self.udp_index.insert((guest, remote), id);
                        id
                    }
                    Err(e) => {
                        self.release(id);
                        ratelimited!(
                            log::Level::Warn,
                            "udp {guest} -> {target}: cannot open a host socket: {e}"
                        );
                        self.shared.stats.flow_refused(Proto::Udp);
                        self.shared.stats.dropped(DropReason::HostSendFailed);
                        return None;
                    }
                }
            }
        };
        if let Some(Flow::Udp(flow)) = self.get(id) {
            if let Err(e) = flow.send(payload, now) {
                log::debug!("udp {guest} -> {target}: {e}");
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    self.port_unreachable(guest, remote, tx);
                } else {
                    self.shared.stats.dropped(DropReason::HostSendFailed);
                }
            }
        }
        Some(id)
    }

    /// Tells the guest its datagram to `remote` found no listener.
    pub(super) fn port_unreachable(
        &mut self,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        tx: &mut dyn GuestTx,
    ) {
        self.unreachable(guest, remote, Icmpv4DstUnreachable::PortUnreachable, tx);
    }

    /// Tells the guest its datagram to `remote` cannot be delivered.
    pub(super) fn unreachable(
        &mut self,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        reason: Icmpv4DstUnreachable,
        tx: &mut dyn GuestTx,
    ) {
        // The quoted header lets the guest's stack find the socket.
        let udp_header = {
            let mut h = [0u8; 8];
            h[0..2].copy_from_slice(&guest.port().to_be_bytes());
            h[2..4].copy_from_slice(&remote.port().to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        };
        let repr = Icmpv4Repr::DstUnreachable {
            reason,
            header: Ipv4Repr {
                src_addr: *guest.ip(),
                dst_addr: *remote.ip(),
                next_header: IpProtocol::Udp,
                payload_len: 8,
                hop_limit: wire::TTL,
            },
            data: &udp_header,
        };
        let frame = wire::icmp_frame(self.reply_route(*remote.ip(), *guest.ip()), &repr);
        self.send_frame(&frame, tx);
    }

    pub(super) fn dhcp_request(&mut self, payload: &[u8], tx: &mut dyn GuestTx) {
        match self.dhcp.handle(payload, self.now()) {
            Ok(Some(reply)) => {
                let dst_mac = EthernetAddress(reply.dst_mac);
                self.udp_to_guest(
                    SocketAddrV4::new(self.cfg.gateway_ip, 67),
                    SocketAddrV4::new(reply.dst_ip, 68),
                    &reply.payload,
                    Some(dst_mac),
                    tx,
                );
            }
            Ok(None) => {}
            Err(e) => {
                ratelimited!(
                    log::Level::Info,
                    "ignoring DHCP message from the guest: {e}"
                );
                self.shared.stats.dropped(DropReason::Malformed);
            }
        }
    }

    pub(super) fn dns_query(
        &mut self,
        guest: SocketAddrV4,
        gateway: SocketAddrV4,
        msg: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        match dns::answer_local(msg, &self.cfg.records) {
            Ok(LocalOutcome::Answer(reply)) => self.udp_to_guest(gateway, guest, &reply, None, tx),
            Ok(LocalOutcome::Forward) => {
                // Names in our own zone that we don't have never leave the host.
                let local = dns::parse_query(msg)
                    .is_ok_and(|q| self.cfg.local_zones.iter().any(|z| in_zone(&q.name, z)));
                if local {
                    if let Some(reply) = dns::error_reply(msg, dns::Rcode::NxDomain) {
                        self.udp_to_guest(gateway, guest, &reply, None, tx);
                    }
                } else {
                    self.dns_forward(guest, gateway, msg, tx);
                }
            }
            Err(e) => {
                ratelimited!(log::Level::Info, "malformed DNS query from the guest: {e}");
                self.shared.stats.dropped(DropReason::Malformed);
                if let Some(reply) = e.reply_rcode().and_then(|rc| dns::error_reply(msg, rc)) {
                    self.udp_to_guest(gateway, guest, &reply, None, tx);
                }
            }
        }
    }

    /// Forwards a DNS query upstream. A query the guest repeats after a
    /// second without an answer moves to the next upstream resolver.
    pub(super) fn dns_forward(
        &mut self,
        guest: SocketAddrV4,
        gateway: SocketAddrV4,
        msg: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        let n = self.cfg.dns_upstreams.len();
        if n == 0 {
            if let Some(reply) = dns::error_reply(msg, dns::Rcode::ServFail) {
                self.udp_to_guest(gateway, guest, &reply, None, tx);
            }
            return;
        }
        let now = self.now();
        if let Some(&id) = self.udp_index.get(&(guest, gateway)) {
            let upstreams = self.cfg.dns_upstreams.clone();
            if let Some(Flow::Udp(flow)) = self.get(id) {
                let stale = flow
                    .unanswered_since
                    .is_some_and(|t| now.duration_since(t) >= Duration::from_secs(1));
                if stale && n > 1 {
                    flow.upstream_index = (flow.upstream_index + 1) % n;
                    let next = upstreams[flow.upstream_index];
                    log::debug!("dns: no answer from {}, trying {next}", flow.target);
                    if let Err(e) = flow.reconnect(next) {
                        log::debug!("dns: cannot switch to {next}: {e}");
                    }
                    flow.unanswered_since = None;
                }
            }
        }
        let first = self.cfg.dns_upstreams[0];
        if let Some(id) = self.udp_forward(guest, gateway, first, msg, true, tx) {
            if let Some(Flow::Udp(flow)) = self.get(id) {
                flow.unanswered_since.get_or_insert(now);
            }
        }
    }

    pub(super) fn icmp(
        &mut self,
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
            self.shared.stats.dropped(DropReason::Malformed);
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
            let frame = wire::icmp_frame(self.reply_route(dst, src), &reply);
            self.send_frame(&frame, tx);
            return;
        }
        if self.cfg.in_subnet(dst) || !is_routable(dst) {
            return;
        }
        let now = self.now();
        let key = (src, ident, dst);
        let id = match self.ping_index.get(&key) {
            Some(&id) => id,
            None => {
                let decision = self.check_policy(
                    Proto::Icmp,
                    SocketAddrV4::new(src, 0),
                    SocketAddrV4::new(dst, 0),
                );
                if !decision.allowed() {
                    return;
                }
                let Some(id) = self.alloc() else {
                    self.shared.stats.dropped(DropReason::FlowLimit);
                    self.shared.stats.flow_refused(Proto::Icmp);
                    return;
                };
                match PingFlow::open(id, src, ident, dst, now, &self.poller) {
                    Ok(flow) => {
                        self.shared.stats.flow_opened(Proto::Icmp);
                        self.poller.schedule(flow.expiry(self.cfg.udp_timeout), id);
                        self.install(id, Flow::Ping(flow));
                        self.ping_index.insert(key, id);
                        id
                    }
                    Err(e) => {
                        self.release(id);
                        self.shared.stats.flow_refused(Proto::Icmp);
                        if icmp::not_permitted(&e) {
                            self.shared.stats.dropped(DropReason::PingNotPermitted);
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
                            self.shared.stats.dropped(DropReason::HostSendFailed);
                        }
                        return;
                    }
                }
            }
        };
        if let Some(Flow::Ping(flow)) = self.get(id) {
            if let Err(e) = flow.send(body, now) {
                log::debug!("icmp {src} -> {dst}: {e}");
                self.shared.stats.dropped(DropReason::HostSendFailed);
            }
        }
    }

    pub(super) fn udp_readable(&mut self, id: FlowId, tx: &mut dyn GuestTx) {
        let now = self.now();
        let mut buf = std::mem::take(&mut self.scratch);
        // Bounded work per event: the rest stays readable for the next round.
        for _ in 0..64 {
            if !tx.has_room() {
                // Reading now would only drop: leave the datagrams with the
                // kernel until the guest has room (Gateway::guest_room).
                if let Some((flow, poller)) = self.udp_and_poller(id) {
                    flow.pause(poller);
                    self.paused_udp.push(id);
                }
                self.starved = true;
                break;
            }
            let Some(Flow::Udp(flow)) = self.get(id) else {
                break;
            };
            let (guest, remote) = (flow.guest, flow.remote);
            match flow.recv(&mut buf, now) {
                Ok(Received::Datagram(n)) => {
                    flow.unanswered_since = None;
                    self.udp_to_guest(remote, guest, &buf[..n], None, tx);
                }
                Ok(Received::Refused) => self.port_unreachable(guest, remote, tx),
                Ok(Received::Nothing) => break,
                Err(e) => {
                    log::debug!("udp {guest} -> {remote}: {e}");
                    break;
                }
            }
        }
        self.scratch = buf;
    }

    pub(super) fn ping_readable(&mut self, id: FlowId, tx: &mut dyn GuestTx) {
        let now = self.now();
        let mut buf = std::mem::take(&mut self.scratch);
        for _ in 0..64 {
            let Some(Flow::Ping(flow)) = self.get(id) else {
                break;
            };
            let (guest, ident, remote) = (flow.guest, flow.ident, flow.remote);
            match flow.recv(&mut buf, now) {
                Ok(Some(n)) => {
                    let caps = ChecksumCapabilities::ignored();
                    let parsed = Icmpv4Packet::new_checked(&buf[..n])
                        .and_then(|p| Icmpv4Repr::parse(&p, &caps));
                    if let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) = parsed {
                        let reply = Icmpv4Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        };
                        let frame = wire::icmp_frame(self.reply_route(remote, guest), &reply);
                        self.send_frame(&frame, tx);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("icmp {guest} -> {remote}: {e}");
                    break;
                }
            }
        }
        self.scratch = buf;
    }
}
