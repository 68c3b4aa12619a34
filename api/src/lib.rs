//! airlock-net's control API as it crosses the socket: the request and
//! response bodies (JSON), the endpoints, and the `--publish` /
//! `airlock publish` port syntax. Used by the daemon, which serves these,
//! and by the `airlock` CLI, which sends and shows them; nothing here knows
//! sockets, smoltcp or virtqueues.
//!
//! | request | success | body |
//! |---|---|---|
//! | `POST` [`EXPOSE`] [`ExposeRequest`] | 200 | the published [`PortEntry`] |
//! | `POST` [`UNEXPOSE`] [`UnexposeRequest`] | 200 | the removed [`PortEntry`] |
//! | `GET` [`ALL`] | 200 | `[`[`PortEntry`]`]` |
//! | `GET` [`STATS`] | 200 | [`Stats`] |
//! | `GET` [`FLOWS`] | 200 | `[`[`FlowInfo`]`]` |
//! | `GET` [`LEASES`] | 200 | `[`[`Lease`]`]` |
//! | `GET` [`DNS`] | 200 | [`DnsInfo`] |
//! | `POST` [`DNS_ADD`] [`DnsRecord`] | 200 | the added [`DnsRecord`] |
//! | `POST` [`DNS_REMOVE`] [`DnsRemoveRequest`] | 200 | `[`[`DnsRecord`]`]` removed |
//! | `POST` [`GV_DNS_ADD`] [`GvZone`] | 200 | the zone as stored ([`GvZone`]) |
//! | `GET` [`GV_DNS_ALL`] | 200 | `[`[`GvZone`]`]` |
//!
//! Errors are `{"error": "…"}` ([`ErrorBody`]).

pub mod dns;
pub mod publish;

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use dns::*;
pub use publish::{guest_ipv6, parse_publish, PortSpec, SpecError, GUEST_IPV6};

/// `POST`: publish a port (gvisor-tap-vsock's forwarder API).
pub const EXPOSE: &str = "/services/forwarder/expose";
/// `POST`: unpublish a port.
pub const UNEXPOSE: &str = "/services/forwarder/unexpose";
/// `GET`: every published port.
pub const ALL: &str = "/services/forwarder/all";
/// `GET`: the gateway's counters.
pub const STATS: &str = "/stats";
/// `GET`: the current guest's flows.
pub const FLOWS: &str = "/flows";
/// `GET`: the DHCP leases.
pub const LEASES: &str = "/leases";

/// A transport protocol, as policy rules, published ports and flows name it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// `POST /services/forwarder/expose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// The host address that accepts: `IP:PORT`, `[IPv6]:PORT` or `:PORT`.
    pub local: String,
    /// Where in the guest traffic goes: `IP:PORT` or `:PORT` (the guest).
    pub remote: String,
    /// `tcp` (default) or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `POST /services/forwarder/unexpose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnexposeRequest {
    pub local: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// One published port as the forwarder API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub local: String,
    pub remote: String,
    pub protocol: String,
}

impl From<PortSpec> for PortEntry {
    fn from(s: PortSpec) -> PortEntry {
        PortEntry {
            local: s.host.to_string(),
            remote: s.guest.to_string(),
            protocol: s.proto.to_string(),
        }
    }
}

/// One DHCP lease (DHCPv4 or DHCPv6) as `GET /leases` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// `52:54:00:12:34:56`.
    pub mac: String,
    /// An IPv4 address, or an IPv6 one for a DHCPv6 lease.
    pub ip: IpAddr,
    pub hostname: Option<String>,
    /// Seconds until the lease expires.
    pub expires_in: u64,
}

/// Who opened a flow.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The guest connected out (NAT, host alias, proxy alias, DNS).
    #[default]
    Outbound,
    /// A host client connected to a published port.
    Inbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        })
    }
}

/// One flow as `GET /flows` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowInfo {
    pub proto: Proto,
    pub direction: Direction,
    /// The guest's endpoint.
    pub guest: String,
    /// The other end as the guest sees it.
    pub remote: String,
    /// The host side: where an outbound flow goes, or the client of an
    /// inbound one.
    pub host_side: String,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    pub age_ms: u64,
    /// A DNS query the gateway forwards (its own service).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
}

/// `GET /stats`: the gateway's counters since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Stats {
    pub guest_to_host: Traffic,
    pub host_to_guest: Traffic,
    pub flows: FlowCounts,
    /// Dropped frames by reason (`malformed`, `flow_limit`, …).
    pub drops: Vec<(String, u64)>,
    /// The DNS service and its upstream resolvers.
    pub dns: DnsStats,
}

/// Frames and bytes in one direction.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Traffic {
    pub frames: u64,
    pub bytes: u64,
}

/// Flows per protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FlowCounts {
    pub tcp: FlowCount,
    pub udp: FlowCount,
    pub icmp: FlowCount,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FlowCount {
    pub opened: u64,
    pub closed: u64,
    pub refused: u64,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_and_stats_round_trip_and_tolerate_missing_fields() {
        let f = FlowInfo {
            proto: Proto::Udp,
            direction: Direction::Inbound,
            guest: "192.168.127.2:53".into(),
            service: false,
            ..FlowInfo::default()
        };
        let text = serde_json::to_string(&f).unwrap();
        assert!(!text.contains("service"), "{text}");
        assert!(text.contains(r#""proto":"udp""#), "{text}");
        assert_eq!(serde_json::from_str::<FlowInfo>(&text).unwrap(), f);
        // An older or newer daemon's stats still read.
        let s: Stats = serde_json::from_str(r#"{"flows": {"tcp": {"opened": 3}}}"#).unwrap();
        assert_eq!(s.flows.tcp.opened, 3);
        assert_eq!(s.guest_to_host, Traffic::default());
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let e = serde_json::from_str::<ExposeRequest>(
            r#"{"local": "127.0.0.1:1", "remote": ":80", "proto": "udp"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `proto`"), "{e}");
    }
}
