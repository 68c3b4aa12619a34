//! A misbehaving vhost-user frontend: raw messages over a Unix socket, with
//! any header, payload and file descriptors a test wants, to check what a
//! daemon does with input QEMU would never send. (`vhost::vhost_user::Frontend`
//! validates its arguments, so it cannot send most of these.)
//!
//! Wire format (QEMU's docs/interop/vhost-user.rst): a 12-byte header —
//! request code, flags (version 1 in bits 0–1, `REPLY` 0x4, `NEED_REPLY`
//! 0x8), payload size — then the payload; file descriptors ride along as
//! `SCM_RIGHTS` ancillary data.

use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Request codes (`VHOST_USER_*`).
pub mod req {
    /// `GET_FEATURES`: reply u64.
    pub const GET_FEATURES: u32 = 1;
    /// `SET_FEATURES`: u64.
    pub const SET_FEATURES: u32 = 2;
    /// `SET_OWNER`: no payload.
    pub const SET_OWNER: u32 = 3;
    /// `SET_MEM_TABLE`: memory regions, one fd each.
    pub const SET_MEM_TABLE: u32 = 5;
    /// `SET_VRING_NUM`: vring state (index, size).
    pub const SET_VRING_NUM: u32 = 8;
    /// `SET_VRING_ADDR`: vring addresses (frontend virtual addresses).
    pub const SET_VRING_ADDR: u32 = 9;
    /// `SET_VRING_BASE`: vring state (index, next avail).
    pub const SET_VRING_BASE: u32 = 10;
    /// `GET_VRING_BASE`: vring state; reply vring state.
    pub const GET_VRING_BASE: u32 = 11;
    /// `SET_VRING_KICK`: u64 index (bit 8: no fd), an eventfd.
    pub const SET_VRING_KICK: u32 = 12;
    /// `SET_VRING_CALL`: as `SET_VRING_KICK`.
    pub const SET_VRING_CALL: u32 = 13;
    /// `GET_PROTOCOL_FEATURES`: reply u64.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// `SET_PROTOCOL_FEATURES`: u64.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// `SET_VRING_ENABLE`: vring state (index, 0 or 1).
    pub const SET_VRING_ENABLE: u32 = 18;
    /// `GET_CONFIG`: config space read.
    pub const GET_CONFIG: u32 = 24;
    /// `GET_MAX_MEM_SLOTS`: reply u64.
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    /// `ADD_MEM_REG`: one region (with padding), one fd.
    pub const ADD_MEM_REG: u32 = 37;
}

/// Header flag: protocol version 1.
pub const VERSION_1: u32 = 0x1;
/// Header flag: this message is a reply.
pub const REPLY: u32 = 0x4;
/// Header flag: the frontend wants an ack (`REPLY_ACK` negotiated).
pub const NEED_REPLY: u32 = 0x8;
/// Virtio feature bit: vhost-user protocol features are supported.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Protocol feature bit: `REPLY_ACK`.
pub const PF_REPLY_ACK: u64 = 1 << 3;
/// The header's size on the wire.
pub const HEADER_LEN: usize = 12;
/// `SET_VRING_KICK`/`CALL` payload bit: no file descriptor attached.
pub const VRING_NOFD: u64 = 1 << 8;

/// A guest memory region as `SET_MEM_TABLE` describes it.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// The frontend's virtual address (what vring addresses refer to).
    pub user_addr: u64,
    /// Offset of the region in its file.
    pub mmap_offset: u64,
}

/// A reply the backend sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Request code it answers.
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as the u64 most replies carry (an ack: 0 is success).
    pub fn value(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.payload.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// What the backend did with a session after the test's last message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Replies received, in order.
    pub replies: Vec<Reply>,
    /// The backend closed the connection.
    pub closed: bool,
}

/// A raw vhost-user connection.
#[derive(Debug)]
pub struct RawFrontend {
    stream: UnixStream,
}

impl RawFrontend {
    /// Connects to the backend listening on `path`.
    pub fn connect(path: &Path) -> io::Result<RawFrontend> {
        Ok(RawFrontend {
            stream: UnixStream::connect(path)?,
        })
    }

