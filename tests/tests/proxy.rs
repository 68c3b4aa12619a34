//! airlock-proxy end to end (issue 5): a guest with
//! `http_proxy=http://http.airlock.internal:3128` reaches an origin on the
//! host's loopback through airlock-net's proxy alias and airlock-proxy, with
//! a plain request and a CONNECT tunnel, and the proxy's audit log records
//! both. airlock-proxy listens on a Unix socket (`--proxy-target unix:…`),
//! so nothing but the test's origin listens on a TCP port.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{DnsResolver, HttpServer, HELLO_BODY};
use airlock_e2e::{net_device_args, DaemonHandle, Rig, VmConfig};
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
