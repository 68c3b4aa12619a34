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
pub(crate) mod forward;
mod resolv;
mod tcp;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use resolv::{parse_resolv_conf, parse_resolv_conf_with};
pub use tcp::{tcp_frame, DnsTcpSession, TcpActions, TcpFramer};

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
/// Longest local name in text form (255 wire bytes).
const MAX_TEXT_NAME: usize = 253;

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
    /// A name given to [`LocalRecords::insert`] is not a valid host name.
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
}

impl DnsError {
    /// The RCODE to answer a message that failed with this error, or `None`
    /// when no reply should be sent (responses, non-message errors).
    pub fn reply_rcode(&self) -> Option<Rcode> {
        match self {
            Self::NotAQuery
            | Self::InvalidName { .. }
            | Self::ZeroLengthMessage
            | Self::MessageTooLong(_) => None,
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

/// Names the gateway answers itself (e.g. `host.airlock.internal`), each
/// mapped to at most one IPv4 address (A) and one IPv6 address (AAAA).
/// Names are matched case-insensitively and a
/// trailing dot is ignored. Insertion order is kept: it orders the PTR
/// records of an address that has several names, so insert the canonical
/// name first. Meant for a handful of names (lookups scan the list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalRecords {
    entries: Vec<(String, IpAddr)>,
}

impl LocalRecords {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name → ip`, replacing the name's address of that family if it
    /// has one. The name must be a host name: labels of 1–63 letters,
    /// digits, `-` or `_`, at most 253 characters, an optional trailing dot.
    pub fn insert(&mut self, name: &str, ip: impl Into<IpAddr>) -> Result<(), DnsError> {
        let ip = ip.into();
        let name = normalize_name(name)?;
        match self
            .entries
            .iter_mut()
            .find(|(n, a)| *n == name && a.is_ipv4() == ip.is_ipv4())
        {
            Some(entry) => entry.1 = ip,
            None => self.entries.push((name, ip)),
        }
        Ok(())
    }

    /// Removes a name (both its addresses), returning its IPv4 address if
    /// it had one.
    pub fn remove(&mut self, name: &str) -> Option<Ipv4Addr> {
        let name = trim_dot(name);
        let v4 = self.lookup(name);
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        v4
    }

    fn addresses<'a>(&'a self, name: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        let name = trim_dot(name);
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, ip)| *ip)
    }

    /// Whether `name` is a local name (of either family).
    pub fn contains(&self, name: &str) -> bool {
        self.addresses(name).next().is_some()
    }

    /// The IPv4 address of `name`, matched case-insensitively, trailing dot
    /// ignored.
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.addresses(name).find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 address of `name`.
    pub fn lookup6(&self, name: &str) -> Option<Ipv6Addr> {
        self.addresses(name).find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
    }

    /// The names that map to `ip`, in insertion order.
    pub fn names_for(&self, ip: impl Into<IpAddr>) -> impl Iterator<Item = &str> + '_ {
        let ip = ip.into();
        self.entries
            .iter()
            .filter(move |(_, a)| *a == ip)
            .map(|(n, _)| n.as_str())
    }

    /// All records as (lowercase name without trailing dot, address), in
    /// insertion order (a name with both families appears twice).
    pub fn iter(&self) -> impl Iterator<Item = (&str, IpAddr)> + '_ {
        self.entries.iter().map(|(n, ip)| (n.as_str(), *ip))
    }

    /// Number of records (a name with both families counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Strips one trailing dot.
fn trim_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Validates a local name and returns it lowercase without trailing dot.
fn normalize_name(name: &str) -> Result<String, DnsError> {
    let invalid = |reason| DnsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let trimmed = trim_dot(name);
    if trimmed.is_empty() {
        return Err(invalid("empty name"));
    }
    if trimmed.len() > MAX_TEXT_NAME {
        return Err(invalid("longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > wire::MAX_LABEL {
            return Err(invalid("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
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

/// What to do with a guest's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    /// Send this reply to the guest.
    Answer(Vec<u8>),
    /// Not a local name: relay the query upstream unchanged.
    Forward,
}

/// A resource record in a local answer; the owner is always the question name.
enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(Vec<u8>),
}

/// Answers `msg` from `records` when it asks about a local name (UDP
/// transport: replies are limited to 512 bytes, or to the client's EDNS
/// size, and set TC when larger).
///
/// - A or AAAA (or ANY: both) for a local name → its address of that
///   family, TTL 60.
/// - Any other type for a local name, or a family it has no address of →
///   NOERROR without answers (NODATA), no SOA.
/// - PTR for `d.c.b.a.in-addr.arpa` or the `ip6.arpa` name of a local
///   address → every name of that address, in insertion order.
/// - Anything else, including classes other than IN/ANY → [`LocalOutcome::Forward`].
///
/// The reply echoes the id, the question (original case) and RD and CD;
/// sets QR, AA and RA. See the module documentation for EDNS. The whole
/// message is checked, so `Err` means "malformed"; answer it with
/// [`error_reply`] and [`DnsError::reply_rcode`].
pub fn answer_local(msg: &[u8], records: &LocalRecords) -> Result<LocalOutcome, DnsError> {
    answer_local_within(msg, records, None)
}

/// [`answer_local`] with a transport limit: `Some(n)` caps replies at `n`
/// bytes (TCP), `None` applies the UDP rules.
fn answer_local_within(
    msg: &[u8],
    records: &LocalRecords,
    transport_limit: Option<usize>,
) -> Result<LocalOutcome, DnsError> {
    let p = parse_full(msg)?;
    let q = &p.query;
    if q.qclass != rr::CLASS_IN && q.qclass != rr::CLASS_ANY {
        return Ok(LocalOutcome::Forward);
    }
    let answers = if records.contains(&q.name) {
        let mut answers = Vec::new();
        if matches!(q.qtype, rr::TYPE_A | rr::TYPE_ANY) {
            answers.extend(records.lookup(&q.name).map(Record::A));
        }
        if matches!(q.qtype, rr::TYPE_AAAA | rr::TYPE_ANY) {
            answers.extend(records.lookup6(&q.name).map(Record::Aaaa));
        }
        answers
    } else if q.qtype == rr::TYPE_PTR {
        let ip = reverse_v4(&q.name)
            .map(IpAddr::V4)
            .or_else(|| reverse_v6(&q.name).map(IpAddr::V6));
        let names: Vec<Record> = ip
            .map(|ip| records.names_for(ip).map(ptr_record).collect())
            .unwrap_or_default();
        if names.is_empty() {
            return Ok(LocalOutcome::Forward);
        }
        names
    } else {
        return Ok(LocalOutcome::Forward);
    };
    let limit = transport_limit.unwrap_or_else(|| udp_limit(p.edns));
    let bad_version = p.edns.is_some_and(|e| e.version != 0);
    let reply = if bad_version {
        let rcode = u16::from(BADVERS_UPPER) << 4;
        build_reply(
            &p.header,
            Some(&p.question),
            p.edns,
            rcode,
            &[],
            true,
            limit,
        )
    } else {
        build_reply(
            &p.header,
            Some(&p.question),
            p.edns,
            0,
            &answers,
            true,
            limit,
        )
    };
    Ok(LocalOutcome::Answer(reply))
}

/// A PTR record for a local name (valid wire form: names are checked on insert).
fn ptr_record(name: &str) -> Record {
    let labels: Vec<&[u8]> = name.split('.').map(str::as_bytes).collect();
    let mut rdata = Vec::with_capacity(name.len() + 2);
    wire::write_name(&mut rdata, &labels);
    Record::Ptr(rdata)
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

/// The address of a reverse name `b.a.9.8. … .ip6.arpa` (32 nibbles,
/// least significant first).
fn reverse_v6(name: &str) -> Option<Ipv6Addr> {
    let prefix = name.strip_suffix(".ip6.arpa")?;
    let mut value = 0u128;
    let mut count = 0;
    for (i, part) in prefix.split('.').enumerate() {
        let nibble = match part.as_bytes() {
            [c] => char::from(*c).to_digit(16)?,
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
    if let Ok(p) = parse_full(msg) {
        return Some(build_reply(
            &header,
            Some(&p.question),
            p.edns,
            rcode,
            &[],
            false,
            TCP_LIMIT,
        ));
    }
    let question = read_question(msg, &header).ok().map(|(q, _)| q);
    Some(build_reply(
        &header,
        question.as_ref(),
        None,
        rcode,
        &[],
        false,
        TCP_LIMIT,
    ))
}

/// Builds a reply. `rcode` is the 12-bit extended RCODE (the upper 8 bits
/// go into the OPT, if the query had one). If the answers would push the
/// reply over `limit`, they are dropped and TC is set.
fn build_reply(
    query: &Header,
    question: Option<&Question<'_>>,
    edns: Option<Edns>,
    rcode: u16,
    answers: &[Record],
    authoritative: bool,
    limit: usize,
) -> Vec<u8> {
    let mut flags = flag::QR | flag::RA | (query.flags & (flag::OPCODE_MASK | flag::RD | flag::CD));
    if authoritative {
        flags |= flag::AA;
    }
    flags |= rcode & 0x000f;
    let mut header = Header {
        id: query.id,
        flags,
        qdcount: u16::from(question.is_some()),
        ancount: 0,
        nscount: 0,
        arcount: u16::from(edns.is_some()),
    };
    let mut body = Vec::new();
    if let Some(q) = question {
        wire::write_name(&mut body, &q.labels);
        body.extend_from_slice(&q.qtype.to_be_bytes());
        body.extend_from_slice(&q.qclass.to_be_bytes());
    }
    let mut answer_bytes = Vec::new();
    for record in answers {
        // The owner is the question name, always at offset 12.
        answer_bytes.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        let (rtype, rdata): (u16, &[u8]) = match record {
            Record::A(ip) => (rr::TYPE_A, &ip.octets()[..]),
            Record::Aaaa(ip) => (rr::TYPE_AAAA, &ip.octets()[..]),
            Record::Ptr(name) => (rr::TYPE_PTR, name),
        };
        answer_bytes.extend_from_slice(&rtype.to_be_bytes());
        answer_bytes.extend_from_slice(&rr::CLASS_IN.to_be_bytes());
        answer_bytes.extend_from_slice(&LOCAL_TTL.to_be_bytes());
        answer_bytes.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        answer_bytes.extend_from_slice(rdata);
    }
    let opt_len = if edns.is_some() { 11 } else { 0 };
    if HEADER_LEN + body.len() + answer_bytes.len() + opt_len > limit {
        header.flags |= flag::TC;
    } else {
        header.ancount = answers.len() as u16;
        body.extend_from_slice(&answer_bytes);
    }
    if let Some(e) = edns {
        let ext_rcode = (rcode >> 4) as u8;
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

#[cfg(test)]
mod tests;
