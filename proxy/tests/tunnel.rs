//! CONNECT tunnels through the real binary.

mod support;

use std::time::{Duration, Instant};

use support::tls::{fetch_over, make_ca, split, start_server};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_carries_tls_to_a_server_with_a_test_ca() {
    const LEN: u64 = 3 * 1024 * 1024 + 7;
    let ca = make_ca();
    let (server, _task) = start_server(&ca, LEN).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&["--ignore-proxy-env", "--audit-log", audit.to_str().unwrap()]);
    let (stream, head) = connect_tunnel(&proxy.addr, &format!("localhost:{}", server.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let raw = fetch_over(stream, &ca).await;
    let (resp_head, body) = split(&raw);
    assert!(resp_head.starts_with("HTTP/1.1 200 OK"), "{resp_head}");
    assert_eq!(body.len() as u64, LEN);
    let mut h = Fnv::new();
    h.update(body);
    assert_eq!(h.finish(), pattern_fnv(LEN));

    // The tunnel's audit line comes when it closes, with the byte counts.
    let lines = eventually(|| {
        let l = audit_lines(&audit);
        (!l.is_empty()).then_some(l)
    })
    .await;
    let l = &lines[0];
    assert_eq!(l["method"], "CONNECT");
    assert_eq!(l["host"], "localhost");
    assert_eq!(l["port"], server.port());
    assert_eq!(l["status"], 200);
    assert!(l["bytes_down"].as_u64().unwrap() > LEN, "{l}");
    assert!(l["bytes_up"].as_u64().unwrap() > 100, "{l}");
    assert_eq!(l["policy"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_bytes_flow_both_ways_and_half_close_propagates() {
    // An echo server: what the client sends through the tunnel comes back.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let (mut s, head) = connect_tunnel(&proxy.addr, &addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let data: Vec<u8> = (0..1_000_000u64).map(pattern_byte).collect();
    let (mut r, mut w) = s.split();
    let writer = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let reader = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(writer, reader);
    n.unwrap();
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_refused_port_gives_502() {
    let port = free_port();
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let out = raw_exchange(
        &proxy.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.contains("Connection refused"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_port_gives_400() {
    let proxy = Proxy::start(&["--ignore-proxy-env"]);
    let out = raw_exchange(
        &proxy.addr,
        b"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

/// A listener whose accept queue is full: connecting to it hangs (SYNs are
/// dropped), which is how a connect timeout is provoked on loopback.
fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, u16) {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket we own; shrinking the backlog to 0.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return (listener, held, addr.port()),
        }
    }
    panic!("could not fill the accept queue of a backlog-0 listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_504_for_tunnels_and_requests() {
    let (_listener, _held, port) = black_hole();
    let proxy = Proxy::start(&["--ignore-proxy-env", "--connect-timeout", "700ms"]);
    let started = Instant::now();
    let out = raw_exchange(
        &proxy.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(
        out.contains(&format!(
            "timed out after 0.7s connecting to 127.0.0.1:{port}"
        )),
        "{out}"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
    let reply = proxy_get(&proxy.addr, &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(
        reply.status,
        http::StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("timed out"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        // Ends when the proxy closes the tunnel.
        let _ = s.read_to_end(&mut buf).await;
        Instant::now()
    });
    let proxy = Proxy::start(&["--ignore-proxy-env", "--idle-timeout", "1s"]);
    let (mut s, head) = connect_tunnel(&proxy.addr, &addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the proxy closes an idle tunnel")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    let server_saw_close = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(server_saw_close.is_ok(), "server side not closed");
}

/// Reads one response with a content-length body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> (String, String) {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body))
        .await
        .expect("a body within 10 s")
        .unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// CONNECT (or a plain request) to the proxy's own address would come back
/// in as a new client, and a client asking again inside each tunnel held
/// every --max-connections slot: such targets get 508, in every spelling,
/// and the client holds its one slot only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_the_proxy_itself_is_refused_and_takes_no_slot() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--listen",
        "0.0.0.0:0",
        "--max-connections",
        "2",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let port = proxy.socket_addr().port();
    let own = format!("127.0.0.1:{port}");
    // One client connection asks for the proxy itself, again and again.
    let mut s = tokio::net::TcpStream::connect(&own).await.unwrap();
    let targets = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("localhost:{port}"),
    ];
    for target in &targets {
        for request in [
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
            format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        ] {
            s.write_all(request.as_bytes()).await.unwrap();
            let (head, body) = read_response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 508"), "{request}: {head}");
            assert!(body.contains("is airlock-proxy itself"), "{body}");
        }
    }
    // The second slot is there for another client; a third is over the
    // limit (the first still holds its one slot).
    let mut second = connect_client(&own).await;
    let reply = send(&mut second, get(&origin.url("/hello"))).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
    let out = raw_exchange(&own, b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    let refused = eventually(|| {
        let l = audit_lines(&audit);
        let r: Vec<_> = l.into_iter().filter(|r| r["status"] == 508).collect();
        (r.len() >= 2 * targets.len()).then_some(r)
    })
    .await;
    assert!(
        refused.iter().all(|r| r["error"]
            .as_str()
            .unwrap()
            .contains("is airlock-proxy itself")),
        "{refused:#?}"
    );
}
