//! The traffic of the kernel-stack guest's rows: iperf3 in the namespace
//! against host servers on 127.0.0.1, a one-byte TCP round trip from the
//! namespace to a host echo server, and a server in the namespace that host
//! clients reach through a published port.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use airlock_e2e::NetNs;

/// Errors of the host helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("cannot {what}")]
    Io {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// A host server on 127.0.0.1 echoing every byte it reads, one thread per
/// connection.
pub struct EchoServer {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub fn start() -> Result<EchoServer, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind the echo server"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("read the echo server's address"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve(listener, stop.clone(), echo)?;
        Ok(EchoServer {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts on `listener` until `stop`, handing each connection to
/// `handle` on a thread of its own.
fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: fn(TcpStream, &AtomicBool),
) -> Result<JoinHandle<()>, Error> {
    listener
        .set_nonblocking(true)
        .map_err(io_err("configure a listener"))?;
    Ok(thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let s = stop.clone();
                    let _ = stream.set_nonblocking(false);
                    thread::spawn(move || handle(stream, &s));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    }))
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if transient(&e) => {}
            Err(_) => return,
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One-byte round trips from inside `ns` to `server` for `duration` over
/// one connection (TCP_NODELAY both ends): the mean time of one, in µs.
pub fn round_trip_us(ns: &NetNs, server: SocketAddr, duration: Duration) -> Result<f64, String> {
    ns.run(|| -> Result<f64, String> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut byte = [0x5a_u8];
        // Warm up: the first exchanges set up both sides' state.
        for _ in 0..100 {
            s.write_all(&byte).map_err(|e| e.to_string())?;
            s.read_exact(&mut byte).map_err(|e| e.to_string())?;
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            for _ in 0..100 {
                s.write_all(&byte).map_err(|e| e.to_string())?;
                s.read_exact(&mut byte)
                    .map_err(|e| format!("round trip {n}: {e}"))?;
                n += 1;
            }
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
    })
}

/// The HTTP/1.0 answer of the namespace's server: a 2-byte body, then the
/// connection is closed.
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A server inside a namespace on port [`NS_HTTP_PORT`]: reads a request
/// head, answers [`RESPONSE`] and closes (the published-port row).
pub struct NsHttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Its port in the namespace.
pub const NS_HTTP_PORT: u16 = 80;

impl NsHttpServer {
    /// Binds 0.0.0.0:80 in `ns` and serves until dropped.
    pub fn start(ns: &NetNs) -> Result<NsHttpServer, Error> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, NS_HTTP_PORT));
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .map_err(io_err("bind the namespace's server"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve(listener, stop.clone(), answer)?;
        Ok(NsHttpServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NsHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream, _stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(RESPONSE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_server_echoes() {
        let server = EchoServer::start().unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
    }
}
