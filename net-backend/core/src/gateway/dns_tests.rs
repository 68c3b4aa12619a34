//! The gateway's DNS forwarding against resolvers on 127.0.0.1 that the
//! tests play: failover on silence and on ICMP errors, the down list,
//! SERVFAIL kept while others are tried, reloads, zones, DNS over TCP per
//! zone with failover, and the search list reaching DHCP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::wire::TcpControl;

use super::tests::{
    dns_query, gateway, guest_bytes, handshake, rcode, udp_frame, udp_payloads, Recorder, GW,
};
use super::Gateway;

/// Drives the gateway until `until` holds; panics after `limit`.
fn pump_for(
    gw: &mut Gateway,
    tx: &mut Recorder,
    limit: Duration,
    mut until: impl FnMut(&Recorder) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !until(tx) {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        let mut fds = [gw.host_fd(), gw.timer_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds and a bounded timeout.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        gw.host_events(tx).unwrap();
        gw.timers(tx);
    }
}

const LIMIT: Duration = Duration::from_secs(20);

/// A UDP resolver the test answers by hand.
struct Resolver(UdpSocket);

impl Resolver {
    fn new() -> Resolver {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        Resolver(s)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    /// The next query, and who sent it.
    fn query(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 1500];
        let (n, from) = self
            .0
            .recv_from(&mut buf)
            .expect("no query reached the resolver");
        (buf[..n].to_vec(), from)
    }

    /// Whether a query is waiting (without waiting for one).
    fn has_query(&self) -> bool {
        self.0.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1500];
        let got = self.0.peek_from(&mut buf).is_ok();
        self.0.set_nonblocking(false).unwrap();
        got
    }

    /// Answers `query` with `rcode` (the query itself with QR set);
    /// returns the answer.
    fn answer(&self, query: &[u8], to: SocketAddr, rcode: u8) -> Vec<u8> {
        let mut a = query.to_vec();
        a[2] |= 0x80;
        a[3] = 0x80 | rcode;
        self.0.send_to(&a, to).unwrap();
        a
    }
}

/// A closed UDP port on 127.0.0.1: sends to it get ICMP port unreachable.
fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn upstream_stats(shared: &crate::Shared, addr: SocketAddr) -> airlock_api::DnsUpstreamStats {
    shared
        .dns
        .stats()
        .upstreams
        .into_iter()
        .find(|u| u.address == addr.to_string())
        .unwrap_or_else(|| panic!("no counters for {addr}"))
}

