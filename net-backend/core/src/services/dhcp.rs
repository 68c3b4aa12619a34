//! DHCPv4 server for the one guest behind airlock-net (RFC 2131, options
//! from RFC 2132, RFC 3397 and RFC 3396).
//!
//! Pure and transport-free: [`DhcpServer::handle`] takes the UDP payload of
//! a datagram the guest sent to port 67 and returns the UDP payload to send
//! back to port 68 together with where to send it. Nothing here touches a
//! socket or a clock; the caller passes a monotonic `now`.
//!
//! Policy (see also the module tests):
//! - One address ([`DhcpConfig::guest_ip`]) is handed to whichever client MAC
//!   asks: the VM has one NIC, and a guest that changes its MAC simply takes
//!   the lease over. The lease remembers the MAC and the host name (option 12).
//! - DISCOVER → OFFER, REQUEST → ACK, or NAK when the address the client asks
//!   for (option 50, else `ciaddr`) is not the guest address. A REQUEST,
//!   RELEASE or DECLINE whose server identifier names another server is
//!   ignored (RFC 2131 §4.3.2: the client chose someone else).
//! - INFORM → ACK without `yiaddr` and without lease times (RFC 2131 §4.3.5).
//! - RELEASE / DECLINE from the lease holder's MAC drop the lease; no reply.
//! - The parameter request list (option 55) is not used to filter: every
//!   configured option is always sent. busybox udhcpc exports every option it
//!   receives to its script (so `$mtu` is set even without `-O mtu`), and
//!   dhcpcd 9 with its stock dhcpcd.conf requests 1, 121, 33, 3, 6, 12, 15,
//!   26, 28, 51, 58, 59 and 119 (it applies 26 to its routes).
//! - Replies are kept within the client's maximum message size (option 57,
//!   never below the 576-byte IP datagram every client must accept): busybox
//!   udhcpc drops larger datagrams while it has no address. If they would not
//!   fit, the search list (119) and then the domain name (15) are left out.
//! - Replies are padded to the 300-byte BOOTP minimum (RFC 1542 §2.1).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// BOOTP `op` of a client message.
const BOOTREQUEST: u8 = 1;
/// BOOTP `op` of a server message.
const BOOTREPLY: u8 = 2;
/// `htype` for Ethernet (10 Mb and up).
const HTYPE_ETHERNET: u8 = 1;
/// `hlen` for Ethernet.
const HLEN_ETHERNET: u8 = 6;
/// RFC 2131 §3 magic cookie: 99.130.83.99.
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The BROADCAST bit of `flags`.
const FLAG_BROADCAST: u16 = 0x8000;

/// Byte offsets of the fixed BOOTP fields.
mod field {
    use std::ops::Range;
    pub(super) const OP: usize = 0;
    pub(super) const HLEN: usize = 2;
    pub(super) const XID: Range<usize> = 4..8;
    pub(super) const FLAGS: Range<usize> = 10..12;
    pub(super) const CIADDR: Range<usize> = 12..16;
    pub(super) const GIADDR: Range<usize> = 24..28;
    pub(super) const CHADDR: Range<usize> = 28..44;
    pub(super) const SNAME: Range<usize> = 44..108;
    pub(super) const FILE: Range<usize> = 108..236;
    pub(super) const COOKIE: Range<usize> = 236..240;
    pub(super) const OPTIONS: usize = 240;
}

/// DHCP option codes used here.
mod opt {
    pub(super) const PAD: u8 = 0;
    pub(super) const SUBNET_MASK: u8 = 1;
    pub(super) const ROUTER: u8 = 3;
    pub(super) const DNS_SERVERS: u8 = 6;
    pub(super) const HOST_NAME: u8 = 12;
    pub(super) const DOMAIN_NAME: u8 = 15;
    pub(super) const INTERFACE_MTU: u8 = 26;
    pub(super) const REQUESTED_IP: u8 = 50;
    pub(super) const LEASE_TIME: u8 = 51;
    pub(super) const OVERLOAD: u8 = 52;
    pub(super) const MESSAGE_TYPE: u8 = 53;
    pub(super) const SERVER_ID: u8 = 54;
    pub(super) const MESSAGE: u8 = 56;
    pub(super) const MAX_MESSAGE_SIZE: u8 = 57;
    pub(super) const RENEWAL_TIME: u8 = 58;
    pub(super) const REBINDING_TIME: u8 = 59;
    pub(super) const CLIENT_ID: u8 = 61;
    pub(super) const DOMAIN_SEARCH: u8 = 119;
    pub(super) const END: u8 = 255;
}

/// DHCP message types (option 53).
mod msg {
    pub(super) const DISCOVER: u8 = 1;
    pub(super) const OFFER: u8 = 2;
    pub(super) const REQUEST: u8 = 3;
    pub(super) const DECLINE: u8 = 4;
    pub(super) const ACK: u8 = 5;
    pub(super) const NAK: u8 = 6;
    pub(super) const RELEASE: u8 = 7;
    pub(super) const INFORM: u8 = 8;
}

/// Smallest BOOTP message; shorter replies are padded (RFC 1542 §2.1).
const MIN_REPLY_LEN: usize = 300;
/// IP datagram size every DHCP client must accept (RFC 2131 §2).
const MIN_MAX_MESSAGE_SIZE: usize = 576;
/// IPv4 (no options) + UDP header bytes around a DHCP payload.
const IP_UDP_HEADER_LEN: usize = 28;
/// Smallest MTU option 26 may carry (RFC 2132 §5.1).
const MIN_MTU: u16 = 68;

/// What the DHCP server hands out. All addresses are the guest-visible ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The server's own address: the source of replies and option 54.
    pub server_ip: Ipv4Addr,
    /// The one address offered to the guest.
    pub guest_ip: Ipv4Addr,
    /// Subnet prefix length for option 1 (values above 32 are treated as 32).
    pub prefix_len: u8,
    /// Default gateway (option 3).
    pub router: Ipv4Addr,
    /// DNS servers (option 6); omitted when empty, at most 63 are sent.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Interface MTU (option 26, big-endian u16); omitted when below 68.
    pub mtu: u16,
    /// Lease duration (option 51, whole seconds, at most 0xFFFF_FFFE).
    pub lease_time: Duration,
    /// Domain name (option 15), if any; omitted when empty or over 255 bytes.
    pub domain_name: Option<String>,
    /// Domain search list (option 119, RFC 3397); invalid names are skipped.
    pub search_domains: Vec<String>,
}

impl Default for DhcpConfig {
    /// Airlock's defaults: 192.168.127.0/24, gateway and DNS .1, guest .2,
    /// MTU 65520, one-hour lease.
    fn default() -> Self {
        let gateway = Ipv4Addr::new(192, 168, 127, 1);
        Self {
            server_ip: gateway,
            guest_ip: Ipv4Addr::new(192, 168, 127, 2),
            prefix_len: 24,
            router: gateway,
            dns_servers: vec![gateway],
            mtu: 65520,
            lease_time: Duration::from_secs(3600),
            domain_name: None,
            search_domains: Vec::new(),
        }
    }
}

