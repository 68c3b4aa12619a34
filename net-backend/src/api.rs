//! The control API (`--api-socket PATH`): HTTP/1.1 and JSON on a Unix
//! socket (mode 0600), for the `airlock` CLI and for tooling written
//! against gvisor-tap-vsock's forwarder API (podman machine, CRC).
//!
//! | request | success | body |
//! |---|---|---|
//! | `POST /services/forwarder/expose` `{"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"}` | 200 | the published entry |
//! | `POST /services/forwarder/unexpose` `{"local":"127.0.0.1:8080","protocol":"tcp"}` | 200 | the removed entry |
//! | `GET /services/forwarder/all` | 200 | `[{"local":…,"remote":…,"protocol":…}]`, sorted by local, then protocol |
//! | `GET /stats` | 200 | the gateway's counters ([`airlock_api::Stats`]) |
//! | `GET /flows` | 200 | the current guest's flows ([`FlowInfo`]) |
//! | `GET /leases` | 200 | `[{"mac":"52:54:00:…","ip":…,"hostname":…,"expires_in":SECONDS}]` |
//! | `GET /dns` | 200 | resolvers, their source, search list, zones, records ([`DnsInfo`]) |
//! | `POST /dns/add` `{"name":"web.test","value":"10.0.0.5"}` (`"type":"A"` optional) | 200 | the record, also if it existed |
//! | `POST /dns/remove` `{"name":"web.test"}` (`"value":…` to remove one) | 200 | the records removed |
//! | `POST /services/dns/add` `{"Name":"apps.test.","Records":[{"Name":"a","IP":"10.0.0.5"}],"DefaultIP":"10.0.0.9"}` | 200 | the zone as stored |
//! | `GET /services/dns/all` | 200 | the local zones, gvisor-tap-vsock's shape |
//! | `GET /metrics` | 200 | the counters, flows and leases in Prometheus' text format ([`crate::metrics`]) |
//!
//! As in gvisor-tap-vsock, `protocol` is `tcp` (the default when it is
//! missing, empty or null) or `udp`; `local` may be `:PORT`, meaning every
//! IPv4 interface (Go's listen semantics); a `remote` without a host
//! (`:80`) means the guest's address (gvisor-tap-vsock fills in its
//! caller's address there). Unlike it, unknown request fields are refused
//! (a misspelt `protocol` must not silently publish TCP), `remote` must be
//! a guest address in the virtual subnet, and errors are JSON:
//! `{"error": "cannot bind published port 127.0.0.1:8080/tcp: Address in
//! use (os error 98)"}` with 400 (bad request), 403 (bind not permitted),
//! 404 (not published, unknown path), 405 (wrong method, with `Allow`), 409
//! (already published, address in use), 411/413/431 (framing and size
//! limits) or 500. Clients of gvisor-tap-vsock only test for 200 and show
//! the body otherwise, so they keep working.
//!
//! DNS records: a value is an IPv4 address (A), an IPv6 address (AAAA) or a
//! host name (CNAME); a name `*.zone` answers for every name below `zone`
//! without records of its own. Errors: 400 (invalid name or value, a
//! `type` that does not match the value), 404 (nothing to remove), 403
//! (the gateway's built-in names), 409 (a CNAME beside other records, too
//! many records). `/services/dns/add` takes gvisor-tap-vsock's `types.Zone`
//! (field names in any case, as Go reads them): the zone becomes local
//! (NXDOMAIN for names without records) unless it has a rule already, each
//! record becomes the only address of `NAME.ZONE`, and `DefaultIP` the
//! address of every other name in the zone (gvisor-tap-vsock answers A
//! queries only; here AAAA works too, and `Regexp` records are refused
//! with 400). Records last until the daemon stops.
//!
//! Connections are served by one thread each, at most
//! [`MAX_CONNECTIONS`] at a time (more are answered 503 and closed).

pub mod http;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use airlock_api::{
    DnsInfo, DnsRecord, DnsRemoveRequest, ExposeRequest, FlowInfo, GvZone, Lease, PortEntry,
    PortSpec, Proto, SpecError, Stats, UnexposeRequest,
};
use airlock_common::listen::{bind_path, ListenError};
use airlock_netcore::publish::PublishError;
use airlock_netcore::services::dns::{api_record, DnsError, LocalRecord, RecordData};
use airlock_netcore::{GatewayConfig, Shared};
use serde::Deserialize;

use http::{Request, Response};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a write to a client may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection over the limit may take to send its request and
/// read the 503.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections over the limit answered at once; past this they are only
/// closed.
const MAX_REFUSING: usize = 8;
/// How long the data path may take to say what its guest has.
const GUEST_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest request path quoted back in a 404.
const MAX_QUOTED_PATH: usize = 100;

// ---- what the API controls ----------------------------------------------------

