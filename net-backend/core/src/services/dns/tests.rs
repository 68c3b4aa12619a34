//! Tests for the DNS module: parsing, local answers, error replies, the TCP
//! framer and session, and a no-panic property test.

use super::wire::{be16, be32, read_name};
use super::*;
use std::net::Ipv6Addr;
use std::sync::Arc;

const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 254);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);

/// `dig example.com` (BIND 9.18): RD+AD, EDNS UDP 1232 with a client cookie.
const DIG_A: &[u8] = b"\x8a\x2f\x01\x20\x00\x01\x00\x00\x00\x00\x00\x01\
\x07example\x03com\x00\x00\x01\x00\x01\
\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08\x5b\x1c\x3e\x91\xa7\x02\xcd\x44";

/// glibc getaddrinfo: A then AAAA, RD only, no EDNS.
const GLIBC_A: &[u8] = b"\x4d\x21\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
\x04host\x07airlock\x08internal\x00\x00\x01\x00\x01";
const GLIBC_AAAA: &[u8] = b"\x4d\x22\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
\x04host\x07airlock\x08internal\x00\x00\x1c\x00\x01";

/// busybox nslookup reverse lookup of 192.168.127.254.
const BUSYBOX_PTR: &[u8] = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
\x03254\x03127\x03168\x03192\x07in-addr\x04arpa\x00\x00\x0c\x00\x01";

/// Unbound-style 0x20 randomised case, EDNS 1232 with DO set.
const MIXED_CASE_DO: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\
\x04hOsT\x07AiRlOcK\x08InTeRnAl\x00\x00\x01\x00\x01\
\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00";

/// A view with `records`, the local zone `airlock.internal` and one
/// resolver.
fn view(records: LocalRecords) -> Arc<DnsView> {
    LiveDns::new(DnsSettings {
        upstreams: vec!["127.0.0.1:53".parse().unwrap()],
        zones: vec![ZoneSpec {
            name: "airlock.internal".into(),
            target: ZoneTarget::Local,
        }],
        records,
        ..DnsSettings::default()
    })
    .view()
}

fn records() -> LocalRecords {
    let mut r = LocalRecords::new();
    r.insert("host.airlock.internal", HOST).unwrap();
    r.insert("gateway.airlock.internal", GATEWAY).unwrap();
    r.insert("host.docker.internal.", HOST).unwrap();
    r
}

