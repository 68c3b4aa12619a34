//! DHCPv6 server for the one guest behind airlock-net (RFC 8415, DNS
//! options from RFC 3646).
//!
//! Pure and transport-free, like [`super::dhcp`]: [`Dhcpv6Server::handle`]
//! takes the UDP payload the guest sent to port 547 and the MAC it came
//! from, and returns the payload to send back to the client's port 546.
//!
//! Policy:
//! - Stateless (Information-request): DNS servers (23), the domain search
//!   list (24) when there is one (the DNS service's, see
//!   [`Dhcpv6Server::set_search`]), and an information refresh time (32).
//! - Stateful IA_NA: one address per client MAC, the same one SLAAC gives
//!   it (the prefix plus the modified EUI-64 of the MAC), so a guest
//!   running both has one address. Lifetimes are `--lease-time` (preferred
//!   and valid), T1 half of it, T2 0.8. Solicit → Advertise (preference
//!   255: clients take it at once), or Reply with Rapid Commit if the
//!   client asked for it; Request, Renew, Rebind → Reply; Confirm → Reply
//!   with Success or NotOnLink; Release, Decline → Reply, lease dropped.
//! - IA_TA and IA_PD are answered with NoAddrsAvail / NoPrefixAvail.
//! - Messages naming another server (Server Identifier) are ignored; relay
//!   messages are not served on this link.
//! - Every configured option is always sent (the Option Request option is
//!   not used to filter), as for DHCPv4.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use smoltcp::wire::EthernetAddress;

use super::dhcp::LeaseInfo;
use super::dns::encode_names;
use crate::config::{eui64, GatewayConfig, Ipv6Config};

/// Message types (RFC 8415 §7.3).
mod msg {
    pub(super) const SOLICIT: u8 = 1;
    pub(super) const ADVERTISE: u8 = 2;
    pub(super) const REQUEST: u8 = 3;
    pub(super) const CONFIRM: u8 = 4;
    pub(super) const RENEW: u8 = 5;
    pub(super) const REBIND: u8 = 6;
    pub(super) const REPLY: u8 = 7;
    pub(super) const RELEASE: u8 = 8;
    pub(super) const DECLINE: u8 = 9;
    pub(super) const INFORMATION_REQUEST: u8 = 11;
    pub(super) const RELAY_FORW: u8 = 12;
}

/// Option codes (RFC 8415 §21, RFC 3646, RFC 4704).
mod opt {
    pub(super) const CLIENTID: u16 = 1;
    pub(super) const SERVERID: u16 = 2;
    pub(super) const IA_NA: u16 = 3;
    pub(super) const IA_TA: u16 = 4;
    pub(super) const IAADDR: u16 = 5;
    pub(super) const PREFERENCE: u16 = 7;
    pub(super) const STATUS_CODE: u16 = 13;
    pub(super) const RAPID_COMMIT: u16 = 14;
    pub(super) const DNS_SERVERS: u16 = 23;
    pub(super) const DOMAIN_LIST: u16 = 24;
    pub(super) const IA_PD: u16 = 25;
    pub(super) const INFORMATION_REFRESH_TIME: u16 = 32;
    pub(super) const CLIENT_FQDN: u16 = 39;
}

/// Status codes (RFC 8415 §21.13).
mod status {
    pub(super) const SUCCESS: u16 = 0;
    pub(super) const NO_ADDRS_AVAIL: u16 = 2;
    pub(super) const NOT_ON_LINK: u16 = 4;
    pub(super) const NO_PREFIX_AVAIL: u16 = 6;
}

/// The longest DUID (RFC 8415 §11.1).
const MAX_DUID: usize = 130;

/// Why a guest's DHCPv6 message was rejected; the caller drops it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dhcpv6Error {
    #[error("DHCPv6 message too short: {0} bytes")]
    Truncated(usize),
    #[error("DHCPv6 option {code} runs past the end of its message")]
    OptionOverflow { code: u16 },
    #[error("DHCPv6 option {code} has invalid length {len}")]
    BadOptionLength { code: u16, len: usize },
    #[error("DHCPv6 message type {0} needs a client identifier")]
    MissingClientId(u8),
    #[error("relayed DHCPv6 messages are not served on this link")]
    Relayed,
    #[error("unexpected DHCPv6 message type {0} from a client")]
    UnexpectedMessageType(u8),
}

