//! Published ports: host clients reaching a guest port (Docker's `-p`).
//!
//! The bound sockets belong to the process ([`crate::shared::Shared`]); a
//! session registers them in its poller when it starts and whenever the
//! control API changes them. A TCP client becomes a [`TcpFlow`] that opens
//! a connection to the guest; a UDP client peer becomes a mapping with its
//! own source port on the guest side, so replies find their way back.
//!
//! The guest sees connections coming from the gateway's address
//! (`--publish-source gateway`, the default), or from the client's real
//! address (`--publish-source client`; a client on the host's loopback then
//! appears as host.airlock.internal).

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use airlock_common::ratelimited;
use serde_json::json;
use vmm_sys_util::epoll::EventSet;

use super::poller::{FlowId, Source};
use super::stats::{DropReason, Proto};
use super::tcp::TcpFlow;
use super::udp::MAX_DATAGRAM;
use super::{is_routable, Flow, Gateway, GuestTx, Key};
use crate::publish::{PortSpec, PublishedSocket};

/// Where the guest sees published connections come from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishSource {
    /// The gateway's address (like Docker's userland proxy).
    #[default]
    Gateway,
    /// The client's own address (loopback clients: the host alias).
    Client,
}

/// A UDP client of a published port, as mapped into the guest.
pub struct PubUdpFlow {
    pub entry: u64,
    pub peer: SocketAddr,
    /// The guest's endpoint (the published guest port).
    pub guest: SocketAddrV4,
    /// The source the guest sees (and answers to).
    pub local: SocketAddrV4,
    pub socket: Arc<PublishedSocket>,
    pub last_active: Instant,
    pub opened: Instant,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
}

/// Listener ids travel in epoll tokens as a `FlowId`.
pub(super) fn listener_token(id: u64) -> FlowId {
    FlowId {
        slot: (id & 0x00ff_ffff) as u32,
        generation: (id >> 24) as u32,
    }
}

fn listener_id(t: FlowId) -> u64 {
    (u64::from(t.generation) << 24) | u64::from(t.slot)
}

impl Gateway {
    /// Registers newly published sockets and forgets removed ones (their
    /// sockets closed, which took them out of the epoll set).
    pub(super) fn sync_listeners(&mut self) {
        let entries: Vec<(u64, PortSpec, std::os::unix::io::RawFd)> = self.shared.with_ports(|t| {
            t.entries()
                .iter()
                .map(|e| (e.id, e.spec, e.socket.raw_fd()))
                .collect()
        });
        self.listeners
            .retain(|id, _| entries.iter().any(|(e, _, _)| e == id));
        for (id, spec, fd) in entries {
            if self.listeners.contains_key(&id) {
                continue;
            }
            match self
                .poller
                .add(fd, EventSet::IN, listener_token(id), Source::Listener)
            {
                Ok(()) => {
                    self.listeners.insert(id, spec);
                }
                Err(e) => log::warn!("cannot watch published port {spec}: {e}"),
            }
        }
    }

    /// Where the guest sees a client of a published port come from: an
    /// address and a source port no other flow to `guest` uses.
    fn inbound_source(
        &mut self,
        client: SocketAddr,
        guest: SocketAddrV4,
        proto: Proto,
    ) -> Option<SocketAddrV4> {
        use super::inbound::PublishSource as P;
        let ip = match (self.cfg.publish_source, client.ip()) {
            (P::Client, IpAddr::V4(v4)) if v4.is_loopback() => {
                self.cfg.host_ip.unwrap_or(self.cfg.gateway_ip)
            }
            (P::Client, IpAddr::V4(v4)) if is_routable(v4) && !self.cfg.in_subnet(v4) => v4,
            _ => self.cfg.gateway_ip,
        };
        for _ in 0..(61000 - 32768) {
            self.next_port = if self.next_port < 32768 || self.next_port >= 61000 {
                32768
            } else {
                self.next_port + 1
            };
            let local = SocketAddrV4::new(ip, self.next_port);
            let key: Key = (guest, local);
            let taken = match proto {
                Proto::Tcp => self.tcp_index.contains_key(&key),
                _ => self.pub_udp_index.contains_key(&key),
            };
            if !taken {
                return Some(local);
            }
        }
        None
    }