/// The daemon as the API sees it ([`Shared`]; a fake in tests).
pub trait Control: Send + Sync + 'static {
    fn publish(&self, spec: PortSpec) -> Result<(), PublishError>;
    fn unpublish(&self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError>;
    fn published(&self) -> Vec<PortSpec>;
    fn stats(&self) -> Stats;
    /// DNS queries over UDP by outcome (`/metrics`).
    fn dns_queries(&self) -> Vec<(&'static str, u64)>;
    /// The current guest's flows; `None` if the data path did not answer.
    fn flows(&self) -> Option<Vec<FlowInfo>>;
    /// The DHCP leases; `None` if the data path did not answer.
    fn leases(&self) -> Option<Vec<Lease>>;
    fn dns(&self) -> DnsInfo;
    /// Adds a record; `Ok(false)`: it existed already.
    fn dns_add(&self, name: &str, data: RecordData) -> Result<bool, DnsError>;
    fn dns_remove(
        &self,
        name: &str,
        data: Option<&RecordData>,
    ) -> Result<Vec<LocalRecord>, DnsError>;
    /// gvisor-tap-vsock's zone: returns the zone's name as stored.
    fn dns_add_zone(
        &self,
        zone: &str,
        records: &[(String, IpAddr)],
        default: Option<IpAddr>,
    ) -> Result<String, DnsError>;
    fn dns_zones(&self) -> Vec<GvZone>;
}

impl Control for Shared {
    fn publish(&self, spec: PortSpec) -> Result<(), PublishError> {
        Shared::publish(self, &[spec])
    }
    fn unpublish(&self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError> {
        Shared::unpublish(self, host, proto)
    }
    fn published(&self) -> Vec<PortSpec> {
        Shared::published(self)
    }
    fn stats(&self) -> Stats {
        let mut stats = self.stats.snapshot();
        stats.dns = self.dns.stats();
        stats
    }
    fn dns_queries(&self) -> Vec<(&'static str, u64)> {
        self.stats.dns_queries()
    }
    fn flows(&self) -> Option<Vec<FlowInfo>> {
        self.current_guest(GUEST_QUERY_TIMEOUT).map(|g| g.flows)
    }
    fn leases(&self) -> Option<Vec<Lease>> {
        self.current_guest(GUEST_QUERY_TIMEOUT).map(|g| g.leases)
    }
    fn dns(&self) -> DnsInfo {
        self.dns.view().info()
    }
    fn dns_add(&self, name: &str, data: RecordData) -> Result<bool, DnsError> {
        self.dns_add_record(name, data)
    }
    fn dns_remove(
        &self,
        name: &str,
        data: Option<&RecordData>,
    ) -> Result<Vec<LocalRecord>, DnsError> {
        self.dns_remove_records(name, data)
    }
    fn dns_add_zone(
        &self,
        zone: &str,
        records: &[(String, IpAddr)],
        default: Option<IpAddr>,
    ) -> Result<String, DnsError> {
        self.dns_add_gv_zone(zone, records, default)
    }
    fn dns_zones(&self) -> Vec<GvZone> {
        self.dns.view().gv_zones()
    }
}

/// The virtual subnet, to check where a published port may point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub guest_ip: Ipv4Addr,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The gateway's own addresses (gateway, host and proxy aliases).
    pub own: Vec<Ipv4Addr>,
    /// The guest's IPv6 /64 and the gateway's own addresses in it, unless
    /// IPv6 is off.
    pub ipv6: Option<(Ipv6Addr, Vec<Ipv6Addr>)>,
}

impl GuestNet {
    pub fn new(g: &GatewayConfig) -> GuestNet {
        let mut own = vec![g.gateway_ip, g.proxy_ip];
        own.extend(g.host_ip);
        GuestNet {
            guest_ip: g.guest_ip,
            network: Ipv4Addr::from(u32::from(g.gateway_ip) & mask(g.prefix_len)),
            prefix_len: g.prefix_len,
            own,
            ipv6: g.ipv6.as_ref().map(|v6| {
                let mut own = vec![v6.gateway, v6.proxy];
                own.extend(v6.host);
                (v6.prefix, own)
            }),
        }
    }

    /// Parses `remote`: `IP:PORT`, `:PORT` for the guest's IPv4 address,
    /// `[IPv6]:PORT` in the guest's prefix, or `[::]:PORT` for the guest's
    /// own IPv6 address (as the gateway learns it).
    fn remote(&self, remote: &str) -> Result<SocketAddr, String> {
        let bad = || {
            format!(
                "invalid remote {remote:?}: expected IP:PORT in the guest subnet, e.g. {}:80",
                self.guest_ip
            )
        };
        if remote.starts_with('[') {
            let addr = remote.parse::<SocketAddrV6>().map_err(|_| bad())?;
            if addr.port() == 0 {
                return Err(bad());
            }
            return self.remote6(*addr.ip(), addr.port());
        }
        let (host, port) = remote.rsplit_once(':').ok_or_else(bad)?;
        let port = parse_port(port).ok_or_else(bad)?;
        let ip = if host.is_empty() {
            self.guest_ip
        } else {
            host.parse::<Ipv4Addr>().map_err(|_| bad())?
        };
        let m = mask(self.prefix_len);
        let inside = u32::from(ip) & m == u32::from(self.network);
        let host_part = u32::from(ip) & !m;
        if !inside || host_part == 0 || host_part == !m {
            return Err(format!(
                "remote {ip} is not a guest address in {}/{}",
                self.network, self.prefix_len
            ));
        }
        if self.own.contains(&ip) {
            return Err(format!(
                "remote {ip} is one of the gateway's own addresses, not the guest's"
            ));
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    }

    fn remote6(&self, ip: Ipv6Addr, port: u16) -> Result<SocketAddr, String> {
        let Some((prefix, own)) = &self.ipv6 else {
            return Err(format!(
                "remote [{ip}]:{port}: IPv6 is off (--no-ipv6), the guest has no IPv6 address"
            ));
        };
        if ip == airlock_api::GUEST_IPV6 {
            return Ok(airlock_api::guest_ipv6(port));
        }
        if u128::from(ip) >> 64 != u128::from(*prefix) >> 64 {
            return Err(format!("remote {ip} is not a guest address in {prefix}/64"));
        }
        if own.contains(&ip) {
            return Err(format!(
                "remote {ip} is one of the gateway's own addresses, not the guest's"
            ));
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// A port number 1-65535 (digits only).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Parses `local`: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for every IPv4
/// interface.
fn parse_local(local: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!("invalid local {local:?}: expected IP:PORT such as 127.0.0.1:8080, [::1]:8080 or :8080 (every interface)")
    };
    if let Some(port) = local.strip_prefix(':') {
        let port = parse_port(port).ok_or_else(bad)?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    let addr = local.parse::<SocketAddr>().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(addr)
}

fn parse_protocol(p: Option<&str>) -> Result<Proto, String> {
    match p {
        None | Some("") | Some("tcp") => Ok(Proto::Tcp),
        Some("udp") => Ok(Proto::Udp),
        Some(other) => Err(format!("unsupported protocol {other:?}: tcp or udp")),
    }
}

/// `err` and its causes, joined with `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn dns_error(e: &DnsError) -> Response {
    let status = match e {
        DnsError::NoSuchRecord(_) => 404,
        DnsError::BuiltinRecord(_) => 403,
        DnsError::CnameConflict(_) | DnsError::TooManyRecords(_) => 409,
        _ => 400,
    };
    Response::error(status, &chain(e))
}

/// A record's value, checked against its `type` if one is given.
fn record_value(rtype: Option<&str>, value: &str) -> Result<RecordData, Response> {
    let data = RecordData::parse(value).map_err(|e| {
        Response::error(
            400,
            &format!("invalid value {value:?}: expected an IPv4 address (A), an IPv6 address (AAAA) or a host name (CNAME): {e}"),
        )
    })?;
    match rtype {
        Some(t) if !t.eq_ignore_ascii_case(data.type_name()) => Err(Response::error(
            400,
            &format!(
                "type {t:?} does not match value {value:?}, which is a {} record (A, AAAA or CNAME)",
                data.type_name()
            ),
        )),
        _ => Ok(data),
    }
}

fn publish_error(e: &PublishError) -> Response {
    let status = match e {
        PublishError::Duplicate(_) => 409,
        PublishError::NotPublished(_) => 404,
        PublishError::Bind { source, .. } => match source.kind() {
            io::ErrorKind::AddrInUse => 409,
            io::ErrorKind::PermissionDenied => 403,
            io::ErrorKind::AddrNotAvailable => 400,
            _ => 500,
        },
        PublishError::Spec(SpecError::Syntax(_) | SpecError::Range(_))
        | PublishError::GuestAddress(_)
        | PublishError::Proto(_) => 400,
    };
    Response::error(status, &chain(e))
}

// ---- routing ---------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Expose,
    Unexpose,
    All,
    Stats,
    Flows,
    Leases,
    Dns,
    DnsAdd,
    DnsRemove,
    GvDnsAdd,
    GvDnsAll,
    Metrics,
}

/// Path, endpoint, and whether it is read (GET, HEAD) or write (POST).
const ROUTES: &[(&str, Endpoint, bool)] = &[
    ("/services/forwarder/expose", Endpoint::Expose, false),
    ("/services/forwarder/unexpose", Endpoint::Unexpose, false),
    ("/services/forwarder/all", Endpoint::All, true),
    ("/stats", Endpoint::Stats, true),
    ("/flows", Endpoint::Flows, true),
    ("/leases", Endpoint::Leases, true),
    ("/dns", Endpoint::Dns, true),
    ("/dns/add", Endpoint::DnsAdd, false),
    ("/dns/remove", Endpoint::DnsRemove, false),
    ("/services/dns/add", Endpoint::GvDnsAdd, false),
    ("/services/dns/all", Endpoint::GvDnsAll, true),
    ("/metrics", Endpoint::Metrics, true),
];

/// The API: requests in, responses out, no sockets.
pub struct Api<C> {
    control: Arc<C>,
    net: GuestNet,
}

impl<C: Control> Api<C> {
    pub fn new(control: Arc<C>, net: GuestNet) -> Api<C> {
        Api { control, net }
    }

    /// Answers one request.
    pub fn handle(&self, req: &Request) -> Response {
        let Some(&(_, endpoint, read)) = ROUTES.iter().find(|r| r.0 == req.path) else {
            let mut quoted: String = req.path.chars().take(MAX_QUOTED_PATH).collect();
            if quoted.len() < req.path.len() {
                quoted.push('…');
            }
            return Response::error(404, &format!("no such endpoint: {quoted}"));
        };
        let (allowed, allow) = if read {
            (req.method == "GET" || req.method == "HEAD", "GET, HEAD")
        } else {
            (req.method == "POST", "POST")
        };
        if !allowed {
            return Response::error(
                405,
                &format!("{} takes {allow}, not {}", req.path, req.method),
            )
            .with_header("Allow", allow);
        }
        match endpoint {
            Endpoint::Expose => self.expose(&req.body).unwrap_or_else(|refused| refused),
            Endpoint::Unexpose => self.unexpose(&req.body).unwrap_or_else(|refused| refused),
            Endpoint::All => {
                let mut all: Vec<PortEntry> = self
                    .control
                    .published()
                    .into_iter()
                    .map(PortEntry::from)
                    .collect();
                // gvisor-tap-vsock's order.
                all.sort_by(|a, b| (&a.local, &a.protocol).cmp(&(&b.local, &b.protocol)));
                Response::json(200, &all)
            }
            Endpoint::Stats => Response::json(200, &self.control.stats()),
            Endpoint::Flows => match self.control.flows() {
                Some(flows) => Response::json(200, &flows),
                None => no_answer(),
            },
            Endpoint::Leases => match self.control.leases() {
                Some(leases) => Response::json(200, &leases),
                None => no_answer(),
            },
            Endpoint::Metrics => {
                let guest = self.control.flows().zip(self.control.leases());
                let text = crate::metrics::render(
                    &self.control.stats(),
                    &self.control.dns_queries(),
                    guest.as_ref().map(|(f, l)| (&f[..], &l[..])),
                );
                Response::text(200, text, crate::metrics::CONTENT_TYPE)
            }
            Endpoint::Dns => Response::json(200, &self.control.dns()),
            Endpoint::DnsAdd => self.dns_add(&req.body).unwrap_or_else(|refused| refused),
            Endpoint::DnsRemove => self.dns_remove(&req.body).unwrap_or_else(|refused| refused),
            Endpoint::GvDnsAdd => self.gv_dns_add(&req.body).unwrap_or_else(|refused| refused),
            Endpoint::GvDnsAll => Response::json(200, &self.control.dns_zones()),
        }
    }

    fn dns_add(&self, body: &[u8]) -> Handled {
        let req: DnsRecord = parse_body(body)?;
        let data = record_value(req.rtype.as_deref(), &req.value)?;
        self.control
            .dns_add(&req.name, data.clone())
            .map_err(|e| dns_error(&e))?;
        let name = req.name.trim_end_matches('.').to_ascii_lowercase();
        Ok(Response::json(
            200,
            &DnsRecord {
                name,
                rtype: Some(data.type_name().to_owned()),
                value: data.to_string(),
                source: Some("api".to_owned()),
            },
        ))
    }

    fn dns_remove(&self, body: &[u8]) -> Handled {
        let req: DnsRemoveRequest = parse_body(body)?;
        let data = req
            .value
            .as_deref()
            .map(|v| record_value(None, v))
            .transpose()?;
        let gone = self
            .control
            .dns_remove(&req.name, data.as_ref())
            .map_err(|e| dns_error(&e))?;
        Ok(Response::json(
            200,
            &gone.iter().map(api_record).collect::<Vec<_>>(),
        ))
    }

    fn gv_dns_add(&self, body: &[u8]) -> Handled {
        let zone: GvZone = parse_body(body)?;
        let parsed = (|| {
            if zone.name.trim_end_matches('.').is_empty() {
                return Err("the zone has no Name".to_owned());
            }
            let mut records = Vec::new();
            for r in &zone.records {
                if r.regexp.is_some() {
                    return Err(format!(
                        "record {:?}: Regexp records are not supported by airlock-net; use DefaultIP for every name of the zone",
                        r.name
                    ));
                }
                if r.name.is_empty() {
                    return Err("a record has no Name".to_owned());
                }
                let ip =
                    r.ip.parse::<IpAddr>()
                        .map_err(|_| format!("record {:?}: invalid IP {:?}", r.name, r.ip))?;
                records.push((r.name.clone(), ip));
            }
            let default = match zone.default_ip.as_str() {
                "" => None,
                ip => Some(
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("invalid DefaultIP {ip:?}"))?,
                ),
            };
            Ok((records, default))
        })();
        let (records, default) = parsed.map_err(|message| bad_request(&message))?;
        let name = self
            .control
            .dns_add_zone(&zone.name, &records, default)
            .map_err(|e| dns_error(&e))?;
        let stored = self
            .control
            .dns_zones()
            .into_iter()
            .find(|z| z.name.trim_end_matches('.') == name)
            .unwrap_or_default();
        Ok(Response::json(200, &stored))
    }

    fn expose(&self, body: &[u8]) -> Handled {
        let req: ExposeRequest = parse_body(body)?;
        let spec = (|| {
            Ok::<_, String>(PortSpec {
                proto: parse_protocol(req.protocol.as_deref())?,
                host: parse_local(&req.local)?,
                guest: self.net.remote(&req.remote)?,
            })
        })();
        let spec = spec.map_err(|message| bad_request(&message))?;
        self.control.publish(spec).map_err(|e| publish_error(&e))?;
        Ok(Response::json(200, &PortEntry::from(spec)))
    }

    fn unexpose(&self, body: &[u8]) -> Handled {
        let req: UnexposeRequest = parse_body(body)?;
        let target = parse_protocol(req.protocol.as_deref())
            .and_then(|proto| Ok((parse_local(&req.local)?, proto)));
        let (host, proto) = target.map_err(|message| bad_request(&message))?;
        let spec = self
            .control
            .unpublish(host, proto)
            .map_err(|e| publish_error(&e))?;
        Ok(Response::json(200, &PortEntry::from(spec)))
    }
}

/// The data path did not say what its guest has in time.
fn no_answer() -> Response {
    Response::error(
        503,
        &format!(
            "the network device did not answer within {} s; try again",
            GUEST_QUERY_TIMEOUT.as_secs()
        ),
    )
}

/// A write endpoint's answer: `Err` is the refusal, already a response.
type Handled = Result<Response, Response>;

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("invalid request body: {e}")))
}

