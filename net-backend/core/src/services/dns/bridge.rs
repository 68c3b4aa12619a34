//! The far side of a guest's DNS-over-TCP connection to the gateway:
//! [`DnsTcpSession`] answers local names and frames what must be forwarded;
//! this bridge carries the forwarded queries to the upstream resolver over
//! one TCP connection and the replies back, with bounded buffers.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;

use super::{DnsError, DnsTcpSession, LocalRecords};
use crate::host::{self, HostStream, Target};
use crate::poller::{FlowId, Poller, Source};

/// Bytes held for either direction before the guest is slowed down.
const LIMIT: usize = 256 * 1024;

pub(crate) struct DnsBridge {
    session: DnsTcpSession,
    upstream_addr: Option<SocketAddr>,
    upstream: Option<HostStream>,
    connecting: bool,
    interest: Option<EventSet>,
    upstream_eof: bool,
    to_upstream: Vec<u8>,
    /// Bytes for the guest (answers), drained by the flow.
    pub to_guest: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("bad DNS message from the guest")]
    Dns(#[from] DnsError),
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("upstream resolver")]
    Upstream(#[source] io::Error),
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl DnsBridge {
    pub(crate) fn new(records: Arc<LocalRecords>, upstream_addr: Option<SocketAddr>) -> Self {
        DnsBridge {
            session: DnsTcpSession::new(records),
            upstream_addr,
            upstream: None,
            connecting: false,
            interest: None,
            upstream_eof: false,
            to_upstream: Vec::new(),
            to_guest: Vec::new(),
        }
    }

    /// Whether the bridge takes more bytes from the guest now.
    pub(crate) fn wants_guest_bytes(&self) -> bool {
        self.to_upstream.len() < LIMIT && self.to_guest.len() < LIMIT
    }

    pub(crate) fn guest_bytes(&mut self, bytes: &[u8]) -> Result<(), BridgeError> {
        let actions = self.session.from_guest(bytes)?;
        self.to_guest.extend_from_slice(&actions.to_guest);
        self.to_upstream.extend_from_slice(&actions.to_upstream);
        Ok(())
    }

    /// Nothing buffered and no query waiting for the upstream.
    pub(crate) fn idle(&self) -> bool {
        self.to_guest.is_empty()
            && self.to_upstream.is_empty()
            && (self.session.outstanding() == 0 || self.upstream_eof)
    }

    /// Connects, writes and reads the upstream as far as it goes; returns
    /// whether anything moved.
    pub(crate) fn drive(&mut self, id: FlowId, poller: &Poller) -> Result<bool, BridgeError> {
        let mut progress = false;
        if self.upstream.is_none() && !self.to_upstream.is_empty() {
            let addr = self.upstream_addr.ok_or(BridgeError::NoUpstream)?;
            let stream = host::connect(&Target::Tcp(addr)).map_err(BridgeError::Upstream)?;
            poller
                .add(stream.as_raw_fd(), EventSet::OUT, id, Source::Upstream)
                .map_err(BridgeError::Upstream)?;
            self.interest = Some(EventSet::OUT);
            self.upstream = Some(stream);
            self.connecting = true;
        }
        let Some(up) = self.upstream.as_mut() else {
            return Ok(false);
        };
        if self.connecting {
            match up.take_error().map_err(BridgeError::Upstream)? {
                Some(e) => return Err(BridgeError::Upstream(e)),
                None => {
                    // Still in progress shows as a would-block write below.
                    self.connecting = false;
                }
            }
        }
        while !self.to_upstream.is_empty() {
            match up.write(&self.to_upstream) {
                Ok(n) => {
                    self.to_upstream.drain(..n);
                    progress = true;
                }
                Err(e) if would_block(&e) || e.raw_os_error() == Some(libc::ENOTCONN) => {
                    self.connecting = e.raw_os_error() == Some(libc::ENOTCONN);
                    break;
                }
                Err(e) => return Err(BridgeError::Upstream(e)),
            }
        }
        let mut buf = [0u8; 16 * 1024];
        while !self.upstream_eof && self.to_guest.len() < LIMIT {
            match up.read(&mut buf) {
                Ok(0) => self.upstream_eof = true,
                Ok(n) => {
                    let out = self.session.from_upstream(&buf[..n])?;
                    self.to_guest.extend_from_slice(&out);
                    progress = true;
                }
                Err(e) if would_block(&e) || e.raw_os_error() == Some(libc::ENOTCONN) => break,
                Err(e) => return Err(BridgeError::Upstream(e)),
            }
        }
        let mut want = EventSet::empty();
        if !self.upstream_eof && self.to_guest.len() < LIMIT {
            want |= EventSet::IN;
        }
        if self.connecting || !self.to_upstream.is_empty() {
            want |= EventSet::OUT;
        }
        if self.interest != Some(want) {
            poller
                .modify(up.as_raw_fd(), want, id, Source::Upstream)
                .map_err(BridgeError::Upstream)?;
            self.interest = Some(want);
        }
        Ok(progress)
    }

    pub(crate) fn close(&mut self, poller: &Poller) {
        if let Some(up) = self.upstream.take() {
            poller.remove(up.as_raw_fd());
        }
    }
}
