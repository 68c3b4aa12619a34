//! Plain-HTTP forwarding through the real binary to a test origin.

mod support;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_forwarded_and_hop_by_hop_headers_stay_behind() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::get(origin.url("/hello?x=1"))
        .header("host", "wrong.example")
        .header("connection", "keep-alive, x-hop-secret")
        .header("x-hop-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Z3Vlc3Q6Z3Vlc3RwYXNz")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let reply = send(&mut client, req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin");
    assert_eq!(reply.headers["via"], "1.1 airlock-proxy");

    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.uri, "/hello?x=1", "origin gets origin-form");
    assert_eq!(s.header("host"), Some(origin.addr.to_string().as_str()));
    assert_eq!(s.header("via"), Some("1.1 airlock-proxy"));
    assert_eq!(s.header("x-end-to-end"), Some("kept"));
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert_eq!(
            s.header(gone),
            None,
            "{gone} reached the origin:\n{}",
            s.all_headers_text()
        );
    }
    assert!(
        !s.all_headers_text().contains("Z3Vlc3Q6"),
        "guest credentials reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_upload_of_8_mib_arrives_intact() {
    const LEN: u64 = 8 * 1024 * 1024 + 12345;
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::post(origin.url("/upload"))
        .body(PatternBody::new(LEN).boxed())
        .unwrap();
    let reply = send(&mut client, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        format!("len={LEN} fnv={:016x}", pattern_fnv(LEN))
    );
    // The client sent it chunked; the origin must have received it chunked
    // too (streamed), not re-framed with a Content-Length after buffering.
    let seen = origin.seen();
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[0].header("content-length"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_with_expect_continue_and_content_length() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let body = vec![7u8; 100_000];
    let mut hasher = Fnv::new();
    hasher.update(&body);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::post(origin.url("/upload"))
        .header("content-length", body.len())
        .header("expect", "100-continue")
        .body(full(body))
        .unwrap();
    let reply = send(&mut client, req).await;
    assert_eq!(
        reply.text(),
        format!("len=100000 fnv={:016x}", hasher.finish())
    );
    let seen = origin.seen();
    assert_eq!(seen[0].header("content-length"), Some("100000"));
    assert_eq!(seen[0].header("expect"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_download_of_32_mib_arrives_intact() {
    const LEN: u64 = 32 * 1024 * 1024;
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let reply = proxy_get(&proxy.addr, &origin.url(&format!("/download/{LEN}"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len() as u64, LEN);
    let mut h = Fnv::new();
    h.update(&reply.body);
    assert_eq!(h.finish(), pattern_fnv(LEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    let a = send(&mut client, get(&origin.url("/hello"))).await;
    let b = send(&mut client, get(&origin.url("/download/1000"))).await;
    let c = send(&mut client, get(&origin.url("/hello"))).await;
    assert_eq!(
        (a.status, b.status, c.status),
        (StatusCode::OK, StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(b.body.len(), 1000);
    assert!(
        !client.is_closed(),
        "the proxy closed the client connection"
    );
    // All three went over one client connection, and the proxy reused its
    // origin connection for them.
    let seen = origin.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.connection == seen[0].connection),
        "{seen:?}"
    );
    assert_eq!(
        origin.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_origin_gives_502_naming_host_port_and_os_error() {
    let port = free_port();
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let reply = proxy_get(&proxy.addr, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let text = reply.text();
    assert!(
        text.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        reply.headers["proxy-status"],
        "airlock-proxy; error=connection_refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_proxy_requests_get_400_with_reason() {
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    let reply = send(&mut client, get("/just/a/path")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("absolute URL"), "{}", reply.text());
    // The connection is still usable.
    let reply = send(&mut client, get("https://example.invalid/")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("CONNECT"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refuses_with_403_naming_the_rule() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--allow",
        "localhost",
        "--deny",
        "127.0.0.0/8",
        "--allow",
        "example.invalid",
    ]);
    let reply = proxy_get(&proxy.addr, &format!("http://127.0.0.1:{port}/hello")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply
            .text()
            .starts_with("forbidden by policy: rule 2 (--deny 127.0.0.0/8)\n"),
        "{}",
        reply.text()
    );
    // Another spelling of the same address is caught too.
    let reply = proxy_get(&proxy.addr, &format!("http://2130706433:{port}/hello")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // Allowed by rule 1.
    let reply = proxy_get(&proxy.addr, &format!("http://localhost:{port}/hello")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // No rule matches, and an --allow is given: default deny.
    let reply = proxy_get(&proxy.addr, "http://other.invalid/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("default deny"), "{}", reply.text());
    // CONNECT is subject to the same rules.
    let (_s, head) = connect_tunnel(&proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // Only the allowed request reached the origin.
    assert_eq!(origin.seen().len(), 1);
}

/// `0.0.0.0` and `::` connect to the host's loopback: a loopback deny
/// rule must catch them in every spelling, for plain requests and CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_addresses_are_denied_as_loopback() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    // A service listening on [::] only (IPv6, so `[::]` reaches it).
    let v6 = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let v6_port = v6.local_addr().unwrap().port();
    let reached_v6 = Arc::new(AtomicUsize::new(0));
    let counter = reached_v6.clone();
    let v6_task = tokio::spawn(async move {
        while v6.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let proxy = Proxy::start(&["--ignore-proxy-env", "--deny", "127.0.0.0/8,::1"]);
    let urls = [
        format!("http://0.0.0.0:{port}/hello"),
        format!("http://0:{port}/hello"),
        format!("http://[::ffff:0.0.0.0]:{port}/hello"),
        format!("http://0.1.2.3:{port}/hello"),
        format!("http://[::]:{v6_port}/hello"),
    ];
    for url in &urls {
        let reply = proxy_get(&proxy.addr, url).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{url}: {}",
            reply.text()
        );
        assert!(
            reply
                .text()
                .starts_with("forbidden by policy: rule 1 (--deny 127.0.0.0/8,::1)\n"),
            "{url}: {}",
            reply.text()
        );
    }
    for authority in [format!("0.0.0.0:{port}"), format!("[::]:{v6_port}")] {
        let (_s, head) = connect_tunnel(&proxy.addr, &authority).await;
        assert!(
            head.starts_with("HTTP/1.1 403"),
            "CONNECT {authority}: {head}"
        );
    }
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
    assert_eq!(reached_v6.load(Ordering::SeqCst), 0);
    v6_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_other_than_get_are_forwarded() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    for method in [
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::from_bytes(b"PROPFIND").unwrap(),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(origin.url("/hello"))
            .body(empty())
            .unwrap();
        let reply = send(&mut client, req).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        if method == Method::HEAD {
            assert!(reply.body.is_empty());
            assert_eq!(reply.headers["content-length"], "17");
        }
    }
    let methods: Vec<String> = origin.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["HEAD", "DELETE", "OPTIONS", "PROPFIND"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_has_one_line_per_request_with_the_right_fields() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let refused = free_port();
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--audit-log",
        audit.to_str().unwrap(),
        "--deny",
        "blocked.invalid",
    ]);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::post(origin.url("/upload"))
        .body(full(vec![1u8; 1000]))
        .unwrap();
    let up = send(&mut client, req).await;
    assert_eq!(up.status, StatusCode::OK);
    let down = send(&mut client, get(&origin.url("/download/4096"))).await;
    assert_eq!(down.body.len(), 4096);
    let denied = proxy_get(&proxy.addr, "http://blocked.invalid/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let failed = proxy_get(&proxy.addr, &format!("http://127.0.0.1:{refused}/")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);

    let lines = eventually(|| {
        let l = audit_lines(&audit);
        (l.len() >= 4).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let fields = [
        "time",
        "client",
        "method",
        "host",
        "port",
        "status",
        "bytes_up",
        "bytes_down",
        "upstream",
        "duration_ms",
        "policy",
        "rule",
        "error",
    ];
    for l in &lines {
        let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, fields, "{l}");
        assert!(
            l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{l}"
        );
        assert!(l["upstream"].is_null());
        assert!(l["duration_ms"].is_u64());
    }
    let (a, b, c, d) = (&lines[0], &lines[1], &lines[2], &lines[3]);
    assert_eq!(
        (a["method"].as_str(), a["status"].as_u64()),
        (Some("POST"), Some(200))
    );
    assert_eq!(a["host"], "127.0.0.1");
    assert_eq!(a["port"], origin.addr.port());
    assert_eq!(a["bytes_up"], 1000);
    assert_eq!(a["bytes_down"], up.body.len());
    assert_eq!(a["policy"], "allow");
    assert!(a["rule"].is_null() && a["error"].is_null(), "{a}");
    assert_eq!(
        (b["method"].as_str(), b["bytes_down"].as_u64()),
        (Some("GET"), Some(4096))
    );
    assert_eq!(
        (
            c["status"].as_u64(),
            c["policy"].as_str(),
            c["rule"].as_u64()
        ),
        (Some(403), Some("deny"), Some(1))
    );
    assert_eq!(c["host"], "blocked.invalid");
    assert_eq!(c["port"], 80);
    assert_eq!(d["status"], 502);
    assert!(
        d["error"].as_str().unwrap().contains("Connection refused"),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_is_recorded_as_incomplete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    let mut s = tokio::net::TcpStream::connect(&proxy.addr).await.unwrap();
    let url = origin.url("/download/100000000");
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut some = vec![0u8; 256 * 1024];
    s.read_exact(&mut some).await.unwrap();
    drop(s);
    let lines = eventually(|| {
        let l = audit_lines(&audit);
        (!l.is_empty()).then_some(l)
    })
    .await;
    let l = &lines[0];
    assert_eq!(l["status"], 200);
    assert_eq!(l["error"], "response body not completely delivered", "{l}");
    let down = l["bytes_down"].as_u64().unwrap();
    assert!(down > 0 && down < 100_000_000, "{l}");
}

/// Reads one request head from `stream` (the tests send no request bodies
/// here but the POST's, which is read with it); `None` at end of stream.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An origin that keeps connections alive but closes one, without an
/// answer, when the next request arrives on it — what a server does when
/// its idle timeout fires as the request is on its way (tinyproxy closes
/// after every response). A GET lost that way is sent again on a new
/// connection; a POST with a body is not (502): the proxy cannot know
/// whether the origin acted on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_under_a_request_is_retried_only_when_safe() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, String)>::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for connection in 1.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // One answer per connection; the next request finds it closed.
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let line = head.lines().next().unwrap_or_default().to_owned();
                seen.lock().unwrap().push((connection, line.clone()));
                let body = format!("answer {connection}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
                if let Some(head) = read_head(&mut stream).await {
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    seen.lock()
                        .unwrap()
                        .push((connection, format!("{line} (unanswered)")));
                }
            });
        }
    });
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let mut client = connect_client(&proxy.addr).await;
    let url = |path: &str| format!("http://{addr}{path}");

    let first = send(&mut client, get(&url("/first"))).await;
    assert_eq!(
        (first.status, first.text()),
        (StatusCode::OK, "answer 1".into())
    );
    let second = send(&mut client, get(&url("/second"))).await;
    assert_eq!(
        (second.status, second.text()),
        (StatusCode::OK, "answer 2".into()),
        "{}",
        proxy.stderr()
    );
    let post = Request::post(url("/post"))
        .header("content-type", "text/plain")
        .body(full("do it once"))
        .unwrap();
    let post = send(&mut client, post).await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{}", post.text());

    let heads = heads.lock().unwrap().clone();
    assert_eq!(
        heads,
        [
            (1, "GET /first HTTP/1.1".to_owned()),
            (1, "GET /second HTTP/1.1 (unanswered)".to_owned()),
            (2, "GET /second HTTP/1.1".to_owned()),
            (2, "POST /post HTTP/1.1 (unanswered)".to_owned()),
        ]
    );
}

/// Sends `request`, shuts the write side (as `nc -N` does), and reads until
/// the proxy closes (or 10 s pass).
async fn half_closed_exchange(proxy: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that half-closes after its request still gets the response,
/// and every request that reached the origin has its audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_requests_get_their_response_and_a_record() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    let hello = origin.url("/hello");
    let upload = origin.url("/upload");
    let requests = [
        format!("GET {hello} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("POST {upload} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"),
        format!("GET {hello} HTTP/1.0\r\n\r\n"),
        format!("POST {upload} HTTP/1.0\r\nContent-Length: 3\r\n\r\nxyz"),
    ];
    for request in &requests {
        let out = half_closed_exchange(&proxy.addr, request.as_bytes()).await;
        // A 1.0 client is answered in 1.0.
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
            "{request:?} → {out:?}"
        );
        let want = if request.starts_with("GET") {
            "hello from origin"
        } else if request.contains("abcde") {
            "len=5 "
        } else {
            "len=3 "
        };
        assert!(out.contains(want), "{request:?} → {out:?}");
    }
    assert_eq!(origin.seen().len(), requests.len());
    let records = eventually(|| {
        let l = audit_lines(&audit);
        (l.len() >= requests.len()).then_some(l)
    })
    .await;
    let methods: Vec<(&str, u64)> = records
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        methods,
        [("GET", 200), ("POST", 200), ("GET", 200), ("POST", 200)],
        "{records:#?}"
    );
}
