//! Backend-only virtio-net: the harness is the guest's network card and
//! sends or receives raw Ethernet frames through airlock-net, no guest
//! kernel in between.
//!
//! - **UDP guest→host**: IPv4/UDP frames from 192.168.127.2 to
//!   `host.airlock.internal` (192.168.127.254) at a UDP sink on the host's
//!   127.0.0.1, as fast as airlock-net takes them off the transmit queue.
//!   Counted at the sink: what really crossed.
//! - **UDP host→guest**: the harness sends one datagram to a host source,
//!   which then blasts datagrams back at the address it came from (the
//!   airlock-net flow socket); counted as frames arriving in the harness'
//!   receive buffers.
//!
//! - **TCP** both ways: smoltcp in the harness as the guest's stack, one
//!   stream to a host sink / from a host source on 127.0.0.1 (see
//!   [`super::tcp`]).
//!
//! Sizes: 1500-byte IP packets (1472-byte UDP payloads, MSS 1460) and
//! 65520-byte ones (airlock-net's default MTU). Gbit/s are payload bits.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::tcp::{self, Direction};
use super::Options;
use crate::machine::binary_version;
use crate::machine::PeerInfo;
use crate::procfs;
use crate::results::{Cost, Failure, GroupRun, Resource, Row, Sample};
use crate::vm::{sibling_binary, Guest};
use airlock_testkit::frontend::device::{self, Device, Setup};
use airlock_testkit::frontend::frames::{self, GATEWAY_IP, HOST_IP};
use airlock_testkit::frontend::netdev::{self, NetDev};

/// Errors of the network harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The virtio-net driver failed.
    #[error(transparent)]
    Driver(#[from] netdev::Error),
    /// Connecting to the daemon failed.
    #[error(transparent)]
    Device(#[from] device::Error),
    /// A host socket failed.
    #[error("host socket: {what}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The gateway did not answer ARP.
    #[error("no ARP reply from the gateway {0:?}")]
    NoArp([u8; 4]),
    /// The TCP test failed.
    #[error(transparent)]
    Tcp(#[from] tcp::Error),
    /// Nothing arrived at all.
    #[error("no traffic arrived in {0:?}")]
    Silent(Duration),
}

fn socket_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Socket { what, source }
}

/// The peer name in the tables.
pub const AIRLOCK_NET: &str = "airlock-net";
/// Throughput table.
pub const GBITS_TABLE: &str = "virtio-net Gbit/s (payload)";
/// Packet rate table.
pub const PPS_TABLE: &str = "virtio-net packets/s";
/// IP packet sizes measured.
const IP_SIZES: [(usize, &str); 2] = [(1500, "1500 B"), (65520, "64 KiB")];
/// Warm-up before counting.
const WARMUP: Duration = Duration::from_millis(300);

/// Transport of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
    }
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::ToHost => "guest→host",
            Direction::ToGuest => "host→guest",
        }
    }
}

/// One TCP stream through airlock-net with the harness' smoltcp as the
/// guest stack, `ip_size` as its MTU.
fn tcp_stream(
    net: &mut NetDev,
    direction: Direction,
    ip_size: usize,
    duration: Duration,
    pid: u32,
    local_port: u16,
) -> Result<Delivered, Error> {
    let before = cpu(pid);
    let started = Instant::now();
    let moved = tcp::stream(net, direction, ip_size, duration, local_port)?;
    let total = started.elapsed();
    let after = cpu(pid);
    // The CPU counters span the whole call (with its warm-up); scale them
    // to the measuring window.
    let scale = moved.elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9);
    Ok(Delivered {
        packets: 0,
        payload_bytes: moved.bytes,
        elapsed: moved.elapsed,
        cpu_s: before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b).as_secs_f64() * scale),
    })
}

