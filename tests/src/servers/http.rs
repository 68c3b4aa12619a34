//! A small threaded HTTP/1.1 server (one thread per connection, one request
//! per connection) with the endpoints network tests need.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{hex, pattern, sha256_hex, wait_readable, Recorder, StopFlag, STOP_POLL};

/// Seed of the `/blob` body ([`super::pattern`]).
const BLOB_SEED: u64 = 0x5eed_b10b;
/// Seed of the `/stream` body.
const STREAM_SEED: u64 = 0x57ea_3000;
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest `/echo` body.
const MAX_ECHO_BODY: u64 = 1 << 20;
/// Size of each write of `/stream`.
const STREAM_CHUNK: usize = 64 * 1024;
/// A connection whose peer neither sends nor reads for this long is dropped
/// (no thread outlives a test by much).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Body of `GET /hello`.
pub const HELLO_BODY: &str = "hello from the airlock-e2e HTTP server\n";

/// A threaded HTTP/1.1 test server. Every response closes the connection.
///
/// | request | response |
/// |---|---|
/// | `GET /blob` | [`HttpServer::blob`]: deterministic pseudo-random bytes |
/// | `GET /hello` | [`HELLO_BODY`] |
/// | `GET /peer` | `peer <addr>\n`: the client address the server saw |
/// | `GET /stream` | pseudo-random bytes until the client goes away (no length); the end is recorded as a [`StreamEnd`] |
/// | `POST /upload` | reads the body (`Content-Length`, `Expect: 100-continue` honoured), records its length and SHA-256 as an [`Upload`], answers `received <len> <sha256>\n` |
/// | `POST /echo` | `peer <addr>\n` followed by the body (at most 1 MiB) |
///
/// Anything else gets 404 (or 400/411 for a malformed request).
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    blob: Vec<u8>,
    blob_sha256: String,
    log: Recorder<HttpLog>,
    stop: StopFlag,
}

/// What an [`HttpServer`] saw, in order.
#[derive(Debug, Clone, Default)]
pub struct HttpLog {
    /// Every request head that was parsed.
    pub requests: Vec<HttpRequest>,
    /// Every completed `POST /upload`.
    pub uploads: Vec<Upload>,
    /// How many `GET /stream` responses were started.
    pub streams_started: usize,
    /// Every `GET /stream` that ended (they only end when the client goes).
    pub stream_ends: Vec<StreamEnd>,
}

/// One request head.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target, e.g. `/blob`.
    pub path: String,
    /// The client's address as the server saw it.
    pub peer: SocketAddr,
}

/// A body received by `POST /upload`.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Bytes received.
    pub len: u64,
    /// Lower-case hex SHA-256 of the bytes received.
    pub sha256: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Time from the end of the request head to the last body byte.
    pub elapsed: Duration,
}

/// How a `GET /stream` response ended.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    /// The client's address.
    pub peer: SocketAddr,
    /// Body bytes written before the end.
    pub bytes: u64,
    /// The write error that ended it (`Broken pipe`, `Connection reset by
    /// peer`, or a timeout if the client stopped reading for
    /// 30 s).
    pub error: String,
    /// Its kind, to tell a reset from a timeout.
    pub kind: io::ErrorKind,
}

