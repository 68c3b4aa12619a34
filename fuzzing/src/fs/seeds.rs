//! Starting inputs for the fs targets, in each target's input encoding:
//! a guest's file system session (create, write, read, list, xattrs,
//! rename, links, removal, forgets) for `fuse`, and INIT plus a few
//! requests in hand-laid descriptor chains (direct, split, indirect) for
//! `fs_chain`. `fuzzing/tests/` runs them and writes them to
//! `fuzz/seeds/<target>/` (`--ignored write_fuzz_seeds`).

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, BatchForgetIn, CreateIn, FallocateIn, FlushIn, ForgetIn, ForgetOne, FsyncIn,
    GetattrIn, GetxattrIn, LinkIn, LseekIn, MkdirIn, MknodIn, OpenIn, ReadIn, ReleaseIn, Rename2In,
    RenameIn, SetattrIn, SetxattrIn, WriteIn,
};
use vm_memory::ByteValued;

/// (target, seed name, bytes) for every fs target.
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in fuse() {
        out.push(("fuse", name, bytes));
    }
    for (name, bytes) in fs_chain() {
        out.push(("fs_chain", name, bytes));
    }
    out
}

/// FUSE opcodes used here.
mod opcode {
    pub const LOOKUP: u8 = 1;
    pub const FORGET: u8 = 2;
    pub const GETATTR: u8 = 3;
    pub const SETATTR: u8 = 4;
    pub const READLINK: u8 = 5;
    pub const SYMLINK: u8 = 6;
    pub const MKNOD: u8 = 8;
    pub const MKDIR: u8 = 9;
    pub const UNLINK: u8 = 10;
    pub const RMDIR: u8 = 11;
    pub const RENAME: u8 = 12;
    pub const LINK: u8 = 13;
    pub const OPEN: u8 = 14;
    pub const READ: u8 = 15;
    pub const WRITE: u8 = 16;
    pub const STATFS: u8 = 17;
    pub const RELEASE: u8 = 18;
    pub const FSYNC: u8 = 20;
    pub const SETXATTR: u8 = 21;
    pub const GETXATTR: u8 = 22;
    pub const LISTXATTR: u8 = 23;
    pub const REMOVEXATTR: u8 = 24;
    pub const FLUSH: u8 = 25;
    pub const INIT: u8 = 26;
    pub const OPENDIR: u8 = 27;
    pub const READDIR: u8 = 28;
    pub const RELEASEDIR: u8 = 29;
    pub const ACCESS: u8 = 34;
    pub const CREATE: u8 = 35;
    pub const DESTROY: u8 = 38;
    pub const BATCH_FORGET: u8 = 42;
    pub const FALLOCATE: u8 = 43;
    pub const READDIRPLUS: u8 = 44;
    pub const RENAME2: u8 = 45;
    pub const LSEEK: u8 = 46;
}

use opcode::*;

const ROOT: u8 = 1;
/// Node ids the passthrough hands out in order: the first new entry is 2.
const DIR: u8 = 2;
const FILE: u8 = 3;
const LINK_NODE: u8 = 4;

fn obj<T: ByteValued>(v: T) -> Vec<u8> {
    v.as_slice().to_vec()
}

