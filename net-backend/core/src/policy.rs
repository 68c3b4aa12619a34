//! Egress policy: which destinations the guest may open flows to.
//!
//! Rules are evaluated in order; the first that matches decides, and the
//! default (`--egress allow|deny`) applies when none does. A rule names an
//! IPv4 or IPv6 network, optionally ports and a protocol; an IPv6 network
//! with ports is written in brackets:
//!
//! ```text
//! 10.0.0.0/8               any protocol, any port
//! 192.168.1.10:443         one address, one port (TCP or UDP)
//! 0.0.0.0/0:53/udp         UDP to port 53 anywhere (IPv4)
//! 172.16.0.0/12:8000-8999/tcp
//! 203.0.113.7/icmp         ICMP echo to that address
//! 2001:db8::/32            an IPv6 network
//! [2001:db8::1]:443/tcp    one IPv6 address, one port
//! [::/0]:53/udp            UDP to port 53 anywhere (IPv6)
//! ```
//!
//! An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address it
//! maps, in rules and in decisions alike: an IPv4 rule cannot be got round
//! by naming its address as IPv6.
//!
//! Rules apply to every flow the guest starts except the gateway's own
//! services (DHCP, DNS): NAT destinations, the host alias and the proxy
//! alias alike, as the guest addresses them. The gateway never opens a flow
//! to `0.0.0.0/8`, loopback, multicast or the broadcast address, nor to
//! IPv6 loopback, unspecified, IPv4-compatible or -mapped, link-local or
//! multicast addresses: the host's loopback is reached only through the
//! host alias (`--host-ip`), whose flows rules on `127.0.0.0/8` or `::1`
//! would never see. A rule that lies wholly in those blocks is therefore
//! refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub use airlock_api::Proto;

#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(PolicyError::Action(s.to_owned())),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0:?} is not a network (expected e.g. 10.0.0.0/8, 192.168.1.10, 2001:db8::/32 or [2001:db8::1])")]
    Network(String),
    #[error("{0:?} is not a port or port range (expected e.g. 443 or 8000-8999)")]
    Ports(String),
    #[error("ports make no sense with ICMP in {0:?}")]
    IcmpPorts(String),
    #[error("unknown protocol {0:?} (tcp, udp or icmp)")]
    Proto(String),
    #[error("unknown action {0:?} (allow or deny)")]
    Action(String),
    #[error("invalid egress rule at {file}:{line}")]
    File {
        file: String,
        line: usize,
        #[source]
        source: Box<PolicyError>,
    },
    #[error(
        "{file}:{line}: expected `allow RULE`, `deny RULE` or `default allow|deny`, got {text:?}"
    )]
    Syntax {
        file: String,
        line: usize,
        text: String,
    },
    #[error("cannot read egress rules from {0}")]
    Read(String, #[source] std::sync::Arc<std::io::Error>),
    #[error("{text:?} can never match: the guest cannot open flows to {block} ({what}){hint}")]
    Unreachable {
        text: String,
        block: &'static str,
        what: &'static str,
        hint: &'static str,
    },
}

/// IPv4 destinations the gateway never opens a flow to (`is_routable`), as
/// (network, prefix, written, what, hint).
const UNREACHABLE: [(u32, u8, &str, &str, &str); 4] = [
    (0x0000_0000, 8, "0.0.0.0/8", "this network", HOST_ALIAS_HINT),
    (0x7f00_0000, 8, "127.0.0.0/8", "loopback", HOST_ALIAS_HINT),
    (0xe000_0000, 4, "224.0.0.0/4", "multicast", ""),
    (0xffff_ffff, 32, "255.255.255.255", "broadcast", ""),
];
/// The same for IPv6 (`is_routable6`; IPv4-mapped rules are IPv4 ones).
const UNREACHABLE6: [(u128, u8, &str, &str, &str); 4] = [
    (1, 128, "::1", "loopback", HOST_ALIAS_HINT),
    (
        0,
        96,
        "::/96",
        "unspecified and IPv4-compatible",
        HOST_ALIAS_HINT,
    ),
    (0xfe80 << 112, 10, "fe80::/10", "link-local", ""),
    (0xff00 << 112, 8, "ff00::/8", "multicast", ""),
];
const HOST_ALIAS_HINT: &str = "; the host's loopback is reached only through the host alias \
     (host.airlock.internal, --host-ip): write the rule for that address, or use --no-host-alias";