/// A client message, its options located but not copied.
struct Request<'a> {
    kind: u8,
    xid: [u8; 3],
    client_id: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
    /// IA_NA IAIDs, in order.
    ia_na: Vec<[u8; 4]>,
    /// Addresses the client names in its IA_NAs (Confirm).
    ia_addrs: Vec<Ipv6Addr>,
    ia_ta: Vec<[u8; 4]>,
    ia_pd: Vec<[u8; 4]>,
    rapid_commit: bool,
    fqdn: Option<&'a [u8]>,
}

/// Walks `data` as a list of options.
fn walk(data: &[u8]) -> Result<Vec<(u16, &[u8])>, Dhcpv6Error> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let head = data
            .get(at..at + 4)
            .ok_or(Dhcpv6Error::Truncated(data.len()))?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = data
            .get(at + 4..at + 4 + len)
            .ok_or(Dhcpv6Error::OptionOverflow { code })?;
        out.push((code, body));
        at += 4 + len;
    }
    Ok(out)
}

fn iaid(code: u16, body: &[u8], min: usize) -> Result<[u8; 4], Dhcpv6Error> {
    if body.len() < min {
        return Err(Dhcpv6Error::BadOptionLength {
            code,
            len: body.len(),
        });
    }
    Ok([body[0], body[1], body[2], body[3]])
}

fn parse(payload: &[u8]) -> Result<Request<'_>, Dhcpv6Error> {
    let (&kind, rest) = payload
        .split_first()
        .ok_or(Dhcpv6Error::Truncated(payload.len()))?;
    if kind == msg::RELAY_FORW {
        return Err(Dhcpv6Error::Relayed);
    }
    let xid: [u8; 3] = rest
        .get(..3)
        .and_then(|x| x.try_into().ok())
        .ok_or(Dhcpv6Error::Truncated(payload.len()))?;
    let mut req = Request {
        kind,
        xid,
        client_id: None,
        server_id: None,
        ia_na: Vec::new(),
        ia_addrs: Vec::new(),
        ia_ta: Vec::new(),
        ia_pd: Vec::new(),
        rapid_commit: false,
        fqdn: None,
    };
    for (code, body) in walk(&rest[3..])? {
        let bad = || Dhcpv6Error::BadOptionLength {
            code,
            len: body.len(),
        };
        match code {
            opt::CLIENTID | opt::SERVERID => {
                if body.len() < 2 || body.len() > MAX_DUID {
                    return Err(bad());
                }
                if code == opt::CLIENTID {
                    req.client_id = Some(body);
                } else {
                    req.server_id = Some(body);
                }
            }
            opt::IA_NA => {
                req.ia_na.push(iaid(code, body, 12)?);
                for (sub, data) in walk(&body[12..])? {
                    if sub == opt::IAADDR {
                        let a: [u8; 16] = data.get(..16).and_then(|a| a.try_into().ok()).ok_or(
                            Dhcpv6Error::BadOptionLength {
                                code: sub,
                                len: data.len(),
                            },
                        )?;
                        req.ia_addrs.push(Ipv6Addr::from(a));
                    }
                }
            }
            opt::IA_TA => req.ia_ta.push(iaid(code, body, 4)?),
            opt::IA_PD => req.ia_pd.push(iaid(code, body, 12)?),
            opt::RAPID_COMMIT => {
                if !body.is_empty() {
                    return Err(bad());
                }
                req.rapid_commit = true;
            }
            opt::CLIENT_FQDN => req.fqdn = body.get(1..),
            _ => {}
        }
    }
    Ok(req)
}

/// A host name from a Client FQDN option's domain name: its labels joined
/// with dots, bytes outside printable ASCII replaced by `?`.
fn fqdn_name(wire: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        let len = usize::from(len);
        if len == 0 || len > 63 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + len)?;
        labels.push(
            label
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                .collect::<String>(),
        );
        at += 1 + len;
    }
    (!labels.is_empty()).then(|| labels.join("."))
}

fn put(out: &mut Vec<u8>, code: u16, data: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn status_option(out: &mut Vec<u8>, code: u16, message: &str) {
    let mut data = code.to_be_bytes().to_vec();
    data.extend_from_slice(message.as_bytes());
    put(out, opt::STATUS_CODE, &data);
}

/// One DHCPv6 lease.
#[derive(Debug, Clone)]
struct Lease {
    client_id: Vec<u8>,
    mac: EthernetAddress,
    addr: Ipv6Addr,
    hostname: Option<String>,
    granted_at: Instant,
    duration: Duration,
}

/// A reply to send from the server's port 547 to the client's port 546.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv6Reply {
    pub payload: Vec<u8>,
    /// The address the reply leases (or renews), if any.
    pub leased: Option<Ipv6Addr>,
}