/// Why a guest's DHCP message was rejected. None of these is fatal to the
/// server; the caller drops the datagram (and should rate-limit any log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Shorter than the 240-byte BOOTP header plus magic cookie.
    #[error("DHCP message too short: {len} bytes, need at least 240")]
    Truncated {
        /// Length of the payload received.
        len: usize,
    },
    /// `op` is not BOOTREQUEST.
    #[error("not a BOOTREQUEST: op {op}")]
    NotBootRequest {
        /// The `op` field received.
        op: u8,
    },
    /// Not Ethernet (`htype` 1, `hlen` 6).
    #[error("unsupported hardware address: htype {htype}, hlen {hlen}")]
    UnsupportedHardware {
        /// The `htype` field received.
        htype: u8,
        /// The `hlen` field received.
        hlen: u8,
    },
    /// The options do not start with the DHCP magic cookie.
    #[error("bad DHCP magic cookie {0:02x?}")]
    BadMagicCookie([u8; 4]),
    /// An option's length runs past the end of its area.
    #[error("DHCP option {code} runs past the end of the message")]
    OptionOverflow {
        /// The option code.
        code: u8,
    },
    /// An option has a length its definition does not allow.
    #[error("DHCP option {code} has invalid length {len}")]
    BadOptionLength {
        /// The option code.
        code: u8,
        /// The length received.
        len: usize,
    },
    /// No option 53: a plain BOOTP request, which is not served.
    #[error("no DHCP message type option (plain BOOTP is not served)")]
    MissingMessageType,
    /// A message type a client does not send, or an unknown one.
    #[error("unexpected DHCP message type {0} from a client")]
    UnexpectedMessageType(u8),
    /// `giaddr` is set: relayed requests are not served on this link.
    #[error("relayed DHCP request (giaddr {0}) is not served")]
    Relayed(Ipv4Addr),
}

/// A reply to send: UDP from `server_ip:67` to `dst_ip:68`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The UDP payload (a BOOTREPLY).
    pub payload: Vec<u8>,
    /// Destination IP: 255.255.255.255 when `broadcast`, else the client's `ciaddr`.
    pub dst_ip: Ipv4Addr,
    /// Destination MAC: ff:ff:ff:ff:ff:ff when `broadcast`, else `chaddr`.
    pub dst_mac: [u8; 6],
    /// Whether the reply is a link-level and IP broadcast.
    pub broadcast: bool,
}

/// One current lease, for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The client's MAC (`chaddr`).
    pub mac: [u8; 6],
    /// The leased address (IPv6 for a DHCPv6 lease).
    pub ip: IpAddr,
    /// Host name the client sent in option 12, with bytes outside printable
    /// ASCII replaced by `?`.
    pub hostname: Option<String>,
    /// Time left until the lease expires.
    pub expires_in: Duration,
}

impl LeaseInfo {
    /// The lease as `GET /leases` shows it.
    pub fn to_api(&self) -> airlock_api::Lease {
        airlock_api::Lease {
            mac: self
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            ip: self.ip,
            hostname: self.hostname.clone(),
            expires_in: self.expires_in.as_secs(),
        }
    }
}

/// The single lease slot.
#[derive(Debug, Clone)]
struct Lease {
    mac: [u8; 6],
    hostname: Option<String>,
    granted_at: Instant,
    duration: Duration,
}

impl Lease {
    fn remaining(&self, now: Instant) -> Duration {
        self.duration
            .saturating_sub(now.saturating_duration_since(self.granted_at))
    }
}

/// A DHCP server for one guest. See the module documentation for the policy.
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpConfig,
    /// Option 1 value.
    subnet_mask: [u8; 4],
    /// Lease seconds as sent in option 51.
    lease_secs: u32,
    /// Option 6 payload (addresses, big-endian).
    dns_option: Vec<u8>,
    /// Option 15 payload.
    domain_option: Option<Vec<u8>>,
    /// Option 119 payload (RFC 1035 names, compressed), before RFC 3396 splitting.
    search_option: Option<Vec<u8>>,
    lease: Option<Lease>,
}

/// The fields of a client message the server uses.
#[derive(Debug)]
struct Request<'a> {
    msg_type: Option<u8>,
    xid: [u8; 4],
    flags: u16,
    ciaddr: Ipv4Addr,
    chaddr: [u8; 16],
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    hostname: Option<&'a [u8]>,
    client_id: Option<&'a [u8]>,
    max_message_size: Option<u16>,
}

impl Request<'_> {
    fn mac(&self) -> [u8; 6] {
        let c = &self.chaddr;
        [c[0], c[1], c[2], c[3], c[4], c[5]]
    }
}

/// Which reply to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Offer,
    Ack,
    InformAck,
    Nak,
}

impl DhcpServer {
    /// Creates a server; option payloads are encoded once here. Config
    /// values that cannot be encoded (see [`DhcpConfig`]) are left out with a
    /// warning rather than failing.
    pub fn new(config: DhcpConfig) -> Self {
        let prefix = u32::from(config.prefix_len.min(32));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        let lease_secs = u32::try_from(config.lease_time.as_secs())
            .unwrap_or(u32::MAX)
            .min(u32::MAX - 1);
        let dns_option = config
            .dns_servers
            .iter()
            .take(63)
            .flat_map(|ip| ip.octets())
            .collect();
        if config.mtu < MIN_MTU {
            log::warn!(
                "DHCP: MTU {} is below {MIN_MTU}: option 26 not sent",
                config.mtu
            );
        }
        let mut server = Self {
            subnet_mask: mask.to_be_bytes(),
            lease_secs,
            dns_option,
            domain_option: None,
            search_option: None,
            lease: None,
            config,
        };
        server.set_domains(
            server.config.domain_name.clone(),
            server.config.search_domains.clone(),
        );
        server
    }

    /// Sets the domain name (option 15) and the search list (option 119)
    /// of the replies from now on; a renewing guest picks them up. Names
    /// that cannot be encoded are left out with a warning.
    pub fn set_domains(&mut self, domain_name: Option<String>, search: Vec<String>) {
        self.domain_option = match domain_name.as_deref() {
            Some(d) if !d.is_empty() && d.len() <= 255 => Some(d.as_bytes().to_vec()),
            Some(d) => {
                log::warn!("DHCP: domain name {d:?} cannot be sent in option 15: skipped");
                None
            }
            None => None,
        };
        let valid: Vec<String> = search
            .iter()
            .filter(|name| {
                let ok = encode_dns_name(name).is_some();
                if !ok {
                    log::warn!("DHCP: invalid search domain {name:?}: skipped");
                }
                ok
            })
            .cloned()
            .collect();
        let encoded = encode_search_list(&valid);
        self.search_option = (!encoded.is_empty()).then_some(encoded);
        self.config.domain_name = domain_name;
        self.config.search_domains = search;
    }

