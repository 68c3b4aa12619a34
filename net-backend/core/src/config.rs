//! What a gateway is told at start: its addresses, services, limits and
//! timeouts, checked by the daemon's command-line layer.

use std::net::Ipv4Addr;
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
