//! Queries the gateway cannot answer itself, forwarded to upstream
//! resolvers over UDP.
//!
//! One flow per guest endpoint, with its own host sockets (one per address
//! family, opened when first needed), so the randomness of the guest's
//! source port carries over to the host side. Each query is tracked until
//! it is answered:
//!
//! - it goes to the first of its resolvers that is not down (see
//!   [`super::upstream`]), and after [`ATTEMPT_TIMEOUT`] without an answer
//!   (or at once on an ICMP error for it) to the next, cycling through the
//!   list, [`MAX_ATTEMPTS`] sends in all; the resolver that let it wait is
//!   marked down;
//! - an answer is accepted from any resolver it was sent to, so a slow one
//!   is not wasted; a SERVFAIL or REFUSED is kept while another resolver
//!   is still untried;
//! - after the last attempt the guest gets the kept answer, or SERVFAIL;
//! - a query the guest repeats while it is still open is not sent again.
//!
//! Replies must come from an address the query went to and match its id
//! and question. A query in flight keeps its resolvers when the upstream
//! list is reloaded; the next query uses the new list.

use std::any::Any;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, Proto};
use airlock_common::ratelimited;
use vmm_sys_util::epoll::EventSet;

use super::{error_reply, is_failure, question_key, Chase, Forward, Rcode, Upstream};
use crate::flows::udp::MAX_DATAGRAM;
use crate::flows::{age_ms, Cx, Flow, FlowKey, Flows, GuestPacket, Idle, OpenError, Verdict};
use crate::phy::GuestTx;
use crate::poller::{FlowId, Poller, Source};
use crate::stats::DropReason;

/// How long one resolver has to answer before the query goes to the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Sends of one query, over all its resolvers.
pub const MAX_ATTEMPTS: usize = 4;
/// Queries one guest endpoint may have open, and the bytes they may hold;
/// more get SERVFAIL.
const MAX_PENDING: usize = 64;
const MAX_PENDING_BYTES: usize = 64 * 1024;
/// Datagrams read per socket and host event.
const READ_BATCH: usize = 64;
/// Bytes of an ICMP error's quoted query read back: enough for the header
/// and the question.
const QUOTE_LEN: usize = 512;

/// One query on its way.
struct Pending {
    id: u16,
    /// Its question (see [`question_key`]).
    key: Vec<u8>,
    /// What goes upstream.
    sent: Vec<u8>,
    chase: Option<Chase>,
    /// Its resolvers, in the order to try them.
    candidates: Vec<Arc<Upstream>>,
    /// The next candidate (modulo their number).
    next: usize,
    attempts: usize,
    /// Every address it went to: answers from any of them count.
    asked: Vec<SocketAddr>,
    /// The resolver of the current attempt.
    waiting_on: Option<Arc<Upstream>>,
    /// When the current attempt ends.
    deadline: Instant,
    /// A SERVFAIL or REFUSED kept while other resolvers are tried.
    fallback: Option<Vec<u8>>,
}

impl Pending {
    /// The guest's own query.
    fn guest_query(&self) -> &[u8] {
        self.chase
            .as_ref()
            .map_or(self.sent.as_slice(), Chase::original)
    }

    /// Bytes it holds.
    fn size(&self) -> usize {
        self.sent.len() + self.chase.as_ref().map_or(0, |c| c.original().len())
    }

    /// Whether `reply` from `from` answers it.
    fn answered_by(&self, id: u16, key: &[u8], from: SocketAddr) -> bool {
        self.id == id && (key.is_empty() || key == self.key) && self.asked.contains(&from)
    }
}

/// The flow's host sockets: unconnected, non-blocking, with IP_RECVERR so
/// an ICMP error for a query can be read back with the query it quotes.
#[derive(Default)]
struct Sockets {
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    /// Not watched until the guest has room again.
    paused: bool,
}

impl Sockets {
    fn for_addr(
        &mut self,
        id: FlowId,
        addr: SocketAddr,
        poller: &Poller,
    ) -> io::Result<&UdpSocket> {
        let (slot, source, any): (&mut Option<Arc<UdpSocket>>, Source, SocketAddr) = match addr {
            SocketAddr::V4(_) => (
                &mut self.v4,
                Source::Host,
                (Ipv4Addr::UNSPECIFIED, 0).into(),
            ),
            SocketAddr::V6(_) => (
                &mut self.v6,
                Source::Upstream,
                (Ipv6Addr::UNSPECIFIED, 0).into(),
            ),
        };
        if slot.is_none() {
            let sock = UdpSocket::bind(any)?;
            sock.set_nonblocking(true)?;
            set_recverr(&sock, addr.is_ipv6())?;
            if !self.paused {
                poller.add(sock.as_raw_fd(), EventSet::IN, id, source)?;
            }
            *slot = Some(Arc::new(sock));
        }
        slot.as_deref()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn all(&self) -> impl Iterator<Item = (&UdpSocket, Source)> + '_ {
        self.v4
            .as_deref()
            .map(|s| (s, Source::Host))
            .into_iter()
            .chain(self.v6.as_deref().map(|s| (s, Source::Upstream)))
    }

