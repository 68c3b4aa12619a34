//! Echo servers: a TCP line echo that can hold its replies until many
//! connections are open at once, and a UDP echo that also answers TFTP
//! read requests.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{wait_readable, Recorder, StopFlag, STOP_POLL};

/// Longest line the line echo server reads.
const MAX_LINE: u64 = 4096;
/// How long a line echo connection may stay silent.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// TFTP opcodes (RFC 1350).
const TFTP_RRQ: u16 = 1;
const TFTP_DATA: u16 = 3;
const TFTP_ACK: u16 = 4;
/// Largest TFTP data block: a shorter one ends the transfer.
const TFTP_BLOCK: usize = 512;

/// What an echo server saw.
#[derive(Debug, Clone, Default)]
pub struct EchoLog {
    /// Connections accepted ([`LineEchoServer`]) or datagrams received
    /// ([`UdpEchoServer`]), by peer, in order.
    pub peers: Vec<SocketAddr>,
    /// Replies sent.
    pub replies: usize,
    /// Connections open right now ([`LineEchoServer`]).
    pub open: usize,
    /// The most connections that were open at the same time.
    pub max_open: usize,
}

/// A TCP server that reads one line per connection, answers
/// `echo <line>\n` and closes.
///
/// With a `barrier` of N, every reply waits until N connections have been
/// open at the same moment (or `hold` has passed since the connection was
/// accepted): a test of N concurrent connections then knows they really
/// were concurrent ([`EchoLog::max_open`]), not served one after another.
pub struct LineEchoServer {
    addr: SocketAddr,
    shared: Arc<LineShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct LineShared {
    barrier: usize,
    hold: Duration,
    log: Recorder<EchoLog>,
    stop: StopFlag,
}

impl LineEchoServer {
    /// Serves on a fresh `127.0.0.1` port. `barrier` 0 or 1 answers at once.
    pub fn start(barrier: usize, hold: Duration) -> LineEchoServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind the line echo server to 127.0.0.1: {e}"));
        LineEchoServer::serve(listener, barrier, hold)
    }

    /// Serves on `listener`.
    pub fn serve(listener: TcpListener, barrier: usize, hold: Duration) -> LineEchoServer {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("line echo server: no local address: {e}"));
        let shared = Arc::new(LineShared {
            barrier,
            hold,
            log: Recorder::new(EchoLog::default()),
            stop: StopFlag::default(),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("echo-{}", addr.port()))
            .spawn(move || line_accept_loop(&listener, &accept_shared))
            .unwrap_or_else(|e| panic!("cannot start the line echo server thread: {e}"));
        LineEchoServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what it has seen so far.
    pub fn log(&self) -> EchoLog {
        self.shared.log.snapshot()
    }

    /// Waits until `done` holds for the log and returns it; panics naming
    /// `what`, with the log, after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&EchoLog) -> bool,
    ) -> EchoLog {
        match self.shared.log.wait_until(timeout, done) {
            Ok(log) => log,
            Err(log) => panic!(
                "line echo server on {}: {what} did not happen within {timeout:?}; \
                 {} connections, {} replies, {} open, at most {} at once",
                self.addr,
                log.peers.len(),
                log.replies,
                log.open,
                log.max_open
            ),
        }
    }
}

impl Drop for LineEchoServer {
    fn drop(&mut self) {
        self.shared.stop.stop();
        // Wake connection threads waiting at the barrier.
        self.shared.log.update(|_| {});
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl std::fmt::Debug for LineEchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineEchoServer")
            .field("addr", &self.addr)
            .field("barrier", &self.shared.barrier)
            .finish_non_exhaustive()
    }
}

fn line_accept_loop(listener: &TcpListener, shared: &Arc<LineShared>) {
    while !shared.stop.stopped() {
        match wait_readable(listener, STOP_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                eprintln!("airlock-e2e: line echo server: poll: {e}");
                return;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("airlock-e2e: line echo server: accept: {e}");
                continue;
            }
        };
        shared.log.update(|log| {
            log.peers.push(peer);
            log.open += 1;
            log.max_open = log.max_open.max(log.open);
        });
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("echo-conn-{}", peer.port()))
            .spawn(move || {
                // An error means the client went away: nobody to answer.
                let _ = echo_line(stream, &conn_shared);
                conn_shared.log.update(|log| log.open -= 1);
            });
        if let Err(e) = spawned {
            eprintln!("airlock-e2e: line echo server: cannot start a connection thread: {e}");
            shared.log.update(|log| log.open -= 1);
        }
    }
}

