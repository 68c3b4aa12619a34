//! UDP NAT: one host socket per (guest endpoint, destination) — a
//! symmetric mapping, so only the destination the guest talked to can
//! answer — with idle expiry. [`HostUdp`] is the connected host socket and
//! its counters.

use std::any::Any;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, Proto};
use vmm_sys_util::epoll::EventSet;

use super::{age_ms, Cx, Flow, FlowKey, GuestPacket, Idle, Unreachable, Verdict};
use crate::poller::{FlowId, Poller, Source};
use crate::stats::DropReason;

/// Largest datagram a host socket read accepts (the IPv4 maximum).
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// Datagrams read per host event; the rest stays readable for the next
/// round.
const READ_BATCH: usize = 64;

/// What became of a host datagram.
pub(crate) enum Received {
    Datagram(usize),
    /// The destination answered with ICMP port unreachable.
    Refused,
    Nothing,
}

/// A connected, non-blocking host UDP socket with its traffic counters.
pub(crate) struct HostUdp {
    sock: UdpSocket,
    /// Where it is connected.
    pub target: SocketAddr,
    pub idle: Idle,
    pub opened: Instant,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    /// Not watched until the guest has room again (see [`HostUdp::pause`]).
    paused: bool,
}

impl HostUdp {
    /// Opens a socket connected to `target` and watches it as flow `id`.
    pub(crate) fn open(
        id: FlowId,
        target: SocketAddr,
        timeout: Duration,
        cx: &Cx,
    ) -> io::Result<HostUdp> {
        let (now, poller) = (cx.now, &cx.stack.poller);
        let bind: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        poller.add(sock.as_raw_fd(), EventSet::IN, id, Source::Host)?;
        Ok(HostUdp {
            sock,
            target,
            idle: Idle::new(now, timeout),
            opened: now,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            paused: false,
        })
    }

    /// Sends a guest datagram to the target.
    pub(crate) fn send(&mut self, payload: &[u8], now: Instant) -> io::Result<()> {
        self.idle.touch(now);
        match self.sock.send(payload) {
            Ok(_) => {
                self.bytes_to_host += payload.len() as u64;
                Ok(())
            }
            // A refusal reported for an earlier datagram: try once more.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.sock.send(payload).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads one datagram into `buf`.
    pub(crate) fn recv(&mut self, buf: &mut [u8], now: Instant) -> io::Result<Received> {
        match self.sock.recv(buf) {
            Ok(n) => {
                self.idle.touch(now);
                self.bytes_to_guest += n as u64;
                Ok(Received::Datagram(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Nothing),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Received::Refused),
            Err(e) => Err(e),
        }
    }

    /// Reads what the host sent and hands each datagram to the guest as
    /// coming from `remote` to `guest`. With no room in the guest, stops
    /// watching the socket: what the guest has no room for stays in (and
    /// overflows) the kernel's queue instead of being read and dropped
    /// here, until [`HostUdp::resume`].
    pub(crate) fn deliver(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        cx: &mut Cx,
        mut on_datagram: impl FnMut(),
    ) {
        let mut buf = std::mem::take(&mut cx.stack.scratch);
        buf.resize(MAX_DATAGRAM, 0);
        for _ in 0..READ_BATCH {
            if !cx.tx.has_room() {
                // Removed rather than muted: a pending error would still
                // wake a muted socket.
                cx.stack.poller.remove(self.sock.as_raw_fd());
                self.paused = true;
                cx.starved = true;
                break;
            }
            match self.recv(&mut buf, cx.now) {
                Ok(Received::Datagram(n)) => {
                    on_datagram();
                    cx.send_udp(remote, guest, &buf[..n], None);
                }
                Ok(Received::Refused) => cx.unreachable(guest, remote, Unreachable::Port),
                Ok(Received::Nothing) => break,
                Err(e) => {
                    log::debug!("udp {guest} -> {remote}: {e}");
                    break;
                }
            }
        }
        cx.stack.scratch = buf;
    }

    /// Watches the socket again after the guest made room.
    pub(crate) fn resume(&mut self, id: FlowId, poller: &Poller) {
        if !std::mem::take(&mut self.paused) {
            return;
        }
        if let Err(e) = poller.add(self.sock.as_raw_fd(), EventSet::IN, id, Source::Host) {
            airlock_common::ratelimited!(log::Level::Warn, "cannot watch a UDP socket again: {e}");
        }
    }

    pub(crate) fn close(&self, poller: &Poller) {
        poller.remove(self.sock.as_raw_fd());
    }
}

/// A NAT mapping: the guest's datagrams from `guest` to `remote` leave
/// through one host socket connected to `target`.
pub(crate) struct UdpFlow {
    /// The guest's endpoint.
    pub guest: SocketAddr,
    /// The endpoint the guest addressed; replies appear to come from it.
    pub remote: SocketAddr,
    host: HostUdp,
}

impl UdpFlow {
    pub(crate) fn open(
        id: FlowId,
        guest: SocketAddr,
        remote: SocketAddr,
        target: SocketAddr,
        timeout: Duration,
        cx: &Cx,
    ) -> io::Result<UdpFlow> {
        Ok(UdpFlow {
            guest,
            remote,
            host: HostUdp::open(id, target, timeout, cx)?,
        })
    }
}

impl Flow for UdpFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![FlowKey::Udp(self.guest, self.remote)]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Udp,
            direction: Direction::Outbound,
            guest: self.guest.to_string(),
            remote: self.remote.to_string(),
            host_side: self.host.target.to_string(),
            bytes_to_host: self.host.bytes_to_host,
            bytes_to_guest: self.host.bytes_to_guest,
            age_ms: age_ms(self.host.opened, now),
            service: false,
        }
    }

    fn guest_packet(&mut self, _id: FlowId, packet: &GuestPacket, cx: &mut Cx) -> Verdict {
        if let Err(e) = self.host.send(packet.payload, cx.now) {
            log::debug!("udp {} -> {}: {e}", self.guest, self.host.target);
            if e.kind() == io::ErrorKind::ConnectionRefused {
                cx.unreachable(self.guest, self.remote, Unreachable::Port);
            } else {
                cx.dropped(DropReason::HostSendFailed);
            }
        }
        Verdict::Keep
    }

    fn host_event(&mut self, _id: FlowId, _: Source, _: EventSet, cx: &mut Cx) -> Verdict {
        let (guest, remote) = (self.guest, self.remote);
        self.host.deliver(guest, remote, cx, || {});
        Verdict::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        self.host.idle.deadline()
    }

    fn timer(&mut self, _id: FlowId, cx: &mut Cx) -> Verdict {
        self.host.idle.verdict(cx.now)
    }

    fn guest_room(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        self.host.resume(id, &cx.stack.poller);
        Verdict::Keep
    }

    fn egress(&self) -> Option<(Proto, SocketAddr)> {
        Some((Proto::Udp, self.remote))
    }

    fn close(&mut self, poller: &Poller) {
        self.host.close(poller);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
