//! A tiny authoritative DNS server over UDP (and, if asked, TCP): the
//! upstream resolver of the gateway's forwarder in tests, and the resolver
//! of a daemon run in a network namespace, so queries never leave the host
//! and the test can see exactly which names were asked.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{wait_readable, Recorder, StopFlag, STOP_POLL};

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
/// TTL of every answer.
const TTL: u32 = 60;
/// Header length.
const HEADER: usize = 12;

/// A UDP DNS server answering A queries from a fixed table.
///
/// A name in the table gets its addresses (every entry with that name, in
/// table order) for type A and an empty NOERROR answer for other types (so
/// `AAAA` lookups end quickly); any other name gets NXDOMAIN. Names match
/// without regard to case or a trailing dot. Every query is recorded as a
/// [`DnsQuery`].
pub struct DnsResolver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    records: Vec<(String, Ipv4Addr)>,
    queries: Recorder<Vec<DnsQuery>>,
    stop: StopFlag,
}

/// One query the resolver received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The queried name, lower case, without the trailing dot.
    pub name: String,
    /// The query type (1 = A, 28 = AAAA, …).
    pub qtype: u16,
    /// Who asked.
    pub peer: SocketAddr,
    /// Whether it came over TCP.
    pub tcp: bool,
}

impl DnsResolver {
    /// Serves `records` on a fresh `127.0.0.1` UDP port.
    pub fn start(records: &[(&str, Ipv4Addr)]) -> DnsResolver {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind the test DNS resolver to 127.0.0.1: {e}"));
        DnsResolver::serve(socket, records)
    }

    /// Serves `records` on `socket` (e.g. bound inside a network namespace).
    pub fn serve(socket: UdpSocket, records: &[(&str, Ipv4Addr)]) -> DnsResolver {
        DnsResolver::serve_both(socket, None, records)
    }

    /// Serves `records` on `socket` and, over TCP (two-byte length
    /// prefixes, RFC 1035 §4.2.2), on `listener`: a resolver told to use
    /// TCP (`options use-vc`) asks there.
    pub fn serve_with_tcp(
        socket: UdpSocket,
        listener: TcpListener,
        records: &[(&str, Ipv4Addr)],
    ) -> DnsResolver {
        DnsResolver::serve_both(socket, Some(listener), records)
    }

    fn serve_both(
        socket: UdpSocket,
        listener: Option<TcpListener>,
        records: &[(&str, Ipv4Addr)],
    ) -> DnsResolver {
        let addr = socket
            .local_addr()
            .unwrap_or_else(|e| panic!("test DNS resolver: no local address: {e}"));
        socket
            .set_read_timeout(Some(STOP_POLL))
            .unwrap_or_else(|e| panic!("test DNS resolver: cannot set a read timeout: {e}"));
        let shared = Arc::new(Shared {
            records: records
                .iter()
                .map(|(name, ip)| (normalise(name), *ip))
                .collect(),
            queries: Recorder::new(Vec::new()),
            stop: StopFlag::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let mut threads = vec![thread::Builder::new()
            .name(format!("dns-{}", addr.port()))
            .spawn(move || serve_loop(&socket, &thread_shared))
            .unwrap_or_else(|e| panic!("cannot start the test DNS resolver thread: {e}"))];
        if let Some(listener) = listener {
            let thread_shared = Arc::clone(&shared);
            threads.push(
                thread::Builder::new()
                    .name(format!("dns-tcp-{}", addr.port()))
                    .spawn(move || serve_tcp(&listener, &thread_shared))
                    .unwrap_or_else(|e| panic!("cannot start the test DNS resolver thread: {e}")),
            );
        }
        DnsResolver {
            addr,
            shared,
            threads,
        }
    }

    /// The address it answers on (pass it as `--dns-upstream`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query received so far, in order.
    pub fn queries(&self) -> Vec<DnsQuery> {
        self.shared.queries.snapshot()
    }

    /// Waits up to `timeout` for a query for `name` (any type); returns
    /// every query received by then. Panics with the list if none came.
    pub fn wait_for_query(&self, name: &str, timeout: Duration) -> Vec<DnsQuery> {
        let name = normalise(name);
        match self
            .shared
            .queries
            .wait_until(timeout, |qs| qs.iter().any(|q| q.name == name))
        {
            Ok(queries) => queries,
            Err(queries) => panic!(
                "test DNS resolver on {}: no query for {name} within {timeout:?}; got {queries:?}",
                self.addr
            ),
        }
    }
}

impl Drop for DnsResolver {
    fn drop(&mut self) {
        self.shared.stop.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("addr", &self.addr)
            .field("records", &self.shared.records)
            .finish_non_exhaustive()
    }
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve_loop(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0; 1500];
    while !shared.stop.stopped() {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("airlock-e2e: test DNS resolver: receive: {e}");
                return;
            }
        };
        let Some(reply) = reply_to(&buf[..len], peer, false, shared) else {
            continue;
        };
        let _ = socket.send_to(&reply, peer);
    }
}

/// The reply to `query` from `peer`, recorded; `None` for something too
/// short to answer.
fn reply_to(query: &[u8], peer: SocketAddr, tcp: bool, shared: &Shared) -> Option<Vec<u8>> {
    Some(match parse_question(query) {
        Some((name, qtype, question_end)) => {
            shared.queries.update(|qs| {
                qs.push(DnsQuery {
                    name: name.clone(),
                    qtype,
                    peer,
                    tcp,
                })
            });
            let opcode = (query[2] >> 3) & 0x0f;
            if opcode != 0 {
                error_reply(query, Some(question_end), RCODE_NOTIMP)
            } else {
                let answers: Vec<Ipv4Addr> = shared
                    .records
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, ip)| *ip)
                    .collect();
                answer_reply(query, question_end, qtype, &answers)
            }
        }
        None if query.len() >= HEADER => error_reply(query, None, RCODE_FORMERR),
        None => return None,
    })
}

