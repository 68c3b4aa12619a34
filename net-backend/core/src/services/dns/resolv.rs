//! Upstream resolvers and the search list from resolv.conf text
//! (resolv.conf(5)).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The port every resolv.conf nameserver listens on.
const DNS_PORT: u16 = 53;

/// What the gateway takes from a resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// The `nameserver` lines, as [`parse_resolv_conf`] reads them.
    pub nameservers: Vec<SocketAddr>,
    /// The domains of the last `search` or `domain` line (as glibc: the
    /// last one wins), in order; empty without one.
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (see [`parse_resolv_conf_with`] for the
    /// `nameserver` lines). The search domains are taken as written;
    /// [`super::normalize_search`] drops invalid ones such as the `.`
    /// systemd-resolved writes when there are none.
    pub fn parse(text: &str, scope_id_of: impl Fn(&str) -> Option<u32>) -> ResolvConf {
        let mut search = Vec::new();
        for line in text.lines() {
            // A word starting a comment ends the line.
            let mut words = line
                .split_whitespace()
                .take_while(|w| !w.starts_with(['#', ';']));
            match words.next() {
                Some("search") => search = words.map(str::to_owned).collect(),
                Some("domain") => search = words.next().map(str::to_owned).into_iter().collect(),
                _ => {}
            }
        }
        ResolvConf {
            nameservers: parse_resolv_conf_with(text, scope_id_of),
            search,
        }
    }
}

/// Upstream resolvers from resolv.conf text: the `nameserver` lines, IPv4
/// and IPv6, port 53, in file order, duplicates removed.
///
/// Comment lines (`#` or `;` first) and every other keyword (`search`,
/// `domain`, `options`, …) are ignored, as is anything after the address
/// (glibc reads only the first token). Unparsable addresses are skipped. An
/// IPv6 zone written numerically (`fe80::1%2`) becomes the scope id; a named
/// zone (`fe80::1%eth0`) is stripped, leaving scope id 0 — resolve names
/// with [`parse_resolv_conf_with`] instead. Unlike glibc (three), no limit
/// is put on the number of servers.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    parse_resolv_conf_with(text, |_| None)
}

/// [`parse_resolv_conf`] with a resolver for named IPv6 zones, e.g. one
/// calling `if_nametoindex(3)`. `scope_id_of` returning `None` strips the
/// zone (scope id 0).
pub fn parse_resolv_conf_with(
    text: &str,
    scope_id_of: impl Fn(&str) -> Option<u32>,
) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(|a| parse_address(a, &scope_id_of)) else {
            continue;
        };
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    servers
}

/// One nameserver address, with an optional `%zone` on IPv6.
fn parse_address(text: &str, scope_id_of: &impl Fn(&str) -> Option<u32>) -> Option<SocketAddr> {
    match text.split_once('%') {
        None => text
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DNS_PORT)),
        Some((ip, zone)) => {
            let ip = ip.parse::<Ipv6Addr>().ok()?;
            if zone.is_empty() {
                return None;
            }
            let scope = zone
                .parse::<u32>()
                .ok()
                .or_else(|| scope_id_of(zone))
                .unwrap_or(0);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(a, b, c, d), 53))
    }

    #[test]
    fn systemd_resolved_stub_file() {
        let text = "\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
# Do not edit.
#
# Run \"resolvectl status\" to see details about the uplink DNS servers
# currently in use.

nameserver 127.0.0.53
options edns0 trust-ad
search lan example.com
";
        assert_eq!(parse_resolv_conf(text), vec![v4(127, 0, 0, 53)]);
    }

    #[test]
    fn ipv4_ipv6_order_and_duplicates() {
        let text = "\
domain corp.example
nameserver 10.0.0.1
nameserver 2001:db8::53
nameserver\t10.0.0.2   # trailing comment
nameserver 10.0.0.1
  nameserver 2001:DB8::53
";
        let v6: SocketAddr = "[2001:db8::53]:53".parse().unwrap();
        assert_eq!(
            parse_resolv_conf(text),
            vec![v4(10, 0, 0, 1), v6, v4(10, 0, 0, 2)]
        );
    }

    #[test]
    fn ipv6_zones() {
        let text = "nameserver fe80::1%eth0\nnameserver fe80::2%3\nnameserver fe80::3%\n";
        let got = parse_resolv_conf(text);
        assert_eq!(got.len(), 2);
        let SocketAddr::V6(a) = got[0] else {
            panic!("not v6")
        };
        assert_eq!((a.ip().segments()[7], a.scope_id(), a.port()), (1, 0, 53));
        let SocketAddr::V6(b) = got[1] else {
            panic!("not v6")
        };
        assert_eq!((b.ip().segments()[7], b.scope_id()), (2, 3));

        let named = parse_resolv_conf_with(text, |z| (z == "eth0").then_some(7));
        let SocketAddr::V6(a) = named[0] else {
            panic!("not v6")
        };
        assert_eq!(a.scope_id(), 7);
    }

    #[test]
    fn search_and_domain_lines_last_one_wins() {
        let text = "\
domain first.example
nameserver 10.0.0.1
search corp.example lab.corp.example  # a comment
";
        let r = ResolvConf::parse(text, |_| None);
        assert_eq!(r.nameservers, vec![v4(10, 0, 0, 1)]);
        assert_eq!(r.search, ["corp.example", "lab.corp.example"]);
        let r = ResolvConf::parse("search a.test b.test\ndomain c.test extra\n", |_| None);
        assert_eq!(r.search, ["c.test"]);
        let r = ResolvConf::parse("# search x.test\nnameserver ::1\n", |_| None);
        assert!(r.search.is_empty());
        // systemd-resolved's stub file without search domains.
        let r = ResolvConf::parse(
            "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
            |_| None,
        );
        assert_eq!(
            (r.nameservers, r.search),
            (vec![v4(127, 0, 0, 53)], vec![".".to_owned()])
        );
    }

    #[test]
    fn comments_and_garbage() {
        let text = "\
#nameserver 1.1.1.1
; nameserver 1.0.0.1
nameserver
nameserver not-an-address
nameserver 300.1.1.1
nameserver 1.2.3.4%eth0
nameservers 9.9.9.9
NAMESERVER 9.9.9.10
options ndots:2 timeout:1
search a b c
\u{0}\u{ff}garbage \r
nameserver 192.0.2.7\r
nameserver 192.0.2.8";
        assert_eq!(
            parse_resolv_conf(text),
            vec![v4(192, 0, 2, 7), v4(192, 0, 2, 8)]
        );
        assert!(parse_resolv_conf("").is_empty());
    }
}
