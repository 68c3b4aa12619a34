//! What a gateway is told at start: its addresses, services, limits and
//! timeouts, checked by the daemon's command-line layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use smoltcp::wire::EthernetAddress;

use crate::flows::tcp::TcpLimits;
use crate::host::Target;
use crate::services::dhcp::DhcpConfig;

/// Everything the gateway needs to know, checked by the config layer.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub gateway_mac: EthernetAddress,
    pub gateway_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub guest_ip: Ipv4Addr,
    /// `host.airlock.internal`: connections go to the host's loopback.
    pub host_ip: Option<Ipv4Addr>,
    /// `http.airlock.internal`: the proxy alias, and where it leads.
    pub proxy_ip: Ipv4Addr,
    pub proxy: Option<(u16, Target)>,
    pub mtu: usize,
    /// DHCP; its search list is the DNS service's (see [`crate::Shared`]).
    pub dhcp: DhcpConfig,
    /// Where published-port clients appear to come from.
    pub publish_source: PublishSource,
    pub max_flows: usize,
    pub tcp: TcpLimits,
    pub udp_timeout: Duration,
    /// The IPv6 side of the link; `None` with `--no-ipv6`.
    pub ipv6: Option<Ipv6Config>,
}

/// The guest's IPv6 network: one /64 with the gateway and the aliases in
/// it, announced by Router Advertisements and served by DHCPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Config {
    /// The /64 prefix (its first 64 bits; the rest is zero).
    pub prefix: Ipv6Addr,
    /// The router, DNS and DHCPv6 server: `PREFIX::1`.
    pub gateway: Ipv6Addr,
    /// `host.airlock.internal`: connections go to the host's `::1`.
    pub host: Option<Ipv6Addr>,
    /// `http.airlock.internal`.
    pub proxy: Ipv6Addr,
    /// Valid lifetime of DHCPv6 leases (also the preferred one).
    pub lease_time: Duration,
}

/// The length of the guest's IPv6 prefix (SLAAC needs a /64).
pub const PREFIX6_LEN: u8 = 64;

/// The modified EUI-64 interface identifier of `mac` (RFC 4291 §2.5.1),
/// as the low 64 bits of an address.
pub fn eui64(mac: EthernetAddress) -> u64 {
    let m = mac.0;
    u64::from_be_bytes([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

impl Ipv6Config {
    /// The address in the prefix with interface identifier `iid`.
    pub fn address(&self, iid: u64) -> Ipv6Addr {
        Ipv6Addr::from((u128::from(self.prefix) & !u128::from(u64::MAX)) | u128::from(iid))
    }

    /// Whether `a` is in the guest's /64.
    pub fn in_prefix(&self, a: Ipv6Addr) -> bool {
        u128::from(a) >> 64 == u128::from(self.prefix) >> 64
    }

    /// The gateway's link-local address (from its MAC), the source of its
    /// Router Advertisements and DHCPv6 replies.
    pub fn link_local(mac: EthernetAddress) -> Ipv6Addr {
        Ipv6Addr::from((0xfe80u128 << 112) | u128::from(eui64(mac)))
    }
}

/// What a destination address is to the gateway.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// The gateway itself (either family, its link-local address too).
    Gateway,
    /// `host.airlock.internal`.
    HostAlias,
    /// `http.airlock.internal`.
    ProxyAlias,
    /// On the guest's link but nobody the gateway answers for.
    OnLink,
    /// Loopback, multicast, unspecified, v4-mapped …: never NATed.
    Unroutable,
    /// Anywhere else: NAT through a host socket.
    Outside,
}

impl GatewayConfig {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub(crate) fn in_subnet(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.gateway_ip) & self.mask()
    }

    pub(crate) fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway_ip) | !self.mask())
    }

    /// Addresses the gateway itself answers for.
    pub(crate) fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.gateway_ip || Some(a) == self.host_ip || a == self.proxy_ip
    }

    /// IPv6 addresses the gateway answers for: its own (global and
    /// link-local) and the aliases.
    pub(crate) fn is_ours6(&self, a: Ipv6Addr) -> bool {
        self.ipv6.as_ref().is_some_and(|v6| {
            a == v6.gateway
                || Some(a) == v6.host
                || a == v6.proxy
                || a == Ipv6Config::link_local(self.gateway_mac)
        })
    }

    /// What `a` is: one of the gateway's addresses, on the guest's link, or
    /// a NAT destination.
    pub(crate) fn classify(&self, a: IpAddr) -> Dest {
        match a {
            IpAddr::V4(a) => {
                if a == self.gateway_ip {
                    Dest::Gateway
                } else if Some(a) == self.host_ip {
                    Dest::HostAlias
                } else if a == self.proxy_ip {
                    Dest::ProxyAlias
                } else if !crate::flows::is_routable(a) {
                    Dest::Unroutable
                } else if self.in_subnet(a) {
                    Dest::OnLink
                } else {
                    Dest::Outside
                }
            }
            IpAddr::V6(a) => {
                let Some(v6) = &self.ipv6 else {
                    return Dest::Unroutable;
                };
                if a == v6.gateway || a == Ipv6Config::link_local(self.gateway_mac) {
                    Dest::Gateway
                } else if Some(a) == v6.host {
                    Dest::HostAlias
                } else if a == v6.proxy {
                    Dest::ProxyAlias
                } else if !crate::flows::is_routable6(a) {
                    Dest::Unroutable
                } else if v6.in_prefix(a) || a.is_unicast_link_local() {
                    Dest::OnLink
                } else {
                    Dest::Outside
                }
            }
        }
    }
}

/// Where the guest sees published connections come from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum PublishSource {
    /// The gateway's address (like Docker's userland proxy).
    #[default]
    Gateway,
    /// The client's own address (loopback clients: the host alias).
    Client,
}
