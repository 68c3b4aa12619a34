//! The gateway: everything between the guest's Ethernet frames and the
//! host's sockets, with no knowledge of virtqueues (frames come in as byte
//! slices, go out through [`GuestTx`]), so it is tested without a VM.
//!
//! Frames are demultiplexed here, in front of smoltcp:
//! - ARP for the gateway's addresses and off-link destinations → answered;
//! - DHCP (UDP 67) → [`crate::dhcp`]; DNS to the gateway → [`crate::dns`]
//!   (local names) or forwarded upstream through a UDP flow;
//! - ICMP echo → answered for the gateway and aliases, else a ping socket;
//! - UDP → a UDP flow; TCP → a TCP flow (smoltcp, one socket per flow).

pub mod dns_tcp;
pub mod host;
pub mod icmp;
pub mod inbound;
mod outbound;
pub mod poller;
pub mod smol;
pub mod stats;
pub mod tcp;
pub mod udp;
pub mod wire;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, IpCidr, IpProtocol, Ipv4Packet,
};
use vmm_sys_util::epoll::EventSet;

use crate::dhcp::{DhcpConfig, DhcpServer};
use crate::dns::LocalRecords;
use crate::policy::Decision;
use crate::shared::Shared;
use host::Target;
use icmp::PingFlow;
use inbound::{PubUdpFlow, PublishSource};
use poller::{FlowId, Poller, Source};
use serde_json::json;
use smol::IpDevice;
use stats::{DropReason, Proto, Stats};
use tcp::{Env, TcpFlow, TcpLimits};
use udp::{UdpFlow, MAX_DATAGRAM};

/// Where the gateway's frames to the guest go.
pub trait GuestTx {
    /// Whether another frame may be queued now; false while the guest has
    /// posted no receive buffers and the backlog is full.
    fn has_room(&self) -> bool;
    /// Queues a frame of `len` bytes and returns it to be filled. Its
    /// contents are unspecified: the caller writes every byte.
    fn frame(&mut self, len: usize) -> &mut [u8];
    /// True if frames may leave L4 checksums out (the guest accepted
    /// VIRTIO_NET_F_GUEST_CSUM and frames are marked DATA_VALID).
    fn csum_offload(&self) -> bool;
}

/// Everything the gateway needs to know, checked by the config layer.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub gateway_mac: EthernetAddress,
    pub gateway_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub guest_ip: Ipv4Addr,
    /// `host.airlock.internal`: connections go to the host's loopback.
    pub host_ip: Option<Ipv4Addr>,
    /// `http.airlock.internal`: the proxy alias, and where it leads.
    pub proxy_ip: Ipv4Addr,
    pub proxy: Option<(u16, Target)>,
    pub mtu: usize,
    pub dns_upstreams: Vec<SocketAddr>,
    pub records: Arc<LocalRecords>,
    /// DNS zones the gateway is authoritative for (`airlock.internal`):
    /// unknown names in them get NXDOMAIN instead of going upstream.
    pub local_zones: Vec<String>,
    pub dhcp: DhcpConfig,
    /// Where published-port clients appear to come from.
    pub publish_source: PublishSource,
    pub max_flows: usize,
    pub tcp: TcpLimits,
    pub udp_timeout: Duration,
}

impl GatewayConfig {
    fn in_subnet(&self, a: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(a) & mask == u32::from(self.gateway_ip) & mask
    }

    fn broadcast(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.gateway_ip) | !mask)
    }

    /// Addresses the gateway itself answers for.
    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.gateway_ip || Some(a) == self.host_ip || a == self.proxy_ip
    }
}

enum Flow {
    Tcp(Box<TcpFlow>),
    Udp(UdpFlow),
    Ping(PingFlow),
    PubUdp(PubUdpFlow),
}

struct Slot {
    generation: u32,
    flow: Option<Flow>,
}

/// (guest endpoint, remote endpoint) of a TCP or UDP flow.
type Key = (SocketAddrV4, SocketAddrV4);

