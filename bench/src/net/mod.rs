//! Networks, guest-level: one TCG guest with one NIC per peer (airlock-net,
//! passt, slirp); the host walks it through each test on each NIC in turn,
//! rotating the order every repetition. Every peer reaches the same host
//! servers on 127.0.0.1 through its own host alias.

pub mod peers;
pub mod script;
pub mod servers;

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::DaemonHandle;

use crate::procfs;
use crate::results::{Cost, Failure, GroupRun, Resource, Row, Sample};
use crate::stats::Summary;
use crate::vm::{self, Guest};
use peers::{Peer, Published};

/// Errors of a network run as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest or a daemon failed.
    #[error("guest run failed")]
    Vm(#[source] vm::Error),
    /// A directory could not be prepared.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host helper failed.
    #[error(transparent)]
    Servers(#[from] servers::Error),
    /// A host server did not start listening.
    #[error("{what} did not listen on 127.0.0.1:{port}")]
    NotListening {
        /// The server.
        what: String,
        /// Its port.
        port: u16,
    },
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions.
    pub reps: u32,
    /// iperf3 test length and connection-test length.
    pub duration: Duration,
    /// Requests in the round-trip test.
    pub round_trips: u32,
    /// Only these peers, if not empty.
    pub only_peers: Vec<String>,
}

const GUEST_MEMORY_MIB: u32 = 512;
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const VM_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Concurrent host clients in the published-port test.
const CONNECTION_CONCURRENCY: usize = 4;
/// The one table of this group.
pub const TABLE: &str = "TCG guest";

/// One test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    TcpUp1,
    TcpUp4,
    TcpDown1,
    TcpDown4,
    UdpUp,
    UdpDown,
    RoundTrip,
    Connections,
    PublishedDown,
    PublishedUp,
    /// The same as `TcpUp1` and `TcpDown1`, over IPv6 to the host's ::1
    /// (peers with an IPv6 host alias only).
    Tcp6Up1,
    Tcp6Down1,
}

const TESTS: [Test; 12] = [
    Test::TcpUp1,
    Test::TcpUp4,
    Test::TcpDown1,
    Test::TcpDown4,
    Test::Tcp6Up1,
    Test::Tcp6Down1,
    Test::UdpUp,
    Test::UdpDown,
    Test::RoundTrip,
    Test::Connections,
    Test::PublishedDown,
    Test::PublishedUp,
];

impl Test {
    fn id(self) -> &'static str {
        match self {
            Test::TcpUp1 | Test::Tcp6Up1 => "tcpup1",
            Test::TcpUp4 => "tcpup4",
            Test::TcpDown1 | Test::Tcp6Down1 => "tcpdown1",
            Test::TcpDown4 => "tcpdown4",
            Test::UdpUp => "udpup",
            Test::UdpDown => "udpdown",
            Test::RoundTrip => "rr",
            // The host drives these; the guest waits for `done`.
            Test::Connections | Test::PublishedDown | Test::PublishedUp => "wait",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Test::TcpUp1 => "iperf3 TCP guest→host, 1 stream",
            Test::TcpUp4 => "iperf3 TCP guest→host, 4 streams",
            Test::TcpDown1 => "iperf3 TCP host→guest, 1 stream",
            Test::TcpDown4 => "iperf3 TCP host→guest, 4 streams",
            Test::UdpUp => "iperf3 UDP guest→host, 1400 B, received",
            Test::UdpDown => "iperf3 UDP host→guest, 1400 B, received",
            Test::RoundTrip => "HTTP round trip on a kept-alive connection",
            Test::Connections => "connections/s host→guest through a published port",
            Test::PublishedDown => "iperf3 TCP host→guest through a published port",
            Test::PublishedUp => "iperf3 TCP guest→host through a published port",
            Test::Tcp6Up1 => "iperf3 TCP guest→host over IPv6, 1 stream",
            Test::Tcp6Down1 => "iperf3 TCP host→guest over IPv6, 1 stream",
        }
    }

    fn ipv6(self) -> bool {
        matches!(self, Test::Tcp6Up1 | Test::Tcp6Down1)
    }

    fn unit(self) -> &'static str {
        match self {
            Test::RoundTrip => "ms",
            Test::Connections => "conn/s",
            _ => "Mbit/s",
        }
    }

    fn higher_is_better(self) -> bool {
        !matches!(self, Test::RoundTrip)
    }
}