/// The block (written, what, hint) a rule's network lies wholly in, if
/// the gateway never opens a flow there: such a rule could never match.
fn unreachable(net: IpAddr, prefix: u8) -> Option<(&'static str, &'static str, &'static str)> {
    match net {
        IpAddr::V4(v4) => {
            let (first, last) = (u32::from(v4), u32::from(v4) | !mask(prefix));
            UNREACHABLE
                .iter()
                .find(|(block, bits, ..)| *block <= first && last <= block | !mask(*bits))
                .map(|&(_, _, written, what, hint)| (written, what, hint))
        }
        IpAddr::V6(v6) => {
            let (first, last) = (u128::from(v6), u128::from(v6) | !mask6(prefix));
            UNREACHABLE6
                .iter()
                .find(|(block, bits, ..)| *block <= first && last <= block | !mask6(*bits))
                .map(|&(_, _, written, what, hint)| (written, what, hint))
        }
    }
}

/// One `--allow`/`--deny` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// The network (its host bits cleared); an IPv4-mapped IPv6 network
    /// is stored as the IPv4 one.
    pub net: IpAddr,
    pub prefix: u8,
    pub ports: Option<(u16, u16)>,
    pub proto: Option<Proto>,
    /// The rule as written, for messages and the audit log.
    pub text: String,
}

impl Rule {
    pub fn parse(action: Action, text: &str) -> Result<Rule, PolicyError> {
        let mut rest = text.trim();
        let mut proto = None;
        for (suffix, p) in [
            ("/tcp", Proto::Tcp),
            ("/udp", Proto::Udp),
            ("/icmp", Proto::Icmp),
        ] {
            if let Some(r) = rest.strip_suffix(suffix) {
                proto = Some(p);
                rest = r;
            }
        }
        // `[NET]:PORTS` (IPv6), `NET:PORTS` (IPv4), or a bare network.
        let (net_part, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let (net, after) = inner
                .split_once(']')
                .ok_or_else(|| PolicyError::Network(rest.to_owned()))?;
            match after {
                "" => (net, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (net, Some(parse_ports(p)?)),
                    None => return Err(PolicyError::Network(rest.to_owned())),
                },
            }
        } else if rest.matches(':').count() > 1 {
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((n, p)) => (n, Some(parse_ports(p)?)),
                None => (rest, None),
            }
        };
        if ports.is_some() && proto == Some(Proto::Icmp) {
            return Err(PolicyError::IcmpPorts(text.to_owned()));
        }
        let bad = || PolicyError::Network(net_part.to_owned());
        let (addr, prefix) = match net_part.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (net_part, None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        let (net, prefix) = canonical_net(addr, prefix);
        if let Some((block, what, hint)) = unreachable(net, prefix) {
            return Err(PolicyError::Unreachable {
                text: text.trim().to_owned(),
                block,
                what,
                hint,
            });
        }
        Ok(Rule {
            action,
            net,
            prefix,
            ports,
            proto,
            text: text.trim().to_owned(),
        })
    }

    pub fn matches(&self, proto: Proto, dst: IpAddr, port: Option<u16>) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        if !in_net(dst.to_canonical(), self.net, self.prefix) {
            return false;
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => (lo..=hi).contains(&p),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.text)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A network with its host bits cleared; an IPv4-mapped IPv6 network
/// (`::ffff:0:0/96` and longer) becomes the IPv4 network it maps.
fn canonical_net(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
            let v4 = Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32);
            canonical_net(IpAddr::V4(v4), prefix - 96)
        }
        IpAddr::V4(v4) => (Ipv4Addr::from(u32::from(v4) & mask(prefix)).into(), prefix),
        IpAddr::V6(v6) => (
            Ipv6Addr::from(u128::from(v6) & mask6(prefix)).into(),
            prefix,
        ),
    }
}

/// Whether `a` is in `net`/`prefix` (of the same family).
fn in_net(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => u32::from(a) & mask(prefix) == u32::from(n),
        (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a) & mask6(prefix) == u128::from(n),
        _ => false,
    }
}

fn parse_ports(s: &str) -> Result<(u16, u16), PolicyError> {
    let bad = || PolicyError::Ports(s.to_owned());
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = s.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// What the policy said about a flow, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The rule that matched (`None`: the default applied).
    pub rule: Option<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }

    /// `"allow"`, `"deny (rule 2: deny 10.0.0.0/8)"`, `"deny (default)"`.
    pub fn describe(&self) -> String {
        match &self.rule {
            Some(r) => format!("{} ({r})", self.action),
            None => format!("{} (default)", self.action),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub default: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }
}

