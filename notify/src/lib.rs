//! The wire format between airlock-fs (`--notify-socket`) and the guest
//! helper `airlock-guest`, over a virtio-serial port named [`PORT_NAME`].
//! Std only, no I/O: both ends encode with [`Message::encode`] and decode
//! with a [`Decoder`]. The format is documented in `docs/notify.md`.
//!
//! Every message is a frame: a little-endian `u32` length (the bytes that
//! follow it), a type byte, then the type's fields, little-endian:
//!
//! | type | name | direction | fields |
//! |---|---|---|---|
//! | 1 | HELLO | guest → host | `u16` highest version, `u64` nonce |
//! | 2 | WELCOME | host → guest | `u64` the HELLO's nonce, `u16` version |
//! | 3 | EVENT | host → guest | `u64` sequence, `u16` [`Flags`], path bytes |
//! | 4 | ACK | guest → host | `u64` last sequence applied |
//!
//! A virtio-serial port is a byte stream that outlives the programs at
//! either end, so a new guest helper may find half a frame, or a stale
//! backlog, waiting in it. It therefore starts with a HELLO carrying a
//! random nonce and drops every byte until the WELCOME echoing that nonce
//! ([`Decoder::awaiting_welcome`]): the stream is in step from there. The
//! host side skips bytes that cannot start a frame ([`Decoder::for_host`]).

use std::fmt;

/// The virtio-serial port name (`-device virtserialport,name=…`).
pub const PORT_NAME: &str = "org.airlock.notify";

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;

/// Longest path an EVENT carries (Linux's `PATH_MAX`). A longer one is
/// sent as a RESCAN of its longest ancestor that fits.
pub const MAX_PATH: usize = 4096;

const TYPE_HELLO: u8 = 1;
const TYPE_WELCOME: u8 = 2;
const TYPE_EVENT: u8 = 3;
const TYPE_ACK: u8 = 4;

/// Length field value of HELLO and WELCOME: type, `u64`, `u16`.
const LEN_HELLO: u32 = 1 + 8 + 2;
const LEN_WELCOME: u32 = 1 + 8 + 2;
/// Length field value of an EVENT with an empty path.
const LEN_EVENT_MIN: u32 = 1 + 8 + 2;
const LEN_ACK: u32 = 1 + 8;
/// Bytes before the length field's value counts.
const LENGTH_FIELD: usize = 4;

/// Largest frame, length field included.
pub const MAX_FRAME: usize = LENGTH_FIELD + LEN_EVENT_MIN as usize + MAX_PATH;

/// What changed at an EVENT's path. Bits a receiver does not know are
/// kept and ignored (a newer host may send more).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    /// The contents changed (written, truncated).
    pub const CHANGED: Flags = Flags(0x01);
    /// Metadata changed (mode, owner, times, extended attributes, links).
    pub const ATTRIB: Flags = Flags(0x02);
    /// The name appeared in its directory (created, linked, moved in).
    pub const CREATED: Flags = Flags(0x04);
    /// The name disappeared from its directory (removed, moved away).
    pub const REMOVED: Flags = Flags(0x08);
    /// A directory where events were lost: anything at or under it may
    /// have changed.
    pub const RESCAN: Flags = Flags(0x10);

    const NAMES: [(Flags, &'static str); 5] = [
        (Flags::CHANGED, "changed"),
        (Flags::ATTRIB, "attrib"),
        (Flags::CREATED, "created"),
        (Flags::REMOVED, "removed"),
        (Flags::RESCAN, "rescan"),
    ];

    /// No flag.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits, unknown ones included.
    pub const fn from_bits_retain(bits: u16) -> Flags {
        Flags(bits)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in Flags::NAMES {
            if self.contains(flag) {
                write!(f, "{}{name}", if first { "" } else { "|" })?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 || first {
            write!(f, "{}{rest:#x}", if first { "" } else { "|" })?;
        }
        Ok(())
    }
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Guest → host: a helper (re)started. `version` is the highest it
    /// speaks; `nonce` is echoed in the WELCOME.
    Hello { version: u16, nonce: u64 },
    /// Host → guest: the answer to HELLO; events follow.
    Welcome { nonce: u64, version: u16 },
    /// Host → guest: `path` (relative to the share's root; empty for the
    /// root itself) changed as `flags` say. `seq` counts up from 1 after
    /// each WELCOME.
    Event {
        seq: u64,
        flags: Flags,
        path: Vec<u8>,
    },
    /// Guest → host: every event up to `seq` has been applied.
    Ack { seq: u64 },
}

/// A path an EVENT cannot carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Longer than [`MAX_PATH`].
    TooLong(usize),
    /// Starts or ends with `/`, or has an empty, `.` or `..` component.
    BadComponent,
    /// Contains a NUL byte.
    Nul,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::TooLong(n) => write!(f, "path of {n} bytes is longer than {MAX_PATH}"),
            PathError::BadComponent => {
                f.write_str("path is not relative or has an empty, `.` or `..` component")
            }
            PathError::Nul => f.write_str("path contains a NUL byte"),
        }
    }
}