fn names(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

fn with(mut head: Vec<u8>, tail: &[u8]) -> Vec<u8> {
    head.extend_from_slice(tail);
    head
}

/// Builds a `fuse` input.
struct Session(Vec<u8>);

impl Session {
    /// `variant` picks the daemon configuration; xattrs are on (16).
    fn new(variant: u8) -> Self {
        let mut b = vec![variant];
        // INIT flags a Linux virtiofs guest offers (async read, big
        // writes, max pages, readdirplus, writeback, ...).
        b.extend_from_slice(&0x0033_f7ffu32.to_be_bytes());
        b.push(1); // EVENT_IDX
        Session(b)
    }

    /// A request as root with the true length and a full reply buffer.
    fn req(&mut self, opcode: u8, nodeid: u8, body: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[0, opcode, nodeid, 0]);
        self.0.extend_from_slice(&(body.len() as u16).to_be_bytes());
        self.0.extend_from_slice(body);
        self
    }

    /// The same on the high-priority queue.
    fn hiprio(&mut self, opcode: u8, nodeid: u8, body: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[1, opcode, nodeid, 0]);
        self.0.extend_from_slice(&(body.len() as u16).to_be_bytes());
        self.0.extend_from_slice(body);
        self
    }

    /// A request cut across two readable descriptors, as uid 1000, with a
    /// small reply buffer.
    fn split(&mut self, opcode: u8, nodeid: u8, cut: u16, reply: u16, body: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[4 | 8, opcode, nodeid, 1]);
        self.0.extend_from_slice(&cut.to_be_bytes());
        self.0.extend_from_slice(&reply.to_be_bytes());
        self.0.extend_from_slice(&(body.len() as u16).to_be_bytes());
        self.0.extend_from_slice(body);
        self
    }
}

fn read_in(fh: u64, size: u32) -> Vec<u8> {
    obj(ReadIn {
        fh,
        size,
        ..Default::default()
    })
}