fn bad_request(message: &str) -> Response {
    Response::error(400, message)
}

// ---- the server --------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot open the control API socket {0}")]
    Bind(PathBuf, #[source] ListenError),
    #[error("cannot start the control API thread")]
    Thread(#[source] io::Error),
}

/// The running API server. Dropping it removes the socket file (a signal
/// exit removes it through [`airlock_common::signals::at_exit`]).
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = airlock_common::sandbox::remove_socket(&self.path);
    }
}

/// Binds `path` (mode 0600; a stale socket is replaced, a live one refused)
/// and serves `api` on it from a thread.
pub fn start<C: Control>(path: &Path, api: Api<C>) -> Result<ApiServer, ApiError> {
    let listener = bind_path(path, None).map_err(|e| ApiError::Bind(path.to_owned(), e))?;
    let server = ApiServer {
        path: path.to_owned(),
    };
    let remove = path.to_owned();
    airlock_common::signals::at_exit(move || {
        let _ = airlock_common::sandbox::remove_socket(&remove);
    });
    let api = Arc::new(api);
    thread::Builder::new()
        .name("api".into())
        .spawn(move || accept_loop(listener, api))
        .map_err(ApiError::Thread)?;
    log::info!("control API listening on {}", path.display());
    Ok(server)
}

