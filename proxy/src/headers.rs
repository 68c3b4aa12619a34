//! Header handling at the proxy hop (RFC 9110 §7.6, RFC 9112 §9.6):
//! hop-by-hop headers are removed in both directions, `Via` is appended,
//! and nothing that carries proxy credentials crosses the proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// The `Via` pseudonym this proxy adds (RFC 9110 §7.6.3).
pub const VIA_PSEUDONYM: &str = "airlock-proxy";

/// Headers that only concern one connection, removed whatever `Connection`
/// says. `Proxy-Authorization` and `Proxy-Authenticate` belong to the hop
/// between a client and its proxy: the guest's are never forwarded and the
/// upstream's challenge is not shown to the guest.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Removes hop-by-hop headers: those named in `Connection` and the fixed
/// list above. With `Transfer-Encoding` present, `Content-Length` is
/// dropped as well (RFC 9112 §6.3: it must be ignored; the body is
/// re-framed on the next hop).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for &name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The transfer codings of a message besides `chunked`
/// (`Transfer-Encoding: gzip, chunked` → `["gzip"]`). hyper undoes the
/// chunked framing only: any other coding is still on the body bytes, and
/// dropping the header with the other hop-by-hop ones would hide it.
pub fn other_transfer_codings(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty() && c != "chunked")
        .collect()
}

/// Request-only: `Expect: 100-continue` is answered by this proxy itself
/// (hyper sends `100 Continue` when the body is first read) and not passed on.
pub fn strip_request_extras(headers: &mut HeaderMap) {
    headers.remove(header::EXPECT);
}

/// Appends `Via: <version> airlock-proxy` for a message received with
/// `version`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let proto = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    if let Ok(v) = HeaderValue::try_from(format!("{proto} {VIA_PSEUDONYM}")) {
        headers.append(header::VIA, v);
    }
}

/// Whether a request already went through this proxy (a forwarding loop,
/// e.g. a guest asking the proxy to fetch `http://<the proxy itself>/`).
pub fn has_our_via(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(VIA_PSEUDONYM))
}

/// Drops any header whose value contains `secret` (the upstream's
/// `Proxy-Authorization` value, or its base64 part): an upstream or origin
/// that echoes the credentials back must not show them to the guest.
pub fn scrub_secret(headers: &mut HeaderMap, secret: &HeaderValue) {
    let full = secret.as_bytes();
    let token = full.strip_prefix(b"Basic ").unwrap_or(full);
    if token.is_empty() {
        return;
    }
    let leaking: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| contains(v.as_bytes(), token))
        .map(|(k, _)| k.clone())
        .collect();
    for name in leaking {
        headers.remove(&name);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn fixed_hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Z3Vlc3Q6Z3Vlc3Q="),
            ("proxy-authenticate", "Basic realm=x"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "example.com"),
            ("accept", "*/*"),
            ("authorization", "Bearer end-to-end"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            ["accept", "authorization", "content-type", "host"]
        );
    }

    #[test]
    fn headers_named_by_connection_go() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", " x-other ,,bad header"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn content_length_dropped_with_transfer_encoding() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "10")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
        let mut h = map(&[("content-length", "10")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-length"]);
    }

    #[test]
    fn transfer_codings_other_than_chunked() {
        let codings = |pairs: &[(&str, &str)]| other_transfer_codings(&map(pairs));
        assert!(codings(&[("transfer-encoding", "chunked")]).is_empty());
        assert!(codings(&[]).is_empty());
        assert_eq!(codings(&[("transfer-encoding", "GZIP, chunked")]), ["gzip"]);
        assert_eq!(
            codings(&[
                ("transfer-encoding", "deflate"),
                ("transfer-encoding", "gzip ,chunked")
            ]),
            ["deflate", "gzip"]
        );
    }

    #[test]
    fn expect_is_request_only_extra() {
        let mut h = map(&[("expect", "100-continue"), ("accept", "*/*")]);
        strip_request_extras(&mut h);
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn via_is_appended_and_loops_detected() {
        let mut h = map(&[("via", "1.1 squid")]);
        assert!(!has_our_via(&h));
        add_via(&mut h, Version::HTTP_10);
        let vias: Vec<&str> = h
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(vias, ["1.1 squid", "1.0 airlock-proxy"]);
        assert!(has_our_via(&h));
        assert!(has_our_via(&map(&[(
            "via",
            "1.1 a, 1.1 airlock-proxy (x)"
        )])));
        assert!(!has_our_via(&map(&[("via", "1.1 airlock-proxy-other")])));
    }

    #[test]
    fn echoed_credentials_are_scrubbed() {
        let secret = HeaderValue::from_static("Basic YWxpY2U6czNjcmV0");
        let mut h = map(&[
            ("x-echo", "you sent Basic YWxpY2U6czNjcmV0"),
            ("x-token-only", "YWxpY2U6czNjcmV0"),
            ("content-type", "text/html"),
        ]);
        scrub_secret(&mut h, &secret);
        assert_eq!(names(&h), ["content-type"]);
    }
}
