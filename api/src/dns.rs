//! The gateway's DNS service as the control API shows and changes it:
//! records added at run time, the resolvers in use and their counters, and
//! gvisor-tap-vsock's `/services/dns` zone shape.

use serde::{Deserialize, Serialize};

/// `GET`: the DNS service: resolvers, search list, zones, records.
pub const DNS: &str = "/dns";
/// `POST` [`DnsRecord`]: add a record.
pub const DNS_ADD: &str = "/dns/add";
/// `POST` [`DnsRemoveRequest`]: remove records.
pub const DNS_REMOVE: &str = "/dns/remove";
/// `POST` [`GvZone`]: gvisor-tap-vsock's way to add records.
pub const GV_DNS_ADD: &str = "/services/dns/add";
/// `GET`: gvisor-tap-vsock's zone list.
pub const GV_DNS_ALL: &str = "/services/dns/all";

/// One local record. In a request `type` may be left out: an IPv4 address
/// is an A record, an IPv6 address AAAA, a host name a CNAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// `web.test`, or `*.apps.test` for every name below `apps.test`.
    pub name: String,
    /// `A`, `AAAA` or `CNAME`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub rtype: Option<String>,
    /// The address, or the CNAME's target.
    pub value: String,
    /// Where it came from: `builtin`, `config` (`--dns-record`) or `api`
    /// (set by the daemon; ignored in requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `POST /dns/remove`: the records of `name`, or only the one with `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRemoveRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A zone with its own rule: `local` (answered here, NXDOMAIN for names
/// without records) or the resolvers that alone get its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsZone {
    pub zone: String,
    /// `local`, or `ADDR:PORT[,ADDR:PORT…]`.
    pub target: String,
}

/// `GET /dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsInfo {
    /// Where the resolvers come from: a resolv.conf path (watched) or
    /// `--dns-upstream`.
    pub source: String,
    /// The resolvers for names outside every zone, in order.
    pub upstreams: Vec<String>,
    /// The search list DHCP hands out (option 119; the first is option 15).
    pub search: Vec<String>,
    pub zones: Vec<DnsZone>,
    pub records: Vec<DnsRecord>,
}

/// Counters of the DNS service (part of `GET /stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsStats {
    /// Queries answered from local records or local zones.
    pub local: u64,
    /// Queries sent on to an upstream resolver.
    pub forwarded: u64,
    /// Queries answered SERVFAIL because no upstream answered.
    pub failed: u64,
    /// Every upstream used since the daemon started.
    pub upstreams: Vec<DnsUpstreamStats>,
}

/// One upstream resolver's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsUpstreamStats {
    pub address: String,
    /// Among the current resolvers (or a zone's).
    pub in_use: bool,
    /// Recently failed: tried after the others.
    pub down: bool,
    /// Queries sent over UDP (each attempt counts).
    pub queries: u64,
    /// Queries sent over TCP.
    pub tcp_queries: u64,
    pub answers: u64,
    /// Attempts it did not answer in time.
    pub timeouts: u64,
    /// ICMP unreachable, refused connections, failed sends.
    pub unreachable: u64,
}

/// gvisor-tap-vsock's `types.Zone` (`POST /services/dns/add`, `GET
/// /services/dns/all`). Field names are matched without regard to case,
/// as Go's JSON decoder does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvZone {
    /// `dynamic.internal.` (the trailing dot is optional).
    #[serde(rename = "Name", alias = "name", alias = "NAME", default)]
    pub name: String,
    #[serde(
        rename = "Records",
        alias = "records",
        alias = "RECORDS",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub records: Vec<GvRecord>,
    /// The address of every other name in the zone ("" for none).
    #[serde(
        rename = "DefaultIP",
        alias = "defaultIP",
        alias = "defaultip",
        alias = "DefaultIp",
        alias = "defaultIp",
        alias = "DEFAULTIP",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub default_ip: String,
}

/// gvisor-tap-vsock's `types.Record`: `Name` is relative to the zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GvRecord {
    #[serde(rename = "Name", alias = "name", alias = "NAME", default)]
    pub name: String,
    #[serde(
        rename = "IP",
        alias = "ip",
        alias = "Ip",
        alias = "iP",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub ip: String,
    /// Not supported here (a request with one is refused); always null.
    #[serde(
        rename = "Regexp",
        alias = "regexp",
        alias = "REGEXP",
        alias = "RegExp",
        default
    )]
    pub regexp: Option<String>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvisor_zone_shapes_decode() {
        // pkg/client's AddDNS, as Go's json.Marshal writes a types.Zone.
        let z: GvZone = serde_json::from_str(
            r#"{"Name":"dynamic.internal.","Records":[{"Name":"test","IP":"192.168.127.254"}],"DefaultIP":""}"#,
        )
        .unwrap();
        assert_eq!(z.name, "dynamic.internal.");
        assert_eq!(z.records[0].ip, "192.168.127.254");
        assert_eq!(z.records[0].regexp, None);
        // Go matches field names without regard to case; nil slices and IPs.
        let z: GvZone =
            serde_json::from_str(r#"{"name":"apps.test","records":null,"defaultIP":"10.0.0.9"}"#)
                .unwrap();
        assert_eq!((z.records.len(), z.default_ip.as_str()), (0, "10.0.0.9"));
        let r: GvRecord = serde_json::from_str(r#"{"Name":"a","IP":null,"Regexp":null}"#).unwrap();
        assert_eq!((r.ip.as_str(), r.regexp), ("", None));
        assert!(serde_json::from_str::<GvZone>(r#"{"Name":"x","Zone":"y"}"#).is_err());
        let text = serde_json::to_string(&GvZone {
            name: "a.".into(),
            records: vec![GvRecord {
                name: "b".into(),
                ip: "10.0.0.1".into(),
                regexp: None,
            }],
            default_ip: String::new(),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"Name":"a.","Records":[{"Name":"b","IP":"10.0.0.1","Regexp":null}],"DefaultIP":""}"#
        );
    }

    #[test]
    fn records_take_an_optional_type() {
        let r: DnsRecord =
            serde_json::from_str(r#"{"name":"web.test","value":"10.0.0.5"}"#).unwrap();
        assert_eq!(r.rtype, None);
        let r: DnsRecord =
            serde_json::from_str(r#"{"name":"a.test","type":"CNAME","value":"b.test"}"#).unwrap();
        assert_eq!(r.rtype.as_deref(), Some("CNAME"));
        assert!(serde_json::from_str::<DnsRecord>(r#"{"name":"a","value":"b","ttl":5}"#).is_err());
    }
}
