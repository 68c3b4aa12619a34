//! The `proxy_request` fuzz target's body (`fuzz/fuzz_targets/` holds a
//! one-line wrapper; `fuzzing/tests/` replays the kept inputs on
//! stable). Not part of the proxy's interface.
//!
//! With the first input byte even, the rest is what a guest sends on one
//! client connection: it goes through the proxy's own connection handler
//! (hyper's HTTP/1.1 parser, then `handle`: loop detection, request
//! target, policy, upstream selection, hop-by-hop headers, credentials,
//! forwarding or a CONNECT tunnel), exactly as an accepted connection
//! would, over an in-memory stream. Nothing is dialled but a fake upstream
//! proxy on 127.0.0.1 run by this process: both upstreams point at it and
//! there is no bypass list, so no request ever goes direct. The fake
//! upstream answers each request in one of several ways chosen by the
//! request (200, 407, a 401 without `Via`, the credentials echoed in a
//! header, chunked with trailers, 101, HTTP/1.0 until close, nothing).
//!
//! The check: the upstream credentials never reach the guest (unless the
//! guest sent them itself), and the connection ends within
//! [`EXCHANGE_LIMIT`].
//!
//! With the first byte odd, the rest is a `NO_PROXY`-style pattern list and
//! a host, for the matcher the policy and the bypass list share
//! ([`PatternList`]) and for request-target parsing ([`Target`]); a host
//! kept as a name must not be one the resolver reads as an IPv4 address.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use airlock_common::audit::AuditLog;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use airlock_proxy::client::Shared;
use airlock_proxy::config::Limits;
use airlock_proxy::credentials::Credentials;
use airlock_proxy::noproxy::{Host, PatternList};
use airlock_proxy::policy::{Action, Policy};
use airlock_proxy::server::serve_connection;
use airlock_proxy::target::Target;
use airlock_proxy::upstream::{UpstreamArgs, Upstreams};

/// How long one connection may take, end to end.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);
/// How long nothing may move before the client takes the proxy to be idle.
const QUIET: Duration = Duration::from_millis(1);
const UPSTREAM_USER: &str = "airlock-fuzz-upstream-user";
const UPSTREAM_PASSWORD: &str = "Xq7-upstream-secret-never-shown-9Zk";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    /// The base64 part of the upstream's `Proxy-Authorization`.
    token: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start a tokio runtime");
        let port = start_upstream(&runtime).expect("cannot start the fake upstream proxy");
        let url = format!("http://127.0.0.1:{port}");
        let args = UpstreamArgs {
            http: Some(url.clone()),
            https: Some(url),
            no_proxy: None,
            ignore_env: true,
            credentials: Some(Credentials::new(
                UPSTREAM_USER.into(),
                UPSTREAM_PASSWORD.into(),
            )),
        };
        let upstreams = Upstreams::resolve(&args, |_| None).expect("the fuzz upstream is valid");
        let policy = Policy::new(&[(
            Action::Deny,
            "blocked.example,.denied.example,10.0.0.0/8,fd00::/8".to_owned(),
        )])
        .expect("the fuzz policy is valid");
        let limits = Limits {
            max_connections: 16,
            idle_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_header_bytes: 16 * 1024,
        };
        let audit = AuditLog::open(Path::new("/dev/null")).ok().map(Arc::new);
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{UPSTREAM_USER}:{UPSTREAM_PASSWORD}"))
            .into_bytes();
        Fixture {
            runtime,
            shared: Arc::new(Shared::new(upstreams, policy, audit, limits)),
            token,
        }
    })
}

pub fn fuzz_proxy_request(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => connection(rest),
        Some((_, rest)) => patterns(rest),
        None => {}
    }
}

fn connection(request: &[u8]) {
    run_connection(request);
}

/// Serves `request` on one connection and checks the outcome; returns what
/// the guest received (for the harness's own tests).
pub fn run_connection(request: &[u8]) -> Vec<u8> {
    let f = fixture();
    let output = f.runtime.block_on(async {
        match tokio::time::timeout(EXCHANGE_LIMIT, exchange(f.shared.clone(), request)).await {
            Ok(out) => out,
            Err(_) => panic!("the proxy did not finish a connection within {EXCHANGE_LIMIT:?}"),
        }
    });
    if !contains(request, &f.token) {
        assert!(
            !contains(&output, &f.token),
            "the upstream credentials reached the guest"
        );
    }
    output
}

