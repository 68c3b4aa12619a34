//! Opening TCP connections to origins and upstream proxies: resolve, try
//! each address in turn, all within the connect timeout — and never to the
//! proxy itself ([`Loops`]).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::noproxy::Host;
use crate::target::Target;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {target} ({addr})")]
    Connect {
        target: Target,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {} connecting to {target}", Secs(*after))]
    Timeout { target: Target, after: Duration },
    #[error(
        "{target} ({addr}) is airlock-proxy itself: refusing to connect to it (a forwarding loop)"
    )]
    Loop { target: Target, addr: SocketAddr },
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }

    /// The target leads back to this proxy (508 Loop Detected).
    pub fn is_loop(&self) -> bool {
        matches!(self, ConnectError::Loop { .. })
    }

    /// The RFC 9209 `Proxy-Status` error type.
    pub fn proxy_status(&self) -> &'static str {
        match self {
            ConnectError::Resolve { .. } | ConnectError::NoAddress { .. } => "dns_error",
            ConnectError::Connect { source, .. }
                if source.kind() == io::ErrorKind::ConnectionRefused =>
            {
                "connection_refused"
            }
            ConnectError::Connect { .. } => "destination_unavailable",
            ConnectError::Timeout { .. } => "connection_timeout",
            ConnectError::Loop { .. } => "proxy_loop_detected",
        }
    }
}

/// A duration shown as seconds (`10s`, `0.25s`).
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{}s", self.0.as_secs_f64())
        }
    }
}

/// What keeps the proxy from connecting to itself: its TCP listening
/// addresses, the local addresses of the connections it has open to
/// origins and upstreams, and the peer addresses of its client connections.
///
/// A CONNECT (or a plain request) to one of the proxy's own addresses would
/// come back in as a new client connection, and inside that tunnel the
/// client could ask again: one client holding every `--max-connections`
/// slot. [`dial`] refuses such targets — a listening address, spelled as
/// itself, as a loopback address or the unspecified address, or any local
/// address (the kernel then picks the destination as the source). A loop
/// that gets past that (a port forward, NAT to the proxy's port) is seen
/// when the connection the proxy opened arrives at its own listener:
/// whichever of the two ends is registered second ([`Loops::admit`] for
/// the client side, [`dial`] for the outbound side) finds the other and
/// refuses. Tunnels through the proxy therefore do not nest.
#[derive(Default)]
pub struct Loops {
    listening: Vec<SocketAddr>,
    conns: Arc<Mutex<Conns>>,
}

/// Open connections as (source, destination), [`canonical_addr`] form: a
/// source port alone does not identify a connection (Linux reuses local
/// ports for connections to different destinations).
type Pair = (SocketAddr, SocketAddr);

#[derive(Default)]
struct Conns {
    /// Connections the proxy opened: (local, remote).
    outbound: HashSet<Pair>,
    /// TCP client connections being served: (peer, destination before NAT).
    inbound: HashSet<Pair>,
}

impl Loops {
    /// The TCP addresses the proxy listens on (port 0 resolved).
    pub fn new(listening: Vec<SocketAddr>) -> Loops {
        Loops {
            listening,
            conns: Arc::default(),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether connecting to `addr` would reach one of our listeners: the
    /// same address, or (for a listener on a loopback or unspecified
    /// address) a loopback or unspecified address of the same port, or
    /// `addr` being a local address (`local` is the source the kernel chose
    /// for a connection to it, when there is one).
    fn is_self(&self, addr: SocketAddr, local: Option<IpAddr>) -> bool {
        let ip = canonical(addr.ip());
        let here = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
        self.listening.iter().any(|l| {
            let listen_ip = canonical(l.ip());
            l.port() == addr.port()
                && (listen_ip == ip
                    || (listen_ip.is_unspecified() && (here(ip) || local == Some(ip)))
                    || (here(listen_ip) && ip.is_unspecified()))
        })
    }

    /// A new TCP client connection: `None` if it is a connection the
    /// proxy opened itself (a loop), else a guard that keeps it known while
    /// it is served.
    pub fn admit(&self, stream: &TcpStream) -> Option<Inbound> {
        let pair = match (stream.peer_addr(), original_destination(stream)) {
            (Ok(peer), Some(dest)) => Some((canonical_addr(peer), canonical_addr(dest))),
            _ => None,
        };
        if let Some(pair) = pair {
            let mut conns = self.conns();
            if conns.outbound.contains(&pair) {
                return None;
            }
            conns.inbound.insert(pair);
        }
        Some(Inbound {
            pair,
            conns: self.conns.clone(),
        })
    }

    /// Keeps `stream` known while it is open; `None` if it arrived at our
    /// own listener (a loop).
    fn register(&self, stream: TcpStream) -> Option<Outbound> {
        let pair = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(remote)) => Some((canonical_addr(local), canonical_addr(remote))),
            _ => None,
        };
        if let Some(pair) = pair {
            let mut conns = self.conns();
            if conns.inbound.contains(&pair) {
                return None;
            }
            conns.outbound.insert(pair);
        }
        Some(Outbound {
            stream,
            pair,
            conns: self.conns.clone(),
        })
    }
}

