//! The far side of a guest's DNS-over-TCP connection to the gateway:
//! [`DnsTcpSession`] answers local names and says what must be forwarded;
//! this bridge sends each forwarded query over TCP to its resolver (one
//! connection per resolver, opened when first needed: names of different
//! zones go to different resolvers) and the answers back, with bounded
//! buffers.
//!
//! A resolver that refuses the connection (or resets it before answering)
//! is marked down and the queries it had go to the next resolver of each;
//! with none left the guest gets SERVFAIL. A resolver that closes an
//! established connection with queries unanswered is asked once more on a
//! new connection. There are no timeouts here: the guest's own (it asked
//! over TCP after a truncated UDP answer) and the flow's limits apply.

use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::tcp::push_frame;
use super::{
    error_reply, question_key, Chase, DnsError, DnsTcpSession, DnsView, Forward, LiveDns, Rcode,
    TcpFramer, Upstream,
};
use crate::host::{self, HostStream, Target};
use crate::poller::{FlowId, Poller, Source};

/// Bytes held for either direction before the guest is slowed down.
const LIMIT: usize = 256 * 1024;
/// Upstream connections one guest connection may have open.
const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("bad DNS message from the guest")]
    Dns(#[from] DnsError),
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::ENOTCONN)
}

/// A forwarded query.
struct TcpQuery {
    id: u16,
    key: Vec<u8>,
    sent: Vec<u8>,
    chase: Option<Chase>,
    /// Its resolvers in the order to try them; each is tried once.
    candidates: Vec<Arc<Upstream>>,
    next: usize,
    /// Asked again after its resolver closed the connection.
    retried: bool,
}

impl TcpQuery {
    fn new(forward: Forward, now: Instant) -> Option<TcpQuery> {
        let (id, key) = question_key(&forward.query)?;
        Some(TcpQuery {
            id,
            key,
            sent: forward.query,
            chase: forward.chase,
            candidates: super::in_order(&forward.upstreams, now),
            next: 0,
            retried: false,
        })
    }

    fn guest_query(&self) -> &[u8] {
        self.chase
            .as_ref()
            .map_or(self.sent.as_slice(), Chase::original)
    }

    fn size(&self) -> usize {
        self.sent.len() + self.chase.as_ref().map_or(0, |c| c.original().len())
    }
}

/// One connection to a resolver.
struct Conn {
    upstream: Arc<Upstream>,
    stream: HostStream,
    connecting: bool,
    /// Bytes went through: the resolver accepted the connection.
    established: bool,
    interest: Option<EventSet>,
    eof: bool,
    /// Framed queries not yet written.
    out: Vec<u8>,
    framer: TcpFramer,
    /// Queries sent (or in `out`) and not answered.
    waiting: Vec<TcpQuery>,
}

impl Conn {
    /// Writes and reads as far as it goes; answers go to `to_guest`.
    fn drive(&mut self, id: FlowId, poller: &Poller, to_guest: &mut Vec<u8>) -> io::Result<bool> {
        let mut progress = false;
        if self.connecting {
            if let Some(e) = self.stream.take_error()? {
                return Err(e);
            }
            // Still in progress shows as a would-block write below.
            self.connecting = false;
        }
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                    self.established = true;
                    progress = true;
                }
                Err(e) if would_block(&e) => {
                    self.connecting = e.raw_os_error() == Some(libc::ENOTCONN);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 16 * 1024];
        while !self.eof && to_guest.len() < LIMIT {
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.established = true;
                    let messages = self
                        .framer
                        .push(buf.get(..n).unwrap_or_default())
                        .map_err(io::Error::other)?;
                    for msg in messages {
                        self.answer(&msg, to_guest);
                    }
                    progress = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.eof && !self.waiting.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut want = EventSet::empty();
        if !self.eof && to_guest.len() < LIMIT {
            want |= EventSet::IN;
        }
        if self.connecting || !self.out.is_empty() {
            want |= EventSet::OUT;
        }
        if self.interest != Some(want) {
            poller.modify(self.stream.as_raw_fd(), want, id, Source::Upstream)?;
            self.interest = Some(want);
        }
        Ok(progress)
    }

    /// One message from the resolver.
    fn answer(&mut self, msg: &[u8], to_guest: &mut Vec<u8>) {
        let Some((id, key)) = question_key(msg) else {
            return;
        };
        let Some(at) = self
            .waiting
            .iter()
            .position(|q| q.id == id && (key.is_empty() || key == q.key))
        else {
            log::debug!("dns/tcp: unexpected answer from {}", self.upstream.addr);
            return;
        };
        let q = self.waiting.swap_remove(at);
        self.upstream.answered();
        let reply = match &q.chase {
            None => Some(msg.to_vec()),
            Some(c) => c.finish(msg),
        };
        if let Some(reply) = reply.or_else(|| error_reply(q.guest_query(), Rcode::ServFail)) {
            let _ = push_frame(to_guest, &reply);
        }
    }

    /// Nothing to write and nothing to wait for.
    fn idle(&self) -> bool {
        self.out.is_empty() && self.waiting.is_empty()
    }
}

pub(crate) struct DnsBridge {
    session: DnsTcpSession,
    /// Queries waiting for a connection to their next resolver.
    queued: Vec<TcpQuery>,
    conns: Vec<Conn>,
    /// Bytes for the guest (answers), drained by the flow.
    pub to_guest: Vec<u8>,
    /// Local answers and queries forwarded, not yet counted.
    local: usize,
    forwarded: usize,
}

