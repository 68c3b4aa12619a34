//! IPv6 Neighbor Discovery for the one guest behind the gateway (RFC 4861),
//! with Router Advertisement DNS options (RFC 8106).
//!
//! Pure and transport-free, like [`super::dhcp`]: [`parse`] checks a
//! message the guest sent, [`neighbor_advert`] and [`Router::advertisement`]
//! build the ICMPv6 messages to send back (checksum left zero: the frame
//! builder fills it in with the addresses it uses), and [`Router`] keeps the
//! advertisement schedule without reading a clock.
//!
//! What the gateway says:
//! - Neighbor Advertisements for its own addresses and the aliases' (the
//!   Router flag set; Solicited when answering a unicast-sourced
//!   solicitation). Duplicate Address Detection probes for any other
//!   address (the guest's own) stay unanswered, so they succeed.
//! - Router Advertisements when solicited (at most one per
//!   [`MIN_DELAY_BETWEEN_RAS`]) and every 200–600 s: hop limit 64, the
//!   Managed and Other flags (DHCPv6 serves addresses and DNS), router
//!   lifetime 1800 s, source link-layer address, MTU, the /64 prefix
//!   (on-link, autonomous: SLAAC), RDNSS with the gateway and, when search
//!   domains are configured, DNSSL.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::EthernetAddress;

use super::dns::encode_names;
use crate::config::{GatewayConfig, Ipv6Config, PREFIX6_LEN};

/// ICMPv6 message types of Neighbor Discovery.
pub(crate) mod kind {
    pub(crate) const ROUTER_SOLICIT: u8 = 133;
    pub(crate) const ROUTER_ADVERT: u8 = 134;
    pub(crate) const NEIGHBOR_SOLICIT: u8 = 135;
    pub(crate) const NEIGHBOR_ADVERT: u8 = 136;
}

/// Neighbor Discovery option types.
mod opt {
    pub(super) const SOURCE_LL: u8 = 1;
    pub(super) const TARGET_LL: u8 = 2;
    pub(super) const PREFIX_INFO: u8 = 3;
    pub(super) const MTU: u8 = 5;
    pub(super) const RDNSS: u8 = 25;
    pub(super) const DNSSL: u8 = 31;
}

/// RFC 4861 §6.2.1 defaults, as radvd uses them.
const MIN_RTR_ADV_INTERVAL: u64 = 200;
const MAX_RTR_ADV_INTERVAL: u64 = 600;
/// Router lifetime: 3 × MaxRtrAdvInterval.
const ROUTER_LIFETIME: u16 = 1800;
/// Prefix lifetimes (radvd's defaults).
const VALID_LIFETIME: u32 = 86_400;
const PREFERRED_LIFETIME: u32 = 14_400;
/// RDNSS and DNSSL lifetime: 3 × MaxRtrAdvInterval (RFC 8106 §5.1).
const DNS_LIFETIME: u32 = 1800;
/// Hop limit the guest should use.
const CUR_HOP_LIMIT: u8 = 64;
/// RFC 4861 §10: multicast RAs are at least this far apart.
pub(crate) const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// Why a Neighbor Discovery message from the guest was rejected
/// (RFC 4861 §6.1 and §7.1 validity checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdpError {
    #[error("NDP message with hop limit {0}, need 255")]
    HopLimit(u8),
    #[error("NDP message with code {0}, need 0")]
    Code(u8),
    #[error("NDP message too short: {0} bytes")]
    Truncated(usize),
    #[error("NDP option of length zero or past the end of the message")]
    BadOption,
    #[error("neighbor solicitation for multicast address {0}")]
    MulticastTarget(Ipv6Addr),
    #[error("duplicate address detection probe with a source link-layer address")]
    DadWithSourceLl,
    #[error("ICMPv6 type {0} is not a neighbor discovery message the gateway takes")]
    NotNdp(u8),
}

/// A Neighbor Discovery message from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpMessage {
    RouterSolicit,
    NeighborSolicit {
        target: Ipv6Addr,
        /// The Source Link-Layer Address option.
        source_ll: Option<EthernetAddress>,
    },
    NeighborAdvert {
        target: Ipv6Addr,
    },
}

