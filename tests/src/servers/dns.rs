//! A tiny authoritative DNS server over UDP: the upstream resolver of the
//! gateway's forwarder in tests, so forwarded queries never leave the host
//! and the test can see exactly which names were forwarded.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{Recorder, StopFlag, STOP_POLL};

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
/// A name in the table gets its address for type A and an empty NOERROR
/// answer for other types (so `AAAA` lookups end quickly); any other name
/// gets NXDOMAIN. Names match without regard to case or a trailing dot.
/// Every query is recorded as a [`DnsQuery`].
pub struct DnsResolver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
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
        let thread = thread::Builder::new()
            .name(format!("dns-{}", addr.port()))
            .spawn(move || serve_loop(&socket, &thread_shared))
            .unwrap_or_else(|e| panic!("cannot start the test DNS resolver thread: {e}"));
        DnsResolver {
            addr,
            shared,
            thread: Some(thread),
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
        if let Some(thread) = self.thread.take() {
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
        let query = &buf[..len];
        let reply = match parse_question(query) {
            Some((name, qtype, question_end)) => {
                shared.queries.update(|qs| {
                    qs.push(DnsQuery {
                        name: name.clone(),
                        qtype,
                        peer,
                    })
                });
                let opcode = (query[2] >> 3) & 0x0f;
                if opcode != 0 {
                    error_reply(query, Some(question_end), RCODE_NOTIMP)
                } else {
                    let answer = shared
                        .records
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, ip)| *ip);
                    answer_reply(query, question_end, qtype, answer)
                }
            }
            None if len >= HEADER => error_reply(query, None, RCODE_FORMERR),
            None => continue,
        };
        let _ = socket.send_to(&reply, peer);
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

/// A reply carrying the question and, for an A query of a known name, one
/// A record; NXDOMAIN for an unknown name.
fn answer_reply(
    query: &[u8],
    question_end: usize,
    qtype: u16,
    answer: Option<Ipv4Addr>,
) -> Vec<u8> {
    let Some(ip) = answer else {
        return error_reply(query, Some(question_end), RCODE_NXDOMAIN);
    };
    let mut reply = error_reply(query, Some(question_end), 0);
    if qtype == TYPE_A {
        reply[7] = 1; // ANCOUNT
        reply.extend_from_slice(&[0xc0, HEADER as u8]); // name: pointer to the question
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&TTL.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
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
