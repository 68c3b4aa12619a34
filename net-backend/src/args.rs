//! The airlock-net command line.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use airlock_common::config_file::ConfigArgs;
use airlock_common::listen::ListenArgs;
use airlock_common::logging::LogArgs;
use airlock_common::sandbox::ConfineArgs;
use airlock_common::seccomp::SeccompArgs;
use airlock_vhost::LifecycleArgs;
use clap::{CommandFactory, FromArgMatches, Parser};

use airlock_netcore::policy::Action;
use airlock_netcore::PublishSource;

#[derive(Parser, Debug, Default)]
#[command(
    name = "airlock-net",
    version,
    about = "vhost-user-net daemon: the NAT gateway of a QEMU guest",
    long_about = "airlock-net is the guest's network (`-netdev vhost-user`). The guest's \
Ethernet ends in this process: it answers ARP, DHCP and DNS itself, and every TCP, UDP \
and ICMP echo flow the guest opens leaves the host as an ordinary socket of this process \
(NAT), so the host's firewall and auditing tools see one program.\n\n\
Guest-visible addresses (defaults, all derived from --subnet): gateway 192.168.127.1 \
(DHCP, DNS), guest 192.168.127.2, host.airlock.internal 192.168.127.254 (the host's \
127.0.0.1), http.airlock.internal 192.168.127.253 (--proxy-target).\n\n\
IPv6 (unless --no-ipv6): the guest's /64 is a unique local prefix derived from --subnet \
(fd61:6972:c0a8:7f00::/64 for the default) or --subnet6. The gateway, PREFIX::1, sends \
Router Advertisements (SLAAC, default route, MTU, DNS) and answers DHCPv6; \
host.airlock.internal is also PREFIX::fe (the host's ::1) and http.airlock.internal \
PREFIX::fd.\n\n\
After QEMU disconnects, all of that guest's flows are closed and airlock-net waits for \
the next QEMU on the same socket (QEMU's `reconnect=1` reattaches a running guest).",
    after_help = "Example:\n  airlock-net --socket-path /run/vm1/net.sock\n  \
qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \
-numa node,memdev=mem -chardev socket,id=n0,path=/run/vm1/net.sock,reconnect=1 \
-netdev vhost-user,id=net0,chardev=n0 -device virtio-net-pci,netdev=net0,host_mtu=65520"
)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    /// The virtual subnet the guest lives in: a network address (no host
    /// bits) with a prefix of /29 or shorter, outside 0.0.0.0/8, loopback
    /// 127.0.0.0/8, multicast 224.0.0.0/4 and 240.0.0.0/4.
    #[arg(long, value_name = "CIDR", default_value = "192.168.127.0/24")]
    pub subnet: String,

    /// The gateway's address (router, DHCP and DNS server) [default: first
    /// address of --subnet].
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,

    /// The address DHCP gives the guest [default: second address of --subnet].
    #[arg(long, value_name = "IP")]
    pub guest_ip: Option<Ipv4Addr>,

    /// The address of host.airlock.internal: connections to it reach the
    /// host's 127.0.0.1 [default: last usable address of --subnet].
    #[arg(long, value_name = "IP")]
    pub host_ip: Option<Ipv4Addr>,

    /// Do not map host.airlock.internal to the host's loopback.
    #[arg(long)]
    pub no_host_alias: bool,

    /// The guest's IPv6 prefix, a /64 [default: fd61:6972:AABB:CCDD::/64,
    /// where AA.BB.CC.DD is the network address of --subnet].
    #[arg(long, value_name = "PREFIX/64")]
    pub subnet6: Option<String>,

    /// No IPv6: no Router Advertisements, no DHCPv6, and every IPv6 frame
    /// from the guest dropped.
    #[arg(long, conflicts_with = "subnet6")]
    pub no_ipv6: bool,

    /// The address of http.airlock.internal, the proxy alias
    /// [default: second-to-last usable address of --subnet].
    #[arg(long, value_name = "IP")]
    pub proxy_ip: Option<Ipv4Addr>,

    /// Where connections to http.airlock.internal:--proxy-port go: IP:PORT
    /// (names are not resolved) or unix:PATH (airlock-proxy's --listen).
    /// Without it, the alias refuses connections.
    #[arg(long, value_name = "ADDR")]
    pub proxy_target: Option<String>,

    /// The guest-side port of the proxy alias.
    #[arg(long, value_name = "PORT", default_value_t = 3128)]
    pub proxy_port: u16,

    /// The gateway's MAC address.
    #[arg(long, value_name = "MAC", default_value = "5a:94:ef:e4:0c:dd")]
    pub gateway_mac: String,

    /// MTU offered to the guest by DHCP (option 26) and Router
    /// Advertisements; the guest's virtio-net device should match (QEMU:
    /// host_mtu=…).
    #[arg(long, value_name = "BYTES", default_value_t = 65520)]
    pub mtu: u16,

    /// How long a DHCP (and DHCPv6) lease lasts.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub lease_time: u64,

    /// Resolver for names the gateway does not answer itself: IP or IP:PORT,
    /// repeatable, tried in order. A fixed list: --resolv-conf is then
    /// neither read nor watched [default: the nameservers of
    /// --resolv-conf].
    #[arg(long, value_name = "ADDR")]
    pub dns_upstream: Vec<String>,

    /// Where the upstream resolvers and the search list come from. The
    /// file is watched (rewritten, renamed over, or a symlink pointed
    /// elsewhere) and reread on SIGHUP; new queries use its resolvers at
    /// once. One that becomes unreadable or names no nameserver leaves the
    /// last good list in place. With systemd-resolved this is its stub,
    /// 127.0.0.53, which already follows VPNs and per-link DNS.
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,

    /// The search list the guest is given: DHCP options 15 and 119,
    /// DHCPv6 option 24 and the Router Advertisements' DNSSL. Domains
    /// separated by commas or spaces; '' gives none [default: the search
    /// or domain line of --resolv-conf, followed as it changes; none with
    /// --dns-upstream].
    #[arg(long, value_name = "LIST")]
    pub dns_search: Option<String>,

    /// Names in ZONE (and below it) go only to ADDR (IP or IP:PORT;
    /// repeat the zone for more resolvers, tried in order), or with
    /// ZONE=local are answered here: NXDOMAIN for names without a record.
    /// The longest zone that contains a name wins. Repeatable.
    #[arg(long, value_name = "ZONE=ADDR|local")]
    pub dns_zone: Vec<String>,

    /// An extra record the gateway's DNS answers: NAME=IPv4 (A),
    /// NAME=IPv6 (AAAA) or NAME=TARGET (a CNAME); *.NAME answers for every
    /// name below NAME. Repeatable. Records added through the control API
    /// are kept until the daemon stops.
    #[arg(long, value_name = "NAME=VALUE")]
    pub dns_record: Vec<String>,

    /// The host alias's DNS name.
    #[arg(long, value_name = "NAME", default_value = "host.airlock.internal")]
    pub host_name: String,

    /// The gateway's DNS name.
    #[arg(long, value_name = "NAME", default_value = "gateway.airlock.internal")]
    pub gateway_name: String,

    /// The proxy alias's DNS name.
    #[arg(long, value_name = "NAME", default_value = "http.airlock.internal")]
    pub proxy_name: String,

    /// Most concurrent flows (TCP connections, UDP mappings, pings). Past
    /// it, new TCP connections get a RST, new UDP flows an ICMP
    /// "administratively prohibited", and new pings no reply.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_flows: usize,

    /// Buffer per direction of each TCP flow (e.g. 256K, 1M); it also caps
    /// the window advertised to the guest. Worst-case memory is
    /// 2 × this × --max-flows.
    #[arg(long, value_name = "SIZE", default_value = "256K")]
    pub tcp_buffer: String,

    /// How long a host connect may take before the guest gets a RST.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub tcp_connect_timeout: u64,

    /// Idle time after which a UDP mapping (or ping) is forgotten.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub udp_timeout: u64,

    /// Publish a port: connections (or datagrams) to the host address are
    /// carried to the guest.
    /// [BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp|/tcp6|/udp6], ranges as
    /// 8000-8010:8000-8010, repeatable. BIND_ADDR defaults to 127.0.0.1
    /// (this host only — Docker's default is every interface): use
    /// 0.0.0.0:8080:80 or [::]:8080:80 to accept connections from the
    /// network. The guest is reached over IPv4 whatever BIND_ADDR's family;
    /// /tcp6 and /udp6 reach it over IPv6, at the address it configured in
    /// its prefix.
    #[arg(long, short = 'p', value_name = "SPEC")]
    pub publish: Vec<String>,

    /// Where the guest sees published-port connections come from: the
    /// gateway's address, or the client's real address (a client on the
    /// host's loopback then appears as host.airlock.internal).
    #[arg(long, value_enum, value_name = "FROM", default_value = "gateway")]
    pub publish_source: PublishSourceArg,

    /// Allow flows the guest opens to NET[:PORTS][/PROTO] (e.g.
    /// 10.0.0.0/8, 1.2.3.4:443/tcp, 0.0.0.0/0:53/udp; IPv6 as 2001:db8::/32
    /// or, with ports, [2001:db8::/32]:443/tcp). Rules (--allow,
    /// --deny, then --egress-rules) are checked in order; the first match
    /// decides. They apply to every flow the guest starts except DHCP and
    /// DNS to the gateway, including the host and proxy aliases, by the
    /// address the guest used: the host's loopback is the host alias
    /// (rules within 127.0.0.0/8, 0.0.0.0/8, ::1, ::/96, link-local or
    /// multicast never match and are refused).
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,

    /// Deny flows to NET[:PORTS][/PROTO]: TCP gets a RST, UDP an ICMP
    /// "administratively prohibited", ping no reply.
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,

    /// What happens to flows no rule matches.
    #[arg(long, value_name = "allow|deny", default_value = "allow")]
    pub egress: String,

    /// More rules from FILE, one per line: `allow RULE`, `deny RULE` or
    /// `default allow|deny` (# comments). Reread on SIGHUP; established
    /// flows the new rules deny are closed.
    #[arg(long, value_name = "FILE")]
    pub egress_rules: Option<PathBuf>,

    /// Append one JSON line per flow opened, closed or denied, and per port
    /// published or unpublished, to PATH (or stdout with `-`).
    #[arg(long, value_name = "PATH|-")]
    pub audit_log: Option<PathBuf>,

    /// Serve the control API on this Unix socket (created mode 0600; a
    /// stale socket is replaced, a live one is an error; removed on exit):
    /// HTTP/1.1 + JSON, compatible with gvisor-tap-vsock's forwarder and
    /// DNS APIs — POST /services/forwarder/expose and /unexpose, GET
    /// /services/forwarder/all, POST /services/dns/add, GET
    /// /services/dns/all — plus GET /stats, /flows, /leases, /dns and
    /// /metrics (Prometheus), and POST /dns/add and /dns/remove. The
    /// `airlock` command-line tool talks to it.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// How QEMU's frames arrive on the listening socket: `vhost-user`
    /// (`-netdev vhost-user`, the guest's queues in shared memory) or
    /// `stream` (`-netdev stream` / `-netdev socket`: each frame a 4-byte
    /// big-endian length and the Ethernet frame, as passt serves; QEMU's
    /// own virtio-net emulation runs the queues, slower).
    #[arg(long, value_enum, value_name = "KIND", default_value = "vhost-user")]
    pub transport: Transport,

    /// Write every frame between the guest and the gateway to FILE in pcap
    /// format (tcpdump -r, Wireshark), on either transport. Created mode
    /// 0600, truncated. With checksum offload, TCP frames to the guest hold
    /// only the pseudo-header's sum in their checksum, as captures on a
    /// host with offload do (tcpdump says "incorrect").
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Largest size of the --pcap file (e.g. 64M, 1G); capturing stops at
    /// the frame that would pass it.
    #[arg(long, value_name = "SIZE", default_value = "64M", requires = "pcap")]
    pub pcap_size: String,

    /// Do not offer checksum offload (VIRTIO_NET_F_CSUM/GUEST_CSUM) to the
    /// guest; every checksum is then computed and verified in software.
    /// Implies --no-segmentation-offload.
    #[arg(long)]
    pub no_checksum_offload: bool,

    /// Do not offer TCP segmentation offload (VIRTIO_NET_F_HOST_TSO4/6,
    /// GUEST_TSO4/6): TCP segments then cross the queues no larger than the
    /// guest's MSS, one frame each.
    #[arg(long)]
    pub no_segmentation_offload: bool,

    /// Set RLIMIT_NOFILE (soft and hard) to N: each flow holds one host
    /// socket [default: --max-flows + 1024].
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    #[command(flatten)]
    pub confine: ConfineArgs,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    #[command(flatten)]
    pub lifecycle: LifecycleArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Print the vhost-user capabilities JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// `--allow` and `--deny` values in command-line order (filled by
    /// [`Args::parse_ordered`]; clap keeps each flag's values apart).
    #[arg(skip)]
    pub rules: Vec<(Action, String)>,
}

