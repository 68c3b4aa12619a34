//! Flows: everything the gateway carries between a guest endpoint and a
//! host socket. Each kind is a module owning its state and its sockets:
//!
//! - [`tcp`]: a guest TCP connection ⇄ a host connection (NAT, host and
//!   proxy aliases, published ports, DNS over TCP to the gateway);
//! - [`udp`]: a guest UDP endpoint ⇄ a connected host socket (NAT);
//! - [`ping`]: ICMP echo through an unprivileged ping socket;
//! - [`published`]: published ports: host clients reaching a guest port;
//! - the DNS service's forwarded queries
//!   ([`crate::services::dns::forward`]).
//!
//! A kind implements [`Flow`]; the [`FlowTable`] holds every live flow, the
//! keys that find one from a packet, and its wake-up time, so that opening,
//! dispatching, timers, expiry and closing are written once for all kinds.

pub(crate) mod ping;
pub(crate) mod published;
pub(crate) mod table;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::any::Any;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_api::{FlowInfo, Proto};
use smoltcp::iface::Interface;
use smoltcp::wire::{
    EthernetAddress, Icmpv4DstUnreachable, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Repr, IpCidr,
    IpProtocol, Ipv4Repr, Ipv6Repr,
};
use vmm_sys_util::epoll::EventSet;

use crate::phy::{GuestSegmentation, GuestTx};
use crate::poller::{FlowId, Poller, Source};
use crate::shared::Shared;
use crate::stats::DropReason;
use crate::wire;

pub(crate) use table::FlowTable;

/// How a flow is found from a packet or a host client. Every kind has its
/// own variant; the table keeps one map over all of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlowKey {
    /// A TCP connection: (guest endpoint, the endpoint the guest sees).
    Tcp(SocketAddr, SocketAddr),
    /// A NAT UDP mapping: (guest endpoint, destination).
    Udp(SocketAddr, SocketAddr),
    /// Forwarded DNS queries from one guest endpoint.
    DnsUdp(SocketAddr),
    /// An echo session: (guest, identifier, destination).
    Ping(IpAddr, u16, IpAddr),
    /// A published UDP port's client as the guest sees it:
    /// (guest endpoint, source the guest answers to).
    PublishedUdp(SocketAddr, SocketAddr),
    /// The same client from the host side: (published port id, client).
    PublishedClient(u64, SocketAddr),
}

/// What the handler of an event says about the flow afterwards.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Verdict {
    Keep,
    /// The flow is over: the table retires it.
    Done,
}

/// Why a flow ended, as the audit log's `flow-close` records it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed normally.
    Closed,
    /// The host refused or could not be reached; the guest got a RST.
    Refused,
    /// The host connect (or the guest's answer to a published port) did
    /// not complete in time.
    TimedOut,
    /// One side reset the connection (or a socket error occurred).
    Reset,
    /// Idle past its timeout, or closed by the gateway.
    Expired,
}

impl End {
    pub(crate) fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Refused => "refused",
            End::TimedOut => "timedout",
            End::Reset => "reset",
            End::Expired => "expired",
        }
    }
}

/// One packet from the guest for a flow, its headers already checked.
pub(crate) struct GuestPacket<'a> {
    /// The whole IP packet (what smoltcp takes).
    pub ip: &'a [u8],
    /// The layer-4 payload: a UDP datagram's data, an ICMP message.
    pub payload: &'a [u8],
}

/// A flow of some kind, as the table and the gateway drive it.
pub(crate) trait Flow: Any + Send {
    /// The keys it is found by; registered when it is inserted and
    /// forgotten when it is retired.
    fn keys(&self) -> Vec<FlowKey>;

    /// How the control API shows it.
    fn info(&self, now: Instant) -> FlowInfo;

    /// A packet from the guest found this flow by one of its keys.
    fn guest_packet(&mut self, id: FlowId, packet: &GuestPacket, cx: &mut Cx) -> Verdict;

    /// One of its host sockets is ready (or failed).
    fn host_event(&mut self, id: FlowId, source: Source, events: EventSet, cx: &mut Cx) -> Verdict;

    /// When [`Flow::timer`] should next run (`None`: no timer).
    fn deadline(&self) -> Option<Instant>;

    /// Its deadline passed.
    fn timer(&mut self, id: FlowId, cx: &mut Cx) -> Verdict;

    /// The guest has receive buffers again after the gateway had to hold
    /// back.
    fn guest_room(&mut self, _id: FlowId, _cx: &mut Cx) -> Verdict {
        Verdict::Keep
    }

