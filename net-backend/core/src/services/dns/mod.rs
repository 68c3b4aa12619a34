//! What the gateway's DNS service needs, without any transport: local names
//! ([`LocalRecords`]), query parsing ([`parse_query`]), local answers
//! ([`answer_local`]), error replies ([`error_reply`]), upstream discovery
//! ([`parse_resolv_conf`]) and DNS over TCP ([`TcpFramer`],
//! [`DnsTcpSession`]).
//!
//! Queries come from the guest and are hostile: every read is bounds
//! checked, compression pointers must point backwards (so loops are
//! impossible), names are limited to 255 bytes, and allocation is bounded by
//! the message size.
//!
//! EDNS (RFC 6891): an OPT record in a query is accepted (at most one, with
//! the root as owner). A local answer to such a query carries our own OPT —
//! UDP payload size 1232, version 0, the DO bit copied, no options (cookies,
//! ECS and other client options are not echoed). A query with EDNS version
//! above 0 for a local name gets BADVERS. Queries without OPT get no OPT.

pub(crate) mod bridge;
mod chase;
pub(crate) mod forward;
mod live;
mod records;
mod resolv;
mod tcp;
mod upstream;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use chase::Chase;
pub use live::{
    api_record, normalize_search, DnsSettings, DnsView, LiveDns, Route, ZoneSpec, ZoneTarget,
    MAX_SEARCH,
};
pub use records::{
    normalize_name, LocalRecord, LocalRecords, RecordData, RecordSource, MAX_RECORDS,
};
pub use resolv::{parse_resolv_conf, parse_resolv_conf_with, ResolvConf};
pub use tcp::{tcp_frame, DnsTcpSession, TcpActions, TcpFramer};
pub use upstream::{in_order, Upstream, DOWN_FOR};

use chase::chase_query;
use wire::{flag, rr, Header, HEADER_LEN};

/// Whether `name` is `zone` or below it (both lowercase, no trailing dot).
pub(crate) fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.strip_suffix(zone).is_some_and(|p| p.ends_with('.'))
}

/// TTL of local answers, in seconds.
const LOCAL_TTL: u32 = 60;
/// UDP payload size advertised in our OPT records (DNS flag day 2020).
const EDNS_UDP_SIZE: u16 = 1232;
/// Largest UDP reply to a query without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_LIMIT: usize = 512;
/// Largest DNS message over TCP.
const TCP_LIMIT: usize = 65535;
/// Extended RCODE BADVERS (16), as the upper 8 bits that go in the OPT TTL.
const BADVERS_UPPER: u8 = 1;

/// Why a DNS message or name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before a field it announces.
    #[error("DNS message truncated")]
    Truncated,
    /// QR is set: the message is a response.
    #[error("DNS message is a response, not a query")]
    NotAQuery,
    /// Only QUERY (0) is served.
    #[error("unsupported DNS opcode {0}")]
    UnsupportedOpcode(u8),
    /// A query must have exactly one question.
    #[error("DNS query has {0} questions, need exactly 1")]
    QuestionCount(u16),
    /// A label of a local name is longer than 63 bytes.
    #[error("DNS label of {0} bytes is longer than 63")]
    LabelTooLong(usize),
    /// A name is longer than 255 bytes in wire form.
    #[error("DNS name longer than 255 bytes")]
    NameTooLong,
    /// Extended label types (0x40, 0x80) are not supported.
    #[error("unsupported DNS label type {0:#04x}")]
    BadLabelType(u8),
    /// A compression pointer that does not point backwards, points into the
    /// header, or is one too many.
    #[error("bad DNS compression pointer to offset {0}")]
    BadPointer(usize),
    /// More than one OPT record (RFC 6891 §6.1.1).
    #[error("DNS message has more than one OPT record")]
    DuplicateOpt,
    /// An OPT record whose owner is not the root.
    #[error("DNS OPT record with a non-root owner")]
    BadOpt,
    /// A name given to [`LocalRecords::add`] is not a valid host name.
    #[error("invalid local DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A DNS-over-TCP length prefix of zero.
    #[error("zero-length DNS-over-TCP message")]
    ZeroLengthMessage,
    /// A message that does not fit a 2-byte TCP length prefix.
    #[error("DNS message of {0} bytes is too long for DNS over TCP")]
    MessageTooLong(usize),
    /// A CNAME and another record for one name.
    #[error("{0} would have a CNAME and other records: a CNAME must be the name's only record")]
    CnameConflict(String),
    /// The record set is full.
    #[error("too many local DNS records (at most {0})")]
    TooManyRecords(usize),
    /// Nothing to remove.
    #[error("no local DNS record {0}")]
    NoSuchRecord(String),
    /// The gateway's own names stay.
    #[error("{0} is one of the gateway's built-in names (--gateway-name, --host-name, --proxy-name); it cannot be removed")]
    BuiltinRecord(String),
}

