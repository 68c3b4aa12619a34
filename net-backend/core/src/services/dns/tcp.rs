//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): 2-byte big-endian length
//! prefixes, and the per-connection relay between the guest and one
//! upstream TCP connection.

use std::sync::Arc;

use super::{answer_local_within, error_reply, DnsError, LocalOutcome, LocalRecords, TCP_LIMIT};

/// Prefixes `msg` with its 2-byte big-endian length. Fails for an empty
/// message and for one longer than 65535 bytes.
pub fn tcp_frame(msg: &[u8]) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    push_frame(&mut out, msg)?;
    Ok(out)
}

/// Appends one framed message to `out`.
fn push_frame(out: &mut Vec<u8>, msg: &[u8]) -> Result<(), DnsError> {
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

/// What [`DnsTcpSession::from_guest`] wants sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpActions {
    /// Framed replies for the guest (local answers and error replies).
    pub to_guest: Vec<u8>,
    /// Framed queries for the upstream connection, unchanged.
    pub to_upstream: Vec<u8>,
}

/// One guest DNS-over-TCP connection to the gateway.
///
/// Local names are answered here; every other query is relayed unchanged
/// (id untouched) to one upstream TCP connection, and upstream replies are
/// relayed back whole. Queries may be pipelined and replies come back in any
/// order (RFC 7766 §6.2.1.1): local answers go out at once, before earlier
/// forwarded queries are answered. A malformed query gets FORMERR (NOTIMP
/// for other opcodes) when it has a header; shorter junk and responses are
/// dropped. The records are a snapshot taken when the session starts: a
/// name added later is seen by new connections.
#[derive(Debug)]
pub struct DnsTcpSession {
    records: Arc<LocalRecords>,
    guest: TcpFramer,
    upstream: TcpFramer,
    forwarded: u64,
    relayed: u64,
}

impl DnsTcpSession {
    /// A session answering from `records`.
    pub fn new(records: Arc<LocalRecords>) -> Self {
        Self {
            records,
            guest: TcpFramer::new(),
            upstream: TcpFramer::new(),
            forwarded: 0,
            relayed: 0,
        }
    }

    /// Bytes the guest sent. Returns framed bytes for the guest and for the
    /// upstream connection. `Err` only for a broken stream (zero-length
    /// prefix): close the connection.
    pub fn from_guest(&mut self, bytes: &[u8]) -> Result<TcpActions, DnsError> {
        let mut actions = TcpActions::default();
        for msg in self.guest.push(bytes)? {
            match answer_local_within(&msg, &self.records, Some(TCP_LIMIT)) {
                Ok(LocalOutcome::Answer(reply)) => push_frame(&mut actions.to_guest, &reply)?,
                Ok(LocalOutcome::Forward) => {
                    push_frame(&mut actions.to_upstream, &msg)?;
                    self.forwarded += 1;
                }
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

    /// Bytes the upstream sent. Returns the whole messages they complete,
    /// re-framed for the guest; a partial message stays buffered.
    pub fn from_upstream(&mut self, bytes: &[u8]) -> Result<Vec<u8>, DnsError> {
        let mut out = Vec::new();
        for msg in self.upstream.push(bytes)? {
            push_frame(&mut out, &msg)?;
            self.relayed += 1;
        }
        Ok(out)
    }

    /// True once any query was forwarded: the upstream connection is needed.
    pub fn needs_upstream(&self) -> bool {
        self.forwarded > 0
    }

    /// Forwarded queries not yet matched by an upstream reply (by count, not
    /// id: useful to decide when a half-closed connection may be closed).
    pub fn outstanding(&self) -> u64 {
        self.forwarded.saturating_sub(self.relayed)
    }
}
