//! Published ports: host sockets whose traffic is carried into the guest
//! (Docker's `-p`). The table is process-wide: ports stay bound while guests
//! come and go, and the control API changes them at runtime.
//!
//! `--publish [BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]`, ranges as
//! `8000-8010:8000-8010`. The bind address defaults to 127.0.0.1 (only this
//! host can connect — unlike Docker, whose default is every interface); use
//! `0.0.0.0:8080:80` or `[::]:8080:80` to accept from the network.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Arc;

use serde::Serialize;

use crate::policy::Proto;

/// One published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PortSpec {
    pub proto: Proto,
    /// The host address and port that accept.
    pub host: SocketAddr,
    /// Where in the guest traffic goes.
    pub guest: SocketAddrV4,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}/{}", self.host, self.guest, self.proto)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid --publish {0:?}: expected [BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 8080:80 or 0.0.0.0:5353:53/udp")]
    Syntax(String),
    #[error("invalid port range in {0:?}: host and guest ranges must have the same length, and ports are 1-65535")]
    Range(String),
    #[error("{0} is already published")]
    Duplicate(String),
    #[error("cannot bind published port {addr}/{proto}")]
    Bind {
        addr: SocketAddr,
        proto: Proto,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not published")]
    NotPublished(String),
    #[error("guest address {0} is not in the guest subnet")]
    GuestAddress(Ipv4Addr),
    #[error("protocol {0} cannot be published (tcp or udp)")]
    Proto(String),
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

/// Parses one `--publish` value into the ports it names.
pub fn parse_publish(s: &str, guest_ip: Ipv4Addr) -> Result<Vec<PortSpec>, PublishError> {
    let syntax = || PublishError::Syntax(s.to_owned());
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some(_) => return Err(syntax()),
        None => (s, Proto::Tcp),
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
    let (h0, h1) = parse_range(host).ok_or_else(|| PublishError::Range(s.to_owned()))?;
    let (g0, g1) = parse_range(guest).ok_or_else(|| PublishError::Range(s.to_owned()))?;
    if h1 - h0 != g1 - g0 {
        return Err(PublishError::Range(s.to_owned()));
    }
    Ok((0..=h1 - h0)
        .map(|i| PortSpec {
            proto,
            host: SocketAddr::new(bind, h0 + i),
            guest: SocketAddrV4::new(guest_ip, g0 + i),
        })
        .collect())
}

/// A bound published socket.
pub enum PublishedSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PublishedSocket {
    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        match self {
            PublishedSocket::Tcp(l) => l.as_raw_fd(),
            PublishedSocket::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// A published port with its socket and a process-unique id.
pub struct Published {
    pub id: u64,
    pub spec: PortSpec,
    pub socket: Arc<PublishedSocket>,
}

/// Every published port of the process.
#[derive(Default)]
pub struct PortTable {
    entries: Vec<Published>,
    next_id: u64,
}

fn bind(spec: &PortSpec) -> Result<PublishedSocket, PublishError> {
    let err = |source| PublishError::Bind {
        addr: spec.host,
        proto: spec.proto,
        source,
    };
    Ok(match spec.proto {
        Proto::Tcp => {
            let l = TcpListener::bind(spec.host).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            PublishedSocket::Tcp(l)
        }
        Proto::Udp => {
            let s = UdpSocket::bind(spec.host).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            PublishedSocket::Udp(s)
        }
        Proto::Icmp => return Err(PublishError::Proto("icmp".into())),
    })
}

impl PortTable {
    /// Binds and adds `specs`, all or none.
    pub fn expose(&mut self, specs: &[PortSpec]) -> Result<(), PublishError> {
        for s in specs {
            if self
                .entries
                .iter()
                .any(|e| e.spec.proto == s.proto && e.spec.host == s.host)
            {
                return Err(PublishError::Duplicate(format!("{}/{}", s.host, s.proto)));
            }
        }
        let mut bound = Vec::with_capacity(specs.len());
        for s in specs {
            bound.push((*s, bind(s)?));
        }
        for (spec, socket) in bound {
            self.next_id += 1;
            self.entries.push(Published {
                id: self.next_id,
                spec,
                socket: Arc::new(socket),
            });
        }
        Ok(())
    }

    /// Removes (and closes) the port bound at `host` for `proto`.
    pub fn unexpose(&mut self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError> {
        let i = self
            .entries
            .iter()
            .position(|e| e.spec.proto == proto && e.spec.host == host)
            .ok_or_else(|| PublishError::NotPublished(format!("{host}/{proto}")))?;
        Ok(self.entries.remove(i).spec)
    }

    pub fn specs(&self) -> Vec<PortSpec> {
        self.entries.iter().map(|e| e.spec).collect()
    }

    pub fn entries(&self) -> &[Published] {
        &self.entries
    }

    pub fn get(&self, id: u64) -> Option<&Published> {
        self.entries.iter().find(|e| e.id == id)
    }
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

    #[test]
    fn table_binds_refuses_duplicates_and_frees_on_unexpose() {
        let mut t = PortTable::default();
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = one(&format!("{free}:80"));
        t.expose(&[spec]).unwrap();
        assert!(matches!(t.expose(&[spec]), Err(PublishError::Duplicate(_))));
        // The port is really bound: a second bind fails.
        assert!(TcpListener::bind(spec.host).is_err());
        assert_eq!(t.specs(), vec![spec]);
        t.unexpose(spec.host, Proto::Tcp).unwrap();
        TcpListener::bind(spec.host).unwrap();
        assert!(matches!(
            t.unexpose(spec.host, Proto::Tcp),
            Err(PublishError::NotPublished(_))
        ));
    }

    #[test]
    fn bind_failures_are_clear_and_leave_nothing_behind() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut t = PortTable::default();
        let specs = [one(&format!("{free}:1")), one(&format!("{port}:2"))];
        let err = t.expose(&specs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot bind published port 127.0.0.1:{port}/tcp")
        );
        assert!(t.specs().is_empty(), "all or none");
        TcpListener::bind(("127.0.0.1", free)).unwrap();
    }
}
