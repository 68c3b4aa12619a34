//! Servers the guest talks to in network tests: an HTTP server (large
//! downloads and uploads with SHA-256, an endless stream, the peer address
//! it saw), a DNS resolver for the gateway's forwarder, a line echo server
//! that holds its replies until many connections are open at once, and a
//! UDP echo server that also answers TFTP reads (the guest's UDP client is
//! `curl tftp://…`).
//!
//! Each binds `127.0.0.1:0` with `start`, or serves a socket the test bound
//! itself with `serve` — e.g. one bound inside a network namespace with
//! [`crate::NetNs::bind_tcp`]. Each records what it saw so the test can
//! check the host side of every exchange, and stops (its accept or receive
//! loop ends) when dropped. All are plain threads and blocking sockets.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod dns;
mod echo;
mod http;

pub use dns::{DnsQuery, DnsResolver};
pub use echo::{EchoLog, LineEchoServer, UdpEchoServer};
pub use http::{HttpLog, HttpRequest, HttpServer, StreamEnd, Upload, HELLO_BODY};

/// How often server loops look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Deterministic pseudo-random bytes (xorshift64 from `seed`): a body both
/// sides can reproduce, and that no compression or zero-page shortcut can
/// fake.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Lower-case hex SHA-256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server's record of what it saw, with a condition variable so a test
/// can wait for a change.
struct Recorder<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T: Clone> Recorder<T> {
    fn new(state: T) -> Self {
        Recorder {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        // The record stays usable even if a connection thread panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the record and wakes waiters.
    fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_all();
        result
    }

    fn snapshot(&self) -> T {
        self.lock().clone()
    }

    /// Waits until `done` holds for the record; returns a copy then, or
    /// `Err` with the last copy after `timeout`.
    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&T) -> bool) -> Result<T, T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state) {
                return Ok(state.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(state.clone());
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable (a listener: a
/// connection to accept). `Ok(false)` on timeout.
fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is a valid, exclusively borrowed array of one
    // element for the duration of the call, and its descriptor is kept open
    // by `fd`.
    let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
    match rc {
        rc if rc < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// A flag server threads poll to know when to stop.
#[derive(Default)]
struct StopFlag(AtomicBool);

impl StopFlag {
    fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pattern_is_deterministic_and_not_constant() {
        let a = pattern(4096, 7);
        assert_eq!(a, pattern(4096, 7));
        assert_ne!(a, pattern(4096, 8));
        assert!(a.iter().any(|&b| b != a[0]));
    }
}