    /// Where the guest sent this flow, for the egress policy to re-decide
    /// on reload; `None` for inbound flows and the gateway's own services.
    fn egress(&self) -> Option<(Proto, SocketAddr)> {
        None
    }

    /// Resets both sides now (the policy no longer allows it).
    fn reset(&mut self, _cx: &mut Cx) {}

    /// Closes at once without telling the guest (it went away).
    fn shutdown(&mut self, _cx: &mut Cx) {}

    /// Takes its sockets out of the poller (it is being retired).
    fn close(&mut self, poller: &Poller);

    /// How it ended (asked when it is retired).
    fn end(&self) -> End {
        End::Expired
    }

    /// Whether it is the gateway's own service (forwarded DNS): not in the
    /// audit log, not subject to the egress policy.
    fn service(&self) -> bool {
        false
    }

    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The guest's side of the link.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Link {
    pub gateway_mac: EthernetAddress,
    /// The guest's MAC, learnt from its frames (broadcast until then).
    pub guest_mac: EthernetAddress,
    /// The guest's IPv6 address in the prefix, learnt from its Duplicate
    /// Address Detection or DHCPv6 (where published ports reach it).
    pub guest_ip6: Option<Ipv6Addr>,
    pub mtu: usize,
    /// smoltcp's time zero.
    pub epoch: Instant,
}

/// The gateway's machinery every flow uses while handling an event.
pub(crate) struct Stack {
    pub iface: Interface,
    /// The interface's addresses (to build it again).
    pub addrs: Vec<IpCidr>,
    /// The larger TCP segments the interface was built to send.
    pub segmentation: GuestSegmentation,
    pub poller: Poller,
    pub shared: Arc<Shared>,
    pub link: Link,
    /// A buffer for one host datagram.
    pub scratch: Vec<u8>,
}

impl Stack {
    /// The context of one event. smoltcp reads a device's capabilities
    /// once: when the guest's segmentation offloads changed (a transport
    /// negotiated them), the interface is built again to match.
    pub(crate) fn cx<'a>(&'a mut self, tx: &'a mut dyn GuestTx) -> Cx<'a> {
        let segmentation = tx.segmentation();
        if segmentation != self.segmentation {
            self.iface = crate::gateway::interface(&self.link, &self.addrs, segmentation);
            self.segmentation = segmentation;
        }
        Cx {
            stack: self,
            tx,
            now: Instant::now(),
            starved: false,
        }
    }
}

/// What a flow handler works with: the stack, the guest's transmit side
/// and the time of the event.
pub(crate) struct Cx<'a> {
    pub stack: &'a mut Stack,
    pub tx: &'a mut dyn GuestTx,
    pub now: Instant,
    /// Set when something was held back for lack of guest buffers.
    pub starved: bool,
}

