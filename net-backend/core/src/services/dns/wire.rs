//! DNS wire format pieces shared by the query parser and the answer builder
//! (RFC 1035 §4). Everything reads with bounds checks: guest bytes never
//! cause a panic, and allocation is bounded by the message size.

use super::DnsError;

/// Header length in bytes.
pub(super) const HEADER_LEN: usize = 12;
/// Longest label (RFC 1035 §2.3.4).
pub(super) const MAX_LABEL: usize = 63;
/// Longest name in wire form, length bytes and root included.
pub(super) const MAX_NAME: usize = 255;
/// At most this many compression pointers are followed in one name (each
/// must also point strictly backwards, so loops are impossible anyway).
const MAX_POINTERS: usize = 64;

/// Header flag bits.
pub(super) mod flag {
    pub(crate) const QR: u16 = 0x8000;
    pub(crate) const OPCODE_MASK: u16 = 0x7800;
    pub(crate) const AA: u16 = 0x0400;
    pub(crate) const TC: u16 = 0x0200;
    pub(crate) const RD: u16 = 0x0100;
    pub(crate) const RA: u16 = 0x0080;
    pub(crate) const CD: u16 = 0x0010;
}

/// Record types and classes used here.
pub(super) mod rr {
    pub(crate) const TYPE_A: u16 = 1;
    pub(crate) const TYPE_CNAME: u16 = 5;
    pub(crate) const TYPE_PTR: u16 = 12;
    pub(crate) const TYPE_AAAA: u16 = 28;
    pub(crate) const TYPE_OPT: u16 = 41;
    pub(crate) const TYPE_ANY: u16 = 255;
    pub(crate) const CLASS_IN: u16 = 1;
    pub(crate) const CLASS_ANY: u16 = 255;
}

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    /// Reads the header, or `None` if `msg` is shorter than 12 bytes.
    pub(super) fn parse(msg: &[u8]) -> Option<Self> {
        Some(Self {
            id: be16(msg, 0)?,
            flags: be16(msg, 2)?,
            qdcount: be16(msg, 4)?,
            ancount: be16(msg, 6)?,
            nscount: be16(msg, 8)?,
            arcount: be16(msg, 10)?,
        })
    }

    /// The 4-bit opcode.
    pub(super) fn opcode(&self) -> u8 {
        ((self.flags & flag::OPCODE_MASK) >> 11) as u8
    }

    /// Appends the header in wire form.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        for v in [
            self.id,
            self.flags,
            self.qdcount,
            self.ancount,
            self.nscount,
            self.arcount,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// A big-endian u16 at `at`, if present.
pub(super) fn be16(msg: &[u8], at: usize) -> Option<u16> {
    let b = msg.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// A big-endian u32 at `at`, if present.
pub(super) fn be32(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(be16(msg, at)?) << 16 | u32::from(be16(msg, at.checked_add(2)?)?))
}

/// Reads a possibly compressed name starting at `start`. Returns its labels
/// (slices of `msg`, original case) and the offset just past the name where
/// it started. Pointers must point backwards, before the start of the label
/// run that contains them, and never into the header, so loops cannot
/// happen. The whole name is at most 255 bytes in uncompressed wire form.
/// Labels are at most 63 bytes by construction: a length byte of 64..=255
/// is an extended (0x40, 0x80) label type and rejected.
pub(super) fn read_name(msg: &[u8], start: usize) -> Result<(Vec<&[u8]>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut wire_len = 1; // the root label
    let mut pos = start;
    let mut run_start = start;
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((labels, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let len = usize::from(len);
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                wire_len += 1 + len;
                if wire_len > MAX_NAME {
                    return Err(DnsError::NameTooLong);
                }
                labels.push(label);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                pointers += 1;
                if target >= run_start || target < HEADER_LEN || pointers > MAX_POINTERS {
                    return Err(DnsError::BadPointer(target));
                }
                end.get_or_insert(pos + 2);
                pos = target;
                run_start = target;
            }
            other => return Err(DnsError::BadLabelType(other)),
        }
    }
}

/// Appends a name uncompressed, labels as given (original case kept).
pub(super) fn write_name(out: &mut Vec<u8>, labels: &[&[u8]]) {
    for label in labels {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

/// Presentation form of a name: lowercase ASCII, labels joined by `.`, no
/// trailing dot, the root as "". Bytes that would be ambiguous or unsafe in
/// text (`.`, `\`, space, control and non-ASCII bytes) are escaped as `\.`,
/// `\\` and `\DDD` (RFC 1035 §5.1), so a label containing a dot can never
/// match a local name.
pub(super) fn name_to_string(labels: &[&[u8]]) -> String {
    let mut s = String::new();
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &b in *label {
            match b {
                b'.' | b'\\' => {
                    s.push('\\');
                    s.push(char::from(b));
                }
                _ if b.is_ascii_graphic() => s.push(char::from(b.to_ascii_lowercase())),
                _ => s.push_str(&format!("\\{b:03}")),
            }
        }
    }
    s
}

/// The fixed part of a resource record, as read by [`skip_record`].
pub(super) struct RecordInfo {
    pub name_is_root: bool,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub next: usize,
}

/// Reads the fixed part of a resource record and skips its data.
pub(super) fn skip_record(msg: &[u8], pos: usize) -> Result<RecordInfo, DnsError> {
    let (labels, at) = read_name(msg, pos)?;
    let rtype = be16(msg, at).ok_or(DnsError::Truncated)?;
    let class = be16(msg, at + 2).ok_or(DnsError::Truncated)?;
    let ttl = be32(msg, at + 4).ok_or(DnsError::Truncated)?;
    let rdlen = usize::from(be16(msg, at + 8).ok_or(DnsError::Truncated)?);
    let next = at + 10 + rdlen;
    if next > msg.len() {
        return Err(DnsError::Truncated);
    }
    Ok(RecordInfo {
        name_is_root: labels.is_empty(),
        rtype,
        class,
        ttl,
        next,
    })
}
