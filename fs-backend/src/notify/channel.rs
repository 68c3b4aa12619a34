//! One connection's protocol state, without I/O: what the guest helper
//! said (HELLO, ACK), what to send next, and how many events may be in
//! flight. Nothing is sent before a HELLO: until a helper runs, changes
//! wait (coalescing) in the watcher's queue. At most [`WINDOW`] events
//! are sent and not yet acknowledged, so a slow helper makes the host
//! coalesce more instead of building a backlog in QEMU and the guest.

use airlock_common::ratelimited;
use airlock_notify::{Decoder, Flags, Message, VERSION};

/// Events sent and not yet acknowledged, at most.
pub const WINDOW: u64 = 128;

/// Output bytes beyond which no more events are encoded until some are
/// written.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// What a batch of input asked the watcher to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// A helper said HELLO and was answered.
    pub welcomed: bool,
    /// Events sent to the previous helper were never acknowledged: the
    /// new one may have missed them, so everything must be rescanned.
    pub lost_events: bool,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Channel {
    decoder: Decoder,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    /// Whether a helper said HELLO.
    ready: bool,
    /// The nonce of that HELLO: a helper repeats its HELLO until answered,
    /// and a repeat must not restart the session.
    nonce: Option<u64>,
    /// Sequence number of the last event encoded (0: none since WELCOME).
    sent: u64,
    /// Highest sequence number acknowledged.
    acked: u64,
}

impl Default for Channel {
    fn default() -> Self {
        Self::new()
    }
}

impl Channel {
    /// A fresh connection: nothing said yet.
    pub fn new() -> Channel {
        Channel {
            decoder: Decoder::for_host(),
            out: Vec::new(),
            written: 0,
            ready: false,
            nonce: None,
            sent: 0,
            acked: 0,
        }
    }

    /// Takes bytes the guest sent.
    pub fn receive(&mut self, bytes: &[u8]) -> Received {
        let mut got = Received::default();
        self.decoder.push(bytes);
        for message in self.decoder.by_ref() {
            match message {
                Ok(Message::Hello { nonce, .. }) if self.nonce == Some(nonce) => {
                    log::debug!("notify: repeated HELLO ignored");
                }
                Ok(Message::Hello { version, nonce }) if version >= 1 => {
                    got.lost_events |= self.ready && self.acked < self.sent;
                    self.nonce = Some(nonce);
                    got.welcomed = true;
                    self.ready = true;
                    self.sent = 0;
                    self.acked = 0;
                    log::info!("notify: guest helper said hello (version {version})");
                    // Whatever is still unwritten goes out first: the
                    // helper drops everything before this WELCOME.
                    let welcome = Message::Welcome {
                        nonce,
                        version: VERSION.min(version),
                    };
                    // A WELCOME has no path: encoding cannot fail.
                    let _ = welcome.encode(&mut self.out);
                }
                Ok(Message::Hello { version, .. }) => {
                    ratelimited!(
                        log::Level::Warn,
                        "notify: guest helper speaks only protocol version {version}"
                    );
                }
                Ok(Message::Ack { seq }) if self.ready && seq <= self.sent => {
                    self.acked = self.acked.max(seq);
                }
                Ok(Message::Ack { seq }) => {
                    ratelimited!(
                        log::Level::Warn,
                        "notify: guest acknowledged event {seq}, only {} sent",
                        self.sent
                    );
                }
                // The host decoder yields only HELLO and ACK.
                Ok(other) => {
                    ratelimited!(log::Level::Warn, "notify: unexpected {other:?} from guest")
                }
                Err(e) => ratelimited!(log::Level::Warn, "notify: from guest: {e}"),
            }
        }
        got
    }

    /// Whether an event may be encoded now.
    pub fn can_send(&self) -> bool {
        self.ready
            && self.sent - self.acked < WINDOW
            && self.out.len() - self.written < OUTPUT_HIGH_WATER
    }

