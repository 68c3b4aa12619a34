//! Opening TCP connections to origins and upstream proxies: resolve, try
//! each address in turn, all within the connect timeout.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

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
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
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

/// Connects to `target`, trying its addresses in resolver order; the whole
/// attempt (resolution included) is bounded by `timeout`.
pub async fn dial(target: &Target, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, dial_inner(target)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            target: target.clone(),
            after: timeout,
        }),
    }
}

async fn dial_inner(target: &Target) -> Result<TcpStream, ConnectError> {
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
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) => last_error = Some((addr, source)),
        }
    }
    match last_error {
        Some((addr, source)) => Err(ConnectError::Connect {
            target: target.clone(),
            addr,
            source,
        }),
        None => Err(ConnectError::NoAddress {
            host: target.connect_host(),
        }),
    }
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
        let err = dial(&target, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.proxy_status(), "connection_refused");
        assert_eq!(
            err.to_string(),
            format!("cannot connect to 127.0.0.1:{port} (127.0.0.1:{port})")
        );
    }
}
