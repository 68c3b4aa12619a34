//! Malformed input, size limits, the connection limit and the idle timeout.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET http://x/ HTTP/9.9\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nbad header line\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let out = raw_exchange(&proxy.addr, garbage).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{garbage:?} → {out:?}");
        let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
        assert_eq!(reply.status, StatusCode::OK, "after {garbage:?}");
    }
    let lines = eventually(|| {
        let l = audit_lines(&audit);
        (l.len() >= 8).then_some(l)
    })
    .await;
    let rejected: Vec<_> = lines.iter().filter(|l| l["status"] == 400).collect();
    assert_eq!(rejected.len(), 4, "{lines:#?}");
    assert!(rejected.iter().all(|l| l["error"]
        .as_str()
        .unwrap()
        .starts_with("malformed request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env", "--max-header-bytes", "16384"]);
    let big = "a".repeat(20_000);
    let out = raw_exchange(
        &proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n",
            origin.url("/hello")
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    // Headers under the limit pass.
    let ok = "a".repeat(10_000);
    let out = raw_exchange(
        &proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n",
            origin.url("/hello")
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert_eq!(origin.seen()[0].header("x-big").map(str::len), Some(10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--max-connections",
        "2",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let mut first = connect_client(&proxy.addr).await;
    let mut second = connect_client(&proxy.addr).await;
    assert_eq!(
        send(&mut first, get(&origin.url("/hello"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&mut second, get(&origin.url("/hello"))).await.status,
        StatusCode::OK
    );
    let out = raw_exchange(
        &proxy.addr,
        format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/hello")).as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    assert!(out.contains("--max-connections 2"), "{out:?}");
    // A slot frees up when a connection closes.
    drop(first);
    let reply = eventually_async_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(reply, StatusCode::OK);
    eventually(|| {
        proxy
            .stderr()
            .contains("--max-connections 2 reached")
            .then_some(())
    })
    .await;
    // The refusal is in the audit log.
    let refused = eventually(|| audit_lines(&audit).into_iter().find(|r| r["status"] == 503)).await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("--max-connections 2 reached"),
        "{refused}"
    );
    assert!(refused["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

/// Retries a GET until it succeeds (slots are released asynchronously).
async fn eventually_async_get(proxy: &str, url: &str) -> StatusCode {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = raw_exchange(
            proxy,
            format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        if out.starts_with("HTTP/1.1 200") {
            return StatusCode::OK;
        }
        assert!(Instant::now() < deadline, "no slot freed: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env", "--idle-timeout", "1s"]);
    let mut s = TcpStream::connect(&proxy.addr).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/hello")).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 17];
    s.read_exact(&mut body).await.unwrap();
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("idle connection closed by the proxy")
        .unwrap();
    assert!(rest.is_empty());
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle_since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_hit_the_timeout() {
    let proxy = Proxy::start(&["--ignore-proxy-env", "--idle-timeout", "1s"]);
    let mut s = TcpStream::connect(&proxy.addr).await.unwrap();
    let started = Instant::now();
    // A byte every 400 ms keeps the connection busy but never finishes the
    // head; the header timeout must still end it.
    let mut closed = false;
    for b in b"GET http://x/ HTTP/1.1\r\nHost: x\r\n".iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(400), s.read(&mut probe)).await
        {
            if n == 0 || probe.starts_with(b"HTTP/1.1 408") {
                closed = true;
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(closed, "a trickled request head was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A request head that never completes gets 408 and an audit record when
/// the header time (--idle-timeout) runs out; an idle connection between
/// requests is just closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_request_head_gets_408_and_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--idle-timeout",
        "1s",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let out = raw_exchange(
        &proxy.addr,
        b"GET http://example.invalid/ HTTP/1.1\r\nHost: ex",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout"), "{out:?}");
    assert!(
        out.contains("not complete within --idle-timeout 1s"),
        "{out:?}"
    );
    let out = raw_exchange(&proxy.addr, b"").await;
    assert_eq!(out, "", "an idle connection is closed without a word");
    let records = eventually(|| {
        let l = audit_lines(&audit);
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], 408);
    assert!(records[0]["error"]
        .as_str()
        .unwrap()
        .contains("request head was not complete"));
}

/// More than 100 header fields get 431 even when small; the log and the
/// audit record say which limits apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431_naming_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    let mut request = String::from("GET http://example.invalid/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..101 {
        request.push_str(&format!("X-{i}: y\r\n"));
    }
    request.push_str("\r\n");
    assert!(request.len() < 1500);
    let out = raw_exchange(&proxy.addr, request.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let record = eventually(|| audit_lines(&audit).into_iter().next()).await;
    assert_eq!(record["status"], 431);
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("over --max-header-bytes 65536 bytes, or over 100 header fields"),
        "{error}"
    );
    eventually(|| {
        proxy
            .stderr()
            .contains("over 100 header fields")
            .then_some(())
    })
    .await;
}

/// Request bodies that fail on the client's side are the client's error:
/// a malformed chunked body gets 400, and an upload the client abandons is
/// recorded as such (not as 502, which blames the origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_body_errors_are_400_not_502() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    let upload = origin.url("/upload");
    let out = raw_exchange(
        &proxy.addr,
        format!(
            "POST {upload} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nabcde\r\nZZ\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(
        out.contains("the request body from the client is malformed"),
        "{out:?}"
    );
    // An upload cut off by the client: 10 of 1000 bytes, then gone.
    {
        let mut s = TcpStream::connect(&proxy.addr).await.unwrap();
        s.write_all(
            format!("POST {upload} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
                .as_bytes(),
        )
        .await
        .unwrap();
        // The origin has the request once the head went through.
        eventually(|| (origin.seen().len() == 2).then_some(())).await;
    }
    let records = eventually(|| {
        let l = audit_lines(&audit);
        (l.len() >= 2).then_some(l)
    })
    .await;
    assert_eq!(records[0]["status"], 400, "{records:#?}");
    let aborted = &records[1];
    assert_eq!(aborted["status"], 400, "{aborted}");
    assert!(
        aborted["error"]
            .as_str()
            .unwrap()
            .contains("closed the connection before its request body was complete"),
        "{aborted}"
    );
}

/// A transfer coding besides chunked is on the body bytes: forwarding the
/// body without it would corrupt it, so the request is refused (501).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_are_refused() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let out = raw_exchange(
        &proxy.addr,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n",
            origin.url("/upload")
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 501"), "{out:?}");
    assert!(
        out.contains("transfer coding gzip is not supported"),
        "{out:?}"
    );
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_out_of_range_is_named() {
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let (_s, head) = connect_tunnel(&proxy.addr, "example.invalid:99999").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let out = raw_exchange(
        &proxy.addr,
        b"GET http://example.invalid:99999/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.contains("port \"99999\" in \"example.invalid:99999\" is not a port number"),
        "{out}"
    );
}

/// An origin's transfer coding besides chunked stays announced: the body
/// bytes still carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_transfer_codings_are_kept() {
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/coded", origin.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = origin.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap() == 1 {
            head.push(byte[0]);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    });
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let out = raw_exchange(
        &proxy.addr,
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    task.await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(
        out.to_ascii_lowercase()
            .contains("transfer-encoding: gzip, chunked\r\n"),
        "{out:?}"
    );
    assert!(out.ends_with("3\r\nabc\r\n0\r\n\r\n"), "{out:?}");
}
