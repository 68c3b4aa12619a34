//! `fuse`: a sequence of FUSE requests into the fs server, each in a
//! well-formed descriptor chain on the request (or high-priority) queue,
//! served by [`FsSession`]'s event handler: `fuse_backend_rs`'s `Server`
//! parses it from a `Reader` over guest memory and calls [`AirlockFs`],
//! which works on a real directory.
//!
//! The session starts with a proper `FUSE_INIT`; then each request is an
//! opcode, node id, credentials and body from the input, with a correct
//! header length (or, on request, the input's own), optionally split across
//! two readable descriptors, and a reply buffer of a chosen size. Node ids
//! and file handles the passthrough hands out are small integers, so the
//! fuzzer finds them.
//!
//! Every reply is checked: the chain is returned, and a reply that was
//! written carries the request's `unique`, its own length, and an error
//! that is 0 or a negated errno.
//!
//! [`FsSession`]: airlock_fs::device::FsSession
//! [`AirlockFs`]: airlock_fs::filesystem::AirlockFs

use airlock_testkit::queues::{GuestQueues, F_NEXT, F_WRITE, HIGH_BUFFERS};
use airlock_testkit::Input;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;

use super::{fresh_share, session};
use airlock_fs::device::{FsSession, HIPRIO_QUEUE_EVENT, REQUEST_QUEUE_EVENT};

const MAX_REQUESTS: usize = 48;
const QUEUE_SIZE: u16 = 8;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// Where requests go, and replies (the second half of the high area).
const REQUEST_AT: u64 = HIGH_BUFFERS.start;
const REPLY_AT: u64 = HIGH_BUFFERS.start + 0x20000;
const MAX_REPLY: u32 = 0x20000;
const FUSE_INIT: u32 = 26;
const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_INTERRUPT: u32 = 36;

pub fn fuzz_fuse(data: &[u8]) {
    run(data);
}

/// Runs one input; returns each request's opcode and reply error (`None`
/// when nothing was written back), for the harness's own tests.
pub fn run(data: &[u8]) -> Vec<(u32, Option<i32>)> {
    let (_guard, dir) = fresh_share();
    let mut input = Input::new(data);
    let variant = input.u8();
    let init_flags = input.u32();
    let event_idx = input.bool();
    let session = session(dir, variant);
    let mut guest = Guest::new(&session, event_idx);

    // FUSE_INIT 7.33 with the guest's flags (virtiofs guests offer many).
    let mut init = Vec::with_capacity(16);
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&33u32.to_le_bytes());
    init.extend_from_slice(&(128u32 * 1024).to_le_bytes());
    init.extend_from_slice(&init_flags.to_le_bytes());
    guest.request(&Request {
        queue: REQUEST_QUEUE,
        opcode: FUSE_INIT,
        nodeid: 0,
        uid: 0,
        gid: 0,
        body: &init,
        len: None,
        split: None,
        reply_len: MAX_REPLY,
    });

    for _ in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let opcode = match input.u8() {
            0xff => input.u32(),
            op => u32::from(op % 52),
        };
        let nodeid = match input.u8() {
            0xff => input.u64(),
            n => u64::from(n % 16),
        };
        let (uid, gid) = match input.u8() % 4 {
            0 => (0, 0),
            1 => (1000, 1000),
            2 => (5, 5),
            _ => (input.u32(), input.u32()),
        };
        let len = (kind & 2 != 0).then(|| input.u32());
        let split = (kind & 4 != 0).then(|| usize::from(input.u16()));
        let reply_len = if kind & 8 != 0 {
            u32::from(input.u16()) % MAX_REPLY
        } else {
            MAX_REPLY
        };
        let body = input.chunk(usize::from(u16::MAX));
        let queue = if kind & 1 != 0 || matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET) {
            HIPRIO_QUEUE
        } else {
            REQUEST_QUEUE
        };
        guest.request(&Request {
            queue,
            opcode,
            nodeid,
            uid,
            gid,
            body,
            len,
            split,
            reply_len,
        });
    }
    guest.replies
}

const HIPRIO_QUEUE: usize = HIPRIO_QUEUE_EVENT as usize;
const REQUEST_QUEUE: usize = REQUEST_QUEUE_EVENT as usize;