    /// Handles one message the guest sent to UDP port 67.
    ///
    /// `payload` is the UDP payload; `now` is monotonic time, used only for
    /// lease bookkeeping. Returns `Ok(None)` when no reply is due (RELEASE,
    /// DECLINE, or a message meant for another server) and `Err` for
    /// anything malformed or not served; the caller just drops those.
    pub fn handle(&mut self, payload: &[u8], now: Instant) -> Result<Option<DhcpReply>, DhcpError> {
        let req = parse_request(payload)?;
        let foreign_server = req.server_id.is_some_and(|id| id != self.config.server_ip);
        let Some(msg_type) = req.msg_type else {
            return Err(DhcpError::MissingMessageType);
        };
        match msg_type {
            msg::DISCOVER => Ok(Some(self.reply(&req, ReplyKind::Offer))),
            msg::REQUEST if foreign_server => {
                log::debug!("DHCP: REQUEST for server {:?}: ignored", req.server_id);
                Ok(None)
            }
            msg::REQUEST => {
                let wanted = req
                    .requested_ip
                    .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
                if wanted != Some(self.config.guest_ip) {
                    log::debug!("DHCP: REQUEST for {wanted:?} from {:02x?}: NAK", req.mac());
                    return Ok(Some(self.reply(&req, ReplyKind::Nak)));
                }
                self.grant(&req, now);
                Ok(Some(self.reply(&req, ReplyKind::Ack)))
            }
            msg::INFORM => Ok(Some(self.reply(&req, ReplyKind::InformAck))),
            msg::RELEASE | msg::DECLINE => {
                if !foreign_server && self.lease.as_ref().is_some_and(|l| l.mac == req.mac()) {
                    log::debug!(
                        "DHCP: lease of {:02x?} dropped (type {msg_type})",
                        req.mac()
                    );
                    self.lease = None;
                }
                Ok(None)
            }
            other => Err(DhcpError::UnexpectedMessageType(other)),
        }
    }

    /// Current, unexpired leases (at most one).
    pub fn leases(&self, now: Instant) -> Vec<LeaseInfo> {
        self.lease
            .iter()
            .filter(|l| !l.remaining(now).is_zero())
            .map(|l| LeaseInfo {
                mac: l.mac,
                ip: IpAddr::V4(self.config.guest_ip),
                hostname: l.hostname.clone(),
                expires_in: l.remaining(now),
            })
            .collect()
    }

    /// Records the lease after an ACK. A renewal without option 12 keeps
    /// the host name the same MAC sent before.
    fn grant(&mut self, req: &Request<'_>, now: Instant) {
        let mac = req.mac();
        let hostname = match req.hostname {
            Some(raw) => Some(sanitize_hostname(raw)),
            None => self
                .lease
                .as_ref()
                .filter(|l| l.mac == mac)
                .and_then(|l| l.hostname.clone()),
        };
        self.lease = Some(Lease {
            mac,
            hostname,
            granted_at: now,
            duration: Duration::from_secs(u64::from(self.lease_secs)),
        });
    }

    /// Builds a BOOTREPLY and decides where it goes (RFC 2131 §4.1).
    fn reply(&self, req: &Request<'_>, kind: ReplyKind) -> DhcpReply {
        // 'ciaddr' is echoed in an ACK (RFC 2131 table 3), zero otherwise.
        let ciaddr = match kind {
            ReplyKind::Ack | ReplyKind::InformAck => req.ciaddr,
            ReplyKind::Offer | ReplyKind::Nak => Ipv4Addr::UNSPECIFIED,
        };
        let yiaddr = match kind {
            ReplyKind::Offer | ReplyKind::Ack => self.config.guest_ip,
            ReplyKind::InformAck | ReplyKind::Nak => Ipv4Addr::UNSPECIFIED,
        };
        let mut out = Vec::with_capacity(MIN_REPLY_LEN);
        out.extend_from_slice(&[BOOTREPLY, HTYPE_ETHERNET, HLEN_ETHERNET, 0]); // hops 0
        out.extend_from_slice(&req.xid);
        out.extend_from_slice(&[0, 0]); // secs
        out.extend_from_slice(&req.flags.to_be_bytes());
        out.extend_from_slice(&ciaddr.octets());
        out.extend_from_slice(&yiaddr.octets());
        out.extend_from_slice(&[0; 8]); // siaddr (no boot server), giaddr
        out.extend_from_slice(&req.chaddr);
        out.extend_from_slice(&[0; field::FILE.end - field::SNAME.start]); // sname, file
        out.extend_from_slice(&MAGIC_COOKIE);
        debug_assert_eq!(out.len(), field::OPTIONS);

        let msg_type = match kind {
            ReplyKind::Offer => msg::OFFER,
            ReplyKind::Ack | ReplyKind::InformAck => msg::ACK,
            ReplyKind::Nak => msg::NAK,
        };
        put_option(&mut out, opt::MESSAGE_TYPE, &[msg_type]);
        put_option(&mut out, opt::SERVER_ID, &self.config.server_ip.octets());
        if kind == ReplyKind::Nak {
            put_option(&mut out, opt::MESSAGE, b"requested address not available");
        } else {
            if kind != ReplyKind::InformAck {
                let t1 = self.lease_secs / 2;
                let t2 = u32::try_from(u64::from(self.lease_secs) * 7 / 8).unwrap_or(t1);
                put_option(&mut out, opt::LEASE_TIME, &self.lease_secs.to_be_bytes());
                put_option(&mut out, opt::RENEWAL_TIME, &t1.to_be_bytes());
                put_option(&mut out, opt::REBINDING_TIME, &t2.to_be_bytes());
            }
            // RFC 2132 §3.3: the subnet mask goes before the router.
            put_option(&mut out, opt::SUBNET_MASK, &self.subnet_mask);
            put_option(&mut out, opt::ROUTER, &self.config.router.octets());
            if !self.dns_option.is_empty() {
                put_option(&mut out, opt::DNS_SERVERS, &self.dns_option);
            }
            if self.config.mtu >= MIN_MTU {
                put_option(&mut out, opt::INTERFACE_MTU, &self.config.mtu.to_be_bytes());
            }
        }
        // RFC 6842: echo the client identifier.
        if let Some(id) = req.client_id {
            put_option(&mut out, opt::CLIENT_ID, id);
        }
        if kind != ReplyKind::Nak {
            let max_ip = usize::from(req.max_message_size.unwrap_or(0)).max(MIN_MAX_MESSAGE_SIZE);
            let limit = max_ip - IP_UDP_HEADER_LEN;
            if let Some(domain) = &self.domain_option {
                if fits(&out, domain.len(), limit) {
                    put_option(&mut out, opt::DOMAIN_NAME, domain);
                } else {
                    log::debug!("DHCP: option 15 left out: reply would exceed {limit} bytes");
                }
            }
            if let Some(search) = &self.search_option {
                if fits(&out, search.len(), limit) {
                    for chunk in search.chunks(255) {
                        put_option(&mut out, opt::DOMAIN_SEARCH, chunk);
                    }
                } else {
                    log::debug!("DHCP: option 119 left out: reply would exceed {limit} bytes");
                }
            }
        }
        out.push(opt::END);
        if out.len() < MIN_REPLY_LEN {
            out.resize(MIN_REPLY_LEN, opt::PAD);
        }

        // RFC 2131 §4.1 (giaddr is always zero here): NAKs are broadcast;
        // otherwise broadcast if the client asked for it or has no address
        // yet, else unicast to ciaddr/chaddr.
        let broadcast = kind == ReplyKind::Nak
            || req.flags & FLAG_BROADCAST != 0
            || req.ciaddr.is_unspecified();
        let (dst_ip, dst_mac) = if broadcast {
            (Ipv4Addr::BROADCAST, [0xff; 6])
        } else {
            (req.ciaddr, req.mac())
        };
        DhcpReply {
            payload: out,
            dst_ip,
            dst_mac,
            broadcast,
        }
    }
}