pub struct Gateway {
    cfg: GatewayConfig,
    shared: Arc<Shared>,
    iface: Interface,
    empty: SocketSet<'static>,
    poller: Poller,
    dhcp: DhcpServer,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    tcp_index: HashMap<Key, FlowId>,
    udp_index: HashMap<Key, FlowId>,
    ping_index: HashMap<(Ipv4Addr, u16, Ipv4Addr), FlowId>,
    /// Published-port UDP mappings, by (guest endpoint, source it sees)
    /// and by (published port id, client).
    pub_udp_index: HashMap<Key, FlowId>,
    pub_udp_peer: HashMap<(u64, SocketAddr), FlowId>,
    /// Published sockets registered in the poller, by id.
    listeners: HashMap<u64, crate::publish::PortSpec>,
    /// Next source port handed to a published-port client.
    next_port: u16,
    /// When a denied flow was last written to the audit log, so a guest
    /// retrying cannot flood it (one record per flow key per 10 s).
    denied: HashMap<(Proto, SocketAddrV4, SocketAddrV4), Instant>,
    guest_mac: EthernetAddress,
    epoch: Instant,
    /// Set when a frame could not be queued for lack of guest buffers.
    starved: bool,
    /// UDP flows not read until the guest has room again (see
    /// [`Gateway::guest_room`]).
    paused_udp: Vec<FlowId>,
    scratch: Vec<u8>,
    events: Vec<(FlowId, Source, EventSet)>,
    due: Vec<FlowId>,
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
        let mut iface_cfg = IfaceConfig::new(HardwareAddress::Ip);
        iface_cfg.random_seed = random_seed();
        let mut sink = NullTx::default();
        let mut dev = IpDevice::new(
            &mut sink,
            cfg.gateway_mac,
            EthernetAddress::BROADCAST,
            cfg.mtu,
        );
        let mut iface = Interface::new(iface_cfg, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(cfg.gateway_ip.into(), cfg.prefix_len));
        });
        // Accept segments for every destination: each flow's socket listens
        // on the exact address the guest connected to.
        iface.set_any_ip(true);
        let mut gateway = Gateway {
            dhcp: DhcpServer::new(cfg.dhcp.clone()),
            cfg,
            shared,
            iface,
            empty: SocketSet::new(Vec::new()),
            poller: Poller::new()?,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            tcp_index: HashMap::new(),
            udp_index: HashMap::new(),
            ping_index: HashMap::new(),
            pub_udp_index: HashMap::new(),
            pub_udp_peer: HashMap::new(),
            listeners: HashMap::new(),
            next_port: 0,
            denied: HashMap::new(),
            guest_mac: EthernetAddress::BROADCAST,
            epoch,
            starved: false,
            paused_udp: Vec::new(),
            scratch: vec![0u8; MAX_DATAGRAM],
            events: Vec::new(),
            due: Vec::new(),
        };
        gateway.sync_listeners();
        Ok(gateway)
    }

    /// The epoll fd of host sockets (readable when one is ready).
    pub fn host_fd(&self) -> std::os::unix::io::RawFd {
        self.poller.epoll_fd()
    }

    /// The timer fd (readable when a flow deadline passed).
    pub fn timer_fd(&self) -> std::os::unix::io::RawFd {
        self.poller.timer_fd()
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    pub fn flow_count(&self) -> usize {
        self.live
    }

    // ---- flow table -------------------------------------------------------

    fn alloc(&mut self) -> Option<FlowId> {
        if self.live >= self.cfg.max_flows {
            return None;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.slots.len() >= poller::MAX_SLOTS {
                    return None;
                }
                self.slots.push(Slot {
                    generation: 0,
                    flow: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        Some(FlowId {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    fn install(&mut self, id: FlowId, flow: Flow) {
        if let Some(s) = self.slots.get_mut(id.slot as usize) {
            s.flow = Some(flow);
            self.live += 1;
        }
    }

    /// Returns a slot that was allocated but not filled.
    fn release(&mut self, id: FlowId) {
        self.free.push(id.slot);
    }

    /// The live UDP flow `id`, borrowed apart from the poller.
    fn udp_and_poller(&mut self, id: FlowId) -> Option<(&UdpFlow, &Poller)> {
        let s = self.slots.get(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        match s.flow.as_ref()? {
            Flow::Udp(flow) => Some((flow, &self.poller)),
            _ => None,
        }
    }

    fn get(&mut self, id: FlowId) -> Option<&mut Flow> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.flow.as_mut()
    }

    fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let s = self.slots.get_mut(id.slot as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let flow = s.flow.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.live -= 1;
        let info = flow_info(&flow, Instant::now());
        match &flow {
            Flow::Tcp(f) => {
                self.tcp_index.remove(&(f.guest, f.remote));
            }
            Flow::Udp(f) => {
                self.udp_index.remove(&(f.guest, f.remote));
                f.close(&self.poller);
            }
            Flow::Ping(f) => {
                self.ping_index.remove(&(f.guest, f.ident, f.remote));
                f.close(&self.poller);
            }
            Flow::PubUdp(f) => {
                self.pub_udp_index.remove(&(f.guest, f.local));
                self.pub_udp_peer.remove(&(f.entry, f.peer));
            }
        }
        self.shared.stats.flow_closed(info.proto);
        if !info.service {
            let end = match &flow {
                Flow::Tcp(f) => f.ended().map(|e| format!("{e:?}").to_lowercase()),
                _ => None,
            };
            self.shared.audit(json!({
                "event": "flow-close", "direction": info.direction, "proto": info.proto,
                "guest": info.guest, "remote": info.remote, "host_side": info.host_side,
                "bytes_to_host": info.bytes_to_host, "bytes_to_guest": info.bytes_to_guest,
                "duration_ms": info.age_ms, "end": end.unwrap_or_else(|| "expired".to_owned()),
            }));
        }
        Some(flow)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    // ---- frames from the guest ---------------------------------------------

    /// Handles one Ethernet frame from the guest. `partial_csum`: the guest
    /// marked it NEEDS_CSUM (its L4 checksum is not filled in).
    pub fn guest_frame(&mut self, frame: &[u8], partial_csum: bool, tx: &mut dyn GuestTx) {
        self.shared.stats.frame_from_guest(frame.len());
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        let src = eth.src_addr();
        if src.is_unicast() {
            self.guest_mac = src;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(eth.payload(), tx),
            EthernetProtocol::Ipv4 => self.ipv4(eth.payload(), partial_csum, tx),
            _ => self.shared.stats.dropped(DropReason::Unsupported),
        }
    }

    fn arp(&mut self, payload: &[u8], tx: &mut dyn GuestTx) {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            self.shared.stats.dropped(DropReason::Malformed);
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
            self.send_frame(&reply, tx);
        }
    }

    fn send_frame(&mut self, frame: &[u8], tx: &mut dyn GuestTx) {
        if !tx.has_room() {
            self.starved = true;
            self.shared.stats.dropped(DropReason::GuestRxFull);
            return;
        }
        tx.frame(frame.len()).copy_from_slice(frame);
    }

    fn ipv4(&mut self, payload: &[u8], partial_csum: bool, tx: &mut dyn GuestTx) {
        let Ok(pkt) = Ipv4Packet::new_checked(payload) else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        if !pkt.verify_checksum() {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        }
        if pkt.more_frags() || pkt.frag_offset() != 0 {
            // The guest's MTU equals ours; fragments mean a guest sending
            // oversized datagrams. Not reassembled.
            self.shared.stats.dropped(DropReason::Unsupported);
            return;
        }
        // Strip Ethernet padding: the IP packet is exactly total_len bytes.
        let total = usize::from(pkt.total_len());
        let Some(ip_bytes) = payload.get(..total) else {
            self.shared.stats.dropped(DropReason::Malformed);
            return;
        };
        let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
        let body = pkt.payload();
        match pkt.next_header() {
            IpProtocol::Tcp => self.tcp(ip_bytes, src, dst, body, partial_csum, tx),
            IpProtocol::Udp => self.udp(src, dst, body, tx),
            IpProtocol::Icmp => self.icmp(src, dst, body, partial_csum, tx),
            _ => self.shared.stats.dropped(DropReason::Unsupported),
        }
    }

    fn env<'a>(
        iface: &'a mut Interface,
        poller: &'a mut Poller,
        tx: &'a mut dyn GuestTx,
        cfg: &GatewayConfig,
        guest_mac: EthernetAddress,
        epoch: Instant,
    ) -> Env<'a> {
        Env {
            iface,
            tx,
            poller,
            now: Instant::now(),
            epoch,
            gateway_mac: cfg.gateway_mac,
            guest_mac,
            mtu: cfg.mtu,
        }
    }

    /// Runs `f` on TCP flow `id` with an environment, then retires the flow
    /// if it ended.
    fn with_tcp(
        &mut self,
        id: FlowId,
        tx: &mut dyn GuestTx,
        f: impl FnOnce(&mut TcpFlow, FlowId, &mut Env),
    ) {
        let (cfg, guest_mac, epoch) = (&self.cfg, self.guest_mac, self.epoch);
        let Some(slot) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(Flow::Tcp(flow)) = slot.flow.as_mut() else {
            return;
        };
        let mut env = Self::env(&mut self.iface, &mut self.poller, tx, cfg, guest_mac, epoch);
        f(flow, id, &mut env);
        if !env.tx.has_room() {
            self.starved = true;
        }
        if let Some(end) = flow.ended() {
            if matches!(end, tcp::End::Refused | tcp::End::TimedOut) {
                self.shared.stats.flow_refused(Proto::Tcp);
            }
            log::debug!(
                "tcp {} -> {} ended ({end:?}): {} bytes to host, {} to guest",
                flow.guest,
                flow.remote,
                flow.bytes_to_host,
                flow.bytes_to_guest
            );
            self.remove(id);
        }
    }

    // ---- host side and timers ---------------------------------------------

    /// Handles every ready host socket.
    pub fn host_events(&mut self, tx: &mut dyn GuestTx) -> io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.poller.ready(&mut events)?;
        for &(id, src, ev) in &events {
            if src == Source::Listener {
                self.listener_ready(id, tx);
                continue;
            }
            match self.get(id) {
                Some(Flow::Tcp(_)) if src != Source::Listener => {
                    self.with_tcp(id, tx, |flow, id, env| flow.host_event(id, ev, env));
                }
                Some(Flow::Tcp(_)) => {}
                Some(Flow::Udp(_)) => self.udp_readable(id, tx),
                Some(Flow::Ping(_)) => self.ping_readable(id, tx),
                Some(Flow::PubUdp(_)) | None => {}
            }
        }
        self.events = events;
        Ok(())
    }

    /// Handles every flow whose deadline passed.
    pub fn timers(&mut self, tx: &mut dyn GuestTx) {
        let now = self.now();
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.poller.due(now, &mut due);
        let timeout = self.cfg.udp_timeout;
        for &id in &due {
            match self.get(id) {
                Some(Flow::Tcp(flow)) if flow.deadline.is_some_and(|d| d <= now) => {
                    flow.deadline = None;
                    self.with_tcp(id, tx, |flow, id, env| flow.timer(id, env));
                }
                Some(Flow::Tcp(_)) => {}
                Some(Flow::Udp(flow)) => {
                    let expiry = flow.expiry(timeout);
                    if expiry <= now {
                        self.remove(id);
                    } else {
                        self.poller.schedule(expiry, id);
                    }
                }
                Some(Flow::PubUdp(flow)) => {
                    let expiry = flow.last_active + timeout;
                    if expiry <= now {
                        self.remove(id);
                    } else {
                        self.poller.schedule(expiry, id);
                    }
                }
                Some(Flow::Ping(flow)) => {
                    let expiry = flow.expiry(timeout);
                    if expiry <= now {
                        self.remove(id);
                    } else {
                        self.poller.schedule(expiry, id);
                    }
                }
                None => {}
            }
        }
        self.due = due;
        let slots = &self.slots;
        self.poller.compact(self.live, |id, _| {
            slots
                .get(id.slot as usize)
                .is_some_and(|s| s.generation == id.generation && s.flow.is_some())
        });
    }

    /// Whether something was held back for lack of guest buffers: the
    /// device calls [`Gateway::guest_room`] once it has room again.
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// The guest has room again: let flows that were held back send, and
    /// watch paused UDP sockets again (their pending datagrams wake the
    /// next round).
    pub fn guest_room(&mut self, tx: &mut dyn GuestTx) {
        if !std::mem::take(&mut self.starved) {
            return;
        }
        let ids: Vec<FlowId> = self.tcp_index.values().copied().collect();
        for id in ids {
            if !tx.has_room() {
                self.starved = true;
                break;
            }
            self.with_tcp(id, tx, |flow, id, env| flow.guest_room(id, env));
        }
        for id in std::mem::take(&mut self.paused_udp) {
            if let Some((flow, poller)) = self.udp_and_poller(id) {
                if let Err(e) = flow.resume(id, poller) {
                    airlock_common::ratelimited!(
                        log::Level::Warn,
                        "cannot watch a UDP socket again: {e}"
                    );
                }
            }
        }
    }

    /// Closes every flow (the guest went away): host TCP peers get a RST.
    pub fn shutdown(&mut self) {
        let mut sink = NullTx::default();
        let ids: Vec<FlowId> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.flow.is_some())
            .map(|(i, s)| FlowId {
                slot: i as u32,
                generation: s.generation,
            })
            .collect();
        for id in ids {
            // TCP flows reset both sides; `with_tcp` retires them.
            self.with_tcp(id, &mut sink, |flow, _, env| flow.shutdown(env));
            self.remove(id);
        }
    }
}

/// One flow as the control API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowInfo {
    pub proto: Proto,
    pub direction: tcp::Direction,
    /// The guest's endpoint.
    pub guest: String,
    /// The other end as the guest sees it.
    pub remote: String,
    /// The host side: where an outbound flow goes, or the client of an
    /// inbound one.
    pub host_side: String,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    pub age_ms: u64,
    /// A DNS query the gateway forwards (its own service).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
}

fn flow_info(flow: &Flow, now: Instant) -> FlowInfo {
    let age = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
    match flow {
        Flow::Tcp(f) => FlowInfo {
            proto: Proto::Tcp,
            direction: f.direction,
            guest: f.guest.to_string(),
            remote: f.remote.to_string(),
            host_side: f.target.to_string(),
            bytes_to_host: f.bytes_to_host,
            bytes_to_guest: f.bytes_to_guest,
            age_ms: age(f.opened),
            service: f.remote.port() == 53 && f.target == Target::Tcp(f.remote.into()),
        },
        Flow::Udp(f) => FlowInfo {
            proto: Proto::Udp,
            direction: tcp::Direction::Outbound,
            guest: f.guest.to_string(),
            remote: f.remote.to_string(),
            host_side: f.target.to_string(),
            bytes_to_host: f.bytes_to_host,
            bytes_to_guest: f.bytes_to_guest,
            age_ms: age(f.opened),
            service: f.service,
        },
        Flow::Ping(f) => FlowInfo {
            proto: Proto::Icmp,
            direction: tcp::Direction::Outbound,
            guest: format!("{} id {}", f.guest, f.ident),
            remote: f.remote.to_string(),
            host_side: f.remote.to_string(),
            bytes_to_host: 0,
            bytes_to_guest: 0,
            age_ms: age(f.opened),
            service: false,
        },
        Flow::PubUdp(f) => FlowInfo {
            proto: Proto::Udp,
            direction: tcp::Direction::Inbound,
            guest: f.guest.to_string(),
            remote: f.local.to_string(),
            host_side: f.peer.to_string(),
            bytes_to_host: f.bytes_to_host,
            bytes_to_guest: f.bytes_to_guest,
            age_ms: age(f.opened),
            service: false,
        },
    }
}

impl Gateway {
    /// Every current flow.
    pub fn flows(&self) -> Vec<FlowInfo> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter_map(|s| s.flow.as_ref())
            .map(|f| flow_info(f, now))
            .collect()
    }

    /// The DHCP leases.
    pub fn leases(&self) -> Vec<crate::dhcp::LeaseInfo> {
        self.dhcp.leases(Instant::now())
    }

    /// Asks the egress policy about a new flow; denials are audited (at most
    /// once per flow key per 10 s) and counted.
    pub(super) fn check_policy(
        &mut self,
        proto: Proto,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Decision {
        let port = (proto != Proto::Icmp).then_some(remote.port());
        let decision = self.shared.policy().decide(proto, *remote.ip(), port);
        if !decision.allowed() {
            self.shared.stats.dropped(DropReason::Policy);
            self.shared.stats.flow_refused(proto);
            let now = Instant::now();
            let key = (proto, guest, remote);
            let recent = self
                .denied
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10));
            if !recent {
                if self.denied.len() > 4096 {
                    self.denied
                        .retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
                }
                self.denied.insert(key, now);
                log::info!(
                    "egress {proto} {guest} -> {remote}: {}",
                    decision.describe()
                );
                self.shared.audit(json!({
                    "event": "flow-deny", "proto": proto, "guest": guest.to_string(),
                    "remote": remote.to_string(), "decision": decision.describe(),
                }));
            }
        }
        decision
    }

    /// Ports or the policy changed (control API, SIGHUP): register new
    /// published sockets, and close established flows the policy now denies.
    pub fn control(&mut self, tx: &mut dyn GuestTx) {
        self.shared.take_notification();
        self.sync_listeners();
        let policy = self.shared.policy();
        let denied: Vec<(FlowId, Proto, String)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let id = FlowId {
                    slot: i as u32,
                    generation: s.generation,
                };
                let (proto, remote) = match s.flow.as_ref()? {
                    Flow::Tcp(f)
                        if f.direction == tcp::Direction::Outbound
                            && !f.remote.ip().eq(&self.cfg.gateway_ip) =>
                    {
                        (Proto::Tcp, f.remote)
                    }
                    Flow::Udp(f) if !f.service => (Proto::Udp, f.remote),
                    Flow::Ping(f) => (Proto::Icmp, SocketAddrV4::new(f.remote, 0)),
                    _ => return None,
                };
                let port = (proto != Proto::Icmp).then_some(remote.port());
                let d = policy.decide(proto, *remote.ip(), port);
                (!d.allowed()).then(|| (id, proto, d.describe()))
            })
            .collect();
        for (id, proto, why) in denied {
            log::info!("policy reload closes a {proto} flow: {why}");
            self.shared.audit(json!({"event": "flow-deny", "reason": "policy-reload", "proto": proto, "decision": why}));
            if proto == Proto::Tcp {
                self.with_tcp(id, tx, |flow, _, env| flow.reset(env));
            }
            self.remove(id);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether `name` is `zone` or below it (both lowercase, no trailing dot).
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.strip_suffix(zone).is_some_and(|p| p.ends_with('.'))
}

/// Addresses a NAT flow may go to (not loopback, multicast, broadcast,
/// unspecified, or 0.0.0.0/8).
fn is_routable(a: Ipv4Addr) -> bool {
    !(a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || a.octets()[0] == 0)
}

/// A `GuestTx` that discards everything (startup, shutdown).
#[derive(Default)]
struct NullTx(Vec<u8>);

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
}