    /// Sends `bytes` (anything: a header, part of one, several messages)
    /// in one `sendmsg`, with `fds` attached.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        send_with_fds(self.stream.as_raw_fd(), bytes, fds)
    }

    /// Sends one message: a header with `code`, `flags` and the payload's
    /// length, the payload, and `fds`.
    pub fn send(&mut self, code: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut bytes = header(code, flags, payload.len() as u32).to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes, fds)
    }

    /// Sends a version-1 request.
    pub fn request(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        self.send(code, VERSION_1, payload, fds)
    }

    /// Sends a version-1 request asking for an ack.
    pub fn request_ack(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        self.send(code, VERSION_1 | NEED_REPLY, payload, fds)
    }

    /// Shuts down the sending half (the backend reads end of file after
    /// whatever was sent).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// Reads one reply, waiting up to `timeout`. `Ok(None)`: the backend
    /// closed the connection.
    pub fn read_reply(&mut self, timeout: Duration) -> io::Result<Option<Reply>> {
        self.stream.set_read_timeout(Some(timeout))?;
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut self.stream, &mut head)? {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        if size > 0x1000 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply to request {code} claims {size} bytes"),
            ));
        }
        let mut payload = vec![0u8; size as usize];
        if !read_full(&mut self.stream, &mut payload)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("reply to request {code} cut short"),
            ));
        }
        Ok(Some(Reply {
            code,
            flags,
            payload,
        }))
    }

    /// Sends request `code` with no payload and returns the u64 reply.
    pub fn get_u64(&mut self, code: u32) -> io::Result<u64> {
        self.request(code, &[], &[])?;
        match self.read_reply(Duration::from_secs(10))? {
            Some(r) if r.code == code && r.flags & REPLY != 0 => r.value().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("short reply {r:?}"))
            }),
            Some(r) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply {r:?} to request {code}"),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the backend closed the connection instead of answering request {code}"),
            )),
        }
    }

    /// What QEMU does first: `SET_OWNER`, `GET_FEATURES`,
    /// `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES` (with `REPLY_ACK`),
    /// `SET_FEATURES`; from then on `request_ack` gets an ack. Returns the
    /// device's virtio features.
    pub fn negotiate(&mut self) -> io::Result<u64> {
        self.request(req::SET_OWNER, &[], &[])?;
        let features = self.get_u64(req::GET_FEATURES)?;
        if features & F_PROTOCOL_FEATURES == 0 {
            return Err(io::Error::other(format!(
                "the backend offers no protocol features ({features:#x})"
            )));
        }
        let protocol = self.get_u64(req::GET_PROTOCOL_FEATURES)?;
        self.request(
            req::SET_PROTOCOL_FEATURES,
            &u64_payload(protocol & PF_REPLY_ACK),
            &[],
        )?;
        self.request(req::SET_FEATURES, &u64_payload(features), &[])?;
        Ok(features)
    }

    /// Reads until the backend closes the connection or `timeout` passes.
    pub fn outcome(&mut self, timeout: Duration) -> io::Result<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Outcome {
                    replies,
                    closed: false,
                });
            }
            match self.read_reply(left) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => {
                    return Ok(Outcome {
                        replies,
                        closed: true,
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Outcome {
                        replies,
                        closed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Outcome {
                        replies,
                        closed: true,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on end of file before the first.
fn read_full(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match stream.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A 12-byte header.
pub fn header(code: u32, flags: u32, size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&code.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

/// A u64 payload.
pub fn u64_payload(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// A vring state payload (`SET_VRING_NUM`, `SET_VRING_BASE`, …).
pub fn vring_state(index: u32, num: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&index.to_le_bytes());
    p[4..8].copy_from_slice(&num.to_le_bytes());
    p
}

/// A `SET_VRING_ADDR` payload (flags 0, no log).
pub fn vring_addr(index: u32, descriptor: u64, used: u64, available: u64) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0..4].copy_from_slice(&index.to_le_bytes());
    p[8..16].copy_from_slice(&descriptor.to_le_bytes());
    p[16..24].copy_from_slice(&used.to_le_bytes());
    p[24..32].copy_from_slice(&available.to_le_bytes());
    p
}

/// A `SET_MEM_TABLE` payload claiming `num_regions` regions and carrying
/// `regions` (the two may differ, on purpose).
pub fn mem_table(num_regions: u32, regions: &[Region]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 32 * regions.len());
    p.extend_from_slice(&num_regions.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        for v in [r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset] {
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
    p
}

/// A `memfd` of `size` bytes, as QEMU's `memory-backend-memfd` gives.
pub fn memfd(size: u64) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; no other memory is passed.
    let fd = unsafe { libc::memfd_create(c"airlock-test-mem".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: ftruncate on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// An eventfd (what QEMU passes for kick and call).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes integers only.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `sendmsg` of `bytes` with `fds` as `SCM_RIGHTS`.
fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let fds_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` points at `control`, which has room for one cmsghdr
        // with `fds_len` bytes of data (CMSG_SPACE), so CMSG_FIRSTHDR is
        // non-null and CMSG_DATA has room for the copy.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fds_len,
            );
        }
    }
    // SAFETY: `msg` refers to `iov` (valid for `bytes.len()` bytes) and to
    // `control`, both alive for the call.
    let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_arrive_as_sent() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut front = RawFrontend { stream: a };
        let fd = eventfd().unwrap();
        front
            .request(req::SET_VRING_KICK, &u64_payload(1), &[fd.as_raw_fd()])
            .unwrap();
        let mut got = [0u8; HEADER_LEN + 8];
        b.read_exact(&mut got).unwrap();
        assert_eq!(
            &got[..HEADER_LEN],
            &header(req::SET_VRING_KICK, VERSION_1, 8)
        );
        assert_eq!(&got[HEADER_LEN..], &1u64.to_le_bytes());
        assert_eq!(mem_table(2, &[]).len(), 8);
        assert_eq!(vring_addr(1, 2, 3, 4)[16..24], 3u64.to_le_bytes());
    }
}
