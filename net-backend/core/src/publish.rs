//! Published ports: host sockets whose traffic is carried into the guest
//! (Docker's `-p`; the syntax is [`airlock_api::publish`]). The table is
//! process-wide: ports stay bound while guests come and go, and the control
//! API changes them at runtime.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

use airlock_api::{PortSpec, Proto, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Spec(#[from] SpecError),
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

/// A bound published socket.
pub(crate) enum PublishedSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PublishedSocket {
    pub(crate) fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        match self {
            PublishedSocket::Tcp(l) => l.as_raw_fd(),
            PublishedSocket::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// A published port with its socket and a process-unique id.
pub(crate) struct Published {
    pub id: u64,
    pub spec: PortSpec,
    pub socket: Arc<PublishedSocket>,
}

/// Every published port of the process.
#[derive(Default)]
pub(crate) struct PortTable {
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
    pub(crate) fn expose(&mut self, specs: &[PortSpec]) -> Result<(), PublishError> {
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
    pub(crate) fn unexpose(
        &mut self,
        host: SocketAddr,
        proto: Proto,
    ) -> Result<PortSpec, PublishError> {
        let i = self
            .entries
            .iter()
            .position(|e| e.spec.proto == proto && e.spec.host == host)
            .ok_or_else(|| PublishError::NotPublished(format!("{host}/{proto}")))?;
        Ok(self.entries.remove(i).spec)
    }

    pub(crate) fn specs(&self) -> Vec<PortSpec> {
        self.entries.iter().map(|e| e.spec).collect()
    }

    pub(crate) fn entries(&self) -> &[Published] {
        &self.entries
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Published> {
        self.entries.iter().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_api::parse_publish;

    const G: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);

    fn one(s: &str) -> PortSpec {
        let v = parse_publish(s, G).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v[0]
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
