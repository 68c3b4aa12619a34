//! Fuzz target bodies (`fuzz/fuzz_targets/*.rs` are one-line wrappers, and
//! `fuzzing/tests/` replays the kept inputs through the same
//! functions on stable). Not part of the daemon's interface.
//!
//! Every target enters where production does: frames go to
//! [`Gateway::guest_frame`] with [`Backlog`](airlock_netcore::Backlog) as
//! the guest side, descriptor chains to [`NetSession`]'s event handler,
//! DHCP messages to [`DhcpServer::handle`](airlock_netcore::services::dhcp::DhcpServer::handle),
//! DNS queries to [`dns::plan`](airlock_netcore::services::dns::plan) and
//! [`DnsTcpSession`](airlock_netcore::services::dns::DnsTcpSession), control API bytes to
//! [`api::http::serve_connection`](airlock_net::api::http::serve_connection) with
//! [`Api::handle`](airlock_net::api::Api::handle).
//!
//! The host side stays on this machine: the egress policy denies
//! everything except the host alias at [`Peers::port`] (loopback echo
//! servers owned by this process) and the proxy alias, which leads to a
//! Unix-socket echo server; DNS goes upstream to the same loopback echo.
//!
//! [`Gateway::guest_frame`]: airlock_netcore::Gateway::guest_frame
//! [`NetSession`]: airlock_net::device::NetSession

mod api;
mod chain;
mod dhcp;
mod dns;
mod frame;
mod ipv6;
pub mod seeds;

pub use api::fuzz_api;
pub use chain::{fuzz_net_chain, run as run_net_chain};
pub use dhcp::fuzz_dhcp;
pub use dns::fuzz_dns;
pub use frame::{fuzz_net_frame, run as run_net_frame, Received};
pub use ipv6::{fuzz_ipv6_services, run as run_ipv6_services};

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use smoltcp::wire::EthernetAddress;

use airlock_netcore::config::Ipv6Config;
use airlock_netcore::host::Target;
use airlock_netcore::policy::{Action, Rule};
use airlock_netcore::services::dhcp::DhcpConfig;
use airlock_netcore::services::dns::{
    DnsSettings, LocalRecords, RecordData, RecordSource, ZoneSpec, ZoneTarget,
};
use airlock_netcore::{GatewayConfig, PolicySource, PublishSource, Shared, TcpLimits};

pub const GW_MAC: EthernetAddress = EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
pub const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);
pub const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);
pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 254);
pub const PROXY: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 253);
pub const PROXY_PORT: u16 = 3128;
/// The IPv6 prefix and the gateway's and aliases' addresses in it.
pub const PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 1);
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0xfe);
pub const PROXY6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0xfd);
/// The guest's SLAAC address (its MAC's modified EUI-64).
pub const GUEST6: Ipv6Addr = Ipv6Addr::new(
    0xfd61, 0x6972, 0xc0a8, 0x7f00, 0x5054, 0x00ff, 0xfe12, 0x3456,
);

/// Echo servers the gateway's flows may reach, one set per process.
pub struct Peers {
    /// TCP and UDP echo on 127.0.0.1 (the host alias and the DNS upstream).
    pub port: u16,
    /// A Unix-socket echo (the proxy alias's target).
    pub unix: PathBuf,
}

/// The process's echo servers, started on first use.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| start_peers().expect("cannot start the fuzz echo servers"))
}