/// The DHCPv6 server. See the module documentation for the policy.
#[derive(Debug)]
pub struct Dhcpv6Server {
    /// DUID-LL of the gateway's MAC.
    duid: Vec<u8>,
    v6: Ipv6Config,
    /// Option 23 payload.
    dns: Vec<u8>,
    /// Option 24 payload (empty: not sent).
    domains: Vec<u8>,
    lease_secs: u32,
    leases: Vec<Lease>,
}

impl Dhcpv6Server {
    /// A server without a search list: the gateway gives it the DNS
    /// service's ([`Dhcpv6Server::set_search`]).
    pub fn new(cfg: &GatewayConfig, v6: &Ipv6Config) -> Dhcpv6Server {
        let mut duid = vec![0, 3, 0, 1];
        duid.extend_from_slice(&cfg.gateway_mac.0);
        Dhcpv6Server {
            duid,
            dns: v6.gateway.octets().to_vec(),
            domains: Vec::new(),
            lease_secs: u32::try_from(v6.lease_time.as_secs())
                .unwrap_or(u32::MAX)
                .max(60),
            v6: v6.clone(),
            leases: Vec::new(),
        }
    }

    /// Sets the domain search list (option 24) of the replies from now on;
    /// clients pick it up when they renew or refresh their information.
    /// Names that are not valid host names are left out.
    pub fn set_search(&mut self, names: &[String]) {
        self.domains = encode_names(names);
    }

    /// The address a client at `mac` gets: the one SLAAC gives it.
    pub fn address_for(&self, mac: EthernetAddress) -> Ipv6Addr {
        self.v6.address(eui64(mac))
    }

