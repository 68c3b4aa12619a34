//! The names the gateway answers itself: A, AAAA and CNAME records, set at
//! start (built-in names, `--dns-record`) or at run time (control API).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::{self, rr};
use super::DnsError;

/// Longest local name in text form (255 wire bytes).
const MAX_TEXT_NAME: usize = 253;
/// Most records one set holds (the control API cannot grow it further).
pub const MAX_RECORDS: usize = 4096;
/// Longest CNAME chain followed through local records.
pub(super) const MAX_CHAIN: usize = 8;

/// What a local name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// An alias: lowercase, no trailing dot.
    Cname(String),
}

impl RecordData {
    /// Reads a record value: an IPv4 address is an A record, an IPv6
    /// address an AAAA record, and a host name a CNAME.
    /// A name whose last label is all digits (RFC 1123 §2.1: no such
    /// top-level domain) is refused, being most likely a mistyped address.
    pub fn parse(value: &str) -> Result<RecordData, DnsError> {
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(RecordData::from(ip));
        }
        let name = normalize_name(value, false)?;
        let last = name.rsplit('.').next().unwrap_or_default();
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DnsError::InvalidName {
                name: value.to_owned(),
                reason: "neither an IP address nor a host name (the last label is a number)",
            });
        }
        Ok(RecordData::Cname(name))
    }

    /// The record type as DNS numbers it.
    pub fn rtype(&self) -> u16 {
        match self {
            RecordData::A(_) => rr::TYPE_A,
            RecordData::Aaaa(_) => rr::TYPE_AAAA,
            RecordData::Cname(_) => rr::TYPE_CNAME,
        }
    }

    /// `A`, `AAAA` or `CNAME`.
    pub fn type_name(&self) -> &'static str {
        match self {
            RecordData::A(_) => "A",
            RecordData::Aaaa(_) => "AAAA",
            RecordData::Cname(_) => "CNAME",
        }
    }

    fn address(&self) -> Option<IpAddr> {
        match self {
            RecordData::A(ip) => Some(IpAddr::V4(*ip)),
            RecordData::Aaaa(ip) => Some(IpAddr::V6(*ip)),
            RecordData::Cname(_) => None,
        }
    }
}

impl From<IpAddr> for RecordData {
    fn from(ip: IpAddr) -> RecordData {
        match ip {
            IpAddr::V4(ip) => RecordData::A(ip),
            IpAddr::V6(ip) => RecordData::Aaaa(ip),
        }
    }
}

impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordData::A(ip) => ip.fmt(f),
            RecordData::Aaaa(ip) => ip.fmt(f),
            RecordData::Cname(name) => f.write_str(name),
        }
    }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordSource {
    /// The gateway's own names (`--gateway-name`, `--host-name`,
    /// `--proxy-name`): they cannot be removed at run time.
    Builtin,
    /// `--dns-record` (the command line or `--config`).
    Config,
    /// Added through the control API; gone when the daemon restarts.
    Api,
}

impl RecordSource {
    pub fn name(self) -> &'static str {
        match self {
            RecordSource::Builtin => "builtin",
            RecordSource::Config => "config",
            RecordSource::Api => "api",
        }
    }
}

/// One local record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecord {
    /// Lowercase, no trailing dot; `*.zone` for a wildcard.
    pub name: String,
    pub data: RecordData,
    pub source: RecordSource,
}

/// Names the gateway answers itself (e.g. `host.airlock.internal`). Names
/// are matched case-insensitively and a trailing dot is ignored. A name
/// holds either one CNAME or any number of A and AAAA records. A name
/// starting with `*.` is a wildcard: it answers for every name below its
/// zone that has no records of its own. Insertion order is kept: it orders
/// the answers and the PTR records of an address that has several names,
/// so insert the canonical name first. Meant for hundreds of names, not
/// millions (lookups scan the list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalRecords {
    entries: Vec<LocalRecord>,
}

