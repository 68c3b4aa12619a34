//! Backend-only virtio-fs: FUSE requests pushed straight into a daemon's
//! request queue, no guest kernel in between. After `INIT`, `LOOKUP` and
//! `OPEN` of a prepared 64 MiB file, each operation (getattr, lookup,
//! 4 KiB read, 4 KiB write at random aligned offsets) is issued for a fixed
//! time with a fixed number of requests in flight, each completed request
//! immediately replaced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, EntryOut, FsOptions, GetattrIn, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut,
    OutHeader, ReadIn, WriteIn, WriteOut, KERNEL_MINOR_VERSION, KERNEL_VERSION, ROOT_ID,
};
use vm_memory::{Address, ByteValued, GuestAddress};

use airlock_testkit::frontend::device::Device;
use airlock_testkit::frontend::virtq::{self, Buffer};

/// Errors of the FUSE harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue driver failed.
    #[error(transparent)]
    Queue(#[from] virtq::Error),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] airlock_testkit::frontend::memory::Error),
    /// The daemon answered with an error.
    #[error("{op} failed in the daemon: errno {errno}")]
    Reply {
        /// The request.
        op: &'static str,
        /// The (positive) errno.
        errno: i32,
    },
    /// The daemon's reply is malformed.
    #[error("malformed reply to {op}: {what}")]
    Malformed {
        /// The request.
        op: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The daemon stopped answering.
    #[error("no reply from the daemon within {0:?}")]
    Timeout(Duration),
}

/// The request queue (queue 0 is hiprio).
const REQUEST_QUEUE: usize = 1;
/// Size of each slot's request and reply buffers.
const SLOT_BYTES: u32 = 8192;
/// Payload size of the read and write tests.
pub const IO_SIZE: u32 = 4096;
/// Size of the prepared file.
pub const FILE_SIZE: u64 = 64 << 20;
/// Name of the prepared file in the share's root.
pub const FILE_NAME: &str = "file";
/// How long to wait for any reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One benchmarked operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    /// `GETATTR` of the open file.
    Getattr,
    /// `LOOKUP` of the file's name in the root.
    Lookup,
    /// 4 KiB `READ` at a random aligned offset.
    Read,
    /// 4 KiB `WRITE` at a random aligned offset.
    Write,
}

impl FuseOp {
    /// All of them, in table order.
    pub const ALL: [FuseOp; 4] = [FuseOp::Getattr, FuseOp::Lookup, FuseOp::Read, FuseOp::Write];

    /// Name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            FuseOp::Getattr => "getattr",
            FuseOp::Lookup => "lookup",
            FuseOp::Read => "read 4 KiB",
            FuseOp::Write => "write 4 KiB",
        }
    }

    /// Payload bytes per request.
    pub fn bytes(self) -> u64 {
        match self {
            FuseOp::Read | FuseOp::Write => u64::from(IO_SIZE),
            _ => 0,
        }
    }
}

struct Slot {
    req: GuestAddress,
    reply: GuestAddress,
    unique: u64,
}

/// A FUSE session on a connected virtio-fs device.
pub struct Session {
    dev: Device,
    slots: Vec<Slot>,
    /// Chain head → slot.
    inflight: HashMap<u16, usize>,
    unique: u64,
    nodeid: u64,
    fh: u64,
    rng: u64,
}