    fn pause(&mut self, poller: &Poller) {
        if !self.paused {
            // Removed rather than muted: a pending error would still wake
            // a muted socket.
            for (s, _) in self.all() {
                poller.remove(s.as_raw_fd());
            }
            self.paused = true;
        }
    }

    fn resume(&mut self, id: FlowId, poller: &Poller) {
        if !std::mem::take(&mut self.paused) {
            return;
        }
        for (s, source) in self.all() {
            if let Err(e) = poller.add(s.as_raw_fd(), EventSet::IN, id, source) {
                ratelimited!(log::Level::Warn, "dns: cannot watch a socket again: {e}");
            }
        }
    }

    fn close(&self, poller: &Poller) {
        if !self.paused {
            for (s, _) in self.all() {
                poller.remove(s.as_raw_fd());
            }
        }
    }
}

/// Turns on IP_RECVERR (IPV6_RECVERR): ICMP errors for what the socket
/// sent are queued with the datagram they quote.
fn set_recverr(sock: &UdpSocket, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is an open socket owned by `sock`; the value
    // is a c_int that lives across the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads one entry of the socket's error queue: where the datagram that
/// caused it went, and its start (the query's header and question).
fn read_error_queue(sock: &UdpSocket) -> io::Result<Option<(SocketAddr, Vec<u8>)>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); QUOTE_LEN];
    match socket2::SockRef::from(sock).recv_from_with_flags(&mut buf, libc::MSG_ERRQUEUE) {
        Ok((n, addr)) => {
            let n = n.min(QUOTE_LEN);
            let quoted = buf[..n]
                .iter()
                // SAFETY: recv_from_with_flags initialised the first `n`
                // bytes (at most the buffer's length).
                .map(|b| unsafe { b.assume_init() })
                .collect();
            Ok(addr.as_socket().map(|a| (a, quoted)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) struct DnsForwardFlow {
    guest: SocketAddr,
    /// The gateway's DNS endpoint as the guest addressed it.
    gateway: SocketAddr,
    sockets: Sockets,
    pending: Vec<Pending>,
    idle: Idle,
    opened: Instant,
    bytes_to_host: u64,
    bytes_to_guest: u64,
    /// The resolver asked last (for `GET /flows`).
    last_upstream: Option<SocketAddr>,
}

impl DnsForwardFlow {
    /// A new query from the guest.
    fn query(&mut self, id: FlowId, guest_msg: &[u8], forward: Forward, cx: &mut Cx) {
        self.idle.touch(cx.now);
        let Some((qid, key)) = question_key(&forward.query) else {
            return;
        };
        if self.pending.iter().any(|p| p.id == qid && p.key == key) {
            // The guest repeats a query still on its way: it is being
            // taken care of.
            return;
        }
        let held: usize = self.pending.iter().map(Pending::size).sum();
        let size = forward.query.len() + forward.chase.as_ref().map_or(0, |c| c.original().len());
        if self.pending.len() >= MAX_PENDING || held + size > MAX_PENDING_BYTES {
            ratelimited!(
                log::Level::Info,
                "dns {}: too many queries open ({} holding {held} bytes); answering SERVFAIL",
                self.guest,
                self.pending.len()
            );
            self.reply(
                &error_reply(guest_msg, Rcode::ServFail).unwrap_or_default(),
                cx,
            );
            cx.stack.shared.dns.count_failed();
            return;
        }
        let mut pending = Pending {
            id: qid,
            key,
            sent: forward.query,
            chase: forward.chase,
            candidates: super::in_order(&forward.upstreams, cx.now),
            next: 0,
            attempts: 0,
            asked: Vec::new(),
            waiting_on: None,
            deadline: cx.now,
            fallback: None,
        };
        if self.attempt(id, &mut pending, cx) {
            self.pending.push(pending);
        } else {
            self.give_up(pending, cx);
        }
    }

    /// Sends `p` to its next resolver; false when no attempt is left.
    fn attempt(&mut self, id: FlowId, p: &mut Pending, cx: &mut Cx) -> bool {
        while p.attempts < MAX_ATTEMPTS && !p.candidates.is_empty() {
            let Some(upstream) = p.candidates.get(p.next % p.candidates.len()).cloned() else {
                break;
            };
            p.next += 1;
            p.attempts += 1;
            let sent = self
                .sockets
                .for_addr(id, upstream.addr, &cx.stack.poller)
                .and_then(|s| send_to(s, &p.sent, upstream.addr));
            match sent {
                Ok(()) => {
                    upstream.sent();
                    self.bytes_to_host += p.sent.len() as u64;
                    self.last_upstream = Some(upstream.addr);
                    if !p.asked.contains(&upstream.addr) {
                        p.asked.push(upstream.addr);
                    }
                    p.waiting_on = Some(upstream);
                    p.deadline = cx.now + ATTEMPT_TIMEOUT;
                    return true;
                }
                Err(e) => {
                    log::debug!("dns {} -> {}: {e}", self.guest, upstream.addr);
                    upstream.unreachable(cx.now);
                }
            }
        }
        false
    }

    /// No attempt left: the guest gets the kept answer, or SERVFAIL.
    fn give_up(&mut self, p: Pending, cx: &mut Cx) {
        match &p.fallback {
            Some(answer) => self.deliver(&p.chase, answer, p.guest_query(), cx),
            None => {
                log::debug!("dns {}: no resolver answered; SERVFAIL", self.guest);
                cx.stack.shared.dns.count_failed();
                self.reply(
                    &error_reply(p.guest_query(), Rcode::ServFail).unwrap_or_default(),
                    cx,
                );
            }
        }
    }

    /// Passes an upstream's answer on to the guest.
    fn deliver(&mut self, chase: &Option<Chase>, answer: &[u8], guest_query: &[u8], cx: &mut Cx) {
        let reply = match chase {
            None => Some(answer.to_vec()),
            Some(c) => c.finish(answer),
        };
        let reply = reply.or_else(|| error_reply(guest_query, Rcode::ServFail));
        if let Some(reply) = reply {
            self.reply(&reply, cx);
        }
    }

    fn reply(&mut self, reply: &[u8], cx: &mut Cx) {
        if reply.is_empty() {
            return;
        }
        self.bytes_to_guest += reply.len() as u64;
        cx.send_udp(self.gateway, self.guest, reply, None);
    }

    /// A datagram from `from`.
    fn answer(&mut self, id: FlowId, data: &[u8], from: SocketAddr, cx: &mut Cx) {
        // Matched by id and question, and relayed as it is: the guest's
        // resolver judges the rest.
        let Some((qid, key)) = question_key(data) else {
            return;
        };
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.answered_by(qid, &key, from))
        else {
            // Late (answered already), or not for us.
            log::debug!("dns {}: unexpected datagram from {from}", self.guest);
            return;
        };
        let mut p = self.pending.swap_remove(at);
        if let Some(u) = p.candidates.iter().find(|u| u.addr == from) {
            u.answered();
        }
        let untried = p.candidates.iter().any(|u| !p.asked.contains(&u.addr));
        if is_failure(data) && untried {
            p.fallback = Some(data.to_vec());
            if self.attempt(id, &mut p, cx) {
                self.pending.push(p);
                return;
            }
        }
        self.deliver(&p.chase, data, p.guest_query(), cx);
    }

    /// An ICMP error for the query that starts `quoted`, sent to `to`.
    fn unreachable(&mut self, id: FlowId, to: SocketAddr, quoted: &[u8], cx: &mut Cx) {
        let Some((qid, key)) = question_key(quoted) else {
            return;
        };
        let Some(at) = self.pending.iter().position(|p| {
            p.id == qid && p.key == key && p.waiting_on.as_ref().is_some_and(|u| u.addr == to)
        }) else {
            return;
        };
        let mut p = self.pending.swap_remove(at);
        if let Some(u) = p.waiting_on.take() {
            log::debug!("dns {}: {to} is unreachable", self.guest);
            u.unreachable(cx.now);
        }
        if self.attempt(id, &mut p, cx) {
            self.pending.push(p);
        } else {
            self.give_up(p, cx);
        }
    }

    /// Reads what the sockets have: ICMP errors first, then answers.
    fn read(&mut self, id: FlowId, cx: &mut Cx) {
        let mut buf = std::mem::take(&mut cx.stack.scratch);
        buf.resize(MAX_DATAGRAM, 0);
        let sockets = [self.sockets.v4.clone(), self.sockets.v6.clone()];
        for sock in sockets.iter().flatten() {
            for _ in 0..READ_BATCH {
                match read_error_queue(sock) {
                    Ok(Some((to, quoted))) => self.unreachable(id, to, &quoted, cx),
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("dns {}: error queue: {e}", self.guest);
                        break;
                    }
                }
            }
            for _ in 0..READ_BATCH {
                if !cx.tx.has_room() {
                    self.sockets.pause(&cx.stack.poller);
                    cx.starved = true;
                    break;
                }
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let data = buf.get(..n).unwrap_or_default();
                        self.answer(id, data, from, cx);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error reported again as the socket's error:
                    // its queue entry was read above.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => {
                        log::debug!("dns {}: {e}", self.guest);
                        break;
                    }
                }
            }
        }
        cx.stack.scratch = buf;
    }
}