impl Cx<'_> {
    pub(crate) fn dropped(&self, why: DropReason) {
        self.stack.shared.stats.dropped(why);
    }

    /// smoltcp's clock.
    pub(crate) fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            self.now
                .saturating_duration_since(self.stack.link.epoch)
                .as_micros() as i64,
        )
    }

    pub(crate) fn std_instant(&self, t: smoltcp::time::Instant) -> Instant {
        self.stack.link.epoch + Duration::from_micros(t.total_micros().max(0) as u64)
    }

    /// The addresses of a frame from `from` to the guest at `to`.
    pub(crate) fn route<A>(&self, from: A, to: A) -> wire::Route<A> {
        wire::Route {
            src_mac: self.stack.link.gateway_mac,
            dst_mac: self.stack.link.guest_mac,
            src_ip: from,
            dst_ip: to,
        }
    }

    /// Queues a whole frame for the guest, or counts it dropped.
    pub(crate) fn send_frame(&mut self, frame: &[u8]) {
        if !self.tx.has_room() {
            self.starved = true;
            self.dropped(DropReason::GuestRxFull);
            return;
        }
        self.tx.frame(frame.len()).copy_from_slice(frame);
    }

    /// Sends a UDP datagram to the guest (`dst_mac`: to another MAC than
    /// the guest's known one, as DHCP replies may). Both ends are of one
    /// family.
    pub(crate) fn send_udp(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
        dst_mac: Option<EthernetAddress>,
    ) {
        let len = match (from, to) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => wire::udp_frame_len(payload.len()),
            (SocketAddr::V6(_), SocketAddr::V6(_)) => wire::ipv6::udp_frame_len(payload.len()),
            _ => return,
        };
        if len - wire::ETH_HEADER > self.stack.link.mtu {
            self.dropped(DropReason::Oversize);
            return;
        }
        if !self.tx.has_room() {
            self.starved = true;
            self.dropped(DropReason::GuestRxFull);
            return;
        }
        let offload = self.tx.csum_offload();
        match (from, to) {
            (SocketAddr::V4(f), SocketAddr::V4(t)) => {
                let mut route = self.route(*f.ip(), *t.ip());
                if let Some(mac) = dst_mac {
                    route.dst_mac = mac;
                }
                let buf = self.tx.frame(len);
                wire::write_udp(buf, route, f.port(), t.port(), payload, offload);
            }
            (SocketAddr::V6(f), SocketAddr::V6(t)) => {
                let mut route = self.route(*f.ip(), *t.ip());
                if let Some(mac) = dst_mac {
                    route.dst_mac = mac;
                }
                let buf = self.tx.frame(len);
                wire::ipv6::write_udp(buf, route, f.port(), t.port(), payload, offload);
            }
            _ => {}
        }
    }

    /// Tells the guest its datagram from `guest` to `remote` cannot be
    /// delivered.
    pub(crate) fn unreachable(&mut self, guest: SocketAddr, remote: SocketAddr, why: Unreachable) {
        // The quoted header lets the guest's stack find the socket.
        let udp_header = {
            let mut h = [0u8; 8];
            h[0..2].copy_from_slice(&guest.port().to_be_bytes());
            h[2..4].copy_from_slice(&remote.port().to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        };
        let frame = match (guest.ip(), remote.ip()) {
            (IpAddr::V4(g), IpAddr::V4(r)) => {
                let reason = match why {
                    Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                    Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
                    Unreachable::NoRoute => Icmpv4DstUnreachable::NetUnreachable,
                };
                let repr = Icmpv4Repr::DstUnreachable {
                    reason,
                    header: Ipv4Repr {
                        src_addr: g,
                        dst_addr: r,
                        next_header: IpProtocol::Udp,
                        payload_len: 8,
                        hop_limit: wire::TTL,
                    },
                    data: &udp_header,
                };
                wire::icmp_frame(self.route(r, g), &repr)
            }
            (IpAddr::V6(g), IpAddr::V6(r)) => {
                let reason = match why {
                    Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                    Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
                    Unreachable::NoRoute => Icmpv6DstUnreachable::NoRoute,
                };
                let repr = Icmpv6Repr::DstUnreachable {
                    reason,
                    header: Ipv6Repr {
                        src_addr: g,
                        dst_addr: r,
                        next_header: IpProtocol::Udp,
                        payload_len: 8,
                        hop_limit: wire::TTL,
                    },
                    data: &udp_header,
                };
                wire::ipv6::icmp_frame(self.route(r, g), &repr)
            }
            _ => return,
        };
        self.send_frame(&frame);
    }
}

/// Why a datagram cannot be delivered, as an ICMP or ICMPv6 Destination
/// Unreachable says it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// Nothing listens on the port.
    Port,
    /// The egress policy or a limit refused it.
    Prohibited,
    /// The host has no route there.
    NoRoute,
}

/// Why a flow could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The table is full (`--max-flows`).
    Limit,
    /// The host side could not be set up.
    Io(io::Error),
}

/// The flow table and the stack its flows run on: opening, dispatching
/// and retiring flows of every kind, written once.
pub(crate) struct Flows {
    pub table: FlowTable,
    pub stack: Stack,
    /// Something was held back for lack of guest buffers since the guest
    /// last made room.
    pub starved: bool,
}

impl Flows {
    /// A context for the gateway's own replies (services, ARP, ICMP).
    pub(crate) fn cx<'a>(&'a mut self, tx: &'a mut dyn GuestTx) -> Cx<'a> {
        self.stack.cx(tx)
    }

    /// Opens a flow: `build` gets its id and a context and returns it, or
    /// why the host side could not be set up.
    pub(crate) fn open(
        &mut self,
        tx: &mut dyn GuestTx,
        build: impl FnOnce(FlowId, &mut Cx) -> io::Result<Box<dyn Flow>>,
    ) -> Result<FlowId, OpenError> {
        let id = self.table.reserve().ok_or(OpenError::Limit)?;
        let mut cx = self.stack.cx(tx);
        let built = build(id, &mut cx);
        self.starved |= cx.starved;
        match built {
            Ok(flow) => {
                let proto = flow.info(cx.now).proto;
                self.stack.shared.stats.flow_opened(proto);
                self.table.insert(id, flow);
                self.table.schedule(id, &mut self.stack.poller);
                Ok(id)
            }
            Err(e) => {
                self.table.release(id);
                Err(OpenError::Io(e))
            }
        }
    }

