//! Published ports: host clients reaching a guest port (Docker's `-p`).
//!
//! The bound sockets belong to the process ([`crate::shared::Shared`]); a
//! gateway registers them in its poller when it starts and whenever the
//! control API changes them ([`Listeners::sync`]). A TCP client becomes a
//! [`TcpFlow`] that opens a connection to the guest; a UDP client peer
//! becomes a [`PubUdpFlow`] with its own source port on the guest side, so
//! replies find their way back.
//!
//! The guest sees connections coming from the gateway's address
//! (`--publish-source gateway`, the default), or from the client's real
//! address (`--publish-source client`; a client on the host's loopback then
//! appears as host.airlock.internal).

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, PortSpec, Proto};
use airlock_common::ratelimited;
use serde_json::json;
use vmm_sys_util::epoll::EventSet;

use super::tcp::{TcpFlow, TcpLimits};
use super::udp::MAX_DATAGRAM;
use super::{age_ms, Cx, Flow, FlowKey, Flows, GuestPacket, Idle, OpenError, Verdict};
use crate::config::{Dest, GatewayConfig, PublishSource};
use crate::phy::GuestTx;
use crate::poller::{FlowId, Poller, Source};
use crate::publish::PublishedSocket;
use crate::stats::DropReason;

/// A UDP client of a published port, as mapped into the guest.
pub(crate) struct PubUdpFlow {
    entry: u64,
    peer: SocketAddr,
    /// The guest's endpoint (the published guest port).
    guest: SocketAddr,
    /// The source the guest sees (and answers to).
    local: SocketAddr,
    socket: Arc<PublishedSocket>,
    idle: Idle,
    opened: Instant,
    bytes_to_guest: u64,
    bytes_to_host: u64,
}

impl PubUdpFlow {
    /// A datagram from the client, into the guest.
    fn client_datagram(&mut self, payload: &[u8], cx: &mut Cx) -> Verdict {
        self.idle.touch(cx.now);
        self.bytes_to_guest += payload.len() as u64;
        cx.send_udp(self.local, self.guest, payload, None);
        Verdict::Keep
    }
}

impl Flow for PubUdpFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![
            FlowKey::PublishedUdp(self.guest, self.local),
            FlowKey::PublishedClient(self.entry, self.peer),
        ]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Udp,
            direction: Direction::Inbound,
            guest: self.guest.to_string(),
            remote: self.local.to_string(),
            host_side: self.peer.to_string(),
            bytes_to_host: self.bytes_to_host,
            bytes_to_guest: self.bytes_to_guest,
            age_ms: age_ms(self.opened, now),
            service: false,
        }
    }

    /// The guest answers the client.
    fn guest_packet(&mut self, _id: FlowId, packet: &GuestPacket, cx: &mut Cx) -> Verdict {
        self.idle.touch(cx.now);
        self.bytes_to_host += packet.payload.len() as u64;
        if let PublishedSocket::Udp(sock) = &*self.socket {
            if let Err(e) = sock.send_to(packet.payload, self.peer) {
                log::debug!("published udp to {}: {e}", self.peer);
                cx.dropped(DropReason::HostSendFailed);
            }
        }
        Verdict::Keep
    }

    /// The published socket belongs to [`Listeners`]; the flow has none.
    fn host_event(&mut self, _: FlowId, _: Source, _: EventSet, _: &mut Cx) -> Verdict {
        Verdict::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        self.idle.deadline()
    }

    fn timer(&mut self, _id: FlowId, cx: &mut Cx) -> Verdict {
        self.idle.verdict(cx.now)
    }

    fn close(&mut self, _poller: &Poller) {}

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Listener ids travel in epoll tokens as a `FlowId`.
fn listener_token(id: u64) -> FlowId {
    FlowId {
        slot: (id & 0x00ff_ffff) as u32,
        generation: (id >> 24) as u32,
    }
}

fn listener_id(t: FlowId) -> u64 {
    (u64::from(t.generation) << 24) | u64::from(t.slot)
}

/// The published sockets a gateway watches.
#[derive(Default)]
pub(crate) struct Listeners {
    /// Registered in the poller, by id.
    watched: HashMap<u64, PortSpec>,
    /// Next source port handed to a published-port client.
    next_port: u16,
    /// One datagram from a client.
    buf: Vec<u8>,
}