/// Writes `request` on one client connection and returns everything the
/// proxy sent until it closed. The client keeps its write side open until
/// nothing has moved for [`QUIET`] twice in a row (everything runs on this
/// one thread, the fake upstream included, so that means the proxy is
/// waiting for the client), then closes it: hyper drops the answers still
/// due on a connection whose client half-closed, as it should.
async fn exchange(shared: Arc<Shared>, request: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let Ok(slot) = Arc::new(Semaphore::new(1)).try_acquire_owned() else {
        unreachable!("a fresh semaphore has a permit");
    };
    let served = tokio::spawn(serve_connection(server, Arc::from("fuzz"), shared, slot));
    let (mut rd, mut wr) = tokio::io::split(client);
    let moved = AtomicU64::new(0);
    let write = async {
        // The proxy may stop reading (an error answer closes): fine.
        let _ = wr.write_all(request).await;
        let mut quiet = 0;
        while quiet < 2 {
            let before = moved.load(Ordering::Relaxed) + UPSTREAM_MOVED.load(Ordering::Relaxed);
            tokio::time::sleep(QUIET).await;
            // Let whatever the same wake-up made ready run first.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let after = moved.load(Ordering::Relaxed) + UPSTREAM_MOVED.load(Ordering::Relaxed);
            quiet = if after == before { quiet + 1 } else { 0 };
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        out
    };
    let ((), out) = tokio::join!(write, read);
    if let Err(e) = served.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    out
}

fn patterns(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (list, host) = text.split_once('\n').unwrap_or((&text, ""));
    let list = PatternList::parse(list);
    let _ = (list.inert(), list.ignored_tail(), list.matches_all());
    if let Ok(parsed) = Host::parse(host) {
        let _ = list.matches(&parsed);
        let _ = parsed.to_string();
        check_numeric_spelling(&parsed);
    }
    if let Ok(authority) = http::uri::Authority::try_from(host) {
        for default_port in [Some(80), None] {
            if let Ok(target) = Target::from_authority(&authority, default_port) {
                let _ = (target.host_header(80), target.connect_host(), target.ip());
                let _ = list.matches(&target.host);
            }
        }
    }
}

extern "C" {
    /// The C library's numeric IPv4 parser (what `getaddrinfo` uses for
    /// numeric hosts); the `libc` crate does not declare it.
    fn inet_aton(cp: *const libc::c_char, inp: *mut libc::in_addr) -> libc::c_int;
}

/// A host kept as a name must not be one the resolver reads as an IPv4
/// address (`127.1`, `0x7f.0.0.1`, `2130706433`, …): address rules would
/// not see it, and a policy on `127.0.0.0/8` could be side-stepped.
fn check_numeric_spelling(host: &Host) {
    let Host::Name(name) = host else {
        return;
    };
    let Ok(c) = std::ffi::CString::new(name.as_str()) else {
        return;
    };
    let mut addr = libc::in_addr { s_addr: 0 };
    // SAFETY: `c` is a NUL-terminated string and `addr` a valid in_addr,
    // both alive across the call; inet_aton only reads the one and writes
    // the other.
    let numeric = unsafe { inet_aton(c.as_ptr(), &mut addr) } != 0;
    assert!(
        !numeric,
        "{name:?} is kept as a name, but the resolver reads it as {}",
        Ipv4Addr::from(u32::from_be(addr.s_addr))
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- the fake upstream proxy ---------------------------------------------------

/// Bytes the fake upstream has read or written (progress, for
/// [`exchange`]'s idea of "quiet").
static UPSTREAM_MOVED: AtomicU64 = AtomicU64::new(0);

/// Starts the fake upstream on 127.0.0.1, as a task of `runtime` (it runs
/// while an exchange runs); returns its port.
fn start_upstream(runtime: &tokio::runtime::Runtime) -> std::io::Result<u16> {
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = std_listener.local_addr()?.port();
    std_listener.set_nonblocking(true)?;
    let listener = {
        let _enter = runtime.enter();
        TcpListener::from_std(std_listener)?
    };
    runtime.spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(upstream_connection(stream));
            }
        }
    });
    Ok(port)
}