impl DnsError {
    /// The RCODE to answer a message that failed with this error, or `None`
    /// when no reply should be sent (responses, non-message errors).
    pub fn reply_rcode(&self) -> Option<Rcode> {
        match self {
            Self::NotAQuery
            | Self::InvalidName { .. }
            | Self::ZeroLengthMessage
            | Self::MessageTooLong(_)
            | Self::CnameConflict(_)
            | Self::TooManyRecords(_)
            | Self::NoSuchRecord(_)
            | Self::BuiltinRecord(_) => None,
            Self::UnsupportedOpcode(_) => Some(Rcode::NotImp),
            _ => Some(Rcode::FormErr),
        }
    }
}

/// Response codes used in replies we make ourselves (RFC 1035 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// No error.
    NoError,
    /// The query was malformed.
    FormErr,
    /// The server failed, e.g. no upstream resolver answered.
    ServFail,
    /// The name does not exist.
    NxDomain,
    /// The opcode is not implemented.
    NotImp,
    /// Refused by policy.
    Refused,
}

impl Rcode {
    /// The 4-bit wire value.
    pub fn code(self) -> u8 {
        match self {
            Self::NoError => 0,
            Self::FormErr => 1,
            Self::ServFail => 2,
            Self::NxDomain => 3,
            Self::NotImp => 4,
            Self::Refused => 5,
        }
    }
}

/// The question of a DNS query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// The name asked for: lowercase, no trailing dot, "" for the root.
    /// Bytes that are not printable ASCII, and `.` or `\` inside a label,
    /// are escaped (`\DDD`, `\.`, `\\`).
    pub name: String,
    /// QTYPE (1 = A, 28 = AAAA, 12 = PTR, …).
    pub qtype: u16,
    /// QCLASS (1 = IN).
    pub qclass: u16,
    /// The RD bit.
    pub recursion_desired: bool,
}

/// A parsed question, keeping the name's labels in their original case so
/// replies echo it byte for byte (needed by resolvers that use 0x20 case
/// randomisation).
struct Question<'a> {
    labels: Vec<&'a [u8]>,
    qtype: u16,
    qclass: u16,
}

/// The client's OPT record.
#[derive(Debug, Clone, Copy)]
struct Edns {
    udp_size: u16,
    version: u8,
    dnssec_ok: bool,
}

/// A query parsed through its additional section.
struct Parsed<'a> {
    header: Header,
    query: Query,
    question: Question<'a>,
    edns: Option<Edns>,
}

/// Reads the single question that follows the header.
fn read_question<'a>(msg: &'a [u8], header: &Header) -> Result<(Question<'a>, usize), DnsError> {
    if header.qdcount != 1 {
        return Err(DnsError::QuestionCount(header.qdcount));
    }
    let (labels, at) = wire::read_name(msg, HEADER_LEN)?;
    let qtype = wire::be16(msg, at).ok_or(DnsError::Truncated)?;
    let qclass = wire::be16(msg, at + 2).ok_or(DnsError::Truncated)?;
    Ok((
        Question {
            labels,
            qtype,
            qclass,
        },
        at + 4,
    ))
}

/// Header checks plus the question.
fn parse_question(msg: &[u8]) -> Result<(Header, Query, Question<'_>, usize), DnsError> {
    let header = Header::parse(msg).ok_or(DnsError::Truncated)?;
    if header.flags & flag::QR != 0 {
        return Err(DnsError::NotAQuery);
    }
    if header.opcode() != 0 {
        return Err(DnsError::UnsupportedOpcode(header.opcode()));
    }
    let (question, end) = read_question(msg, &header)?;
    let query = Query {
        id: header.id,
        name: wire::name_to_string(&question.labels),
        qtype: question.qtype,
        qclass: question.qclass,
        recursion_desired: header.flags & flag::RD != 0,
    };
    Ok((header, query, question, end))
}