/// The options after `fixed` bytes of `msg`: (type, data) pairs, or an
/// error for a zero length or one that runs past the end.
fn options(msg: &[u8], fixed: usize) -> Result<Vec<(u8, &[u8])>, NdpError> {
    let mut out = Vec::new();
    let mut at = fixed;
    while at < msg.len() {
        let len = usize::from(*msg.get(at + 1).ok_or(NdpError::BadOption)?) * 8;
        if len == 0 {
            return Err(NdpError::BadOption);
        }
        let o = msg.get(at..at + len).ok_or(NdpError::BadOption)?;
        out.push((o[0], &o[2..]));
        at += len;
    }
    Ok(out)
}

fn addr_at(msg: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = msg.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// Checks and parses a Neighbor Discovery message (`msg`: the ICMPv6
/// message, its checksum already verified) sent from `src` with
/// `hop_limit`.
pub fn parse(msg: &[u8], src: Ipv6Addr, hop_limit: u8) -> Result<NdpMessage, NdpError> {
    let (&ty, &code) = match msg {
        [t, c, ..] => (t, c),
        _ => return Err(NdpError::Truncated(msg.len())),
    };
    if !matches!(
        ty,
        kind::ROUTER_SOLICIT | kind::NEIGHBOR_SOLICIT | kind::NEIGHBOR_ADVERT
    ) {
        return Err(NdpError::NotNdp(ty));
    }
    if hop_limit != 255 {
        return Err(NdpError::HopLimit(hop_limit));
    }
    if code != 0 {
        return Err(NdpError::Code(code));
    }
    match ty {
        kind::ROUTER_SOLICIT => {
            if msg.len() < 8 {
                return Err(NdpError::Truncated(msg.len()));
            }
            options(msg, 8)?;
            Ok(NdpMessage::RouterSolicit)
        }
        kind::NEIGHBOR_SOLICIT => {
            let target = addr_at(msg, 8).ok_or(NdpError::Truncated(msg.len()))?;
            if target.is_multicast() {
                return Err(NdpError::MulticastTarget(target));
            }
            let mut source_ll = None;
            for (t, data) in options(msg, 24)? {
                if t == opt::SOURCE_LL {
                    let mac: [u8; 6] = data
                        .get(..6)
                        .and_then(|m| m.try_into().ok())
                        .ok_or(NdpError::BadOption)?;
                    source_ll = Some(EthernetAddress(mac));
                }
            }
            if src.is_unspecified() && source_ll.is_some() {
                return Err(NdpError::DadWithSourceLl);
            }
            Ok(NdpMessage::NeighborSolicit { target, source_ll })
        }
        _ => {
            let target = addr_at(msg, 8).ok_or(NdpError::Truncated(msg.len()))?;
            options(msg, 24)?;
            Ok(NdpMessage::NeighborAdvert { target })
        }
    }
}

/// The solicited-node multicast group of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let low = u128::from(a) & 0x00ff_ffff;
    Ipv6Addr::from(0xff02_0000_0000_0000_0000_0001_ff00_0000u128 | low)
}

/// A Neighbor Advertisement from the router for `target` at `mac`
/// (`solicited`: answering a solicitation from a unicast address).
pub fn neighbor_advert(target: Ipv6Addr, mac: EthernetAddress, solicited: bool) -> Vec<u8> {
    let mut m = vec![kind::NEIGHBOR_ADVERT, 0, 0, 0];
    // Router, Solicited, Override.
    let flags = 0x80 | if solicited { 0x40 } else { 0 } | 0x20;
    m.extend_from_slice(&[flags, 0, 0, 0]);
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[opt::TARGET_LL, 1]);
    m.extend_from_slice(&mac.0);
    m
}

/// The router's side of Neighbor Discovery: what it advertises, and when.
#[derive(Debug)]
pub struct Router {
    mac: EthernetAddress,
    mtu: u32,
    prefix: Ipv6Addr,
    dns: Ipv6Addr,
    /// DNSSL payload: the search domains in wire form (empty: no DNSSL).
    search: Vec<u8>,
    last_advert: Option<Instant>,
    next_periodic: Instant,
    rng: u64,
}

