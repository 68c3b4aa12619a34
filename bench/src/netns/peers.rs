//! The peers serving a namespace: airlock-net through the harness' TAP
//! bridge (which plays QEMU and vhost-net), pasta and slirp4netns, each
//! attached to a network namespace of its own, set up the same way: one
//! interface `eth0`, a static address, a default route, the host's
//! 127.0.0.1 reached through the peer's host alias, one TCP port of the
//! host's 127.0.0.1 published to port 80 in the namespace.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::{DaemonHandle, NetNs};
use airlock_testkit::frontend::device::{self, Device, Setup};
use airlock_testkit::frontend::tap::{features, Tap, TapBridge};

use crate::machine::{binary_version, debian_version, first_line_of, PeerInfo};
use crate::vm::{self, sibling_binary, Guest};

/// What serves a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// airlock-net over vhost-user, the harness bridging its queues to a
    /// TAP; `tso`: segmentation offload offered (the default).
    AirlockNet {
        /// Whether segmentation offload is on.
        tso: bool,
    },
    /// pasta (passt's namespace mode): its own TAP in the namespace.
    Pasta,
    /// slirp4netns: its own TAP in the namespace.
    Slirp4netns,
}

/// One peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Id (`--peer`, namespace and log names).
    pub id: &'static str,
    /// Name in the tables.
    pub label: &'static str,
    /// What it is.
    pub kind: Kind,
    /// The namespace's address and prefix on eth0.
    pub cidr: &'static str,
    /// Its default gateway.
    pub gateway: &'static str,
    /// Where the namespace reaches the host's 127.0.0.1.
    pub host_alias: &'static str,
}

/// airlock-net at its defaults.
pub const AIRLOCK_NET: Peer = Peer {
    id: "airlock-net",
    label: "airlock-net",
    kind: Kind::AirlockNet { tso: true },
    cidr: "192.168.127.2/24",
    gateway: "192.168.127.1",
    host_alias: "192.168.127.254",
};
/// airlock-net without segmentation offload: what TSO changes.
pub const AIRLOCK_NET_NO_TSO: Peer = Peer {
    id: "airlock-net-no-tso",
    label: "airlock-net --no-segmentation-offload",
    kind: Kind::AirlockNet { tso: false },
    ..AIRLOCK_NET
};
/// pasta, with an explicit subnet so it does not copy the host's.
pub const PASTA: Peer = Peer {
    id: "pasta",
    label: "pasta",
    kind: Kind::Pasta,
    cidr: "10.88.0.2/24",
    gateway: "10.88.0.1",
    host_alias: "10.88.0.1",
};
/// slirp4netns at its defaults (10.0.2.0/24, host loopback at 10.0.2.2).
pub const SLIRP4NETNS: Peer = Peer {
    id: "slirp4netns",
    label: "slirp4netns",
    kind: Kind::Slirp4netns,
    cidr: "10.0.2.100/24",
    gateway: "10.0.2.2",
    host_alias: "10.0.2.2",
};

/// Every peer, in table order.
pub const ALL: [Peer; 4] = [AIRLOCK_NET, PASTA, SLIRP4NETNS, AIRLOCK_NET_NO_TSO];

/// The namespace's interface.
pub const IFACE: &str = "eth0";
/// The MTU every namespace starts with (airlock-net's and pasta's).
pub const MTU: u32 = 65520;
/// Queue size and buffers of the harness' virtio-net driver.
const QUEUE_SIZE: u16 = 256;

/// A peer serving its namespace.
pub struct Served {
    /// The peer.
    pub peer: Peer,
    /// The harness' TAP bridge (airlock-net only); stopped first.
    pub bridge: Option<TapBridge>,
    /// The peer's process (stopped by the rig).
    pub daemon: DaemonHandle,
    /// The namespace, deleted last.
    pub ns: NetNs,
}

impl Peer {
    /// The daemon's binary.
    fn binary(&self) -> std::path::PathBuf {
        match self.kind {
            Kind::AirlockNet { .. } => sibling_binary("airlock-net"),
            Kind::Pasta => "/usr/bin/pasta".into(),
            Kind::Slirp4netns => "/usr/bin/slirp4netns".into(),
        }
    }

