//! The QEMU stream transport (`--transport stream`): the guest's frames
//! over a Unix stream socket, each a 4-byte big-endian length and the
//! Ethernet frame — what QEMU's `-netdev stream` (7.2+) and the older
//! `-netdev socket,connect=…` send, and what passt serves. QEMU's own
//! virtio-net emulation runs the guest's queues, so this path costs one
//! more copy and a system call per batch compared with vhost-user.
//!
//! One frontend at a time, like the vhost-user runner: each connection
//! gets a fresh [`Gateway`] (the guest's flows go when it goes); published
//! ports, the policy and the counters live on in [`Shared`]. One thread
//! runs it all from one epoll set: the connection, the gateway's host
//! sockets and timers, and the control eventfd.
//!
//! QEMU's virtio-net offers the guest no checksum offload on this path (a
//! stream peer has no virtio-net header), so frames carry full checksums
//! both ways.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use airlock_common::listen::BoundListener;
use airlock_common::ratelimited;
use airlock_netcore::stats::DropReason;
use airlock_netcore::{Backlog, Gateway, GatewayConfig, GuestTx, Shared};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::pcap::Pcap;

/// The frontend's socket is readable, writable or closed.
const CONNECTION_EVENT: u64 = 1;
/// One or more host sockets are ready.
const HOST_SOCKETS_EVENT: u64 = 3;
/// A flow deadline passed.
const TIMER_EVENT: u64 = 4;
/// Published ports, the egress policy or a control API query.
const CONTROL_EVENT: u64 = 5;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;
/// Largest frame accepted from the frontend: an IPv4 packet of 64 KiB and
/// its Ethernet header (QEMU sends at most its 68 KiB buffer; more is a
/// broken or hostile peer).
pub const MAX_FRAME: usize = 65_535 + 14;
/// Bytes of frames held for the frontend while its socket is full.
const BACKLOG_BYTES: usize = 1 << 20;
/// Frames move from the backlog into the socket's send buffer in batches of
/// about this many bytes (one `write` each).
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot wait for a frontend on the stream socket")]
    Accept(#[source] io::Error),
    #[error("cannot create the gateway for a frontend")]
    Gateway(#[source] io::Error),
    #[error("cannot set up the event loop")]
    Epoll(#[source] io::Error),
}

/// How a frontend connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The frontend closed its end.
    Closed,
    /// It sent a frame length no frontend sends.
    BadLength(usize),
    /// The socket failed.
    Failed(ErrorKind),
}

/// Serves frontends on `listener` until a signal ends the process, or, with
/// `one_off`, until the first one leaves.
pub fn run(
    listener: BoundListener,
    cfg: &GatewayConfig,
    shared: &Arc<Shared>,
    one_off: bool,
    pcap: Option<&Pcap>,
) -> Result<(), StreamError> {
    if let Some(path) = listener.created_path().map(|p| p.to_owned()) {
        airlock_common::signals::at_exit(move || {
            let _ = airlock_common::sandbox::remove_socket(&path);
        });
    }
    log::info!("listening for a stream frontend on {}", listener.source);
    airlock_common::notify::ready();
    loop {
        let (conn, _) = listener.listener.accept().map_err(StreamError::Accept)?;
        log::info!("frontend connected");
        let gateway = Gateway::new(cfg.clone(), shared.clone()).map_err(StreamError::Gateway)?;
        let mut session = StreamSession::new(conn, gateway, shared.clone(), pcap)?;
        shared.attach();
        let end = session.serve();
        shared.detach();
        drop(session);
        match end {
            Ok(End::Closed) => log::info!("frontend disconnected"),
            Ok(End::BadLength(n)) => {
                log::warn!("frontend sent a frame length of {n} bytes; connection closed")
            }
            Ok(End::Failed(kind)) => log::warn!("frontend connection failed: {kind}"),
            Err(e) => log::error!("frontend session stopped: {e}"),
        }
        if one_off {
            log::info!("exiting after disconnect (--exit-on-disconnect)");
            return Ok(());
        }
    }
}

/// One frontend connection and its gateway.
struct StreamSession<'a> {
    conn: UnixStream,
    gateway: Gateway,
    backlog: Backlog,
    shared: Arc<Shared>,
    pcap: Option<&'a Pcap>,
    epoll: Epoll,
    /// Bytes read and not yet handed to the gateway (a partial frame).
    rx: Vec<u8>,
    /// Framed bytes for the frontend; `out[sent..]` is still to write.
    out: Vec<u8>,
    sent: usize,
    /// EPOLLOUT is armed (the socket was full).
    want_write: bool,
}