    /// Runs `f` on flow `id` (if it is still there), then queues its next
    /// wake-up or retires it.
    pub(crate) fn with(
        &mut self,
        id: FlowId,
        tx: &mut dyn GuestTx,
        f: impl FnOnce(&mut dyn Flow, FlowId, &mut Cx) -> Verdict,
    ) {
        let Some(flow) = self.table.get_mut(id) else {
            return;
        };
        let mut cx = self.stack.cx(tx);
        let verdict = f(flow, id, &mut cx);
        self.starved |= cx.starved || !cx.tx.has_room();
        match verdict {
            Verdict::Keep => self.table.schedule(id, &mut self.stack.poller),
            Verdict::Done => self.retire(id),
        }
    }

    /// [`Flows::with`] for a flow known to be a `T`.
    pub(crate) fn with_as<T: Flow>(
        &mut self,
        id: FlowId,
        tx: &mut dyn GuestTx,
        f: impl FnOnce(&mut T, FlowId, &mut Cx) -> Verdict,
    ) {
        self.with(id, tx, |flow, id, cx| {
            match flow.as_any_mut().downcast_mut::<T>() {
                Some(t) => f(t, id, cx),
                None => Verdict::Keep,
            }
        });
    }

    /// Takes flow `id` out of the table, closes its sockets, counts it and
    /// writes its `flow-close` audit record.
    pub(crate) fn retire(&mut self, id: FlowId) {
        let Some(mut flow) = self.table.remove(id) else {
            return;
        };
        flow.close(&self.stack.poller);
        let info = flow.info(Instant::now());
        let end = flow.end();
        let shared = &self.stack.shared;
        if matches!(end, End::Refused | End::TimedOut) {
            shared.stats.flow_refused(info.proto);
        }
        shared.stats.flow_closed(info.proto);
        log::debug!(
            "{} {} -> {} ended ({}): {} bytes to host, {} to guest",
            info.proto,
            info.guest,
            info.remote,
            end.name(),
            info.bytes_to_host,
            info.bytes_to_guest
        );
        if !flow.service() {
            shared.audit(serde_json::json!({
                "event": "flow-close", "direction": info.direction, "proto": info.proto,
                "guest": info.guest, "remote": info.remote, "host_side": info.host_side,
                "bytes_to_host": info.bytes_to_host, "bytes_to_guest": info.bytes_to_guest,
                "duration_ms": info.age_ms, "end": end.name(),
            }));
        }
    }
}

/// The life of a flow that expires when idle: `timeout` after the last
/// packet either way.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Idle {
    pub last_active: Instant,
    timeout: Duration,
}

impl Idle {
    pub(crate) fn new(now: Instant, timeout: Duration) -> Idle {
        Idle {
            last_active: now,
            timeout,
        }
    }

    pub(crate) fn touch(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// When it expires unless something happens.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some(self.last_active + self.timeout)
    }

    /// What its timer says at `now`.
    pub(crate) fn verdict(&self, now: Instant) -> Verdict {
        if self.last_active + self.timeout <= now {
            Verdict::Done
        } else {
            Verdict::Keep
        }
    }
}

/// Age in milliseconds of something opened at `opened`.
pub(crate) fn age_ms(opened: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(opened).as_millis() as u64
}

/// IPv4 addresses a NAT flow may go to (not loopback, multicast,
/// broadcast, unspecified, or 0.0.0.0/8).
pub(crate) fn is_routable(a: Ipv4Addr) -> bool {
    !(a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_unspecified()
        || a.octets()[0] == 0)
}

/// IPv6 addresses a NAT flow may go to: not loopback, multicast,
/// unspecified or link-local, and not an IPv4 address in IPv6 clothing
/// (v4-mapped `::ffff:0:0/96` or the deprecated v4-compatible `::/96`): a
/// host socket would reach the IPv4 address behind it, past the IPv4
/// egress rules' meaning and the guest's IPv4 view.
pub(crate) fn is_routable6(a: Ipv6Addr) -> bool {
    let v = u128::from(a);
    !(a.is_loopback()
        || a.is_multicast()
        || a.is_unspecified()
        || a.is_unicast_link_local()
        || v >> 32 == 0xffff
        || v >> 32 == 0)
}
