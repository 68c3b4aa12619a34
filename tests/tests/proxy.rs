//! airlock-proxy end to end (issue 5): a guest with
//! `http_proxy=http://http.airlock.internal:3128` reaches an origin on the
//! host's loopback through airlock-net's proxy alias and airlock-proxy, with
//! a plain request and a CONNECT tunnel, and the proxy's audit log records
//! both. airlock-proxy listens on a Unix socket (`--proxy-target unix:…`),
//! so nothing but the test's origin listens on a TCP port.
//!
//! Also without a guest: a forwarding loop through NAT back to the proxy.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{DnsResolver, HttpServer, HELLO_BODY};
use airlock_e2e::{net_device_args, DaemonHandle, NetNs, Rig, VmConfig};
use serde_json::Value;

const MAC: &str = "52:54:00:12:34:56";
const BLOB: usize = 4 << 20;
const VM_TIMEOUT: Duration = Duration::from_secs(150);

/// Reads the audit log until `count` records are there (the proxy writes a
/// record when an exchange ends, which may be just after the guest saw its
/// response).
fn audit_records(path: &Path, count: usize, proxy: &DaemonHandle) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect();
        if records.len() >= count || Instant::now() > deadline {
            assert!(
                records.len() >= count,
                "expected {count} audit records, got {records:?}\nproxy log:\n{}",
                proxy.log()
            );
            return records;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn guest_fetches_through_the_proxy_alias_and_the_audit_log_shows_it() {
    let origin = HttpServer::start(BLOB);
    let resolver = DnsResolver::start(&[]);
    let mut rig = Rig::new("proxy_guest");
    let proxy_socket = rig.dir().join("proxy.sock");
    let audit = rig.dir().join("proxy-audit.jsonl");

    let mut cmd = Command::new(Rig::bin("airlock-proxy"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", proxy_socket.display()))
        .arg("--audit-log")
        .arg(&audit)
        .arg("--log-level")
        .arg("info");
    // The test's environment must not send the proxy to an upstream.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_lowercase());
    }
    let proxy = rig.spawn_daemon("airlock-proxy", cmd);
    rig.wait_for_socket(&proxy_socket, Duration::from_secs(10));

    let net_socket = rig.dir().join("net.sock");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&net_socket)
        .arg("--dns-upstream")
        .arg(resolver.addr().to_string())
        .arg("--proxy-target")
        .arg(format!("unix:{}", proxy_socket.display()));
    let net = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&net_socket, Duration::from_secs(10));

    let origin_url = format!("http://127.0.0.1:{}", origin.port());
    let script = format!(
        r#"set -e
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || {{ cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }}
export http_proxy=http://http.airlock.internal:3128
echo "hello: $(curl -sS --max-time 60 {origin_url}/hello)"
curl -sS --max-time 120 --proxytunnel -o /tmp/blob -w 'tunnel %{{http_code}} %{{size_download}}\n' {origin_url}/blob
echo "blob sha=$(sha256sum /tmp/blob | cut -c1-64)"
"#
    );
    let out = rig
        .boot(VmConfig {
            script,
            qemu_args: net_device_args(&net_socket, MAC, false),
            timeout: VM_TIMEOUT,
            ..VmConfig::default()
        })
        .wait();
    out.assert_success()
        .assert_contains(&format!("hello: {}", HELLO_BODY.trim_end()))
        .assert_contains(&format!("tunnel 200 {BLOB}\n"))
        .assert_contains(&format!("blob sha={}\n", origin.blob_sha256()));

    // The origin saw the proxy (host loopback), never the guest.
    let log = origin.log();
    assert_eq!(log.requests.len(), 2, "{log:?}");
    assert!(
        log.requests.iter().all(|r| r.peer.ip().is_loopback()),
        "{log:?}"
    );

    let records = audit_records(&audit, 2, &proxy);
    let port = u64::from(origin.port());
    let get = records
        .iter()
        .find(|r| r["method"] == "GET")
        .unwrap_or_else(|| panic!("no GET record in {records:?}"));
    assert_eq!(get["host"], "127.0.0.1", "{get}");
    assert_eq!(get["port"], port, "{get}");
    assert_eq!(get["status"], 200, "{get}");
    assert!(get["upstream"].is_null(), "went direct: {get}");
    let connect = records
        .iter()
        .find(|r| r["method"] == "CONNECT")
        .unwrap_or_else(|| panic!("no CONNECT record in {records:?}"));
    assert_eq!(connect["host"], "127.0.0.1", "{connect}");
    assert_eq!(connect["port"], port, "{connect}");
    assert_eq!(connect["status"], 200, "{connect}");
    assert!(
        connect["bytes_down"].as_u64().unwrap_or(0) >= BLOB as u64,
        "the tunnel carried the blob: {connect}"
    );
    assert!(proxy.is_running() && net.is_running());
}