#[test]
fn silence_fails_over_and_the_silent_resolver_is_skipped_next_time() {
    let (r1, r2) = (Resolver::new(), Resolver::new());
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[r1.addr(), r2.addr()], None, "test");
    let mut tx = Recorder::default();
    let q = dns_query(1, "one.test");
    gw.guest_frame(&udp_frame(5001, GW, 53, &q), false, &mut tx);
    assert_eq!(r1.query().0, q, "the first resolver is asked first");
    // r1 stays silent: after its attempt the query goes to r2.
    pump_for(&mut gw, &mut tx, LIMIT, |_| r2.has_query());
    let (got, from) = r2.query();
    assert_eq!(got, q);
    let answer = r2.answer(&got, from, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    assert_eq!(udp_payloads(&tx, 53), [answer]);
    assert_eq!(upstream_stats(&shared, r1.addr()).timeouts, 1);
    assert!(upstream_stats(&shared, r1.addr()).down);

    // The next query goes to r2 first; r1 sees nothing.
    tx.frames.clear();
    let q2 = dns_query(2, "two.test");
    gw.guest_frame(&udp_frame(5002, GW, 53, &q2), false, &mut tx);
    let (got, from) = r2.query();
    assert_eq!(got, q2);
    r2.answer(&got, from, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    assert!(
        !r1.has_query(),
        "a resolver that is down is not asked first"
    );
    let s2 = upstream_stats(&shared, r2.addr());
    assert_eq!((s2.queries, s2.answers, s2.down), (2, 2, false));
}

#[test]
fn an_icmp_error_fails_over_at_once() {
    let dead = closed_port();
    let r2 = Resolver::new();
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[dead, r2.addr()], None, "test");
    let mut tx = Recorder::default();
    let q = dns_query(3, "three.test");
    gw.guest_frame(&udp_frame(5003, GW, 53, &q), false, &mut tx);
    pump_for(&mut gw, &mut tx, LIMIT, |_| r2.has_query());
    let (got, from) = r2.query();
    r2.answer(&got, from, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    // The port unreachable did it, not the attempt's timeout.
    let s = upstream_stats(&shared, dead);
    assert_eq!((s.unreachable, s.timeouts, s.down), (1, 0, true), "{s:?}");
}

#[test]
fn servfail_is_kept_while_another_resolver_is_asked() {
    let (r1, r2) = (Resolver::new(), Resolver::new());
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[r1.addr(), r2.addr()], None, "test");
    let mut tx = Recorder::default();

    // r1 fails, r2 answers: the guest gets r2's answer.
    let q = dns_query(4, "four.test");
    gw.guest_frame(&udp_frame(5004, GW, 53, &q), false, &mut tx);
    let (got, from) = r1.query();
    r1.answer(&got, from, 2);
    pump_for(&mut gw, &mut tx, LIMIT, |_| r2.has_query());
    let (got, from) = r2.query();
    let good = r2.answer(&got, from, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    assert_eq!(udp_payloads(&tx, 53), [good]);

    // Both refuse: the guest gets a refusal once nobody is left.
    tx.frames.clear();
    let q = dns_query(5, "five.test");
    gw.guest_frame(&udp_frame(5005, GW, 53, &q), false, &mut tx);
    let (got, from) = r1.query();
    r1.answer(&got, from, 5);
    pump_for(&mut gw, &mut tx, LIMIT, |_| r2.has_query());
    let (got, from) = r2.query();
    r2.answer(&got, from, 5);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    let replies = udp_payloads(&tx, 53);
    assert_eq!(replies.len(), 1);
    assert_eq!(rcode(&replies[0]), 5);
}

#[test]
fn no_answer_at_all_is_servfail_and_repeats_are_not_resent() {
    let r = Resolver::new();
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[r.addr()], None, "test");
    let mut tx = Recorder::default();
    let q = dns_query(6, "six.test");
    gw.guest_frame(&udp_frame(5006, GW, 53, &q), false, &mut tx);
    // The guest repeats itself while the query is on its way.
    gw.guest_frame(&udp_frame(5006, GW, 53, &q), false, &mut tx);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    let replies = udp_payloads(&tx, 53);
    assert_eq!(rcode(&replies[0]), 2, "SERVFAIL");
    assert_eq!(&replies[0][..2], &q[..2]);
    let s = upstream_stats(&shared, r.addr());
    assert_eq!(
        (s.queries, s.timeouts),
        (4, 4),
        "four attempts, the repeat not sent: {s:?}"
    );
    assert_eq!(shared.dns.stats().failed, 1);
}

#[test]
fn a_reload_moves_new_queries_and_lets_old_ones_finish() {
    let (r1, r2) = (Resolver::new(), Resolver::new());
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[r1.addr()], None, "test");
    let mut tx = Recorder::default();
    let q1 = dns_query(7, "seven.test");
    gw.guest_frame(&udp_frame(5007, GW, 53, &q1), false, &mut tx);
    let (got1, from1) = r1.query();

    assert!(shared.dns_set_upstreams(&[r2.addr()], None, "test"));
    gw.control(&mut tx);
    // Same guest endpoint, next query: the new resolver.
    let q2 = dns_query(8, "eight.test");
    gw.guest_frame(&udp_frame(5007, GW, 53, &q2), false, &mut tx);
    let (got2, from2) = r2.query();
    assert_eq!(got2, q2);
    let a2 = r2.answer(&got2, from2, 0);
    // The first query's answer still comes from the old resolver.
    let a1 = r1.answer(&got1, from1, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| udp_payloads(t, 53).len() == 2);
    let replies = udp_payloads(&tx, 53);
    assert!(replies.contains(&a1) && replies.contains(&a2));
    let stats = shared.dns.stats();
    let in_use = |a: SocketAddr| {
        stats
            .upstreams
            .iter()
            .find(|u| u.address == a.to_string())
            .unwrap()
            .in_use
    };
    assert!(!in_use(r1.addr()) && in_use(r2.addr()));
}