fn lifecycle(variant: u8) -> Vec<u8> {
    let mut s = Session::new(variant);
    let rw = (libc::O_RDWR | libc::O_CREAT) as u32;
    s.req(LOOKUP, ROOT, &names(&["nothing"]))
        .req(
            MKDIR,
            ROOT,
            &with(
                obj(MkdirIn {
                    mode: 0o755,
                    umask: 0o022,
                }),
                &names(&["dir"]),
            ),
        )
        .req(
            CREATE,
            ROOT,
            &with(
                obj(CreateIn {
                    flags: rw,
                    mode: libc::S_IFREG | 0o644,
                    umask: 0o022,
                    fuse_flags: 0,
                }),
                &names(&["file"]),
            ),
        )
        .req(
            WRITE,
            FILE,
            &with(
                obj(WriteIn {
                    fh: 1,
                    size: 11,
                    ..Default::default()
                }),
                b"hello world",
            ),
        )
        .req(READ, FILE, &read_in(1, 4096))
        .req(GETATTR, FILE, &obj(GetattrIn::default()))
        .req(
            SETATTR,
            FILE,
            &obj(SetattrIn {
                valid: 1 << 3, // FATTR_SIZE
                size: 5,
                ..Default::default()
            }),
        )
        .req(SYMLINK, ROOT, &names(&["link", "/etc/passwd"]))
        .req(READLINK, LINK_NODE, &[])
        .req(
            SETXATTR,
            FILE,
            &with(
                obj(SetxattrIn { size: 3, flags: 0 }),
                &with(names(&["user.k"]), b"val"),
            ),
        )
        .req(
            GETXATTR,
            FILE,
            &with(
                obj(GetxattrIn {
                    size: 64,
                    padding: 0,
                }),
                &names(&["user.k"]),
            ),
        )
        .req(
            LISTXATTR,
            FILE,
            &obj(GetxattrIn {
                size: 64,
                padding: 0,
            }),
        )
        .req(REMOVEXATTR, FILE, &names(&["user.k"]))
        .req(OPENDIR, ROOT, &obj(OpenIn::default()))
        .req(READDIR, ROOT, &read_in(2, 4096))
        .req(READDIRPLUS, ROOT, &read_in(2, 4096))
        .req(
            RELEASEDIR,
            ROOT,
            &obj(ReleaseIn {
                fh: 2,
                ..Default::default()
            }),
        )
        .req(
            RENAME,
            ROOT,
            &with(
                obj(RenameIn {
                    newdir: u64::from(DIR),
                }),
                &names(&["file", "moved"]),
            ),
        )
        .req(
            RENAME2,
            DIR,
            &with(
                obj(Rename2In {
                    newdir: u64::from(ROOT),
                    flags: 1, // RENAME_NOREPLACE
                    padding: 0,
                }),
                &names(&["moved", "back"]),
            ),
        )
        .req(
            LINK,
            ROOT,
            &with(
                obj(LinkIn {
                    oldnodeid: u64::from(FILE),
                }),
                &names(&["hard"]),
            ),
        )
        .req(
            MKNOD,
            ROOT,
            &with(
                obj(MknodIn {
                    mode: libc::S_IFCHR | 0o600,
                    rdev: 0x0103,
                    umask: 0,
                    padding: 0,
                }),
                &names(&["null"]),
            ),
        )
        .req(
            MKNOD,
            ROOT,
            &with(
                obj(MknodIn {
                    mode: libc::S_IFIFO | 0o600,
                    ..Default::default()
                }),
                &names(&["fifo"]),
            ),
        )
        .req(
            OPEN,
            FILE,
            &obj(OpenIn {
                flags: libc::O_RDWR as u32,
                fuse_flags: 0,
            }),
        )
        .req(
            FALLOCATE,
            FILE,
            &obj(FallocateIn {
                fh: 3,
                offset: 0,
                length: 1 << 16,
                ..Default::default()
            }),
        )
        .req(
            LSEEK,
            FILE,
            &obj(LseekIn {
                fh: 3,
                offset: 1,
                whence: 3, // SEEK_DATA
                padding: 0,
            }),
        )
        .req(
            FLUSH,
            FILE,
            &obj(FlushIn {
                fh: 3,
                ..Default::default()
            }),
        )
        .req(
            FSYNC,
            FILE,
            &obj(FsyncIn {
                fh: 3,
                ..Default::default()
            }),
        )
        .req(
            RELEASE,
            FILE,
            &obj(ReleaseIn {
                fh: 3,
                ..Default::default()
            }),
        )
        .req(
            RELEASE,
            FILE,
            &obj(ReleaseIn {
                fh: 1,
                ..Default::default()
            }),
        )
        .req(
            ACCESS,
            FILE,
            &obj(AccessIn {
                mask: 4,
                padding: 0,
            }),
        )
        .req(STATFS, ROOT, &[])
        .req(UNLINK, ROOT, &names(&["back"]))
        .req(RMDIR, ROOT, &names(&["dir"]))
        .hiprio(FORGET, FILE, &obj(ForgetIn { nlookup: 1 }))
        .hiprio(
            BATCH_FORGET,
            0,
            &with(
                obj(BatchForgetIn { count: 2, dummy: 0 }),
                &with(
                    obj(ForgetOne {
                        nodeid: 2,
                        nlookup: 1,
                    }),
                    &obj(ForgetOne {
                        nodeid: 4,
                        nlookup: 1,
                    }),
                ),
            ),
        )
        .req(DESTROY, 0, &[]);
    s.0
}

fn fuse() -> Vec<(&'static str, Vec<u8>)> {
    let mut odd = Session::new(16 | 32);
    odd.split(LOOKUP, ROOT, 20, 64, &names(&[".."]))
        .split(GETATTR, ROOT, 44, 8, &obj(GetattrIn::default()))
        .split(
            CREATE,
            ROOT,
            0,
            200,
            &with(
                obj(CreateIn {
                    flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
                    mode: libc::S_IFREG | 0o600,
                    umask: 0,
                    fuse_flags: 0,
                }),
                &names(&["as-1000"]),
            ),
        )
        .req(INIT, 0, &[0; 16]);
    vec![
        ("lifecycle", lifecycle(16)),
        ("lifecycle-readonly", lifecycle(16 | 4)),
        ("lifecycle-never-cache-idmap", lifecycle(16 | 1 | 32)),
        ("split-small-replies", odd.0),
    ]
}

// ---- fs_chain ------------------------------------------------------------------------