impl DnsBridge {
    pub(crate) fn new(view: Arc<DnsView>) -> Self {
        DnsBridge {
            session: DnsTcpSession::new(view),
            queued: Vec::new(),
            conns: Vec::new(),
            to_guest: Vec::new(),
            local: 0,
            forwarded: 0,
        }
    }

    /// Bytes held for queries not answered yet.
    fn held(&self) -> usize {
        self.queued
            .iter()
            .chain(self.conns.iter().flat_map(|c| &c.waiting))
            .map(TcpQuery::size)
            .sum()
    }

    /// Whether the bridge takes more bytes from the guest now.
    pub(crate) fn wants_guest_bytes(&self) -> bool {
        self.to_guest.len() < LIMIT && self.held() < LIMIT
    }

    /// Bytes from the guest, decided with `dns`'s current view.
    pub(crate) fn guest_bytes(&mut self, bytes: &[u8], dns: &LiveDns) -> Result<(), BridgeError> {
        self.session.set_view(dns.view());
        let actions = self.session.from_guest(bytes)?;
        self.to_guest.extend_from_slice(&actions.to_guest);
        self.local += actions.local;
        let now = Instant::now();
        for forward in actions.forward {
            if let Some(q) = TcpQuery::new(forward, now) {
                self.forwarded += 1;
                self.queued.push(q);
            }
        }
        Ok(())
    }

    /// Nothing buffered and no query waiting for an answer.
    pub(crate) fn idle(&self) -> bool {
        self.to_guest.is_empty() && self.queued.is_empty() && self.conns.iter().all(Conn::idle)
    }

    /// Sends queued queries, drives every connection; returns whether
    /// anything moved.
    pub(crate) fn drive(&mut self, id: FlowId, poller: &Poller, dns: &LiveDns) -> bool {
        for _ in 0..std::mem::take(&mut self.local) {
            dns.count_local();
        }
        for _ in 0..std::mem::take(&mut self.forwarded) {
            dns.count_forwarded();
        }
        let now = Instant::now();
        let mut progress = false;
        for q in std::mem::take(&mut self.queued) {
            self.assign(q, id, poller, dns, now);
            progress = true;
        }
        let mut failed = Vec::new();
        let mut at = 0;
        while let Some(conn) = self.conns.get_mut(at) {
            match conn.drive(id, poller, &mut self.to_guest) {
                Ok(p) => {
                    progress |= p;
                    if conn.eof && conn.idle() {
                        poller.remove(conn.stream.as_raw_fd());
                        self.conns.swap_remove(at);
                        continue;
                    }
                    at += 1;
                }
                Err(e) => {
                    let conn = self.conns.swap_remove(at);
                    poller.remove(conn.stream.as_raw_fd());
                    log::debug!("dns/tcp: upstream {}: {e}", conn.upstream.addr);
                    if conn.established {
                        // It closed (or reset) a connection it had accepted.
                        for mut q in conn.waiting {
                            if !q.retried {
                                q.retried = true;
                                q.next = q.next.saturating_sub(1);
                            }
                            failed.push(q);
                        }
                    } else {
                        conn.upstream.unreachable(now);
                        failed.extend(conn.waiting);
                    }
                    progress = true;
                }
            }
        }
        for q in failed {
            self.assign(q, id, poller, dns, now);
        }
        progress
    }

    /// Sends `q` to its next resolver that takes a connection, or answers
    /// SERVFAIL when none is left.
    fn assign(
        &mut self,
        mut q: TcpQuery,
        id: FlowId,
        poller: &Poller,
        dns: &LiveDns,
        now: Instant,
    ) {
        while let Some(upstream) = q.candidates.get(q.next).cloned() {
            q.next += 1;
            let at = match self
                .conns
                .iter()
                .position(|c| Arc::ptr_eq(&c.upstream, &upstream) && !c.eof)
            {
                Some(at) => at,
                None if self.conns.len() >= MAX_CONNECTIONS => continue,
                None => match open(&upstream, id, poller) {
                    Ok(conn) => {
                        self.conns.push(conn);
                        self.conns.len() - 1
                    }
                    Err(e) => {
                        log::debug!("dns/tcp: cannot connect to {}: {e}", upstream.addr);
                        upstream.unreachable(now);
                        continue;
                    }
                },
            };
            let Some(conn) = self.conns.get_mut(at) else {
                break;
            };
            if push_frame(&mut conn.out, &q.sent).is_ok() {
                upstream.sent_tcp();
                conn.waiting.push(q);
                return;
            }
            break;
        }
        log::debug!("dns/tcp: no resolver left for a query; SERVFAIL");
        dns.count_failed();
        if let Some(reply) = error_reply(q.guest_query(), Rcode::ServFail) {
            let _ = push_frame(&mut self.to_guest, &reply);
        }
    }

    pub(crate) fn close(&mut self, poller: &Poller) {
        for conn in self.conns.drain(..) {
            poller.remove(conn.stream.as_raw_fd());
        }
    }
}

/// Starts a connection to `upstream`, watched as the flow's upstream.
fn open(upstream: &Arc<Upstream>, id: FlowId, poller: &Poller) -> io::Result<Conn> {
    let stream = host::connect(&Target::Tcp(upstream.addr))?;
    poller.add(stream.as_raw_fd(), EventSet::OUT, id, Source::Upstream)?;
    Ok(Conn {
        upstream: upstream.clone(),
        stream,
        connecting: true,
        established: false,
        interest: Some(EventSet::OUT),
        eof: false,
        out: Vec::new(),
        framer: TcpFramer::new(),
        waiting: Vec::new(),
    })
}
