//! The published-port syntax (`--publish`, `airlock publish`):
//! `[BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp|/tcp6|/udp6]`, ranges as
//! `8000-8010:8000-8010`. The bind address defaults to 127.0.0.1 (only this
//! host can connect — unlike Docker, whose default is every interface); use
//! `0.0.0.0:8080:80` or `[::]:8080:80` to accept from the network.
//!
//! Connections reach the guest over IPv4 (its DHCP address), whatever the
//! family of the host side; `/tcp6` and `/udp6` reach it over IPv6 instead,
//! at the address it took in its IPv6 prefix ([`GUEST_IPV6`] stands for it:
//! the gateway learns it from the guest's address autoconfiguration or
//! DHCPv6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use serde::Serialize;

use crate::Proto;

/// One published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortSpec {
    pub proto: Proto,
    /// The host address and port that accept.
    pub host: SocketAddr,
    /// Where in the guest traffic goes: an IPv4 address, or an IPv6 one
    /// ([`GUEST_IPV6`]: the guest's own, as the gateway learnt it).
    pub guest: SocketAddr,
}

/// The guest's IPv6 address in a published port's target: the address the
/// guest configured in its prefix, learnt by the gateway (written `[::]`).
pub const GUEST_IPV6: Ipv6Addr = Ipv6Addr::UNSPECIFIED;

/// `[::]:port`: the guest's own IPv6 address, `port`.
pub fn guest_ipv6(port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(GUEST_IPV6, port, 0, 0))
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}/{}", self.host, self.guest, self.proto)
    }
}

/// A `--publish` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid --publish {0:?}: expected [BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp|/tcp6|/udp6], e.g. 8080:80 or 0.0.0.0:5353:53/udp")]
    Syntax(String),
    #[error("invalid port range in {0:?}: host and guest ranges must have the same length, and ports are 1-65535")]
    Range(String),
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = s.parse().ok()?;
            (p, p)
        }
    };
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

/// Parses one `--publish` value into the ports it names; `guest_ip` is the
/// guest's IPv4 address (targets without `6`).
pub fn parse_publish(s: &str, guest_ip: Ipv4Addr) -> Result<Vec<PortSpec>, SpecError> {
    let syntax = || SpecError::Syntax(s.to_owned());
    let (body, proto, v6) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp, false),
        Some((b, "udp")) => (b, Proto::Udp, false),
        Some((b, "tcp6")) => (b, Proto::Tcp, true),
        Some((b, "udp6")) => (b, Proto::Udp, true),
        Some(_) => return Err(syntax()),
        None => (s, Proto::Tcp, false),
    };
    // [BIND_ADDR:]HOST:GUEST, where BIND_ADDR may be [IPv6].
    let (bind, ports) = if let Some(rest) = body.strip_prefix('[') {
        let (addr, rest) = rest.split_once("]:").ok_or_else(syntax)?;
        (addr.parse::<IpAddr>().map_err(|_| syntax())?, rest)
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            2 => (IpAddr::V4(Ipv4Addr::LOCALHOST), body),
            3 => (
                parts[0].parse::<IpAddr>().map_err(|_| syntax())?,
                &body[parts[0].len() + 1..],
            ),
            _ => return Err(syntax()),
        }
    };
    let (host, guest) = ports.split_once(':').ok_or_else(syntax)?;
    let (h0, h1) = parse_range(host).ok_or_else(|| SpecError::Range(s.to_owned()))?;
    let (g0, g1) = parse_range(guest).ok_or_else(|| SpecError::Range(s.to_owned()))?;
    if h1 - h0 != g1 - g0 {
        return Err(SpecError::Range(s.to_owned()));
    }
    Ok((0..=h1 - h0)
        .map(|i| PortSpec {
            proto,
            host: SocketAddr::new(bind, h0 + i),
            guest: if v6 {
                guest_ipv6(g0 + i)
            } else {
                SocketAddr::new(guest_ip.into(), g0 + i)
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);

    fn one(s: &str) -> PortSpec {
        let v = parse_publish(s, G).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v[0]
    }

    #[test]
    fn publish_syntax() {
        let p = one("8080:80");
        assert_eq!(p.host, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.guest, "192.168.127.2:80".parse().unwrap());
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(
            one("0.0.0.0:5353:53/udp").host,
            "0.0.0.0:5353".parse().unwrap()
        );
        assert_eq!(one("0.0.0.0:5353:53/udp").proto, Proto::Udp);
        assert_eq!(one("[::]:8080:80").host, "[::]:8080".parse().unwrap());
        assert_eq!(one("[::1]:8080:80/tcp").host, "[::1]:8080".parse().unwrap());
        // /tcp6 and /udp6: the guest's own IPv6 address.
        let p = one("[::1]:8080:80/tcp6");
        assert_eq!(
            (p.host, p.guest),
            ("[::1]:8080".parse().unwrap(), guest_ipv6(80))
        );
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(one("5353:53/udp6").guest, "[::]:53".parse().unwrap());
        assert_eq!(one("5353:53/udp6").proto, Proto::Udp);
        let r = parse_publish("8000-8002:9000-9002", G).unwrap();
        assert_eq!(
            r.iter()
                .map(|p| (p.host.port(), p.guest.port()))
                .collect::<Vec<_>>(),
            vec![(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        for bad in [
            "80",
            "a:b",
            "1.2.3.4:8080",
            "8080:80/sctp",
            "8080:80/tcp4",
            "0:80",
            "8000-8002:80",
            "9-8:9-8",
            "x.y:1:2",
            "[::1:8080:80",
            "1:2:3:4",
        ] {
            assert!(parse_publish(bad, G).is_err(), "{bad:?} accepted");
        }
    }
}