/// A NIC of the guest and what serves it.
struct Running {
    peer: Peer,
    daemon: Option<DaemonHandle>,
    iperf_port: u16,
    /// Its `iperf3 -s` on the host's ::1, for a peer with an IPv6 alias.
    iperf6_port: Option<u16>,
    published: Published,
}

/// Whether something listens on TCP 127.0.0.1:`port` (`/proc/net/tcp`).
fn tcp_listening(port: u16) -> bool {
    listening_in("/proc/net/tcp", &format!("0100007F:{port:04X}"))
}

/// Whether something listens on TCP [::1]:`port` (`/proc/net/tcp6`).
fn tcp6_listening(port: u16) -> bool {
    listening_in(
        "/proc/net/tcp6",
        &format!("00000000000000000000000001000000:{port:04X}"),
    )
}

/// Whether `table` (`/proc/net/tcp` or `tcp6`) has a listener at `local`
/// (its hexadecimal address:port).
fn listening_in(table: &str, local: &str) -> bool {
    let Ok(table) = fs::read_to_string(table) else {
        return false;
    };
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&local) && f.get(3) == Some(&"0A")
    })
}

/// Waits until something listens on TCP [::1]:`port`.
fn wait_tcp6_listening(what: &str, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp6_listening(port) {
        if Instant::now() >= deadline {
            return Err(Error::NotListening {
                what: what.to_string(),
                port,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until something on the host listens on TCP `port` of any address.
pub(crate) fn wait_tcp_listening(what: &str, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_listening(port) {
        if Instant::now() >= deadline {
            return Err(Error::NotListening {
                what: what.to_string(),
                port,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn setup_notes(options: &Options) -> Vec<String> {
    vec![
        format!(
            "One TCG guest ({GUEST_MEMORY_MIB} MiB, 1 vCPU) with one virtio-net NIC per peer, told apart by MAC; \
             each configured by busybox udhcpc applying the offered MTU (airlock-net and passt offer 65520, \
             slirp has 1500). The guest reaches the host's 127.0.0.1 through each peer's alias: airlock-net \
             192.168.127.254 (host.airlock.internal), airlock-net's stream transport (`--transport stream \
             --subnet 192.168.128.0/24`, QEMU's `-netdev stream` like passt) 192.168.128.254, passt its gateway 10.88.0.1 (passt maps the gateway \
             to the host; run with `-a 10.88.0.2 -n 24 -g 10.88.0.1`), slirp 10.0.2.2. Tests run on each \
             NIC in turn, the order rotated every repetition."
        ),
        format!(
            "iperf3 3.12 in the guest against an `iperf3 -s` per peer on the host's 127.0.0.1, {} s per run, \
             receiver-side throughput (`end.sum_received`); UDP with `-u -b 0 -l 1400` (no rate limit, \
             1400-byte datagrams to fit every MTU), what arrived.",
            options.duration.as_secs()
        ),
        "IPv6 rows (airlock-net only: the other peers' IPv6 is not set up here): the same iperf3 \
         runs against an `iperf3 -s -B ::1` on the host, through airlock-net's IPv6 host alias \
         fd61:6972:c0a8:7f00::fe (PREFIX::fe, the host's ::1); the guest's address comes from \
         SLAAC on airlock-net's Router Advertisements."
            .to_string(),
        format!(
            "Round trip: `curl` in the guest fetches a 1-byte response {} times over one kept-alive \
             connection from a host HTTP responder (TCP_NODELAY); the row is the median of curl's \
             per-request `time_total`, so it includes curl's own per-request work in the TCG guest.",
            options.round_trips
        ),
        format!(
            "Published port: {CONNECTION_CONCURRENCY} host threads open connections to 127.0.0.1:PORT for {} s \
             (connect, `GET / HTTP/1.0`, read to EOF) forwarded to busybox httpd on the guest's port 80 \
             (it forks per connection): airlock-net `--publish 127.0.0.1:PORT:80`, passt `-t 127.0.0.1/PORT:80`, \
             slirp `hostfwd=tcp:127.0.0.1:PORT-:80`. Throughput through a published port: `iperf3 -c \
             127.0.0.1 -p PORT2 -t {}` on the host (`-R` for guest→host) to `iperf3 -s` in the guest, \
             published the same way to the guest's port 5201; receiver-side throughput.",
            options.duration.as_secs(),
            options.duration.as_secs()
        ),
        "Cost: CPU time of airlock-net and passt from /proc/PID/stat; slirp runs inside QEMU, so its cost \
         is QEMU's CPU time outside the vCPU thread (`-name debug-threads=on`), which also holds QEMU's \
         virtio-net emulation. passt's NIC is emulated by QEMU as well; its QEMU share is shown next to \
         passt's own."
            .to_string(),
        "gvisor-tap-vsock's gvproxy is not measured: it is not packaged in Debian bookworm, and neither \
         the Go module proxy nor GitHub is reachable from this machine."
            .to_string(),
    ]
}

/// Runs the network group into `out`.
pub fn run(options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    out.setup.extend(setup_notes(options));
    let peers: Vec<Peer> = peers::ALL
        .into_iter()
        .filter(|p| options.only_peers.is_empty() || options.only_peers.iter().any(|o| o == p.id))
        .collect();
    for p in &peers {
        out.peers.push(p.info());
    }
    let mut guest = Guest::new("bench-net").map_err(Error::Vm)?;
    let dir: PathBuf = guest.dir().to_path_buf();
    let rr_server = servers::RoundTripServer::start()?;
    let mut running = Vec::new();
    let mut qemu_args: Vec<OsString> = vec!["-name".into(), "bench,debug-threads=on".into()];
    for peer in peers {
        if let Some(why) = peer.unavailable() {
            fail(out, &peer, why);
            continue;
        }
        let iperf_port = servers::free_port()?;
        let mut iperf = Command::new("iperf3");
        iperf.args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]);
        guest
            .spawn_daemon(&format!("iperf3-{}", peer.id), iperf, None)
            .map_err(Error::Vm)?;
        wait_tcp_listening("iperf3 -s", iperf_port)?;
        let iperf6_port = match peer.host_alias6 {
            Some(_) => {
                let port = servers::free_port()?;
                let mut iperf = Command::new("iperf3");
                iperf.args(["-s", "-B", "::1", "-p", &port.to_string()]);
                guest
                    .spawn_daemon(&format!("iperf3-v6-{}", peer.id), iperf, None)
                    .map_err(Error::Vm)?;
                wait_tcp6_listening("iperf3 -s -B ::1", port)?;
                Some(port)
            }
            None => None,
        };
        let published = Published {
            http: servers::free_port()?,
            iperf: servers::free_port()?,
        };
        // passt drops to nobody before binding its socket: give it a
        // directory it may write to (the rig's own is root's, mode 0700).
        let sock_dir = dir.join(format!("sock-{}", peer.id));
        let prepare = |path: &std::path::Path, mode: u32| -> Result<(), Error> {
            let io = |source| Error::Prepare {
                path: path.to_path_buf(),
                source,
            };
            fs::create_dir_all(path).map_err(io)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)
        };
        prepare(&dir, 0o711)?;
        prepare(&sock_dir, 0o777)?;
        let socket = sock_dir.join(format!("{}.sock", peer.id));
        let daemon = match peer.command(&socket, published) {
            Some(cmd) => match guest.spawn_daemon(peer.id, cmd, Some(&socket)) {
                Ok(d) => Some(d),
                Err(e) => {
                    fail(out, &peer, airlock_common::report::chain(&e));
                    continue;
                }
            },
            None => None,
        };
        qemu_args.extend(peer.qemu_args(&socket, published));
        running.push(Running {
            peer,
            daemon,
            iperf_port,
            iperf6_port,
            published,
        });
    }
    let active: Vec<Peer> = running.iter().map(|r| r.peer).collect();
    guest
        .boot(
            script::guest_script(&active),
            qemu_args,
            GUEST_MEMORY_MIB,
            VM_TIMEOUT,
        )
        .map_err(Error::Vm)?;
    let qemu_pid = guest.qemu_pid();
    let text = guest
        .wait_for(script::READY, READY_TIMEOUT)
        .map_err(Error::Vm)?;
    let nets = script::parse_nets(&text);
    running.retain(|r| match nets.iter().find(|n| n.0 == r.peer.id) {
        Some((_, iface, 0, mtu, addr)) => {
            let addr6 = script::parse_net6(&text, r.peer.id)
                .filter(|a| !a.is_empty())
                .map(|a| format!(", {a}"))
                .unwrap_or_default();
            out.setup.push(format!(
                "{}: guest {iface}, MTU {mtu}, {addr}{addr6}",
                r.peer.label
            ));
            true
        }
        _ => {
            fail(out, &r.peer, format!("DHCP failed in the guest:\n{text}"));
            false
        }
    });

    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); TESTS.len()]; running.len()];
    let started = Instant::now();
    for rep in 0..options.reps {
        for (ti, &test) in TESTS.iter().enumerate() {
            let n = running.len().max(1);
            for i in 0..running.len() {
                let pi = (i + rep as usize) % n;
                let r = &running[pi];
                if test.ipv6() && r.iperf6_port.is_none() {
                    continue;
                }
                match step(&mut guest, r, &rr_server, test, options, qemu_pid)? {
                    Ok(sample) => samples[pi][ti].push(sample),
                    Err(why) => fail(out, &r.peer, format!("{}: {why}", test.label())),
                }
            }
            log::info!(
                "net: {} done ({:.0} s)",
                test.label(),
                started.elapsed().as_secs_f64()
            );
        }
        log::info!("net: repetition {}/{} done", rep + 1, options.reps);
    }
    for r in &running {
        record_resources(out, r, qemu_pid);
    }
    guest.send("quit").map_err(Error::Vm)?;
    if let Err(e) = guest.finish() {
        log::warn!("net: {}", airlock_common::report::chain(&e));
    }
    for (pi, r) in running.iter().enumerate() {
        for (ti, &test) in TESTS.iter().enumerate() {
            let s = std::mem::take(&mut samples[pi][ti]);
            if !s.is_empty() {
                out.rows.push(Row::new(
                    TABLE,
                    test.label(),
                    r.peer.label,
                    test.unit(),
                    test.higher_is_better(),
                    s,
                ));
            }
        }
    }
    Ok(())
}

fn fail(out: &mut GroupRun, peer: &Peer, what: String) {
    log::warn!(
        "net {}: {}",
        peer.label,
        what.lines().next().unwrap_or_default()
    );
    out.failures.push(Failure {
        table: TABLE.into(),
        peer: peer.label.into(),
        what,
    });
}

fn record_resources(out: &mut GroupRun, r: &Running, qemu_pid: Option<u32>) {
    let (pid, process, cpu) = match &r.daemon {
        Some(d) => (d.pid(), r.peer.label.to_string(), procfs::cpu_time(d.pid())),
        None => match qemu_pid {
            Some(pid) => (
                pid,
                "QEMU outside its vCPU thread, all NICs; RSS includes guest RAM".to_string(),
                procfs::qemu_device_cpu_time(pid),
            ),
            None => return,
        },
    };
    if let (Ok(cpu), Ok(memory)) = (cpu, procfs::memory(pid)) {
        out.resources.push(Resource {
            table: TABLE.into(),
            peer: r.peer.label.into(),
            process,
            cpu_s: cpu.as_secs_f64(),
            memory: Some(memory),
        });
    }
}

/// iperf3's receiver throughput (bits/s) and bytes from its JSON.
pub(crate) fn iperf_received(json: &str) -> Result<(f64, u64), String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("iperf3 output is not JSON ({e}): {json}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let sum = v
        .get("end")
        .and_then(|e| e.get("sum_received"))
        .ok_or_else(|| "iperf3 output has no end.sum_received".to_string())?;
    let bps = sum
        .get("bits_per_second")
        .and_then(|b| b.as_f64())
        .unwrap_or(0.0);
    let bytes = sum.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0);
    Ok((bps, bytes))
}

/// `iperf3 -c 127.0.0.1 -p PORT` on the host, through a published port to
/// the guest's `iperf3 -s`; `reverse`: the guest sends. Receiver-side
/// bits/s and bytes.
fn host_iperf_client(port: u16, duration: Duration, reverse: bool) -> Result<(f64, u64), String> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J"])
        .args(["-t", &duration.as_secs().max(1).to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    iperf_received(&String::from_utf8_lossy(&out.stdout))
}

/// The median of curl's per-request times, in ms.
fn round_trip_ms(text: &str) -> Result<f64, String> {
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    Summary::of(&times)
        .map(|s| s.median)
        .ok_or_else(|| format!("no timings in curl's output: {text}"))
}

fn step(
    guest: &mut Guest,
    r: &Running,
    rr: &servers::RoundTripServer,
    test: Test,
    options: &Options,
    qemu_pid: Option<u32>,
) -> Result<Result<Sample, String>, Error> {
    let mut alias = r.peer.host_alias;
    let (port, arg) = match test {
        Test::RoundTrip => (rr.port, options.round_trips.to_string()),
        Test::Tcp6Up1 | Test::Tcp6Down1 => {
            let (Some(a), Some(port)) = (r.peer.host_alias6, r.iperf6_port) else {
                return Ok(Err("no IPv6 host alias".into()));
            };
            alias = a;
            (port, options.duration.as_secs().max(1).to_string())
        }
        Test::Connections | Test::PublishedDown | Test::PublishedUp => {
            (r.published.http, "-".to_string())
        }
        _ => (r.iperf_port, options.duration.as_secs().max(1).to_string()),
    };
    guest
        .send(&format!(
            "run {} {} {alias} {port} {arg}",
            test.id(),
            r.peer.id,
        ))
        .map_err(Error::Vm)?;
    guest
        .wait_for(script::PREPPED, Duration::from_secs(60))
        .map_err(Error::Vm)?;
    let daemon_cpu = || {
        r.daemon
            .as_ref()
            .and_then(|d| procfs::cpu_time(d.pid()).ok())
    };
    let qemu_cpu = || qemu_pid.and_then(|p| procfs::qemu_device_cpu_time(p).ok());
    let (d0, q0) = (daemon_cpu(), qemu_cpu());
    guest.send("go").map_err(Error::Vm)?;
    let mut connections = None;
    let mut host_iperf = None;
    if test == Test::Connections {
        let addr = SocketAddr::from(([127, 0, 0, 1], r.published.http));
        connections = Some(servers::connection_rate(
            addr,
            CONNECTION_CONCURRENCY,
            options.duration,
        ));
        guest.send("done").map_err(Error::Vm)?;
    } else if matches!(test, Test::PublishedDown | Test::PublishedUp) {
        host_iperf = Some(host_iperf_client(
            r.published.iperf,
            options.duration,
            test == Test::PublishedUp,
        ));
        guest.send("done").map_err(Error::Vm)?;
    }
    let timeout = options.duration * 3 + Duration::from_secs(180);
    let text = guest.wait_for(script::RESULT, timeout).map_err(Error::Vm)?;
    let (d1, q1) = (daemon_cpu(), qemu_cpu());
    let output = script::output(&text).unwrap_or_default();
    let status = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(script::RESULT))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(-1);
    if status != 0 {
        return Ok(Err(format!(
            "exit status {status}: {}",
            output.lines().take(5).collect::<Vec<_>>().join(" / ")
        )));
    }
    let delta = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b).map(|(a, b)| b.saturating_sub(a).as_secs_f64())
    };
    let qemu_cpu_s = delta(q0, q1);
    let cpu_s = if r.daemon.is_some() {
        delta(d0, d1)
    } else {
        qemu_cpu_s
    };
    let (value, bytes) = match test {
        Test::RoundTrip => match round_trip_ms(output) {
            Ok(ms) => (ms, None),
            Err(e) => return Ok(Err(e)),
        },
        Test::Connections => {
            let c = connections.unwrap_or(servers::Connections {
                ok: 0,
                failed: 0,
                elapsed: options.duration,
            });
            if c.ok == 0 {
                return Ok(Err(format!(
                    "no connection through 127.0.0.1:{} reached the guest's httpd ({} failed)",
                    r.published.http, c.failed
                )));
            }
            (c.ok as f64 / c.elapsed.as_secs_f64(), None)
        }
        Test::PublishedDown | Test::PublishedUp => {
            match host_iperf.unwrap_or_else(|| Err("no host iperf3 run".into())) {
                Ok((bps, bytes)) => (bps / 1e6, Some(bytes)),
                Err(e) => return Ok(Err(e)),
            }
        }
        _ => match iperf_received(output) {
            Ok((bps, bytes)) => (bps / 1e6, Some(bytes)),
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(Sample {
        value,
        cost: cpu_s.map(|cpu_s| Cost {
            cpu_s,
            qemu_cpu_s: if r.daemon.is_some() { qemu_cpu_s } else { None },
            harness_cpu_s: None,
            bytes,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_and_curl_outputs_parse() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":1.5e8,"bytes":1000}}}"#;
        assert_eq!(iperf_received(json).unwrap(), (1.5e8, 1000));
        assert!(iperf_received(r#"{"error":"unable to connect"}"#)
            .unwrap_err()
            .contains("unable"));
        assert!(iperf_received("garbage").is_err());
        assert_eq!(round_trip_ms("0.001\n0.003\n0.002\n").unwrap(), 2.0);
        assert!(round_trip_ms("curl: (7) failed").is_err());
    }

    #[test]
    fn proc_net_tcp_sees_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening(port));
        assert!(!tcp6_listening(port));
        drop(l);
        assert!(!tcp_listening(port));
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp6_listening(port));
        assert!(!tcp_listening(port));
    }
}