impl HttpServer {
    /// Serves on a fresh `127.0.0.1` port; `/blob` is `blob_len` bytes.
    pub fn start(blob_len: usize) -> HttpServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind the HTTP test server to 127.0.0.1: {e}"));
        HttpServer::serve(listener, blob_len)
    }

    /// Serves on `listener` (e.g. bound inside a network namespace);
    /// `/blob` is `blob_len` bytes.
    pub fn serve(listener: TcpListener, blob_len: usize) -> HttpServer {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("HTTP test server: no local address: {e}"));
        let blob = pattern(blob_len, BLOB_SEED);
        let shared = Arc::new(Shared {
            blob_sha256: sha256_hex(&blob),
            blob,
            log: Recorder::new(HttpLog::default()),
            stop: StopFlag::default(),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("http-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .unwrap_or_else(|e| panic!("cannot start the HTTP test server thread: {e}"));
        HttpServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `/blob` body.
    pub fn blob(&self) -> &[u8] {
        &self.shared.blob
    }

    /// SHA-256 of the `/blob` body (lower-case hex, as `sha256sum` prints).
    pub fn blob_sha256(&self) -> &str {
        &self.shared.blob_sha256
    }

    /// A copy of what the server has seen so far.
    pub fn log(&self) -> HttpLog {
        self.shared.log.snapshot()
    }

    /// Waits until `done` holds for the server's log and returns it. Panics
    /// naming `what`, with the log, after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&HttpLog) -> bool,
    ) -> HttpLog {
        match self.shared.log.wait_until(timeout, done) {
            Ok(log) => log,
            Err(log) => panic!(
                "HTTP test server on {}: {what} did not happen within {timeout:?}; it saw {log:#?}",
                self.addr
            ),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.stop();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .field("blob_len", &self.shared.blob.len())
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.stopped() {
        match wait_readable(listener, STOP_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                eprintln!("airlock-e2e: HTTP test server: poll: {e}");
                return;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("airlock-e2e: HTTP test server: accept: {e}");
                continue;
            }
        };
        let shared = Arc::clone(shared);
        // Connection threads are detached: each ends when its client goes
        // or after IO_TIMEOUT of silence.
        let spawned = thread::Builder::new()
            .name(format!("http-conn-{}", peer.port()))
            .spawn(move || {
                // An error means the client went away mid-exchange: there
                // is nobody left to answer.
                let _ = serve_connection(stream, peer, &shared);
            });
        if let Err(e) = spawned {
            eprintln!("airlock-e2e: HTTP test server: cannot start a connection thread: {e}");
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    content_length: Option<u64>,
    expect_continue: bool,
    chunked: bool,
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let head = match read_head(&mut reader)? {
        Ok(head) => head,
        Err(reason) => return respond(&mut out, "400 Bad Request", reason.as_bytes()),
    };
    shared.log.update(|log| {
        log.requests.push(HttpRequest {
            method: head.method.clone(),
            path: head.path.clone(),
            peer,
        })
    });
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/blob") => respond(&mut out, "200 OK", &shared.blob),
        ("GET", "/hello") => respond(&mut out, "200 OK", HELLO_BODY.as_bytes()),
        ("GET", "/peer") => respond(&mut out, "200 OK", format!("peer {peer}\n").as_bytes()),
        ("GET", "/stream") => stream_forever(&mut out, peer, shared),
        ("POST", "/upload") | ("POST", "/echo") => {
            if head.chunked {
                return respond(&mut out, "411 Length Required", b"send Content-Length\n");
            }
            let Some(len) = head.content_length else {
                return respond(&mut out, "411 Length Required", b"send Content-Length\n");
            };
            if head.expect_continue {
                out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                out.flush()?;
            }
            if head.path == "/upload" {
                upload(&mut reader, &mut out, len, peer, shared)
            } else if len > MAX_ECHO_BODY {
                respond(&mut out, "413 Payload Too Large", b"echo body too large\n")
            } else {
                let mut body = format!("peer {peer}\n").into_bytes();
                let prefix = body.len();
                body.resize(prefix + len as usize, 0);
                reader.read_exact(&mut body[prefix..])?;
                respond(&mut out, "200 OK", &body)
            }
        }
        _ => respond(&mut out, "404 Not Found", b"no such endpoint\n"),
    }
}

/// Reads the request head. The outer error is an I/O failure, the inner one
/// a malformed request.
fn read_head(reader: &mut impl BufRead) -> io::Result<Result<Head, String>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the request head",
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Ok(Err(format!("request head longer than {MAX_HEAD} bytes\n")));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let Some(request_line) = lines.first() else {
        return Ok(Err("empty request\n".into()));
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(Err(format!("bad request line {request_line:?}\n")));
    };
    let mut head = Head {
        method: method.to_string(),
        path: path.to_string(),
        content_length: None,
        expect_continue: false,
        chunked: false,
    };
    for header in &lines[1..] {
        let Some((name, value)) = header.split_once(':') else {
            return Ok(Err(format!("bad header {header:?}\n")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => match value.parse() {
                Ok(len) => head.content_length = Some(len),
                Err(_) => return Ok(Err(format!("bad Content-Length {value:?}\n"))),
            },
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    Ok(Ok(head))
}

/// Writes a complete response and closes the sending side.
fn respond(out: &mut TcpStream, status: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()?;
    out.shutdown(Shutdown::Write)
}

fn upload(
    reader: &mut impl Read,
    out: &mut TcpStream,
    len: u64,
    peer: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    let started = Instant::now();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "upload from {peer} ended after {} of {len} bytes",
                    len - left
                ),
            ));
        }
        digest.update(&buf[..n]);
        left -= n as u64;
    }
    let upload = Upload {
        len,
        sha256: hex(digest.finish().as_ref()),
        peer,
        elapsed: started.elapsed(),
    };
    let reply = format!("received {} {}\n", upload.len, upload.sha256);
    shared.log.update(|log| log.uploads.push(upload));
    respond(out, "200 OK", reply.as_bytes())
}

/// Writes pseudo-random bytes until a write fails, then records how it ended.
fn stream_forever(out: &mut TcpStream, peer: SocketAddr, shared: &Shared) -> io::Result<()> {
    let chunk = pattern(STREAM_CHUNK, STREAM_SEED);
    shared.log.update(|log| log.streams_started += 1);
    let mut bytes = 0u64;
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
    let error = match out.write_all(head.as_bytes()) {
        Err(e) => e,
        Ok(()) => loop {
            match out.write(&chunk) {
                Ok(0) => break io::Error::new(io::ErrorKind::WriteZero, "write returned 0"),
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        },
    };
    shared.log.update(|log| {
        log.stream_ends.push(StreamEnd {
            peer,
            bytes,
            error: error.to_string(),
            kind: error.kind(),
        })
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        reply
    }

    fn body(reply: &[u8]) -> &[u8] {
        let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        &reply[at + 4..]
    }

    #[test]
    fn serves_blob_hello_peer_and_404() {
        let server = HttpServer::start(100_000);
        let reply = request(server.addr(), b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(body(&reply), server.blob());
        assert_eq!(sha256_hex(body(&reply)), server.blob_sha256());
        let reply = request(server.addr(), b"GET /hello HTTP/1.1\r\n\r\n");
        assert_eq!(body(&reply), HELLO_BODY.as_bytes());
        let reply = request(server.addr(), b"GET /peer HTTP/1.1\r\n\r\n");
        assert!(body(&reply).starts_with(b"peer 127.0.0.1:"));
        let reply = request(server.addr(), b"GET /nothing HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with(b"HTTP/1.1 404"));
        let log = server.log();
        assert_eq!(log.requests.len(), 4);
        assert_eq!(log.requests[0].path, "/blob");
    }

    #[test]
    fn upload_records_length_and_hash_with_expect_continue() {
        let server = HttpServer::start(0);
        let data = pattern(300_000, 3);
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.write_all(
            format!(
                "POST /upload HTTP/1.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut interim = [0; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(&data).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        let expected = format!("received {} {}\n", data.len(), sha256_hex(&data));
        assert_eq!(body(&reply), expected.as_bytes());
        let log = server.wait_until("an upload", Duration::from_secs(5), |l| {
            !l.uploads.is_empty()
        });
        assert_eq!(log.uploads[0].len, data.len() as u64);
        assert_eq!(log.uploads[0].sha256, sha256_hex(&data));
    }

    #[test]
    fn echo_prefixes_the_peer() {
        let server = HttpServer::start(0);
        let reply = request(
            server.addr(),
            b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        );
        let text = String::from_utf8(body(&reply).to_vec()).unwrap();
        assert!(text.starts_with("peer 127.0.0.1:"), "{text}");
        assert!(text.ends_with("\nhello"), "{text}");
    }

    #[test]
    fn stream_end_is_recorded_when_the_client_leaves() {
        let server = HttpServer::start(0);
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = vec![0; 200_000];
        s.read_exact(&mut buf).unwrap();
        drop(s);
        let log = server.wait_until("the stream's end", Duration::from_secs(10), |l| {
            !l.stream_ends.is_empty()
        });
        assert_eq!(log.streams_started, 1);
        assert!(log.stream_ends[0].bytes >= 100_000);
        assert_ne!(log.stream_ends[0].kind, io::ErrorKind::WouldBlock);
    }
}
