//! This machine's limits, for comparison with the daemons' numbers: memory
//! copy bandwidth (one thread, 64 MiB buffers) and loopback TCP throughput
//! (one connection on 127.0.0.1, a writer and a reader thread, 256 KiB
//! reads and writes).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Errors measuring the limits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A loopback socket failed.
    #[error("loopback TCP {what} failed")]
    Tcp {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

const MEMCPY_BYTES: usize = 64 << 20;
const TCP_CHUNK: usize = 256 << 10;

/// memcpy bandwidth in Gbit/s (bytes copied, not read + written).
pub fn memcpy_gbits(duration: Duration) -> f64 {
    let src = vec![0x5a_u8; MEMCPY_BYTES];
    let mut dst = vec![0_u8; MEMCPY_BYTES];
    // Touch both once so page faults are not measured.
    dst.copy_from_slice(&src);
    let start = Instant::now();
    let mut copied = 0u64;
    while start.elapsed() < duration {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        copied += MEMCPY_BYTES as u64;
    }
    copied as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

fn tcp(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Tcp { what, source }
}

/// Loopback TCP throughput in Gbit/s, counted by the reader.
pub fn loopback_tcp_gbits(duration: Duration) -> Result<f64, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(tcp("bind"))?;
    let addr = listener.local_addr().map_err(tcp("local_addr"))?;
    let reader = thread::spawn(move || -> io::Result<(u64, Duration)> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; TCP_CHUNK];
        let mut total = 0u64;
        let start = Instant::now();
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok((total, start.elapsed())),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(tcp("connect"))?;
    let chunk = vec![0x5a_u8; TCP_CHUNK];
    let start = Instant::now();
    while start.elapsed() < duration {
        stream.write_all(&chunk).map_err(tcp("write"))?;
    }
    drop(stream);
    let (bytes, elapsed) = reader
        .join()
        .map_err(|_| tcp("reader thread")(io::Error::other("panicked")))?
        .map_err(tcp("read"))?;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_positive() {
        assert!(memcpy_gbits(Duration::from_millis(50)) > 0.0);
        assert!(loopback_tcp_gbits(Duration::from_millis(50)).unwrap() > 0.0);
    }
}