impl Args {
    /// Parses the process arguments, keeping --allow/--deny in order.
    pub fn parse_ordered() -> Args {
        match Self::try_parse_ordered_from(std::env::args_os()) {
            Ok(a) => a,
            Err(e) => e.exit(),
        }
    }

    /// As [`Args::parse_ordered`], from `args`.
    pub fn try_parse_ordered_from<I, T>(args: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut a = Self::from_arg_matches(&matches)?;
        let mut rules: Vec<(usize, Action, String)> = Vec::new();
        for (id, action) in [("allow", Action::Allow), ("deny", Action::Deny)] {
            if let (Some(idx), Some(vals)) =
                (matches.indices_of(id), matches.get_many::<String>(id))
            {
                rules.extend(idx.zip(vals).map(|(i, v)| (i, action, v.clone())));
            }
        }
        rules.sort_by_key(|r| r.0);
        a.rules = rules.into_iter().map(|(_, act, v)| (act, v)).collect();
        Ok(a)
    }
}

/// `--publish-source`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishSourceArg {
    /// The gateway's address (like Docker's userland proxy).
    #[default]
    Gateway,
    /// The client's own address (loopback clients: the host alias).
    Client,
}

impl From<PublishSourceArg> for PublishSource {
    fn from(a: PublishSourceArg) -> PublishSource {
        match a {
            PublishSourceArg::Gateway => PublishSource::Gateway,
            PublishSourceArg::Client => PublishSource::Client,
        }
    }
}

/// `--transport`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// vhost-user-net: QEMU `-netdev vhost-user` (the guest's queues in
    /// shared memory).
    #[default]
    VhostUser,
    /// QEMU `-netdev stream` / `-netdev socket` framing on a Unix socket.
    Stream,
}
