//! A tiny blocking HTTP/1.1 client over a Unix socket: one request per
//! connection (`Connection: close`), JSON in and out.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// How long the daemon may take to accept, read or answer, by default.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read (the flow table of a busy guest is the biggest).
const MAX_RESPONSE: u64 = 64 << 20;
/// Most header fields in a response.
const MAX_HEADERS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {0} (is airlock-net running with --api-socket {0}? \
         Choose the socket with --api-socket or AIRLOCK_API_SOCKET)",
        .path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot talk to airlock-net on {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("airlock-net on {} did not answer within {} s", .path.display(), .timeout.as_secs())]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("airlock-net sent a malformed HTTP response: {0}")]
    Malformed(String),
    /// The daemon answered with an error status.
    #[error("airlock-net: {message} (HTTP {status})")]
    Api { status: u16, message: String },
}

/// A successful (2xx) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// airlock-net's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_owned(),
            timeout: TIMEOUT,
        }
    }

    /// How long the daemon may take to accept, read or answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn get(&self, target: &str) -> Result<Reply, ClientError> {
        self.request("GET", target, None)
    }

    pub fn post(&self, target: &str, body: &impl Serialize) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        self.request("POST", target, Some(&body))
    }

    fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let io_err = |source: io::Error| match source.kind() {
            // A read or write timeout: EAGAIN on a socket with SO_RCVTIMEO.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::TimedOut {
                path: self.path.clone(),
                timeout: self.timeout,
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        };
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_err)?;
        stream
            .write_all(&encode_request(method, target, body))
            .map_err(io_err)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(io_err)?;
        let (status, body) = parse_response(&raw)?;
        if (200..300).contains(&status) {
            Ok(Reply { status, body })
        } else {
            Err(ClientError::Api {
                status,
                message: error_message(&body),
            })
        }
    }
}

/// The request bytes.
pub fn encode_request(method: &str, target: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: airlock\r\nConnection: close\r\n");
    if let Some(body) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Status and body of a complete response (the connection was closed
/// after it): the body is `Content-Length` bytes, or everything after the
/// head without one.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if raw.is_empty() => {
            return Err(ClientError::Malformed(
                "the connection closed without an answer".into(),
            ))
        }
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::Malformed("truncated head".into()))
        }
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| ClientError::Malformed("no status".into()))?;
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ClientError::Malformed("invalid Content-Length".into()))
        })
        .transpose()?;
    let rest = &raw[head_len..];
    let body = match length {
        Some(n) if n > rest.len() => {
            return Err(ClientError::Malformed(format!(
                "body of {} bytes, {n} announced",
                rest.len()
            )))
        }
        Some(n) => &rest[..n],
        None => rest,
    };
    Ok((status, body.to_vec()))
}

/// The text of an error body: its JSON `error` field, or the body itself
/// (gvisor-tap-vsock answers plain text).
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(text) = v.get("error").and_then(|e| e.as_str()) {
            return text.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    if text.is_empty() {
        "no error text".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_by_length() {
        assert_eq!(
            encode_request("GET", "/stats", None),
            b"GET /stats HTTP/1.1\r\nHost: airlock\r\nConnection: close\r\n\r\n"
        );
        let post = encode_request("POST", "/x", Some(b"{}"));
        assert!(post.ends_with(b"Content-Length: 2\r\n\r\n{}"));
    }

    #[test]
    fn responses_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n[]\n";
        assert_eq!(parse_response(raw).unwrap(), (200, b"[]\n".to_vec()));
        // Without a length, the rest.
        assert_eq!(
            parse_response(b"HTTP/1.0 500 x\r\n\r\nplain text\n").unwrap(),
            (500, b"plain text\n".to_vec())
        );
        for bad in [
            &b""[..],
            b"HTTP/1.1 200",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn error_texts_from_json_or_plain_bodies() {
        assert_eq!(
            error_message(br#"{"error":"no such endpoint: /x"}"#),
            "no such endpoint: /x"
        );
        assert_eq!(error_message(b"proxy not found\n"), "proxy not found");
        assert_eq!(error_message(b""), "no error text");
    }

    #[test]
    fn a_missing_socket_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.api");
        let e = Client::new(&path).get("/stats").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ClientError::Connect { .. }));
        assert!(
            text.contains(&format!(
                "is airlock-net running with --api-socket {}?",
                path.display()
            )),
            "{text}"
        );
    }
}
