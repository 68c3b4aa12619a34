//! Networks with a fast guest: the guest is the Linux kernel's own network
//! stack in a network namespace, so no emulated CPU stands between the
//! peers and their load. airlock-net is reached through the harness' TAP
//! bridge, which plays QEMU and vhost-net (`airlock_testkit::frontend::tap`);
//! pasta and slirp4netns attach to their namespaces themselves. Every peer
//! gets a namespace of its own, set up the same way, and the rows run on
//! each peer in turn, the order rotated every repetition.

pub mod load;
pub mod peers;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::net::{self as tcg, servers};
use crate::procfs;
use crate::results::{Cost, Failure, GroupRun, Resource, Row, Sample};
use crate::vm::{self, Guest};
use peers::{Peer, Served};

/// Errors of the group as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rig failed.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// A host helper failed.
    #[error(transparent)]
    Servers(#[from] servers::Error),
    /// A host helper failed.
    #[error(transparent)]
    Load(#[from] load::Error),
    /// A host server did not start listening.
    #[error(transparent)]
    Listen(#[from] tcg::Error),
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions.
    pub reps: u32,
    /// Length of each timed run.
    pub duration: Duration,
    /// Only these peers, if not empty.
    pub only_peers: Vec<String>,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    TcpUp(u8),
    TcpDown(u8),
    UdpUp,
    UdpDown,
    RoundTrip,
    Connections,
}

impl Test {
    fn label(self) -> String {
        let streams = |n: u8| {
            if n == 1 {
                "1 stream".to_string()
            } else {
                format!("{n} streams")
            }
        };
        match self {
            Test::TcpUp(n) => format!("iperf3 TCP guest→host, {}", streams(n)),
            Test::TcpDown(n) => format!("iperf3 TCP host→guest, {}", streams(n)),
            Test::UdpUp => "iperf3 UDP guest→host, 1400 B, received".into(),
            Test::UdpDown => "iperf3 UDP host→guest, 1400 B, received".into(),
            Test::RoundTrip => "TCP round trip, 1 byte each way".into(),
            Test::Connections => "connections/s host→guest through a published port".into(),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Test::RoundTrip => "µs",
            Test::Connections => "conn/s",
            _ => "Mbit/s",
        }
    }

    fn higher_is_better(self) -> bool {
        self != Test::RoundTrip
    }
}

/// The tables: each namespace's MTU and the rows run at it.
const TABLES: [(u32, &[Test]); 2] = [
    (
        65520,
        &[
            Test::TcpUp(1),
            Test::TcpUp(4),
            Test::TcpDown(1),
            Test::TcpDown(4),
            Test::UdpUp,
            Test::UdpDown,
            Test::RoundTrip,
            Test::Connections,
        ],
    ),
    (
        1500,
        &[
            Test::TcpUp(1),
            Test::TcpUp(4),
            Test::TcpDown(1),
            Test::TcpDown(4),
        ],
    ),
];

fn table(mtu: u32) -> String {
    format!("kernel-stack guest, MTU {mtu}")
}

/// Concurrent host clients in the published-port row.
const CONNECTION_CONCURRENCY: usize = 4;

/// A peer serving its namespace, and its host-side servers.
struct Running {
    served: Served,
    iperf_port: u16,
    published: u16,
    /// Its namespace's server behind the published port.
    _http: load::NsHttpServer,
}

fn setup_notes(options: &Options) -> Vec<String> {
    let secs = options.duration.as_secs();
    vec![
        "The guest is the host kernel's own network stack in a network namespace (one per peer, \
         made the same way: interface eth0, a static address, a default route via the peer, no \
         firewall rules), so the peers' own cost decides the numbers, not an emulated CPU. \
         airlock-net: the harness (this benchmark, one thread) plays QEMU and vhost-net: a TAP \
         with IFF_VNET_HDR in the namespace, frames read from it straight into the transmit \
         buffers of airlock-net's virtqueues and written to it from the receive buffers, the \
         TAP's offloads set from what airlock-net accepted (VERSION_1, EVENT_IDX, CSUM, \
         GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6 acknowledged as a Linux guest does; no mergeable \
         buffers: 256 receive and 256 transmit buffers of 64 KiB), static 192.168.127.2/24, the \
         host's 127.0.0.1 at 192.168.127.254. pasta: `pasta --config-net --netns NS -a 10.88.0.2 \
         -n 24 -g 10.88.0.1 -m 65520 -t 127.0.0.1/PORT:80 -u none -T none -U none -f --runas 0`, \
         the host's 127.0.0.1 at its gateway 10.88.0.1. slirp4netns: `slirp4netns --configure \
         --mtu=65520 --netns-type=path /run/netns/NS eth0`, the port published through its API \
         socket (`add_hostfwd`), the host's 127.0.0.1 at 10.0.2.2."
            .to_string(),
        format!(
            "Each table sets the namespaces' link MTU (`ip link set eth0 mtu …`); the peers keep \
             their own (65520). iperf3 3.12 in the namespace (`ip netns exec`) against an \
             `iperf3 -s` per peer on the host's 127.0.0.1, {secs} s per run, receiver-side \
             throughput; UDP with `-u -b 0 -l 1400`, what arrived."
        ),
        format!(
            "Round trip: one TCP connection from the namespace to a host echo server (TCP_NODELAY \
             both ends), one byte each way, as many as fit in {secs} s; the row is the mean time \
             of one. Published port: {CONNECTION_CONCURRENCY} host threads open connections to \
             127.0.0.1:PORT for {secs} s (connect, `GET / HTTP/1.0`, read to EOF), forwarded to a \
             server in the namespace on port 80 that answers and closes."
        ),
        "Cost: CPU time of each peer's process from /proc/PID/stat; for airlock-net the harness' \
         bridge thread (/proc/self/task/TID/stat) is shown next to it: it does what QEMU and \
         vhost-net would. Kernel work counts to the process whose system call causes it: a write \
         to the namespace's TAP runs the namespace's receive path (pasta's, slirp4netns' or the \
         harness' write), a write to a host socket the host's loopback TCP. So airlock-net plus \
         the harness compares with pasta or slirp4netns alone."
            .to_string(),
    ]
}

/// Runs the group into `out`.
pub fn run(options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    out.setup.extend(setup_notes(options));
    let peers: Vec<Peer> = peers::ALL
        .into_iter()
        .filter(|p| options.only_peers.is_empty() || options.only_peers.iter().any(|o| o == p.id))
        .collect();
    let mut rig = Guest::new("bench-netns")?;
    let echo = load::EchoServer::start()?;
    let mut running = Vec::new();
    for peer in peers {
        out.peers.push(peer.info());
        if let Some(why) = peer.unavailable() {
            fail(out, &peer, why);
            continue;
        }
        let iperf_port = servers::free_port()?;
        let mut iperf = Command::new("iperf3");
        iperf.args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]);
        rig.spawn_daemon(&format!("iperf3-{}", peer.id), iperf, None)?;
        tcg::wait_tcp_listening("iperf3 -s", iperf_port)?;
        let published = servers::free_port()?;
        let served = match peer.serve(&mut rig, published) {
            Ok(s) => s,
            Err(why) => {
                fail(out, &peer, why);
                continue;
            }
        };
        let http = load::NsHttpServer::start(&served.ns)?;
        log::info!("netns: {} serves {}", peer.label, served.ns.name());
        running.push(Running {
            served,
            iperf_port,
            published,
            _http: http,
        });
    }

    let started = Instant::now();
    let mut samples: Vec<Vec<Vec<Sample>>> = TABLES
        .iter()
        .map(|(_, tests)| vec![Vec::new(); tests.len() * running.len()])
        .collect();
    for rep in 0..options.reps {
        for (ti, &(mtu, tests)) in TABLES.iter().enumerate() {
            for r in &running {
                if let Err(why) = r.served.set_mtu(mtu) {
                    fail(out, &r.served.peer, why);
                }
            }
            for (ki, &test) in tests.iter().enumerate() {
                let n = running.len().max(1);
                for i in 0..running.len() {
                    let pi = (i + rep as usize) % n;
                    let r = &running[pi];
                    match measure(r, test, &echo, options) {
                        Ok(s) => samples[ti][ki * running.len() + pi].push(s),
                        Err(why) => fail(
                            out,
                            &r.served.peer,
                            format!("{}, MTU {mtu}: {why}", test.label()),
                        ),
                    }
                }
                log::info!(
                    "netns: MTU {mtu}, {} done ({:.0} s)",
                    test.label(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        log::info!("netns: repetition {}/{} done", rep + 1, options.reps);
    }
    for (ti, &(mtu, tests)) in TABLES.iter().enumerate() {
        for (ki, &test) in tests.iter().enumerate() {
            for (pi, r) in running.iter().enumerate() {
                let s = std::mem::take(&mut samples[ti][ki * running.len() + pi]);
                if !s.is_empty() {
                    out.rows.push(Row::new(
                        table(mtu),
                        test.label(),
                        r.served.peer.label,
                        test.unit(),
                        test.higher_is_better(),
                        s,
                    ));
                }
            }
        }
    }
    for r in &running {
        record_resources(out, r);
    }
    Ok(())
}

fn fail(out: &mut GroupRun, peer: &Peer, what: String) {
    log::warn!(
        "netns {}: {}",
        peer.label,
        what.lines().next().unwrap_or_default()
    );
    out.failures.push(Failure {
        table: table(TABLES[0].0),
        peer: peer.label.into(),
        what,
    });
}

fn record_resources(out: &mut GroupRun, r: &Running) {
    let pid = r.served.daemon.pid();
    let peer = r.served.peer.label;
    if let (Ok(cpu), Ok(memory)) = (procfs::cpu_time(pid), procfs::memory(pid)) {
        out.resources.push(Resource {
            table: table(TABLES[0].0),
            peer: peer.into(),
            process: peer.into(),
            cpu_s: cpu.as_secs_f64(),
            memory: Some(memory),
        });
    }
    if let Some(cpu) = r.served.harness_cpu() {
        out.resources.push(Resource {
            table: table(TABLES[0].0),
            peer: peer.into(),
            process: "harness: the TAP bridge thread (QEMU + vhost-net's part)".into(),
            cpu_s: cpu.as_secs_f64(),
            memory: None,
        });
    }
}

/// Runs one test on one peer.
fn measure(
    r: &Running,
    test: Test,
    echo: &load::EchoServer,
    options: &Options,
) -> Result<Sample, String> {
    if !r.served.healthy() {
        return Err("the peer (or the harness' bridge) stopped".into());
    }
    let pid = r.served.daemon.pid();
    let cpu = || procfs::cpu_time(pid).ok();
    let (d0, h0) = (cpu(), r.served.harness_cpu());
    let (value, bytes) = match test {
        Test::RoundTrip => {
            let alias = r.served.peer.host_alias;
            let server: SocketAddr = format!("{alias}:{}", echo.port)
                .parse()
                .map_err(|e| format!("{alias}: {e}"))?;
            (
                load::round_trip_us(&r.served.ns, server, options.duration)?,
                None,
            )
        }
        Test::Connections => {
            let addr = SocketAddr::from(([127, 0, 0, 1], r.published));
            let c = servers::connection_rate(addr, CONNECTION_CONCURRENCY, options.duration);
            if c.ok == 0 {
                return Err(format!(
                    "no connection through 127.0.0.1:{} reached the namespace's server ({} failed)",
                    r.published, c.failed
                ));
            }
            (c.ok as f64 / c.elapsed.as_secs_f64(), None)
        }
        _ => {
            let (bps, bytes) = iperf(r, test, options.duration)?;
            (bps / 1e6, Some(bytes))
        }
    };
    let (d1, h1) = (cpu(), r.served.harness_cpu());
    let delta = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b).map(|(a, b)| b.saturating_sub(a).as_secs_f64())
    };
    Ok(Sample {
        value,
        cost: delta(d0, d1).map(|cpu_s| Cost {
            cpu_s,
            qemu_cpu_s: None,
            harness_cpu_s: delta(h0, h1),
            bytes,
        }),
    })
}

/// iperf3 in the namespace against the peer's host server: receiver-side
/// bits/s and bytes.
fn iperf(r: &Running, test: Test, duration: Duration) -> Result<(f64, u64), String> {
    let secs = duration.as_secs().max(1);
    // A peer that stops answering must not hang the run.
    let limit = secs * 3 + 30;
    let mut cmd = r.served.ns.command("timeout");
    cmd.args([&limit.to_string(), "iperf3", "-J", "-c"])
        .arg(r.served.peer.host_alias)
        .args(["-p", &r.iperf_port.to_string(), "-t", &secs.to_string()]);
    match test {
        Test::TcpUp(n) => {
            cmd.args(["-P", &n.to_string()]);
        }
        Test::TcpDown(n) => {
            cmd.args(["-R", "-P", &n.to_string()]);
        }
        Test::UdpUp => {
            cmd.args(["-u", "-b", "0", "-l", "1400"]);
        }
        Test::UdpDown => {
            cmd.args(["-R", "-u", "-b", "0", "-l", "1400"]);
        }
        Test::RoundTrip | Test::Connections => unreachable!("not an iperf3 row"),
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    tcg::iperf_received(&String::from_utf8_lossy(&output.stdout))
}
