//! Chaining to an upstream proxy: a real tinyproxy requiring BasicAuth, and
//! a recording fake upstream for what exactly goes on the wire.

mod support;

use std::sync::atomic::Ordering;

use base64::Engine;
use http::{Request, StatusCode};
use support::tls::{fetch_over, make_ca, split, start_server};
use support::*;

const USER: &str = "airlock";
const PASSWORD: &str = "Upstr3am-s3cret";

fn basic_token(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Nothing that identifies the upstream credentials may show up in `text`.
fn assert_no_credentials(what: &str, text: &str) {
    for needle in [PASSWORD.to_owned(), basic_token(USER, PASSWORD)] {
        assert!(
            !text.contains(&needle),
            "{what} contains the upstream credentials:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gives_407_with_a_clear_body() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let origin = Origin::start().await;
    let upstream = tp.url(Some(&format!("{USER}:Bad-Pa55word")));
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--upstream-http",
        &upstream,
        "--upstream-https",
        &upstream,
    ]);

    let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    let text = reply.text();
    let named = format!("http://127.0.0.1:{}", tp.port);
    assert!(
        text.contains(&format!(
            "the upstream proxy {named} rejected airlock-proxy's credentials"
        )),
        "{text}"
    );
    assert!(!text.contains("Bad-Pa55word"), "{text}");
    assert!(
        reply.headers.get("proxy-authenticate").is_none(),
        "upstream challenge passed on"
    );

    // The same for a tunnel.
    let (_s, head) =
        connect_tunnel(&proxy.addr, &format!("localhost:{}", origin.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("proxy-authenticate"),
        "{head}"
    );
    assert!(origin.seen().is_empty(), "a request reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_own_401_through_the_upstream_is_passed_on() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let origin = Origin::start().await;
    let upstream = tp.url(Some(&format!("{USER}:{PASSWORD}")));
    let proxy = Proxy::start(&["--ignore-proxy-env", "--upstream-http", &upstream]);
    let reply = proxy_get(&proxy.addr, &origin.url("/auth")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert_eq!(reply.text(), "origin wants a login");
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"origin\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_gives_407_saying_none_are_configured() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let proxy = Proxy::start(&["--ignore-proxy-env", "--upstream-http", &tp.url(None)]);
    let reply = proxy_get(&proxy.addr, "http://127.0.0.1:9/").await;
    assert_eq!(reply.status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert!(
        reply.text().contains("has no credentials for it"),
        "{}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_work_and_never_reach_origin_or_client() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let origin = Origin::start().await;
    let upstream = tp.url(Some(&format!("{USER}:{PASSWORD}")));
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--upstream-http",
        &upstream,
        "--log-level",
        "trace",
    ]);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::get(origin.url("/hello"))
        .header(
            "proxy-authorization",
            format!("Basic {}", basic_token("guest", "guestpw")),
        )
        .body(empty())
        .unwrap();
    let reply = send(&mut client, req).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}\ntinyproxy:\n{}",
        reply.text(),
        tp.log()
    );
    assert_eq!(reply.text(), "hello from origin");
    // A second request on the same client connection also goes through.
    let reply = send(&mut client, get(&origin.url("/download/5000"))).await;
    assert_eq!(
        (reply.status, reply.body.len()),
        (StatusCode::OK, 5000),
        "{}\nairlock-proxy:\n{}\ntinyproxy:\n{}",
        reply.text(),
        proxy.stderr(),
        tp.log()
    );
    assert_no_credentials(
        "the response headers",
        &format!("{:?}", header_map_text(&reply.headers)),
    );

    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        // It really came through tinyproxy (its Via), after airlock-proxy.
        let via = s.header("via").unwrap_or_default();
        assert!(
            via.contains("airlock-proxy") && via.contains("tinyproxy"),
            "via: {via}"
        );
        assert_eq!(s.header("proxy-authorization"), None);
        assert_no_credentials("the origin's request", &s.all_headers_text());
        assert!(!s
            .all_headers_text()
            .contains(&basic_token("guest", "guestpw")));
    }
    assert_no_credentials("airlock-proxy's log (trace level)", &proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_file_works_for_requests_and_tls_tunnels() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let origin = Origin::start().await;
    let ca = make_ca();
    let (tls_server, _task) = start_server(&ca, 100_000).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path(), &format!("{USER}:{PASSWORD}\n"), 0o600);
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--upstream-http",
        &tp.url(None),
        "--upstream-https",
        &tp.url(Some("someone:overridden-by-the-file")),
        "--upstream-credentials-file",
        creds.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}\n{}",
        reply.text(),
        tp.log()
    );

    let (stream, head) =
        connect_tunnel(&proxy.addr, &format!("localhost:{}", tls_server.port())).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{head}\ntinyproxy:\n{}",
        tp.log()
    );
    let raw = fetch_over(stream, &ca).await;
    let (resp_head, body) = split(&raw);
    assert!(resp_head.starts_with("HTTP/1.1 200"), "{resp_head}");
    assert_eq!(body.len(), 100_000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
    assert!(
        tp.log().contains("CONNECT localhost:"),
        "tunnel did not go through tinyproxy:\n{}",
        tp.log()
    );
    assert_no_credentials("airlock-proxy's log", &proxy.stderr());
    assert!(!proxy.stderr().contains("overridden-by-the-file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_selects_the_upstream() {
    let tp = Tinyproxy::start(USER, PASSWORD);
    let origin = Origin::start().await;
    let with_creds = tp.url(Some(&format!("{USER}:{PASSWORD}")));
    // Upper-case HTTP_PROXY is ignored (httpoxy); ALL_PROXY is the fallback.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let proxy = Proxy::start_env(&[], &[("HTTP_PROXY", &dead), ("ALL_PROXY", &with_creds)]);
    let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let via = origin.seen()[0]
        .header("via")
        .unwrap_or_default()
        .to_owned();
    assert!(via.contains("tinyproxy"), "not through ALL_PROXY: {via}");
    assert!(
        proxy.stderr().contains("$HTTP_PROXY"),
        "no warning about HTTP_PROXY:\n{}",
        proxy.stderr()
    );
    assert!(
        proxy.stderr().contains("upstream proxy http://127.0.0.1:"),
        "{}",
        proxy.stderr()
    );
    assert_no_credentials("airlock-proxy's log", &proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_upstream_receives() {
    let fake = FakeUpstream::start().await;
    let upstream = format!("http://{USER}:{PASSWORD}@{}", fake.addr);
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--upstream-http",
        &upstream,
        "--upstream-https",
        &upstream,
    ]);
    let mut client = connect_client(&proxy.addr).await;
    let req = Request::get("http://origin.invalid:8080/p?q=1")
        .header(
            "proxy-authorization",
            format!("Basic {}", basic_token("guest", "guestpw")),
        )
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .body(empty())
        .unwrap();
    let reply = send(&mut client, req).await;
    assert_eq!(reply.text(), "fake upstream");
    let (mut s, head) = connect_tunnel(&proxy.addr, "tunnel.invalid:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");

    let heads = fake.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let ours = format!("proxy-authorization: Basic {}", basic_token(USER, PASSWORD));
    let get = heads[0].to_ascii_lowercase();
    assert!(
        heads[0].starts_with("GET http://origin.invalid:8080/p?q=1 HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(get.contains(&ours.to_ascii_lowercase()), "{}", heads[0]);
    assert_eq!(
        get.matches("proxy-authorization").count(),
        1,
        "{}",
        heads[0]
    );
    assert!(
        !heads[0].contains(&basic_token("guest", "guestpw")),
        "guest credentials forwarded"
    );
    assert!(!get.contains("x-hop"), "{}", heads[0]);
    assert!(get.contains("via: 1.1 airlock-proxy"), "{}", heads[0]);
    assert!(
        heads[1].starts_with("CONNECT tunnel.invalid:443 HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains(&ours.to_ascii_lowercase()),
        "{}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_bypasses_the_upstream() {
    let fake = FakeUpstream::start().await;
    let origin = Origin::start().await;
    let ca = make_ca();
    let (tls_server, _task) = start_server(&ca, 1000).await;
    let upstream = format!("http://{}", fake.addr);
    // From the environment: curl-style entries, IP and name.
    let proxy = Proxy::start_env(
        &[],
        &[
            ("http_proxy", &upstream),
            ("https_proxy", &upstream),
            ("NO_PROXY", "example.invalid, 127.0.0.0/8,.localhost"),
        ],
    );
    let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(reply.text(), "hello from origin");
    let (stream, head) =
        connect_tunnel(&proxy.addr, &format!("localhost:{}", tls_server.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let raw = fetch_over(stream, &ca).await;
    assert!(split(&raw).0.starts_with("HTTP/1.1 200"));
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        0,
        "the upstream saw: {:?}",
        fake.heads()
    );
    // A host not in the list does go to the upstream.
    let reply = proxy_get(&proxy.addr, "http://elsewhere.invalid/").await;
    assert_eq!(reply.text(), "fake upstream");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
    drop(proxy);

    // --no-proxy overrides the environment.
    let proxy = Proxy::start_env(
        &["--no-proxy", "127.0.0.1"],
        &[("http_proxy", &upstream), ("no_proxy", "*")],
    );
    let reply = proxy_get(&proxy.addr, &origin.url("/hello")).await;
    assert_eq!(reply.text(), "hello from origin");
    let reply = proxy_get(&proxy.addr, "http://elsewhere.invalid/").await;
    assert_eq!(reply.text(), "fake upstream");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
}
