//! Issue 4 end to end: ports published into a real guest, changed at
//! runtime through the `airlock` CLI, the egress policy, the audit log and
//! the counters — all in one guest boot.
//!
//! airlock-net runs in network namespace A (lo, and veth 10.201.0.1), so
//! binding 0.0.0.0 opens nothing on this machine's real interfaces; every
//! host-side client connects from inside A (or from B, 10.201.0.2, the
//! "network" beyond A's veth). B also holds the egress-policy servers. The
//! CLI talks to the API over the Unix socket, which is not namespaced.
//!
//! The guest serves HTTP with busybox httpd (a 16 MiB file, and a CGI that
//! hashes an upload) and UDP with `iperf3 -s`: busybox's `nc` in this guest
//! has no UDP, and iperf3's UDP test is a round trip through the published
//! port — the client's first datagram must be answered before any data
//! flows — with counted datagrams each way (`-R` for guest to host).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use airlock_e2e::servers::{pattern, sha256_hex, HttpServer};
use airlock_e2e::{net_device_args, veth_pair, DaemonHandle, NetNs, Rig, VmConfig};
use serde_json::Value;

const MAC: &str = "52:54:00:12:34:56";
const GUEST: &str = "192.168.127.2";
/// Namespace A's veth address (airlock-net's side) and B's.
const A_ADDR: &str = "10.201.0.1";
const B_ADDR: &str = "10.201.0.2";
/// 16 MiB each way.
const SIZE: usize = 16 << 20;
/// Published at startup (127.0.0.1 in namespace A): the guest's httpd.
const HTTP_PORT: u16 = 8080;
/// Published at startup, TCP and UDP: the guest's iperf3 servers (control
/// connection and datagrams share the number), one for host-to-guest and
/// one for guest-to-host (`-R`). Two one-shot servers, not one run twice:
/// between tests an iperf3 server closes its listener and opens it again,
/// and a client arriving in that window (a busy host makes it wide) is
/// reset by the guest, through the published port, before any test.
const IPERF_PORT: u16 = 5201;
const IPERF_REVERSE_PORT: u16 = 5202;
/// Published at runtime through the CLI: once bound to 127.0.0.1, once to
/// 0.0.0.0.
const LOOPBACK_ONLY_PORT: u16 = 9080;
const EVERY_ADDR_PORT: u16 = 9081;
/// The egress policy's allowed and denied ports on B.
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;
const VM_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a host-side transfer or tool may take.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest: DHCP, the servers, the egress checks, `READY` with the
/// blob's hash; then it waits for the host's `done`.
fn guest_script() -> String {
    format!(
        r#"set -e
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || {{ cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }}
mkdir -p /www/cgi-bin
head -c {SIZE} /dev/urandom >/www/blob
echo 'hello from the guest' >/www/hello.txt
cat >/www/cgi-bin/upload <<'EOF'
#!/bin/sh
sum=$(head -c "$CONTENT_LENGTH" | sha256sum | cut -c1-64)
printf 'Content-Type: text/plain\r\n\r\n'
echo "received $CONTENT_LENGTH $sum"
EOF
chmod 755 /www/cgi-bin/upload
httpd -p 80 -h /www
iperf3 -s -1 -p {IPERF_PORT} >/tmp/iperf3.log 2>&1 &
iperf3 -s -1 -p {IPERF_REVERSE_PORT} >/tmp/iperf3-reverse.log 2>&1 &
# READY only once both listen (/proc/net/tcp6: local port in hex, state 0A).
for port in {IPERF_PORT} {IPERF_REVERSE_PORT}; do
    hex=$(printf '%04X' $port)
    until grep -Eq ":$hex [0-9A-F]+:0000 0A" /proc/net/tcp /proc/net/tcp6; do sleep 0.1; done
done
set +e
curl -sS --max-time 20 http://{B_ADDR}:{ALLOWED_PORT}/peer >/tmp/allowed 2>&1
echo "allowed status=$? $(cat /tmp/allowed)"
curl -sS --max-time 20 http://{B_ADDR}:{DENIED_PORT}/peer >/tmp/denied 2>&1
echo "denied status=$? $(cat /tmp/denied)"
echo "READY blob=$(sha256sum /www/blob | cut -c1-64)"
read line
echo "host said $line"
sed 's/^/iperf3: /' /tmp/iperf3.log | tail -n 5
sed 's/^/iperf3 -R: /' /tmp/iperf3-reverse.log | tail -n 5
"#
    )
}