/// Whether an option of `len` data bytes (split into 255-byte pieces) plus
/// the END option still fits in `limit` bytes.
fn fits(out: &[u8], len: usize, limit: usize) -> bool {
    let pieces = len.div_ceil(255);
    out.len() + len + 2 * pieces < limit
}

/// Appends one option; `data` must be at most 255 bytes (all callers pass
/// bounded data; longer data is cut to keep the encoding valid).
fn put_option(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    let data = data.get(..255).unwrap_or(data);
    out.push(code);
    out.push(data.len() as u8);
    out.extend_from_slice(data);
}

/// Encodes the domain search list of option 119 (RFC 3397 §2): the names
/// one after the other in RFC 1035 wire form, each ending in a pointer to
/// an earlier copy of its longest tail already written (RFC 1035 §4.1.4),
/// offsets counted from the start of the option's data (its pieces
/// concatenated, RFC 3396). Invalid names are left out.
pub fn encode_search_list(names: &[String]) -> Vec<u8> {
    /// Largest offset a 14-bit pointer reaches.
    const MAX_POINTER: usize = 0x3fff;
    let mut out = Vec::new();
    // Every tail written so far (lowercase) and where it starts.
    let mut tails: Vec<(String, usize)> = Vec::new();
    for name in names {
        if encode_dns_name(name).is_none() {
            continue;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        let mut pointer = None;
        for i in 0..labels.len() {
            let tail = labels[i..].join(".");
            if let Some((_, at)) = tails.iter().find(|(t, _)| *t == tail) {
                pointer = Some(*at);
                break;
            }
            if out.len() <= MAX_POINTER {
                tails.push((tail, out.len()));
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i].as_bytes());
        }
        match pointer {
            Some(at) => out.extend_from_slice(&(0xc000 | at as u16).to_be_bytes()),
            None => out.push(0),
        }
    }
    out
}

/// Encodes a domain name as RFC 1035 labels, or `None` if it is not a valid
/// name (empty label, label over 63 bytes, name over 255 bytes).
fn encode_dns_name(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    (wire.len() <= 255).then_some(wire)
}

/// Printable ASCII is kept; anything else becomes `?`.
fn sanitize_hostname(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// Reads a fixed-size field; the caller has checked the 240-byte minimum.
fn array<const N: usize>(buf: &[u8], range: std::ops::Range<usize>) -> Result<[u8; N], DhcpError> {
    buf.get(range)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DhcpError::Truncated { len: buf.len() })
}

/// Parses and validates a client message.
fn parse_request(buf: &[u8]) -> Result<Request<'_>, DhcpError> {
    if buf.len() < field::OPTIONS {
        return Err(DhcpError::Truncated { len: buf.len() });
    }
    let [op, htype, hlen] = array::<3>(buf, field::OP..field::HLEN + 1)?;
    if op != BOOTREQUEST {
        return Err(DhcpError::NotBootRequest { op });
    }
    if htype != HTYPE_ETHERNET || hlen != HLEN_ETHERNET {
        return Err(DhcpError::UnsupportedHardware { htype, hlen });
    }
    let cookie = array::<4>(buf, field::COOKIE)?;
    if cookie != MAGIC_COOKIE {
        return Err(DhcpError::BadMagicCookie(cookie));
    }
    let giaddr = Ipv4Addr::from(array::<4>(buf, field::GIADDR)?);
    if !giaddr.is_unspecified() {
        return Err(DhcpError::Relayed(giaddr));
    }

    let mut req = Request {
        msg_type: None,
        xid: array(buf, field::XID)?,
        flags: u16::from_be_bytes(array(buf, field::FLAGS)?),
        ciaddr: Ipv4Addr::from(array::<4>(buf, field::CIADDR)?),
        chaddr: array(buf, field::CHADDR)?,
        requested_ip: None,
        server_id: None,
        hostname: None,
        client_id: None,
        max_message_size: None,
    };
    let mut overload = 0u8;
    let options = buf.get(field::OPTIONS..).unwrap_or_default();
    scan_options(options, |code, data| {
        if code == opt::OVERLOAD {
            overload = single(code, data)?;
            return Ok(());
        }
        apply_option(&mut req, code, data)
    })?;
    // RFC 2131 §4.1: options continue in 'file', then in 'sname'.
    if overload & 1 != 0 {
        let file = buf.get(field::FILE).unwrap_or_default();
        scan_options(file, |code, data| apply_option(&mut req, code, data))?;
    }
    if overload & 2 != 0 {
        let sname = buf.get(field::SNAME).unwrap_or_default();
        scan_options(sname, |code, data| apply_option(&mut req, code, data))?;
    }
    Ok(req)
}

/// Walks one option area, calling `f` for every option but PAD and END.
/// Reaching the end of the area without END is tolerated.
fn scan_options<'a>(
    mut area: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8]) -> Result<(), DhcpError>,
) -> Result<(), DhcpError> {
    while let Some((&code, rest)) = area.split_first() {
        match code {
            opt::PAD => area = rest,
            opt::END => return Ok(()),
            _ => {
                let (&len, rest) = rest
                    .split_first()
                    .ok_or(DhcpError::OptionOverflow { code })?;
                let len = usize::from(len);
                let data = rest.get(..len).ok_or(DhcpError::OptionOverflow { code })?;
                f(code, data)?;
                area = rest.get(len..).unwrap_or_default();
            }
        }
    }
    Ok(())
}

/// Stores an option of a client message. The first occurrence of each
/// option wins; every occurrence is length-checked.
fn apply_option<'a>(req: &mut Request<'a>, code: u8, data: &'a [u8]) -> Result<(), DhcpError> {
    match code {
        opt::MESSAGE_TYPE => {
            let t = single(code, data)?;
            req.msg_type.get_or_insert(t);
        }
        opt::REQUESTED_IP => {
            let ip = addr(code, data)?;
            req.requested_ip.get_or_insert(ip);
        }
        opt::SERVER_ID => {
            let ip = addr(code, data)?;
            req.server_id.get_or_insert(ip);
        }
        opt::MAX_MESSAGE_SIZE => {
            let size = <[u8; 2]>::try_from(data).map_err(|_| DhcpError::BadOptionLength {
                code,
                len: data.len(),
            })?;
            req.max_message_size.get_or_insert(u16::from_be_bytes(size));
        }
        opt::HOST_NAME if !data.is_empty() => {
            req.hostname.get_or_insert(data);
        }
        opt::CLIENT_ID => {
            // RFC 2132 §9.14: type byte plus at least one byte.
            if data.len() < 2 {
                return Err(DhcpError::BadOptionLength {
                    code,
                    len: data.len(),
                });
            }
            req.client_id.get_or_insert(data);
        }
        _ => {}
    }
    Ok(())
}

/// A one-byte option value.
fn single(code: u8, data: &[u8]) -> Result<u8, DhcpError> {
    match data {
        [v] => Ok(*v),
        _ => Err(DhcpError::BadOptionLength {
            code,
            len: data.len(),
        }),
    }
}

