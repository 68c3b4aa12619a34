//! The control API of the real `airlock-net` binary (no guest attached):
//! every endpoint, the socket's life cycle, and hostile input — after which
//! the daemon must still be serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-net");
const EXPOSE: &str = "/services/forwarder/expose";
const UNEXPOSE: &str = "/services/forwarder/unexpose";
const ALL: &str = "/services/forwarder/all";
/// Longest a response may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// airlock-net with `--api-socket`, killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    api: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let api = dir.path().join("api.sock");
        Daemon::start_in(dir, api)
    }

    fn start_in(dir: tempfile::TempDir, api: PathBuf) -> Daemon {
        let child = spawn(dir.path(), &api);
        let d = Daemon { child, dir, api };
        d.wait_listening();
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.api).is_err() {
            assert!(
                Instant::now() < deadline,
                "no API socket after 10 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.api).unwrap();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s
    }

    /// One request on a fresh connection.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut s = self.connect();
        send(&mut s, method, path, body);
        read_reply(&mut s)
    }

    /// Raw bytes on a fresh connection; the reply, then whether the daemon
    /// closed the connection.
    fn raw(&self, bytes: &[u8]) -> (Reply, bool) {
        let mut s = self.connect();
        // The daemon may answer and close before reading everything.
        let _ = s.write_all(bytes);
        let reply = read_reply(&mut s);
        (reply, closed(&mut s))
    }

    fn assert_running(&mut self) {
        let exited = self.child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "airlock-net exited: {exited:?}\n{}",
            self.log()
        );
        let r = self.call("GET", "/stats", None);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, api: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.join("net.sock"))
        .arg("--api-socket")
        .arg(api)
        .arg("--audit-log")
        .arg(dir.join("audit.log"))
        .args(["--dns-upstream", "127.0.0.1", "--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` text of a 4xx/5xx JSON body.
    fn error(&self) -> String {
        assert!(self.status >= 400, "not an error: {self:?}");
        assert_eq!(self.header("Content-Type"), Some("application/json"));
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {self:?}"))
            .to_owned()
    }
}

fn send(s: &mut UnixStream, method: &str, path: &str, body: Option<&Value>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: airlock\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
}

/// Reads one response (framed by Content-Length).
fn read_reply(s: &mut UnixStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(n) = resp.parse(&buf).unwrap() {
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = resp.code.unwrap();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            while buf.len() < n + len {
                let got = s.read(&mut chunk).expect("reading the body");
                assert!(got > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..got]);
            }
            return Reply {
                status,
                headers,
                body: buf[n..n + len].to_vec(),
            };
        }
        let got = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("no response: {e}"));
        assert!(
            got > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Whether the daemon closed the connection (EOF or reset): it does so
/// right after its response, so a short wait tells.
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn forwarder_endpoints_publish_and_unpublish_real_ports() {
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.api).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "API socket mode");

    let r = d.call("GET", ALL, None);
    assert_eq!((r.status, r.json()), (200, json!([])));

    let port = free_tcp_port();
    let local = format!("127.0.0.1:{port}");
    let r = d.call(
        "POST",
        EXPOSE,
        Some(&json!({"local": local, "remote": "192.168.127.2:80", "protocol": "tcp"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"local": local, "remote": "192.168.127.2:80", "protocol": "tcp"})
    );
    // The port is really bound by the daemon now.
    let e = TcpListener::bind(("127.0.0.1", port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);

    // UDP, protocol given; and the default protocol with a host-less remote.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    drop(udp);
    let udp_local = format!("127.0.0.1:{udp_port}");
    let r = d.call(
        "POST",
        EXPOSE,
        Some(&json!({"local": udp_local, "remote": ":53", "protocol": "udp"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(UdpSocket::bind(("127.0.0.1", udp_port)).is_err());

    let r = d.call("GET", ALL, None);
    assert_eq!(r.status, 200);
    let mut want = vec![
        json!({"local": local, "remote": "192.168.127.2:80", "protocol": "tcp"}),
        json!({"local": udp_local, "remote": "192.168.127.2:53", "protocol": "udp"}),
    ];
    want.sort_by_key(|v| (v["local"].to_string(), v["protocol"].to_string()));
    assert_eq!(r.json(), Value::Array(want));

    // Twice: 409. A port someone else holds: 409 with the bind error.
    let r = d.call(
        "POST",
        EXPOSE,
        Some(&json!({"local": local, "remote": "192.168.127.2:81"})),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.error(), format!("{local}/tcp is already published"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let r = d.call(
        "POST",
        EXPOSE,
        Some(&json!({"local": taken_addr.to_string(), "remote": "192.168.127.2:80"})),
    );
    assert_eq!(r.status, 409);
    let e = r.error();
    assert!(
        e.starts_with(&format!(
            "cannot bind published port {taken_addr}/tcp: Address already in use"
        )),
        "{e}"
    );

    // Unexpose frees the port; a second time it is not published.
    let r = d.call(
        "POST",
        UNEXPOSE,
        Some(&json!({"local": local, "protocol": "tcp"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    TcpListener::bind(("127.0.0.1", port)).expect("unexposed port is free again");
    let r = d.call("POST", UNEXPOSE, Some(&json!({"local": local})));
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), format!("{local}/tcp is not published"));
    let r = d.call(
        "POST",
        UNEXPOSE,
        Some(&json!({"local": udp_local, "protocol": "udp"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(d.call("GET", ALL, None).json(), json!([]));

    // Every change is in the audit log.
    let audit = d.audit();
    let events: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap(),
                v["proto"].as_str().unwrap_or(""),
                v["host"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("publish", "tcp", local.as_str()),
            ("publish", "udp", udp_local.as_str()),
            ("unpublish", "tcp", local.as_str()),
            ("unpublish", "udp", udp_local.as_str()),
        ],
        "{audit:?}"
    );
    assert!(audit.iter().all(|v| v["time"].is_string()));
    assert_eq!(audit[0]["guest"], "192.168.127.2:80");
}

#[test]
fn stats_flows_leases_without_a_guest() {
    let d = Daemon::start();
    let r = d.call("GET", "/stats", None);
    assert_eq!(r.status, 200);
    let s = r.json();
    for key in ["guest_to_host", "host_to_guest"] {
        assert_eq!(s[key], json!({"frames": 0, "bytes": 0}), "{s}");
    }
    for proto in ["tcp", "udp", "icmp"] {
        assert_eq!(
            s["flows"][proto],
            json!({"opened": 0, "closed": 0, "refused": 0})
        );
    }
    assert!(s["drops"]
        .as_array()
        .unwrap()
        .contains(&json!(["policy", 0])));
    assert_eq!(d.call("GET", "/flows", None).json(), json!([]));
    assert_eq!(d.call("GET", "/leases", None).json(), json!([]));
    // HEAD: the same head, no body.
    let mut c = d.connect();
    c.write_all(b"HEAD /stats HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(!text.contains("Content-Length: 0\r\n"), "{text}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let d = Daemon::start();
    let mut s = d.connect();
    for path in ["/stats", "/flows", ALL, "/leases"] {
        send(&mut s, "GET", path, None);
        let r = read_reply(&mut s);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
    // Pipelined: both answers, in order, then the close asked for.
    s.write_all(b"GET /flows HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let first = text.find("HTTP/1.1 200 OK\r\n").expect(&text);
    let second = text.find("HTTP/1.1 404 Not Found\r\n").expect(&text);
    assert!(first < second, "{text}");
    assert!(
        text.ends_with("{\"error\":\"no such endpoint: /nope\"}\n"),
        "{text}"
    );
}

#[test]
fn hostile_requests_get_json_errors_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start();
    let expose = |body: &[u8]| {
        let mut req = format!(
            "POST {EXPOSE} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        req
    };
    let mut huge_head = b"GET /stats HTTP/1.1\r\nX-Filler: ".to_vec();
    huge_head.resize(40 * 1024, b'a');
    huge_head.extend_from_slice(b"\r\n\r\n");
    let mut many_headers = b"GET /stats HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        many_headers.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    let mut huge_body =
        format!("POST {EXPOSE} HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n").into_bytes();
    huge_body.resize(huge_body.len() + 100_000, b'{');
    let chunked = format!(
        "POST {EXPOSE} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let bad_length = format!("POST {EXPOSE} HTTP/1.1\r\nContent-Length: 12x\r\n\r\n");

    // (what, request, status, error text, whether the connection closes:
    // a bad head leaves the stream out of step; a bad body does not)
    let cases: Vec<(&str, Vec<u8>, u16, &str, bool)> = vec![
        (
            "TLS hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            "malformed request",
            true,
        ),
        ("zeros", vec![0u8; 5000], 400, "malformed request", true),
        (
            "no version",
            b"GET /stats\r\n\r\n".to_vec(),
            400,
            "malformed",
            true,
        ),
        (
            "absolute target",
            b"GET http://x/stats HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "must be a path",
            true,
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            400,
            "malformed",
            true,
        ),
        ("huge head", huge_head, 431, "larger than 16384", true),
        ("many headers", many_headers, 431, "header fields", true),
        ("chunked", chunked.into_bytes(), 411, "Content-Length", true),
        ("huge body", huge_body, 413, "larger than 65536", true),
        (
            "bad length",
            bad_length.into_bytes(),
            400,
            "Content-Length",
            true,
        ),
        (
            "bad JSON",
            expose(b"{\"local\": "),
            400,
            "invalid request body",
            false,
        ),
        (
            "not an object",
            expose(b"[1,2,3]"),
            400,
            "invalid request body",
            false,
        ),
        (
            "wrong type",
            expose(br#"{"local": 8080, "remote": "192.168.127.2:80"}"#),
            400,
            "invalid type",
            false,
        ),
        (
            "wrong protocol type",
            expose(br#"{"local": "127.0.0.1:1", "remote": ":80", "protocol": 6}"#),
            400,
            "invalid type",
            false,
        ),
        (
            "unknown field",
            expose(br#"{"local": "127.0.0.1:1", "remote": ":80", "proto": "udp"}"#),
            400,
            "unknown field `proto`",
            false,
        ),
        (
            "missing field",
            expose(br#"{"local": "127.0.0.1:1"}"#),
            400,
            "missing field `remote`",
            false,
        ),
        (
            "bad port",
            expose(br#"{"local": "127.0.0.1:99999", "remote": ":80"}"#),
            400,
            "invalid local",
            false,
        ),
        (
            "outside the subnet",
            expose(br#"{"local": "127.0.0.1:1", "remote": "8.8.8.8:53"}"#),
            400,
            "not a guest address",
            false,
        ),
        (
            "unsupported protocol",
            expose(br#"{"local": "127.0.0.1:1", "remote": ":80", "protocol": "unix"}"#),
            400,
            "unsupported protocol",
            false,
        ),
        (
            "invalid UTF-8",
            expose(b"{\"local\": \"\xff\xfe\", \"remote\": \":80\"}"),
            400,
            "invalid request body",
            false,
        ),
        (
            "unknown path",
            b"GET /services/forwarder/nope HTTP/1.1\r\n\r\n".to_vec(),
            404,
            "no such endpoint",
            false,
        ),
        (
            "wrong method",
            b"DELETE /services/forwarder/all HTTP/1.1\r\n\r\n".to_vec(),
            405,
            "takes GET, HEAD",
            false,
        ),
    ];
    for (what, bytes, status, needle, closes) in cases {
        let (r, closed) = d.raw(&bytes);
        assert_eq!(r.status, status, "{what}: {r:?}");
        let e = r.error();
        assert!(e.contains(needle), "{what}: {e:?} lacks {needle:?}");
        assert_eq!(closed, closes, "{what}: connection closed?");
    }
    let (r, _) = d.raw(b"POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    let (r, _) = d.raw(b"GET /services/forwarder/expose HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));

    // A client that sends half a request and hangs up, and one that hangs
    // up at once.
    for bytes in [
        &b"POST /services/forwarder/expose HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"[..],
        b"",
    ] {
        let mut s = d.connect();
        s.write_all(bytes).unwrap();
        drop(s);
    }
    // Nothing was published by any of it.
    assert_eq!(d.call("GET", ALL, None).json(), json!([]));
    d.assert_running();
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

#[test]
fn connections_past_the_limit_get_503() {
    let mut d = Daemon::start();
    // Sixteen kept-alive connections hold every slot (until the 10 s idle
    // timeout), so the 17th is over the limit — unless a holder reached
    // that timeout meanwhile (a loaded machine can take that long).
    let mut idle = hold_every_slot(&d);
    loop {
        let (r, closed) = d.raw(b"GET /stats HTTP/1.1\r\n\r\n");
        if r.status == 200 {
            assert!(any_closed(&idle), "served past the limit: {r:?}");
            idle = hold_every_slot(&d);
            continue;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.error().contains("too many"), "{r:?}");
        assert!(closed);
        break;
    }
    drop(idle);
    wait_for_a_free_slot(&d);
    d.assert_running();
}

/// Waits until a request is served again once the slot holders have gone:
/// the daemon frees a slot when it sees that connection end, which a
/// loaded machine may take a moment to schedule (30 s: a failure bound).
fn wait_for_a_free_slot(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (r, _) = d.raw(b"GET /stats HTTP/1.1\r\n\r\n");
        if r.status == 200 {
            return;
        }
        assert!(r.error().contains("too many"), "{r:?}");
        assert!(Instant::now() < deadline, "still refused: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sixteen kept-alive connections, each of which has been served (a 200),
/// so each holds one of the API's 16 slots until its idle timeout. A
/// connection merely accepted proves nothing: a slot may still be held by
/// an earlier connection whose end the daemon has not yet seen (such as
/// `wait_listening`'s probe), and a refused one waits for its request.
fn hold_every_slot(d: &Daemon) -> Vec<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut holders = Vec::new();
    while holders.len() < 16 {
        assert!(
            Instant::now() < deadline,
            "only {} of 16 slots held after 30 s\n{}",
            holders.len(),
            d.log()
        );
        let mut s = d.connect();
        send(&mut s, "GET", "/stats", None);
        let reply = read_reply(&mut s);
        match reply.status {
            200 => holders.push(s),
            // Another connection's slot, not yet given back: try again.
            503 => std::thread::sleep(Duration::from_millis(20)),
            _ => panic!("holding a slot: {reply:?}"),
        }
    }
    holders
}

/// Whether the daemon has closed any of `holders` (its idle timeout ends a
/// connection that sends nothing, which frees a slot).
fn any_closed(holders: &[UnixStream]) -> bool {
    holders.iter().any(|h| {
        h.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        // Still open and silent: would block. Anything else (the end, an
        // answer before the end, an error) means the daemon let it go.
        let open =
            matches!((&*h).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        h.set_nonblocking(false).unwrap();
        !open
    })
}

/// A client over the limit that reads to the end of the stream (as
/// `Connection: close` clients do) gets the whole 503 and a clean end, not
/// a reset: its request is read before the answer.
#[test]
fn a_refused_client_reads_to_the_end_without_a_reset() {
    let mut d = Daemon::start();
    let mut holders = hold_every_slot(&d);
    let mut refused = 0;
    while refused < 5 {
        let mut s = d.connect();
        s.write_all(b"GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("reading to the end: {e} after {raw:?}"));
        let text = String::from_utf8_lossy(&raw);
        if text.starts_with("HTTP/1.1 200 ") {
            // Served only because a holder reached the idle timeout (a
            // loaded machine can take that long): hold every slot again.
            assert!(any_closed(&holders), "served past the limit: {text}");
            holders = hold_every_slot(&d);
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("too many control API connections"), "{text}");
        refused += 1;
    }
    drop(holders);
    wait_for_a_free_slot(&d);
    d.assert_running();
}

/// Whether this test runs as root (the daemon then serves as nobody).
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

const NOBODY: u32 = 65534;

/// SIGTERM to `d`; waits for its exit status 0.
fn terminate(d: &mut Daemon) {
    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", d.log());
}

#[test]
fn socket_life_cycle_stale_live_and_removed_on_exit() {
    // A stale socket (its owner gone) is replaced.
    let dir = tempfile::tempdir().unwrap();
    // The directory belongs to the user the daemon serves as (nobody, when
    // started as root), as a service's runtime directory does: it may
    // remove its socket there at exit.
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let api = dir.path().join("api.sock");
    drop(UnixListener::bind(&api).unwrap());
    assert!(std::fs::symlink_metadata(&api)
        .unwrap()
        .file_type()
        .is_socket());
    let mut d = Daemon::start_in(dir, api.clone());
    d.assert_running();

    // A live one is refused: a second daemon on the same API socket exits
    // with a clear error and leaves the first one's socket alone.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(other.path().join("net.sock"))
        .arg("--api-socket")
        .arg(&api)
        .args(["--dns-upstream", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot open the control API socket {}",
            api.display()
        )) && stderr.contains("in use by a running process"),
        "{stderr}"
    );
    d.assert_running();

    // SIGTERM: the daemon exits and removes its socket.
    terminate(&mut d);
    assert!(!api.exists(), "API socket left behind");

    // In a directory only root may change, a daemon serving as nobody
    // cannot remove its socket itself: its reaper, forked while it was
    // still root, does once it has exited.
    if is_root() {
        let mut d = Daemon::start();
        terminate(&mut d);
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.api.exists() {
            assert!(
                Instant::now() < deadline,
                "{} left behind:\n{}",
                d.api.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The static `--publish` ports show up in the API like runtime ones.
#[test]
fn command_line_ports_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let port = free_tcp_port();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let child = Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.path().join("net.sock"))
        .arg("--api-socket")
        .arg(&api)
        .args(["--dns-upstream", "127.0.0.1", "--publish"])
        .arg(format!("{port}:8080"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Daemon { child, dir, api };
    d.wait_listening();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        d.call("GET", ALL, None).json(),
        json!([{"local": addr.to_string(), "remote": "192.168.127.2:8080", "protocol": "tcp"}])
    );
}

/// The DNS endpoints: airlock's own (records by name and value) and
/// gvisor-tap-vsock's zone shape, bad input as 400 with a reason, and an
/// audit line per change.
#[test]
fn dns_records_and_gvisor_zones() {
    let mut d = Daemon::start();
    let info = d.call("GET", "/dns", None).json();
    assert_eq!(info["upstreams"], json!(["127.0.0.1:53"]));
    assert_eq!(info["source"], "--dns-upstream");
    assert_eq!(
        info["zones"],
        json!([{"zone": "airlock.internal", "target": "local"}])
    );

    let r = d.call(
        "POST",
        "/dns/add",
        Some(&json!({"name": "web.test", "value": "10.0.0.5"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"name": "web.test", "type": "A", "value": "10.0.0.5", "source": "api"})
    );
    // Again: the same record, still 200.
    let again = json!({"name": "web.test", "type": "a", "value": "10.0.0.5"});
    assert_eq!(d.call("POST", "/dns/add", Some(&again)).status, 200);
    for (body, status, needle) in [
        (
            json!({"name": "web.test", "type": "AAAA", "value": "10.0.0.5"}),
            400,
            "does not match",
        ),
        (
            json!({"name": "web.test", "value": "not an address!"}),
            400,
            "invalid value",
        ),
        (
            json!({"name": "bad..name", "value": "10.0.0.1"}),
            400,
            "empty label",
        ),
        (
            json!({"name": "web.test", "value": "other.test"}),
            409,
            "only record",
        ),
        (json!({"name": "web.test"}), 400, "missing field `value`"),
        (
            json!({"name": "web.test", "value": "10.0.0.1", "ttl": 5}),
            400,
            "unknown field `ttl`",
        ),
    ] {
        let r = d.call("POST", "/dns/add", Some(&body));
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert!(r.error().contains(needle), "{body}: {:?}", r.error());
    }
    let r = d.call(
        "POST",
        "/dns/remove",
        Some(&json!({"name": "gateway.airlock.internal"})),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = d.call(
        "POST",
        "/dns/remove",
        Some(&json!({"name": "web.test", "value": "10.9.9.9"})),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = d.call("POST", "/dns/remove", Some(&json!({"name": "web.test"})));
    assert_eq!(
        r.json(),
        json!([{"name": "web.test", "type": "A", "value": "10.0.0.5", "source": "api"}])
    );

    // gvisor-tap-vsock's client: AddDNS then ListDNS.
    let zone = json!({"Name": "dynamic.internal.", "Records": [{"Name": "test", "IP": "192.168.127.254"}]});
    let r = d.call("POST", "/services/dns/add", Some(&zone));
    assert_eq!(r.status, 200, "{r:?}");
    let zone = json!({"Name": "dynamic.internal.", "Records": [{"Name": "test", "IP": "192.168.127.253"}], "DefaultIP": "192.168.127.2"});
    assert_eq!(d.call("POST", "/services/dns/add", Some(&zone)).status, 200);
    let all = d.call("GET", "/services/dns/all", None).json();
    let dynamic = all
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["Name"] == "dynamic.internal.")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(
        dynamic,
        &json!({"Name": "dynamic.internal.", "Records": [{"Name": "test", "IP": "192.168.127.253", "Regexp": null}], "DefaultIP": "192.168.127.2"})
    );
    for (body, needle) in [
        (
            json!({"Name": "x.internal.", "Records": [{"Name": "a", "Regexp": "^a.*"}]}),
            "Regexp records are not supported",
        ),
        (
            json!({"Name": "x.internal.", "Records": [{"Name": "a", "IP": "300.1.1.1"}]}),
            "invalid IP",
        ),
        (json!({"Name": "", "Records": []}), "no Name"),
        (
            json!({"Name": "x.internal.", "DefaultIP": "nope"}),
            "invalid DefaultIP",
        ),
        (
            json!({"Name": "x.internal.", "Records": [{"Name": "", "IP": "10.0.0.1"}]}),
            "no Name",
        ),
        (json!({"Name": "x.internal.", "Zones": []}), "unknown field"),
    ] {
        let r = d.call("POST", "/services/dns/add", Some(&body));
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.error().contains(needle), "{body}: {:?}", r.error());
    }
    let info = d.call("GET", "/dns", None).json();
    assert!(
        info["zones"]
            .as_array()
            .unwrap()
            .contains(&json!({"zone": "dynamic.internal", "target": "local"})),
        "{info}"
    );
    let events: Vec<String> = d
        .audit()
        .iter()
        .filter_map(|a| a["event"].as_str().map(str::to_owned))
        .filter(|e| e.starts_with("dns-"))
        .collect();
    assert_eq!(events, ["dns-add", "dns-remove", "dns-zone", "dns-zone"]);
    let stats = d.call("GET", "/stats", None).json();
    assert_eq!(stats["dns"]["upstreams"][0]["address"], "127.0.0.1:53");
    d.assert_running();
}