    /// A published socket is ready: accept TCP clients or read UDP datagrams.
    pub(super) fn listener_ready(&mut self, token: FlowId, tx: &mut dyn GuestTx) {
        let id = listener_id(token);
        let Some((spec, socket)) = self
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
                        Ok((stream, client)) => self.accept_tcp(spec, stream, client, tx),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            ratelimited!(log::Level::Warn, "published port {spec}: accept: {e}");
                            break;
                        }
                    }
                }
            }
            PublishedSocket::Udp(sock) => {
                let mut buf = std::mem::take(&mut self.scratch);
                for _ in 0..64 {
                    match sock.recv_from(&mut buf[..MAX_DATAGRAM]) {
                        Ok((n, peer)) => {
                            self.udp_from_client(id, spec, &socket, peer, &buf[..n], tx)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log::debug!("published port {spec}: {e}");
                            break;
                        }
                    }
                }
                self.scratch = buf;
            }
        }
    }

    fn refuse_client(&self, stream: std::net::TcpStream, spec: PortSpec, why: &str) {
        ratelimited!(
            log::Level::Info,
            "published port {spec}: refusing a client: {why}"
        );
        let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
        drop(stream);
    }

    fn accept_tcp(
        &mut self,
        spec: PortSpec,
        stream: std::net::TcpStream,
        client: SocketAddr,
        tx: &mut dyn GuestTx,
    ) {
        if !self.guest_mac.is_unicast() {
            self.refuse_client(stream, spec, "no guest is attached yet");
            return;
        }
        let Some(local) = self.inbound_source(client, spec.guest, Proto::Tcp) else {
            self.refuse_client(stream, spec, "no free source port");
            return;
        };
        let Some(id) = self.alloc() else {
            self.shared.stats.dropped(DropReason::FlowLimit);
            self.refuse_client(stream, spec, "flow limit reached");
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
        match TcpFlow::open_inbound(
            id,
            stream,
            client,
            spec.guest,
            local,
            self.cfg.tcp,
            &mut env,
        ) {
            Ok(flow) => {
                log::debug!("published {spec}: client {client} as {local}");
                self.shared.stats.flow_opened(Proto::Tcp);
                self.shared.audit(json!({
                    "event": "flow-open", "direction": "inbound", "proto": "tcp",
                    "client": client.to_string(), "host": spec.host.to_string(),
                    "guest": spec.guest.to_string(), "source": local.to_string(),
                }));
                self.install(id, Flow::Tcp(Box::new(flow)));
                self.tcp_index.insert((spec.guest, local), id);
                // Sends the SYN.
                self.with_tcp(id, tx, |flow, id, env| flow.guest_room(id, env));
            }
            Err(e) => {
                self.release(id);
                log::warn!("published port {spec}: {e}");
            }
        }
    }

    fn udp_from_client(
        &mut self,
        entry: u64,
        spec: PortSpec,
        socket: &Arc<PublishedSocket>,
        peer: SocketAddr,
        payload: &[u8],
        tx: &mut dyn GuestTx,
    ) {
        let now = self.now();
        let id = match self.pub_udp_peer.get(&(entry, peer)) {
            Some(&id) => id,
            None => {
                let Some(local) = self.inbound_source(peer, spec.guest, Proto::Udp) else {
                    self.shared.stats.dropped(DropReason::FlowLimit);
                    return;
                };
                let Some(id) = self.alloc() else {
                    self.shared.stats.dropped(DropReason::FlowLimit);
                    return;
                };
                self.shared.stats.flow_opened(Proto::Udp);
                self.shared.audit(json!({
                    "event": "flow-open", "direction": "inbound", "proto": "udp",
                    "client": peer.to_string(), "host": spec.host.to_string(),
                    "guest": spec.guest.to_string(), "source": local.to_string(),
                }));
                let flow = PubUdpFlow {
                    entry,
                    peer,
                    guest: spec.guest,
                    local,
                    socket: socket.clone(),
                    last_active: now,
                    opened: now,
                    bytes_to_guest: 0,
                    bytes_to_host: 0,
                };
                self.poller.schedule(now + self.cfg.udp_timeout, id);
                self.install(id, Flow::PubUdp(flow));
                self.pub_udp_index.insert((spec.guest, local), id);
                self.pub_udp_peer.insert((entry, peer), id);
                id
            }
        };
        let Some(Flow::PubUdp(flow)) = self.get(id) else {
            return;
        };
        flow.last_active = now;
        flow.bytes_to_guest += payload.len() as u64;
        let (local, guest) = (flow.local, flow.guest);
        self.udp_to_guest(local, guest, payload, None, tx);
    }

    /// A guest datagram answering a published-port client, if it is one.
    pub(super) fn udp_to_client(&mut self, key: Key, payload: &[u8]) -> bool {
        let Some(&id) = self.pub_udp_index.get(&key) else {
            return false;
        };
        let now = self.now();
        if let Some(Flow::PubUdp(flow)) = self.get(id) {
            flow.last_active = now;
            flow.bytes_to_host += payload.len() as u64;
            if let PublishedSocket::Udp(sock) = &*flow.socket {
                if let Err(e) = sock.send_to(payload, flow.peer) {
                    log::debug!("published udp to {}: {e}", flow.peer);
                    self.shared.stats.dropped(DropReason::HostSendFailed);
                }
            }
        }
        true
    }
}