fn echo_line(stream: TcpStream, shared: &LineShared) -> io::Result<()> {
    let accepted = Instant::now();
    stream.set_read_timeout(Some(LINE_TIMEOUT))?;
    stream.set_write_timeout(Some(LINE_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(io::Read::take(stream.try_clone()?, MAX_LINE)).read_line(&mut line)?;
    // Hold the reply until enough connections were open at once.
    let _ = shared
        .log
        .wait_until(shared.hold.saturating_sub(accepted.elapsed()), |log| {
            log.max_open >= shared.barrier || shared.stop.stopped()
        });
    let mut out = stream;
    out.write_all(format!("echo {}\n", line.trim_end_matches(['\r', '\n'])).as_bytes())?;
    out.flush()?;
    shared.log.update(|log| log.replies += 1);
    out.shutdown(Shutdown::Write)
}

/// A UDP server that sends every datagram back to its sender unchanged —
/// except TFTP: a read request (RFC 1350 RRQ) for file NAME is answered
/// with one final DATA block holding `NAME from PEER\n` (PEER as the server
/// saw it), and TFTP ACKs are swallowed. That lets a guest whose only
/// general UDP client is curl check a UDP round trip with
/// `curl tftp://SERVER:PORT/NAME`.
pub struct UdpEchoServer {
    addr: SocketAddr,
    shared: Arc<UdpShared>,
    thread: Option<JoinHandle<()>>,
}

struct UdpShared {
    log: Recorder<EchoLog>,
    stop: StopFlag,
}

impl UdpEchoServer {
    /// Serves on a fresh `127.0.0.1` port.
    pub fn start() -> UdpEchoServer {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind the UDP echo server to 127.0.0.1: {e}"));
        UdpEchoServer::serve(socket)
    }

    /// Serves on `socket`.
    pub fn serve(socket: UdpSocket) -> UdpEchoServer {
        let addr = socket
            .local_addr()
            .unwrap_or_else(|e| panic!("UDP echo server: no local address: {e}"));
        socket
            .set_read_timeout(Some(STOP_POLL))
            .unwrap_or_else(|e| panic!("UDP echo server: cannot set a read timeout: {e}"));
        let shared = Arc::new(UdpShared {
            log: Recorder::new(EchoLog::default()),
            stop: StopFlag::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("udp-echo-{}", addr.port()))
            .spawn(move || udp_loop(&socket, &thread_shared))
            .unwrap_or_else(|e| panic!("cannot start the UDP echo server thread: {e}"));
        UdpEchoServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The address it answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of what it has seen so far.
    pub fn log(&self) -> EchoLog {
        self.shared.log.snapshot()
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.shared.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for UdpEchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpEchoServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn udp_loop(socket: &UdpSocket, shared: &UdpShared) {
    let mut buf = vec![0; 65536];
    while !shared.stop.stopped() {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("airlock-e2e: UDP echo server: receive: {e}");
                return;
            }
        };
        shared.log.update(|log| log.peers.push(peer));
        let datagram = &buf[..len];
        let reply = match tftp_opcode(datagram) {
            Some(TFTP_ACK) if len == 4 => continue,
            Some(TFTP_RRQ) => match tftp_filename(datagram) {
                Some(name) => tftp_data(&format!("{name} from {peer}\n")),
                None => datagram.to_vec(),
            },
            _ => datagram.to_vec(),
        };
        if socket.send_to(&reply, peer).is_ok() {
            shared.log.update(|log| log.replies += 1);
        }
    }
}

fn tftp_opcode(datagram: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*datagram.first()?, *datagram.get(1)?]))
}

/// The file name of an RRQ: `01 NAME 00 MODE 00 [options]`.
fn tftp_filename(datagram: &[u8]) -> Option<String> {
    let rest = datagram.get(2..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// DATA block 1 holding `text` (cut to one block, so it is the last).
fn tftp_data(text: &str) -> Vec<u8> {
    let body = &text.as_bytes()[..text.len().min(TFTP_BLOCK - 1)];
    let mut packet = Vec::with_capacity(4 + body.len());
    packet.extend_from_slice(&TFTP_DATA.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet.extend_from_slice(body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    #[test]
    fn line_echo_holds_replies_until_the_barrier() {
        let server = LineEchoServer::start(3, Duration::from_secs(20));
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let addr = server.addr();
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(format!("hello {i}\n").as_bytes()).unwrap();
                    let mut reply = String::new();
                    s.read_to_string(&mut reply).unwrap();
                    reply
                })
            })
            .collect();
        for (i, client) in clients.into_iter().enumerate() {
            assert_eq!(client.join().unwrap(), format!("echo hello {i}\n"));
        }
        let log = server.wait_until("3 replies", Duration::from_secs(5), |l| {
            l.replies == 3 && l.open == 0
        });
        assert_eq!(log.max_open, 3);
    }

    #[test]
    fn line_echo_gives_up_waiting_after_hold() {
        let server = LineEchoServer::start(5, Duration::from_millis(300));
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.write_all(b"alone\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "echo alone\n");
        assert_eq!(server.log().max_open, 1);
    }

    #[test]
    fn udp_echoes_and_answers_tftp_reads() {
        let server = UdpEchoServer::start();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"ping 42", server.addr()).unwrap();
        let mut buf = [0; 600];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping 42");

        // curl is the guest's TFTP client: check against the host's curl.
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("tftp://{}/hello-tftp", server.addr()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.starts_with("hello-tftp from 127.0.0.1:"), "{text}");
        assert!(server.log().replies >= 2);
    }
}
