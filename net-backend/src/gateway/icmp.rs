//! ICMP echo to the outside through unprivileged ping sockets
//! (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`), one per (guest, echo
//! identifier, destination). The kernel picks the identifier on the wire;
//! replies are rewritten back to the guest's identifier.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use vmm_sys_util::epoll::EventSet;

use super::poller::{FlowId, Poller, Source};

pub struct PingFlow {
    pub guest: Ipv4Addr,
    pub ident: u16,
    pub remote: Ipv4Addr,
    sock: Socket,
    pub last_active: Instant,
    pub opened: Instant,
}

/// Whether the failure to create a ping socket means "not permitted"
/// (`net.ipv4.ping_group_range` excludes us).
pub fn not_permitted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

impl PingFlow {
    pub fn open(
        id: FlowId,
        guest: Ipv4Addr,
        ident: u16,
        remote: Ipv4Addr,
        now: Instant,
        poller: &Poller,
    ) -> io::Result<PingFlow> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::ICMPV4))?;
        sock.set_nonblocking(true)?;
        sock.connect(&SocketAddr::V4(SocketAddrV4::new(remote, 0)).into())?;
        poller.add(sock.as_raw_fd(), EventSet::IN, id, Source::Host)?;
        Ok(PingFlow {
            guest,
            ident,
            remote,
            sock,
            last_active: now,
            opened: now,
        })
    }

    /// Sends an echo request: `message` is the ICMP message (header +
    /// data); the kernel sets the identifier and checksum.
    pub fn send(&mut self, message: &[u8], now: Instant) -> io::Result<()> {
        self.last_active = now;
        self.sock.send(message).map(|_| ())
    }

    /// Reads one ICMP message (an echo reply, header included) into `buf`.
    pub fn recv(&mut self, buf: &mut [u8], now: Instant) -> io::Result<Option<usize>> {
        // SAFETY: `MaybeUninit<u8>` has the same layout as `u8`, and every
        // `u8` is a valid `MaybeUninit<u8>`; recv only writes into it.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match self.sock.recv(uninit) {
            Ok(n) => {
                self.last_active = now;
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn expiry(&self, timeout: Duration) -> Instant {
        self.last_active + timeout
    }

    pub fn close(&self, poller: &Poller) {
        poller.remove(self.sock.as_raw_fd());
    }
}
