//! From the command line to a checked [`Config`]: addresses derived from the
//! subnet and validated, names and sizes parsed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use airlock_api::{PortSpec, SpecError};
use airlock_common::listen::ListenArgs;
use airlock_common::logging::LogArgs;
use airlock_netcore::config::Ipv6Config;
use airlock_netcore::host::Target;
use airlock_netcore::policy::{Action, PolicyError, Rule};
use airlock_netcore::services::dhcp::DhcpConfig;
use airlock_netcore::services::dns::{
    self, DnsSettings, LocalRecords, RecordData, RecordSource, ResolvConf, ZoneSpec, ZoneTarget,
};
use airlock_netcore::{EthernetAddress, GatewayConfig, PolicySource, TcpLimits};

use crate::args::Args;
use crate::device::Offloads;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --subnet {0:?}: expected an IPv4 CIDR such as 192.168.127.0/24 with a prefix of at most /29")]
    Subnet(String),
    #[error("invalid --subnet6 {0:?}: expected an IPv6 /64 prefix such as fd00:1:2:3::/64")]
    Subnet6(String),
    #[error("invalid --subnet {0:?}: host bits are set; the network is {1}/{2}")]
    SubnetHostBits(String, Ipv4Addr, u8),
    #[error("invalid --subnet {0:?}: it overlaps {1} ({2}); the guest's subnet must be ordinary unicast addresses such as 192.168.127.0/24")]
    SubnetReserved(String, &'static str, &'static str),
    #[error("--{0} {1} is not a usable address in subnet {2}")]
    OutsideSubnet(&'static str, Ipv4Addr, String),
    #[error("--{0} and --{1} are both {2}: each address must be distinct")]
    Duplicate(&'static str, &'static str, Ipv4Addr),
    #[error("invalid --gateway-mac {0:?}: expected a unicast address like 5a:94:ef:e4:0c:dd")]
    Mac(String),
    #[error("--mtu {0} is out of range (1280..=65520)")]
    Mtu(u16),
    #[error("invalid --dns-upstream {0:?}: expected IP or IP:PORT ([IPv6]:PORT)")]
    Upstream(String),
    #[error("invalid --dns-record {0:?}: expected NAME=IPv4, NAME=IPv6 or NAME=TARGET")]
    Record(String),
    #[error("invalid --dns-record {0:?}")]
    RecordValue(String, #[source] dns::DnsError),
    #[error("invalid --dns-zone {0:?}: expected ZONE=IP, ZONE=IP:PORT or ZONE=local")]
    Zone(String),
    #[error("--dns-zone {0}: local and resolvers at once")]
    ZoneMixed(String),
    #[error("invalid DNS name {0:?}")]
    Name(String, #[source] dns::DnsError),
    #[error("invalid --tcp-buffer {0:?}: expected a size such as 256K or 1M, between 16K and 64M")]
    Size(String),
    #[error("invalid --proxy-target {0:?}: expected IP:PORT (e.g. 127.0.0.1:3128, [::1]:3128) or unix:PATH; names are not resolved")]
    ProxyTarget(String),
    #[error("--api-socket and --socket-path are both {0}: give each its own path")]
    SamePath(PathBuf),
    #[error("--max-flows must be at least 1")]
    MaxFlows,
    #[error("--{0} must be at least 1 second")]
    Timeout(&'static str),
    #[error(transparent)]
    Publish(#[from] SpecError),
    #[error(
        "--publish {0:?} reaches the guest over IPv6 (/tcp6, /udp6), but IPv6 is off (--no-ipv6)"
    )]
    PublishIpv6Off(String),
    #[error("invalid --{0} {1:?}")]
    Rule(&'static str, String, #[source] PolicyError),
    #[error("invalid --egress {0:?}: allow or deny")]
    Egress(String),
    #[error(transparent)]
    RulesFile(PolicyError),
    #[error("invalid --pcap-size {0:?}: expected a size such as 64M or 1G, at least {min} bytes", min = crate::pcap::MIN_SIZE)]
    PcapSize(String),
}

/// Everything airlock-net needs to run.
#[derive(Debug)]
pub struct Config {
    pub listen: ListenArgs,
    pub gateway: GatewayConfig,
    pub offloads: Offloads,
    pub exit_on_disconnect: bool,
    pub log: LogArgs,
    /// The DNS service at start (resolvers, search list, zones, records).
    pub dns: DnsSettings,
    /// The resolv.conf to follow, unless `--dns-upstream` fixed the list.
    pub resolv_conf: Option<PathBuf>,
    /// Whether the search list follows the resolv.conf (no `--dns-search`).
    pub search_from_file: bool,
    pub publish: Vec<PortSpec>,
    pub policy: PolicySource,
    pub audit_log: Option<std::path::PathBuf>,
    /// `--api-socket`: where the control API listens.
    pub api_socket: Option<PathBuf>,
    pub rlimit_nofile: u64,
    pub confine: airlock_common::sandbox::ConfineArgs,
    pub seccomp: airlock_common::seccomp::SeccompMode,
    /// `--transport`: vhost-user or QEMU's stream framing.
    pub transport: crate::args::Transport,
    /// `--pcap FILE` and its `--pcap-size` limit in bytes.
    pub pcap: Option<(PathBuf, u64)>,
}

/// Address blocks a guest subnet may not touch, as (network, prefix,
/// written, what): smoltcp refuses interface addresses that are not unicast
/// (it panicked on 224.0.0.0/24), and neither the guest nor the host can
/// use these as ordinary addresses.
const RESERVED_BLOCKS: [(u32, u8, &str, &str); 4] = [
    (
        0x0000_0000,
        8,
        "0.0.0.0/8",
        "\"this network\", the unspecified address",
    ),
    (0x7f00_0000, 8, "127.0.0.0/8", "loopback"),
    (0xe000_0000, 4, "224.0.0.0/4", "multicast"),
    (
        0xf000_0000,
        4,
        "240.0.0.0/4",
        "reserved, the broadcast address",
    ),
];

/// The netmask of a prefix length (`/24` → 255.255.255.0).
fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// `192.168.127.0/24` → (network, prefix), refusing host bits and subnets
/// that overlap [`RESERVED_BLOCKS`].
fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || ConfigError::Subnet(s.to_owned());
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 29 {
        return Err(bad());
    }
    let first = u32::from(addr) & mask(prefix);
    if first != u32::from(addr) {
        return Err(ConfigError::SubnetHostBits(
            s.to_owned(),
            Ipv4Addr::from(first),
            prefix,
        ));
    }
    let last = first | !mask(prefix);
    for (block, bits, written, what) in RESERVED_BLOCKS {
        if first <= block | !mask(bits) && block <= last {
            return Err(ConfigError::SubnetReserved(s.to_owned(), written, what));
        }
    }
    Ok((Ipv4Addr::from(first), prefix))
}

/// `PREFIX/64`: a unicast, non-link-local /64 (host bits cleared).
fn parse_subnet6(s: &str) -> Option<Ipv6Addr> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv6Addr = addr.parse().ok()?;
    if prefix != "64" || addr.is_multicast() || addr.is_unicast_link_local() || addr.is_loopback() {
        return None;
    }
    Some(Ipv6Addr::from(u128::from(addr) & !u128::from(u64::MAX)))
}

/// The default IPv6 prefix for the IPv4 network `net`: the unique local
/// prefix fd61:6972::/32 ("air") followed by the 32 bits of `net`.
pub fn default_prefix6(net: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from((0xfd61_6972u128 << 96) | (u128::from(u32::from(net)) << 64))
}

fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    let arr: [u8; 6] = bytes.try_into().ok()?;
    let mac = EthernetAddress(arr);
    mac.is_unicast().then_some(mac)
}