/// Sends `data` to `to`; a socket error left by an earlier ICMP error is
/// not this send's failure, so it is tried once more.
fn send_to(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> io::Result<()> {
    match sock.send_to(data, to) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            sock.send_to(data, to).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

impl Flow for DnsForwardFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![FlowKey::DnsUdp(self.guest)]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Udp,
            direction: Direction::Outbound,
            guest: self.guest.to_string(),
            remote: self.gateway.to_string(),
            host_side: self
                .last_upstream
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            bytes_to_host: self.bytes_to_host,
            bytes_to_guest: self.bytes_to_guest,
            age_ms: age_ms(self.opened, now),
            service: true,
        }
    }

    /// Queries reach the flow through [`forward`], which knows where they
    /// go.
    fn guest_packet(&mut self, _: FlowId, _: &GuestPacket, _: &mut Cx) -> Verdict {
        Verdict::Keep
    }

    fn host_event(&mut self, id: FlowId, _: Source, _: EventSet, cx: &mut Cx) -> Verdict {
        self.idle.touch(cx.now);
        self.read(id, cx);
        Verdict::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        let idle = self.idle.deadline();
        self.pending.iter().map(|p| p.deadline).chain(idle).min()
    }

    fn timer(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        let now = cx.now;
        let (due, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = waiting;
        for mut p in due {
            if let Some(u) = p.waiting_on.take() {
                log::debug!("dns {}: no answer from {} in time", self.guest, u.addr);
                u.timed_out(now);
            }
            if self.attempt(id, &mut p, cx) {
                self.pending.push(p);
            } else {
                self.give_up(p, cx);
            }
        }
        if self.pending.is_empty() {
            self.idle.verdict(now)
        } else {
            Verdict::Keep
        }
    }

    fn guest_room(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        self.sockets.resume(id, &cx.stack.poller);
        Verdict::Keep
    }

    fn close(&mut self, poller: &Poller) {
        self.sockets.close(poller);
    }

    fn service(&self) -> bool {
        true
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Forwards the guest's query `msg` (from `guest` to the gateway's
/// `gateway` endpoint) as `forward` says.
pub(crate) fn forward(
    flows: &mut Flows,
    guest: SocketAddr,
    gateway: SocketAddr,
    msg: &[u8],
    forward: Forward,
    timeout: Duration,
    tx: &mut dyn GuestTx,
) {
    let id = match flows.table.lookup(&FlowKey::DnsUdp(guest)) {
        Some(id) => id,
        None => {
            let opened = flows.open(tx, |_, cx| {
                Ok(Box::new(DnsForwardFlow {
                    guest,
                    gateway,
                    sockets: Sockets::default(),
                    pending: Vec::new(),
                    idle: Idle::new(cx.now, timeout),
                    opened: cx.now,
                    bytes_to_host: 0,
                    bytes_to_guest: 0,
                    last_upstream: None,
                }))
            });
            match opened {
                Ok(id) => id,
                Err(e) => {
                    if matches!(e, OpenError::Limit) {
                        ratelimited!(
                            log::Level::Warn,
                            "flow limit ({}) reached: refusing udp {guest} -> {gateway}",
                            flows.table.max()
                        );
                        flows.stack.shared.stats.dropped(DropReason::FlowLimit);
                    }
                    flows.stack.shared.stats.flow_refused(Proto::Udp);
                    return;
                }
            }
        }
    };
    flows.with_as::<DnsForwardFlow>(id, tx, |flow, id, cx| {
        flow.query(id, msg, forward, cx);
        Verdict::Keep
    });
}