/// `airlock --api-socket <api> <args>`; panics with its stderr on failure.
fn airlock(api: &Path, args: &[&str]) -> String {
    let out = airlock_output(api, args);
    assert!(
        out.status.success(),
        "airlock {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn airlock_output(api: &Path, args: &[&str]) -> Output {
    Command::new(Rig::bin("airlock"))
        .arg("--api-socket")
        .arg(api)
        .args(args)
        .output()
        .unwrap()
}

fn airlock_json(api: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = airlock(api, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("airlock {args:?}: {e}: {text}"))
}

/// A TCP connection from inside `ns`.
fn connect(ns: &NetNs, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// An HTTP/1.0 exchange from inside `ns`: status code and body.
fn http(ns: &NetNs, addr: SocketAddr, request_head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = connect(ns, addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.write_all(request_head.as_bytes()).unwrap();
    s.write_all(body)
        .unwrap_or_else(|e| panic!("sending {} bytes to {addr}: {e}", body.len()));
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("reading from {addr} ({} bytes so far): {e}", reply.len()));
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP head from {addr}: {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(200)])
            )
        });
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status from {addr}: {head:?}"));
    (status, reply[split + 4..].to_vec())
}

fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    http(ns, addr, &format!("GET {path} HTTP/1.0\r\n\r\n"), b"")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// Asserts that nothing accepts TCP connections at `addr` (from `ns`).
fn assert_refused(ns: &NetNs, addr: SocketAddr, why: &str) {
    match connect(ns, addr) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("{why}: connecting to {addr} failed with {e}, not a refusal"),
        Ok(_) => panic!("{why}: {addr} accepted a connection"),
    }
}

/// Runs iperf3's UDP test against the published port from namespace A;
/// `reverse` has the guest send. Returns (datagrams sent, lost) from the
/// receiver's summary.
fn iperf_udp(ns: &NetNs, reverse: bool) -> (u64, u64) {
    let port = if reverse {
        IPERF_REVERSE_PORT
    } else {
        IPERF_PORT
    };
    let mut cmd = ns.command("timeout");
    cmd.args(["30", "iperf3", "-c", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-u", "-b", "2M", "-l", "1200", "-t", "1", "--json"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 -u {} failed ({}): {text}\n{}",
        if reverse { "-R" } else { "" },
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let sum = &v["end"]["sum"];
    let (packets, lost) = (sum["packets"].as_u64(), sum["lost_packets"].as_u64());
    match (packets, lost) {
        (Some(p), Some(l)) => (p, l),
        _ => panic!("no UDP summary in iperf3's report: {text}"),
    }
}

/// The audit log's records.
fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// Waits until the audit log has a record matching `want`; returns it.
fn wait_audit(path: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = audit_records(path);
        if let Some(r) = records.iter().find(|r| want(r)) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no audit record for {what} in {}:\n{}",
            path.display(),
            records
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn field<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key].as_str().unwrap_or("")
}

fn counter(stats: &Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {stats}"))
}

fn drops(stats: &Value, reason: &str) -> u64 {
    stats["drops"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|e| e[0] == reason)
                .and_then(|e| e[1].as_u64())
        })
        .unwrap_or_else(|| panic!("no drop reason {reason} in {stats}"))
}

struct Net {
    daemon: DaemonHandle,
    socket: PathBuf,
    api: PathBuf,
    audit: PathBuf,
}