impl LocalRecords {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the A record of `name` to `ip` (replacing its A records, or a
    /// CNAME), as a configured record. See [`normalize_name`] for what a
    /// name may be.
    pub fn insert(&mut self, name: &str, ip: Ipv4Addr) -> Result<(), DnsError> {
        let name = normalize_name(name, false)?;
        self.entries
            .retain(|e| e.name != name || matches!(e.data, RecordData::Aaaa(_)));
        self.push(name, RecordData::A(ip), RecordSource::Config)
    }

    /// Adds a record; `Ok(false)` if exactly that record exists already. A
    /// CNAME cannot share its name with any other record (RFC 1034 §3.6.2).
    pub fn add(
        &mut self,
        name: &str,
        data: RecordData,
        source: RecordSource,
    ) -> Result<bool, DnsError> {
        let name = normalize_name(name, true)?;
        let mut same_name = self.entries.iter().filter(|e| e.name == name);
        if same_name.clone().any(|e| e.data == data) {
            return Ok(false);
        }
        let cname = matches!(data, RecordData::Cname(_));
        if same_name.any(|e| cname || matches!(e.data, RecordData::Cname(_))) {
            return Err(DnsError::CnameConflict(name));
        }
        self.push(name, data, source)?;
        Ok(true)
    }

    fn push(
        &mut self,
        name: String,
        data: RecordData,
        source: RecordSource,
    ) -> Result<(), DnsError> {
        if self.entries.len() >= MAX_RECORDS {
            return Err(DnsError::TooManyRecords(MAX_RECORDS));
        }
        self.entries.push(LocalRecord { name, data, source });
        Ok(())
    }

    /// Removes the records of `name` (only those equal to `data`, if
    /// given) and returns them.
    pub fn remove(&mut self, name: &str, data: Option<&RecordData>) -> Vec<LocalRecord> {
        let name = trim_dot(name).to_ascii_lowercase();
        let (gone, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.name == name && data.is_none_or(|d| *d == e.data));
        self.entries = kept;
        gone
    }

    /// The first A record of `name` (exact name, no wildcards).
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        let name = trim_dot(name);
        self.entries
            .iter()
            .filter(|e| e.name.eq_ignore_ascii_case(name))
            .find_map(|e| match e.data {
                RecordData::A(ip) => Some(ip),
                _ => None,
            })
    }

    /// The records answering for `name` (lowercase, no trailing dot): its
    /// own, or else those of the closest wildcard above it. Empty when the
    /// name is not local.
    pub fn find(&self, name: &str) -> Vec<&RecordData> {
        let own: Vec<&RecordData> = self
            .entries
            .iter()
            .filter(|e| e.name == name)
            .map(|e| &e.data)
            .collect();
        if !own.is_empty() {
            return own;
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            let wild: Vec<&RecordData> = self
                .entries
                .iter()
                .filter(|e| e.name.strip_prefix("*.") == Some(parent))
                .map(|e| &e.data)
                .collect();
            if !wild.is_empty() {
                return wild;
            }
            rest = parent;
        }
        Vec::new()
    }

    /// The names (not wildcards) with an address record for `ip`, in
    /// insertion order.
    pub fn names_for(&self, ip: IpAddr) -> impl Iterator<Item = &str> + '_ {
        self.entries
            .iter()
            .filter(move |e| e.data.address() == Some(ip) && !e.name.starts_with("*."))
            .map(|e| e.name.as_str())
    }

    /// Every record, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &LocalRecord> + '_ {
        self.entries.iter()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Strips one trailing dot.
pub(super) fn trim_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Validates a host name and returns it lowercase without a trailing dot:
/// labels of 1–63 letters, digits, `-` or `_`, at most 253 characters, an
/// optional trailing dot. With `wildcard`, the first label may be `*`.
pub fn normalize_name(name: &str, wildcard: bool) -> Result<String, DnsError> {
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
    let body = match trimmed.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => trimmed,
    };
    for label in body.split('.') {
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
            return Err(invalid(if wildcard {
                "only letters, digits, '-', '_' and a leading '*.' are allowed"
            } else {
                "only letters, digits, '-' and '_' are allowed"
            }));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}