/// `queues::from_input` descriptor encodings used below.
const DESC_LOW_LEN16: u8 = 8; // LOW_BUFFERS + u16 offset, u16 length
const DESC_HIGH_LEN16: u8 = 9; // HIGH_BUFFERS + u16 offset, u16 length

fn desc(out: &mut Vec<u8>, mode: u8, offset: u16, len: u16, flags: u16, next: u16) {
    out.push(mode);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&next.to_be_bytes());
}

/// A FUSE request: header and body.
fn fuse_request(opcode: u8, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    b.extend_from_slice(&u32::from(opcode).to_le_bytes());
    b.extend_from_slice(&unique.to_le_bytes());
    b.extend_from_slice(&nodeid.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    b.extend_from_slice(body);
    b
}

/// Request queue (1) of size 8: chain 0 = INIT (readable) + reply
/// (writable); chain 2 = LOOKUP split in two readable descriptors + reply;
/// chain 5 = an indirect table holding GETATTR + reply. Queue 0 (size 4)
/// holds a FORGET.
fn fs_chain_input(event_idx: bool) -> Vec<u8> {
    let init = fuse_request(
        INIT,
        2,
        0,
        &[7, 0, 0, 0, 33, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
    );
    let lookup = fuse_request(LOOKUP, 4, 1, &names(&["missing"]));
    let getattr = fuse_request(GETATTR, 6, 1, &obj(GetattrIn::default()));
    let forget = fuse_request(FORGET, 8, 1, &obj(ForgetIn { nlookup: 1 }));
    let (init_at, lookup_at, getattr_at, forget_at, table_at) = (0u16, 0x100, 0x200, 0x300, 0x400);

    let mut b = vec![0, u8::from(event_idx), 2, 3]; // variant, event idx, sizes 4 and 8
    b.push(1);
    desc(&mut b, DESC_LOW_LEN16, forget_at, forget.len() as u16, 0, 0);
    b.push(6);
    desc(&mut b, DESC_LOW_LEN16, init_at, init.len() as u16, 1, 1);
    desc(&mut b, DESC_HIGH_LEN16, 0, 4096, 2, 0);
    desc(&mut b, DESC_LOW_LEN16, lookup_at, 30, 1, 3);
    desc(
        &mut b,
        DESC_LOW_LEN16,
        lookup_at + 30,
        lookup.len() as u16 - 30,
        1,
        4,
    );
    desc(&mut b, DESC_HIGH_LEN16, 0x1000, 4096, 2, 0);
    desc(&mut b, DESC_LOW_LEN16, table_at, 32, 4, 0);

    let mut low = vec![0u8; 0x500];
    let put = |low: &mut Vec<u8>, at: u16, bytes: &[u8]| {
        low[usize::from(at)..usize::from(at) + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut low, init_at, &init);
    put(&mut low, lookup_at, &lookup);
    put(&mut low, getattr_at, &getattr);
    put(&mut low, forget_at, &forget);
    let mut table = Vec::new();
    for (addr, len, flags, next) in [
        (
            0x8000u64 + u64::from(getattr_at),
            getattr.len() as u32,
            1u16,
            1u16,
        ),
        (0x22000, 4096, 2, 0),
    ] {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&next.to_le_bytes());
    }
    put(&mut low, table_at, &table);
    b.extend_from_slice(&(low.len() as u16).to_be_bytes());
    b.extend_from_slice(&low);
    b.extend_from_slice(&[0, 0]);
    // Guest turn (step 2): queue 1, push chains 0, 2, 5; then the request
    // event (1); queue 0, push chain 0; the high-priority event (0).
    b.extend_from_slice(&[2, 1, 0, 2, 0, 2, 5, 1, 2, 0, 0, 0, 0, 0]);
    b
}

fn fs_chain() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("init-lookup-indirect", fs_chain_input(false)),
        ("init-lookup-indirect-event-idx", fs_chain_input(true)),
    ]
}