/// Accepts TCP connections until stopped; each is served on its own thread.
fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.stopped() {
        match wait_readable(listener, STOP_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("airlock-e2e: test DNS resolver: poll: {e}");
                return;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("airlock-e2e: test DNS resolver: accept: {e}");
                continue;
            }
        };
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new()
            .name("dns-tcp-conn".into())
            .spawn(move || serve_tcp_connection(stream, peer, &shared));
    }
}

/// Answers length-prefixed queries until the client closes.
fn serve_tcp_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Some(reply) = reply_to(&query, peer, true, shared) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = reply_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// The first question's name, type and the offset where it ends. `None` for
/// anything that is not a query with exactly one well-formed question.
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < HEADER || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = HEADER;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not belong in a query
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let fixed = msg.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    Some((labels.join("."), qtype, at + 4))
}

/// A reply carrying the question and, for an A query of a known name, its
/// A records; NXDOMAIN for an unknown name (no addresses).
fn answer_reply(query: &[u8], question_end: usize, qtype: u16, answers: &[Ipv4Addr]) -> Vec<u8> {
    if answers.is_empty() {
        return error_reply(query, Some(question_end), RCODE_NXDOMAIN);
    }
    let mut reply = error_reply(query, Some(question_end), 0);
    if qtype == TYPE_A {
        // ANCOUNT: the table is the test's own, a handful of entries.
        let count = u16::try_from(answers.len()).unwrap_or(u16::MAX);
        reply[6..8].copy_from_slice(&count.to_be_bytes());
        for ip in answers.iter().take(usize::from(count)) {
            reply.extend_from_slice(&[0xc0, HEADER as u8]); // name: pointer to the question
            reply.extend_from_slice(&TYPE_A.to_be_bytes());
            reply.extend_from_slice(&CLASS_IN.to_be_bytes());
            reply.extend_from_slice(&TTL.to_be_bytes());
            reply.extend_from_slice(&4u16.to_be_bytes());
            reply.extend_from_slice(&ip.octets());
        }
    }
    reply
}

/// A reply with `rcode`, no records, and the question if there is one.
fn error_reply(query: &[u8], question_end: Option<usize>, rcode: u8) -> Vec<u8> {
    let end = question_end.unwrap_or(HEADER);
    let mut reply = query[..end].to_vec();
    // QR, the query's opcode and RD, AA; RA; rcode.
    reply[2] = 0x80 | (query[2] & 0x79) | 0x04;
    reply[3] = 0x80 | rcode;
    let qdcount: u16 = if question_end.is_some() { 1 } else { 0 };
    reply[4..6].copy_from_slice(&qdcount.to_be_bytes());
    reply[6..12].fill(0);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype` with id 0x1234 and RD set.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn ask(resolver: &DnsResolver, q: &[u8]) -> Vec<u8> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(q, resolver.addr()).unwrap();
        let mut buf = [0; 1500];
        let n = s.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn answers_known_names_and_nxdomain_for_others() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let resolver = DnsResolver::start(&[("Forwarded.Test", ip)]);
        let q = query("forwarded.test", TYPE_A);
        let r = ask(&resolver, &q);
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &ip.octets());
        assert_eq!(&r[HEADER..q.len()], &q[HEADER..], "question echoed");

        let r = ask(&resolver, &query("forwarded.test", 28));
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0), "AAAA: NOERROR, no answer");

        let r = ask(&resolver, &query("other.test", TYPE_A));
        assert_eq!(r[3] & 0x0f, RCODE_NXDOMAIN);

        let names: Vec<_> = resolver
            .queries()
            .into_iter()
            .map(|q| (q.name, q.qtype))
            .collect();
        assert_eq!(
            names,
            [
                ("forwarded.test".to_string(), TYPE_A),
                ("forwarded.test".to_string(), 28),
                ("other.test".to_string(), TYPE_A)
            ]
        );
    }

    #[test]
    fn several_addresses_and_tcp() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = listener.local_addr().unwrap();
        let resolver = DnsResolver::serve_with_tcp(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            listener,
            &[("two.test", a), ("other.test", b), ("two.test", b)],
        );
        let r = ask(&resolver, &query("two.test", TYPE_A));
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "two answers");
        assert_eq!(&r[r.len() - 20..r.len() - 16], &a.octets());
        assert_eq!(&r[r.len() - 4..], &b.octets());

        let q = query("other.test", TYPE_A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let mut stream = TcpStream::connect(tcp_addr).unwrap();
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut r).unwrap();
        assert_eq!(&r[r.len() - 4..], &b.octets());
        let last = resolver.queries().pop().unwrap();
        assert_eq!((last.name.as_str(), last.tcp), ("other.test", true));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse_question(&[0; 5]), None);
        let mut q = query("a.test", TYPE_A);
        q.truncate(q.len() - 3);
        assert_eq!(parse_question(&q), None);
        let reply = error_reply(&q, None, RCODE_FORMERR);
        assert_eq!(reply.len(), HEADER);
        assert_eq!(reply[3] & 0x0f, RCODE_FORMERR);
    }
}