/// A four-byte address option value.
fn addr(code: u8, data: &[u8]) -> Result<Ipv4Addr, DhcpError> {
    <[u8; 4]>::try_from(data)
        .map(Ipv4Addr::from)
        .map_err(|_| DhcpError::BadOptionLength {
            code,
            len: data.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);

    /// busybox udhcpc 1.36 default option 55: the OPTION_REQ entries of
    /// networking/udhcp/common.c (subnet, router, dns, hostname, domain,
    /// broadcast, ntp).
    const UDHCPC_PRL: &[u8] = &[1, 3, 6, 12, 15, 28, 42];
    /// dhcpcd 9 with its stock dhcpcd.conf: the "request" options of
    /// dhcpcd-definitions.conf (1, 3, 28, 33, 51, 58, 59) plus
    /// domain_name_servers, domain_name, domain_search, host_name,
    /// classless_static_routes and interface_mtu, in definition order.
    const DHCPCD_PRL: &[u8] = &[1, 121, 33, 3, 6, 12, 15, 26, 28, 51, 58, 59, 119];

    /// Builds a client message the way the real clients lay it out.
    struct Msg {
        msg_type: u8,
        xid: u32,
        flags: u16,
        ciaddr: Ipv4Addr,
        mac: [u8; 6],
        options: Vec<(u8, Vec<u8>)>,
    }

    impl Msg {
        fn new(msg_type: u8) -> Self {
            Self {
                msg_type,
                xid: 0x1234_5678,
                flags: 0,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                mac: MAC,
                options: Vec::new(),
            }
        }
        fn opt(mut self, code: u8, data: &[u8]) -> Self {
            self.options.push((code, data.to_vec()));
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; 236];
            b[0] = BOOTREQUEST;
            b[1] = 1;
            b[2] = 6;
            b[4..8].copy_from_slice(&self.xid.to_be_bytes());
            b[8..10].copy_from_slice(&3u16.to_be_bytes()); // secs
            b[10..12].copy_from_slice(&self.flags.to_be_bytes());
            b[12..16].copy_from_slice(&self.ciaddr.octets());
            b[28..34].copy_from_slice(&self.mac);
            b.extend_from_slice(&MAGIC_COOKIE);
            b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, self.msg_type]);
            for (code, data) in &self.options {
                b.push(*code);
                b.push(data.len() as u8);
                b.extend_from_slice(data);
            }
            b.push(opt::END);
            // dhcpcd pads to the BOOTP size; udhcpc sends its whole buffer.
            b.resize(b.len().max(300), 0);
            b
        }
    }

    /// udhcpc: client id (type 1 + MAC), max size 576, PRL, vendor class.
    fn udhcpc(msg_type: u8) -> Msg {
        let mut cid = vec![1];
        cid.extend_from_slice(&MAC);
        Msg::new(msg_type)
            .opt(opt::CLIENT_ID, &cid)
            .opt(opt::MAX_MESSAGE_SIZE, &576u16.to_be_bytes())
            .opt(55, UDHCPC_PRL)
            .opt(60, b"udhcp 1.36.1")
    }

    /// dhcpcd 9: PRL, max size 1472, RFC 4361 client id, host name,
    /// rapid commit (DISCOVER only).
    fn dhcpcd(msg_type: u8) -> Msg {
        let mut cid = vec![0xff, 0x5d, 0x0a, 0x9b, 0x1c, 0x00, 0x04];
        cid.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55]);
        let m = Msg::new(msg_type)
            .opt(55, DHCPCD_PRL)
            .opt(opt::MAX_MESSAGE_SIZE, &1472u16.to_be_bytes())
            .opt(opt::CLIENT_ID, &cid)
            .opt(opt::HOST_NAME, b"guest-vm");
        if msg_type == msg::DISCOVER {
            m.opt(80, &[])
        } else {
            m
        }
    }

    fn server() -> DhcpServer {
        DhcpServer::new(DhcpConfig::default())
    }

    /// A decoded reply, options concatenated per RFC 3396.
    struct Decoded {
        op: u8,
        xid: [u8; 4],
        flags: u16,
        ciaddr: Ipv4Addr,
        yiaddr: Ipv4Addr,
        chaddr: [u8; 16],
        options: Vec<(u8, Vec<u8>)>,
        order: Vec<u8>,
    }

    impl Decoded {
        fn get(&self, code: u8) -> Option<&[u8]> {
            self.options
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, d)| d.as_slice())
        }
        fn msg_type(&self) -> u8 {
            self.get(opt::MESSAGE_TYPE).unwrap()[0]
        }
        fn u32(&self, code: u8) -> u32 {
            u32::from_be_bytes(self.get(code).unwrap().try_into().unwrap())
        }
    }

    fn decode(p: &[u8]) -> Decoded {
        assert!(p.len() >= 300, "reply shorter than BOOTP minimum");
        assert_eq!(&p[236..240], &MAGIC_COOKIE);
        let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut order = Vec::new();
        let mut i = 240;
        let mut ended = false;
        while i < p.len() {
            match p[i] {
                0 => i += 1,
                255 => {
                    ended = true;
                    break;
                }
                code => {
                    let len = p[i + 1] as usize;
                    let data = &p[i + 2..i + 2 + len];
                    order.push(code);
                    match options.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, d)) => d.extend_from_slice(data),
                        None => options.push((code, data.to_vec())),
                    }
                    i += 2 + len;
                }
            }
        }
        assert!(ended, "no END option");
        assert!(p[i + 1..].iter().all(|&b| b == 0), "garbage after END");
        Decoded {
            op: p[0],
            xid: p[4..8].try_into().unwrap(),
            flags: u16::from_be_bytes([p[10], p[11]]),
            ciaddr: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            yiaddr: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            chaddr: p[28..44].try_into().unwrap(),
            options,
            order,
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn assert_full_config(d: &Decoded) {
        assert_eq!(d.get(opt::SERVER_ID), Some(&[192, 168, 127, 1][..]));
        assert_eq!(d.get(opt::SUBNET_MASK), Some(&[255, 255, 255, 0][..]));
        assert_eq!(d.get(opt::ROUTER), Some(&[192, 168, 127, 1][..]));
        assert_eq!(d.get(opt::DNS_SERVERS), Some(&[192, 168, 127, 1][..]));
        // 65520 = 0xfff0, big-endian, exactly two bytes.
        assert_eq!(d.get(opt::INTERFACE_MTU), Some(&[0xff, 0xf0][..]));
        let pos = |c| d.order.iter().position(|&x| x == c).unwrap();
        assert!(
            pos(opt::SUBNET_MASK) < pos(opt::ROUTER),
            "RFC 2132 §3.3 order"
        );
    }

    #[test]
    fn udhcpc_discover_offer_request_ack() {
        let mut s = server();
        let t0 = now();
        let offer = s
            .handle(&udhcpc(msg::DISCOVER).bytes(), t0)
            .unwrap()
            .unwrap();
        assert!(offer.broadcast);
        assert_eq!(offer.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(offer.dst_mac, [0xff; 6]);
        let d = decode(&offer.payload);
        assert_eq!(d.op, BOOTREPLY);
        assert_eq!(d.msg_type(), msg::OFFER);
        assert_eq!(d.xid, 0x1234_5678u32.to_be_bytes());
        assert_eq!(&d.chaddr[..6], &MAC);
        assert_eq!(d.yiaddr, GUEST);
        assert_eq!(d.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.u32(opt::LEASE_TIME), 3600);
        assert_eq!(d.u32(opt::RENEWAL_TIME), 1800);
        assert_eq!(d.u32(opt::REBINDING_TIME), 3150);
        assert_full_config(&d);
        // Client id echoed (RFC 6842); udhcpc requires option 54.
        assert_eq!(d.get(opt::CLIENT_ID).unwrap()[1..], MAC);
        // Fits udhcpc's 576-byte receive limit.
        assert!(offer.payload.len() + IP_UDP_HEADER_LEN <= 576);
        assert!(s.leases(t0).is_empty(), "an OFFER is not a lease");

        // udhcpc's select: requested IP + server id, broadcast.
        let req = udhcpc(msg::REQUEST)
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .opt(opt::SERVER_ID, &GATEWAY.octets());
        let ack = s.handle(&req.bytes(), t0).unwrap().unwrap();
        let d = decode(&ack.payload);
        assert_eq!(d.msg_type(), msg::ACK);
        assert_eq!(d.yiaddr, GUEST);
        assert!(ack.broadcast);
        assert_full_config(&d);

        let leases = s.leases(t0 + Duration::from_secs(600));
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].mac, MAC);
        assert_eq!(leases[0].ip, GUEST);
        assert_eq!(leases[0].hostname, None);
        assert_eq!(leases[0].expires_in, Duration::from_secs(3000));
        assert!(
            s.leases(t0 + Duration::from_secs(3600)).is_empty(),
            "expired"
        );
    }

    #[test]
    fn dhcpcd_exchange_and_unicast_renew() {
        let mut s = server();
        let t0 = now();
        let offer = s
            .handle(&dhcpcd(msg::DISCOVER).bytes(), t0)
            .unwrap()
            .unwrap();
        let d = decode(&offer.payload);
        assert_eq!(d.msg_type(), msg::OFFER);
        assert!(d.get(80).is_none(), "rapid commit is not offered");
        // dhcpcd sends a REQUEST with 50 and 54 after the offer.
        let req = dhcpcd(msg::REQUEST)
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .opt(opt::SERVER_ID, &GATEWAY.octets());
        let ack = s.handle(&req.bytes(), t0).unwrap().unwrap();
        assert_eq!(decode(&ack.payload).msg_type(), msg::ACK);
        assert_eq!(s.leases(t0)[0].hostname.as_deref(), Some("guest-vm"));

        // RENEWING: ciaddr set, no 50/54, unicast to the client.
        let mut renew = dhcpcd(msg::REQUEST);
        renew.ciaddr = GUEST;
        renew.options.retain(|(c, _)| *c != opt::HOST_NAME);
        let t1 = t0 + Duration::from_secs(1800);
        let ack = s.handle(&renew.bytes(), t1).unwrap().unwrap();
        assert!(!ack.broadcast);
        assert_eq!(ack.dst_ip, GUEST);
        assert_eq!(ack.dst_mac, MAC);
        let d = decode(&ack.payload);
        assert_eq!(d.msg_type(), msg::ACK);
        assert_eq!(d.ciaddr, GUEST);
        let lease = &s.leases(t1)[0];
        assert_eq!(lease.expires_in, Duration::from_secs(3600), "renewed");
        assert_eq!(lease.hostname.as_deref(), Some("guest-vm"), "kept");
    }

    #[test]
    fn broadcast_flag_forces_broadcast() {
        let mut s = server();
        let mut renew = Msg::new(msg::REQUEST);
        renew.ciaddr = GUEST;
        renew.flags = FLAG_BROADCAST;
        let ack = s.handle(&renew.bytes(), now()).unwrap().unwrap();
        assert!(ack.broadcast);
        assert_eq!(ack.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(decode(&ack.payload).flags, FLAG_BROADCAST, "flags echoed");
    }

    #[test]
    fn nak_on_wrong_address() {
        let mut s = server();
        // INIT-REBOOT for an address from another network.
        let req = udhcpc(msg::REQUEST).opt(opt::REQUESTED_IP, &[10, 0, 0, 5]);
        let nak = s.handle(&req.bytes(), now()).unwrap().unwrap();
        let d = decode(&nak.payload);
        assert_eq!(d.msg_type(), msg::NAK);
        assert_eq!(d.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert!(d.get(opt::LEASE_TIME).is_none());
        assert!(d.get(opt::INTERFACE_MTU).is_none());
        assert_eq!(d.get(opt::SERVER_ID), Some(&[192, 168, 127, 1][..]));
        assert!(nak.broadcast, "NAKs are broadcast");
        assert!(s.leases(now()).is_empty());

        // RENEWING with a wrong ciaddr: NAK, still broadcast.
        let mut renew = Msg::new(msg::REQUEST);
        renew.ciaddr = Ipv4Addr::new(192, 168, 127, 9);
        let nak = s.handle(&renew.bytes(), now()).unwrap().unwrap();
        assert_eq!(decode(&nak.payload).msg_type(), msg::NAK);
        assert!(nak.broadcast);

        // Neither option 50 nor ciaddr: nothing to grant.
        let nak = s
            .handle(&Msg::new(msg::REQUEST).bytes(), now())
            .unwrap()
            .unwrap();
        assert_eq!(decode(&nak.payload).msg_type(), msg::NAK);
    }

    #[test]
    fn request_for_other_server_is_ignored() {
        let mut s = server();
        let req = udhcpc(msg::REQUEST)
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .opt(opt::SERVER_ID, &[192, 168, 127, 200]);
        assert_eq!(s.handle(&req.bytes(), now()), Ok(None));
        assert!(s.leases(now()).is_empty());
    }

    #[test]
    fn inform_gets_ack_without_lease() {
        let mut s = server();
        let mut inform = dhcpcd(msg::INFORM);
        inform.ciaddr = GUEST;
        let ack = s.handle(&inform.bytes(), now()).unwrap().unwrap();
        let d = decode(&ack.payload);
        assert_eq!(d.msg_type(), msg::ACK);
        assert_eq!(d.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.ciaddr, GUEST);
        for code in [opt::LEASE_TIME, opt::RENEWAL_TIME, opt::REBINDING_TIME] {
            assert!(d.get(code).is_none(), "option {code} in INFORM ACK");
        }
        assert_full_config(&d);
        assert!(!ack.broadcast);
        assert_eq!((ack.dst_ip, ack.dst_mac), (GUEST, MAC));
        assert!(s.leases(now()).is_empty());
    }

    fn bound(s: &mut DhcpServer, t: Instant) {
        let req = udhcpc(msg::REQUEST).opt(opt::REQUESTED_IP, &GUEST.octets());
        s.handle(&req.bytes(), t).unwrap().unwrap();
        assert_eq!(s.leases(t).len(), 1);
    }

    #[test]
    fn release_and_decline_drop_the_lease() {
        let mut s = server();
        let t = now();
        bound(&mut s, t);
        // A RELEASE from another MAC leaves the lease alone.
        let mut other = Msg::new(msg::RELEASE).opt(opt::SERVER_ID, &GATEWAY.octets());
        other.ciaddr = GUEST;
        other.mac = [2, 0, 0, 0, 0, 9];
        assert_eq!(s.handle(&other.bytes(), t), Ok(None));
        assert_eq!(s.leases(t).len(), 1);
        // udhcpc's release: ciaddr + server id, no reply.
        let mut release = Msg::new(msg::RELEASE).opt(opt::SERVER_ID, &GATEWAY.octets());
        release.ciaddr = GUEST;
        assert_eq!(s.handle(&release.bytes(), t), Ok(None));
        assert!(s.leases(t).is_empty());

        bound(&mut s, t);
        let decline = Msg::new(msg::DECLINE)
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .opt(opt::SERVER_ID, &GATEWAY.octets());
        assert_eq!(s.handle(&decline.bytes(), t), Ok(None));
        assert!(s.leases(t).is_empty());
    }

    #[test]
    fn new_mac_takes_the_lease_over() {
        let mut s = server();
        let t = now();
        bound(&mut s, t);
        let mut req = Msg::new(msg::REQUEST).opt(opt::REQUESTED_IP, &GUEST.octets());
        req.mac = [2, 0, 0, 0, 0, 7];
        let ack = s.handle(&req.bytes(), t).unwrap().unwrap();
        assert_eq!(decode(&ack.payload).msg_type(), msg::ACK);
        let leases = s.leases(t);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].mac, [2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn domain_and_search_list_encoding() {
        let cfg = DhcpConfig {
            domain_name: Some("airlock.internal".into()),
            search_domains: vec![
                "airlock.internal.".into(),
                "example.com".into(),
                "bad..name".into(),
            ],
            dns_servers: vec![GATEWAY, Ipv4Addr::new(10, 0, 0, 53)],
            lease_time: Duration::from_secs(86400),
            prefix_len: 20,
            ..DhcpConfig::default()
        };
        let mut s = DhcpServer::new(cfg);
        let offer = s
            .handle(&dhcpcd(msg::DISCOVER).bytes(), now())
            .unwrap()
            .unwrap();
        let d = decode(&offer.payload);
        assert_eq!(d.get(opt::DOMAIN_NAME), Some(&b"airlock.internal"[..]));
        assert_eq!(
            d.get(opt::DOMAIN_SEARCH),
            Some(&b"\x07airlock\x08internal\x00\x07example\x03com\x00"[..])
        );
        assert_eq!(
            d.get(opt::DNS_SERVERS),
            Some(&[192, 168, 127, 1, 10, 0, 0, 53][..])
        );
        assert_eq!(d.get(opt::SUBNET_MASK), Some(&[255, 255, 240, 0][..]));
        assert_eq!(d.u32(opt::LEASE_TIME), 86400);
        assert_eq!(d.u32(opt::RENEWAL_TIME), 43200);
        assert_eq!(d.u32(opt::REBINDING_TIME), 75600);
    }

    /// Decodes option 119 data as a client does (RFC 1035 §4.1.4 pointers
    /// into the option's data), checking every pointer goes backwards.
    fn decode_search(data: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let mut labels = Vec::new();
            let mut pos = at;
            let mut end = None;
            loop {
                let len = data[pos] as usize;
                if len == 0 {
                    end.get_or_insert(pos + 1);
                    break;
                }
                if len & 0xc0 == 0xc0 {
                    let target = (len & 0x3f) << 8 | data[pos + 1] as usize;
                    assert!(target < pos, "pointer forwards");
                    end.get_or_insert(pos + 2);
                    pos = target;
                    continue;
                }
                labels.push(String::from_utf8(data[pos + 1..pos + 1 + len].to_vec()).unwrap());
                pos += 1 + len;
            }
            names.push(labels.join("."));
            at = end.unwrap();
        }
        names
    }

    #[test]
    fn search_list_compression_rfc_3397_example() {
        // RFC 3397 §2: "eng.apple.com" and "marketing.apple.com".
        let data = encode_search_list(&["eng.apple.com".into(), "marketing.apple.com".into()]);
        assert_eq!(
            data,
            b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04".to_vec()
        );
        assert_eq!(
            decode_search(&data),
            ["eng.apple.com", "marketing.apple.com"]
        );
    }

    #[test]
    fn search_list_compression_edge_cases() {
        let list: Vec<String> = [
            "corp.example.com.",
            "EXAMPLE.com",
            "lab.corp.example.com",
            "bad..name",
            "corp.example.com",
            "other.org",
            "org",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let data = encode_search_list(&list);
        assert_eq!(
            decode_search(&data),
            [
                "corp.example.com",
                "example.com",
                "lab.corp.example.com",
                "corp.example.com",
                "other.org",
                "org"
            ]
        );
        // "example.com" is a pointer into the first name; the repeated name
        // and "org" are pointers alone.
        let first = b"\x04corp\x07example\x03com\x00";
        assert_eq!(&data[..first.len()], first);
        assert_eq!(&data[first.len()..first.len() + 2], b"\xc0\x05");
        assert_eq!(&data[data.len() - 2..], b"\xc0\x22");
        assert!(data.len() < list.iter().map(|n| n.len() + 2).sum::<usize>() - 20);
        assert!(encode_search_list(&[]).is_empty());
        assert!(encode_search_list(&["".into(), ".".into()]).is_empty());
    }

    #[test]
    fn search_list_can_change_at_run_time() {
        let mut s = server();
        let d = decode(
            &s.handle(&dhcpcd(msg::DISCOVER).bytes(), now())
                .unwrap()
                .unwrap()
                .payload,
        );
        assert!(d.get(opt::DOMAIN_SEARCH).is_none() && d.get(opt::DOMAIN_NAME).is_none());
        s.set_domains(
            Some("corp.test".into()),
            vec!["corp.test".into(), "lab.corp.test".into()],
        );
        let d = decode(
            &s.handle(&dhcpcd(msg::DISCOVER).bytes(), now())
                .unwrap()
                .unwrap()
                .payload,
        );
        assert_eq!(d.get(opt::DOMAIN_NAME), Some(&b"corp.test"[..]));
        assert_eq!(
            decode_search(d.get(opt::DOMAIN_SEARCH).unwrap()),
            ["corp.test", "lab.corp.test"]
        );
        s.set_domains(None, Vec::new());
        let d = decode(
            &s.handle(&dhcpcd(msg::DISCOVER).bytes(), now())
                .unwrap()
                .unwrap()
                .payload,
        );
        assert!(d.get(opt::DOMAIN_SEARCH).is_none() && d.get(opt::DOMAIN_NAME).is_none());
    }

    #[test]
    fn long_search_list_is_split_or_left_out() {
        let cfg = DhcpConfig {
            search_domains: (0..12)
                .map(|i| format!("{}.example.internal", "x".repeat(20 + i)))
                .collect(),
            ..DhcpConfig::default()
        };
        let total = encode_search_list(&cfg.search_domains).len();
        assert!(total > 255 && total < 1000, "{total}");
        let mut s = DhcpServer::new(cfg);
        // dhcpcd accepts 1472 bytes: the list is split over several 119s.
        let offer = s
            .handle(&dhcpcd(msg::DISCOVER).bytes(), now())
            .unwrap()
            .unwrap();
        let d = decode(&offer.payload);
        assert!(d.order.iter().filter(|&&c| c == opt::DOMAIN_SEARCH).count() >= 2);
        assert_eq!(d.get(opt::DOMAIN_SEARCH).unwrap().len(), total);
        assert!(offer.payload.len() <= 1472 - 28);
        // udhcpc says 576: the list is dropped, the essentials stay.
        let offer = s
            .handle(&udhcpc(msg::DISCOVER).bytes(), now())
            .unwrap()
            .unwrap();
        assert!(offer.payload.len() <= 576 - 28);
        let d = decode(&offer.payload);
        assert!(d.get(opt::DOMAIN_SEARCH).is_none());
        assert_full_config(&d);
    }

    #[test]
    fn option_overload_is_read() {
        // Option 52 = 1: the host name lives in the 'file' field.
        let mut b = Msg::new(msg::REQUEST)
            .opt(opt::OVERLOAD, &[1])
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .bytes();
        let file = [opt::HOST_NAME, 3, b'v', b'm', b'1', opt::END];
        b[108..108 + file.len()].copy_from_slice(&file);
        let mut s = server();
        s.handle(&b, now()).unwrap().unwrap();
        assert_eq!(s.leases(now())[0].hostname.as_deref(), Some("vm1"));
    }

    #[test]
    fn hostile_hostname_is_sanitized() {
        let req = Msg::new(msg::REQUEST)
            .opt(opt::REQUESTED_IP, &GUEST.octets())
            .opt(opt::HOST_NAME, b"a\x1b[31m\xff b");
        let mut s = server();
        s.handle(&req.bytes(), now()).unwrap().unwrap();
        assert_eq!(s.leases(now())[0].hostname.as_deref(), Some("a?[31m??b"));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let mut s = server();
        let t = now();
        let good = Msg::new(msg::DISCOVER).bytes();
        assert!(s.handle(&good, t).unwrap().is_some());

        assert_eq!(s.handle(&[], t), Err(DhcpError::Truncated { len: 0 }));
        assert_eq!(
            s.handle(&good[..239], t),
            Err(DhcpError::Truncated { len: 239 })
        );

        let mut b = good.clone();
        b[0] = BOOTREPLY;
        assert_eq!(s.handle(&b, t), Err(DhcpError::NotBootRequest { op: 2 }));
        let mut b = good.clone();
        b[2] = 16;
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::UnsupportedHardware { htype: 1, hlen: 16 })
        );
        let mut b = good.clone();
        b[1] = 6;
        assert!(matches!(
            s.handle(&b, t),
            Err(DhcpError::UnsupportedHardware { .. })
        ));
        let mut b = good.clone();
        b[236] = 0;
        assert!(matches!(s.handle(&b, t), Err(DhcpError::BadMagicCookie(_))));
        let mut b = good.clone();
        b[24] = 10;
        assert!(matches!(s.handle(&b, t), Err(DhcpError::Relayed(_))));

        // No option 53 (BOOTP), an unknown type, a server-side type.
        let mut b = good[..240].to_vec();
        b.push(opt::END);
        assert_eq!(s.handle(&b, t), Err(DhcpError::MissingMessageType));
        for ty in [msg::OFFER, msg::ACK, msg::NAK, 0, 9, 200] {
            let b = Msg::new(ty).bytes();
            assert!(s.handle(&b, t).is_err(), "type {ty}");
        }

        // Bad lengths of fixed-size options.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 2, 1, 1, opt::END]);
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 53, len: 2 })
        );
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 0, opt::END]);
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 53, len: 0 })
        );
        let b = Msg::new(msg::REQUEST)
            .opt(opt::REQUESTED_IP, &[1, 2, 3])
            .bytes();
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 50, len: 3 })
        );
        let b = Msg::new(msg::REQUEST).opt(opt::SERVER_ID, &[]).bytes();
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 54, len: 0 })
        );
        let b = Msg::new(msg::DISCOVER).opt(opt::CLIENT_ID, &[1]).bytes();
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 61, len: 1 })
        );
        let b = Msg::new(msg::DISCOVER)
            .opt(opt::MAX_MESSAGE_SIZE, &[2])
            .bytes();
        assert_eq!(
            s.handle(&b, t),
            Err(DhcpError::BadOptionLength { code: 57, len: 1 })
        );

        // Overflow: a length past the end, and a code with no length byte.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, 1, opt::HOST_NAME, 200, b'x']);
        assert_eq!(s.handle(&b, t), Err(DhcpError::OptionOverflow { code: 12 }));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, 1, opt::HOST_NAME]);
        assert_eq!(s.handle(&b, t), Err(DhcpError::OptionOverflow { code: 12 }));
        // Overloaded 'file' with an overflowing option.
        let mut b = Msg::new(msg::DISCOVER).opt(opt::OVERLOAD, &[3]).bytes();
        b[108] = opt::HOST_NAME;
        b[109] = 255;
        assert_eq!(s.handle(&b, t), Err(DhcpError::OptionOverflow { code: 12 }));

        // Zero-length host name is ignored, options without END are fine.
        let b = Msg::new(msg::DISCOVER).opt(opt::HOST_NAME, &[]).bytes();
        assert!(s.handle(&b, t).unwrap().is_some());
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, 1]);
        assert!(s.handle(&b, t).unwrap().is_some());
    }

    #[test]
    fn all_pad_or_huge_garbage_never_panics() {
        let mut s = server();
        let t = now();
        let mut b = Msg::new(msg::DISCOVER).bytes();
        b.truncate(243);
        b.resize(64 * 1024, 0);
        assert!(
            s.handle(&b, t).unwrap().is_some(),
            "64 KiB of PAD after the type"
        );
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut garbage = vec![0u8; 64 * 1024];
        garbage.iter_mut().for_each(|b| *b = rng.next() as u8);
        let _ = s.handle(&garbage, t);
        // Garbage behind a valid header.
        garbage[..240].copy_from_slice(&b[..240]);
        let _ = s.handle(&garbage, t);
    }

    /// Deterministic xorshift64 for the property test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn random_and_mutated_messages_never_panic() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        let mut s = server();
        let t = now();
        let seeds = [
            udhcpc(msg::DISCOVER).bytes(),
            dhcpcd(msg::REQUEST).opt(opt::OVERLOAD, &[3]).bytes(),
            Msg::new(msg::RELEASE).bytes(),
        ];
        let mut replies = 0;
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                let len = (rng.next() % 700) as usize;
                (0..len).map(|_| rng.next() as u8).collect::<Vec<_>>()
            } else {
                seeds[i % seeds.len()].clone()
            };
            if i % 2 == 1 {
                // Keep the header valid; mutate options and the overload areas.
                for _ in 0..(rng.next() % 8 + 1) {
                    let at = 44 + (rng.next() as usize) % (b.len() - 44);
                    if !(236..240).contains(&at) {
                        b[at] = rng.next() as u8;
                    }
                }
                b.truncate(240 + (rng.next() as usize) % (b.len() - 239));
            }
            if let Ok(Some(r)) = s.handle(&b, t) {
                replies += 1;
                assert!(r.payload.len() >= 300);
                decode(&r.payload);
            }
        }
        assert!(
            replies > 100,
            "mutation kept too few messages valid: {replies}"
        );
    }
}