/// Enlarges a socket's receive or send buffer (best effort).
fn set_buffer(socket: &UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live
    // c_int; the fd belongs to `socket` for the whole call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A UDP sink on 127.0.0.1 counting datagrams and bytes.
struct Sink {
    port: u16,
    datagrams: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Sink, Error> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(socket_err("bind the sink"))?;
        set_buffer(&socket, libc::SO_RCVBUF, 16 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(socket_err("set the sink's timeout"))?;
        let port = socket
            .local_addr()
            .map_err(socket_err("sink address"))?
            .port();
        let datagrams = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, b, s) = (datagrams.clone(), bytes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    d.fetch_add(1, Ordering::Relaxed);
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Sink {
            port,
            datagrams,
            bytes,
            stop,
            thread: Some(thread),
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.datagrams.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP source on 127.0.0.1: after the first datagram arrives, it sends
/// `payload`-byte datagrams back to its sender until stopped.
struct Source {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Source {
    fn start(payload: usize) -> Result<Source, Error> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(socket_err("bind the source"))?;
        set_buffer(&socket, libc::SO_SNDBUF, 4 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(socket_err("set the source's timeout"))?;
        let port = socket
            .local_addr()
            .map_err(socket_err("source address"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 64];
            let peer: SocketAddr = loop {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    break from;
                }
            };
            let data = vec![0x5a_u8; payload];
            while !s.load(Ordering::Relaxed) {
                for _ in 0..32 {
                    // Loopback UDP drops at the receiver when it is full;
                    // errors (ENOBUFS) are as good as drops here.
                    let _ = socket.send_to(&data, peer);
                }
            }
        });
        Ok(Source {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one timed run delivered.
struct Delivered {
    packets: u64,
    payload_bytes: u64,
    elapsed: Duration,
    cpu_s: Option<f64>,
}

impl Delivered {
    fn gbits(&self) -> f64 {
        self.payload_bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }

    fn pps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64()
    }
}

fn resolve_gateway(net: &mut NetDev) -> Result<[u8; 6], Error> {
    net.resolve(GATEWAY_IP)?.ok_or(Error::NoArp(GATEWAY_IP))
}

fn cpu(pid: u32) -> Option<Duration> {
    procfs::cpu_time(pid).ok()
}

fn udp_to_host(
    net: &mut NetDev,
    gw: [u8; 6],
    ip_size: usize,
    duration: Duration,
    pid: u32,
) -> Result<Delivered, Error> {
    let payload = ip_size - 28;
    let sink = Sink::start()?;
    let frame = frames::udp(gw, 40000, HOST_IP, sink.port, payload);
    net.prefill(&frame)?;
    let start = Instant::now();
    let mut marks = None;
    loop {
        let now = Instant::now();
        if marks.is_none() && now >= start + WARMUP {
            marks = Some((now, sink.counts(), cpu(pid)));
        }
        if let Some((t0, _, _)) = marks {
            if now >= t0 + duration {
                break;
            }
        }
        while net.resend(frame.len())? {}
        net.flush()?;
        net.wait(Duration::from_millis(20))?;
        net.reap_tx()?;
        net.poll_rx(0, |_| {})?;
    }
    let end = Instant::now();
    let (after, cpu_after) = (sink.counts(), cpu(pid));
    let Some((t0, before, cpu_before)) = marks else {
        return Err(Error::Silent(duration));
    };
    // Let the queue drain before the next test.
    let drain = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain {
        net.wait(Duration::from_millis(20))?;
        net.reap_tx()?;
        net.poll_rx(0, |_| {})?;
    }
    if after.0 == before.0 {
        return Err(Error::Silent(duration));
    }
    Ok(Delivered {
        packets: after.0 - before.0,
        payload_bytes: after.1 - before.1,
        elapsed: end - t0,
        cpu_s: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| a.saturating_sub(b).as_secs_f64()),
    })
}

fn udp_to_guest(
    net: &mut NetDev,
    gw: [u8; 6],
    ip_size: usize,
    duration: Duration,
    pid: u32,
) -> Result<Delivered, Error> {
    const PORT: u16 = 40001;
    let payload = ip_size - 28;
    let source = Source::start(payload)?;
    let trigger = frames::udp(gw, PORT, HOST_IP, source.port, 1);
    let start = Instant::now();
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut marks = None;
    let mut last_trigger = None::<Instant>;
    loop {
        let now = Instant::now();
        if packets == 0 && last_trigger.is_none_or(|t| now >= t + Duration::from_millis(500)) {
            if now >= start + Duration::from_secs(5) {
                return Err(Error::Silent(Duration::from_secs(5)));
            }
            net.send(&trigger)?;
            net.flush()?;
            last_trigger = Some(now);
        }
        if marks.is_none() && packets > 0 && now >= start + WARMUP {
            marks = Some((now, packets, bytes, cpu(pid)));
        }
        if let Some((t0, ..)) = marks {
            if now >= t0 + duration {
                break;
            }
        }
        net.wait(Duration::from_millis(20))?;
        net.reap_tx()?;
        net.poll_rx(frames::UDP_HEADERS, |f| {
            if let Some((PORT, len)) = frames::udp_to_guest(f.head) {
                packets += 1;
                bytes += len as u64;
            }
        })?;
    }
    let end = Instant::now();
    let cpu_after = cpu(pid);
    drop(source);
    let Some((t0, p0, b0, cpu_before)) = marks else {
        return Err(Error::Silent(duration));
    };
    let drain = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain {
        net.wait(Duration::from_millis(20))?;
        net.poll_rx(0, |_| {})?;
    }
    Ok(Delivered {
        packets: packets - p0,
        payload_bytes: bytes - b0,
        elapsed: end - t0,
        cpu_s: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| a.saturating_sub(b).as_secs_f64()),
    })
}

fn start_airlock_net(rig: &mut Guest, dir: &Path) -> Result<(u32, std::path::PathBuf), String> {
    let binary = sibling_binary("airlock-net");
    if !binary.is_file() {
        return Err(format!("{} is not built", binary.display()));
    }
    let socket = dir.join("net.sock");
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(["--log-level", "warn"]);
    let daemon = rig
        .spawn_daemon("airlock-net", cmd, Some(&socket))
        .map_err(|e| airlock_common::report::chain(&e))?;
    Ok((daemon.pid(), socket))
}

/// Runs the UDP tests into `out`.
pub fn run(options: &Options, out: &mut GroupRun) {
    if !(options.only_peers.is_empty() || options.only_peers.iter().any(|p| p == AIRLOCK_NET)) {
        return;
    }
    out.peers.push(PeerInfo {
        name: AIRLOCK_NET.into(),
        version: binary_version(&sibling_binary("airlock-net"))
            + " (this workspace, release build)",
    });
    out.setup.push(
        "virtio-net: the harness is the guest (192.168.127.2, static, no DHCP): VERSION_1 + EVENT_IDX \
         (+ CSUM/GUEST_CSUM when offered, as Linux acks them), no mergeable buffers, 256 receive buffers \
         of 64 KiB + header, 256 transmit buffers. UDP guest→host: frames to host.airlock.internal at a \
         UDP sink on the host's 127.0.0.1, counted at the sink. UDP host→guest: a host source on \
         127.0.0.1 blasts datagrams back to the airlock-net flow that reached it, counted in the \
         harness. TCP: smoltcp 0.14 in the harness as the guest stack (4 MiB socket buffers, \
         checksums computed in software), one stream to a host sink or from a host source on \
         127.0.0.1 through host.airlock.internal; airlock-net at its defaults (256 KiB per-flow \
         buffers). 1500 B = 1500-byte IP packets (MTU 1500), 64 KiB = 65520-byte ones \
         (airlock-net's MTU); Gbit/s of payload."
            .into(),
    );
    if let Err(what) = run_udp(options, out) {
        out.failures.push(Failure {
            table: GBITS_TABLE.into(),
            peer: AIRLOCK_NET.into(),
            what,
        });
    }
}

fn run_udp(options: &Options, out: &mut GroupRun) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| airlock_common::report::chain(e);
    let mut rig = Guest::new("bench-backend-net").map_err(|e| chain(&e))?;
    let dir = rig.dir().to_path_buf();
    let (pid, socket) = start_airlock_net(&mut rig, &dir)?;
    let setup = Setup {
        queues: 2,
        queue_size: 256,
        features: device::F_EVENT_IDX | (1 << 0) | (1 << 1),
        memory: 64 << 20,
    };
    let dev = Device::connect(&socket, setup).map_err(|e| chain(&e))?;
    let mut net = NetDev::new(dev, 256, 256).map_err(|e| chain(&e))?;
    let gw = resolve_gateway(&mut net).map_err(|e| chain(&e))?;
    let mut tests: Vec<(Proto, Direction, usize, &str)> = Vec::new();
    for proto in [Proto::Udp, Proto::Tcp] {
        for dir in [Direction::ToHost, Direction::ToGuest] {
            for &(size, label) in &IP_SIZES {
                tests.push((proto, dir, size, label));
            }
        }
    }
    let mut samples: Vec<Vec<Delivered>> = tests.iter().map(|_| Vec::new()).collect();
    let mut local_port = 50000;
    for rep in 0..options.reps {
        for (i, &(proto, dir, size, label)) in tests.iter().enumerate() {
            local_port += 1;
            let result = match (proto, dir) {
                (Proto::Udp, Direction::ToHost) => {
                    udp_to_host(&mut net, gw, size, options.duration, pid)
                }
                (Proto::Udp, Direction::ToGuest) => {
                    udp_to_guest(&mut net, gw, size, options.duration, pid)
                }
                (Proto::Tcp, _) => {
                    tcp_stream(&mut net, dir, size, options.duration, pid, local_port)
                }
            };
            match result {
                Ok(d) => samples[i].push(d),
                Err(e) => out.failures.push(Failure {
                    table: GBITS_TABLE.into(),
                    peer: AIRLOCK_NET.into(),
                    what: format!("{} {} {label}: {}", proto.label(), dir.label(), chain(&e)),
                }),
            }
        }
        log::info!("backend net: repetition {}/{} done", rep + 1, options.reps);
    }
    for (&(proto, dir, _, label), s) in tests.iter().zip(&samples) {
        if s.is_empty() {
            continue;
        }
        let test = format!("{} {} {label}", proto.label(), dir.label());
        let gbits = s
            .iter()
            .map(|d| Sample {
                value: d.gbits(),
                cost: d.cpu_s.map(|cpu_s| Cost {
                    cpu_s,
                    qemu_cpu_s: None,
                    harness_cpu_s: None,
                    bytes: Some(d.payload_bytes),
                }),
            })
            .collect();
        out.rows.push(Row::new(
            GBITS_TABLE,
            &test,
            AIRLOCK_NET,
            "Gbit/s",
            true,
            gbits,
        ));
        if proto == Proto::Udp {
            let pps = s.iter().map(|d| Sample::value(d.pps())).collect();
            out.rows.push(Row::new(
                PPS_TABLE,
                &test,
                AIRLOCK_NET,
                "packets/s",
                true,
                pps,
            ));
        }
    }
    if let (Ok(cpu), Ok(memory)) = (procfs::cpu_time(pid), procfs::memory(pid)) {
        out.resources.push(Resource {
            table: GBITS_TABLE.into(),
            peer: AIRLOCK_NET.into(),
            process: AIRLOCK_NET.into(),
            cpu_s: cpu.as_secs_f64(),
            memory: Some(memory),
        });
    }
    Ok(())
}