    /// Why it cannot run here, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        let binary = self.binary();
        (!binary.is_file()).then(|| format!("{} is not installed", binary.display()))
    }

    /// Name and version.
    pub fn info(&self) -> PeerInfo {
        let version = match self.kind {
            Kind::AirlockNet { .. } => {
                binary_version(&self.binary()) + " (this workspace, release build)"
            }
            Kind::Pasta => format!("Debian passt {}", debian_version("passt")),
            Kind::Slirp4netns => format!(
                "Debian slirp4netns {} ({})",
                debian_version("slirp4netns"),
                first_line_of(Command::new("slirp4netns").arg("--version"))
            ),
        };
        PeerInfo {
            name: self.label.to_string(),
            version,
        }
    }

    /// Makes the namespace, starts the peer on it publishing host port
    /// `published` (on 127.0.0.1) to port 80 in the namespace, and waits
    /// until the namespace's interface is configured.
    pub fn serve(&self, rig: &mut Guest, published: u16) -> Result<Served, String> {
        let ns = vm::guard(format!("creating the namespace of {}", self.id), || {
            NetNs::new(self.id)
        })
        .map_err(|e| e.to_string())?;
        let (daemon, bridge) = match self.kind {
            Kind::AirlockNet { tso } => self.serve_airlock(rig, &ns, published, tso)?,
            Kind::Pasta => {
                let mut cmd = Command::new(self.binary());
                cmd.args(["--config-net", "--netns", ns.name(), "-I", IFACE])
                    .args(["-f", "-q", "--runas", "0", "-4"])
                    .args(["-a", "10.88.0.2", "-n", "24", "-g", self.gateway])
                    .args(["-m", &MTU.to_string()])
                    .args(["-t", &format!("127.0.0.1/{published}:80")])
                    .args(["-u", "none", "-T", "none", "-U", "none"]);
                let d = rig
                    .spawn_daemon(self.id, cmd, None)
                    .map_err(|e| airlock_common::report::chain(&e))?;
                (d, None)
            }
            Kind::Slirp4netns => {
                let api = rig.dir().join("slirp4netns.sock");
                let mut cmd = Command::new(self.binary());
                cmd.args(["--configure", &format!("--mtu={MTU}")])
                    .arg("--api-socket")
                    .arg(&api)
                    .args(["--netns-type=path"])
                    .arg(Path::new("/run/netns").join(ns.name()))
                    .arg(IFACE);
                let d = rig
                    .spawn_daemon(self.id, cmd, Some(&api))
                    .map_err(|e| airlock_common::report::chain(&e))?;
                slirp_hostfwd(&api, published, self.cidr)?;
                (d, None)
            }
        };
        wait_configured(&ns, self.cidr)?;
        Ok(Served {
            peer: *self,
            daemon,
            bridge,
            ns,
        })
    }

    fn serve_airlock(
        &self,
        rig: &mut Guest,
        ns: &NetNs,
        published: u16,
        tso: bool,
    ) -> Result<(DaemonHandle, Option<TapBridge>), String> {
        let chain = |e: &dyn std::error::Error| airlock_common::report::chain(e);
        let socket = rig.dir().join(format!("{}.sock", self.id));
        let mut cmd = Command::new(self.binary());
        cmd.arg("--socket-path")
            .arg(&socket)
            .args(["--log-level", "warn"])
            .args(["--publish", &format!("127.0.0.1:{published}:80/tcp")]);
        if !tso {
            cmd.arg("--no-segmentation-offload");
        }
        if let Ok(extra) = std::env::var("AIRLOCK_BENCH_NET_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let daemon = rig
            .spawn_daemon(self.id, cmd, Some(&socket))
            .map_err(|e| chain(&e))?;
        let setup = Setup {
            queues: 2,
            queue_size: QUEUE_SIZE,
            features: device::F_EVENT_IDX | features::OFFLOADS,
            memory: 48 << 20,
        };
        let dev = Device::connect(&socket, setup).map_err(|e| chain(&e))?;
        let tap = ns.run(|| Tap::open(IFACE)).map_err(|e| chain(&e))?;
        let n = usize::from(QUEUE_SIZE);
        let bridge = TapBridge::start(dev, tap, n, n).map_err(|e| chain(&e))?;
        let configure = || {
            ns.ip(&["addr", "add", self.cidr, "dev", IFACE]);
            ns.ip(&["link", "set", IFACE, "mtu", &MTU.to_string(), "up"]);
            ns.ip(&["route", "add", "default", "via", self.gateway]);
        };
        vm::guard(format!("configuring {IFACE} for {}", self.id), configure)
            .map_err(|e| e.to_string())?;
        Ok((daemon, Some(bridge)))
    }
}

/// Publishes host 127.0.0.1:`port` to port 80 at the namespace's address
/// through slirp4netns' API socket.
fn slirp_hostfwd(api: &Path, port: u16, cidr: &str) -> Result<(), String> {
    let guest = cidr.split('/').next().unwrap_or(cidr);
    let request = format!(
        r#"{{"execute": "add_hostfwd", "arguments": {{"proto": "tcp", "host_addr": "127.0.0.1", "host_port": {port}, "guest_addr": "{guest}", "guest_port": 80}}}}"#
    );
    let mut s = UnixStream::connect(api)
        .map_err(|e| format!("cannot connect to slirp4netns' API {}: {e}", api.display()))?;
    s.write_all(request.as_bytes())
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("slirp4netns API: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("slirp4netns API: {e}"))?;
    if reply.contains("\"error\"") || !reply.contains("\"return\"") {
        return Err(format!("slirp4netns add_hostfwd: {reply}"));
    }
    Ok(())
}

/// Waits until the namespace's interface has its address and is up (pasta
/// and slirp4netns configure it themselves, in the background).
fn wait_configured(ns: &NetNs, cidr: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns
            .command("ip")
            .args(["-4", "-o", "addr", "show", "dev", IFACE, "up"])
            .output()
            .map_err(|e| format!("cannot run ip in {}: {e}", ns.name()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let routed = ns
            .command("ip")
            .args(["route", "show", "default"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if text.contains(cidr) && routed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{IFACE} in {} never got {cidr} and a default route: {text}",
                ns.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Served {
    /// Sets the namespace interface's MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), String> {
        vm::guard(format!("setting the MTU of {}", self.peer.id), || {
            self.ns
                .ip(&["link", "set", "dev", IFACE, "mtu", &mtu.to_string()])
        })
        .map_err(|e| e.to_string())
    }

    /// The harness thread's CPU time, where there is one.
    pub fn harness_cpu(&self) -> Option<Duration> {
        let tid = self
            .bridge
            .as_ref()?
            .counters()
            .tid
            .load(std::sync::atomic::Ordering::Relaxed);
        crate::procfs::task_cpu_time(std::process::id(), u32::try_from(tid).ok()?).ok()
    }

    /// Whether the bridge still runs (always, without one).
    pub fn healthy(&self) -> bool {
        self.bridge.as_ref().is_none_or(|b| b.running()) && self.daemon.is_running()
    }
}
