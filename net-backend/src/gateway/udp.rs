//! UDP NAT: one host socket per (guest endpoint, destination) — a
//! symmetric mapping, so only the destination the guest talked to can
//! answer — with idle expiry. DNS queries the gateway forwards ride the
//! same mechanism, connected to the upstream resolver.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::poller::{FlowId, Poller, Source};

/// Largest datagram a host socket read accepts (the IPv4 maximum).
pub const MAX_DATAGRAM: usize = 65_535;

pub struct UdpFlow {
    /// The guest's endpoint.
    pub guest: SocketAddrV4,
    /// The endpoint the guest addressed; replies appear to come from it.
    pub remote: SocketAddrV4,
    /// Where the host socket is connected.
    pub target: SocketAddr,
    sock: UdpSocket,
    pub last_active: Instant,
    pub opened: Instant,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    /// For forwarded DNS: which upstream this flow uses and when the last
    /// query left without an answer yet.
    pub upstream_index: usize,
    pub unanswered_since: Option<Instant>,
    /// A DNS query the gateway forwards for the guest (its own service:
    /// not subject to the egress policy, not in the audit log).
    pub service: bool,
}

/// What became of a host datagram.
pub enum Received {
    Datagram(usize),
    /// The destination answered with ICMP port unreachable.
    Refused,
    Nothing,
}

impl UdpFlow {
    pub fn open(
        id: FlowId,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        target: SocketAddr,
        now: Instant,
        poller: &Poller,
    ) -> io::Result<UdpFlow> {
        let bind: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        poller.add(sock.as_raw_fd(), EventSet::IN, id, Source::Host)?;
        Ok(UdpFlow {
            guest,
            remote,
            target,
            sock,
            last_active: now,
            opened: now,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            upstream_index: 0,
            unanswered_since: None,
            service: false,
        })
    }

    /// Sends a guest datagram to the target.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> io::Result<()> {
        self.last_active = now;
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
    pub fn recv(&mut self, buf: &mut [u8], now: Instant) -> io::Result<Received> {
        match self.sock.recv(buf) {
            Ok(n) => {
                self.last_active = now;
                self.bytes_to_guest += n as u64;
                Ok(Received::Datagram(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Nothing),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Received::Refused),
            Err(e) => Err(e),
        }
    }

    /// When the flow expires if nothing happens.
    pub fn expiry(&self, timeout: Duration) -> Instant {
        self.last_active + timeout
    }

    /// Moves a forwarded-DNS flow to another upstream resolver.
    pub fn reconnect(&mut self, target: SocketAddr) -> io::Result<()> {
        self.sock.connect(target)?;
        self.target = target;
        Ok(())
    }

    pub fn close(&self, poller: &Poller) {
        poller.remove(self.sock.as_raw_fd());
    }

    /// Stops watching the socket: what the guest has no room for stays in
    /// (and overflows) the kernel's queue instead of being read and dropped
    /// here. Removed rather than muted, since a pending error would still
    /// wake a muted socket.
    pub fn pause(&self, poller: &Poller) {
        poller.remove(self.sock.as_raw_fd());
    }

    /// Watches the socket again after [`UdpFlow::pause`].
    pub fn resume(&self, id: FlowId, poller: &Poller) -> io::Result<()> {
        poller.add(self.sock.as_raw_fd(), EventSet::IN, id, Source::Host)
    }
}