    /// Whether a helper has said HELLO.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Encodes an event for `path`; the caller checked [`can_send`](Self::can_send)
    /// and that the path is one an event can carry.
    pub fn send(&mut self, flags: Flags, path: &[u8]) {
        let seq = self.sent + 1;
        let event = Message::Event {
            seq,
            flags,
            path: path.to_vec(),
        };
        match event.encode(&mut self.out) {
            Ok(()) => self.sent = seq,
            Err(e) => log::warn!("notify: event not sent: {e}"),
        }
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// Records that `n` bytes of [`output`](Self::output) were written.
    pub fn wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.out.len());
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
    }

    /// Events sent and not acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(nonce: u64) -> Vec<u8> {
        let mut b = Vec::new();
        Message::Hello { version: 1, nonce }.encode(&mut b).unwrap();
        b
    }

    fn ack(seq: u64) -> Vec<u8> {
        let mut b = Vec::new();
        Message::Ack { seq }.encode(&mut b).unwrap();
        b
    }

    /// What the guest would decode from the channel's output.
    fn guest_reads(c: &mut Channel, nonce: u64) -> Vec<Message> {
        let mut d = Decoder::awaiting_welcome(nonce);
        d.push(c.output());
        let n = c.output().len();
        c.wrote(n);
        std::iter::from_fn(|| d.next())
            .filter_map(Result::ok)
            .collect()
    }

    #[test]
    fn nothing_is_sent_before_hello_then_welcome_and_events() {
        let mut c = Channel::new();
        assert!(!c.can_send());
        let got = c.receive(&hello(5));
        assert_eq!(
            got,
            Received {
                welcomed: true,
                lost_events: false
            }
        );
        c.send(Flags::CHANGED, b"a");
        assert_eq!(
            guest_reads(&mut c, 5),
            vec![
                Message::Welcome {
                    nonce: 5,
                    version: 1
                },
                Message::Event {
                    seq: 1,
                    flags: Flags::CHANGED,
                    path: b"a".to_vec()
                }
            ]
        );
        assert!(c.output().is_empty());
    }

    #[test]
    fn the_window_bounds_unacknowledged_events() {
        let mut c = Channel::new();
        c.receive(&hello(1));
        let mut sent = 0;
        while c.can_send() {
            c.send(Flags::CHANGED, b"f");
            sent += 1;
        }
        assert_eq!(sent, WINDOW);
        c.receive(&ack(10));
        assert_eq!(c.in_flight(), WINDOW - 10);
        assert!(c.can_send());
        // An ACK beyond what was sent, or going backwards, changes nothing.
        c.receive(&ack(WINDOW + 5));
        c.receive(&ack(3));
        assert_eq!(c.in_flight(), WINDOW - 10);
    }

    #[test]
    fn a_new_hello_with_events_unacknowledged_asks_for_a_rescan() {
        let mut c = Channel::new();
        c.receive(&hello(1));
        c.send(Flags::CREATED, b"x");
        c.send(Flags::CREATED, b"y");
        c.receive(&ack(2));
        // A restarted helper after everything was applied: no loss.
        assert!(!c.receive(&hello(2)).lost_events);
        c.send(Flags::CHANGED, b"z");
        let got = c.receive(&hello(3));
        assert!(got.welcomed && got.lost_events);
        // Numbering restarts; the stale event before the WELCOME is dropped
        // by the new helper.
        c.send(Flags::RESCAN, b"");
        let read = guest_reads(&mut c, 3);
        assert_eq!(
            read.last(),
            Some(&Message::Event {
                seq: 1,
                flags: Flags::RESCAN,
                path: Vec::new()
            })
        );
        assert_eq!(read.len(), 2, "{read:?}");
    }

    #[test]
    fn a_repeated_hello_does_not_restart_the_session() {
        let mut c = Channel::new();
        c.receive(&hello(9));
        c.send(Flags::CHANGED, b"a");
        let got = c.receive(&hello(9));
        assert_eq!(got, Received::default());
        assert_eq!(c.in_flight(), 1);
        let read = guest_reads(&mut c, 9);
        assert_eq!(read.len(), 2, "one WELCOME, one event: {read:?}");
    }

    #[test]
    fn junk_from_the_guest_changes_nothing() {
        let mut c = Channel::new();
        assert_eq!(c.receive(&[0xff; 300]), Received::default());
        let mut hello0 = hello(1);
        hello0[5] = 0; // version 0
        assert!(!c.receive(&hello0).welcomed);
        assert!(!c.is_ready() && c.output().is_empty());
    }
}