/// The result of one timed run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Completed requests.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Session {
    /// Starts a session: `INIT`, then looks up and opens [`FILE_NAME`].
    pub fn start(mut dev: Device, max_depth: usize) -> Result<Session, Error> {
        let mut slots = Vec::with_capacity(max_depth);
        for _ in 0..max_depth {
            let req = dev.mem.alloc(u64::from(SLOT_BYTES), 4096)?;
            let reply = dev.mem.alloc(u64::from(SLOT_BYTES), 4096)?;
            slots.push(Slot {
                req,
                reply,
                unique: 0,
            });
        }
        let mut s = Session {
            dev,
            slots,
            inflight: HashMap::new(),
            unique: 0,
            nodeid: 0,
            fh: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        let flags = FsOptions::ASYNC_READ | FsOptions::BIG_WRITES | FsOptions::MAX_PAGES;
        let init = InitIn {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags: flags.bits() as u32,
        };
        let reply = s.call(Opcode::Init, ROOT_ID, init.as_slice(), &[], "INIT")?;
        let out = read_obj::<InitOut>(&reply, "INIT")?;
        if out.major != KERNEL_VERSION {
            return Err(Error::Malformed {
                op: "INIT",
                what: format!("protocol {}.{}", out.major, out.minor),
            });
        }
        let name = format!("{FILE_NAME}\0");
        let reply = s.call(Opcode::Lookup, ROOT_ID, name.as_bytes(), &[], "LOOKUP")?;
        let entry = read_obj::<EntryOut>(&reply, "LOOKUP")?;
        s.nodeid = entry.nodeid;
        let open = OpenIn {
            flags: libc::O_RDWR as u32,
            fuse_flags: 0,
        };
        let reply = s.call(Opcode::Open, s.nodeid, open.as_slice(), &[], "OPEN")?;
        s.fh = read_obj::<OpenOut>(&reply, "OPEN")?.fh;
        Ok(s)
    }

    fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    fn random_offset(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % (FILE_SIZE / u64::from(IO_SIZE))) * u64::from(IO_SIZE)
    }

    /// Writes request `op` into slot `slot` and adds it to the queue.
    fn submit(
        &mut self,
        slot: usize,
        opcode: Opcode,
        nodeid: u64,
        args: &[u8],
        data: &[u8],
        reply_len: u32,
    ) -> Result<(), Error> {
        let unique = self.next_unique();
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + args.len() + data.len()) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let s = &mut self.slots[slot];
        s.unique = unique;
        let (req, reply) = (s.req, s.reply);
        let mem = &self.dev.mem;
        let h = header.as_slice();
        mem.write(h, req)?;
        mem.write(args, req.unchecked_add(h.len() as u64))?;
        mem.write(data, req.unchecked_add((h.len() + args.len()) as u64))?;
        let bufs = [
            Buffer {
                addr: req,
                len: header.len,
                writable: false,
            },
            Buffer {
                addr: reply,
                len: reply_len.min(SLOT_BYTES),
                writable: true,
            },
        ];
        let head = self.dev.queues[REQUEST_QUEUE].add(mem, &bufs)?;
        self.inflight.insert(head, slot);
        Ok(())
    }

    /// Waits for the next completed request; returns its slot and the
    /// reply payload length (after the out header), checking the header.
    fn complete(&mut self, op: &'static str, block: bool) -> Result<Option<usize>, Error> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let q = &mut self.dev.queues[REQUEST_QUEUE];
            if let Some(used) = q.pop_used(&self.dev.mem)? {
                let slot = self.inflight.remove(&used.head).ok_or(Error::Malformed {
                    op,
                    what: format!("completion of unknown chain {}", used.head),
                })?;
                let mut raw = [0u8; std::mem::size_of::<OutHeader>()];
                if (used.len as usize) < raw.len() {
                    return Err(Error::Malformed {
                        op,
                        what: format!("reply of {} bytes", used.len),
                    });
                }
                self.dev.mem.read(&mut raw, self.slots[slot].reply)?;
                let out = decode::<OutHeader>(&raw).unwrap_or_default();
                if out.unique != self.slots[slot].unique {
                    return Err(Error::Malformed {
                        op,
                        what: format!(
                            "reply to {} for request {}",
                            out.unique, self.slots[slot].unique
                        ),
                    });
                }
                if out.error != 0 {
                    return Err(Error::Reply {
                        op,
                        errno: -out.error,
                    });
                }
                return Ok(Some(slot));
            }
            if !block {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(REPLY_TIMEOUT));
            }
            q.wait(deadline - now)?;
        }
    }

    /// One request, synchronously; returns the reply payload.
    fn call(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        args: &[u8],
        data: &[u8],
        op: &'static str,
    ) -> Result<Vec<u8>, Error> {
        self.submit(0, opcode, nodeid, args, data, SLOT_BYTES)?;
        self.dev.queues[REQUEST_QUEUE].publish_and_kick(&self.dev.mem)?;
        let slot = self
            .complete(op, true)?
            .ok_or(Error::Timeout(REPLY_TIMEOUT))?;
        let mut payload = vec![0u8; SLOT_BYTES as usize - std::mem::size_of::<OutHeader>()];
        self.dev.mem.read(
            &mut payload,
            self.slots[slot]
                .reply
                .unchecked_add(std::mem::size_of::<OutHeader>() as u64),
        )?;
        Ok(payload)
    }

    fn submit_op(&mut self, slot: usize, op: FuseOp) -> Result<(), Error> {
        let header = std::mem::size_of::<OutHeader>() as u32;
        match op {
            FuseOp::Getattr => {
                let args = GetattrIn {
                    flags: 1, // FUSE_GETATTR_FH
                    dummy: 0,
                    fh: self.fh,
                };
                let len = header + std::mem::size_of::<AttrOut>() as u32;
                self.submit(
                    slot,
                    Opcode::Getattr,
                    self.nodeid,
                    args.as_slice(),
                    &[],
                    len,
                )
            }
            FuseOp::Lookup => {
                let name = format!("{FILE_NAME}\0");
                let len = header + std::mem::size_of::<EntryOut>() as u32;
                self.submit(slot, Opcode::Lookup, ROOT_ID, name.as_bytes(), &[], len)
            }
            FuseOp::Read => {
                let args = ReadIn {
                    fh: self.fh,
                    offset: self.random_offset(),
                    size: IO_SIZE,
                    ..ReadIn::default()
                };
                self.submit(
                    slot,
                    Opcode::Read,
                    self.nodeid,
                    args.as_slice(),
                    &[],
                    header + IO_SIZE,
                )
            }
            FuseOp::Write => {
                let args = WriteIn {
                    fh: self.fh,
                    offset: self.random_offset(),
                    size: IO_SIZE,
                    ..WriteIn::default()
                };
                let data = [0x5a_u8; IO_SIZE as usize];
                let len = header + std::mem::size_of::<WriteOut>() as u32;
                self.submit(
                    slot,
                    Opcode::Write,
                    self.nodeid,
                    args.as_slice(),
                    &data,
                    len,
                )
            }
        }
    }

    /// Issues `op` for `duration` with `depth` requests in flight.
    pub fn run(
        &mut self,
        op: FuseOp,
        depth: usize,
        duration: Duration,
    ) -> Result<Throughput, Error> {
        let depth = depth.clamp(1, self.slots.len());
        for slot in 0..depth {
            self.submit_op(slot, op)?;
        }
        self.dev.queues[REQUEST_QUEUE].publish_and_kick(&self.dev.mem)?;
        let start = Instant::now();
        let mut ops = 0u64;
        let mut outstanding = depth;
        let label = op.label();
        while outstanding > 0 {
            let Some(slot) = self.complete(label, true)? else {
                continue;
            };
            ops += 1;
            outstanding -= 1;
            let mut done = vec![slot];
            while let Some(slot) = self.complete(label, false)? {
                ops += 1;
                outstanding -= 1;
                done.push(slot);
            }
            if start.elapsed() < duration {
                for slot in done {
                    self.submit_op(slot, op)?;
                    outstanding += 1;
                }
                self.dev.queues[REQUEST_QUEUE].publish_and_kick(&self.dev.mem)?;
            }
        }
        Ok(Throughput {
            ops,
            elapsed: start.elapsed(),
        })
    }
}

/// Copies a FUSE structure out of `bytes` (which need not be aligned).
fn decode<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    let size = std::mem::size_of::<T>();
    value.as_mut_slice().copy_from_slice(bytes.get(..size)?);
    Some(value)
}

fn read_obj<T: ByteValued + Default>(reply: &[u8], op: &'static str) -> Result<T, Error> {
    decode(reply).ok_or(Error::Malformed {
        op,
        what: "short reply".to_string(),
    })
}
