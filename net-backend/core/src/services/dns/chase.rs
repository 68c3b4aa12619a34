//! Local CNAMEs to names the gateway does not know: the gateway asks
//! upstream for the target and answers the guest with its own CNAME chain
//! followed by the upstream's records, as a recursive resolver would
//! (stub resolvers such as glibc's do not follow a CNAME themselves).
//!
//! The upstream's records are copied with their names decompressed (their
//! pointers refer to the upstream's message, not ours): owner names, and
//! the names inside NS, CNAME, PTR, DNAME, MX, SRV and SOA data. Other
//! data is copied as it is. The upstream's additional section is left out.

use super::wire::{self, be16, be32, flag, rr, Header, HEADER_LEN};
use super::{
    build_reply, name_wire, parse_full, udp_limit, DnsError, Owner, Parsed, Rcode, ReplyParts, Rr,
    EDNS_UDP_SIZE,
};

/// Record types whose data is one name.
const TYPE_NS: u16 = 2;
const TYPE_SOA: u16 = 6;
const TYPE_MX: u16 = 15;
const TYPE_SRV: u16 = 33;
const TYPE_DNAME: u16 = 39;

/// How to turn the answer for a CNAME's target into the guest's answer.
#[derive(Debug, Clone)]
pub struct Chase {
    /// The guest's query.
    original: Vec<u8>,
    /// The local records that lead to the name asked upstream.
    chain: Vec<Rr>,
    /// `Some` over TCP; `None`: UDP rules.
    transport_limit: Option<usize>,
}

impl Chase {
    pub(super) fn new(original: &[u8], chain: Vec<Rr>, transport_limit: Option<usize>) -> Chase {
        Chase {
            original: original.to_vec(),
            chain,
            transport_limit,
        }
    }

    /// The guest's query.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// The guest's answer from the upstream's `reply` to the chased query:
    /// our chain, then its answer and authority records, its RCODE and TC.
    /// `None` if `reply` is not a well-formed response.
    pub fn finish(&self, reply: &[u8]) -> Option<Vec<u8>> {
        let p = parse_full(&self.original).ok()?;
        let h = Header::parse(reply)?;
        if h.flags & flag::QR == 0 {
            return None;
        }
        let mut pos = HEADER_LEN;
        for _ in 0..h.qdcount {
            let (_, at) = wire::read_name(reply, pos).ok()?;
            pos = at.checked_add(4).filter(|&p| p <= reply.len())?;
        }
        let mut answers = self.chain.clone();
        for _ in 0..h.ancount {
            let (record, next) = read_record(reply, pos).ok()?;
            answers.push(record);
            pos = next;
        }
        let mut authority = Vec::new();
        for _ in 0..h.nscount {
            let (record, next) = read_record(reply, pos).ok()?;
            authority.push(record);
            pos = next;
        }
        Some(self.build(
            &p,
            u16::from((h.flags & 0x000f) as u8),
            &answers,
            &authority,
            h.flags & flag::TC != 0,
        ))
    }

    /// The guest's answer when the chain ends in a local zone: our chain
    /// and `rcode`.
    pub(super) fn finish_local(&self, rcode: Rcode) -> Option<Vec<u8>> {
        let p = parse_full(&self.original).ok()?;
        Some(self.build(&p, u16::from(rcode.code()), &self.chain, &[], false))
    }

    fn build(
        &self,
        p: &Parsed<'_>,
        rcode: u16,
        answers: &[Rr],
        authority: &[Rr],
        truncated: bool,
    ) -> Vec<u8> {
        build_reply(&ReplyParts {
            query: &p.header,
            question: Some(&p.question),
            edns: p.edns,
            rcode,
            answers,
            authority,
            authoritative: false,
            truncated,
            limit: self.transport_limit.unwrap_or_else(|| udp_limit(p.edns)),
        })
    }
}

/// The query for `target` that stands for the guest's query `p`: its id,
/// RD and CD, type and class, and (if it had EDNS) our OPT with its DO bit.
pub(super) fn chase_query(p: &Parsed<'_>, target: &str) -> Vec<u8> {
    let header = Header {
        id: p.header.id,
        flags: p.header.flags & (flag::RD | flag::CD),
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: u16::from(p.edns.is_some()),
    };
    let mut out = Vec::new();
    header.write(&mut out);
    out.extend_from_slice(&name_wire(target));
    out.extend_from_slice(&p.question.qtype.to_be_bytes());
    out.extend_from_slice(&p.question.qclass.to_be_bytes());
    if let Some(e) = p.edns {
        out.push(0);
        out.extend_from_slice(&rr::TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
        out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    out
}

/// A name at `at` (possibly compressed), uncompressed, and where it ends;
/// it must end by `end`.
fn name_at(msg: &[u8], at: usize, end: usize) -> Result<(Vec<u8>, usize), DnsError> {
    let (labels, next) = wire::read_name(msg, at)?;
    if next > end {
        return Err(DnsError::Truncated);
    }
    let mut out = Vec::new();
    wire::write_name(&mut out, &labels);
    Ok((out, next))
}

/// Reads one record at `pos` with its names decompressed.
pub(super) fn read_record(msg: &[u8], pos: usize) -> Result<(Rr, usize), DnsError> {
    let (owner, at) = name_at(msg, pos, msg.len())?;
    let rtype = be16(msg, at).ok_or(DnsError::Truncated)?;
    let class = be16(msg, at + 2).ok_or(DnsError::Truncated)?;
    let ttl = be32(msg, at + 4).ok_or(DnsError::Truncated)?;
    let len = usize::from(be16(msg, at + 8).ok_or(DnsError::Truncated)?);
    let start = at + 10;
    let end = start + len;
    let data = msg.get(start..end).ok_or(DnsError::Truncated)?;
    // Fixed fields before and after the names in the data.
    let (before, names, after) = match rtype {
        TYPE_NS | rr::TYPE_CNAME | rr::TYPE_PTR | TYPE_DNAME => (0, 1, 0),
        TYPE_MX => (2, 1, 0),
        TYPE_SRV => (6, 1, 0),
        TYPE_SOA => (0, 2, 20),
        _ => (0, 0, 0),
    };
    let rdata = if names == 0 {
        data.to_vec()
    } else {
        let mut out = data.get(..before).ok_or(DnsError::Truncated)?.to_vec();
        let mut p = start + before;
        for _ in 0..names {
            let (name, next) = name_at(msg, p, end)?;
            out.extend_from_slice(&name);
            p = next;
        }
        if p + after != end {
            return Err(DnsError::Truncated);
        }
        out.extend_from_slice(&msg[p..end]);
        out
    };
    if rdata.len() > usize::from(u16::MAX) {
        return Err(DnsError::MessageTooLong(rdata.len()));
    }
    Ok((
        Rr {
            owner: Owner::Name(owner),
            rtype,
            class,
            ttl,
            rdata,
        },
        end,
    ))
}