/// Parses `256K`, `1M`, `65536` (binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn parse_upstream(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

/// `ZONE=IP`, `ZONE=IP:PORT` or `ZONE=local`.
fn parse_zone(s: &str) -> Result<ZoneSpec, ConfigError> {
    let bad = || ConfigError::Zone(s.to_owned());
    let (zone, target) = s.split_once('=').ok_or_else(bad)?;
    let name = dns::normalize_name(zone, false).map_err(|_| bad())?;
    let target = if target == "local" {
        ZoneTarget::Local
    } else {
        ZoneTarget::Upstreams(vec![parse_upstream(target).ok_or_else(bad)?])
    };
    Ok(ZoneSpec { name, target })
}

fn parse_proxy_target(s: &str) -> Option<Target> {
    if let Some(path) = s.strip_prefix("unix:") {
        return (!path.is_empty()).then(|| Target::Unix(PathBuf::from(path)));
    }
    s.parse::<SocketAddr>().ok().map(Target::Tcp)
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let (network, prefix) = parse_subnet(&a.subnet)?;
        let net = u32::from(network);
        let size = 1u32 << (32 - u32::from(prefix));
        let broadcast = net + size - 1;
        let usable = |ip: Ipv4Addr| {
            let v = u32::from(ip);
            v > net && v < broadcast
        };
        let gateway_ip = a.gateway.unwrap_or(Ipv4Addr::from(net + 1));
        let guest_ip = a.guest_ip.unwrap_or(Ipv4Addr::from(net + 2));
        let host_ip = a.host_ip.unwrap_or(Ipv4Addr::from(broadcast - 1));
        let proxy_ip = a.proxy_ip.unwrap_or(Ipv4Addr::from(broadcast - 2));
        let named = [
            ("gateway", gateway_ip),
            ("guest-ip", guest_ip),
            ("host-ip", host_ip),
            ("proxy-ip", proxy_ip),
        ];
        for (name, ip) in named {
            if !usable(ip) {
                return Err(ConfigError::OutsideSubnet(name, ip, a.subnet.clone()));
            }
        }
        for (i, (n1, ip1)) in named.iter().enumerate() {
            for (n2, ip2) in &named[i + 1..] {
                if ip1 == ip2 {
                    return Err(ConfigError::Duplicate(n1, n2, *ip1));
                }
            }
        }
        let gateway_mac =
            parse_mac(&a.gateway_mac).ok_or_else(|| ConfigError::Mac(a.gateway_mac.clone()))?;
        if !(1280..=65520).contains(&a.mtu) {
            return Err(ConfigError::Mtu(a.mtu));
        }
        let buffer = parse_size(&a.tcp_buffer)
            .filter(|b| (16 * 1024..=64 * 1024 * 1024).contains(b))
            .ok_or_else(|| ConfigError::Size(a.tcp_buffer.clone()))?;
        if a.max_flows == 0 {
            return Err(ConfigError::MaxFlows);
        }
        if a.tcp_connect_timeout == 0 {
            return Err(ConfigError::Timeout("tcp-connect-timeout"));
        }
        if a.udp_timeout == 0 {
            return Err(ConfigError::Timeout("udp-timeout"));
        }

        let ipv6 = if a.no_ipv6 {
            None
        } else {
            let prefix = match &a.subnet6 {
                Some(s) => parse_subnet6(s).ok_or_else(|| ConfigError::Subnet6(s.clone()))?,
                None => default_prefix6(network),
            };
            let at = |iid: u64| Ipv6Addr::from(u128::from(prefix) | u128::from(iid));
            Some(Ipv6Config {
                prefix,
                gateway: at(1),
                host: (!a.no_host_alias).then(|| at(0xfe)),
                proxy: at(0xfd),
                lease_time: Duration::from_secs(a.lease_time.max(60)),
            })
        };

        let pcap = match &a.pcap {
            Some(path) => Some((
                path.clone(),
                crate::pcap::parse_size(&a.pcap_size)
                    .filter(|n| *n >= crate::pcap::MIN_SIZE)
                    .ok_or_else(|| ConfigError::PcapSize(a.pcap_size.clone()))?,
            )),
            None => None,
        };

        let mut records = LocalRecords::new();
        let mut builtin = |name: &str, ip: IpAddr| {
            records
                .add(name, RecordData::from(ip), RecordSource::Builtin)
                .map_err(|e| ConfigError::Name(name.to_owned(), e))
        };
        let v6 = ipv6.as_ref();
        builtin(&a.gateway_name, gateway_ip.into())?;
        if let Some(v6) = v6 {
            builtin(&a.gateway_name, v6.gateway.into())?;
        }
        if !a.no_host_alias {
            builtin(&a.host_name, host_ip.into())?;
            if let Some(h) = v6.and_then(|v6| v6.host) {
                builtin(&a.host_name, h.into())?;
            }
        }
        builtin(&a.proxy_name, proxy_ip.into())?;
        if let Some(v6) = v6 {
            builtin(&a.proxy_name, v6.proxy.into())?;
        }
        for r in &a.dns_record {
            let (name, value) = r
                .split_once('=')
                .ok_or_else(|| ConfigError::Record(r.clone()))?;
            let data =
                RecordData::parse(value).map_err(|e| ConfigError::RecordValue(r.clone(), e))?;
            records
                .add(name, data, RecordSource::Config)
                .map_err(|e| ConfigError::RecordValue(r.clone(), e))?;
        }

        let (upstreams, source, mut search, resolv_conf) = if a.dns_upstream.is_empty() {
            let path = a.resolv_conf.display().to_string();
            let file = match std::fs::read_to_string(&a.resolv_conf) {
                Ok(text) => ResolvConf::parse(&text, crate::resolv::scope_id),
                Err(e) => {
                    log::warn!(
                        "cannot read {path}: {e}; names other than the gateway's own will fail \
                         until it can be read"
                    );
                    ResolvConf::default()
                }
            };
            (
                file.nameservers,
                path,
                file.search,
                Some(a.resolv_conf.clone()),
            )
        } else {
            let ups = a
                .dns_upstream
                .iter()
                .map(|s| parse_upstream(s).ok_or_else(|| ConfigError::Upstream(s.clone())))
                .collect::<Result<Vec<_>, _>>()?;
            (ups, "--dns-upstream".to_owned(), Vec::new(), None)
        };
        if let Some(list) = &a.dns_search {
            search = list
                .split([',', ' ', '\t'])
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
        }

        if let (Some(api), Some(socket)) = (&a.api_socket, &a.listen.socket_path) {
            let same =
                |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
            if same(api) == same(socket) {
                return Err(ConfigError::SamePath(api.clone()));
            }
        }
        let proxy = match &a.proxy_target {
            Some(t) => Some((
                a.proxy_port,
                parse_proxy_target(t).ok_or_else(|| ConfigError::ProxyTarget(t.clone()))?,
            )),
            None => None,
        };

        // Zones we own: the parent domains of our names, when they are under
        // `.internal` (reserved for private use); never a public domain.
        let mut zones: Vec<ZoneSpec> = Vec::new();
        for name in [&a.gateway_name, &a.host_name, &a.proxy_name] {
            let Some((_, zone)) = name.trim_end_matches('.').split_once('.') else {
                continue;
            };
            let zone = zone.to_ascii_lowercase();
            let ours = zone == "internal" || zone.ends_with(".internal");
            if ours && !zones.iter().any(|z| z.name == zone) {
                zones.push(ZoneSpec {
                    name: zone,
                    target: ZoneTarget::Local,
                });
            }
        }
        let mut configured: Vec<ZoneSpec> = Vec::new();
        for z in &a.dns_zone {
            let spec = parse_zone(z)?;
            match configured.iter_mut().find(|c| c.name == spec.name) {
                None => configured.push(spec),
                Some(c) => match (&mut c.target, spec.target) {
                    (ZoneTarget::Upstreams(list), ZoneTarget::Upstreams(more)) => list.extend(more),
                    _ => return Err(ConfigError::ZoneMixed(spec.name)),
                },
            }
        }
        // A configured zone replaces a built-in one of the same name.
        zones.retain(|z| !configured.iter().any(|c| c.name == z.name));
        zones.extend(configured);

        let mut publish_specs = Vec::new();
        for p in &a.publish {
            let specs = airlock_api::parse_publish(p, guest_ip)?;
            if a.no_ipv6 && specs.iter().any(|s| s.guest.is_ipv6()) {
                return Err(ConfigError::PublishIpv6Off(p.clone()));
            }
            publish_specs.extend(specs);
        }
        let mut cli_rules = Vec::new();
        for (action, r) in &a.rules {
            let flag = if *action == Action::Allow {
                "allow"
            } else {
                "deny"
            };
            cli_rules
                .push(Rule::parse(*action, r).map_err(|e| ConfigError::Rule(flag, r.clone(), e))?);
        }
        let default = a
            .egress
            .parse::<Action>()
            .map_err(|_| ConfigError::Egress(a.egress.clone()))?;
        let policy = PolicySource {
            cli_rules,
            default: Some(default),
            file: a.egress_rules.clone(),
        };
        policy.load().map_err(ConfigError::RulesFile)?;

        let dhcp = DhcpConfig {
            server_ip: gateway_ip,
            guest_ip,
            prefix_len: prefix,
            router: gateway_ip,
            dns_servers: vec![gateway_ip],
            mtu: a.mtu,
            lease_time: Duration::from_secs(a.lease_time.max(60)),
            domain_name: None,
            search_domains: Vec::new(),
        };
        Ok(Config {
            listen: a.listen,
            gateway: GatewayConfig {
                gateway_mac,
                gateway_ip,
                prefix_len: prefix,
                guest_ip,
                host_ip: (!a.no_host_alias).then_some(host_ip),
                proxy_ip,
                proxy,
                mtu: usize::from(a.mtu),
                dhcp,
                publish_source: a.publish_source.into(),
                max_flows: a.max_flows,
                tcp: TcpLimits {
                    buffer,
                    connect_timeout: Duration::from_secs(a.tcp_connect_timeout),
                },
                udp_timeout: Duration::from_secs(a.udp_timeout),
                ipv6,
            },
            rlimit_nofile: a.rlimit_nofile.unwrap_or(a.max_flows as u64 + 1024),
            confine: a.confine,
            seccomp: a.seccomp.seccomp.unwrap_or_default(),
            offloads: Offloads {
                csum: !a.no_checksum_offload,
                tso: !a.no_checksum_offload && !a.no_segmentation_offload,
            },
            exit_on_disconnect: a.lifecycle.exit_on_disconnect,
            log: a.log,
            dns: DnsSettings {
                upstreams,
                source,
                search: dns::normalize_search(&search),
                zones,
                records,
            },
            search_from_file: resolv_conf.is_some() && a.dns_search.is_none(),
            resolv_conf,
            publish: publish_specs,
            policy,
            audit_log: a.audit_log,
            api_socket: a.api_socket,
            transport: a.transport,
            pcap,
        })
    }
}

