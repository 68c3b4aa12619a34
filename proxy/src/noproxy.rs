//! Host patterns with curl's `NO_PROXY` semantics, used for `--no-proxy` /
//! `NO_PROXY` and for the `--allow` / `--deny` policy rules.
//!
//! Pure code: no I/O, no DNS. The rules follow curl's `lib/noproxy.c`
//! (`Curl_check_noproxy`), which is what `CURLOPT_NOPROXY(3)` documents:
//!
//! - the list is split on commas; blanks (space, tab) around an entry are
//!   skipped, and — as in curl — a blank that is not followed by a comma ends
//!   the list (`"a.com b.com"` only holds `a.com`);
//! - the whole list being exactly `*` matches every host; a `*` entry inside a
//!   longer list matches nothing;
//! - a name entry matches that host and every host under it on a label
//!   boundary: `example.com` matches `example.com` and `www.example.com`, not
//!   `notexample.com`; one leading and one trailing dot are ignored
//!   (`.example.com` ≡ `example.com`); comparison ignores ASCII case;
//! - an IP entry (`10.1.2.3`, `::1`, IPv6 without brackets) or CIDR entry
//!   (`10.0.0.0/8`, `fd00::/8`) matches only hosts written as IP addresses,
//!   never names, and never the addresses a name resolves to;
//! - ports are not part of matching: a request to `example.com:8080` is
//!   matched as `example.com`, and an entry carrying a port
//!   (`example.com:8080`) never matches anything.
//!
//! Where this deliberately differs from curl (see README): a CIDR prefix of
//! `/0` matches every address of its family (curl treats `/0` as "exact
//! address"); IPv6 prefixes whose length is not a multiple of 8 are compared
//! correctly; IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) and the numeric
//! IPv4 spellings the resolver accepts (`127.1`, `0x7f.0.0.1`, `2130706433`)
//! are normalised to the IPv4 address they denote, in hosts and entries, so
//! a policy on `127.0.0.0/8` cannot be side-stepped by spelling the address
//! differently; for the policy, the unspecified addresses (`0.0.0.0/8`,
//! `::`) also match as the loopback address a connection to them reaches
//! ([`Host::loopback_alias`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A request's host, normalised: a lower-case name without a trailing dot,
/// or an IP address (IPv4-mapped IPv6 folded to IPv4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("empty host name")]
    Empty,
    #[error("invalid IPv6 address {0:?}")]
    BadIpv6(String),
    #[error("invalid character {1:?} in host name {0:?}")]
    BadChar(String, char),
    #[error("host name {0:?} is too long")]
    TooLong(String),
    #[error("host name {0:?} has an empty label or one longer than 63 characters")]
    BadLabel(String),
}

/// Longest host name accepted (DNS limit is 253; leave room for a dot).
const MAX_NAME_LEN: usize = 255;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

impl Host {
    /// Parses a host as written in a request target or URL: a name, an IPv4
    /// address in any spelling `inet_aton(3)` accepts, or `[IPv6]`.
    pub fn parse(text: &str) -> Result<Host, HostError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::BadIpv6(text.to_owned()))?;
            let v6: Ipv6Addr = inner
                .parse()
                .map_err(|_| HostError::BadIpv6(text.to_owned()))?;
            return Ok(Host::Ip(canonical_ip(IpAddr::V6(v6))));
        }
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        if trimmed.is_empty() {
            return Err(HostError::Empty);
        }
        if trimmed.len() > MAX_NAME_LEN {
            return Err(HostError::TooLong(text.chars().take(64).collect()));
        }
        if let Some(v4) = parse_ipv4_loose(trimmed) {
            return Ok(Host::Ip(IpAddr::V4(v4)));
        }
        if let Some(bad) = trimmed
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(HostError::BadChar(text.to_owned(), bad));
        }
        if trimmed
            .split('.')
            .any(|label| label.is_empty() || label.len() > MAX_LABEL_LEN)
        {
            return Err(HostError::BadLabel(text.to_owned()));
        }
        Ok(Host::Name(trimmed.to_ascii_lowercase()))
    }

    /// Parses a bare host as it appears in configuration, where IPv6
    /// addresses may be written without brackets.
    pub fn parse_bare(text: &str) -> Result<Host, HostError> {
        match text.parse::<Ipv6Addr>() {
            Ok(v6) => Ok(Host::Ip(canonical_ip(IpAddr::V6(v6)))),
            Err(_) => Host::parse(text),
        }
    }
}

