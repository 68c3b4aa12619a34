//! Host-side sockets of TCP flows: a TCP connection (NAT, host alias) or a
//! Unix stream (the proxy target may be a Unix socket), both non-blocking.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use socket2::{Domain, SockAddr, Socket, Type};

/// Where a TCP flow's host side connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub(crate) enum HostStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Starts a non-blocking connect to `target`. `Ok` means the connect is in
/// progress (or done); completion shows as writability.
pub(crate) fn connect(target: &Target) -> io::Result<HostStream> {
    let (domain, addr) = match target {
        Target::Tcp(a) => (Domain::for_address(*a), SockAddr::from(*a)),
        Target::Unix(p) => (Domain::UNIX, SockAddr::unix(p)?),
    };
    let sock = Socket::new(domain, Type::STREAM.cloexec(), None)?;
    sock.set_nonblocking(true)?;
    if matches!(target, Target::Tcp(_)) {
        // The guest's stack already coalesces; don't delay its segments twice.
        sock.set_nodelay(true)?;
    }
    match sock.connect(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        // Unix sockets report a full backlog as EAGAIN; treat it as refused.
        Err(e) => return Err(e),
    }
    Ok(match target {
        Target::Tcp(_) => HostStream::Tcp(sock.into()),
        Target::Unix(_) => HostStream::Unix(sock.into()),
    })
}

impl HostStream {
    /// The pending connect's outcome (SO_ERROR).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            HostStream::Tcp(s) => s.take_error(),
            HostStream::Unix(s) => s.take_error(),
        }
    }

    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            HostStream::Tcp(s) => s.shutdown(Shutdown::Write),
            HostStream::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Makes the coming close send a RST instead of a FIN (TCP only).
    pub(crate) fn set_reset_on_close(&self) {
        if let HostStream::Tcp(s) = self {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.read(buf),
            HostStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.write(buf),
            HostStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for HostStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            HostStream::Tcp(s) => s.as_raw_fd(),
            HostStream::Unix(s) => s.as_raw_fd(),
        }
    }
}