/// airlock-net in `ns` with the API, the audit log, the startup ports and
/// the deny rule.
fn start_net(rig: &mut Rig, ns: &NetNs) -> Net {
    let socket = rig.dir().join("net.sock");
    let api = rig.dir().join("net.api");
    let audit = rig.dir().join("audit.log");
    let mut cmd = ns.command(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--api-socket")
        .arg(&api)
        .arg("--audit-log")
        .arg(&audit)
        // Nothing listens there: the guest resolves no names, and no query
        // may leave the namespace.
        .args(["--dns-upstream", "127.0.0.1"])
        .arg("--publish")
        .arg(format!("{HTTP_PORT}:80"))
        .arg("--publish")
        .arg(format!("{IPERF_PORT}:{IPERF_PORT}"))
        .arg("--publish")
        .arg(format!("{IPERF_PORT}:{IPERF_PORT}/udp"))
        .arg("--publish")
        .arg(format!("{IPERF_REVERSE_PORT}:{IPERF_REVERSE_PORT}"))
        .arg("--publish")
        .arg(format!("{IPERF_REVERSE_PORT}:{IPERF_REVERSE_PORT}/udp"))
        .arg("--deny")
        .arg(format!("{B_ADDR}:{DENIED_PORT}/tcp"));
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    rig.wait_for_socket(&api, Duration::from_secs(10));
    Net {
        daemon,
        socket,
        api,
        audit,
    }
}

#[test]
fn published_ports_runtime_control_egress_policy_and_audit() {
    let started = Instant::now();
    let a = NetNs::new("pub-a");
    let b = NetNs::new("pub-b");
    veth_pair(&a, &format!("{A_ADDR}/24"), &b, &format!("{B_ADDR}/24"));
    let allowed = HttpServer::serve(b.bind_tcp(addr(B_ADDR, ALLOWED_PORT)), 0);
    let denied = HttpServer::serve(b.bind_tcp(addr(B_ADDR, DENIED_PORT)), 0);
    let mut rig = Rig::new("publish");
    let net = start_net(&mut rig, &a);
    let api = net.api.as_path();
    let before = airlock_json(api, &["stats"]);

    let mut vm = rig.boot(VmConfig {
        script: guest_script(),
        qemu_args: net_device_args(&net.socket, MAC, false),
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let ready = vm.wait_for("READY blob=", Duration::from_secs(120));
    let booted = started.elapsed();
    let line = |prefix: &str| -> String {
        ready
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in the guest output:\n{ready}"))
            .to_owned()
    };
    let blob_sha = line("READY blob=");

    // ---- egress policy: B:80 allowed, B:81 denied (RST: refused at once) ----
    let allowed_line = line("allowed ");
    assert!(
        allowed_line.starts_with(&format!("status=0 peer {A_ADDR}:")),
        "allowed destination: {allowed_line:?}\n{ready}"
    );
    // Denied: curl cannot connect (exit 7), and at once — a RST, not a
    // timeout ("Failed to connect to … after 16 ms").
    let denied_line = line("denied ");
    let millis = denied_line
        .split(" after ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse::<u64>().ok());
    assert!(
        denied_line.starts_with("status=7 ") && millis.is_some_and(|ms| ms < 2000),
        "denied destination: {denied_line:?}\n{ready}"
    );
    assert_eq!(allowed.log().requests.len(), 1, "{:?}", allowed.log());
    assert!(
        denied.log().requests.is_empty(),
        "the denied server saw {:?}",
        denied.log().requests
    );

    // ---- 16 MiB from the guest through the published port ----
    let http_addr = addr("127.0.0.1", HTTP_PORT);
    let t = Instant::now();
    let (status, blob) = get(&a, http_addr, "/blob");
    let download = t.elapsed();
    assert_eq!(status, 200, "GET /blob");
    assert_eq!(blob.len(), SIZE, "downloaded length");
    assert_eq!(sha256_hex(&blob), blob_sha, "downloaded bytes differ");

    // ---- 16 MiB to the guest: the CGI hashes what httpd hands it ----
    let upload = pattern(SIZE, 0xa1b2_c3d4);
    let t = Instant::now();
    let (status, body) = http(
        &a,
        http_addr,
        &format!(
            "POST /cgi-bin/upload HTTP/1.0\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n"
        ),
        &upload,
    );
    let upload_time = t.elapsed();
    assert_eq!(
        status,
        200,
        "POST /cgi-bin/upload: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("received {SIZE} {}\n", sha256_hex(&upload)),
        "the guest received other bytes"
    );

    // ---- UDP through the published port, both ways ----
    let (to_guest, lost_to_guest) = iperf_udp(&a, false);
    let (to_host, lost_to_host) = iperf_udp(&a, true);
    assert!(
        to_guest > lost_to_guest,
        "no datagram reached the guest: {to_guest} sent, {lost_to_guest} lost"
    );
    assert!(
        to_host > lost_to_host,
        "no datagram reached the host: {to_host} sent, {lost_to_host} lost"
    );

    // ---- publish at runtime, bound to 127.0.0.1: only loopback accepts ----
    let out = airlock(
        api,
        &["publish", &format!("127.0.0.1:{LOOPBACK_ONLY_PORT}:80")],
    );
    assert_eq!(
        out,
        format!("published 127.0.0.1:{LOOPBACK_ONLY_PORT} -> {GUEST}:80/tcp\n")
    );
    let (status, body) = get(&a, addr("127.0.0.1", LOOPBACK_ONLY_PORT), "/hello.txt");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"hello from the guest\n"[..])
    );
    assert_refused(
        &a,
        addr(A_ADDR, LOOPBACK_ONLY_PORT),
        "127.0.0.1-bound port, A's own veth address",
    );
    assert_refused(
        &b,
        addr(A_ADDR, LOOPBACK_ONLY_PORT),
        "127.0.0.1-bound port, from namespace B",
    );
    let ports = airlock(api, &["ports"]);
    assert!(
        ports.contains(&format!("127.0.0.1:{LOOPBACK_ONLY_PORT}")),
        "{ports}"
    );
    let out = airlock(api, &["unpublish", &LOOPBACK_ONLY_PORT.to_string()]);
    assert!(out.starts_with("unpublished 127.0.0.1:"), "{out}");
    assert_refused(
        &a,
        addr("127.0.0.1", LOOPBACK_ONLY_PORT),
        "after airlock unpublish",
    );

    // ---- publish at runtime, bound to 0.0.0.0: every address accepts ----
    airlock(api, &["publish", &format!("0.0.0.0:{EVERY_ADDR_PORT}:80")]);
    for (ns, ip, from) in [
        (&a, "127.0.0.1", "A's loopback"),
        (&a, A_ADDR, "A's veth address"),
        (&b, A_ADDR, "namespace B"),
    ] {
        let (status, body) = get(ns, addr(ip, EVERY_ADDR_PORT), "/hello.txt");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello from the guest\n"[..]),
            "0.0.0.0-bound port from {from}"
        );
    }
    airlock(api, &["unpublish", &format!("0.0.0.0:{EVERY_ADDR_PORT}")]);
    assert_refused(
        &a,
        addr(A_ADDR, EVERY_ADDR_PORT),
        "after unpublish (0.0.0.0)",
    );
    let all = airlock_json(api, &["ports"]);
    let mut locals: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}/{}", field(p, "local"), field(p, "protocol")))
        .collect();
    locals.sort();
    assert_eq!(
        locals,
        vec![
            format!("127.0.0.1:{IPERF_PORT}/tcp"),
            format!("127.0.0.1:{IPERF_PORT}/udp"),
            format!("127.0.0.1:{IPERF_REVERSE_PORT}/tcp"),
            format!("127.0.0.1:{IPERF_REVERSE_PORT}/udp"),
            format!("127.0.0.1:{HTTP_PORT}/tcp"),
        ]
    );

    // ---- the API's view: flows, leases, counters ----
    let flows = airlock_json(api, &["flows"]);
    assert!(
        flows.as_array().unwrap().iter().any(|f| f["proto"] == "udp"
            && f["direction"] == "inbound"
            && f["guest"] == format!("{GUEST}:{IPERF_PORT}")),
        "no published UDP mapping among the flows: {flows}"
    );
    let leases = airlock_json(api, &["leases"]);
    assert_eq!(leases[0]["mac"], MAC, "{leases}");
    assert_eq!(leases[0]["ip"], GUEST, "{leases}");
    let after = airlock_json(api, &["stats"]);
    let grew = |path: &[&str]| counter(&after, path) - counter(&before, path);
    assert!(
        grew(&["guest_to_host", "bytes"]) >= SIZE as u64,
        "guest->host bytes: {before} -> {after}"
    );
    assert!(
        grew(&["host_to_guest", "bytes"]) >= SIZE as u64,
        "host->guest bytes: {before} -> {after}"
    );
    // Outbound to B:80, /blob, the upload, three /hello.txt, two iperf3
    // control connections (plus their data streams for TCP? none: UDP).
    assert!(
        grew(&["flows", "tcp", "opened"]) >= 8,
        "TCP flows opened: {before} -> {after}"
    );
    assert!(
        grew(&["flows", "tcp", "refused"]) >= 1,
        "TCP flows refused: {before} -> {after}"
    );
    assert!(
        grew(&["flows", "udp", "opened"]) >= 1,
        "UDP flows opened: {before} -> {after}"
    );
    assert!(
        drops(&after, "policy") > drops(&before, "policy"),
        "policy drops: {before} -> {after}"
    );
    let table = airlock(api, &["stats"]);
    assert!(
        table.contains("guest -> host") && table.contains("MiB"),
        "{table}"
    );

    // ---- the guest ends ----
    vm.send_line("done");
    let out = vm.wait();
    out.assert_success().assert_contains("host said done");

    // ---- the audit trail ----
    let audit = net.audit.as_path();
    for (host, proto) in [
        (format!("127.0.0.1:{HTTP_PORT}"), "tcp"),
        (format!("127.0.0.1:{IPERF_PORT}"), "tcp"),
        (format!("127.0.0.1:{IPERF_PORT}"), "udp"),
        (format!("127.0.0.1:{LOOPBACK_ONLY_PORT}"), "tcp"),
        (format!("0.0.0.0:{EVERY_ADDR_PORT}"), "tcp"),
    ] {
        let r = wait_audit(audit, &format!("publish {host}/{proto}"), |r| {
            field(r, "event") == "publish" && field(r, "host") == host && field(r, "proto") == proto
        });
        assert!(field(&r, "guest").starts_with(&format!("{GUEST}:")), "{r}");
    }
    for host in [
        format!("127.0.0.1:{LOOPBACK_ONLY_PORT}"),
        format!("0.0.0.0:{EVERY_ADDR_PORT}"),
    ] {
        wait_audit(audit, &format!("unpublish {host}"), |r| {
            field(r, "event") == "unpublish" && field(r, "host") == host
        });
    }
    let deny = wait_audit(audit, "flow-deny to B:81", |r| {
        field(r, "event") == "flow-deny" && field(r, "remote") == format!("{B_ADDR}:{DENIED_PORT}")
    });
    assert_eq!(field(&deny, "proto"), "tcp", "{deny}");
    assert!(
        field(&deny, "guest").starts_with(&format!("{GUEST}:")),
        "{deny}"
    );
    assert!(field(&deny, "decision").contains("deny"), "{deny}");
    let open = wait_audit(audit, "flow-open to B:80", |r| {
        field(r, "event") == "flow-open"
            && field(r, "direction") == "outbound"
            && field(r, "remote") == format!("{B_ADDR}:{ALLOWED_PORT}")
    });
    assert_eq!(field(&open, "proto"), "tcp", "{open}");
    assert!(field(&open, "decision").contains("allow"), "{open}");
    let close = wait_audit(audit, "flow-close of B:80", |r| {
        field(r, "event") == "flow-close"
            && field(r, "direction") == "outbound"
            && field(r, "remote") == format!("{B_ADDR}:{ALLOWED_PORT}")
    });
    assert!(
        close["bytes_to_host"].as_u64() > Some(0) && close["bytes_to_guest"].as_u64() > Some(0),
        "{close}"
    );
    wait_audit(audit, "flow-open of the published HTTP port", |r| {
        field(r, "event") == "flow-open"
            && field(r, "direction") == "inbound"
            && field(r, "host") == format!("127.0.0.1:{HTTP_PORT}")
            && field(r, "guest") == format!("{GUEST}:80")
            && field(r, "client").starts_with("127.0.0.1:")
    });
    wait_audit(audit, "flow-close of the 16 MiB download", |r| {
        field(r, "event") == "flow-close"
            && field(r, "direction") == "inbound"
            && r["bytes_to_host"].as_u64() >= Some(SIZE as u64)
    });
    wait_audit(audit, "flow-close of the 16 MiB upload", |r| {
        field(r, "event") == "flow-close"
            && field(r, "direction") == "inbound"
            && r["bytes_to_guest"].as_u64() >= Some(SIZE as u64)
    });
    wait_audit(audit, "flow-open of the published UDP port", |r| {
        field(r, "event") == "flow-open"
            && field(r, "direction") == "inbound"
            && field(r, "proto") == "udp"
            && field(r, "host") == format!("127.0.0.1:{IPERF_PORT}")
    });
    assert!(
        audit_records(audit).iter().all(|r| r["time"].is_string()),
        "audit records without a time"
    );
    assert!(net.daemon.is_running(), "{}", net.daemon.log());
    eprintln!(
        "publish e2e: guest ready after {:.1} s; 16 MiB download {:.2} s, upload {:.2} s; \
         UDP datagrams to guest {to_guest} (lost {lost_to_guest}), to host {to_host} \
         (lost {lost_to_host}); total {:.1} s",
        booted.as_secs_f64(),
        download.as_secs_f64(),
        upload_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