struct Request<'a> {
    queue: usize,
    opcode: u32,
    nodeid: u64,
    uid: u32,
    gid: u32,
    body: &'a [u8],
    /// The header's length field, if not the true length.
    len: Option<u32>,
    /// Where the readable part is cut into two descriptors.
    split: Option<usize>,
    reply_len: u32,
}

/// The guest's driver: one chain per request, descriptors reused.
struct Guest<'a> {
    session: &'a FsSession,
    queues: GuestQueues,
    unique: u64,
    replies: Vec<(u32, Option<i32>)>,
}

impl<'a> Guest<'a> {
    fn new(session: &'a FsSession, event_idx: bool) -> Self {
        let queues = GuestQueues::new(&[QUEUE_SIZE, QUEUE_SIZE]);
        queues.set_event_idx(event_idx);
        session.set_event_idx(event_idx);
        session
            .update_memory(queues.mem.clone())
            .expect("cannot hand guest memory to the session");
        Guest {
            session,
            queues,
            unique: 0,
            replies: Vec::new(),
        }
    }

    fn request(&mut self, r: &Request) {
        self.unique += 2;
        let total = IN_HEADER + r.body.len();
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&r.len.unwrap_or(total as u32).to_le_bytes());
        bytes.extend_from_slice(&r.opcode.to_le_bytes());
        bytes.extend_from_slice(&self.unique.to_le_bytes());
        bytes.extend_from_slice(&r.nodeid.to_le_bytes());
        bytes.extend_from_slice(&r.uid.to_le_bytes());
        bytes.extend_from_slice(&r.gid.to_le_bytes());
        bytes.extend_from_slice(&4242u32.to_le_bytes()); // pid
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(r.body);
        self.queues.write(REQUEST_AT, &bytes);

        let q = r.queue;
        let cut = r.split.map(|s| s.min(total));
        match cut {
            Some(cut) => {
                self.queues
                    .set_desc(q, 0, REQUEST_AT, cut as u32, F_NEXT, 1);
                self.queues.set_desc(
                    q,
                    1,
                    REQUEST_AT + cut as u64,
                    (total - cut) as u32,
                    F_NEXT,
                    2,
                );
            }
            None => self
                .queues
                .set_desc(q, 0, REQUEST_AT, total as u32, F_NEXT, 2),
        }
        self.queues
            .set_desc(q, 2, REPLY_AT, r.reply_len, F_WRITE, 0);
        // Stale reply bytes must not pass for a reply.
        self.queues.write(REPLY_AT, &[0u8; OUT_HEADER]);
        self.queues.push_avail(q, 0);

        let before = self.queues.used_idx(q);
        let event = q as u16;
        if let Err(e) = self
            .session
            .handle_event(event, EventSet::IN, &self.queues.vrings, 0)
        {
            panic!("queue event {event} stopped the device: {e}");
        }
        self.queues.check_used(q, before);
        let after = self.queues.used_idx(q);
        assert_eq!(
            after.wrapping_sub(before),
            1,
            "opcode {}: the chain was not returned",
            r.opcode
        );
        let (head, used_len) = self.queues.used_elem(q, before);
        assert_eq!(head, 0, "a different chain came back");
        assert!(
            used_len <= r.reply_len,
            "opcode {}: {used_len} bytes used of a {}-byte reply buffer",
            r.opcode,
            r.reply_len
        );
        let error = (used_len as usize >= OUT_HEADER).then(|| {
            check_reply(
                &self.queues.read(REPLY_AT, OUT_HEADER),
                used_len,
                self.unique,
                r,
            )
        });
        self.replies.push((r.opcode, error));
    }
}

/// Checks a reply's header; returns its error.
fn check_reply(out: &[u8], used_len: u32, unique: u64, r: &Request) -> i32 {
    let len = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    let error = i32::from_le_bytes([out[4], out[5], out[6], out[7]]);
    let reply_unique = u64::from_le_bytes([
        out[8], out[9], out[10], out[11], out[12], out[13], out[14], out[15],
    ]);
    assert_eq!(
        len, used_len,
        "opcode {}: reply header says {len} bytes, {used_len} were written",
        r.opcode
    );
    assert!(
        (-4095..=0).contains(&error),
        "opcode {}: reply error {error} is not a negated errno",
        r.opcode
    );
    // INTERRUPT and notifications aside, a reply answers its request.
    if r.opcode != FUSE_INTERRUPT {
        assert_eq!(
            reply_unique, unique,
            "opcode {}: reply to another request",
            r.opcode
        );
    }
    error
}