impl std::error::Error for PathError {}

/// Checks that `path` is relative to the share's root and plain: `a/b/c`
/// or empty (the root), no `.`, `..` or empty components, no NUL.
pub fn check_path(path: &[u8]) -> Result<(), PathError> {
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong(path.len()));
    }
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.is_empty() {
        return Ok(());
    }
    for component in path.split(|&b| b == b'/') {
        if component.is_empty() || component == b"." || component == b".." {
            return Err(PathError::BadComponent);
        }
    }
    Ok(())
}

impl Message {
    /// Appends the frame of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), PathError> {
        match self {
            Message::Hello { version, nonce } => {
                out.extend_from_slice(&LEN_HELLO.to_le_bytes());
                out.push(TYPE_HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&nonce.to_le_bytes());
            }
            Message::Welcome { nonce, version } => {
                out.extend_from_slice(&welcome_prefix(*nonce));
                out.extend_from_slice(&version.to_le_bytes());
            }
            Message::Event { seq, flags, path } => {
                check_path(path)?;
                // At most MAX_PATH + 11: fits in u32.
                let len = LEN_EVENT_MIN + path.len() as u32;
                out.extend_from_slice(&len.to_le_bytes());
                out.push(TYPE_EVENT);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&flags.bits().to_le_bytes());
                out.extend_from_slice(path);
            }
            Message::Ack { seq } => {
                out.extend_from_slice(&LEN_ACK.to_le_bytes());
                out.push(TYPE_ACK);
                out.extend_from_slice(&seq.to_le_bytes());
            }
        }
        Ok(())
    }
}

/// The first 13 bytes of the WELCOME answering `nonce`: what a guest
/// helper looks for in the stream before trusting anything in it.
pub fn welcome_prefix(nonce: u64) -> [u8; 13] {
    let mut p = [0u8; 13];
    p[..4].copy_from_slice(&LEN_WELCOME.to_le_bytes());
    p[4] = TYPE_WELCOME;
    p[5..].copy_from_slice(&nonce.to_le_bytes());
    p
}