fn start_peers() -> io::Result<Peers> {
    // TCP and UDP on one port number, so one policy rule and one DNS
    // upstream address cover both.
    let (tcp, udp) = loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        if let Ok(udp) = UdpSocket::bind(tcp.local_addr()?) {
            break (tcp, udp);
        }
    };
    let port = tcp.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("airlock-net-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let unix = dir.join("proxy.sock");
    let _ = std::fs::remove_file(&unix);
    let unix_listener = UnixListener::bind(&unix)?;
    for fd in [tcp.as_raw_fd(), udp.as_raw_fd(), unix_listener.as_raw_fd()] {
        set_nonblocking(fd)?;
    }
    // One thread for every echo: no thread is created or ends while a
    // target runs (LeakSanitizer mistook an exiting thread's TLS for a
    // leak).
    thread::Builder::new()
        .name("fuzz-echo".into())
        .spawn(move || echo_loop(udp, tcp, unix_listener))?;
    Ok(Peers { port, unix })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with integer
    // arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An echo connection: what was read and not yet written back.
struct Echo {
    stream: Box<dyn EchoStream>,
    pending: Vec<u8>,
}

trait EchoStream: Read + Write + AsRawFd + Send {}
impl<T: Read + Write + AsRawFd + Send> EchoStream for T {}

/// Bytes held per connection before it stops reading.
const ECHO_BACKLOG: usize = 256 * 1024;

/// Echoes UDP datagrams, and TCP and Unix-socket streams, until the
/// process ends.
fn echo_loop(udp: UdpSocket, tcp: TcpListener, unix: UnixListener) {
    let mut conns: Vec<Echo> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds: Vec<libc::pollfd> = [udp.as_raw_fd(), tcp.as_raw_fd(), unix.as_raw_fd()]
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        for c in &conns {
            let mut events = 0;
            if c.pending.len() < ECHO_BACKLOG {
                events |= libc::POLLIN;
            }
            if !c.pending.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a vector of initialised pollfds that outlives
        // the call, and its length is passed with it.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            continue;
        }
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
        while let Ok((s, _)) = tcp.accept() {
            if set_nonblocking(s.as_raw_fd()).is_ok() {
                conns.push(Echo {
                    stream: Box::new(s),
                    pending: Vec::new(),
                });
            }
        }
        while let Ok((s, _)) = unix.accept() {
            if set_nonblocking(s.as_raw_fd()).is_ok() {
                conns.push(Echo {
                    stream: Box::new(s),
                    pending: Vec::new(),
                });
            }
        }
        conns.retain_mut(|c| c.pump(&mut buf));
    }
}

impl Echo {
    /// Reads what is there and writes back what it can; false once the
    /// connection is over.
    fn pump(&mut self, buf: &mut [u8]) -> bool {
        while self.pending.len() < ECHO_BACKLOG {
            match self.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// The gateway configuration of every net target (the unit tests' one,
/// with the aliases and DNS pointed at [`peers`]).
pub fn gateway_config(mtu: usize) -> GatewayConfig {
    let peers = peers();
    GatewayConfig {
        gateway_mac: GW_MAC,
        gateway_ip: GW,
        prefix_len: 24,
        guest_ip: GUEST,
        host_ip: Some(HOST),
        proxy_ip: PROXY,
        proxy: Some((PROXY_PORT, Target::Unix(peers.unix.clone()))),
        mtu,
        dhcp: DhcpConfig::default(),
        publish_source: PublishSource::Gateway,
        max_flows: 16,
        tcp: TcpLimits {
            buffer: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
        },
        udp_timeout: Duration::from_secs(60),
        ipv6: Some(Ipv6Config {
            prefix: PREFIX6,
            gateway: GW6,
            host: Some(HOST6),
            proxy: PROXY6,
            lease_time: Duration::from_secs(3600),
        }),
    }
}

/// The DNS service of every net target: the aliases' names, a CNAME to
/// an outside name, the local zone, and the loopback echo as the resolver
/// (it answers a query with the query itself).
pub fn dns_settings() -> DnsSettings {
    let mut records = LocalRecords::new();
    for (name, value) in [
        ("host.airlock.internal", HOST.to_string()),
        ("http.airlock.internal", PROXY.to_string()),
        ("host.airlock.internal", HOST6.to_string()),
        ("http.airlock.internal", PROXY6.to_string()),
        ("v6.airlock.internal", "fd00::1".into()),
        ("alias.airlock.internal", "host.airlock.internal".into()),
        ("outside.airlock.internal", "www.example.test".into()),
        ("*.apps.test", "10.0.0.9".into()),
    ] {
        if let Ok(data) = RecordData::parse(&value) {
            let _ = records.add(name, data, RecordSource::Config);
        }
    }
    DnsSettings {
        upstreams: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, peers().port))],
        source: "fuzz".into(),
        search: vec!["airlock.internal".into()],
        zones: vec![ZoneSpec {
            name: "airlock.internal".into(),
            target: ZoneTarget::Local,
        }],
        records,
    }
}

/// Deny by default; allow only what leads to [`peers`].
pub fn shared() -> Arc<Shared> {
    let port = peers().port;
    let cli_rules = [
        format!("{HOST}:{port}"),
        format!("{PROXY}:{PROXY_PORT}/tcp"),
        format!("[{HOST6}]:{port}"),
        format!("[{PROXY6}]:{PROXY_PORT}/tcp"),
    ]
    .iter()
    .filter_map(|r| Rule::parse(Action::Allow, r).ok())
    .collect();
    let source = PolicySource {
        cli_rules,
        default: Some(Action::Deny),
        file: None,
    };
    Shared::new(GUEST, source, dns_settings(), None)
        .expect("cannot create the fuzz gateway's shared state")
}