/// Parses a DNS query: QR clear, opcode QUERY, exactly one question. Only
/// the header and the question are read; later sections are not checked
/// (see [`answer_local`], which checks them).
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    parse_question(msg).map(|(_, query, _, _)| query)
}

/// Parses the question, skips answer and authority records and finds the
/// OPT record among the additional records. Bytes after the last record
/// are ignored.
fn parse_full(msg: &[u8]) -> Result<Parsed<'_>, DnsError> {
    let (header, query, question, mut pos) = parse_question(msg)?;
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        pos = wire::skip_record(msg, pos)?.next;
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let rec = wire::skip_record(msg, pos)?;
        if rec.rtype == rr::TYPE_OPT {
            if edns.is_some() {
                return Err(DnsError::DuplicateOpt);
            }
            if !rec.name_is_root {
                return Err(DnsError::BadOpt);
            }
            let [_ext_rcode, version, flags_hi, _] = rec.ttl.to_be_bytes();
            edns = Some(Edns {
                udp_size: rec.class,
                version,
                dnssec_ok: flags_hi & 0x80 != 0,
            });
        }
        pos = rec.next;
    }
    Ok(Parsed {
        header,
        query,
        question,
        edns,
    })
}

/// What the records say about a query for a name that is not local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    /// Send this reply to the guest.
    Answer(Vec<u8>),
    /// Not a local name (or a local CNAME to one that is not): someone
    /// else must answer.
    Forward,
}

/// A resource record of a reply the gateway builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rr {
    owner: Owner,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// The owner name of a record we write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// The question's name (a pointer to it: its case is the guest's).
    Question,
    /// Another name, uncompressed wire form.
    Name(Vec<u8>),
}

impl Rr {
    /// A local record: class IN, TTL [`LOCAL_TTL`].
    fn local(owner: Owner, rtype: u16, rdata: Vec<u8>) -> Rr {
        Rr {
            owner,
            rtype,
            class: rr::CLASS_IN,
            ttl: LOCAL_TTL,
            rdata,
        }
    }