impl Host {
    /// The loopback address a connection to this host reaches, when that is
    /// not the host itself: Linux connects `0.0.0.0` (and, for want of a
    /// route, the rest of `0.0.0.0/8` counts too) to `127.0.0.1`, and `::`
    /// to `::1`. The policy matches such a host as that loopback address
    /// too, so `--deny 127.0.0.0/8,::1` cannot be bypassed through them.
    pub fn loopback_alias(&self) -> Option<Host> {
        match self {
            Host::Ip(IpAddr::V4(v4)) if v4.octets()[0] == 0 => {
                Some(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)))
            }
            Host::Ip(IpAddr::V6(v6)) if v6.is_unspecified() => {
                Some(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Host {
    /// Bracketed IPv6, as in an authority (`[::1]`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) → IPv4; everything else unchanged.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses the IPv4 spellings `inet_aton(3)` (and so glibc's resolver)
/// accepts: one to four parts, each decimal, octal (leading `0`) or hex
/// (`0x`), the last part filling the remaining bytes (`127.1`, `2130706433`).
pub fn parse_ipv4_loose(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut nums = [0u64; 4];
    for (slot, part) in nums.iter_mut().zip(&parts) {
        *slot = parse_aton_number(part)?;
    }
    let (&last, init) = nums[..parts.len()].split_last()?;
    if init.iter().any(|&x| x > 255) {
        return None;
    }
    let last_bits = 8 * (4 - init.len() as u32);
    if last >= (1u64 << last_bits) {
        return None;
    }
    let mut value: u64 = 0;
    for &x in init {
        value = (value << 8) | x;
    }
    value = (value << last_bits) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_aton_number(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 12 {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is zero for inet_aton.
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// One entry of a pattern list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A name: matches itself and every name below it.
    Domain(String),
    /// An address with a prefix length (full length for a plain address).
    Net { addr: IpAddr, bits: u8 },
}

/// An entry curl would accept but that can never match anything; kept so the
/// configuration can warn about (NO_PROXY) or reject (policy) it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InertEntry {
    pub entry: String,
    pub why: &'static str,
}

impl fmt::Display for InertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} never matches: {}", self.entry, self.why)
    }
}

/// A parsed `NO_PROXY`-style list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternList {
    text: String,
    all: bool,
    entries: Vec<Entry>,
    inert: Vec<InertEntry>,
    /// Text after a blank not followed by a comma, which curl ignores.
    ignored_tail: Option<String>,
}

impl PatternList {
    /// The empty list: matches nothing.
    pub fn empty() -> Self {
        PatternList::parse("")
    }

    /// Parses `text` the way curl reads `NO_PROXY`. Never fails: entries
    /// that cannot match are reported by [`PatternList::inert`].
    pub fn parse(text: &str) -> Self {
        let mut list = PatternList {
            text: text.to_owned(),
            all: text == "*",
            entries: Vec::new(),
            inert: Vec::new(),
            ignored_tail: None,
        };
        if list.all {
            return list;
        }
        let is_blank = |c: char| c == ' ' || c == '\t';
        let mut rest = text;
        while !rest.is_empty() {
            rest = rest.trim_start_matches(is_blank);
            let end = rest
                .find(|c: char| is_blank(c) || c == ',')
                .unwrap_or(rest.len());
            let (token, after) = rest.split_at(end);
            if !token.is_empty() {
                match classify(token) {
                    Ok(entry) => list.entries.push(entry),
                    Err(why) => list.inert.push(InertEntry {
                        entry: token.to_owned(),
                        why,
                    }),
                }
            }
            rest = after.trim_start_matches(is_blank);
            if rest.is_empty() {
                break;
            }
            if !rest.starts_with(',') {
                list.ignored_tail = Some(rest.to_owned());
                break;
            }
            rest = rest.trim_start_matches(',');
        }
        list
    }

    /// The text this list was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the list matches every host (`*`).
    pub fn matches_all(&self) -> bool {
        self.all
    }