/// Decrements the connection count when a connection thread ends (also
/// if it panics, or never starts).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop<C: Control>(listener: UnixListener, api: Arc<Api<C>>) {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                airlock_common::ratelimited!(log::Level::Warn, "control API: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        // Only this thread adds, so the checks cannot race past the limits.
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            airlock_common::ratelimited!(
                log::Level::Warn,
                "control API: more than {MAX_CONNECTIONS} connections; refusing one"
            );
            if refusing.load(Ordering::SeqCst) < MAX_REFUSING {
                refusing.fetch_add(1, Ordering::SeqCst);
                let slot = Slot(refusing.clone());
                let spawned = thread::Builder::new()
                    .name("api-busy".into())
                    .spawn(move || {
                        let _slot = slot;
                        busy(stream);
                    });
                if let Err(e) = spawned {
                    log::debug!("control API: cannot start a refusal thread: {e}");
                }
            }
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(active.clone());
        let api = api.clone();
        let spawned = thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &api);
            });
        if let Err(e) = spawned {
            airlock_common::ratelimited!(
                log::Level::Warn,
                "control API: cannot start a connection thread: {e}"
            );
        }
    }
}

/// Answers 503 to a connection over the limit. Its request is read first
/// (up to the head's size limit, for at most [`BUSY_TIMEOUT`]): closing a
/// Unix socket with unread data resets it, and the client would see
/// "connection reset" instead of the answer.
fn busy(mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(BUSY_TIMEOUT));
    let _ = stream.set_write_timeout(Some(BUSY_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < http::MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = Response::error(
        503,
        &format!("too many control API connections (at most {MAX_CONNECTIONS}); try again"),
    );
    if stream.write_all(&response.to_bytes(false, false)).is_ok() {
        // Whatever else it sends (a body) is read until it closes, so the
        // close does not reset the answer away.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn serve<C: Control>(mut stream: UnixStream, api: &Api<C>) {
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        log::debug!("control API: cannot set a write timeout: {e}");
        return;
    }
    let result = http::serve_connection(&mut stream, |req| {
        let response = api.handle(req);
        log::debug!(
            "control API: {} {} -> {}",
            req.method,
            req.path,
            response.status
        );
        response
    });
    if let Err(e) = result {
        log::debug!("control API: connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    use airlock_api::Direction;
    use airlock_netcore::services::dns::{
        DnsSettings, LiveDns, LocalRecords, RecordSource, ZoneSpec, ZoneTarget,
    };

    /// A daemon that records publishes and refuses ports in `taken`; its
    /// DNS service is a real one.
    struct Fake {
        ports: Mutex<Vec<PortSpec>>,
        taken: Vec<SocketAddr>,
        dns: LiveDns,
    }

    impl Default for Fake {
        fn default() -> Fake {
            let mut records = LocalRecords::new();
            records
                .add(
                    "gateway.airlock.internal",
                    RecordData::A(Ipv4Addr::new(192, 168, 127, 1)),
                    RecordSource::Builtin,
                )
                .unwrap();
            Fake {
                ports: Mutex::default(),
                taken: Vec::new(),
                dns: LiveDns::new(DnsSettings {
                    upstreams: vec!["127.0.0.1:53".parse().unwrap()],
                    source: "/etc/resolv.conf".into(),
                    search: vec!["corp.test".into()],
                    zones: vec![ZoneSpec {
                        name: "airlock.internal".into(),
                        target: ZoneTarget::Local,
                    }],
                    records,
                }),
            }
        }
    }

    impl Control for Fake {
        fn publish(&self, spec: PortSpec) -> Result<(), PublishError> {
            let mut ports = self.ports.lock().unwrap();
            if ports
                .iter()
                .any(|p| p.host == spec.host && p.proto == spec.proto)
            {
                return Err(PublishError::Duplicate(format!(
                    "{}/{}",
                    spec.host, spec.proto
                )));
            }
            if self.taken.contains(&spec.host) {
                return Err(PublishError::Bind {
                    addr: spec.host,
                    proto: spec.proto,
                    source: io::Error::from_raw_os_error(libc::EADDRINUSE),
                });
            }
            ports.push(spec);
            Ok(())
        }
        fn unpublish(&self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError> {
            let mut ports = self.ports.lock().unwrap();
            let i = ports
                .iter()
                .position(|p| p.host == host && p.proto == proto)
                .ok_or_else(|| PublishError::NotPublished(format!("{host}/{proto}")))?;
            Ok(ports.remove(i))
        }
        fn published(&self) -> Vec<PortSpec> {
            self.ports.lock().unwrap().clone()
        }
        fn stats(&self) -> Stats {
            let s = airlock_netcore::stats::Stats::default();
            s.frame_from_guest(100);
            s.flow_opened(Proto::Tcp);
            s.snapshot()
        }
        fn dns_queries(&self) -> Vec<(&'static str, u64)> {
            vec![("forwarded", 2)]
        }
        fn flows(&self) -> Option<Vec<FlowInfo>> {
            Some(vec![FlowInfo {
                proto: Proto::Tcp,
                direction: Direction::Inbound,
                guest: "192.168.127.2:80".into(),
                remote: "192.168.127.1:40000".into(),
                host_side: "127.0.0.1:51000".into(),
                bytes_to_host: 5,
                bytes_to_guest: 7,
                age_ms: 1500,
                service: false,
            }])
        }
        fn leases(&self) -> Option<Vec<Lease>> {
            let lease = airlock_netcore::services::dhcp::LeaseInfo {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                ip: Ipv4Addr::new(192, 168, 127, 2).into(),
                hostname: Some("guest".into()),
                expires_in: Duration::from_millis(3_599_700),
            };
            Some(vec![lease.to_api()])
        }
        fn dns(&self) -> DnsInfo {
            self.dns.view().info()
        }
        fn dns_add(&self, name: &str, data: RecordData) -> Result<bool, DnsError> {
            self.dns.add_record(name, data)
        }
        fn dns_remove(
            &self,
            name: &str,
            data: Option<&RecordData>,
        ) -> Result<Vec<LocalRecord>, DnsError> {
            self.dns.remove_records(name, data)
        }
        fn dns_add_zone(
            &self,
            zone: &str,
            records: &[(String, IpAddr)],
            default: Option<IpAddr>,
        ) -> Result<String, DnsError> {
            self.dns.add_gv_zone(zone, records, default)
        }
        fn dns_zones(&self) -> Vec<GvZone> {
            self.dns.view().gv_zones()
        }
    }

    fn net() -> GuestNet {
        GuestNet {
            ipv6: Some((
                "fd61:6972:c0a8:7f00::".parse().unwrap(),
                vec!["fd61:6972:c0a8:7f00::1".parse().unwrap()],
            )),
            guest_ip: Ipv4Addr::new(192, 168, 127, 2),
            network: Ipv4Addr::new(192, 168, 127, 0),
            prefix_len: 24,
            own: vec![
                Ipv4Addr::new(192, 168, 127, 1),
                Ipv4Addr::new(192, 168, 127, 253),
                Ipv4Addr::new(192, 168, 127, 254),
            ],
        }
    }

    fn api() -> Api<Fake> {
        Api::new(
            Arc::new(Fake {
                taken: vec!["127.0.0.1:9999".parse().unwrap()],
                ..Fake::default()
            }),
            net(),
        )
    }

    fn call(api: &Api<Fake>, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = api.handle(&Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        });
        let v = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {r:?}"));
        (r.status, v)
    }

    fn error(api: &Api<Fake>, method: &str, path: &str, body: &str) -> (u16, String) {
        let (status, v) = call(api, method, path, body);
        assert!(status >= 400, "{method} {path} {body}: {status} {v}");
        let text = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {v}"));
        (status, text.to_owned())
    }

    const EXPOSE: &str = "/services/forwarder/expose";
    const UNEXPOSE: &str = "/services/forwarder/unexpose";
    const ALL: &str = "/services/forwarder/all";

    #[test]
    fn ipv6_targets_are_the_guest_or_an_address_in_its_prefix() {
        let api = api();
        let (s, v) = call(
            &api,
            "POST",
            EXPOSE,
            r#"{"local":"[::1]:8080","remote":"[::]:80"}"#,
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v,
            serde_json::json!({"local":"[::1]:8080","remote":"[::]:80","protocol":"tcp"})
        );
        let (s, v) = call(
            &api,
            "POST",
            EXPOSE,
            r#"{"local":"[::1]:8081","remote":"[fd61:6972:c0a8:7f00::2]:81","protocol":"udp"}"#,
        );
        assert_eq!(s, 200, "{v}");
        let mut off = net();
        off.ipv6 = None;
        let api = Api::new(Arc::new(Fake::default()), off);
        let (s, e) = error(
            &api,
            "POST",
            EXPOSE,
            r#"{"local":"[::1]:8080","remote":"[::]:80"}"#,
        );
        assert_eq!(s, 400);
        assert!(e.contains("IPv6 is off"), "{e}");
    }

    #[test]
    fn expose_list_unexpose_like_gvproxy() {
        let api = api();
        let (s, v) = call(
            &api,
            "POST",
            EXPOSE,
            r#"{"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"}"#,
        );
        assert_eq!(s, 200);
        assert_eq!(
            v,
            serde_json::json!({"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"})
        );
        // Protocol defaults to tcp; `:PORT` is every interface; a remote
        // without a host is the guest.
        assert_eq!(
            call(&api, "POST", EXPOSE, r#"{"local":":8081","remote":":81"}"#).0,
            200
        );
        assert_eq!(
            call(
                &api,
                "POST",
                EXPOSE,
                r#"{"local":"[::1]:5353","remote":"192.168.127.2:53","protocol":"udp"}"#
            )
            .0,
            200
        );
        assert_eq!(
            call(
                &api,
                "POST",
                EXPOSE,
                r#"{"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":""}"#
            )
            .0,
            409,
            "duplicate"
        );
        let (s, all) = call(&api, "GET", ALL, "");
        assert_eq!(s, 200);
        assert_eq!(
            all,
            serde_json::json!([
                {"local":"0.0.0.0:8081","remote":"192.168.127.2:81","protocol":"tcp"},
                {"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"},
                {"local":"[::1]:5353","remote":"192.168.127.2:53","protocol":"udp"},
            ])
        );
        let (s, v) = call(&api, "POST", UNEXPOSE, r#"{"local":":8081"}"#);
        assert_eq!((s, v["local"].as_str()), (200, Some("0.0.0.0:8081")));
        // The protocol must match.
        let (s, e) = error(
            &api,
            "POST",
            UNEXPOSE,
            r#"{"local":"[::1]:5353","protocol":"tcp"}"#,
        );
        assert_eq!((s, e.as_str()), (404, "[::1]:5353/tcp is not published"));
        assert_eq!(
            call(
                &api,
                "POST",
                UNEXPOSE,
                r#"{"local":"[::1]:5353","protocol":"udp"}"#
            )
            .0,
            200
        );
        assert_eq!(call(&api, "GET", ALL, "").1.as_array().unwrap().len(), 1);
    }

    #[test]
    fn bind_errors_carry_the_chain() {
        let (s, e) = error(
            &api(),
            "POST",
            EXPOSE,
            r#"{"local":"127.0.0.1:9999","remote":"192.168.127.2:80"}"#,
        );
        assert_eq!(s, 409);
        assert!(
            e.starts_with("cannot bind published port 127.0.0.1:9999/tcp: Address already in use"),
            "{e}"
        );
    }

    #[test]
    fn bad_expose_requests_are_400_with_a_reason() {
        let api = api();
        for (body, needle) in [
            ("", "invalid request body: EOF"),
            ("not json", "invalid request body"),
            ("[]", "invalid request body"),
            (
                r#"{"local":8080,"remote":"192.168.127.2:80"}"#,
                "invalid type",
            ),
            (r#"{"remote":"192.168.127.2:80"}"#, "missing field `local`"),
            (
                r#"{"local":"127.0.0.1:1","remote":"192.168.127.2:80","protocl":"udp"}"#,
                "unknown field `protocl`",
            ),
            (
                r#"{"local":"127.0.0.1:1","remote":"192.168.127.2:80","protocol":"sctp"}"#,
                "unsupported protocol \"sctp\"",
            ),
            (
                r#"{"local":"127.0.0.1:1","remote":"192.168.127.2:80","protocol":"unix"}"#,
                "unsupported protocol",
            ),
            (r#"{"local":"127.0.0.1","remote":":80"}"#, "invalid local"),
            (r#"{"local":"127.0.0.1:0","remote":":80"}"#, "invalid local"),
            (
                r#"{"local":"localhost:80","remote":":80"}"#,
                "invalid local",
            ),
            (r#"{"local":":65536","remote":":80"}"#, "invalid local"),
            (r#"{"local":":+80","remote":":80"}"#, "invalid local"),
            (
                r#"{"local":":8080","remote":"192.168.127.2"}"#,
                "invalid remote",
            ),
            (r#"{"local":":8080","remote":":0"}"#, "invalid remote"),
            (
                r#"{"local":":8080","remote":"[::1]:80"}"#,
                "not a guest address in fd61:6972:c0a8:7f00::/64",
            ),
            (
                r#"{"local":":8080","remote":"[fd61:6972:c0a8:7f00::1]:80"}"#,
                "gateway's own",
            ),
            (r#"{"local":":8080","remote":"[::]:0"}"#, "invalid remote"),
            (
                r#"{"local":":8080","remote":"10.0.0.2:80"}"#,
                "not a guest address",
            ),
            (
                r#"{"local":":8080","remote":"192.168.127.255:80"}"#,
                "not a guest address",
            ),
            (
                r#"{"local":":8080","remote":"192.168.127.0:80"}"#,
                "not a guest address",
            ),
            (
                r#"{"local":":8080","remote":"192.168.127.1:80"}"#,
                "gateway's own",
            ),
            (
                r#"{"local":":8080","remote":"192.168.127.254:80"}"#,
                "gateway's own",
            ),
            ("\u{0}\u{1}", "invalid request body"),
        ] {
            let (s, e) = error(&api, "POST", EXPOSE, body);
            assert_eq!(s, 400, "{body}: {e}");
            assert!(e.contains(needle), "{body}: {e:?} lacks {needle:?}");
        }
        // Invalid UTF-8.
        let r = api.handle(&Request {
            method: "POST".into(),
            path: EXPOSE.into(),
            body: vec![b'{', 0xff, b'}'],
        });
        assert_eq!(r.status, 400);
        let (s, e) = error(&api, "POST", UNEXPOSE, r#"{"local":":1","remote":":2"}"#);
        assert_eq!(s, 400);
        assert!(e.contains("unknown field `remote`"), "{e}");
        assert!(api.control.published().is_empty());
    }

    /// `/metrics` is Prometheus text, with the counters, the DNS outcomes
    /// and the guest's flows; only GET and HEAD.
    #[test]
    fn metrics_are_prometheus_text() {
        let api = api();
        let r = api.handle(&Request {
            method: "GET".into(),
            path: "/metrics".into(),
            body: Vec::new(),
        });
        assert_eq!(r.status, 200);
        let wire = String::from_utf8(r.to_bytes(false, false)).unwrap();
        assert!(
            wire.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{wire}"
        );
        let body = String::from_utf8(r.body).unwrap();
        for line in [
            "airlock_net_frames_total{direction=\"guest_to_host\"} 1",
            "airlock_net_flows_opened_total{proto=\"tcp\"} 1",
            "airlock_net_dns_queries_total{outcome=\"forwarded\"} 2",
            "airlock_net_flows{proto=\"tcp\",direction=\"inbound\"} 1",
            "airlock_net_dhcp_leases 1",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
        }
        assert_eq!(error(&api, "POST", "/metrics", "").0, 405);
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        let api = api();
        let (s, e) = error(&api, "GET", "/nope", "");
        assert_eq!((s, e.as_str()), (404, "no such endpoint: /nope"));
        let long = format!("/{}", "x".repeat(500));
        let (_, e) = error(&api, "GET", &long, "");
        assert!(e.len() < 200 && e.ends_with('…'), "{e}");
        for (method, path, allow) in [
            ("GET", EXPOSE, "POST"),
            ("PUT", UNEXPOSE, "POST"),
            ("POST", ALL, "GET, HEAD"),
            ("DELETE", "/stats", "GET, HEAD"),
        ] {
            let r = api.handle(&Request {
                method: method.into(),
                path: path.into(),
                body: Vec::new(),
            });
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.headers, vec![("Allow", allow.to_owned())]);
        }
        assert_eq!(call(&api, "HEAD", "/stats", "").0, 200);
    }

    #[test]
    fn stats_flows_and_leases() {
        let api = api();
        let (s, stats) = call(&api, "GET", "/stats", "");
        assert_eq!(s, 200);
        assert_eq!(stats["guest_to_host"]["bytes"], 100);
        assert_eq!(stats["flows"]["tcp"]["opened"], 1);
        assert!(stats["drops"].is_array());
        let (_, flows) = call(&api, "GET", "/flows", "");
        assert_eq!(flows[0]["direction"], "inbound");
        assert_eq!(flows[0]["proto"], "tcp");
        assert_eq!(flows[0]["bytes_to_guest"], 7);
        let (_, leases) = call(&api, "GET", "/leases", "");
        assert_eq!(
            leases,
            serde_json::json!([{"mac":"52:54:00:12:34:56","ip":"192.168.127.2","hostname":"guest","expires_in":3599}])
        );
    }

    #[test]
    fn guest_net_from_the_gateway_config() {
        let c = crate::config::Config::try_from(
            crate::args::Args::try_parse_ordered_from([
                "airlock-net",
                "--dns-upstream",
                "127.0.0.1",
                "--subnet",
                "10.5.0.0/16",
            ])
            .unwrap(),
        )
        .unwrap();
        let n = GuestNet::new(&c.gateway);
        assert_eq!(n.network, Ipv4Addr::new(10, 5, 0, 0));
        assert_eq!(n.guest_ip, Ipv4Addr::new(10, 5, 0, 2));
        assert_eq!(n.remote(":80"), Ok("10.5.0.2:80".parse().unwrap()));
        assert_eq!(n.remote("10.5.7.9:80"), Ok("10.5.7.9:80".parse().unwrap()));
        assert!(n.remote("10.5.255.254:80").is_err(), "host alias");
        assert!(n.remote("10.5.0.1:80").is_err(), "gateway");
    }
}