impl<'a> StreamSession<'a> {
    fn new(
        conn: UnixStream,
        gateway: Gateway,
        shared: Arc<Shared>,
        pcap: Option<&'a Pcap>,
    ) -> Result<Self, StreamError> {
        conn.set_nonblocking(true).map_err(StreamError::Epoll)?;
        let epoll = Epoll::new().map_err(StreamError::Epoll)?;
        let watch = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(StreamError::Epoll)
        };
        watch(conn.as_raw_fd(), CONNECTION_EVENT)?;
        watch(gateway.host_fd(), HOST_SOCKETS_EVENT)?;
        watch(gateway.timer_fd(), TIMER_EVENT)?;
        watch(shared.control_fd(), CONTROL_EVENT)?;
        Ok(StreamSession {
            conn,
            gateway,
            backlog: Backlog::new(BACKLOG_BYTES),
            shared,
            pcap,
            epoll,
            rx: Vec::with_capacity(READ_CHUNK + MAX_FRAME + LEN_PREFIX),
            out: Vec::with_capacity(WRITE_BATCH + MAX_FRAME + LEN_PREFIX),
            sent: 0,
            want_write: false,
        })
    }

    fn serve(&mut self) -> io::Result<End> {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for ev in &events[..n] {
                if let Some(end) = self.dispatch(ev.data(), ev.event_set())? {
                    return Ok(end);
                }
            }
        }
    }

    fn dispatch(&mut self, token: u64, set: EventSet) -> io::Result<Option<End>> {
        match token {
            CONNECTION_EVENT => {
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    if let Some(end) = self.read_frames() {
                        return Ok(Some(end));
                    }
                }
            }
            HOST_SOCKETS_EVENT => self.gateway.host_events(&mut self.backlog)?,
            TIMER_EVENT => self.gateway.timers(&mut self.backlog),
            CONTROL_EVENT => self.gateway.control(&mut self.backlog),
            other => return Err(io::Error::other(format!("unknown event {other}"))),
        }
        self.flush()
    }

    /// Reads what the frontend sent and hands every whole frame to the
    /// gateway; `Some` when the connection is over.
    fn read_frames(&mut self) -> Option<End> {
        loop {
            let start = self.rx.len();
            self.rx.resize(start + READ_CHUNK, 0);
            let res = self.conn.read(&mut self.rx[start..]);
            let got = match res {
                Ok(0) => {
                    self.rx.truncate(start);
                    return Some(End::Closed);
                }
                Ok(n) => n,
                Err(e) => {
                    self.rx.truncate(start);
                    match e.kind() {
                        ErrorKind::WouldBlock => return None,
                        ErrorKind::Interrupted => continue,
                        kind => return Some(End::Failed(kind)),
                    }
                }
            };
            self.rx.truncate(start + got);
            if let Err(end) = self.take_frames() {
                return Some(end);
            }
        }
    }

    /// Hands the whole frames at the front of `rx` to the gateway and keeps
    /// the rest.
    fn take_frames(&mut self) -> Result<(), End> {
        let mut at = 0;
        let res = loop {
            let Some(prefix) = self.rx.get(at..at + LEN_PREFIX) else {
                break Ok(());
            };
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len == 0 || len > MAX_FRAME {
                break Err(End::BadLength(len));
            }
            let Some(frame) = self.rx.get(at + LEN_PREFIX..at + LEN_PREFIX + len) else {
                break Ok(());
            };
            if let Some(p) = self.pcap {
                p.record(frame);
            }
            self.gateway.guest_frame(frame, false, &mut self.backlog);
            at += LEN_PREFIX + len;
        };
        self.rx.drain(..at);
        res
    }

    /// Moves frames from the backlog to the frontend until the socket is
    /// full or nothing is left; lets flows held back for lack of room send.
    fn flush(&mut self) -> io::Result<Option<End>> {
        loop {
            if let Some(end) = self.write_out()? {
                return Ok(Some(end));
            }
            if self.sent < self.out.len() || self.backlog.is_empty() {
                break;
            }
        }
        if self.gateway.starved() && self.backlog.has_room() {
            self.gateway.guest_room(&mut self.backlog);
            return self.write_out();
        }
        Ok(None)
    }

    /// Frames the backlog into `out` (up to a batch) and writes what the
    /// socket takes.
    fn write_out(&mut self) -> io::Result<Option<End>> {
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        while self.out.len() < WRITE_BATCH {
            let Some(frame) = self.backlog.front() else {
                break;
            };
            if frame.len() > MAX_FRAME {
                self.shared.stats.dropped(DropReason::Oversize);
            } else {
                self.out
                    .extend_from_slice(&(frame.len() as u32).to_be_bytes());
                self.out.extend_from_slice(frame);
                self.shared.stats.frame_to_guest(frame.len());
                if let Some(p) = self.pcap {
                    p.record(frame);
                }
            }
            self.backlog.pop();
        }
        while self.sent < self.out.len() {
            match self.conn.write(&self.out[self.sent..]) {
                Ok(0) => return Ok(Some(End::Closed)),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    ratelimited!(log::Level::Warn, "cannot write to the frontend: {e}");
                    return Ok(Some(End::Failed(e.kind())));
                }
            }
        }
        self.watch_writable(self.sent < self.out.len())?;
        Ok(None)
    }

    /// Asks for EPOLLOUT while frames wait for room in the socket.
    fn watch_writable(&mut self, on: bool) -> io::Result<()> {
        if on == self.want_write {
            return Ok(());
        }
        let set = if on {
            EventSet::IN | EventSet::OUT
        } else {
            EventSet::IN
        };
        self.epoll.ctl(
            ControlOperation::Modify,
            self.conn.as_raw_fd(),
            EpollEvent::new(set, CONNECTION_EVENT),
        )?;
        self.want_write = on;
        Ok(())
    }
}

