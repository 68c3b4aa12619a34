//! The `airlock` binary against a real `airlock-net` (no guest attached).

use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_e2e::Rig;
use serde_json::{json, Value};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// airlock-net serving its API in a temporary directory; killed on drop.
struct Net {
    child: Child,
    dir: tempfile::TempDir,
}

impl Net {
    fn start() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("net.log")).unwrap();
        let child = Command::new(Rig::bin("airlock-net"))
            .arg("--socket-path")
            .arg(dir.path().join("net.sock"))
            .arg("--api-socket")
            .arg(dir.path().join("net.api"))
            .args(["--dns-upstream", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let net = Net { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(net.api()).is_err() {
            assert!(Instant::now() < deadline, "airlock-net did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        net
    }

    fn api(&self) -> PathBuf {
        self.dir.path().join("net.api")
    }

    /// `airlock --api-socket <api> <args>`.
    fn airlock(&self, args: &[&str]) -> Output {
        airlock(Some(&self.api()), args)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn airlock(api: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(AIRLOCK);
    cmd.env_remove("AIRLOCK_API_SOCKET");
    if let Some(api) = api {
        cmd.arg("--api-socket").arg(api);
    }
    cmd.args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "airlock failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn publish_list_unpublish_through_the_daemon() {
    let net = Net::start();
    assert_eq!(stdout(&net.airlock(&["ports"])), "no published ports\n");

    let port = free_port();
    let out = stdout(&net.airlock(&["publish", &format!("{port}:80")]));
    assert_eq!(
        out,
        format!("published 127.0.0.1:{port} -> 192.168.127.2:80/tcp\n")
    );
    assert!(TcpListener::bind(("127.0.0.1", port)).is_err(), "not bound");

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    drop(udp);
    let udp_local = format!("127.0.0.1:{udp_port}");
    let out = stdout(&net.airlock(&["--json", "publish", &format!("{udp_local}:53/udp")]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!([{"local": format!("127.0.0.1:{udp_port}"), "remote": "192.168.127.2:53", "protocol": "udp"}])
    );

    // The table, and the API's JSON.
    let table = stdout(&net.airlock(&["ports"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("PROTO  HOST"), "{table}");
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let tcp_local = format!("127.0.0.1:{port}");
    assert!(
        rows.contains(&vec!["tcp", tcp_local.as_str(), "192.168.127.2:80"]),
        "{table}"
    );
    assert!(
        rows.contains(&vec!["udp", udp_local.as_str(), "192.168.127.2:53"]),
        "{table}"
    );
    let v: Value = serde_json::from_str(&stdout(&net.airlock(&["ports", "--json"]))).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    // Twice: the daemon's error, exit 1.
    let err = failure(&net.airlock(&["publish", &format!("{port}:81")]), 1);
    assert_eq!(
        err,
        format!("error: airlock-net: 127.0.0.1:{port}/tcp is already published (HTTP 409)\n")
    );

    // A range whose second port is taken: nothing stays published.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    if taken > 1 && TcpListener::bind(("127.0.0.1", taken - 1)).is_ok() {
        let err = failure(
            &net.airlock(&["publish", &format!("{}-{taken}:9000-9001", taken - 1)]),
            1,
        );
        assert!(
            err.contains(&format!("cannot publish 127.0.0.1:{taken}/tcp"))
                && err.contains("Address already in use"),
            "{err}"
        );
        TcpListener::bind(("127.0.0.1", taken - 1)).expect("rolled back");
    }

    let out = stdout(&net.airlock(&["unpublish", &port.to_string()]));
    assert_eq!(
        out,
        format!("unpublished 127.0.0.1:{port} -> 192.168.127.2:80/tcp\n")
    );
    TcpListener::bind(("127.0.0.1", port)).expect("port freed");
    let err = failure(&net.airlock(&["unpublish", &port.to_string()]), 1);
    assert!(err.contains("is not published (HTTP 404)"), "{err}");
    // The protocol counts.
    let err = failure(&net.airlock(&["unpublish", &udp_port.to_string()]), 1);
    assert!(
        err.contains(&format!("127.0.0.1:{udp_port}/tcp is not published")),
        "{err}"
    );
    stdout(&net.airlock(&["unpublish", &format!("{udp_port}/udp")]));
    assert_eq!(stdout(&net.airlock(&["ports"])), "no published ports\n");
}

#[test]
fn stats_flows_leases_tables_and_json() {
    let net = Net::start();
    let stats = stdout(&net.airlock(&["stats"]));
    for needle in [
        "TRAFFIC",
        "guest -> host",
        "FLOWS",
        "tcp",
        "DROPPED",
        "policy",
    ] {
        assert!(stats.contains(needle), "{needle}: {stats}");
    }
    let v: Value = serde_json::from_str(&stdout(&net.airlock(&["--json", "stats"]))).unwrap();
    assert_eq!(v["flows"]["tcp"]["opened"], 0);
    assert_eq!(stdout(&net.airlock(&["flows"])), "no flows\n");
    assert_eq!(stdout(&net.airlock(&["leases"])), "no leases\n");
    assert_eq!(stdout(&net.airlock(&["flows", "--json"])), "[]\n");
    assert_eq!(stdout(&net.airlock(&["leases", "--json"])), "[]\n");

    // AIRLOCK_API_SOCKET when no --api-socket is given.
    let out = Command::new(AIRLOCK)
        .env("AIRLOCK_API_SOCKET", net.api())
        .arg("leases")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "no leases\n");
}

#[test]
fn clear_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.api");
    let err = failure(&airlock(Some(&missing), &["ports"]), 1);
    assert!(
        err.starts_with(&format!(
            "error: cannot connect to {0} (is airlock-net running with --api-socket {0}?",
            missing.display()
        )) && err.contains("caused by: No such file or directory"),
        "{err}"
    );
    // Usage errors: 2, before any connection.
    let err = failure(&airlock(Some(&missing), &["publish", "nope"]), 2);
    assert!(err.contains("invalid port to publish \"nope\""), "{err}");
    let err = failure(&airlock(Some(&missing), &["unpublish", "8080:80"]), 2);
    assert!(err.contains("invalid port to unpublish"), "{err}");
    failure(&airlock(Some(&missing), &[]), 2);
    failure(&airlock(Some(&missing), &["bogus"]), 2);
    let help = stdout(&airlock(None, &["--help"]));
    assert!(
        help.contains("AIRLOCK_API_SOCKET") && help.contains("/run/airlock/net.api"),
        "{help}"
    );
}

/// Three consecutive ports free on 127.0.0.1 right now.
fn free_run_of_three() -> u16 {
    for _ in 0..100 {
        let first = free_port();
        if first > 65533 {
            continue;
        }
        if (first..first + 3).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return first;
        }
    }
    panic!("no three consecutive free ports");
}

#[test]
fn unpublishing_a_range_with_a_gap_removes_nothing() {
    let net = Net::start();
    let first = free_run_of_three();
    stdout(&net.airlock(&["publish", &format!("{first}:80")]));
    stdout(&net.airlock(&["publish", &format!("{}:82", first + 2)]));
    let err = failure(
        &net.airlock(&["unpublish", &format!("{first}-{}", first + 2)]),
        1,
    );
    assert!(
        err.contains(&format!(
            "127.0.0.1:{}/tcp is not published; nothing was unpublished",
            first + 1
        )),
        "{err}"
    );
    // Both ends are still published and bound.
    let table = stdout(&net.airlock(&["ports"]));
    for p in [first, first + 2] {
        assert!(table.contains(&format!("127.0.0.1:{p} ")), "{p}: {table}");
        assert!(TcpListener::bind(("127.0.0.1", p)).is_err(), "{p} unbound");
    }
    // A range that is all published goes at once.
    stdout(&net.airlock(&["publish", &format!("{}:81", first + 1)]));
    let out = stdout(&net.airlock(&["unpublish", &format!("{first}-{}", first + 2)]));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(stdout(&net.airlock(&["ports"])), "no published ports\n");
}

#[test]
fn a_daemon_that_never_answers_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.api");
    // Accepts, reads, never answers.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let _held = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(std::time::Duration::from_secs(10));
        drop(conns);
    });
    let err = failure(&airlock(Some(&path), &["--timeout", "1", "ports"]), 1);
    assert_eq!(
        err,
        format!(
            "error: airlock-net on {} did not answer within 1 s\n",
            path.display()
        )
    );
}

#[test]
fn dns_records_add_list_remove_through_the_daemon() {
    let net = Net::start();
    let ls = stdout(&net.airlock(&["dns", "ls"]));
    assert!(
        ls.starts_with("resolvers: 127.0.0.1:53 (from --dns-upstream)\nsearch: none\n"),
        "{ls}"
    );
    assert!(ls.contains("airlock.internal  local"), "{ls}");
    assert!(
        ls.contains("host.airlock.internal     A     192.168.127.254          builtin\n"),
        "{ls}"
    );
    assert!(
        ls.contains("host.airlock.internal     AAAA  fd61:6972:c0a8:7f00::fe  builtin\n"),
        "{ls}"
    );

    assert_eq!(
        stdout(&net.airlock(&["dns", "add", "DB.Test.", "10.0.0.5"])),
        "added db.test A 10.0.0.5\n"
    );
    assert_eq!(
        stdout(&net.airlock(&["dns", "add", "db.test", "fd00::5"])),
        "added db.test AAAA fd00::5\n"
    );
    let v: Value = serde_json::from_str(&stdout(
        &net.airlock(&["--json", "dns", "add", "www.test", "db.test"]),
    ))
    .unwrap();
    assert_eq!(
        v,
        json!({"name": "www.test", "type": "CNAME", "value": "db.test", "source": "api"})
    );
    let ls = stdout(&net.airlock(&["dns", "ls"]));
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    for row in [
        ["db.test", "A", "10.0.0.5", "api"],
        ["db.test", "AAAA", "fd00::5", "api"],
        ["www.test", "CNAME", "db.test", "api"],
    ] {
        assert!(rows.iter().any(|r| *r == row), "{row:?} not in\n{ls}");
    }

    // The daemon's refusals: exit 1 with its reason.
    let err = failure(&net.airlock(&["dns", "add", "www.test", "10.0.0.6"]), 1);
    assert!(
        err.contains("a CNAME must be the name's only record (HTTP 409)"),
        "{err}"
    );
    let err = failure(&net.airlock(&["dns", "add", "bad name", "10.0.0.6"]), 1);
    assert!(err.contains("(HTTP 400)"), "{err}");
    let err = failure(&net.airlock(&["dns", "add", "x.test", "10.0.0"]), 1);
    assert!(
        err.contains("invalid value \"10.0.0\"") && err.contains("(HTTP 400)"),
        "{err}"
    );
    let err = failure(&net.airlock(&["dns", "rm", "host.airlock.internal"]), 1);
    assert!(
        err.contains("built-in names") && err.contains("(HTTP 403)"),
        "{err}"
    );

    assert_eq!(
        stdout(&net.airlock(&["dns", "rm", "db.test", "fd00::5"])),
        "removed db.test AAAA fd00::5\n"
    );
    assert_eq!(
        stdout(&net.airlock(&["dns", "rm", "db.test"])),
        "removed db.test A 10.0.0.5\n"
    );
    let err = failure(&net.airlock(&["dns", "rm", "db.test"]), 1);
    assert!(
        err.contains("no local DNS record db.test (HTTP 404)"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&stdout(&net.airlock(&["dns", "ls", "--json"]))).unwrap();
    let names: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"www.test") && !names.contains(&"db.test"),
        "{v}"
    );
    // The counters of the resolvers are in the stats.
    let stats = stdout(&net.airlock(&["stats"]));
    assert!(
        stats.contains("UPSTREAM") && stats.contains("127.0.0.1:53  up"),
        "{stats}"
    );
}
