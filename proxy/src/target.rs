//! Where a request goes: host and port taken from an absolute-form request
//! target (`GET http://host[:port]/path`) or an authority-form one
//! (`CONNECT host:port`).

use std::fmt;
use std::net::IpAddr;

use http::uri::Authority;
use http::HeaderValue;

use crate::noproxy::{Host, HostError};

/// A host and port the proxy connects to (origin or upstream proxy).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("invalid host in {0:?}")]
    Host(String, #[source] HostError),
    #[error("{0:?} has no port (CONNECT needs host:port)")]
    NoPort(String),
    #[error("port {1:?} in {0:?} is not a port number (1 to 65535)")]
    BadPort(String, String),
    #[error("port 0 in {0:?} is not a port one can connect to")]
    PortZero(String),
}

impl Target {
    /// Reads host and port from `authority`; `default_port` is used when the
    /// authority has none (`None`: a port is required, as for CONNECT).
    /// Userinfo in the authority is ignored (and never forwarded).
    pub fn from_authority(
        authority: &Authority,
        default_port: Option<u16>,
    ) -> Result<Target, TargetError> {
        let shown = || {
            authority
                .as_str()
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let host = Host::parse(authority.host()).map_err(|e| TargetError::Host(shown(), e))?;
        // `port_u16` is also `None` for a port that is not a u16 (99999).
        let written = authority
            .as_str()
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.contains(']'));
        let port = match (authority.port_u16(), written, default_port) {
            (Some(p), _, _) => p,
            (None, Some(text), _) if !text.is_empty() => {
                return Err(TargetError::BadPort(shown(), text.to_owned()))
            }
            (None, _, Some(p)) => p,
            (None, _, None) => return Err(TargetError::NoPort(shown())),
        };
        if port == 0 {
            return Err(TargetError::PortZero(shown()));
        }
        Ok(Target { host, port })
    }

    /// The host to hand to the resolver or to connect to (IPv6 unbracketed).
    pub fn connect_host(&self) -> String {
        match &self.host {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    /// The host as it appears in logs and the audit log (no brackets).
    pub fn host_plain(&self) -> String {
        self.connect_host()
    }

    /// The `Host` header for this target: the port is left out when it is
    /// the scheme's default.
    pub fn host_header(&self, default_port: u16) -> HeaderValue {
        let text = if self.port == default_port {
            self.host.to_string()
        } else {
            self.to_string()
        };
        // Host's Display only produces [A-Za-z0-9._-:[]], valid header bytes.
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    /// Whether the host is a literal IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Authority {
        s.parse().unwrap()
    }

    #[test]
    fn from_authority() {
        let t = Target::from_authority(&auth("Example.com:8080"), Some(80)).unwrap();
        assert_eq!(t.to_string(), "example.com:8080");
        let t = Target::from_authority(&auth("example.com"), Some(80)).unwrap();
        assert_eq!(t.port, 80);
        assert_eq!(t.host_header(80), "example.com");
        let t = Target::from_authority(&auth("[::1]:443"), None).unwrap();
        assert_eq!(t.to_string(), "[::1]:443");
        assert_eq!(t.connect_host(), "::1");
        assert_eq!(t.host_header(80), "[::1]:443");
        let t = Target::from_authority(&auth("user:pw@127.1:81"), Some(80)).unwrap();
        assert_eq!(t.to_string(), "127.0.0.1:81");
        assert_eq!(
            Target::from_authority(&auth("example.com"), None),
            Err(TargetError::NoPort("example.com".into()))
        );
        assert!(matches!(
            Target::from_authority(&auth("example.com:0"), Some(80)),
            Err(TargetError::PortZero(_))
        ));
        for (text, port) in [("example.com:99999", "99999"), ("[::1]:70000", "70000")] {
            let err = Target::from_authority(&auth(text), None).unwrap_err();
            assert_eq!(err, TargetError::BadPort(text.into(), port.into()));
            assert_eq!(
                err.to_string(),
                format!("port {port:?} in {text:?} is not a port number (1 to 65535)")
            );
        }
        // An empty port is no port.
        assert_eq!(
            Target::from_authority(&auth("example.com:"), None),
            Err(TargetError::NoPort("example.com:".into()))
        );
        assert_eq!(
            Target::from_authority(&auth("[::1]"), Some(80)).map(|t| t.port),
            Ok(80)
        );
        assert!(matches!(
            Target::from_authority(&auth("ex!mple.com:80"), Some(80)),
            Err(TargetError::Host(..))
        ));
    }
}