impl Router {
    /// A router without search domains: the gateway gives it the DNS
    /// service's ([`Router::set_search`]).
    pub fn new(cfg: &GatewayConfig, v6: &Ipv6Config, seed: u64) -> Router {
        let mut router = Router {
            mac: cfg.gateway_mac,
            mtu: u32::try_from(cfg.mtu).unwrap_or(u32::MAX),
            prefix: v6.prefix,
            dns: v6.gateway,
            search: Vec::new(),
            last_advert: None,
            next_periodic: Instant::now(),
            rng: seed | 1,
        };
        let first = router.interval();
        router.next_periodic += first;
        router
    }

    /// Sets the search list of the DNSSL option (names that are not valid
    /// host names are left out); returns whether it changed.
    pub fn set_search(&mut self, names: &[String]) -> bool {
        let search = encode_names(names);
        if search == self.search {
            return false;
        }
        self.search = search;
        true
    }

    /// What the router advertises changed at `now`: the next advertisement
    /// is due now, or [`MIN_DELAY_BETWEEN_RAS`] after the last one (RFC
    /// 4861 §6.2.4), so hosts learn it without waiting for the periodic one.
    pub fn changed(&mut self, now: Instant) {
        let soonest = self
            .last_advert
            .map_or(now, |t| now.max(t + MIN_DELAY_BETWEEN_RAS));
        self.next_periodic = self.next_periodic.min(soonest);
    }

    /// A random interval between MinRtrAdvInterval and MaxRtrAdvInterval.
    fn interval(&mut self) -> Duration {
        // xorshift64: enough to spread routers' advertisements.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = MAX_RTR_ADV_INTERVAL - MIN_RTR_ADV_INTERVAL;
        Duration::from_secs(MIN_RTR_ADV_INTERVAL + self.rng % (span + 1))
    }

    /// When the next unsolicited advertisement is due.
    pub fn next_periodic(&self) -> Instant {
        self.next_periodic
    }

    /// A Router Solicitation arrived at `now`: whether to advertise now
    /// (not within [`MIN_DELAY_BETWEEN_RAS`] of the last advertisement).
    pub fn solicited(&mut self, now: Instant) -> bool {
        if self
            .last_advert
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_DELAY_BETWEEN_RAS)
        {
            return false;
        }
        self.last_advert = Some(now);
        true
    }

    /// The timer fired at `now`: whether the periodic advertisement is due
    /// (and the next one is scheduled).
    pub fn periodic_due(&mut self, now: Instant) -> bool {
        if now < self.next_periodic {
            return false;
        }
        self.next_periodic = now + self.interval();
        self.last_advert = Some(now);
        true
    }

    /// The Router Advertisement message.
    pub fn advertisement(&self) -> Vec<u8> {
        let mut m = vec![kind::ROUTER_ADVERT, 0, 0, 0, CUR_HOP_LIMIT];
        // Managed (addresses by DHCPv6) and Other (DNS by DHCPv6).
        m.push(0x80 | 0x40);
        m.extend_from_slice(&ROUTER_LIFETIME.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes()); // reachable time: unspecified
        m.extend_from_slice(&0u32.to_be_bytes()); // retrans timer: unspecified
        m.extend_from_slice(&[opt::SOURCE_LL, 1]);
        m.extend_from_slice(&self.mac.0);
        m.extend_from_slice(&[opt::MTU, 1, 0, 0]);
        m.extend_from_slice(&self.mtu.to_be_bytes());
        // On-link and autonomous.
        m.extend_from_slice(&[opt::PREFIX_INFO, 4, PREFIX6_LEN, 0x80 | 0x40]);
        m.extend_from_slice(&VALID_LIFETIME.to_be_bytes());
        m.extend_from_slice(&PREFERRED_LIFETIME.to_be_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&self.prefix.octets());
        m.extend_from_slice(&[opt::RDNSS, 3, 0, 0]);
        m.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
        m.extend_from_slice(&self.dns.octets());
        if !self.search.is_empty() {
            let body = 8 + self.search.len();
            let units = body.div_ceil(8);
            // At most 255 units of 8 bytes; longer lists are cut at a name.
            if units <= 255 {
                m.extend_from_slice(&[opt::DNSSL, units as u8, 0, 0]);
                m.extend_from_slice(&DNS_LIFETIME.to_be_bytes());
                m.extend_from_slice(&self.search);
                m.resize(m.len() + units * 8 - body, 0);
            } else {
                log::warn!("RA: search list too long for a DNSSL option: left out");
            }
        }
        m
    }
}

#[cfg(test)]
mod tests;