    /// Whether the list has no entry that can match.
    pub fn is_empty(&self) -> bool {
        !self.all && self.entries.is_empty()
    }

    /// Entries that can never match.
    pub fn inert(&self) -> &[InertEntry] {
        &self.inert
    }

    /// Text curl would ignore (after a blank not followed by a comma).
    pub fn ignored_tail(&self) -> Option<&str> {
        self.ignored_tail.as_deref()
    }

    /// Whether `host` matches the list.
    pub fn matches(&self, host: &Host) -> bool {
        self.all || self.entries.iter().any(|e| entry_matches(e, host))
    }
}

fn entry_matches(entry: &Entry, host: &Host) -> bool {
    match (entry, host) {
        (Entry::Domain(d), Host::Name(n)) => {
            n == d
                || (n.len() > d.len()
                    && n.ends_with(d.as_str())
                    && n.as_bytes()[n.len() - d.len() - 1] == b'.')
        }
        (Entry::Net { addr, bits }, Host::Ip(ip)) => prefix_match(*addr, *bits, *ip),
        _ => false,
    }
}

fn prefix_match(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            (u32::from(n) ^ u32::from(a)) & mask == 0
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            (u128::from(n) ^ u128::from(a)) & mask == 0
        }
        _ => false,
    }
}

/// Turns one token into an entry, or says why it can never match.
fn classify(token: &str) -> Result<Entry, &'static str> {
    if token == "*" {
        return Err("`*` only means \"every host\" when it is the whole list");
    }
    let (addr_text, bits_text) = match token.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (token, None),
    };
    let ip = if let Ok(v6) = addr_text.parse::<Ipv6Addr>() {
        Some(IpAddr::V6(v6))
    } else {
        parse_ipv4_loose(addr_text).map(IpAddr::V4)
    };
    if let Some(ip) = ip {
        let full: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits_text {
            None => full,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= full)
                .ok_or("the prefix length after `/` is not a number within the address size")?,
        };
        // Fold IPv4-mapped networks (::ffff:0:0/96 and below) to IPv4.
        if let IpAddr::V6(v6) = ip {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), bits >= 96) {
                return Ok(Entry::Net {
                    addr: IpAddr::V4(v4),
                    bits: bits - 96,
                });
            }
        }
        return Ok(Entry::Net { addr: ip, bits });
    }
    if bits_text.is_some() {
        return Err("`/` is only meaningful after an IP address (CIDR)");
    }
    if token.starts_with('[') {
        return Err("write IPv6 addresses without brackets (and without a port)");
    }
    if token.contains(':') {
        return Err("ports are not supported (curl ignores entries with a port)");
    }
    if token.starts_with("*.") {
        return Err("wildcards are not supported: `.example.com` (or `example.com`) already covers every name under it");
    }
    let name = token.strip_suffix('.').unwrap_or(token);
    let name = name.strip_prefix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('*') {
        return Err("`*` is only meaningful as the whole list");
    }
    Ok(Entry::Domain(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    /// (NO_PROXY, host, bypass?) — derived from CURLOPT_NOPROXY(3) and
    /// curl's lib/noproxy.c; comments name the documented behaviour.
    const CURL_TABLE: &[(&str, &str, bool)] = &[
        // "the only wildcard is a single * character, which matches all hosts"
        ("*", "example.com", true),
        ("*", "10.0.0.1", true),
        ("*", "[::1]", true),
        // "*" inside a list is an ordinary (never matching) name in curl
        ("example.org,*", "example.com", false),
        (" *", "example.com", false),
        // "example.com would match example.com, example.com:80, and
        //  www.example.com, but not www.notanexample.com or
        //  example.com.othertld"
        ("example.com", "example.com", true),
        ("example.com", "www.example.com", true),
        ("example.com", "a.b.example.com", true),
        ("example.com", "www.notanexample.com", false),
        ("example.com", "notanexample.com", false),
        ("example.com", "example.com.othertld", false),
        ("example.com", "com", false),
        // leading dot: ".example.com" switches off www. and foo. — and, as
        // curl strips the dot, example.com itself
        (".example.com", "www.example.com", true),
        (".example.com", "foo.example.com", true),
        (".example.com", "example.com", true),
        (".example.com", "xexample.com", false),
        // trailing dots ignored on both sides
        ("example.com.", "www.example.com", true),
        ("example.com", "www.example.com.", true),
        // case-insensitive
        ("Example.COM", "WWW.example.com", true),
        // comma separated, blanks around entries skipped, empty entries
        ("foo.org, example.com", "example.com", true),
        ("foo.org ,example.com", "example.com", true),
        ("foo.org,,example.com,", "example.com", true),
        ("\tfoo.org,\texample.com\t", "example.com", true),
        // a blank not followed by a comma ends the list
        ("foo.org example.com", "example.com", false),
        ("foo.org example.com", "foo.org", true),
        // IPv6 without brackets; the host may be bracketed
        ("example.com,::1,localhost", "[::1]", true),
        ("example.com,::1,localhost", "localhost", true),
        ("::1", "[::2]", false),
        // CIDR (since 7.86.0): "192.168.0.0/16 would match all addresses
        // starting with 192.168"
        ("192.168.0.0/16", "192.168.1.2", true),
        ("192.168.0.0/16", "192.169.1.2", false),
        ("10.0.0.0/8", "10.255.255.255", true),
        ("10.0.0.0/8", "11.0.0.0", false),
        ("10.1.2.3", "10.1.2.3", true),
        ("10.1.2.3", "10.1.2.4", false),
        ("10.1.2.3/32", "10.1.2.3", true),
        ("fd00::/8", "[fd12:3456::1]", true),
        ("fd00::/8", "[fe80::1]", false),
        ("::1/128", "[::1]", true),
        ("2001:db8::/33", "[2001:db8:7fff::1]", true),
        ("2001:db8::/33", "[2001:db8:8000::1]", false),
        // IP entries never match names and name entries never match IPs
        ("10.0.0.0/8", "ten.example", false),
        ("127.0.0.1", "localhost", false),
        ("localhost", "127.0.0.1", false),
        ("0.0.1", "127.0.0.1", false),
        // a suffix of a dotted quad is not a domain match
        ("0.1", "10.0.0.1", false),
        // prefix lengths beyond the address size never match
        ("10.0.0.0/33", "10.0.0.0", false),
        ("::/129", "[::]", false),
        // ports: a request port never matters; an entry with one never matches
        ("example.com:8080", "example.com", false),
        ("127.0.0.1:8080", "127.0.0.1", false),
        ("[::1]", "[::1]", false),
        // the empty list matches nothing
        ("", "example.com", false),
        (",, ,", "example.com", false),
    ];

    #[test]
    fn curl_documented_behaviour() {
        for &(list, h, want) in CURL_TABLE {
            let got = PatternList::parse(list).matches(&host(h));
            assert_eq!(got, want, "NO_PROXY={list:?} host={h:?}");
        }
    }

    /// Deliberate differences from curl (documented in the README).
    #[test]
    fn airlock_differences_from_curl() {
        // /0 covers the whole family (curl: exact match on the address).
        assert!(PatternList::parse("0.0.0.0/0").matches(&host("203.0.113.9")));
        assert!(PatternList::parse("::/0").matches(&host("[2001:db8::1]")));
        assert!(!PatternList::parse("0.0.0.0/0").matches(&host("[2001:db8::1]")));
        // Numeric IPv4 spellings and IPv4-mapped IPv6 are the same address.
        let lo = PatternList::parse("127.0.0.0/8");
        for h in [
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "127.0.0.1.",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(lo.matches(&host(h)), "{h}");
        }
        assert!(PatternList::parse("::ffff:10.0.0.0/104").matches(&host("10.9.9.9")));
    }

    #[test]
    fn inert_entries_are_reported() {
        let l = PatternList::parse(
            "example.com:443, [::1], *.example.org, 10.0.0.0/x, *, ., good.example",
        );
        let inert: Vec<&str> = l.inert().iter().map(|i| i.entry.as_str()).collect();
        assert_eq!(
            inert,
            [
                "example.com:443",
                "[::1]",
                "*.example.org",
                "10.0.0.0/x",
                "*",
                "."
            ]
        );
        assert!(l.matches(&host("good.example")));
        assert!(!l.is_empty());
        let tail = PatternList::parse("a.example b.example, c.example");
        assert_eq!(tail.ignored_tail(), Some("b.example, c.example"));
        assert!(PatternList::parse("").is_empty());
        assert!(!PatternList::parse("*").is_empty());
        assert!(PatternList::parse("*").matches_all());
    }

    #[test]
    fn host_parsing_normalises() {
        assert_eq!(host("Example.COM."), Host::Name("example.com".into()));
        assert_eq!(host("127.1"), Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(host("2130706433"), Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(host("0x7f000001"), Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(host("010.0.0.1"), Host::Ip("8.0.0.1".parse().unwrap()));
        assert_eq!(host("1.2.65535"), Host::Ip("1.2.255.255".parse().unwrap()));
        assert_eq!(host("[::1]"), Host::Ip("::1".parse().unwrap()));
        assert_eq!(
            host("[::ffff:1.2.3.4]"),
            Host::Ip("1.2.3.4".parse().unwrap())
        );
        // not addresses: names
        assert_eq!(host("1.2.3.256"), Host::Name("1.2.3.256".into()));
        assert_eq!(host("1.2.3.4.5"), Host::Name("1.2.3.4.5".into()));
        assert_eq!(host("09.1.1.1"), Host::Name("09.1.1.1".into()));
        assert_eq!(host("deadbeef"), Host::Name("deadbeef".into()));
        assert_eq!(
            host("under_score.example"),
            Host::Name("under_score.example".into())
        );
        // errors
        assert_eq!(Host::parse(""), Err(HostError::Empty));
        assert_eq!(Host::parse("."), Err(HostError::Empty));
        for bad in [
            "..",
            ".example.com",
            "a..b",
            &format!("{}.com", "x".repeat(64)),
        ] {
            assert!(
                matches!(Host::parse(bad), Err(HostError::BadLabel(_))),
                "{bad}"
            );
        }
        assert!(matches!(Host::parse("[::1"), Err(HostError::BadIpv6(_))));
        assert!(matches!(Host::parse("[zz]"), Err(HostError::BadIpv6(_))));
        assert!(matches!(
            Host::parse("a%2eb"),
            Err(HostError::BadChar(_, '%'))
        ));
        assert!(matches!(
            Host::parse("a b"),
            Err(HostError::BadChar(_, ' '))
        ));
        assert!(matches!(
            Host::parse(&"a".repeat(300)),
            Err(HostError::TooLong(_))
        ));
        assert_eq!(
            Host::parse_bare("::1"),
            Ok(Host::Ip("::1".parse().unwrap()))
        );
        assert_eq!(host("[::1]").to_string(), "[::1]");
        assert_eq!(host("10.0.0.1").to_string(), "10.0.0.1");
    }

    /// Seeded random inputs (a poor man's fuzzer, deterministic): parsing
    /// and matching guest-supplied hosts never panics, and whatever parses
    /// prints back to something that parses to the same host.
    #[test]
    fn random_hosts_never_panic() {
        const ALPHABET: &[u8] = b"0123456789abcdefxX.:[]%*/-_ ,\t\xff@";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let lists = [
            PatternList::parse("*"),
            PatternList::parse("example.com,10.0.0.0/8,::1/128,.a.b"),
            PatternList::parse("0.0.0.0/0,::/0"),
        ];
        for _ in 0..50_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let random_list = PatternList::parse(&text);
            if let Ok(h) = Host::parse(&text) {
                for l in &lists {
                    l.matches(&h);
                }
                random_list.matches(&h);
                assert_eq!(Host::parse(&h.to_string()).as_ref(), Ok(&h), "{text:?}");
            }
            if let Ok(authority) = text.parse::<http::uri::Authority>() {
                let _ = crate::target::Target::from_authority(&authority, None);
            }
        }
    }

    #[test]
    fn loose_ipv4_rejects_overflow() {
        assert_eq!(parse_ipv4_loose("4294967296"), None);
        assert_eq!(parse_ipv4_loose("4294967295"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(parse_ipv4_loose("256.1"), None);
        assert_eq!(parse_ipv4_loose("1.16777216"), None);
        assert_eq!(parse_ipv4_loose("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4_loose(""), None);
        assert_eq!(parse_ipv4_loose("1..2"), None);
        assert_eq!(parse_ipv4_loose("99999999999999999999"), None);
    }
}
