//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): 2-byte big-endian length
//! prefixes, and the guest's side of a connection to the gateway.

use std::sync::Arc;

use super::{error_reply, plan, DnsError, DnsView, Forward, Plan, TCP_LIMIT};

/// Prefixes `msg` with its 2-byte big-endian length. Fails for an empty
/// message and for one longer than 65535 bytes.
pub fn tcp_frame(msg: &[u8]) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    push_frame(&mut out, msg)?;
    Ok(out)
}

/// Appends one framed message to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, msg: &[u8]) -> Result<(), DnsError> {
    let len = u16::try_from(msg.len()).map_err(|_| DnsError::MessageTooLong(msg.len()))?;
    if len == 0 {
        return Err(DnsError::ZeroLengthMessage);
    }
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(())
}

/// Splits a DNS-over-TCP byte stream into messages.
///
/// At most one partial message (≤ 65535 bytes) plus its 2-byte prefix is
/// buffered, and the buffer grows only as bytes arrive. A zero length
/// prefix is a protocol error: [`TcpFramer::push`] fails, and keeps failing,
/// since the stream can no longer be trusted; close the connection.
#[derive(Debug, Default)]
pub struct TcpFramer {
    prefix: [u8; 2],
    prefix_len: usize,
    body: Vec<u8>,
    failed: bool,
}

impl TcpFramer {
    /// A framer at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds stream bytes and returns the messages they complete, in order,
    /// without their prefixes. A partial message stays buffered.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, DnsError> {
        if self.failed {
            return Err(DnsError::ZeroLengthMessage);
        }
        let mut messages = Vec::new();
        while !bytes.is_empty() {
            if self.prefix_len < 2 {
                let take = (2 - self.prefix_len).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                for &b in head {
                    if let Some(slot) = self.prefix.get_mut(self.prefix_len) {
                        *slot = b;
                        self.prefix_len += 1;
                    }
                }
                bytes = rest;
                if self.prefix_len < 2 {
                    break;
                }
                if self.expected() == 0 {
                    self.failed = true;
                    return Err(DnsError::ZeroLengthMessage);
                }
            }
            let take = (self.expected() - self.body.len()).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.body.extend_from_slice(head);
            bytes = rest;
            if self.body.len() == self.expected() {
                messages.push(std::mem::take(&mut self.body));
                self.prefix_len = 0;
            }
        }
        Ok(messages)
    }

    /// Whether bytes of an incomplete message are buffered (a connection
    /// closed now would lose them).
    pub fn has_partial(&self) -> bool {
        self.prefix_len > 0
    }

    /// Length of the message being assembled, once the prefix is complete.
    fn expected(&self) -> usize {
        usize::from(u16::from_be_bytes(self.prefix))
    }
}

/// What [`DnsTcpSession::from_guest`] wants done.
#[derive(Debug, Default)]
pub struct TcpActions {
    /// Framed replies for the guest (local answers and error replies).
    pub to_guest: Vec<u8>,
    /// Queries to send upstream, in the order they came.
    pub forward: Vec<Forward>,
    /// Queries answered locally.
    pub local: usize,
}

/// The guest's side of one DNS-over-TCP connection to the gateway.
///
/// Local names are answered here; every other query becomes a [`Forward`]
/// (the guest's query unchanged, id untouched, or the query for a local
/// CNAME's target) for the bridge to send to its upstream over TCP.
/// Queries may be pipelined and replies go back in any order (RFC 7766
/// §6.2.1.1): local answers go out at once, before earlier forwarded
/// queries are answered. A malformed query gets FORMERR (NOTIMP for other
/// opcodes) when it has a header; shorter junk and responses are dropped.
/// Each query is decided with the [`DnsView`] current when it arrives
/// ([`DnsTcpSession::set_view`]).
#[derive(Debug)]
pub struct DnsTcpSession {
    view: Arc<DnsView>,
    guest: TcpFramer,
}

impl DnsTcpSession {
    /// A session deciding with `view`.
    pub fn new(view: Arc<DnsView>) -> Self {
        Self {
            view,
            guest: TcpFramer::new(),
        }
    }

    /// Decides later queries with `view`.
    pub fn set_view(&mut self, view: Arc<DnsView>) {
        self.view = view;
    }

    /// Bytes the guest sent. `Err` only for a broken stream (zero-length
    /// prefix): close the connection.
    pub fn from_guest(&mut self, bytes: &[u8]) -> Result<TcpActions, DnsError> {
        let mut actions = TcpActions::default();
        for msg in self.guest.push(bytes)? {
            match plan(&msg, &self.view, Some(TCP_LIMIT)) {
                Ok(Plan::Answer(reply) | Plan::NxDomain(reply)) => {
                    actions.local += 1;
                    push_frame(&mut actions.to_guest, &reply)?
                }
                Ok(Plan::NoUpstream(reply)) => push_frame(&mut actions.to_guest, &reply)?,
                Ok(Plan::Forward(forward)) => actions.forward.push(forward),
                Err(e) => {
                    log::debug!("DNS/TCP: bad query from guest: {e}");
                    let reply = e.reply_rcode().and_then(|rcode| error_reply(&msg, rcode));
                    if let Some(reply) = reply {
                        push_frame(&mut actions.to_guest, &reply)?;
                    }
                }
            }
        }
        Ok(actions)
    }
}