    /// Handles one message the guest at `mac` sent to port 547. `Ok(None)`:
    /// no reply is due (a message for another server).
    pub fn handle(
        &mut self,
        payload: &[u8],
        mac: EthernetAddress,
        now: Instant,
    ) -> Result<Option<Dhcpv6Reply>, Dhcpv6Error> {
        let req = parse(payload)?;
        let ours = req.server_id.is_none_or(|id| id == self.duid);
        fn needs_client<'a>(req: &Request<'a>) -> Result<&'a [u8], Dhcpv6Error> {
            req.client_id.ok_or(Dhcpv6Error::MissingClientId(req.kind))
        }
        match req.kind {
            msg::SOLICIT => {
                let client = needs_client(&req)?;
                if req.server_id.is_some() {
                    return Ok(None);
                }
                if req.rapid_commit {
                    let leased = self.grant(&req, client, mac, now);
                    Ok(Some(self.reply(msg::REPLY, &req, mac, true, leased)))
                } else {
                    Ok(Some(self.reply(msg::ADVERTISE, &req, mac, false, None)))
                }
            }
            msg::REQUEST | msg::RENEW => {
                let client = needs_client(&req)?;
                if req.server_id.is_none() || !ours {
                    return Ok(None);
                }
                let leased = self.grant(&req, client, mac, now);
                Ok(Some(self.reply(msg::REPLY, &req, mac, false, leased)))
            }
            msg::REBIND => {
                let client = needs_client(&req)?;
                if req.server_id.is_some() {
                    return Ok(None);
                }
                let leased = self.grant(&req, client, mac, now);
                Ok(Some(self.reply(msg::REPLY, &req, mac, false, leased)))
            }
            msg::CONFIRM => {
                needs_client(&req)?;
                if req.ia_addrs.is_empty() || req.server_id.is_some() {
                    return Ok(None);
                }
                let on_link = req.ia_addrs.iter().all(|a| self.v6.in_prefix(*a));
                let mut out = self.header(msg::REPLY, &req);
                if on_link {
                    status_option(&mut out, status::SUCCESS, "all addresses on link");
                } else {
                    status_option(&mut out, status::NOT_ON_LINK, "not on this link");
                }
                Ok(Some(Dhcpv6Reply {
                    payload: out,
                    leased: None,
                }))
            }
            msg::RELEASE | msg::DECLINE => {
                let client = needs_client(&req)?;
                if req.server_id.is_none() || !ours {
                    return Ok(None);
                }
                self.leases.retain(|l| l.client_id != client);
                let mut out = self.header(msg::REPLY, &req);
                status_option(&mut out, status::SUCCESS, "released");
                Ok(Some(Dhcpv6Reply {
                    payload: out,
                    leased: None,
                }))
            }
            msg::INFORMATION_REQUEST => {
                if !ours {
                    return Ok(None);
                }
                let mut out = self.header(msg::REPLY, &req);
                self.config_options(&mut out);
                put(
                    &mut out,
                    opt::INFORMATION_REFRESH_TIME,
                    &self.lease_secs.to_be_bytes(),
                );
                Ok(Some(Dhcpv6Reply {
                    payload: out,
                    leased: None,
                }))
            }
            other => Err(Dhcpv6Error::UnexpectedMessageType(other)),
        }
    }

    /// Current leases, for the control API.
    pub fn leases(&self, now: Instant) -> Vec<LeaseInfo> {
        self.leases
            .iter()
            .filter_map(|l| {
                let left = l
                    .duration
                    .saturating_sub(now.saturating_duration_since(l.granted_at));
                (!left.is_zero()).then(|| LeaseInfo {
                    mac: l.mac.0,
                    ip: IpAddr::V6(l.addr),
                    hostname: l.hostname.clone(),
                    expires_in: left,
                })
            })
            .collect()
    }

    /// Records the lease of a client that asked for an address.
    fn grant(
        &mut self,
        req: &Request,
        client: &[u8],
        mac: EthernetAddress,
        now: Instant,
    ) -> Option<Ipv6Addr> {
        if req.ia_na.is_empty() {
            return None;
        }
        let addr = self.address_for(mac);
        let hostname = req.fqdn.and_then(fqdn_name);
        // One address per MAC: a new DUID for the same MAC takes it over.
        self.leases
            .retain(|l| l.client_id != client && l.addr != addr);
        self.leases.push(Lease {
            client_id: client.to_vec(),
            mac,
            addr,
            hostname,
            granted_at: now,
            duration: Duration::from_secs(u64::from(self.lease_secs)),
        });
        Some(addr)
    }

    fn header(&self, kind: u8, req: &Request) -> Vec<u8> {
        let mut out = vec![kind, req.xid[0], req.xid[1], req.xid[2]];
        put(&mut out, opt::SERVERID, &self.duid);
        if let Some(c) = req.client_id {
            put(&mut out, opt::CLIENTID, c);
        }
        out
    }

    fn config_options(&self, out: &mut Vec<u8>) {
        put(out, opt::DNS_SERVERS, &self.dns);
        if !self.domains.is_empty() {
            put(out, opt::DOMAIN_LIST, &self.domains);
        }
    }

    /// An Advertise or Reply for a Solicit, Request, Renew or Rebind.
    fn reply(
        &self,
        kind: u8,
        req: &Request,
        mac: EthernetAddress,
        rapid: bool,
        _leased: Option<Ipv6Addr>,
    ) -> Dhcpv6Reply {
        let mut out = self.header(kind, req);
        if kind == msg::ADVERTISE {
            put(&mut out, opt::PREFERENCE, &[255]);
        }
        if rapid {
            put(&mut out, opt::RAPID_COMMIT, &[]);
        }
        let addr = self.address_for(mac);
        let t1 = self.lease_secs / 2;
        let t2 = (u64::from(self.lease_secs) * 4 / 5) as u32;
        for id in &req.ia_na {
            let mut ia = id.to_vec();
            ia.extend_from_slice(&t1.to_be_bytes());
            ia.extend_from_slice(&t2.to_be_bytes());
            let mut a = addr.octets().to_vec();
            a.extend_from_slice(&self.lease_secs.to_be_bytes());
            a.extend_from_slice(&self.lease_secs.to_be_bytes());
            put(&mut ia, opt::IAADDR, &a);
            put(&mut out, opt::IA_NA, &ia);
        }
        for id in &req.ia_ta {
            let mut ia = id.to_vec();
            status_option(&mut ia, status::NO_ADDRS_AVAIL, "no temporary addresses");
            put(&mut out, opt::IA_TA, &ia);
        }
        for id in &req.ia_pd {
            let mut ia = id.to_vec();
            ia.extend_from_slice(&[0; 8]);
            status_option(&mut ia, status::NO_PREFIX_AVAIL, "no prefixes to delegate");
            put(&mut out, opt::IA_PD, &ia);
        }
        self.config_options(&mut out);
        let leased = (!req.ia_na.is_empty() && kind == msg::REPLY).then_some(addr);
        Dhcpv6Reply {
            payload: out,
            leased,
        }
    }
}

#[cfg(test)]
mod tests;