/// What a decoder threw away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes that could not start a frame this side accepts.
    Skipped(usize),
    /// A whole EVENT frame whose path is not acceptable.
    BadPath(PathError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Skipped(n) => write!(f, "{n} bytes that start no valid frame skipped"),
            DecodeError::BadPath(e) => write!(f, "event dropped: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Which end decodes: each accepts only the other end's message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// airlock-fs: HELLO and ACK.
    Host,
    /// airlock-guest: WELCOME and EVENT.
    Guest,
}

/// A streaming decoder: [`push`](Decoder::push) bytes as they arrive, then
/// take messages (it is an iterator) until it returns `None`. It never holds
/// more than one incomplete frame plus the last chunk pushed.
#[derive(Debug)]
pub struct Decoder {
    side: Side,
    buf: Vec<u8>,
    /// Guest side, before the WELCOME: the bytes it starts with.
    awaiting: Option<[u8; 13]>,
}

impl Decoder {
    /// airlock-fs' decoder of what the guest sends.
    pub fn for_host() -> Decoder {
        Decoder {
            side: Side::Host,
            buf: Vec::new(),
            awaiting: None,
        }
    }

    /// airlock-guest's decoder after sending HELLO with `nonce`: drops
    /// everything before the WELCOME that echoes it.
    pub fn awaiting_welcome(nonce: u64) -> Decoder {
        Decoder {
            side: Side::Guest,
            buf: Vec::new(),
            awaiting: Some(welcome_prefix(nonce)),
        }
    }

    /// Whether the WELCOME has not been seen yet (guest side).
    pub fn is_awaiting_welcome(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (an incomplete frame, or undecoded input).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn decode(&mut self) -> Option<Result<Message, DecodeError>> {
        if let Some(prefix) = self.awaiting {
            return self.next_welcome(&prefix);
        }
        let mut skip = 0;
        while self.buf.len() - skip > LENGTH_FIELD {
            let head = &self.buf[skip..];
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if !self.plausible(head[4], len) {
                skip += 1;
                continue;
            }
            if skip > 0 {
                self.buf.drain(..skip);
                return Some(Err(DecodeError::Skipped(skip)));
            }
            let total = LENGTH_FIELD + len as usize;
            if self.buf.len() < total {
                return None;
            }
            let frame: Vec<u8> = self.buf.drain(..total).collect();
            return Some(parse(&frame[LENGTH_FIELD..]));
        }
        if skip > 0 {
            self.buf.drain(..skip);
            return Some(Err(DecodeError::Skipped(skip)));
        }
        None
    }

    fn next_welcome(&mut self, prefix: &[u8; 13]) -> Option<Result<Message, DecodeError>> {
        let whole = prefix.len() + 2;
        match self.buf.windows(prefix.len()).position(|w| w == prefix) {
            Some(0) if self.buf.len() >= whole => {
                let frame: Vec<u8> = self.buf.drain(..whole).collect();
                self.awaiting = None;
                Some(parse(&frame[LENGTH_FIELD..]))
            }
            Some(0) => None,
            Some(at) => {
                self.buf.drain(..at);
                Some(Err(DecodeError::Skipped(at)))
            }
            None => {
                // Keep a tail that may be the start of the prefix.
                let keep = (prefix.len() - 1).min(self.buf.len());
                let drop = self.buf.len() - keep;
                if drop == 0 {
                    return None;
                }
                self.buf.drain(..drop);
                Some(Err(DecodeError::Skipped(drop)))
            }
        }
    }

    /// Whether a frame of type `ty` with length field `len` may start here.
    fn plausible(&self, ty: u8, len: u32) -> bool {
        match (self.side, ty) {
            (Side::Host, TYPE_HELLO) => len == LEN_HELLO,
            (Side::Host, TYPE_ACK) => len == LEN_ACK,
            (Side::Guest, TYPE_WELCOME) => len == LEN_WELCOME,
            (Side::Guest, TYPE_EVENT) => {
                (LEN_EVENT_MIN..=LEN_EVENT_MIN + MAX_PATH as u32).contains(&len)
            }
            _ => false,
        }
    }
}

impl Iterator for Decoder {
    type Item = Result<Message, DecodeError>;

    /// The next message, an error naming what was dropped, or `None` when
    /// more bytes are needed (pushing more makes it yield again).
    fn next(&mut self) -> Option<Self::Item> {
        self.decode()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses a frame body (type byte onwards) whose type and length were
/// checked by [`Decoder::plausible`].
fn parse(body: &[u8]) -> Result<Message, DecodeError> {
    Ok(match body[0] {
        TYPE_HELLO => Message::Hello {
            version: u16_at(body, 1),
            nonce: u64_at(body, 3),
        },
        TYPE_WELCOME => Message::Welcome {
            nonce: u64_at(body, 1),
            version: u16_at(body, 9),
        },
        TYPE_EVENT => {
            let path = body[11..].to_vec();
            check_path(&path).map_err(DecodeError::BadPath)?;
            Message::Event {
                seq: u64_at(body, 1),
                flags: Flags::from_bits_retain(u16_at(body, 9)),
                path,
            }
        }
        _ => Message::Ack {
            seq: u64_at(body, 1),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        out
    }

    fn drain(d: &mut Decoder) -> Vec<Result<Message, DecodeError>> {
        std::iter::from_fn(|| d.next()).collect()
    }

    #[test]
    fn frames_have_the_documented_layout() {
        assert_eq!(
            frame(&Message::Hello {
                version: 1,
                nonce: 0x0102030405060708
            }),
            [11, 0, 0, 0, 1, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(
            frame(&Message::Event {
                seq: 2,
                flags: Flags::CHANGED | Flags::CREATED,
                path: b"a/b".to_vec()
            }),
            [14, 0, 0, 0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, b'a', b'/', b'b']
        );
        assert_eq!(
            frame(&Message::Ack { seq: 258 }),
            [9, 0, 0, 0, 4, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn paths_must_be_plain_and_relative() {
        for good in [&b""[..], b"a", b"a/b c/\xff"] {
            assert_eq!(check_path(good), Ok(()), "{good:?}");
        }
        for bad in [&b"/a"[..], b"a/", b"a//b", b".", b"a/../b", b"./a"] {
            assert_eq!(check_path(bad), Err(PathError::BadComponent), "{bad:?}");
        }
        assert_eq!(check_path(b"a\0b"), Err(PathError::Nul));
        assert_eq!(
            check_path(&vec![b'a'; MAX_PATH + 1]),
            Err(PathError::TooLong(MAX_PATH + 1))
        );
        let event = Message::Event {
            seq: 1,
            flags: Flags::CHANGED,
            path: b"../etc".to_vec(),
        };
        assert!(event.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn host_decodes_hello_and_ack_byte_by_byte() {
        let mut stream = frame(&Message::Hello {
            version: 3,
            nonce: 42,
        });
        stream.extend(frame(&Message::Ack { seq: 7 }));
        let mut d = Decoder::for_host();
        let mut got = Vec::new();
        for b in stream {
            d.push(&[b]);
            got.extend(drain(&mut d));
        }
        assert_eq!(
            got,
            vec![
                Ok(Message::Hello {
                    version: 3,
                    nonce: 42
                }),
                Ok(Message::Ack { seq: 7 })
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn host_skips_junk_and_types_it_does_not_take() {
        let mut stream = vec![0xff, 0, 0];
        // An EVENT is a host → guest message: junk to the host.
        stream.extend(frame(&Message::Event {
            seq: 1,
            flags: Flags::CHANGED,
            path: b"x".to_vec(),
        }));
        stream.extend(frame(&Message::Ack { seq: 9 }));
        let mut d = Decoder::for_host();
        d.push(&stream);
        let got = drain(&mut d);
        assert_eq!(got.last(), Some(&Ok(Message::Ack { seq: 9 })));
        let skipped: usize = got
            .iter()
            .map(|r| match r {
                Err(DecodeError::Skipped(n)) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(skipped, 3 + 16);
    }

    #[test]
    fn guest_drops_everything_before_its_welcome() {
        let nonce = 0xdead_beef_0bad_cafe;
        // A stale backlog: half an event, a WELCOME for another helper, an
        // event, then ours.
        let old = frame(&Message::Event {
            seq: 5,
            flags: Flags::REMOVED,
            path: b"stale".to_vec(),
        });
        let mut stream = old[7..].to_vec();
        stream.extend(frame(&Message::Welcome {
            nonce: 1,
            version: 1,
        }));
        stream.extend(&old);
        stream.extend(frame(&Message::Welcome { nonce, version: 1 }));
        stream.extend(frame(&Message::Event {
            seq: 1,
            flags: Flags::CREATED,
            path: b"new".to_vec(),
        }));
        for chunk in [1, 3, 7, 64] {
            let mut d = Decoder::awaiting_welcome(nonce);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                got.extend(drain(&mut d).into_iter().filter_map(Result::ok));
            }
            assert_eq!(
                got,
                vec![
                    Message::Welcome { nonce, version: 1 },
                    Message::Event {
                        seq: 1,
                        flags: Flags::CREATED,
                        path: b"new".to_vec()
                    }
                ],
                "chunks of {chunk}"
            );
            assert!(!d.is_awaiting_welcome());
        }
    }

    #[test]
    fn guest_rejects_event_paths_that_leave_the_share() {
        let mut stream = Vec::new();
        stream.extend(frame(&Message::Welcome {
            nonce: 3,
            version: 1,
        }));
        // Built by hand: encode refuses it.
        let path = b"a/../../etc";
        stream.extend((LEN_EVENT_MIN + path.len() as u32).to_le_bytes());
        stream.push(TYPE_EVENT);
        stream.extend(1u64.to_le_bytes());
        stream.extend(Flags::CHANGED.bits().to_le_bytes());
        stream.extend(path);
        let mut d = Decoder::awaiting_welcome(3);
        d.push(&stream);
        let got = drain(&mut d);
        assert_eq!(
            got[1],
            Err(DecodeError::BadPath(PathError::BadComponent)),
            "{got:?}"
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoders_never_panic_on_noise() {
        // xorshift: deterministic noise with frames mixed in.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut noise = Vec::new();
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
            if i % 997 == 0 {
                noise.extend(frame(&Message::Ack { seq: i }));
                noise.extend(frame(&Message::Welcome {
                    nonce: 77,
                    version: 1,
                }));
            }
        }
        for mut d in [
            Decoder::for_host(),
            Decoder::awaiting_welcome(77),
            Decoder::awaiting_welcome(78),
        ] {
            for piece in noise.chunks(61) {
                d.push(piece);
                drain(&mut d);
                assert!(d.buffered() <= MAX_FRAME + 61);
            }
        }
    }

    #[test]
    fn flags_print_their_names() {
        assert_eq!(
            (Flags::CHANGED | Flags::RESCAN).to_string(),
            "changed|rescan"
        );
        assert_eq!(Flags::from_bits_retain(0x101).to_string(), "changed|0x100");
        assert_eq!(Flags::empty().to_string(), "0x0");
    }
}
