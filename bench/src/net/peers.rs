//! The network peers: airlock-net (vhost-user, and its stream transport on
//! `-netdev stream`), passt (socket mode, `-netdev stream`) and QEMU's slirp
//! (`-netdev user`), each its own NIC of
//! the same guest, told apart by MAC address. Each NIC's subnet differs, so
//! the guest reaches each peer's host alias through that NIC alone.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use airlock_e2e::net_device_args;

use crate::machine::{binary_version, debian_version, PeerInfo};
use crate::vm::sibling_binary;

/// What serves a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// airlock-net over vhost-user.
    AirlockNet,
    /// airlock-net's stream transport (`--transport stream`), QEMU's
    /// `-netdev stream` as for passt.
    AirlockNetStream,
    /// passt in socket mode.
    Passt,
    /// QEMU's built-in libslirp.
    Slirp,
}

/// One network peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Id (log names, `--peer`).
    pub id: &'static str,
    /// Name in the tables.
    pub label: &'static str,
    /// What it is.
    pub kind: Kind,
    /// The guest NIC's MAC.
    pub mac: &'static str,
    /// The address at which the guest reaches the host's 127.0.0.1.
    pub host_alias: &'static str,
    /// The IPv6 address at which the guest reaches the host's ::1, for
    /// the IPv6 rows (a peer without one has none of them).
    pub host_alias6: Option<&'static str>,
}

/// The guest's `iperf3 -s` for the published-port throughput rows.
pub const GUEST_IPERF_PORT: u16 = 5201;

/// Host ports (127.0.0.1) a peer publishes into the guest.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// To the guest's httpd (port 80).
    pub http: u16,
    /// To the guest's iperf3 server ([`GUEST_IPERF_PORT`]).
    pub iperf: u16,
}

/// airlock-net.
pub const AIRLOCK_NET: Peer = Peer {
    id: "airlock-net",
    label: "airlock-net",
    kind: Kind::AirlockNet,
    mac: "52:54:00:00:00:01",
    host_alias: "192.168.127.254",
    // PREFIX::fe of the /64 airlock-net derives from its default subnet.
    host_alias6: Some("fd61:6972:c0a8:7f00::fe"),
};
/// airlock-net on QEMU's stream netdev, in a subnet of its own.
pub const AIRLOCK_NET_STREAM: Peer = Peer {
    id: "airlock-net-stream",
    label: "airlock-net (stream)",
    kind: Kind::AirlockNetStream,
    mac: "52:54:00:00:00:04",
    host_alias: "192.168.128.254",
    host_alias6: None,
};
/// passt, with an explicit subnet so it does not copy the host's.
pub const PASST: Peer = Peer {
    id: "passt",
    label: "passt",
    kind: Kind::Passt,
    mac: "52:54:00:00:00:02",
    host_alias: "10.88.0.1",
    host_alias6: None,
};
/// QEMU's slirp.
pub const SLIRP: Peer = Peer {
    id: "slirp",
    label: "slirp (QEMU -netdev user)",
    kind: Kind::Slirp,
    mac: "52:54:00:00:00:03",
    host_alias: "10.0.2.2",
    host_alias6: None,
};

/// Every peer, in table order.
pub const ALL: [Peer; 4] = [AIRLOCK_NET, AIRLOCK_NET_STREAM, PASST, SLIRP];

impl Peer {
    /// Whether a separate daemon serves it.
    pub fn has_daemon(&self) -> bool {
        !matches!(self.kind, Kind::Slirp)
    }

    /// Why it cannot run here, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        let binary = match self.kind {
            Kind::AirlockNet | Kind::AirlockNetStream => sibling_binary("airlock-net"),
            Kind::Passt => Path::new("/usr/bin/passt").to_path_buf(),
            Kind::Slirp => return None,
        };
        (!binary.is_file()).then(|| format!("{} is not installed", binary.display()))
    }

    /// Name and version.
    pub fn info(&self) -> PeerInfo {
        let version = match self.kind {
            Kind::AirlockNet | Kind::AirlockNetStream => {
                binary_version(&sibling_binary("airlock-net")) + " (this workspace, release build)"
            }
            Kind::Passt => format!("Debian passt {}", debian_version("passt")),
            Kind::Slirp => format!(
                "QEMU {} with libslirp {}",
                debian_version("qemu-system-x86"),
                debian_version("libslirp0")
            ),
        };
        PeerInfo {
            name: self.label.to_string(),
            version,
        }
    }

    /// The daemon's command line: serving `socket`, publishing host ports
    /// on 127.0.0.1 to the guest's httpd and iperf3 server.
    pub fn command(&self, socket: &Path, published: Published) -> Option<Command> {
        let Published { http, iperf } = published;
        match self.kind {
            Kind::AirlockNet | Kind::AirlockNetStream => {
                let mut cmd = Command::new(sibling_binary("airlock-net"));
                if self.kind == Kind::AirlockNetStream {
                    cmd.args(["--transport", "stream", "--subnet", "192.168.128.0/24"]);
                }
                cmd.arg("--socket-path")
                    .arg(socket)
                    .args(["--log-level", "warn"])
                    .args(["--publish", &format!("127.0.0.1:{http}:80/tcp")])
                    .args([
                        "--publish",
                        &format!("127.0.0.1:{iperf}:{GUEST_IPERF_PORT}/tcp"),
                    ]);
                // Experiments with airlock-net's options (e.g. --tcp-buffer)
                // without editing the bench: whitespace-separated arguments.
                if let Ok(extra) = std::env::var("AIRLOCK_BENCH_NET_ARGS") {
                    cmd.args(extra.split_whitespace());
                }
                Some(cmd)
            }
            Kind::Passt => {
                let mut cmd = Command::new("/usr/bin/passt");
                cmd.args(["-f", "-e", "-q", "-4"])
                    .arg("-s")
                    .arg(socket)
                    .args(["-a", "10.88.0.2", "-n", "24", "-g", self.host_alias])
                    .args(["-t", &format!("127.0.0.1/{http}:80")])
                    .args(["-t", &format!("127.0.0.1/{iperf}:{GUEST_IPERF_PORT}")]);
                Some(cmd)
            }
            Kind::Slirp => None,
        }
    }

    /// QEMU arguments attaching the NIC.
    pub fn qemu_args(&self, socket: &Path, published: Published) -> Vec<OsString> {
        let Published { http, iperf } = published;
        let netdev = format!("net-{}", self.id);
        match self.kind {
            Kind::AirlockNet => net_device_args(socket, self.mac, false),
            Kind::Passt | Kind::AirlockNetStream => vec![
                "-netdev".into(),
                format!(
                    "stream,id={netdev},server=off,addr.type=unix,addr.path={}",
                    socket.display()
                )
                .into(),
                "-device".into(),
                format!("virtio-net-pci,netdev={netdev},mac={},romfile=", self.mac).into(),
            ],
            Kind::Slirp => vec![
                "-netdev".into(),
                format!(
                    "user,id={netdev},net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{http}-:80,\
                     hostfwd=tcp:127.0.0.1:{iperf}-:{GUEST_IPERF_PORT}"
                )
                .into(),
                "-device".into(),
                format!("virtio-net-pci,netdev={netdev},mac={},romfile=", self.mac).into(),
            ],
        }
    }
}