/// Reads from `stream` until `want` shows up, the peer closes, or 10 s pass.
fn read_until(stream: &mut TcpStream, want: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A forwarding loop the proxy cannot tell from the target's address — a
/// NAT rule sending 127.0.0.2:9999 to the proxy's own port — is caught when
/// the proxy's own connection arrives at its listener: tunnels do not
/// nest, the client gets 508 (as the answer to its CONNECT, or inside the
/// tunnel, depending on which end the proxy registers first), and no slot
/// stays taken.
#[test]
fn a_forwarding_loop_through_nat_is_refused() {
    let ns = NetNs::new("proxy-nat-loop");
    for rule in [
        "add table ip nat",
        "add chain ip nat output { type nat hook output priority -100 ; }",
        "add rule ip nat output ip daddr 127.0.0.2 tcp dport 9999 dnat to 127.0.0.1:3128",
    ] {
        let out = ns
            .command("nft")
            .args(rule.split(' '))
            .output()
            .unwrap_or_else(|e| panic!("cannot run nft (scripts/install-deps installs it): {e}"));
        assert!(
            out.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let origin = HttpServer::serve(
        ns.bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))),
        0,
    );
    let mut rig = Rig::new("proxy_nat_loop");
    let audit = rig.dir().join("audit.jsonl");
    let mut cmd = ns.command(Rig::bin("airlock-proxy"));
    cmd.args(["--listen", "127.0.0.1:3128", "--max-connections", "2"])
        .arg("--audit-log")
        .arg(&audit);
    let proxy = rig.spawn_daemon("airlock-proxy", cmd);
    let proxy_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 3128));
    let deadline = Instant::now() + Duration::from_secs(30);
    while ns.run(|| TcpStream::connect(proxy_addr)).is_err() {
        assert!(proxy.is_running(), "{}", proxy.log());
        assert!(Instant::now() < deadline, "the proxy never listened");
        thread::sleep(Duration::from_millis(20));
    }
    let mut s = ns.run(|| TcpStream::connect(proxy_addr)).unwrap();
    s.write_all(b"CONNECT 127.0.0.2:9999 HTTP/1.1\r\nHost: 127.0.0.2:9999\r\n\r\n")
        .unwrap();
    let seen = read_until(&mut s, "airlock-proxy itself");
    assert!(
        seen.contains("508 Loop Detected") && seen.contains("airlock-proxy itself"),
        "{seen:?}\n{}",
        proxy.log()
    );
    // Asking again inside whatever is left gets nowhere.
    let _ = s.write_all(b"CONNECT 127.0.0.2:9999 HTTP/1.1\r\nHost: x\r\n\r\n");
    drop(s);
    // Both slots come back for ordinary clients (a loop that nested would
    // hold them until the idle timeout, 60 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Two connections open at once, each served.
        let open: Vec<(String, TcpStream)> = (0..2)
            .map(|_| {
                let mut s = ns.run(|| TcpStream::connect(proxy_addr)).unwrap();
                s.write_all(b"GET http://127.0.0.1:8080/hello HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                (read_until(&mut s, HELLO_BODY), s)
            })
            .collect();
        let answers: Vec<&String> = open.iter().map(|(seen, _)| seen).collect();
        if answers.iter().all(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots still taken: {answers:?}\n{}",
            proxy.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(origin.log().requests.len() >= 2);
    let records = audit_records(&audit, 3, &proxy);
    assert!(
        records.iter().any(|r| r["status"] == 508
            && r["error"]
                .as_str()
                .unwrap_or("")
                .contains("airlock-proxy itself")),
        "{records:#?}"
    );
}