impl Listeners {
    /// Registers newly published sockets and forgets removed ones (their
    /// sockets closed, which took them out of the epoll set).
    pub(crate) fn sync(&mut self, flows: &Flows) {
        let entries: Vec<(u64, PortSpec, RawFd)> = flows.stack.shared.with_ports(|t| {
            t.entries()
                .iter()
                .map(|e| (e.id, e.spec, e.socket.raw_fd()))
                .collect()
        });
        self.watched
            .retain(|id, _| entries.iter().any(|(e, _, _)| e == id));
        for (id, spec, fd) in entries {
            if self.watched.contains_key(&id) {
                continue;
            }
            match flows
                .stack
                .poller
                .add(fd, EventSet::IN, listener_token(id), Source::Listener)
            {
                Ok(()) => {
                    self.watched.insert(id, spec);
                }
                Err(e) => log::warn!("cannot watch published port {spec}: {e}"),
            }
        }
    }

    /// A published socket is ready: accept TCP clients or read UDP
    /// datagrams.
    pub(crate) fn ready(
        &mut self,
        token: FlowId,
        flows: &mut Flows,
        cfg: &GatewayConfig,
        tx: &mut dyn GuestTx,
    ) {
        let id = listener_id(token);
        let Some((spec, socket)) = flows
            .stack
            .shared
            .with_ports(|t| t.get(id).map(|e| (e.spec, e.socket.clone())))
        else {
            return;
        };
        match &*socket {
            PublishedSocket::Tcp(listener) => {
                // Bounded work per event; the rest stays pending.
                for _ in 0..32 {
                    match listener.accept() {
                        Ok((stream, client)) => {
                            self.accept_tcp(spec, stream, client, flows, cfg, tx)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            ratelimited!(log::Level::Warn, "published port {spec}: accept: {e}");
                            break;
                        }
                    }
                }
            }
            PublishedSocket::Udp(sock) => {
                let mut buf = std::mem::take(&mut self.buf);
                buf.resize(MAX_DATAGRAM, 0);
                for _ in 0..64 {
                    match sock.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            self.udp_from_client(id, spec, &socket, peer, &buf[..n], flows, cfg, tx)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log::debug!("published port {spec}: {e}");
                            break;
                        }
                    }
                }
                self.buf = buf;
            }
        }
    }

    /// Where the guest sees a client of a published port come from: an
    /// address and a source port no other flow to `guest` uses.
    fn inbound_source(
        &mut self,
        client: SocketAddr,
        guest: SocketAddr,
        proto: Proto,
        flows: &Flows,
        cfg: &GatewayConfig,
    ) -> Option<SocketAddr> {
        use PublishSource as P;
        // The gateway and host alias of the family the guest is reached by.
        let (gateway, host): (IpAddr, Option<IpAddr>) = match guest {
            SocketAddr::V4(_) => (cfg.gateway_ip.into(), cfg.host_ip.map(IpAddr::from)),
            SocketAddr::V6(_) => {
                let v6 = cfg.ipv6.as_ref()?;
                (v6.gateway.into(), v6.host.map(IpAddr::from))
            }
        };
        let client_ip = client.ip().to_canonical();
        let same_family = client_ip.is_ipv4() == guest.is_ipv4();
        let ip = match cfg.publish_source {
            P::Client if client_ip.is_loopback() => host.unwrap_or(gateway),
            P::Client if same_family && cfg.classify(client_ip) == Dest::Outside => client_ip,
            _ => gateway,
        };
        for _ in 0..(61000 - 32768) {
            self.next_port = if self.next_port < 32768 || self.next_port >= 61000 {
                32768
            } else {
                self.next_port + 1
            };
            let local = SocketAddr::new(ip, self.next_port);
            let key = match proto {
                Proto::Tcp => FlowKey::Tcp(guest, local),
                _ => FlowKey::PublishedUdp(guest, local),
            };
            if !flows.table.contains(&key) {
                return Some(local);
            }
        }
        None
    }

    fn accept_tcp(
        &mut self,
        spec: PortSpec,
        stream: std::net::TcpStream,
        client: SocketAddr,
        flows: &mut Flows,
        cfg: &GatewayConfig,
        tx: &mut dyn GuestTx,
    ) {
        if !flows.stack.link.guest_mac.is_unicast() {
            refuse_client(stream, spec, "no guest is attached yet");
            return;
        }
        let Some(guest) = guest_target(spec, flows) else {
            refuse_client(stream, spec, "the guest has no IPv6 address yet");
            return;
        };
        let Some(local) = self.inbound_source(client, guest, Proto::Tcp, flows, cfg) else {
            refuse_client(stream, spec, "no free source port");
            return;
        };
        let limits: TcpLimits = cfg.tcp;
        // The stream is moved into the flow only once a slot is reserved.
        let mut stream = Some(stream);
        let opened = flows.open(tx, |id, cx| {
            let stream = stream
                .take()
                .ok_or_else(|| io::Error::other("client stream already taken"))?;
            let flow = TcpFlow::open_inbound(id, stream, client, guest, local, limits, cx)?;
            Ok(Box::new(flow))
        });
        match opened {
            Ok(id) => {
                log::debug!("published {spec}: client {client} as {local}");
                flows.stack.shared.audit(json!({
                    "event": "flow-open", "direction": "inbound", "proto": "tcp",
                    "client": client.to_string(), "host": spec.host.to_string(),
                    "guest": guest.to_string(), "source": local.to_string(),
                }));
                // Sends the SYN.
                flows.with(id, tx, |flow, id, cx| flow.guest_room(id, cx));
            }
            Err(OpenError::Limit) => {
                flows.stack.shared.stats.dropped(DropReason::FlowLimit);
                if let Some(stream) = stream {
                    refuse_client(stream, spec, "flow limit reached");
                }
            }
            Err(OpenError::Io(e)) => log::warn!("published port {spec}: {e}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn udp_from_client(
        &mut self,
        entry: u64,
        spec: PortSpec,
        socket: &Arc<PublishedSocket>,
        peer: SocketAddr,
        payload: &[u8],
        flows: &mut Flows,
        cfg: &GatewayConfig,
        tx: &mut dyn GuestTx,
    ) {
        let id = match flows.table.lookup(&FlowKey::PublishedClient(entry, peer)) {
            Some(id) => id,
            None => {
                let Some(guest) = guest_target(spec, flows) else {
                    ratelimited!(
                        log::Level::Info,
                        "published port {spec}: dropping a datagram: the guest has no IPv6 address yet"
                    );
                    flows.stack.shared.stats.dropped(DropReason::NoService);
                    return;
                };
                let Some(local) = self.inbound_source(peer, guest, Proto::Udp, flows, cfg) else {
                    flows.stack.shared.stats.dropped(DropReason::FlowLimit);
                    return;
                };
                let timeout = cfg.udp_timeout;
                let opened = flows.open(tx, |_, cx| {
                    Ok(Box::new(PubUdpFlow {
                        entry,
                        peer,
                        guest,
                        local,
                        socket: socket.clone(),
                        idle: Idle::new(cx.now, timeout),
                        opened: cx.now,
                        bytes_to_guest: 0,
                        bytes_to_host: 0,
                    }))
                });
                match opened {
                    Ok(id) => {
                        flows.stack.shared.audit(json!({
                            "event": "flow-open", "direction": "inbound", "proto": "udp",
                            "client": peer.to_string(), "host": spec.host.to_string(),
                            "guest": guest.to_string(), "source": local.to_string(),
                        }));
                        id
                    }
                    Err(_) => {
                        flows.stack.shared.stats.dropped(DropReason::FlowLimit);
                        return;
                    }
                }
            }
        };
        flows.with_as::<PubUdpFlow>(id, tx, |flow, _, cx| flow.client_datagram(payload, cx));
    }
}

/// Where a published port's client goes in the guest: its address, or for
/// [`airlock_api::GUEST_IPV6`] the IPv6 address the guest took (`None`
/// until the gateway has seen it).
fn guest_target(spec: PortSpec, flows: &Flows) -> Option<SocketAddr> {
    match spec.guest {
        SocketAddr::V6(g) if *g.ip() == airlock_api::GUEST_IPV6 => flows
            .stack
            .link
            .guest_ip6
            .map(|ip| SocketAddr::new(ip.into(), g.port())),
        other => Some(other),
    }
}

fn refuse_client(stream: std::net::TcpStream, spec: PortSpec, why: &str) {
    ratelimited!(
        log::Level::Info,
        "published port {spec}: refusing a client: {why}"
    );
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