impl Policy {
    /// The decision for a flow to `dst` (an IPv4-mapped IPv6 address is
    /// decided as the IPv4 address it maps).
    pub fn decide(&self, proto: Proto, dst: IpAddr, port: Option<u16>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.matches(proto, dst, port) {
                return Decision {
                    action: r.action,
                    rule: Some(format!("rule {}: {r}", i + 1)),
                };
            }
        }
        Decision {
            action: self.default,
            rule: None,
        }
    }

    /// Parses a rules file: one `allow RULE`, `deny RULE` or
    /// `default allow|deny` per line; `#` starts a comment.
    pub fn parse_file(name: &str, text: &str) -> Result<(Vec<Rule>, Option<Action>), PolicyError> {
        let mut rules = Vec::new();
        let mut default = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let wrap = |source: PolicyError| PolicyError::File {
                file: name.to_owned(),
                line: i + 1,
                source: Box::new(source),
            };
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match word {
                "allow" | "deny" => {
                    let action = word.parse().map_err(wrap)?;
                    rules.push(Rule::parse(action, rest).map_err(wrap)?);
                }
                "default" => default = Some(rest.trim().parse().map_err(wrap)?),
                _ => {
                    return Err(PolicyError::Syntax {
                        file: name.to_owned(),
                        line: i + 1,
                        text: line.to_owned(),
                    })
                }
            }
        }
        Ok((rules, default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rule_syntax() {
        let r = Rule::parse(Action::Deny, "10.1.2.3/8").unwrap();
        assert_eq!(
            (r.net, r.prefix, r.ports, r.proto),
            (ip("10.0.0.0"), 8, None, None)
        );
        let r = Rule::parse(Action::Allow, "192.168.1.10:443").unwrap();
        assert_eq!((r.prefix, r.ports), (32, Some((443, 443))));
        let r = Rule::parse(Action::Allow, "0.0.0.0/0:53/udp").unwrap();
        assert_eq!(
            (r.prefix, r.ports, r.proto),
            (0, Some((53, 53)), Some(Proto::Udp))
        );
        let r = Rule::parse(Action::Allow, "172.16.0.0/12:8000-8999/tcp").unwrap();
        assert_eq!(r.ports, Some((8000, 8999)));
        let r = Rule::parse(Action::Deny, "203.0.113.7/icmp").unwrap();
        assert_eq!(r.proto, Some(Proto::Icmp));
        let r = Rule::parse(Action::Deny, "2001:db8:1:2::7/32").unwrap();
        assert_eq!((r.net, r.prefix, r.ports), (ip("2001:db8::"), 32, None));
        let r = Rule::parse(Action::Allow, "[2001:db8::1]:443/tcp").unwrap();
        assert_eq!(
            (r.net, r.prefix, r.ports, r.proto),
            (ip("2001:db8::1"), 128, Some((443, 443)), Some(Proto::Tcp))
        );
        let r = Rule::parse(Action::Allow, "[::/0]:53-54/udp").unwrap();
        assert_eq!((r.prefix, r.ports), (0, Some((53, 54))));
        let r = Rule::parse(Action::Deny, "fd00::/8/icmp").unwrap();
        assert_eq!((r.net, r.prefix), (ip("fd00::"), 8));
        // A v4-mapped network is the IPv4 network.
        let r = Rule::parse(Action::Deny, "::ffff:10.1.2.3/104").unwrap();
        assert_eq!((r.net, r.prefix), (ip("10.0.0.0"), 8));
        for bad in [
            "",
            "10.0.0.0/33",
            "host.example",
            "1.2.3.4:0",
            "1.2.3.4:9-8",
            "1.2.3.4:x",
            "1.2.3.4:80/icmp",
            "1.2.3.4/sctp",
            "2001:db8::/129",
            "[2001:db8::1]443",
            "[2001:db8::1:443",
            "[::1]:0",
            "2001:db8::x",
        ] {
            assert!(Rule::parse(Action::Deny, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rules_the_gateway_can_never_see_are_refused() {
        for (rule, block) in [
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("127.0.0.1:8080/tcp", "127.0.0.0/8"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("0.0.0.0/8", "0.0.0.0/8"),
            ("224.0.0.0/4", "224.0.0.0/4"),
            ("239.1.2.3/udp", "224.0.0.0/4"),
            ("255.255.255.255", "255.255.255.255"),
            ("::1", "::1"),
            ("[::1]:22/tcp", "::1"),
            ("::", "::/96"),
            ("::/96", "::/96"),
            ("::7f00:1", "::/96"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("::ffff:0:0/104", "0.0.0.0/8"),
            ("fe80::/64", "fe80::/10"),
            ("ff02::1", "ff00::/8"),
        ] {
            match Rule::parse(Action::Deny, rule) {
                Err(e @ PolicyError::Unreachable { block: b, .. }) if b == block => {
                    assert!(e.to_string().contains("can never match"), "{e}")
                }
                other => panic!("{rule}: {other:?}"),
            }
        }
        let e = Rule::parse(Action::Deny, "127.0.0.1").unwrap_err();
        assert!(e.to_string().contains("--host-ip"), "{e}");
        // Rules that also cover reachable addresses stay.
        for rule in [
            "0.0.0.0/0",
            "0.0.0.0/0:53/udp",
            "96.0.0.0/3",
            "255.255.255.254",
            "::/0",
            "[::/0]:53/udp",
            "2001:db8::/32",
            "fd00::/8",
        ] {
            assert!(Rule::parse(Action::Deny, rule).is_ok(), "{rule}");
        }
    }

    #[test]
    fn first_match_wins_then_default() {
        let p = Policy {
            rules: vec![
                Rule::parse(Action::Allow, "10.200.0.2:80/tcp").unwrap(),
                Rule::parse(Action::Deny, "10.200.0.0/16").unwrap(),
            ],
            default: Action::Allow,
        };
        assert!(p.decide(Proto::Tcp, ip("10.200.0.2"), Some(80)).allowed());
        let d = p.decide(Proto::Tcp, ip("10.200.0.2"), Some(81));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.describe(), "deny (rule 2: deny 10.200.0.0/16)");
        assert!(!p.decide(Proto::Udp, ip("10.200.0.2"), Some(80)).allowed());
        assert!(!p.decide(Proto::Icmp, ip("10.200.9.9"), None).allowed());
        let d = p.decide(Proto::Tcp, ip("8.8.8.8"), Some(53));
        assert_eq!(d.describe(), "allow (default)");
        let deny_all = Policy {
            rules: vec![],
            default: Action::Deny,
        };
        assert!(!deny_all
            .decide(Proto::Tcp, ip("1.1.1.1"), Some(1))
            .allowed());
    }

    #[test]
    fn ipv6_rules_and_v4_mapped_addresses() {
        let p = Policy {
            rules: vec![
                Rule::parse(Action::Deny, "10.0.0.0/8").unwrap(),
                Rule::parse(Action::Deny, "[fd77:200::/64]:80/tcp").unwrap(),
            ],
            default: Action::Allow,
        };
        // The IPv4 rule holds for the v4-mapped form of its addresses.
        assert!(!p
            .decide(Proto::Tcp, ip("::ffff:10.9.9.9"), Some(1))
            .allowed());
        assert!(!p.decide(Proto::Tcp, ip("10.9.9.9"), Some(1)).allowed());
        assert!(p
            .decide(Proto::Tcp, ip("::ffff:11.9.9.9"), Some(1))
            .allowed());
        // IPv6 rules match IPv6 destinations only.
        assert!(!p.decide(Proto::Tcp, ip("fd77:200::2"), Some(80)).allowed());
        assert!(p.decide(Proto::Tcp, ip("fd77:200::2"), Some(81)).allowed());
        assert!(p.decide(Proto::Udp, ip("fd77:200::2"), Some(80)).allowed());
        assert!(p.decide(Proto::Tcp, ip("fd77:201::2"), Some(80)).allowed());
        let all_v4 = Rule::parse(Action::Deny, "0.0.0.0/0").unwrap();
        assert!(!all_v4.matches(Proto::Tcp, ip("2001:db8::1"), Some(1)));
        let all_v6 = Rule::parse(Action::Deny, "::/0").unwrap();
        assert!(!all_v6.matches(Proto::Tcp, ip("1.2.3.4"), Some(1)));
        assert!(all_v6.matches(Proto::Icmp, ip("2001:db8::1"), None));
    }

    #[test]
    fn port_rules_do_not_match_icmp() {
        let r = Rule::parse(Action::Deny, "0.0.0.0/0:1-65535").unwrap();
        assert!(!r.matches(Proto::Icmp, ip("1.2.3.4"), None));
        assert!(r.matches(Proto::Udp, ip("1.2.3.4"), Some(9)));
    }

    #[test]
    fn rules_file() {
        let text = "# comment\ndefault deny\nallow 192.168.127.253:3128/tcp  # the proxy\n\ndeny 10.0.0.0/8\n";
        let (rules, default) = Policy::parse_file("rules", text).unwrap();
        assert_eq!(default, Some(Action::Deny));
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].to_string(), "allow 192.168.127.253:3128/tcp");
        let err = Policy::parse_file("rules", "allow 10.0.0.0/8\npermit 1.2.3.4\n").unwrap_err();
        assert_eq!(err.to_string(), "rules:2: expected `allow RULE`, `deny RULE` or `default allow|deny`, got \"permit 1.2.3.4\"");
        let err = Policy::parse_file("f", "deny 300.0.0.1\n").unwrap_err();
        // Each line of the chain says something new.
        assert_eq!(
            airlock_common::report::chain(&err),
            "error: invalid egress rule at f:1\n\
             caused by: \"300.0.0.1\" is not a network (expected e.g. 10.0.0.0/8, 192.168.1.10, 2001:db8::/32 or [2001:db8::1])"
        );
    }
}