/// Builds a query: RD set, optional EDNS (udp size, version, DO).
fn query(id: u16, name: &str, qtype: u16, edns: Option<(u16, u8, bool)>) -> Vec<u8> {
    let mut m = Vec::new();
    let ar = u16::from(edns.is_some());
    for v in [id, 0x0100, 1, 0, 0, ar] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some((size, version, dnssec_ok)) = edns {
        m.extend_from_slice(&[0, 0, 41]);
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    m
}

/// A decoded reply (test-only decoder).
#[derive(Debug)]
struct Reply {
    id: u16,
    flags: u16,
    question: Option<(String, u16, u16)>,
    answers: Vec<(String, u16, u32, Vec<u8>)>,
    opt: Option<(u16, u32)>,
}

impl Reply {
    fn rcode(&self) -> u16 {
        self.flags & 0xf
    }
    fn has(&self, bit: u16) -> bool {
        self.flags & bit != 0
    }
}

fn raw_name(labels: &[&[u8]]) -> String {
    labels
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

fn decode(m: &[u8]) -> Reply {
    let h = Header::parse(m).unwrap();
    assert!(h.flags & flag::QR != 0, "not a response");
    assert_eq!(h.nscount, 0);
    let mut pos = HEADER_LEN;
    let mut question = None;
    assert!(h.qdcount <= 1);
    if h.qdcount == 1 {
        let (labels, at) = read_name(m, pos).unwrap();
        question = Some((
            raw_name(&labels),
            be16(m, at).unwrap(),
            be16(m, at + 2).unwrap(),
        ));
        pos = at + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..h.ancount {
        let (labels, at) = read_name(m, pos).unwrap();
        let rtype = be16(m, at).unwrap();
        assert_eq!(be16(m, at + 2), Some(1), "class IN");
        let ttl = be32(m, at + 4).unwrap();
        let len = be16(m, at + 8).unwrap() as usize;
        let rdata = m[at + 10..at + 10 + len].to_vec();
        answers.push((raw_name(&labels), rtype, ttl, rdata));
        pos = at + 10 + len;
    }
    let mut opt = None;
    for _ in 0..h.arcount {
        assert_eq!(m[pos], 0, "OPT owner is root");
        assert_eq!(be16(m, pos + 1), Some(41));
        assert_eq!(be16(m, pos + 9), Some(0), "no OPT options");
        opt = Some((be16(m, pos + 3).unwrap(), be32(m, pos + 5).unwrap()));
        pos += 11;
    }
    assert_eq!(pos, m.len(), "trailing bytes in reply");
    Reply {
        id: h.id,
        flags: h.flags,
        question,
        answers,
        opt,
    }
}

fn answer(msg: &[u8], r: &LocalRecords) -> Reply {
    match answer_local(msg, r).unwrap() {
        LocalOutcome::Answer(reply) => decode(&reply),
        LocalOutcome::Forward => panic!("forwarded"),
    }
}

// ---- parse_query -------------------------------------------------------

#[test]
fn parses_real_queries() {
    let q = parse_query(DIG_A).unwrap();
    assert_eq!(
        q,
        Query {
            id: 0x8a2f,
            name: "example.com".into(),
            qtype: 1,
            qclass: 1,
            recursion_desired: true
        }
    );
    let q = parse_query(GLIBC_AAAA).unwrap();
    assert_eq!(
        (q.id, q.name.as_str(), q.qtype),
        (0x4d22, "host.airlock.internal", 28)
    );
    let q = parse_query(BUSYBOX_PTR).unwrap();
    assert_eq!(
        (q.name.as_str(), q.qtype),
        ("254.127.168.192.in-addr.arpa", 12)
    );
    let q = parse_query(MIXED_CASE_DO).unwrap();
    assert_eq!(q.name, "host.airlock.internal");
    // The root (dig . NS) and a no-RD query.
    let mut root = query(1, "", 2, None);
    root[2] = 0;
    let q = parse_query(&root).unwrap();
    assert_eq!((q.name.as_str(), q.recursion_desired), ("", false));
}

#[test]
fn odd_label_bytes_are_escaped() {
    // One label "host.airlock" must not turn into two labels.
    let mut m = query(1, "x", 1, None);
    m.truncate(HEADER_LEN);
    m.extend_from_slice(b"\x0chost.airlock\x08internal\x00\x00\x01\x00\x01");
    assert_eq!(parse_query(&m).unwrap().name, "host\\.airlock.internal");
    assert_eq!(answer_local(&m, &records()), Ok(LocalOutcome::Forward));
    let mut m = query(1, "x", 1, None);
    m.truncate(HEADER_LEN);
    m.extend_from_slice(b"\x04a b\xff\x02\\Z\x00\x00\x01\x00\x01");
    assert_eq!(parse_query(&m).unwrap().name, "a\\032b\\255.\\\\z");
}

#[test]
fn rejects_non_queries() {
    let mut m = GLIBC_A.to_vec();
    m[2] |= 0x80;
    assert_eq!(parse_query(&m), Err(DnsError::NotAQuery));
    let mut m = GLIBC_A.to_vec();
    m[2] = 0x28; // opcode 5, UPDATE
    assert_eq!(parse_query(&m), Err(DnsError::UnsupportedOpcode(5)));
    for qd in [0u16, 2] {
        let mut m = GLIBC_A.to_vec();
        m[4..6].copy_from_slice(&qd.to_be_bytes());
        assert_eq!(parse_query(&m), Err(DnsError::QuestionCount(qd)));
    }
}

#[test]
fn truncated_messages_are_rejected() {
    for msg in [DIG_A, GLIBC_A, BUSYBOX_PTR] {
        let question_end = HEADER_LEN + read_name(msg, HEADER_LEN).unwrap().1 - HEADER_LEN + 4;
        for len in 0..question_end {
            assert_eq!(
                parse_query(&msg[..len]),
                Err(DnsError::Truncated),
                "len {len}"
            );
        }
    }
    // dig's query cut inside the OPT: the question parses, the message not.
    assert!(parse_query(&DIG_A[..DIG_A.len() - 3]).is_ok());
    assert_eq!(
        answer_local(&DIG_A[..DIG_A.len() - 3], &records()),
        Err(DnsError::Truncated)
    );
}

#[test]
fn compression_pointers() {
    let base = || {
        let mut m = GLIBC_A[..HEADER_LEN].to_vec();
        m[11] = 1; // one additional record
        m.extend_from_slice(b"\x04host\x07airlock\x08internal\x00\x00\x01\x00\x01");
        m
    };
    // A pointer to itself, forward, and into the header.
    for (ptr, target) in [(b"\xc0\x0c", 12), (b"\xc0\x20", 32), (b"\xc0\x02", 2)] {
        let mut m = GLIBC_A[..HEADER_LEN].to_vec();
        m.extend_from_slice(ptr);
        m.extend_from_slice(&[0; 40]);
        assert_eq!(parse_query(&m), Err(DnsError::BadPointer(target)));
    }
    // A two-pointer loop: 12 → "a" + ptr 16, 16 → ptr 12 (forward first).
    let mut m = GLIBC_A[..HEADER_LEN].to_vec();
    m.extend_from_slice(b"\x01a\xc0\x10\xc0\x0c\x00\x01\x00\x01");
    assert_eq!(parse_query(&m), Err(DnsError::BadPointer(16)));

    // Valid backward pointers in the additional section: an A record owned
    // by the question name, then an owner "x" + pointer to the question.
    let mut m = base();
    m[11] = 2;
    m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04");
    let second = m.len();
    m.extend_from_slice(b"\x01x\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04");
    assert!(matches!(
        answer_local(&m, &records()),
        Ok(LocalOutcome::Answer(_))
    ));
    // ... and a loop among additional owners: second owner points to itself.
    let mut looped = m.clone();
    looped[second + 3] = second as u8;
    assert_eq!(
        answer_local(&looped, &records()),
        Err(DnsError::BadPointer(second))
    );
    // ... or to a later pointer that points back.
    let mut chain = base();
    let at = chain.len();
    chain.extend_from_slice(&[0xc0, (at + 2) as u8, 0xc0, at as u8]);
    chain.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        answer_local(&chain, &records()),
        Err(DnsError::BadPointer(at + 2))
    );
}

#[test]
fn label_and_name_limits() {
    let l63 = "a".repeat(63);
    let l61 = "b".repeat(61);
    // Exactly 255 bytes in wire form: accepted.
    let name = format!("{l63}.{l63}.{l63}.{l61}");
    assert_eq!(parse_query(&query(1, &name, 1, None)).unwrap().name, name);
    // 257 bytes: rejected.
    let name = format!("{l63}.{l63}.{l63}.{l61}xx");
    assert_eq!(
        parse_query(&query(1, &name, 1, None)),
        Err(DnsError::NameTooLong)
    );
    // A 64-byte "label" has type bits 01: extended label, rejected.
    let long = "c".repeat(64);
    let m = query(1, &format!("{long}.com"), 1, None);
    assert_eq!(parse_query(&m), Err(DnsError::BadLabelType(0x40)));
    let mut m = query(1, "x.com", 1, None);
    m[HEADER_LEN] = 0x80;
    assert_eq!(parse_query(&m), Err(DnsError::BadLabelType(0x80)));
}

// ---- answer_local ------------------------------------------------------

#[test]
fn local_a_answer() {
    let r = answer(GLIBC_A, &records());
    assert_eq!(r.id, 0x4d21);
    assert!(r.has(flag::AA) && r.has(flag::RD) && r.has(flag::RA));
    assert!(!r.has(flag::TC));
    assert_eq!(r.rcode(), 0);
    assert_eq!(r.question, Some(("host.airlock.internal".into(), 1, 1)));
    assert_eq!(
        r.answers,
        vec![(
            "host.airlock.internal".into(),
            1,
            60,
            vec![192, 168, 127, 254]
        )]
    );
    assert_eq!(r.opt, None, "no OPT without one in the query");
}

#[test]
fn nodata_for_other_types_of_local_names() {
    for qtype in [28u16, 15, 16, 33, 65] {
        let mut m = GLIBC_AAAA.to_vec();
        let end = m.len();
        m[end - 4..end - 2].copy_from_slice(&qtype.to_be_bytes());
        let r = answer(&m, &records());
        assert_eq!(r.rcode(), 0, "NOERROR");
        assert!(r.has(flag::AA));
        assert!(r.answers.is_empty(), "NODATA for type {qtype}");
        assert_eq!(r.question, Some(("host.airlock.internal".into(), qtype, 1)));
    }
}

#[test]
fn ptr_for_local_address() {
    let r = answer(BUSYBOX_PTR, &records());
    assert_eq!(
        r.question,
        Some(("254.127.168.192.in-addr.arpa".into(), 12, 1))
    );
    let names: Vec<_> = r.answers.iter().map(|a| a.3.clone()).collect();
    assert_eq!(
        names,
        vec![
            b"\x04host\x07airlock\x08internal\x00".to_vec(),
            b"\x04host\x06docker\x08internal\x00".to_vec()
        ],
        "every name, insertion order"
    );
    assert!(r.answers.iter().all(|a| a.1 == 12 && a.2 == 60));
    let q = query(9, "1.127.168.192.IN-ADDR.ARPA.", 12, None);
    assert_eq!(answer(&q, &records()).answers.len(), 1);
    // Not local, not canonical, not PTR, or not a full address: forwarded.
    for (name, qtype) in [
        ("2.127.168.192.in-addr.arpa", 12),
        ("254.127.168.0192.in-addr.arpa", 12),
        ("01.127.168.192.in-addr.arpa", 12),
        ("254.127.168.192.in-addr.arpa", 1),
        ("127.168.192.in-addr.arpa", 12),
        ("1.254.127.168.192.in-addr.arpa", 12),
        ("254.127.168.192.1.in-addr.arpa", 12),
        ("host.airlock.internal.in-addr.arpa", 12),
    ] {
        let q = query(9, name, qtype, None);
        assert_eq!(
            answer_local(&q, &records()),
            Ok(LocalOutcome::Forward),
            "{name}"
        );
    }
}

#[test]
fn case_insensitive_and_0x20_echo() {
    let r = answer(MIXED_CASE_DO, &records());
    // The question is echoed byte for byte: 0x20 resolvers check the case.
    assert_eq!(r.question, Some(("hOsT.AiRlOcK.InTeRnAl".into(), 1, 1)));
    assert_eq!(r.answers[0].3, vec![192, 168, 127, 254]);
    let mut recs = LocalRecords::new();
    recs.insert("MiXeD.Example.", GATEWAY).unwrap();
    assert_eq!(recs.lookup("mixed.example"), Some(GATEWAY));
    assert_eq!(recs.lookup("MIXED.EXAMPLE."), Some(GATEWAY));
    assert_eq!(
        recs.iter()
            .map(|r| (r.name.as_str(), r.data.clone()))
            .collect::<Vec<_>>(),
        vec![("mixed.example", RecordData::A(GATEWAY))]
    );
    let q = query(3, "MIXED.example", 1, None);
    assert_eq!(answer(&q, &recs).answers.len(), 1);
}

#[test]
fn other_names_and_classes_are_forwarded() {
    let r = records();
    assert_eq!(answer_local(DIG_A, &r), Ok(LocalOutcome::Forward));
    for name in [
        "airlock.internal",
        "x.host.airlock.internal",
        "host.airlock.internal.evil",
    ] {
        assert_eq!(
            answer_local(&query(1, name, 1, None), &r),
            Ok(LocalOutcome::Forward)
        );
    }
    let mut chaos = GLIBC_A.to_vec();
    let end = chaos.len();
    chaos[end - 1] = 3; // class CH
    assert_eq!(answer_local(&chaos, &r), Ok(LocalOutcome::Forward));
    let mut any = GLIBC_A.to_vec();
    any[end - 1] = 255; // class ANY
    assert_eq!(answer(&any, &r).answers.len(), 1);
}

#[test]
fn edns_is_answered_with_our_own_opt() {
    // dig: cookie option in the query, not echoed; payload 1232; no DO.
    let mut dig = DIG_A.to_vec();
    dig[HEADER_LEN..HEADER_LEN + 12].copy_from_slice(b"\x07gateway\x03xyz");
    let mut r = records();
    r.insert("gateway.xyz", GATEWAY).unwrap();
    let reply = answer(&dig, &r);
    assert_eq!(reply.opt, Some((1232, 0)));
    assert!(!reply.has(0x0020), "AD is never set");
    assert_eq!(reply.answers.len(), 1);
    // DO copied.
    assert_eq!(
        answer(MIXED_CASE_DO, &records()).opt,
        Some((1232, 0x0000_8000))
    );
    // EDNS version 1: BADVERS (extended rcode 16 = upper bits 1).
    let q = query(5, "host.airlock.internal", 1, Some((4096, 1, false)));
    let reply = answer(&q, &records());
    assert_eq!(reply.rcode(), 0);
    assert_eq!(reply.opt, Some((1232, 0x0100_0000)));
    assert!(reply.answers.is_empty());
}

#[test]
fn bad_opt_records() {
    let mut two = query(5, "host.airlock.internal", 1, Some((1232, 0, false)));
    two[11] = 2;
    two.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    assert_eq!(answer_local(&two, &records()), Err(DnsError::DuplicateOpt));
    assert_eq!(DnsError::DuplicateOpt.reply_rcode(), Some(Rcode::FormErr));
    let mut named = query(5, "host.airlock.internal", 1, None);
    named[11] = 1;
    named.extend_from_slice(&[1, b'x', 0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    assert_eq!(answer_local(&named, &records()), Err(DnsError::BadOpt));
}

#[test]
fn oversize_udp_answer_sets_tc() {
    let mut r = LocalRecords::new();
    for i in 0..12 {
        r.insert(&format!("{}{i}.example.internal", "n".repeat(40)), HOST)
            .unwrap();
    }
    let q = query(7, "254.127.168.192.in-addr.arpa", 12, None);
    let LocalOutcome::Answer(udp) = answer_local(&q, &r).unwrap() else {
        panic!()
    };
    assert!(udp.len() <= 512);
    let reply = decode(&udp);
    assert!(reply.has(flag::TC));
    assert!(reply.answers.is_empty());
    // A larger EDNS buffer fits them all; so does TCP.
    let q = query(
        7,
        "254.127.168.192.in-addr.arpa",
        12,
        Some((4096, 0, false)),
    );
    assert_eq!(answer(&q, &r).answers.len(), 12);
    let q = query(7, "254.127.168.192.in-addr.arpa", 12, None);
    let Plan::Answer(tcp) = plan(&q, &view(r), Some(TCP_LIMIT)).unwrap() else {
        panic!()
    };
    assert_eq!(decode(&tcp).answers.len(), 12);
}

// ---- AAAA, CNAME, wildcards ----------------------------------------------

/// A reply with every section: (owner, type, data) per answer and
/// authority record, names in data uncompressed as [`chase::read_record`]
/// gives them.
struct Full {
    header: Header,
    question: String,
    answers: Vec<(String, u16, Vec<u8>)>,
    authority: Vec<(String, u16, Vec<u8>)>,
    opt: bool,
}

fn decode_full(m: &[u8]) -> Full {
    let header = Header::parse(m).unwrap();
    let (labels, at) = read_name(m, HEADER_LEN).unwrap();
    let question = raw_name(&labels);
    let mut pos = at + 4;
    let section = |n: u16, pos: &mut usize| {
        (0..n)
            .map(|_| {
                let (labels, _) = read_name(m, *pos).unwrap();
                let (record, next) = chase::read_record(m, *pos).unwrap();
                *pos = next;
                (raw_name(&labels), record.rtype, record.rdata)
            })
            .collect::<Vec<_>>()
    };
    let answers = section(header.ancount, &mut pos);
    let authority = section(header.nscount, &mut pos);
    let opt = header.arcount == 1 && be16(m, pos + 1) == Some(41);
    Full {
        header,
        question,
        answers,
        authority,
        opt,
    }
}

fn wire_name(name: &str) -> Vec<u8> {
    name_wire(name)
}

fn typed_records() -> LocalRecords {
    let mut r = LocalRecords::new();
    for (name, value) in [
        ("v6.test", "fd00::1"),
        ("both.test", "10.0.0.2"),
        ("both.test", "fd00::2"),
        ("alias.test", "both.test"),
        ("loop1.test", "loop2.test"),
        ("loop2.test", "loop1.test"),
        ("*.apps.test", "10.0.0.9"),
        ("x.apps.test", "10.0.0.10"),
        ("out.test", "www.corp.test"),
        ("gone.test", "missing.airlock.internal"),
    ] {
        r.add(
            name,
            RecordData::parse(value).unwrap(),
            RecordSource::Config,
        )
        .unwrap();
    }
    r
}

fn local(msg: &[u8], r: &LocalRecords) -> Full {
    match answer_local(msg, r).unwrap() {
        LocalOutcome::Answer(reply) => decode_full(&reply),
        LocalOutcome::Forward => panic!("forwarded"),
    }
}

#[test]
fn aaaa_cname_and_wildcard_answers() {
    let r = typed_records();
    let v6: Ipv6Addr = "fd00::1".parse().unwrap();
    let a = local(&query(1, "v6.test", 28, None), &r);
    assert_eq!(a.answers, [("v6.test".into(), 28, v6.octets().to_vec())]);
    assert!(
        local(&query(2, "v6.test", 1, None), &r).answers.is_empty(),
        "NODATA"
    );
    let any = local(&query(3, "both.test", 255, None), &r);
    assert_eq!(any.answers.iter().map(|a| a.1).collect::<Vec<_>>(), [1, 28]);

    // A CNAME, then what its target holds, owned by the target.
    let c = local(&query(4, "Alias.Test", 1, None), &r);
    assert!(c.header.flags & flag::AA != 0);
    assert_eq!(
        c.answers,
        [
            ("Alias.Test".into(), 5, wire_name("both.test")),
            ("both.test".into(), 1, vec![10, 0, 0, 2]),
        ]
    );
    let c = local(&query(5, "alias.test", 28, None), &r);
    assert_eq!(c.answers[1].1, 28);
    assert_eq!(local(&query(6, "alias.test", 5, None), &r).answers.len(), 1);

    // A loop ends: each name once.
    let l = local(&query(7, "loop1.test", 1, None), &r);
    assert_eq!(
        l.answers.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["loop1.test", "loop2.test"]
    );

    // Wildcards answer below their zone, not for it, and yield to a
    // name's own records.
    for name in ["y.apps.test", "deep.y.apps.test"] {
        let w = local(&query(8, name, 1, None), &r);
        assert_eq!(w.answers, [(name.into(), 1, vec![10, 0, 0, 9])]);
    }
    assert_eq!(
        local(&query(9, "x.apps.test", 1, None), &r).answers[0].2,
        [10, 0, 0, 10]
    );
    assert_eq!(
        answer_local(&query(10, "apps.test", 1, None), &r),
        Ok(LocalOutcome::Forward)
    );

    // PTR for an IPv6 address: every name, no wildcard.
    let rev: String = v6
        .octets()
        .iter()
        .rev()
        .map(|b| format!("{:x}.{:x}.", b & 0xf, b >> 4))
        .collect::<String>()
        + "ip6.arpa";
    let p = local(&query(11, &rev, 12, None), &r);
    assert_eq!(p.answers, [(rev.clone(), 12, wire_name("v6.test"))]);
    assert_eq!(reverse_v6(&rev[2..]), None, "31 nibbles");
    assert_eq!(reverse_v6(&format!("0.{rev}")), None, "33 nibbles");

    // A CNAME to a name the records do not have: not answered here.
    assert_eq!(
        answer_local(&query(12, "out.test", 1, None), &r),
        Ok(LocalOutcome::Forward)
    );
}

/// A view: `records`, the local zone `airlock.internal`, `corp.test` to
/// 10.0.0.53, and the resolver 127.0.0.1 for the rest.
fn zoned(records: LocalRecords) -> Arc<DnsView> {
    LiveDns::new(DnsSettings {
        upstreams: vec!["127.0.0.1:53".parse().unwrap()],
        zones: vec![
            ZoneSpec {
                name: "airlock.internal".into(),
                target: ZoneTarget::Local,
            },
            ZoneSpec {
                name: "corp.test".into(),
                target: ZoneTarget::Upstreams(vec!["10.0.0.53:53".parse().unwrap()]),
            },
        ],
        records,
        ..DnsSettings::default()
    })
    .view()
}

fn forwarded_to(p: &Plan) -> Vec<String> {
    match p {
        Plan::Forward(f) => f.upstreams.iter().map(|u| u.addr.to_string()).collect(),
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn plan_routes_by_zone() {
    let v = zoned(records());
    let q = query(1, "a.corp.test", 1, None);
    let p = plan(&q, &v, None).unwrap();
    assert_eq!(forwarded_to(&p), ["10.0.0.53:53"]);
    let Plan::Forward(f) = p else { unreachable!() };
    assert_eq!((f.query, f.chase.is_none()), (q, true), "unchanged");
    let p = plan(&query(2, "other.test", 1, None), &v, None).unwrap();
    assert_eq!(forwarded_to(&p), ["127.0.0.1:53"]);
    let Plan::NxDomain(nx) = plan(&query(3, "nope.airlock.internal", 1, None), &v, None).unwrap()
    else {
        panic!()
    };
    assert_eq!(decode(&nx).rcode(), 3);
    let Plan::Answer(ok) = plan(GLIBC_A, &v, None).unwrap() else {
        panic!()
    };
    assert_eq!(decode(&ok).answers.len(), 1);
    let none = LiveDns::new(DnsSettings::default()).view();
    let Plan::NoUpstream(fail) = plan(DIG_A, &none, None).unwrap() else {
        panic!()
    };
    assert_eq!(decode(&fail).rcode(), 2);
    assert!(plan(&GLIBC_A[..20], &v, None).is_err());
}

/// An upstream's answer for www.corp.test, compressed as servers do:
/// www.corp.test CNAME lb.corp.test, lb.corp.test A 10.1.1.1, and a SOA
/// for corp.test in the authority section.
fn corp_answer(id: u16, flags: u16) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, 1, 2, 1, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(b"\x03www\x04corp\x04test\x00\x00\x01\x00\x01"); // 12..31
                                                                         // www.corp.test CNAME lb + pointer to "corp.test" (offset 16).
    m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c\x00\x05\x02lb\xc0\x10");
    // lb.corp.test (offset 43) A 10.1.1.1.
    m.extend_from_slice(b"\xc0\x2b\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x01\x01\x01");
    // corp.test SOA ns.corp.test admin.corp.test + 20 bytes.
    m.extend_from_slice(
        b"\xc0\x10\x00\x06\x00\x01\x00\x00\x00\x3c\x00\x21\x02ns\xc0\x10\x05admin\xc0\x10",
    );
    m.extend_from_slice(&[0; 20]);
    m
}

#[test]
fn cname_to_an_outside_name_is_chased_upstream() {
    let v = zoned(typed_records());
    let q = query(0x1234, "Out.Test", 1, Some((4096, 0, true)));
    let Plan::Forward(f) = plan(&q, &v, None).unwrap() else {
        panic!("not forwarded")
    };
    assert_eq!(
        f.upstreams
            .iter()
            .map(|u| u.addr.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.53:53"],
        "the target's zone decides"
    );
    // The query upstream: same id, RD, the target's name, our OPT with DO.
    let sent = Header::parse(&f.query).unwrap();
    assert_eq!(
        (sent.id, sent.flags, sent.qdcount, sent.arcount),
        (0x1234, 0x0100, 1, 1)
    );
    assert_eq!(parse_query(&f.query).unwrap().name, "www.corp.test");
    assert_eq!(
        &f.query[f.query.len() - 11..],
        b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
    );
    let chase = f.chase.unwrap();
    assert_eq!(chase.original(), &q[..]);

    let reply = decode_full(&chase.finish(&corp_answer(0x1234, 0x8180)).unwrap());
    assert_eq!(reply.header.id, 0x1234);
    assert_eq!(reply.header.flags & 0x000f, 0);
    assert!(reply.header.flags & flag::AA == 0, "not all ours");
    assert_eq!(reply.question, "Out.Test", "the guest's question, its case");
    assert_eq!(
        reply.answers,
        [
            ("Out.Test".into(), 5, wire_name("www.corp.test")),
            ("www.corp.test".into(), 5, wire_name("lb.corp.test")),
            ("lb.corp.test".into(), 1, vec![10, 1, 1, 1]),
        ]
    );
    let mut soa = wire_name("ns.corp.test");
    soa.extend_from_slice(&wire_name("admin.corp.test"));
    soa.extend_from_slice(&[0; 20]);
    assert_eq!(reply.authority, [("corp.test".into(), 6, soa)]);
    assert!(reply.opt);

    // NXDOMAIN and TC come through; a malformed answer is no answer.
    let nx = decode_full(&chase.finish(&corp_answer(0x1234, 0x8183)).unwrap());
    assert_eq!(nx.header.flags & 0x000f, 3);
    let tc = Header::parse(&chase.finish(&corp_answer(0x1234, 0x8380)).unwrap()).unwrap();
    assert!(tc.flags & flag::TC != 0);
    let mut bad = corp_answer(0x1234, 0x8180);
    bad[47] = 0x40; // a pointer forwards, into the A record
    assert_eq!(chase.finish(&bad), None);
    assert_eq!(chase.finish(&bad[..40]), None);
    assert_eq!(chase.finish(&f.query), None, "a query is not an answer");

    // Too big for the guest's 512 bytes: TC, no records.
    let small = query(0x1235, "out.test", 1, None);
    let Plan::Forward(f) = plan(&small, &v, None).unwrap() else {
        panic!()
    };
    let mut big = corp_answer(0x1235, 0x8180);
    big[7] = 3;
    let at = 31 + 17 + 16;
    let mut txt = b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c\x01\x90".to_vec();
    txt.extend_from_slice(&[0x20; 400]);
    big.splice(at..at, txt);
    let reply = Header::parse(&f.chase.unwrap().finish(&big).unwrap()).unwrap();
    assert!(reply.flags & flag::TC != 0);
    assert_eq!((reply.ancount, reply.nscount), (0, 0));
}

#[test]
fn cname_into_a_local_zone_without_the_name_is_nxdomain() {
    let v = zoned(typed_records());
    let Plan::NxDomain(reply) = plan(&query(1, "gone.test", 1, None), &v, None).unwrap() else {
        panic!()
    };
    let r = decode_full(&reply);
    assert_eq!(r.header.flags & 0x000f, 3);
    assert_eq!(
        r.answers,
        [("gone.test".into(), 5, wire_name("missing.airlock.internal"))]
    );
}

#[test]
fn search_lists_for_dhcpv6_and_ra_are_uncompressed() {
    let names = vec![
        "corp.test".to_owned(),
        "lab.corp.test".into(),
        "bad..name".into(),
    ];
    assert_eq!(
        encode_names(&names),
        b"\x04corp\x04test\x00\x03lab\x04corp\x04test\x00".to_vec()
    );
}

// ---- error_reply -------------------------------------------------------

#[test]
fn error_replies() {
    let servfail = decode(&error_reply(DIG_A, Rcode::ServFail).unwrap());
    assert_eq!(servfail.id, 0x8a2f);
    assert_eq!(servfail.rcode(), 2);
    assert!(servfail.has(flag::RD) && servfail.has(flag::RA) && !servfail.has(flag::AA));
    assert_eq!(servfail.question, Some(("example.com".into(), 1, 1)));
    assert!(servfail.answers.is_empty());
    assert_eq!(servfail.opt, Some((1232, 0)));

    let nx = decode(&error_reply(GLIBC_A, Rcode::NxDomain).unwrap());
    assert_eq!((nx.rcode(), nx.opt), (3, None));

    // Unparsable question: header-only FORMERR.
    let mut bad = GLIBC_A[..HEADER_LEN + 3].to_vec();
    bad[HEADER_LEN] = 0xc0;
    let err = parse_query(&bad).unwrap_err();
    let rcode = err.reply_rcode().unwrap();
    let formerr = decode(&error_reply(&bad, rcode).unwrap());
    assert_eq!(
        (formerr.id, formerr.rcode(), formerr.question),
        (0x4d21, 1, None)
    );

    // NOTIMP keeps the opcode.
    let mut notify = GLIBC_A.to_vec();
    notify[2] = 0x20; // opcode 4
    let rcode = parse_query(&notify).unwrap_err().reply_rcode().unwrap();
    assert_eq!(rcode, Rcode::NotImp);
    let reply = error_reply(&notify, rcode).unwrap();
    assert_eq!(reply[2] & 0x78, 0x20);
    assert_eq!(decode(&reply).rcode(), 4);

    // Never answer short junk or responses.
    assert_eq!(error_reply(&GLIBC_A[..11], Rcode::FormErr), None);
    let mut response = GLIBC_A.to_vec();
    response[2] |= 0x80;
    assert_eq!(error_reply(&response, Rcode::ServFail), None);
    assert_eq!(DnsError::NotAQuery.reply_rcode(), None);
}

// ---- LocalRecords ------------------------------------------------------

#[test]
fn local_records_validation() {
    let mut r = LocalRecords::new();
    for bad in [
        "",
        ".",
        "a..b",
        "bad name.x",
        "ünicode.x",
        "a/b",
        &"l".repeat(64),
    ] {
        assert!(
            matches!(r.insert(bad, HOST), Err(DnsError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    let long = [
        "x".repeat(63),
        "x".repeat(63),
        "x".repeat(63),
        "x".repeat(62),
    ]
    .join(".");
    assert_eq!(long.len(), 254);
    assert!(r.insert(&long, HOST).is_err());
    assert!(r.insert(&long[2..], HOST).is_ok());
    assert!(!r.is_empty() && r.len() == 1);
    r.insert("_srv-name.Example", GATEWAY).unwrap();
    r.insert("_SRV-NAME.example.", HOST).unwrap();
    assert_eq!(r.len(), 2, "replaced, not added");
    assert_eq!(r.lookup("_srv-name.example"), Some(HOST));
    assert_eq!(r.names_for(HOST.into()).count(), 2);
    let gone = r.remove("_Srv-Name.EXAMPLE.", None);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].data, RecordData::A(HOST));
    assert_eq!(r.lookup("_srv-name.example"), None);
    assert!(r.remove("nothing", None).is_empty());
}

// ---- TCP framing -------------------------------------------------------

#[test]
fn framer_whole_split_and_merged() {
    let a = tcp_frame(GLIBC_A).unwrap();
    let b = tcp_frame(DIG_A).unwrap();
    assert_eq!(&a[..2], &(GLIBC_A.len() as u16).to_be_bytes());
    let mut both = a.clone();
    both.extend_from_slice(&b);

    let mut f = TcpFramer::new();
    assert_eq!(
        f.push(&both).unwrap(),
        vec![GLIBC_A.to_vec(), DIG_A.to_vec()]
    );
    assert!(!f.has_partial());

    // Byte by byte.
    let mut got = Vec::new();
    for byte in &both {
        got.extend(f.push(std::slice::from_ref(byte)).unwrap());
    }
    assert_eq!(got, vec![GLIBC_A.to_vec(), DIG_A.to_vec()]);

    // Every split point of two merged messages.
    for cut in 0..=both.len() {
        let mut f = TcpFramer::new();
        let mut got = f.push(&both[..cut]).unwrap();
        assert_eq!(
            f.has_partial(),
            cut != 0 && cut != a.len() && cut != both.len()
        );
        got.extend(f.push(&both[cut..]).unwrap());
        assert_eq!(got.len(), 2, "cut {cut}");
    }
    assert!(f.push(&[]).unwrap().is_empty());
}

#[test]
fn framer_limits_and_errors() {
    let big = vec![0x5a; 65535];
    let framed = tcp_frame(&big).unwrap();
    let mut f = TcpFramer::new();
    assert!(f.push(&framed[..40000]).unwrap().is_empty());
    assert_eq!(f.push(&framed[40000..]).unwrap(), vec![big.clone()]);
    assert_eq!(
        tcp_frame(&vec![0; 65536]),
        Err(DnsError::MessageTooLong(65536))
    );
    assert_eq!(tcp_frame(&[]), Err(DnsError::ZeroLengthMessage));

    // A zero length poisons the stream, even mid-chunk.
    let mut stream = tcp_frame(GLIBC_A).unwrap();
    stream.extend_from_slice(&[0, 0]);
    stream.extend_from_slice(&tcp_frame(GLIBC_A).unwrap());
    let mut f = TcpFramer::new();
    assert_eq!(f.push(&stream), Err(DnsError::ZeroLengthMessage));
    assert_eq!(
        f.push(&tcp_frame(GLIBC_A).unwrap()),
        Err(DnsError::ZeroLengthMessage)
    );
    let mut f = TcpFramer::new();
    assert!(f.push(&[0]).unwrap().is_empty());
    assert_eq!(f.push(&[0]), Err(DnsError::ZeroLengthMessage));
}

// ---- DnsTcpSession -----------------------------------------------------

#[test]
fn session_local_and_forwarded_in_one_chunk() {
    let mut s = DnsTcpSession::new(view(records()));
    let mut chunk = tcp_frame(DIG_A).unwrap(); // forwarded
    chunk.extend_from_slice(&tcp_frame(GLIBC_A).unwrap()); // local
    chunk.extend_from_slice(&tcp_frame(GLIBC_AAAA).unwrap()); // local NODATA
    let remote2 = query(0x7777, "www.example.org", 28, None);
    chunk.extend_from_slice(&tcp_frame(&remote2).unwrap()); // forwarded
    let act = s.from_guest(&chunk).unwrap();
    assert_eq!(act.local, 2);
    let forwarded: Vec<&[u8]> = act.forward.iter().map(|f| f.query.as_slice()).collect();
    assert_eq!(
        forwarded,
        [DIG_A, &remote2[..]],
        "relayed unchanged, ids untouched"
    );
    assert!(act
        .forward
        .iter()
        .all(|f| f.chase.is_none() && f.upstreams.len() == 1));
    let replies = TcpFramer::new().push(&act.to_guest).unwrap();
    assert_eq!(replies.len(), 2);
    let (a, aaaa) = (decode(&replies[0]), decode(&replies[1]));
    assert_eq!((a.id, a.answers.len()), (0x4d21, 1));
    assert_eq!((aaaa.id, aaaa.answers.len()), (0x4d22, 0));
}

#[test]
fn session_takes_a_new_view_for_later_queries() {
    let mut s = DnsTcpSession::new(view(LocalRecords::new()));
    let q = query(1, "web.test", 1, None);
    assert_eq!(
        s.from_guest(&tcp_frame(&q).unwrap()).unwrap().forward.len(),
        1
    );
    let mut r = LocalRecords::new();
    r.insert("web.test", HOST).unwrap();
    s.set_view(view(r));
    let act = s.from_guest(&tcp_frame(&q).unwrap()).unwrap();
    assert!(act.forward.is_empty());
    assert_eq!(act.local, 1);
}

#[test]
fn session_bad_queries() {
    let mut s = DnsTcpSession::new(view(records()));
    let mut bad = GLIBC_A.to_vec();
    bad[5] = 2; // two questions
    let mut chunk = tcp_frame(&bad).unwrap();
    chunk.extend_from_slice(&tcp_frame(&[1, 2, 3]).unwrap()); // too short: dropped
    let mut response = GLIBC_A.to_vec();
    response[2] |= 0x80;
    chunk.extend_from_slice(&tcp_frame(&response).unwrap()); // a response: dropped
    let act = s.from_guest(&chunk).unwrap();
    assert!(act.forward.is_empty());
    let replies = TcpFramer::new().push(&act.to_guest).unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(decode(&replies[0]).rcode(), 1, "FORMERR");
    assert_eq!(
        s.from_guest(&[0, 0]).unwrap_err(),
        DnsError::ZeroLengthMessage
    );
}

// ---- property test -----------------------------------------------------

/// Deterministic xorshift64.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let recs = records();
    let seeds: [&[u8]; 4] = [DIG_A, GLIBC_A, BUSYBOX_PTR, MIXED_CASE_DO];
    let mut framer = TcpFramer::new();
    let mut session = DnsTcpSession::new(view(recs.clone()));
    let mut answered = 0;
    for i in 0..50_000usize {
        let msg: Vec<u8> = if i % 2 == 0 {
            let len = (rng.next() % 300) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut m = seeds[i % seeds.len()].to_vec();
            for _ in 0..(rng.next() % 3) {
                let at = (rng.next() as usize) % m.len();
                m[at] = rng.next() as u8;
            }
            if rng.next() & 3 == 0 {
                m.truncate((rng.next() as usize) % (m.len() + 1));
            }
            m
        };
        let _ = parse_query(&msg);
        if let Ok(LocalOutcome::Answer(reply)) = answer_local(&msg, &recs) {
            answered += 1;
            assert!(reply.len() <= 4096);
            Header::parse(&reply).unwrap();
        }
        for rcode in [Rcode::FormErr, Rcode::ServFail] {
            if let Some(reply) = error_reply(&msg, rcode) {
                assert!(reply.len() <= msg.len() + 11);
            }
        }
        if framer.push(&msg).is_err() {
            framer = TcpFramer::new();
        }
        if session.from_guest(&msg).is_err() {
            session = DnsTcpSession::new(view(recs.clone()));
        }
    }
    assert!(
        answered > 2_000,
        "mutations kept too few queries valid: {answered}"
    );
}

#[test]
fn aaaa_any_and_ip6_ptr_for_local_names() {
    let v6: Ipv6Addr = "fd61:6972:c0a8:7f00::fe".parse().unwrap();
    let mut recs = records();
    recs.add(
        "HOST.airlock.internal.",
        RecordData::Aaaa(v6),
        RecordSource::Config,
    )
    .unwrap();
    // An AAAA record joins the name's A record.
    assert_eq!(recs.lookup("host.airlock.internal"), Some(HOST));
    assert_eq!(
        recs.find("host.airlock.internal"),
        [&RecordData::A(HOST), &RecordData::Aaaa(v6)]
    );
    let r = answer(&query(1, "host.airlock.internal", 28, None), &recs);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        (r.answers[0].1, r.answers[0].3.clone()),
        (28, v6.octets().to_vec())
    );
    let r = answer(&query(2, "host.airlock.internal", 255, None), &recs);
    let types: Vec<u16> = r.answers.iter().map(|a| a.1).collect();
    assert_eq!(types, vec![1, 28], "ANY: both families");
    // A name without an IPv6 address: NODATA for AAAA, not a forward.
    let r = answer(&query(3, "gateway.airlock.internal", 28, None), &recs);
    assert_eq!((r.flags & 0xf, r.answers.len()), (0, 0));
    // The ip6.arpa name of the address.
    let nibbles: String = format!("{:032x}", u128::from(v6))
        .chars()
        .rev()
        .map(|c| format!("{c}."))
        .collect();
    let r = answer(&query(4, &format!("{nibbles}ip6.arpa"), 12, None), &recs);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        r.answers[0].3,
        b"\x04host\x07airlock\x08internal\x00".to_vec()
    );
    // A malformed or foreign reverse name is forwarded.
    for name in [
        "f.ip6.arpa",
        "x.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    ] {
        assert_eq!(
            answer_local(&query(5, name, 12, None), &recs),
            Ok(LocalOutcome::Forward)
        );
    }
    assert_eq!(recs.remove("host.airlock.internal", None).len(), 2);
    assert!(recs.find("host.airlock.internal").is_empty());
}