#[test]
fn a_zone_goes_only_to_its_resolver() {
    let (default, corp) = (Resolver::new(), Resolver::new());
    let shared = crate::Shared::new(
        super::tests::GUEST,
        crate::PolicySource::default(),
        crate::services::dns::DnsSettings {
            upstreams: vec![default.addr()],
            zones: vec![crate::services::dns::ZoneSpec {
                name: "corp.test".into(),
                target: crate::services::dns::ZoneTarget::Upstreams(vec![corp.addr()]),
            }],
            ..super::tests::dns_settings()
        },
        None,
    )
    .unwrap();
    let mut gw = Gateway::new(super::tests::config(), shared).unwrap();
    let mut tx = Recorder::default();
    let q = dns_query(9, "a.corp.test");
    gw.guest_frame(&udp_frame(5009, GW, 53, &q), false, &mut tx);
    let (got, from) = corp.query();
    assert_eq!(got, q);
    corp.answer(&got, from, 0);
    pump_for(&mut gw, &mut tx, LIMIT, |t| !udp_payloads(t, 53).is_empty());
    let q = dns_query(10, "corp.test.example");
    gw.guest_frame(&udp_frame(5010, GW, 53, &q), false, &mut tx);
    assert_eq!(default.query().0, q);
    assert!(!corp.has_query());
}

/// Reads one framed query from a resolver's TCP connection.
fn read_framed(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut q).unwrap();
    q
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

#[test]
fn dns_over_tcp_fails_over_and_routes_by_zone() {
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let default = TcpListener::bind("127.0.0.1:0").unwrap();
    let corp = TcpListener::bind("127.0.0.1:0").unwrap();
    let shared = crate::Shared::new(
        super::tests::GUEST,
        crate::PolicySource::default(),
        crate::services::dns::DnsSettings {
            upstreams: vec![refused, default.local_addr().unwrap()],
            zones: vec![crate::services::dns::ZoneSpec {
                name: "corp.test".into(),
                target: crate::services::dns::ZoneTarget::Upstreams(vec![corp
                    .local_addr()
                    .unwrap()]),
            }],
            ..super::tests::dns_settings()
        },
        None,
    )
    .unwrap();
    let mut gw = Gateway::new(super::tests::config(), shared.clone()).unwrap();
    let mut tx = Recorder::default();
    let ack = handshake(&mut gw, &mut tx, 41100, GW, 53);
    let (q1, q2) = (dns_query(11, "www.test"), dns_query(12, "a.corp.test"));
    let mut stream = framed(&q1);
    stream.extend_from_slice(&framed(&q2));
    gw.guest_frame(
        &super::tests::tcp_frame(41100, GW, 53, TcpControl::Psh, 101, Some(ack), &stream),
        false,
        &mut tx,
    );
    // The refused resolver is passed over; the zone's resolver gets its name.
    let mut answers = Vec::new();
    for (listener, query) in [(&corp, &q2), (&default, &q1)] {
        listener.set_nonblocking(true).unwrap();
        let mut conn = None;
        pump_for(&mut gw, &mut tx, LIMIT, |_| {
            conn = listener.accept().ok().map(|(s, _)| s);
            conn.is_some()
        });
        let mut conn = conn.unwrap();
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        let got = read_framed(&mut conn);
        assert_eq!(&got, query);
        let mut a = got.clone();
        a[2] |= 0x80;
        conn.write_all(&framed(&a)).unwrap();
        answers.push((conn, framed(&a)));
    }
    pump_for(&mut gw, &mut tx, LIMIT, |t| {
        let got = guest_bytes(t);
        answers
            .iter()
            .all(|(_, a)| got.windows(a.len()).any(|w| w == &a[..]))
    });
    let s = upstream_stats(&shared, refused);
    assert!(s.unreachable >= 1 && s.down, "{s:?}");
}

