//! Host-side helpers of the network tests: a keep-alive HTTP responder for
//! the round-trip test, and the client that opens connections through a
//! published port. Both on 127.0.0.1 only.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// The response of the round-trip server: 1 byte of body.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Type: text/plain\r\n\r\nx";

/// A keep-alive HTTP server answering every request with [`RESPONSE`].
pub struct RoundTripServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RoundTripServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub fn start() -> Result<RoundTripServer, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
            what: "bind the round-trip server",
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                what: "read the round-trip server's address",
                source,
            })?
            .port();
        listener.set_nonblocking(true).map_err(|source| Error::Io {
            what: "configure the round-trip server",
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        thread::spawn(move || answer(stream, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(RoundTripServer {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

/// Answers every request (`\r\n\r\n`-terminated head) on one connection.
fn answer(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    if stream.write_all(RESPONSE).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for RoundTripServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the connection client achieved.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// Complete HTTP exchanges (connect, GET, 200, close).
    pub ok: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Opens connections to `addr` from `concurrency` threads for `duration`:
/// each connects, sends `GET / HTTP/1.0`, reads to EOF and checks for a 200.
pub fn connection_rate(addr: SocketAddr, concurrency: usize, duration: Duration) -> Connections {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (ok, failed) = (ok.clone(), failed.clone());
            thread::spawn(move || {
                while start.elapsed() < duration {
                    if one_exchange(addr) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Connections {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

fn one_exchange(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    if stream.read_to_end(&mut reply).is_err() {
        return false;
    }
    reply.starts_with(b"HTTP/1.") && reply.get(9..12) == Some(b"200")
}

/// A free TCP port on 127.0.0.1 (bound and released: another process
/// could take it in between, which the caller will notice).
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "find a free port",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_on_one_connection() {
        let server = RoundTripServer::start().unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = vec![0u8; RESPONSE.len() * 2];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[..RESPONSE.len()], RESPONSE);
    }

    #[test]
    fn connection_client_counts_successes_and_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for s in listener.incoming().take(3).flatten() {
                let mut s = s;
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhi");
            }
        });
        let c = connection_rate(addr, 1, Duration::from_millis(300));
        assert!(c.ok >= 3, "{c:?}");
        assert!(c.failed > 0, "the listener stopped after 3: {c:?}");
    }
}
