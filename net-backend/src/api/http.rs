//! The control API's HTTP/1.1, without sockets: request heads parsed with
//! `httparse`, bodies framed by `Content-Length` only, responses serialised,
//! and one connection served over anything that reads and writes.
//!
//! Input is untrusted (any local process that can open the socket): every
//! malformed, oversized or unsupported request becomes a 4xx answer with a
//! JSON `{"error": …}` body, never a panic.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Largest request head (request line and header fields).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// How long a connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take to arrive, from its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 8 * 1024;

/// What routing needs of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target's path, without a query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// A parsed request head and how the connection goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for an interim response
    /// before it sends the body.
    pub expect_continue: bool,
}

/// `Content-Type` of JSON bodies.
const JSON: &str = "application/json";

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra header fields (`Content-Type`, `Content-Length` and
    /// `Connection` are added when serialising).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
}

impl Response {
    /// `status` with `value` as the JSON body.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    headers: Vec::new(),
                    body,
                    close: false,
                    content_type: JSON,
                }
            }
            Err(e) => Response::error(500, &format!("cannot encode the response: {e}")),
        }
    }

    /// `status` with the body `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        let mut body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        Response {
            status,
            headers: Vec::new(),
            body,
            close: false,
            content_type: JSON,
        }
    }

    /// `status` with a text body of the given type (`/metrics`).
    pub fn text(status: u16, body: String, content_type: &'static str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into_bytes(),
            close: false,
            content_type,
        }
    }

    /// The same response, closing the connection after it.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire. `head_only` for HEAD requests (the length
    /// is still the body's); `keep_alive` decides the `Connection` field.
    pub fn to_bytes(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The reason phrase of the status codes the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, `Ok(Some((head, length)))` once it is, or the error response
/// to send before closing the connection.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Response> {
    let too_large =
        || Response::error(431, &format!("request head larger than {MAX_HEAD} bytes")).closing();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(too_large()),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(
                Response::error(431, &format!("more than {MAX_HEADERS} header fields")).closing(),
            )
        }
        Err(e) => return Err(bad(&format!("malformed request: {e}"))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    if version > 1 {
        return Err(Response::error(505, "only HTTP/1.0 and HTTP/1.1 are served").closing());
    }
    if !target.starts_with('/') {
        return Err(bad(&format!(
            "request target {target:?} must be a path starting with /"
        )));
    }
    let path = target.split(['?', '#']).next().unwrap_or(target).to_owned();

    let mut content_length: Option<usize> = None;
    // HTTP/1.1 keeps the connection by default, HTTP/1.0 closes it.
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for field in req.headers.iter() {
        let value = || std::str::from_utf8(field.value).map(str::trim);
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = value()
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| bad("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("conflicting Content-Length fields"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                411,
                "Transfer-Encoding is not supported: send the body with a Content-Length",
            )
            .closing());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value().unwrap_or("").split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            match value() {
                Ok(v) if v.eq_ignore_ascii_case("100-continue") => expect_continue = version == 1,
                _ => {
                    return Err(
                        Response::error(417, "only Expect: 100-continue is supported").closing(),
                    )
                }
            }
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(Response::error(
            413,
            &format!("request body of {content_length} bytes is larger than {MAX_BODY}"),
        )
        .closing());
    }
    Ok(Some((
        Head {
            method: method.to_owned(),
            path,
            content_length,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// 400 with `message`, closing the connection (after a malformed head the
/// stream cannot be trusted to be in step).
fn bad(message: &str) -> Response {
    Response::error(400, message).closing()
}

/// A byte stream whose reads can time out.
pub trait Transport: Read + Write {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Transport for UnixStream {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        UnixStream::set_read_timeout(self, Some(timeout))
    }
}

/// How reading more of a request ended.
enum More {
    Data,
    /// The peer closed its side.
    Eof,
    /// Nothing arrived in time.
    TimedOut,
}

fn read_more<S: Transport>(s: &mut S, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<More> {
    if timeout.is_zero() {
        return Ok(More::TimedOut);
    }
    s.set_read_timeout(timeout)?;
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        return match s.read(&mut chunk) {
            Ok(0) => Ok(More::Eof),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(More::Data)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(More::TimedOut)
            }
            Err(e) => Err(e),
        };
    }
}

/// Serves requests on `s` until the client closes, asks to close, goes
/// idle for [`IDLE_TIMEOUT`], takes longer than [`REQUEST_TIMEOUT`] for one
/// request, or sends something that ends the connection (answered first).
/// `handle` answers each complete request.
pub fn serve_connection<S: Transport>(
    s: &mut S,
    mut handle: impl FnMut(&Request) -> Response,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The request's clock starts at its first byte (which may already
        // be buffered, pipelined behind the previous request).
        let mut started = (!buf.is_empty()).then(Instant::now);
        let timeout = |started: Option<Instant>| match started {
            None => IDLE_TIMEOUT,
            Some(t) => REQUEST_TIMEOUT.saturating_sub(t.elapsed()),
        };
        let (head, head_len) = loop {
            match parse_head(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(response) => return send(s, &response, false, false),
            }
            match read_more(s, &mut buf, timeout(started))? {
                More::Data => {
                    started.get_or_insert_with(Instant::now);
                }
                More::Eof => return Ok(()),
                More::TimedOut if buf.is_empty() => return Ok(()),
                More::TimedOut => return send(s, &timed_out(), false, false),
            }
        };
        let end = head_len + head.content_length;
        if head.expect_continue && buf.len() < end {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        while buf.len() < end {
            match read_more(s, &mut buf, timeout(started))? {
                More::Data => {}
                More::Eof => return Ok(()),
                More::TimedOut => return send(s, &timed_out(), false, false),
            }
        }
        let request = Request {
            method: head.method.clone(),
            path: head.path.clone(),
            body: buf[head_len..end].to_vec(),
        };
        let response = handle(&request);
        let keep_alive = head.keep_alive && !response.close;
        send(s, &response, head.method == "HEAD", keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
        buf.drain(..end);
    }
}

fn timed_out() -> Response {
    Response::error(408, "request not received in time").closing()
}

fn send<S: Write>(s: &mut S, r: &Response, head_only: bool, keep_alive: bool) -> io::Result<()> {
    s.write_all(&r.to_bytes(head_only, keep_alive))?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse_head(text.as_bytes()) {
            Ok(Some((h, n))) => {
                assert_eq!(n, text.find("\r\n\r\n").unwrap() + 4);
                h
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refused(text: &[u8]) -> Response {
        match parse_head(text) {
            Err(r) => r,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    fn error_text(r: &Response) -> String {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["error"].as_str().unwrap().to_owned()
    }

    #[test]
    fn heads_parse_with_framing_and_persistence() {
        let h = head("GET /stats?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/stats");
        assert_eq!(h.content_length, 0);
        assert!(h.keep_alive && !h.expect_continue);

        let h = head(
            "POST /services/forwarder/expose HTTP/1.1\r\ncontent-length: 12\r\n\
             Connection: close\r\nExpect: 100-continue\r\n\r\n",
        );
        assert_eq!((h.content_length, h.keep_alive), (12, false));
        assert!(h.expect_continue);

        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        // The same length twice is allowed.
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .content_length,
            3
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(parse_head(b""), Ok(None));
        assert_eq!(parse_head(b"GET /stats HT"), Ok(None));
        assert_eq!(parse_head(b"GET /stats HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn bad_heads_get_the_right_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"\x00\x01\x02 garbage\r\n\r\n", 400),
            (b"GET\r\n\r\n", 400),
            (b"GET http://x/stats HTTP/1.1\r\n\r\n", 400),
            (b"GET /stats HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"GET /stats HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"GET /stats HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            (
                b"GET /stats HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nExpect: something\r\n\r\n", 417),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        ];
        for (text, status) in cases {
            let r = refused(text);
            assert_eq!(r.status, *status, "{:?}", String::from_utf8_lossy(text));
            assert!(r.close);
            assert!(!error_text(&r).is_empty());
        }
        // Exactly the largest body is fine.
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n").content_length,
            MAX_BODY
        );
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        // Incomplete and already over the limit.
        assert_eq!(refused(&big).status, 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(refused(&big).status, 431);

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many).status, 431);
    }

    #[test]
    fn responses_serialise() {
        let r = Response::error(405, "no").with_header("Allow", "GET, HEAD");
        let text = String::from_utf8(r.to_bytes(false, true)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n\
             Content-Length: 15\r\nConnection: keep-alive\r\nAllow: GET, HEAD\r\n\r\n\
             {\"error\":\"no\"}\n"
        );
        let head_only = String::from_utf8(r.to_bytes(true, false)).unwrap();
        assert!(head_only.ends_with("Connection: close\r\nAllow: GET, HEAD\r\n\r\n"));
        assert!(head_only.contains("Content-Length: 15\r\n"));
        let j = Response::json(200, &serde_json::json!([1, 2]));
        assert_eq!(j.body, b"[1,2]\n");
    }

    /// An in-memory connection: reads come from `input` in `chunk`-sized
    /// pieces, then time out (or end, with `eof`).
    struct Mock {
        input: Vec<u8>,
        pos: usize,
        chunk: usize,
        eof: bool,
        output: Vec<u8>,
        timeouts: Vec<Duration>,
    }

    impl Mock {
        fn new(input: &[u8], chunk: usize, eof: bool) -> Mock {
            Mock {
                input: input.to_vec(),
                pos: 0,
                chunk,
                eof,
                output: Vec::new(),
                timeouts: Vec::new(),
            }
        }
    }

    impl Read for Mock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.input.len() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = self.chunk.min(buf.len()).min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    impl Write for Mock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Mock {
        fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
            self.timeouts.push(timeout);
            Ok(())
        }
    }

    fn echo(req: &Request) -> Response {
        Response::json(
            200,
            &serde_json::json!({
                "method": req.method, "path": req.path,
                "body": String::from_utf8_lossy(&req.body),
            }),
        )
    }

    fn serve(input: &[u8], chunk: usize, eof: bool) -> String {
        let mut m = Mock::new(input, chunk, eof);
        serve_connection(&mut m, echo).unwrap();
        String::from_utf8(m.output).unwrap()
    }

    #[test]
    fn pipelined_requests_byte_by_byte_keep_alive() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n\
                      HEAD /c HTTP/1.1\r\n\r\n";
        for chunk in [1, 7, READ_CHUNK] {
            let out = serve(input, chunk, true);
            assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
            assert!(
                out.contains(r#"{"method":"POST","path":"/a","body":"hello"}"#),
                "{out}"
            );
            assert!(out.contains(r#""path":"/b""#), "{out}");
            // HEAD: no body after the last head.
            assert!(out.ends_with("Connection: keep-alive\r\n\r\n"), "{out}");
        }
    }

    #[test]
    fn connection_close_ends_after_the_response() {
        let out = serve(
            b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            64,
            false,
        );
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
        assert!(out.contains("Connection: close\r\n"));
    }

    #[test]
    fn expect_continue_gets_an_interim_response() {
        let out = serve(
            b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            1024,
            false,
        );
        // The body never came: 100, then 408 after the timeout.
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408 "),
            "{out}"
        );
    }

    #[test]
    fn idle_and_partial_requests_time_out_differently() {
        // Idle: closed quietly.
        assert_eq!(serve(b"", 1, false), "");
        // Half a head: 408.
        let out = serve(b"GET /a HTTP/1.1\r\n", 1, false);
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout"), "{out}");
        // Truncated by the client: nothing to answer.
        assert_eq!(serve(b"GET /a HTTP/1.1\r\n", 3, true), "");
        let mut m = Mock::new(b"", 1, false);
        serve_connection(&mut m, echo).unwrap();
        assert_eq!(m.timeouts, vec![IDLE_TIMEOUT]);
    }

    #[test]
    fn errors_are_answered_then_the_connection_closes() {
        let out = serve(
            b"BAD\x01 / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            1024,
            true,
        );
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"));
        assert_eq!(out.matches("HTTP/1.1").count(), 1);

        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(200_000, b'x');
        let out = serve(&huge, READ_CHUNK, false);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }
}
