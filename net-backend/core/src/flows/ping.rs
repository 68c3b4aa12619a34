//! ICMP and ICMPv6 echo to the outside through unprivileged ping sockets
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`, or `AF_INET6` with
//! `IPPROTO_ICMPV6`), one per (guest, echo identifier, destination). The
//! kernel picks the identifier on the wire; replies are rewritten back to
//! the guest's identifier.

use std::any::Any;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, Proto};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr};
use socket2::{Domain, Protocol, Socket, Type};
use vmm_sys_util::epoll::EventSet;

use super::{age_ms, Cx, Flow, FlowKey, GuestPacket, Idle, Verdict};
use crate::poller::{FlowId, Poller, Source};
use crate::stats::DropReason;
use crate::wire;

/// Replies read per host event.
const READ_BATCH: usize = 64;

pub(crate) struct PingFlow {
    pub guest: IpAddr,
    pub ident: u16,
    pub remote: IpAddr,
    sock: Socket,
    idle: Idle,
    opened: Instant,
}

/// Whether the failure to create a ping socket means "not permitted"
/// (`net.ipv4.ping_group_range` excludes us).
pub(crate) fn not_permitted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

impl PingFlow {
    pub(crate) fn open(
        id: FlowId,
        guest: IpAddr,
        ident: u16,
        remote: IpAddr,
        timeout: Duration,
        cx: &Cx,
    ) -> io::Result<PingFlow> {
        let (now, poller) = (cx.now, &cx.stack.poller);
        let (domain, protocol) = match remote {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
        };
        let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(protocol))?;
        sock.set_nonblocking(true)?;
        sock.connect(&SocketAddr::new(remote, 0).into())?;
        poller.add(sock.as_raw_fd(), EventSet::IN, id, Source::Host)?;
        Ok(PingFlow {
            guest,
            ident,
            remote,
            sock,
            idle: Idle::new(now, timeout),
            opened: now,
        })
    }

    /// Sends an echo request: `message` is the ICMP message (header +
    /// data); the kernel sets the identifier and checksum.
    fn send(&mut self, message: &[u8], now: Instant) -> io::Result<()> {
        self.idle.touch(now);
        self.sock.send(message).map(|_| ())
    }

    /// Reads one ICMP message (an echo reply, header included) into `buf`.
    fn recv(&mut self, buf: &mut [u8], now: Instant) -> io::Result<Option<usize>> {
        // SAFETY: `MaybeUninit<u8>` has the same layout as `u8`, and every
        // `u8` is a valid `MaybeUninit<u8>`; recv only writes into it.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match self.sock.recv(uninit) {
            Ok(n) => {
                self.idle.touch(now);
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl PingFlow {
    /// The frame carrying an echo reply the host received (`message`, the
    /// ICMP message) to the guest, with the guest's identifier.
    fn reply_frame(&self, message: &[u8], cx: &Cx) -> Option<Vec<u8>> {
        let caps = ChecksumCapabilities::ignored();
        match (self.guest, self.remote) {
            (IpAddr::V4(guest), IpAddr::V4(remote)) => {
                let parsed =
                    Icmpv4Packet::new_checked(message).and_then(|p| Icmpv4Repr::parse(&p, &caps));
                let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) = parsed else {
                    return None;
                };
                let reply = Icmpv4Repr::EchoReply {
                    ident: self.ident,
                    seq_no,
                    data,
                };
                Some(wire::icmp_frame(cx.route(remote, guest), &reply))
            }
            (IpAddr::V6(guest), IpAddr::V6(remote)) => {
                // The kernel checked the checksum; the pseudo-header it
                // covered named the host's address, not the guest's.
                let packet = Icmpv6Packet::new_checked(message).ok()?;
                let parsed = Icmpv6Repr::parse(&remote, &guest, &packet, &caps);
                let Ok(Icmpv6Repr::EchoReply { seq_no, data, .. }) = parsed else {
                    return None;
                };
                let reply = Icmpv6Repr::EchoReply {
                    ident: self.ident,
                    seq_no,
                    data,
                };
                Some(wire::ipv6::icmp_frame(cx.route(remote, guest), &reply))
            }
            _ => None,
        }
    }
}

impl Flow for PingFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![FlowKey::Ping(self.guest, self.ident, self.remote)]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Icmp,
            direction: Direction::Outbound,
            guest: format!("{} id {}", self.guest, self.ident),
            remote: self.remote.to_string(),
            host_side: self.remote.to_string(),
            bytes_to_host: 0,
            bytes_to_guest: 0,
            age_ms: age_ms(self.opened, now),
            service: false,
        }
    }

    /// An echo request (the ICMP message).
    fn guest_packet(&mut self, _id: FlowId, packet: &GuestPacket, cx: &mut Cx) -> Verdict {
        if let Err(e) = self.send(packet.payload, cx.now) {
            log::debug!("icmp {} -> {}: {e}", self.guest, self.remote);
            cx.dropped(DropReason::HostSendFailed);
        }
        Verdict::Keep
    }

    /// Echo replies, rewritten back to the guest's identifier.
    fn host_event(&mut self, _id: FlowId, _: Source, _: EventSet, cx: &mut Cx) -> Verdict {
        let mut buf = std::mem::take(&mut cx.stack.scratch);
        for _ in 0..READ_BATCH {
            match self.recv(&mut buf, cx.now) {
                Ok(Some(n)) => {
                    if let Some(frame) = self.reply_frame(&buf[..n], cx) {
                        cx.send_frame(&frame);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("icmp {} -> {}: {e}", self.guest, self.remote);
                    break;
                }
            }
        }
        cx.stack.scratch = buf;
        Verdict::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        self.idle.deadline()
    }

    fn timer(&mut self, _id: FlowId, cx: &mut Cx) -> Verdict {
        self.idle.verdict(cx.now)
    }

    fn egress(&self) -> Option<(Proto, SocketAddr)> {
        Some((Proto::Icmp, SocketAddr::new(self.remote, 0)))
    }

    fn close(&mut self, poller: &Poller) {
        poller.remove(self.sock.as_raw_fd());
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