    /// Appends it in wire form.
    fn write(&self, out: &mut Vec<u8>) {
        match &self.owner {
            Owner::Question => out.extend_from_slice(&[0xc0, HEADER_LEN as u8]),
            Owner::Name(wire) => out.extend_from_slice(wire),
        }
        out.extend_from_slice(&self.rtype.to_be_bytes());
        out.extend_from_slice(&self.class.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        out.extend_from_slice(&(self.rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.rdata);
    }
}

/// A local name (valid by construction: checked when it was added) in
/// uncompressed wire form.
fn name_wire(name: &str) -> Vec<u8> {
    let labels: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
    let mut out = Vec::with_capacity(name.len() + 2);
    wire::write_name(&mut out, &labels);
    out
}

/// What the records hold for a question.
struct LocalAnswer {
    /// CNAMEs followed and the records found, in order.
    answers: Vec<Rr>,
    /// The CNAME chain leads to this name, which has no local records.
    outside: Option<String>,
}

/// Looks `qname` up in `records`: its records of type `qtype` (A, AAAA,
/// CNAME, or all for ANY; none for other types: NODATA), following local
/// CNAMEs for at most [`records::MAX_CHAIN`] steps; PTR for the reverse
/// name of a local address. `None`: the name is not local.
fn from_records(records: &LocalRecords, qname: &str, qtype: u16) -> Option<LocalAnswer> {
    let mut answers = Vec::new();
    let mut name = qname.to_owned();
    let mut seen: Vec<String> = Vec::new();
    for depth in 0..=records::MAX_CHAIN {
        let owner = if depth == 0 {
            Owner::Question
        } else {
            Owner::Name(name_wire(&name))
        };
        let found = records.find(&name);
        if found.is_empty() {
            if depth == 0 {
                return (qtype == rr::TYPE_PTR)
                    .then(|| ptr_answers(records, qname))
                    .flatten();
            }
            return Some(LocalAnswer {
                answers,
                outside: Some(name),
            });
        }
        let cname = found.iter().find_map(|d| match d {
            RecordData::Cname(target) => Some(target.clone()),
            _ => None,
        });
        if let Some(target) = cname {
            answers.push(Rr::local(owner, rr::TYPE_CNAME, name_wire(&target)));
            let stop = qtype == rr::TYPE_CNAME || qtype == rr::TYPE_ANY;
            if stop || seen.contains(&target) || target == name {
                break;
            }
            seen.push(std::mem::replace(&mut name, target));
            continue;
        }
        for data in found {
            let rdata = match (data, qtype) {
                (RecordData::A(ip), rr::TYPE_A | rr::TYPE_ANY) => ip.octets().to_vec(),
                (RecordData::Aaaa(ip), rr::TYPE_AAAA | rr::TYPE_ANY) => ip.octets().to_vec(),
                _ => continue,
            };
            answers.push(Rr::local(owner.clone(), data.rtype(), rdata));
        }
        break;
    }
    Some(LocalAnswer {
        answers,
        outside: None,
    })
}

/// PTR records for the reverse name of a local address, if it is one.
fn ptr_answers(records: &LocalRecords, name: &str) -> Option<LocalAnswer> {
    let ip = reverse_v4(name)
        .map(IpAddr::V4)
        .or_else(|| reverse_v6(name).map(IpAddr::V6))?;
    let answers: Vec<Rr> = records
        .names_for(ip)
        .map(|n| Rr::local(Owner::Question, rr::TYPE_PTR, name_wire(n)))
        .collect();
    (!answers.is_empty()).then_some(LocalAnswer {
        answers,
        outside: None,
    })
}

/// Answers `msg` from `records` when it asks about a local name (UDP
/// transport: replies are limited to 512 bytes, or to the client's EDNS
/// size, and set TC when larger).
///
/// - A, AAAA (or ANY) for a local name → its addresses, TTL 60; a name
///   without records of the type asked → NOERROR without answers
///   (NODATA), no SOA.
/// - A local CNAME → the CNAME, then what the target holds; a target that
///   is not local → [`LocalOutcome::Forward`] (see [`plan`], which asks
///   upstream for it).
/// - PTR for the reverse name (`in-addr.arpa`, `ip6.arpa`) of a local
///   address → every name of that address, in insertion order.
/// - Anything else, including classes other than IN/ANY → [`LocalOutcome::Forward`].
///
/// The reply echoes the id, the question (original case) and RD and CD;
/// sets QR, AA and RA. See the module documentation for EDNS. The whole
/// message is checked, so `Err` means "malformed"; answer it with
/// [`error_reply`] and [`DnsError::reply_rcode`].
pub fn answer_local(msg: &[u8], records: &LocalRecords) -> Result<LocalOutcome, DnsError> {
    let p = parse_full(msg)?;
    Ok(match local_reply(&p, records, None) {
        Some(Local::Reply(reply)) => LocalOutcome::Answer(reply),
        _ => LocalOutcome::Forward,
    })
}

/// What the records say about a parsed query.
enum Local {
    /// The reply to send.
    Reply(Vec<u8>),
    /// Its CNAME chain (the records) leads to this name, which is not local.
    Outside(String, Vec<Rr>),
}

/// The local answer to a parsed query; `None`: not a local name.
fn local_reply(
    p: &Parsed<'_>,
    records: &LocalRecords,
    transport_limit: Option<usize>,
) -> Option<Local> {
    let q = &p.query;
    if q.qclass != rr::CLASS_IN && q.qclass != rr::CLASS_ANY {
        return None;
    }
    let found = from_records(records, &q.name, q.qtype)?;
    let bad_version = p.edns.is_some_and(|e| e.version != 0);
    if let (Some(target), false) = (found.outside.clone(), bad_version) {
        return Some(Local::Outside(target, found.answers));
    }
    let (rcode, answers): (u16, &[Rr]) = if bad_version {
        (u16::from(BADVERS_UPPER) << 4, &[])
    } else {
        (0, &found.answers)
    };
    Some(Local::Reply(build_reply(&ReplyParts {
        query: &p.header,
        question: Some(&p.question),
        edns: p.edns,
        rcode,
        answers,
        authority: &[],
        authoritative: true,
        truncated: false,
        limit: transport_limit.unwrap_or_else(|| udp_limit(p.edns)),
    })))
}

/// What the gateway does with a guest's query.
#[derive(Debug)]
pub enum Plan {
    /// A local answer: send it.
    Answer(Vec<u8>),
    /// A name in a local zone without records: send this NXDOMAIN (the
    /// query never leaves the host).
    NxDomain(Vec<u8>),
    /// Nobody to ask (no resolvers for the name): send this SERVFAIL.
    NoUpstream(Vec<u8>),
    /// Ask upstream.
    Forward(Forward),
}

/// A query to send upstream.
#[derive(Debug)]
pub struct Forward {
    /// What to send: the guest's query unchanged, or (with `chase`) a
    /// query for the target of a local CNAME.
    pub query: Vec<u8>,
    /// Who may answer, in configured order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Turns the upstream's answer into the guest's when `query` is not
    /// the guest's own.
    pub chase: Option<Chase>,
}

/// Decides what to do with the guest's query `msg`: answer it from local
/// records ([`answer_local`]), refuse unknown names in local zones with
/// NXDOMAIN, or forward it to the resolvers of its zone (or the default
/// ones) — for a local CNAME to an outside name, a query for that name.
/// `transport_limit`: `Some(n)` caps local replies at `n` bytes (TCP),
/// `None` applies the UDP rules. `Err`: malformed (see [`answer_local`]).
pub fn plan(msg: &[u8], view: &DnsView, transport_limit: Option<usize>) -> Result<Plan, DnsError> {
    let p = parse_full(msg)?;
    let (name, chase) = match local_reply(&p, &view.records, transport_limit) {
        Some(Local::Reply(reply)) => return Ok(Plan::Answer(reply)),
        Some(Local::Outside(target, chain)) => {
            let chase = Chase::new(msg, chain, transport_limit);
            (target, Some(chase))
        }
        None => (p.query.name.clone(), None),
    };
    let upstreams = match view.route(&name) {
        Route::Local => {
            let reply = match &chase {
                // The chain ends in our own zone at a name we do not have.
                Some(c) => c.finish_local(Rcode::NxDomain),
                None => error_reply(msg, Rcode::NxDomain),
            };
            return Ok(Plan::NxDomain(reply.unwrap_or_default()));
        }
        Route::Upstreams(list) => list,
    };
    if upstreams.is_empty() {
        return Ok(Plan::NoUpstream(
            error_reply(msg, Rcode::ServFail).unwrap_or_default(),
        ));
    }
    let query = match &chase {
        Some(_) => chase_query(&p, &name),
        None => msg.to_vec(),
    };
    Ok(Plan::Forward(Forward {
        query,
        upstreams: upstreams.to_vec(),
        chase,
    }))
}

/// The address of a reverse name `d.c.b.a.in-addr.arpa` in canonical form
/// (decimal octets without leading zeros).
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let prefix = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = prefix.split('.');
    for slot in octets.iter_mut().rev() {
        let part = parts.next()?;
        let canonical = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !canonical {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// The address of a reverse name of 32 nibbles under `ip6.arpa`.
fn reverse_v6(name: &str) -> Option<Ipv6Addr> {
    let prefix = name.strip_suffix(".ip6.arpa")?;
    let mut value: u128 = 0;
    let mut count = 0;
    for (i, part) in prefix.split('.').enumerate() {
        let nibble = match part.as_bytes() {
            [b] => char::from(*b).to_digit(16)?,
            _ => return None,
        };
        if i >= 32 {
            return None;
        }
        value |= u128::from(nibble) << (4 * i);
        count += 1;
    }
    (count == 32).then_some(Ipv6Addr::from(value))
}

/// The reply size a UDP client accepts.
fn udp_limit(edns: Option<Edns>) -> usize {
    match edns {
        Some(e) => usize::from(e.udp_size).max(PLAIN_UDP_LIMIT),
        None => PLAIN_UDP_LIMIT,
    }
}

/// A reply for a query we cannot serve: `rcode` (typically SERVFAIL when no
/// upstream answered, FORMERR for a malformed query), with the query's id,
/// opcode, RD and CD. The question is echoed if it can be parsed, and an OPT
/// is added if the query had a valid one. Returns `None` when `msg` is
/// shorter than a header or is itself a response (never answer those).
pub fn error_reply(msg: &[u8], rcode: Rcode) -> Option<Vec<u8>> {
    let header = Header::parse(msg)?;
    if header.flags & flag::QR != 0 {
        return None;
    }
    let rcode = u16::from(rcode.code());
    let (question, edns) = match parse_full(msg) {
        Ok(p) => (Some(p.question), p.edns),
        Err(_) => (read_question(msg, &header).ok().map(|(q, _)| q), None),
    };
    Some(build_reply(&ReplyParts {
        query: &header,
        question: question.as_ref(),
        edns,
        rcode,
        answers: &[],
        authority: &[],
        authoritative: false,
        truncated: false,
        limit: TCP_LIMIT,
    }))
}

/// Everything a reply is made of.
struct ReplyParts<'a> {
    /// The query's header: its id, opcode, RD and CD are echoed.
    query: &'a Header,
    question: Option<&'a Question<'a>>,
    /// The query's OPT: the reply gets our own.
    edns: Option<Edns>,
    /// The 12-bit extended RCODE (the upper 8 bits go into the OPT, if
    /// the query had one).
    rcode: u16,
    answers: &'a [Rr],
    authority: &'a [Rr],
    authoritative: bool,
    /// Set TC whatever the size (the upstream's answer was truncated).
    truncated: bool,
    /// If the records would push the reply over this, they are dropped and
    /// TC is set.
    limit: usize,
}

/// Builds a reply.
fn build_reply(p: &ReplyParts<'_>) -> Vec<u8> {
    let query = p.query;
    let mut flags = flag::QR | flag::RA | (query.flags & (flag::OPCODE_MASK | flag::RD | flag::CD));
    if p.authoritative {
        flags |= flag::AA;
    }
    if p.truncated {
        flags |= flag::TC;
    }
    flags |= p.rcode & 0x000f;
    let mut header = Header {
        id: query.id,
        flags,
        qdcount: u16::from(p.question.is_some()),
        ancount: 0,
        nscount: 0,
        arcount: u16::from(p.edns.is_some()),
    };
    let mut body = Vec::new();
    if let Some(q) = p.question {
        wire::write_name(&mut body, &q.labels);
        body.extend_from_slice(&q.qtype.to_be_bytes());
        body.extend_from_slice(&q.qclass.to_be_bytes());
    }
    let mut records = Vec::new();
    for record in p.answers.iter().chain(p.authority) {
        record.write(&mut records);
    }
    let opt_len = if p.edns.is_some() { 11 } else { 0 };
    let counts = (
        u16::try_from(p.answers.len()),
        u16::try_from(p.authority.len()),
    );
    match counts {
        (Ok(an), Ok(ns)) if HEADER_LEN + body.len() + records.len() + opt_len <= p.limit => {
            header.ancount = an;
            header.nscount = ns;
            body.extend_from_slice(&records);
        }
        _ => header.flags |= flag::TC,
    }
    if let Some(e) = p.edns {
        let ext_rcode = (p.rcode >> 4) as u8;
        let do_bit = if e.dnssec_ok { 0x80 } else { 0 };
        body.push(0); // root owner
        body.extend_from_slice(&rr::TYPE_OPT.to_be_bytes());
        body.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
        body.extend_from_slice(&[ext_rcode, 0, do_bit, 0]);
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    header.write(&mut out);
    out.extend_from_slice(&body);
    out
}

/// Who asked what: a message's id and its question (name lowercased,
/// type, class). Replies are matched to the queries sent by it. `None`
/// for a message without a header; an empty question for one without a
/// readable question (some error replies).
pub(crate) fn question_key(msg: &[u8]) -> Option<(u16, Vec<u8>)> {
    let header = Header::parse(msg)?;
    let Ok((q, _)) = read_question(msg, &header) else {
        return Some((header.id, Vec::new()));
    };
    let mut key = Vec::new();
    let lower: Vec<Vec<u8>> = q.labels.iter().map(|l| l.to_ascii_lowercase()).collect();
    let labels: Vec<&[u8]> = lower.iter().map(Vec::as_slice).collect();
    wire::write_name(&mut key, &labels);
    key.extend_from_slice(&q.qtype.to_be_bytes());
    key.extend_from_slice(&q.qclass.to_be_bytes());
    Some((header.id, key))
}

/// The response code of a response, or `None` for anything else.
pub(crate) fn response_rcode(msg: &[u8]) -> Option<u8> {
    let header = Header::parse(msg)?;
    (header.flags & flag::QR != 0).then_some((header.flags & 0x000f) as u8)
}

/// Whether `msg` is a response with RCODE SERVFAIL or REFUSED: worth
/// asking another resolver.
pub(crate) fn is_failure(msg: &[u8]) -> bool {
    matches!(response_rcode(msg), Some(2 | 5))
}

/// Names in uncompressed wire form, one after the other: the search list
/// of DHCPv6 (option 24, RFC 3646) and of a router advertisement's DNSSL
/// (RFC 8106), which must not use compression. Names that are not valid
/// host names are left out.
pub fn encode_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        if let Ok(n) = records::normalize_name(name, false) {
            out.extend_from_slice(&name_wire(&n));
        }
    }
    out
}

#[cfg(test)]
mod tests;