impl Drop for StreamSession<'_> {
    fn drop(&mut self) {
        let snap = self.shared.stats.snapshot();
        log::info!(
            "guest gone: {} frames from it, {} to it; tcp flows {} opened, {} refused",
            snap.guest_to_host.frames,
            snap.host_to_guest.frames,
            snap.flows.tcp.opened,
            snap.flows.tcp.refused,
        );
        self.gateway.shutdown();
        self.backlog.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{gateway_config, shared};
    use std::time::Duration;

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// An ARP request from the guest (192.168.127.2) for the gateway.
    fn arp_request() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[192, 168, 127, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[192, 168, 127, 1]);
        f
    }

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        out
    }

    fn read_frame(s: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut frame = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).unwrap();
        frame
    }

    /// Serves one session on a socketpair; returns the frontend's end and
    /// the session's end.
    fn session() -> (UnixStream, std::thread::JoinHandle<End>, Arc<Shared>) {
        let (frontend, backend) = UnixStream::pair().unwrap();
        frontend
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let shared = shared();
        let s = shared.clone();
        let serving = std::thread::spawn(move || {
            let gateway = Gateway::new(gateway_config(), s.clone()).unwrap();
            let mut session = StreamSession::new(backend, gateway, s, None).unwrap();
            session.serve().unwrap()
        });
        (frontend, serving, shared)
    }

    /// A frame split anywhere (here inside the length prefix and inside the
    /// frame) is reassembled; the gateway's answer comes back framed.
    #[test]
    fn frames_in_pieces_are_reassembled_and_answers_framed() {
        let (mut frontend, serving, shared) = session();
        let bytes = framed(&arp_request());
        for piece in [&bytes[..2], &bytes[2..10], &bytes[10..]] {
            frontend.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let reply = read_frame(&mut frontend);
        assert_eq!(&reply[0..6], &GUEST_MAC, "to the guest");
        assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame");
        assert_eq!(&reply[20..22], &[0, 2], "a reply");
        assert_eq!(&reply[28..32], &[192, 168, 127, 1], "for the gateway");
        drop(frontend);
        assert_eq!(serving.join().unwrap(), End::Closed);
        let stats = shared.stats.snapshot();
        assert_eq!(stats.guest_to_host.frames, 1);
        assert_eq!(stats.host_to_guest.frames, 1);
    }

    /// A length no frontend sends ends the connection instead of making
    /// the daemon buffer 4 GiB.
    #[test]
    fn an_impossible_length_ends_the_connection() {
        for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
            let (mut frontend, serving, _) = session();
            frontend.write_all(&framed(&arp_request())).unwrap();
            frontend.write_all(&len.to_be_bytes()).unwrap();
            assert_eq!(serving.join().unwrap(), End::BadLength(len as usize));
        }
    }
}