/// Where a client connected to: the address before NAT if netfilter
/// redirected it (SO_ORIGINAL_DST), else the socket's own address.
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let before_nat = match local {
        SocketAddr::V4(_) => sock.original_dst(),
        SocketAddr::V6(_) => sock.original_dst_ipv6(),
    };
    // Without a NAT rule (or conntrack) there is no original destination.
    Some(before_nat.ok().and_then(|a| a.as_socket()).unwrap_or(local))
}

/// A client connection being served, known to [`Loops`] until dropped.
pub struct Inbound {
    pair: Option<Pair>,
    conns: Arc<Mutex<Conns>>,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(pair) = self.pair {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.inbound.remove(&pair);
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// A connection the proxy opened, registered with [`Loops`] while open.
pub struct Outbound {
    stream: TcpStream,
    pair: Option<Pair>,
    conns: Arc<Mutex<Conns>>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if let Some(pair) = self.pair {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.outbound.remove(&pair);
        }
    }
}

impl AsyncRead for Outbound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Outbound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Connects to `target`, trying its addresses in resolver order and
/// skipping any that is the proxy itself; the whole attempt (resolution
/// included) is bounded by `timeout`.
pub async fn dial(
    target: &Target,
    timeout: Duration,
    loops: &Loops,
) -> Result<Outbound, ConnectError> {
    match tokio::time::timeout(timeout, dial_inner(target, loops)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            target: target.clone(),
            after: timeout,
        }),
    }
}

async fn dial_inner(target: &Target, loops: &Loops) -> Result<Outbound, ConnectError> {
    let addrs: Vec<SocketAddr> = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|source| ConnectError::Resolve {
                host: name.clone(),
                source,
            })?
            .collect(),
    };
    let mut last_error = None;
    for addr in addrs {
        if loops.is_self(addr, None) {
            last_error = Some(ConnectError::Loop {
                target: target.clone(),
                addr,
            });
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // A local address of this host: the kernel chose it as
                // the source too.
                let local = stream.local_addr().ok().map(|a| canonical(a.ip()));
                if loops.is_self(addr, local) {
                    last_error = Some(ConnectError::Loop {
                        target: target.clone(),
                        addr,
                    });
                    continue;
                }
                let _ = stream.set_nodelay(true);
                match loops.register(stream) {
                    Some(outbound) => return Ok(outbound),
                    None => {
                        last_error = Some(ConnectError::Loop {
                            target: target.clone(),
                            addr,
                        })
                    }
                }
            }
            Err(source) => {
                last_error = Some(ConnectError::Connect {
                    target: target.clone(),
                    addr,
                    source,
                })
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ConnectError::NoAddress {
        host: target.connect_host(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(Secs(Duration::from_secs(10)).to_string(), "10s");
        assert_eq!(Secs(Duration::from_millis(250)).to_string(), "0.25s");
    }

    #[tokio::test]
    async fn refused_names_target_and_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target {
            host: Host::parse("127.0.0.1").unwrap(),
            port,
        };
        let Err(err) = dial(&target, Duration::from_secs(5), &Loops::default()).await else {
            panic!("connected to a closed port");
        };
        assert_eq!(err.proxy_status(), "connection_refused");
        assert_eq!(
            err.to_string(),
            format!("cannot connect to 127.0.0.1:{port} (127.0.0.1:{port})")
        );
    }

    #[test]
    fn own_addresses_are_recognised() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let loops = Loops::new(vec![addr("127.0.0.1:3128"), addr("0.0.0.0:8080")]);
        for target in [
            "127.0.0.1:3128",
            "0.0.0.0:3128",
            "[::ffff:127.0.0.1]:3128",
            "127.0.0.1:8080",
            "127.9.9.9:8080",
            "0.0.0.0:8080",
            "[::1]:8080",
            "[::]:8080",
        ] {
            assert!(loops.is_self(addr(target), None), "{target}");
        }
        for target in [
            "127.0.0.2:3128",
            "10.0.0.5:3128",
            "127.0.0.1:80",
            "10.0.0.5:8080",
        ] {
            assert!(!loops.is_self(addr(target), None), "{target}");
        }
        // A local address of the host: the kernel picked it as the source.
        let local = Some("10.0.0.5".parse().unwrap());
        assert!(loops.is_self(addr("10.0.0.5:8080"), local));
        assert!(!loops.is_self(addr("10.0.0.5:3128"), local));
    }

    /// A connection the proxy opened that arrives at its own listener is
    /// refused by whichever side registers second; another connection from
    /// the same local port (to elsewhere) is not.
    #[tokio::test]
    async fn a_connection_to_ourselves_is_refused_in_either_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            host: Host::parse("127.0.0.1").unwrap(),
            port: listener.local_addr().unwrap().port(),
        };
        // The outbound side first: the accepted connection is not admitted
        // while it is open, and is once it closed.
        let loops = Loops::default();
        let outbound = dial(&target, Duration::from_secs(5), &loops).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(loops.admit(&accepted).is_none());
        drop(outbound);
        assert!(loops.admit(&accepted).is_some());
        // The client side first: the dial finds it.
        let loops = Loops::default();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let inbound = loops.admit(&accepted).unwrap();
        assert!(loops.register(stream).is_none());
        drop(inbound);
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(loops.register(stream).is_some());
        // Same source address, other destination: not a loop.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to_other = socket.connect(other.local_addr().unwrap()).await.unwrap();
        let loops = Loops::default();
        let outbound = loops.register(to_other).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(outbound.stream.local_addr().unwrap()).unwrap();
        let _client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(loops.admit(&accepted).is_some());
    }
}