#[test]
fn dhcp_hands_out_the_live_search_list() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let discover = {
        let mut m = vec![0u8; 240];
        m[0] = 1; // BOOTREQUEST
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&[1, 2, 3, 4]);
        m[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(&[53, 1, 1, 57, 2, 0x05, 0xdc, 255]);
        m
    };
    let offer_options = |gw: &mut Gateway, tx: &mut Recorder| {
        tx.frames.clear();
        gw.guest_frame(
            &udp_frame(68, Ipv4Addr::BROADCAST, 67, &discover),
            false,
            tx,
        );
        let offer = udp_payloads(tx, 67).pop().expect("no DHCP offer");
        let mut options = Vec::new();
        let mut at = 240;
        while at < offer.len() && offer[at] != 255 {
            if offer[at] == 0 {
                at += 1;
                continue;
            }
            let len = usize::from(offer[at + 1]);
            options.push((offer[at], offer[at + 2..at + 2 + len].to_vec()));
            at += 2 + len;
        }
        options
    };
    let find =
        |o: &[(u8, Vec<u8>)], code| o.iter().find(|(c, _)| *c == code).map(|(_, d)| d.clone());
    let before = offer_options(&mut gw, &mut tx);
    assert_eq!(find(&before, 119), None);
    shared.dns_set_upstreams(
        &[],
        Some(vec!["corp.test".into(), "lab.corp.test".into()]),
        "test",
    );
    gw.control(&mut tx);
    let after = offer_options(&mut gw, &mut tx);
    assert_eq!(find(&after, 15).as_deref(), Some(&b"corp.test"[..]));
    assert_eq!(
        find(&after, 119).as_deref(),
        Some(&b"\x04corp\x04test\x00\x03lab\xc0\x00"[..])
    );
}

#[test]
fn one_guest_endpoint_holds_a_bounded_number_of_queries() {
    let r = Resolver::new();
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[r.addr()], None, "test");
    let mut tx = Recorder::default();
    for id in 0..64u16 {
        gw.guest_frame(
            &udp_frame(5100, GW, 53, &dns_query(id, &format!("n{id}.test"))),
            false,
            &mut tx,
        );
    }
    assert!(udp_payloads(&tx, 53).is_empty(), "64 open queries are fine");
    let q = dns_query(64, "one-too-many.test");
    gw.guest_frame(&udp_frame(5100, GW, 53, &q), false, &mut tx);
    let replies = udp_payloads(&tx, 53);
    assert_eq!(replies.len(), 1);
    assert_eq!((&replies[0][..2], rcode(&replies[0])), (&q[..2], 2));

    // Bytes count too: a huge query leaves no room for the next one.
    tx.frames.clear();
    let mut big = dns_query(1, "big.test");
    big.resize(60_000, 0);
    gw.guest_frame(&udp_frame(5101, GW, 53, &big), false, &mut tx);
    assert!(udp_payloads(&tx, 53).is_empty());
    let mut next = dns_query(2, "next.test");
    next.resize(8_000, 0);
    gw.guest_frame(&udp_frame(5101, GW, 53, &next), false, &mut tx);
    let replies = udp_payloads(&tx, 53);
    assert_eq!(replies.len(), 1);
    assert_eq!((&replies[0][..2], rcode(&replies[0])), (&next[..2], 2));
}