/// Serves requests on one connection until it closes or an answer ends it.
async fn upstream_connection(stream: TcpStream) {
    let (rd, mut writer) = stream.into_split();
    let mut reader = BufReader::new(rd);
    loop {
        let mut head = Vec::new();
        let mut auth = String::new();
        let mut content_length = 0u64;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(n) => UPSTREAM_MOVED.fetch_add(n as u64, Ordering::Relaxed),
            };
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if lower.starts_with("proxy-authorization:") {
                auth = line["proxy-authorization:".len()..].trim().to_owned();
            }
            head.extend_from_slice(line.as_bytes());
            if line == "\r\n" || line == "\n" || head.len() > 64 * 1024 {
                break;
            }
        }
        let connect = head.starts_with(b"CONNECT ");
        if !connect && !skip_body(&mut reader, content_length, chunked).await {
            return;
        }
        let choice = head.len() % 8;
        if connect {
            if choice < 4 {
                let _ = writer
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = reader.read(&mut buf).await {
                    UPSTREAM_MOVED.fetch_add(n as u64 + 1, Ordering::Relaxed);
                    if n == 0 || writer.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            } else {
                let _ = writer
                    .write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                    )
                    .await;
            }
            return;
        }
        let response = match choice {
            0 => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned(),
            1 => "HTTP/1.1 407 Proxy Authentication Required\r\n\
                  proxy-authenticate: Basic realm=\"up\"\r\ncontent-length: 0\r\n\r\n"
                .to_owned(),
            2 => "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_owned(),
            3 => format!(
                "HTTP/1.1 200 OK\r\nvia: 1.1 up\r\nx-echo: {auth}\r\n\
                 set-cookie: t={auth}\r\ncontent-length: 0\r\n\r\n"
            ),
            4 => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n\
                  3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"
                .to_owned(),
            5 => "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
                .to_owned(),
            6 => "HTTP/1.0 200 OK\r\nconnection: x-drop\r\nx-drop: 1\r\n\r\nuntil close".to_owned(),
            _ => return,
        };
        UPSTREAM_MOVED.fetch_add(response.len() as u64, Ordering::Relaxed);
        if writer.write_all(response.as_bytes()).await.is_err() || matches!(choice, 5 | 6) {
            return;
        }
    }
}

/// Reads a request body; false if the connection ended.
async fn skip_body(
    reader: &mut BufReader<OwnedReadHalf>,
    content_length: u64,
    chunked: bool,
) -> bool {
    if chunked {
        // Up to the last chunk and the blank line after it (approximately:
        // the proxy re-frames bodies, so its chunks are well-formed).
        let mut tail = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => UPSTREAM_MOVED.fetch_add(n as u64, Ordering::Relaxed),
            };
            tail.extend_from_slice(line.as_bytes());
            if tail.ends_with(b"\r\n0\r\n\r\n") || tail == b"0\r\n\r\n" {
                return true;
            }
            if tail.len() > 1 << 20 {
                return false;
            }
        }
    }
    let mut body = (&mut *reader).take(content_length);
    match tokio::io::copy(&mut body, &mut tokio::io::sink()).await {
        Ok(n) => {
            UPSTREAM_MOVED.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

/// Starting inputs in the target's encoding: requests a guest sends
/// (absolute-form GET, POST with a body, chunked, CONNECT, pipelined
/// keep-alive, a denied host, a proxy loop, malformed heads), and pattern
/// lists with hosts. `fuzzing/tests/` runs them and writes them to
/// `fuzz/seeds/proxy_request/` (`--ignored write_fuzz_seeds`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let connection = |text: &str| {
        let mut b = vec![0u8];
        b.extend_from_slice(text.as_bytes());
        b
    };
    let patterns = |text: &str| {
        let mut b = vec![1u8];
        b.extend_from_slice(text.as_bytes());
        b
    };
    vec![
        (
            "get",
            connection("GET http://example.com/index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"),
        ),
        (
            "post-keep-alive",
            connection(
                "POST http://api.example.com:8080/v1 HTTP/1.1\r\nHost: api.example.com:8080\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic Z3Vlc3Q6cHc=\r\n\r\nhello\
                 GET http://api.example.com:8080/v2 HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n\
                 GET http://other.example/ HTTP/1.1\r\n\r\n",
            ),
        ),
        (
            "chunked-expect",
            connection("PUT http://example.com/up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nTE: trailers\r\n\r\n4\r\nwiki\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        ),
        (
            "connect",
            connection("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00\x05hello"),
        ),
        (
            "connect-ipv6",
            connection("CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"),
        ),
        (
            "denied",
            connection("GET http://www.denied.example/ HTTP/1.1\r\n\r\nCONNECT 10.1.2.3:22 HTTP/1.1\r\n\r\nGET http://0x0a.1/ HTTP/1.1\r\n\r\n"),
        ),
        (
            "loop-and-errors",
            connection("GET http://example.com/ HTTP/1.1\r\nVia: 1.1 airlock-proxy\r\n\r\nGET /origin-form HTTP/1.1\r\n\r\nGET https://example.com/ HTTP/1.1\r\n\r\nCONNECT example.com HTTP/1.1\r\n\r\nGET http://exa mple.com/ HTTP/1.1\r\n\r\n"),
        ),
        (
            "http10",
            connection("GET http://example.com HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n"),
        ),
        ("patterns-names", patterns(".example.com, localhost,10.0.0.0/8\nwww.EXAMPLE.com.")),
        ("patterns-cidr", patterns("127.0.0.0/8,::1,fd00::/8\n0x7f.1")),
        ("patterns-star", patterns("*\n[::ffff:127.0.0.1]:80")),
    ]
}