/// Test support: the gateway `airlock-net --dns-upstream 127.0.0.1` makes,
/// and a [`Shared`](airlock_netcore::Shared) for it with the default policy.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use airlock_netcore::{GatewayConfig, PolicySource, Shared};

    /// The default configuration, as the command line makes it.
    pub fn gateway_config() -> GatewayConfig {
        let args = crate::args::Args::try_parse_ordered_from([
            "airlock-net",
            "--socket-path",
            "/nonexistent/net.sock",
            "--dns-upstream",
            "127.0.0.1",
        ])
        .unwrap();
        super::Config::try_from(args).unwrap().gateway
    }

    /// The state a session shares with the control API, for
    /// [`gateway_config`]'s guest.
    pub fn shared() -> Arc<Shared> {
        Shared::new(
            gateway_config().guest_ip,
            PolicySource::default(),
            Default::default(),
            None,
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["airlock-net", "--dns-upstream", "127.0.0.1"];
        full.extend_from_slice(args);
        Config::try_from(Args::try_parse_ordered_from(full).unwrap())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&[]).unwrap();
        let g = &c.gateway;
        assert_eq!(g.gateway_ip, Ipv4Addr::new(192, 168, 127, 1));
        assert_eq!(g.guest_ip, Ipv4Addr::new(192, 168, 127, 2));
        assert_eq!(g.host_ip, Some(Ipv4Addr::new(192, 168, 127, 254)));
        assert_eq!(g.proxy_ip, Ipv4Addr::new(192, 168, 127, 253));
        assert_eq!(g.prefix_len, 24);
        assert_eq!(g.mtu, 65520);
        assert_eq!(g.max_flows, 4096);
        assert_eq!(g.tcp.buffer, 256 * 1024);
        assert_eq!(
            c.dns.upstreams,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.dns.records.lookup("host.airlock.internal"),
            Some(Ipv4Addr::new(192, 168, 127, 254))
        );
        assert_eq!(
            c.dns.records.lookup("HTTP.airlock.internal."),
            Some(Ipv4Addr::new(192, 168, 127, 253))
        );
        assert!(c
            .dns
            .records
            .iter()
            .all(|r| r.source == RecordSource::Builtin));
        assert!(c.offloads.csum && c.offloads.tso);
        assert_eq!(
            c.dns.zones,
            vec![ZoneSpec {
                name: "airlock.internal".into(),
                target: ZoneTarget::Local
            }]
        );
        // --dns-upstream: nothing to follow, no search list.
        assert_eq!((c.resolv_conf, c.search_from_file), (None, false));
        assert!(c.dns.search.is_empty());
    }

    #[test]
    fn other_subnet_derives_addresses() {
        let c = parse(&["--subnet", "10.9.0.0/16", "--no-host-alias"]).unwrap();
        assert_eq!(c.gateway.gateway_ip, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(c.gateway.guest_ip, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(c.gateway.proxy_ip, Ipv4Addr::new(10, 9, 255, 253));
        assert_eq!(c.gateway.host_ip, None);
        assert_eq!(c.dns.records.lookup("host.airlock.internal"), None);
    }

    #[test]
    fn records_upstreams_sizes_targets() {
        let c = parse(&[
            "--dns-record",
            "db.example.test=10.1.2.3",
            "--dns-upstream",
            "[::1]:5353",
            "--tcp-buffer",
            "1M",
            "--proxy-target",
            "unix:/run/proxy.sock",
        ])
        .unwrap();
        assert_eq!(
            c.dns.records.lookup("db.example.test"),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(c.dns.upstreams.len(), 2);
        assert_eq!(
            c.dns.upstreams[1],
            "[::1]:5353".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.gateway.tcp.buffer, 1 << 20);
        assert_eq!(
            c.gateway.proxy,
            Some((3128, Target::Unix("/run/proxy.sock".into())))
        );
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        assert!(matches!(
            parse(&["--subnet", "192.168.127.0/30"]),
            Err(ConfigError::Subnet(_))
        ));
        assert!(matches!(
            parse(&["--subnet", "nonsense"]),
            Err(ConfigError::Subnet(_))
        ));
        // Subnets smoltcp (or the guest) cannot use as unicast addresses.
        for (subnet, block) in [
            ("224.0.0.0/24", "224.0.0.0/4"),
            ("239.255.255.0/24", "224.0.0.0/4"),
            ("127.0.0.0/24", "127.0.0.0/8"),
            ("0.0.0.0/24", "0.0.0.0/8"),
            ("255.255.255.0/24", "240.0.0.0/4"),
            ("240.0.0.0/16", "240.0.0.0/4"),
            // A short prefix that reaches into loopback.
            ("96.0.0.0/3", "127.0.0.0/8"),
        ] {
            match parse(&["--subnet", subnet]) {
                Err(e @ ConfigError::SubnetReserved(_, b, _)) if b == block => {
                    assert!(e.to_string().contains(block), "{e}")
                }
                other => panic!("{subnet}: {other:?}"),
            }
        }
        let e = parse(&["--subnet", "10.0.0.5/24"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --subnet \"10.0.0.5/24\": host bits are set; the network is 10.0.0.0/24"
        );
        assert!(parse(&["--subnet", "223.255.255.0/24"]).is_ok());
        assert!(parse(&["--subnet", "1.0.0.0/8"]).is_ok());
        assert!(matches!(
            parse(&["--guest-ip", "10.0.0.2"]),
            Err(ConfigError::OutsideSubnet("guest-ip", ..))
        ));
        assert!(matches!(
            parse(&["--guest-ip", "192.168.127.255"]),
            Err(ConfigError::OutsideSubnet(..))
        ));
        assert!(matches!(
            parse(&["--host-ip", "192.168.127.1"]),
            Err(ConfigError::Duplicate("gateway", "host-ip", _))
        ));
        assert!(matches!(
            parse(&["--gateway-mac", "ff:ff:ff:ff:ff:ff"]),
            Err(ConfigError::Mac(_))
        ));
        assert!(matches!(
            parse(&["--gateway-mac", "5a:94:ef"]),
            Err(ConfigError::Mac(_))
        ));
        assert!(matches!(
            parse(&["--mtu", "100"]),
            Err(ConfigError::Mtu(100))
        ));
        assert!(matches!(
            parse(&["--dns-upstream", "dns.google"]),
            Err(ConfigError::Upstream(_))
        ));
        assert!(matches!(
            parse(&["--dns-record", "x"]),
            Err(ConfigError::Record(_))
        ));
        assert!(matches!(
            parse(&["--dns-record", "a..b=1.2.3.4"]),
            Err(ConfigError::RecordValue(..))
        ));
        assert!(matches!(
            parse(&["--tcp-buffer", "1K"]),
            Err(ConfigError::Size(_))
        ));
        assert!(matches!(
            parse(&["--proxy-target", "nowhere"]),
            Err(ConfigError::ProxyTarget(_))
        ));
        let e = parse(&["--proxy-target", "localhost:3128"]).unwrap_err();
        assert!(e.to_string().contains("names are not resolved"), "{e}");
        let e = parse(&[
            "--socket-path",
            "/run/x/net.sock",
            "--api-socket",
            "/run/x/./net.sock",
        ])
        .unwrap_err();
        assert!(matches!(e, ConfigError::SamePath(_)), "{e}");
        assert!(matches!(
            parse(&["--max-flows", "0"]),
            Err(ConfigError::MaxFlows)
        ));
    }

    /// The AAAA record of `name` (lowercase, no trailing dot).
    fn aaaa(c: &Config, name: &str) -> Option<Ipv6Addr> {
        c.dns.records.find(name).into_iter().find_map(|d| match d {
            RecordData::Aaaa(ip) => Some(*ip),
            _ => None,
        })
    }

    #[test]
    fn ipv6_prefix_is_derived_from_the_subnet_or_given_or_off() {
        let c = parse(&[]).unwrap();
        let v6 = c.gateway.ipv6.clone().unwrap();
        assert_eq!(
            v6.prefix,
            "fd61:6972:c0a8:7f00::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.gateway,
            "fd61:6972:c0a8:7f00::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.host, Some("fd61:6972:c0a8:7f00::fe".parse().unwrap()));
        assert_eq!(
            v6.proxy,
            "fd61:6972:c0a8:7f00::fd".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(aaaa(&c, "host.airlock.internal"), v6.host);
        assert_eq!(aaaa(&c, "gateway.airlock.internal"), Some(v6.gateway));
        let c = parse(&["--subnet", "10.9.0.0/16"]).unwrap();
        assert_eq!(
            c.gateway.ipv6.unwrap().prefix,
            "fd61:6972:a09::".parse::<Ipv6Addr>().unwrap()
        );
        let c = parse(&["--subnet6", "2001:db8:1:2:3::/64", "--no-host-alias"]).unwrap();
        let v6 = c.gateway.ipv6.unwrap();
        assert_eq!(v6.prefix, "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.host, None);
        let c = parse(&["--no-ipv6", "--dns-record", "db.test=fd00::7"]).unwrap();
        assert!(c.gateway.ipv6.is_none());
        assert_eq!(aaaa(&c, "gateway.airlock.internal"), None);
        assert_eq!(aaaa(&c, "db.test"), Some("fd00::7".parse().unwrap()));
        for bad in ["fd00::/48", "fe80::/64", "ff02::/64", "nonsense", "fd00::"] {
            assert!(
                matches!(parse(&["--subnet6", bad]), Err(ConfigError::Subnet6(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn resolv_conf_is_the_default_upstream_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# test\nnameserver 10.0.0.53\nnameserver ::1\nsearch Corp.Example lab.corp.example .\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let c = Config::try_from(
            Args::try_parse_ordered_from(["airlock-net", "--resolv-conf", file]).unwrap(),
        )
        .unwrap();
        assert_eq!(c.dns.upstreams.len(), 2);
        assert_eq!(
            c.dns.upstreams[0],
            "10.0.0.53:53".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.dns.search, ["corp.example", "lab.corp.example"]);
        assert_eq!(c.dns.source, file);
        assert_eq!(c.resolv_conf.as_deref(), Some(path.as_path()));
        assert!(c.search_from_file);
        // --dns-search replaces the file's list, '' with none.
        let with = |list: &str| {
            Config::try_from(
                Args::try_parse_ordered_from([
                    "airlock-net",
                    "--resolv-conf",
                    file,
                    "--dns-search",
                    list,
                ])
                .unwrap(),
            )
            .unwrap()
        };
        let c = with("a.test, b.test c.test,,");
        assert_eq!(c.dns.search, ["a.test", "b.test", "c.test"]);
        assert!(!c.search_from_file);
        assert!(with("").dns.search.is_empty());
        // An unreadable file: no resolvers yet, but it is still followed.
        let c = Config::try_from(
            Args::try_parse_ordered_from([
                "airlock-net",
                "--resolv-conf",
                "/nonexistent/resolv.conf",
            ])
            .unwrap(),
        )
        .unwrap();
        assert!(c.dns.upstreams.is_empty());
        assert!(c.resolv_conf.is_some());
    }

    #[test]
    fn zones_and_record_types() {
        let c = parse(&[
            "--dns-zone",
            "Corp.Test=10.0.0.53",
            "--dns-zone",
            "corp.test=[fd00::53]:5353",
            "--dns-zone",
            "lab.test=local",
            "--dns-zone",
            "airlock.internal=127.0.0.1:5300",
            "--dns-record",
            "v6.test=fd00::1",
            "--dns-record",
            "alias.test=Web.Test.",
            "--dns-record",
            "*.apps.test=10.0.0.9",
        ])
        .unwrap();
        let zone = |name: &str| {
            c.dns
                .zones
                .iter()
                .find(|z| z.name == name)
                .map(|z| z.target.clone())
        };
        assert_eq!(
            zone("corp.test"),
            Some(ZoneTarget::Upstreams(vec![
                "10.0.0.53:53".parse().unwrap(),
                "[fd00::53]:5353".parse().unwrap()
            ]))
        );
        assert_eq!(zone("lab.test"), Some(ZoneTarget::Local));
        assert_eq!(
            zone("airlock.internal"),
            Some(ZoneTarget::Upstreams(vec!["127.0.0.1:5300"
                .parse()
                .unwrap()])),
            "a configured zone replaces the built-in one"
        );
        assert_eq!(c.dns.zones.len(), 3);
        let records: Vec<(String, RecordData)> = c
            .dns
            .records
            .iter()
            .filter(|r| r.source == RecordSource::Config)
            .map(|r| (r.name.clone(), r.data.clone()))
            .collect();
        assert_eq!(
            records,
            [
                (
                    "v6.test".to_owned(),
                    RecordData::Aaaa("fd00::1".parse().unwrap())
                ),
                (
                    "alias.test".to_owned(),
                    RecordData::Cname("web.test".into())
                ),
                (
                    "*.apps.test".to_owned(),
                    RecordData::A(Ipv4Addr::new(10, 0, 0, 9))
                ),
            ]
        );
        for bad in [
            "corp.test",
            "corp.test=",
            "corp.test=dns.google",
            "bad zone=1.2.3.4",
            "=1.2.3.4",
        ] {
            assert!(
                matches!(parse(&["--dns-zone", bad]), Err(ConfigError::Zone(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(&[
                "--dns-zone",
                "x.test=local",
                "--dns-zone",
                "x.test=10.0.0.1"
            ]),
            Err(ConfigError::ZoneMixed(_))
        ));
        for bad in ["a.test=bad value", "a.test=1.2.3", "a..b=1.2.3.4"] {
            assert!(
                matches!(
                    parse(&["--dns-record", bad]),
                    Err(ConfigError::RecordValue(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(&[
                "--dns-record",
                "a.test=b.test",
                "--dns-record",
                "a.test=10.0.0.1"
            ]),
            Err(ConfigError::RecordValue(..))
        ));
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["airlock-net", "--dns-upstream", "127.0.0.1"];
        full.extend_from_slice(args);
        Config::try_from(Args::try_parse_ordered_from(full).unwrap())
    }

    #[test]
    fn allow_and_deny_keep_their_order() {
        let c = parse(&[
            "--deny",
            "10.0.0.0/8",
            "--allow",
            "10.1.0.0/16",
            "--deny",
            "0.0.0.0/0:25/tcp",
            "--egress",
            "deny",
        ])
        .unwrap();
        let p = c.policy.load().unwrap();
        let texts: Vec<String> = p.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            texts,
            vec![
                "deny 10.0.0.0/8",
                "allow 10.1.0.0/16",
                "deny 0.0.0.0/0:25/tcp"
            ]
        );
        assert_eq!(p.default, Action::Deny);
        // First match wins: 10.1.2.3 is denied by the earlier /8.
        assert!(!p
            .decide(
                airlock_api::Proto::Tcp,
                Ipv4Addr::new(10, 1, 2, 3).into(),
                Some(80)
            )
            .allowed());
    }

    #[test]
    fn publish_and_rule_errors() {
        let c = parse(&["-p", "8080:80", "--publish", "0.0.0.0:5353:53/udp"]).unwrap();
        assert_eq!(c.publish.len(), 2);
        let c = parse(&["-p", "[::1]:8080:80/tcp6"]).unwrap();
        assert_eq!(c.publish[0].guest, airlock_api::guest_ipv6(80));
        assert!(matches!(
            parse(&["-p", "8080:80/tcp6", "--no-ipv6"]),
            Err(ConfigError::PublishIpv6Off(_))
        ));
        assert!(matches!(
            parse(&["-p", "nope"]),
            Err(ConfigError::Publish(_))
        ));
        assert!(matches!(
            parse(&["--deny", "10.0.0.0/40"]),
            Err(ConfigError::Rule("deny", ..))
        ));
        assert!(matches!(
            parse(&["--egress", "maybe"]),
            Err(ConfigError::Egress(_))
        ));
        assert!(matches!(
            parse(&["--egress-rules", "/no/such/airlock-rules"]),
            Err(ConfigError::RulesFile(_))
        ));
    }
}
