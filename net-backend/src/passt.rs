//! The passt personality: started as `passt` (a symlink, `scripts/install
//! --as-passt`), airlock-net takes passt's command line — what libvirt's
//! passt backend runs — and maps each option onto its own. An option it
//! cannot honour is an error naming it, never ignored. The mapping is the
//! table in README.md ("With libvirt's passt backend").
//!
//! What passt does and Airlock does the same way: `--socket` (the stream
//! transport, or vhost-user with `--vhost-user`), `--one-off`, running in
//! the background unless `--foreground` (the parent exits 0 once the socket
//! listens), `--pid` (the serving process's id), `--log-file`, the guest's
//! address, netmask, gateway and MTU by DHCP, and `-t`/`-u` port
//! forwarding with passt's spec syntax (bound on every address unless the
//! spec names one, as passt does). Where passt differs — its gateway
//! address stands for the host's loopback; Airlock keeps that at
//! `host.airlock.internal` — Airlock's behaviour stays, documented.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use std::process::ExitCode;

use airlock_common::config_file;
use airlock_common::report::{report, EXIT_FAILURE, EXIT_USAGE};
use clap::CommandFactory;

use crate::args::Args;
use crate::config::Config;
use crate::Startup;

/// The program name under which airlock-net speaks passt.
pub const NAME: &str = "passt";
/// Read as `--config` in passt mode when it exists (libvirt passes no
/// Airlock options: this file is how a libvirt host configures Airlock's
/// own behaviour, e.g. `api-socket`, `audit-log`, egress rules).
pub const DEFAULT_CONFIG: &str = "/etc/airlock/passt.toml";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasstError {
    #[error("passt option {0} needs a value")]
    MissingValue(String),
    #[error("passt option {option} {value:?}: {why}")]
    BadValue {
        option: String,
        value: String,
        why: String,
    },
    #[error("passt option {option} is not supported by airlock-net: {why}")]
    Unsupported { option: String, why: &'static str },
    #[error("unknown passt option {0} (see `passt --help` and README.md's passt table)")]
    Unknown(String),
    #[error("passt takes no positional arguments (got {0:?}); a command to run is pasta's")]
    Positional(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("cannot fork into the background")]
    Fork(#[source] io::Error),
    #[error("cannot make the pipe the background process waits on")]
    Pipe(#[source] io::Error),
    #[error("cannot start a new session")]
    Setsid(#[source] io::Error),
    #[error("cannot write --pid file {0}")]
    PidFile(PathBuf, #[source] io::Error),
    #[error("cannot redirect standard streams to /dev/null")]
    DevNull(#[source] io::Error),
}

/// passt's command line, translated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// airlock-net's own arguments (`argv[0]` first).
    pub argv: Vec<OsString>,
    /// `--foreground`: stay in the foreground.
    pub foreground: bool,
    /// `--pid FILE`.
    pub pid_file: Option<PathBuf>,
    /// `--log-file FILE`: standard error goes there (appended).
    pub log_file: Option<PathBuf>,
    /// `--stderr`: keep logging to standard error in the background too.
    pub stderr: bool,
    /// `--no-dhcp-dns`: DHCP offers no DNS server.
    pub no_dhcp_dns: bool,
    /// `--help` / `--version`: print and exit.
    pub help: bool,
    pub version: bool,
}

/// Whether `argv0` names passt (the program's file name is `passt`).
pub fn invoked_as_passt(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new(NAME))
}

/// What one option takes.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Takes {
    Nothing,
    Value,
}

/// passt's options (passt 2023–2025): long name, short letter, value.
const OPTIONS: &[(&str, Option<char>, Takes)] = &[
    ("debug", Some('d'), Takes::Nothing),
    ("trace", None, Takes::Nothing),
    ("quiet", Some('q'), Takes::Nothing),
    ("foreground", Some('f'), Takes::Nothing),
    ("stderr", Some('e'), Takes::Nothing),
    ("log-file", Some('l'), Takes::Value),
    ("log-size", None, Takes::Value),
    ("runas", None, Takes::Value),
    ("help", Some('h'), Takes::Nothing),
    ("version", None, Takes::Nothing),
    ("pcap", Some('p'), Takes::Value),
    ("pid", Some('P'), Takes::Value),
    ("mtu", Some('m'), Takes::Value),
    ("address", Some('a'), Takes::Value),
    ("netmask", Some('n'), Takes::Value),
    ("mac-addr", Some('M'), Takes::Value),
    ("gateway", Some('g'), Takes::Value),
    ("interface", Some('i'), Takes::Value),
    ("outbound", Some('o'), Takes::Value),
    ("outbound-if4", None, Takes::Value),
    ("outbound-if6", None, Takes::Value),
    ("dns", Some('D'), Takes::Value),
    ("dns-forward", None, Takes::Value),
    ("dns-host", None, Takes::Value),
    ("search", Some('S'), Takes::Value),
    ("no-dhcp-dns", None, Takes::Nothing),
    ("dhcp-dns", None, Takes::Nothing),
    ("no-dhcp-search", None, Takes::Nothing),
    ("dhcp-search", None, Takes::Nothing),
    ("no-tcp", None, Takes::Nothing),
    ("no-udp", None, Takes::Nothing),
    ("no-icmp", None, Takes::Nothing),
    ("no-dhcp", None, Takes::Nothing),
    ("no-ndp", None, Takes::Nothing),
    ("no-dhcpv6", None, Takes::Nothing),
    ("no-ra", None, Takes::Nothing),
    ("no-map-gw", None, Takes::Nothing),
    ("map-host-loopback", None, Takes::Value),
    ("map-guest-addr", None, Takes::Value),
    ("ipv4-only", Some('4'), Takes::Nothing),
    ("ipv6-only", Some('6'), Takes::Nothing),
    ("socket", Some('s'), Takes::Value),
    ("fd", Some('F'), Takes::Value),
    ("one-off", Some('1'), Takes::Nothing),
    ("tcp-ports", Some('t'), Takes::Value),
    ("udp-ports", Some('u'), Takes::Value),
    ("vhost-user", None, Takes::Nothing),
    ("print-capabilities", None, Takes::Nothing),
    ("repair-path", None, Takes::Value),
    ("hostname", Some('H'), Takes::Value),
    ("fqdn", None, Takes::Value),
    ("freebind", None, Takes::Nothing),
    ("no-copy-routes", None, Takes::Nothing),
    ("no-copy-addrs", None, Takes::Nothing),
    ("migrate-exit", None, Takes::Nothing),
    ("migrate-no-linger", None, Takes::Nothing),
    // Airlock's own: options from a TOML file (default DEFAULT_CONFIG).
    ("config", None, Takes::Value),
    // pasta's, named so the error can say so.
    ("ns-ifname", Some('I'), Takes::Value),
    ("netns", None, Takes::Value),
    ("userns", None, Takes::Value),
    ("netns-only", None, Takes::Nothing),
    ("tcp-ns", Some('T'), Takes::Value),
    ("udp-ns", Some('U'), Takes::Value),
    ("config-net", None, Takes::Nothing),
    ("no-netns-quit", None, Takes::Nothing),
    ("ns-mac-addr", None, Takes::Value),
    ("splice-only", None, Takes::Nothing),
    ("host-lo-to-ns-lo", None, Takes::Nothing),
];

/// Splits passt's command line as getopt_long does: `--name value`,
/// `--name=value`, bundled short options (`-fq`), `-tVALUE` and `-t VALUE`.
fn getopt(args: &[OsString]) -> Result<Vec<(String, Option<String>)>, PasstError> {
    let mut out = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let Some(&(name, _, takes)) = OPTIONS.iter().find(|o| o.0 == name) else {
                return Err(PasstError::Unknown(format!("--{name}")));
            };
            let value = match (takes, inline) {
                (Takes::Nothing, None) => None,
                (Takes::Nothing, Some(_)) => {
                    return Err(PasstError::BadValue {
                        option: format!("--{name}"),
                        value: arg.clone(),
                        why: "takes no value".into(),
                    })
                }
                (Takes::Value, Some(v)) => Some(v),
                (Takes::Value, None) => Some(
                    it.next()
                        .ok_or_else(|| PasstError::MissingValue(format!("--{name}")))?,
                ),
            };
            out.push((name.to_owned(), value));
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (i, c) in shorts.char_indices() {
                let Some(&(name, _, takes)) = OPTIONS.iter().find(|o| o.1 == Some(c)) else {
                    return Err(PasstError::Unknown(format!("-{c}")));
                };
                if takes == Takes::Nothing {
                    out.push((name.to_owned(), None));
                    continue;
                }
                let rest = &shorts[i + c.len_utf8()..];
                let value = if rest.is_empty() {
                    it.next()
                        .ok_or_else(|| PasstError::MissingValue(format!("-{c}")))?
                } else {
                    rest.to_owned()
                };
                out.push((name.to_owned(), Some(value)));
                break;
            }
        } else {
            return Err(PasstError::Positional(arg));
        }
    }
    Ok(out)
}

fn bad(option: &str, value: &str, why: impl Into<String>) -> PasstError {
    PasstError::BadValue {
        option: format!("--{option}"),
        value: value.to_owned(),
        why: why.into(),
    }
}

fn unsupported(option: &str, why: &'static str) -> PasstError {
    PasstError::Unsupported {
        option: format!("--{option}"),
        why,
    }
}

/// Which host ports can be bound: `all` forwards only the ports no other
/// socket holds, as passt does (probing is the only way to know).
pub trait PortProbe {
    fn free(&self, addr: Ipv4Addr, port: u16, udp: bool) -> bool;
    /// First port of the ephemeral range (`all` stops below it).
    fn ephemeral_start(&self) -> u16;
}

/// Probes by binding, and reads the ephemeral range from /proc.
pub struct HostPorts;

impl PortProbe for HostPorts {
    fn free(&self, addr: Ipv4Addr, port: u16, udp: bool) -> bool {
        if udp {
            UdpSocket::bind((addr, port)).is_ok()
        } else {
            TcpListener::bind((addr, port)).is_ok()
        }
    }

    fn ephemeral_start(&self) -> u16 {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768)
    }
}

/// One forwarded range: host ports `first..=last` to guest ports from
/// `to` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: u16,
    last: u16,
    to: u16,
}

/// A `-t`/`-u` spec: `none`, `all`, or `[ADDR[%DEV]/]PORTS` with PORTS a
/// comma-separated list of `[~]FIRST[-LAST][:TO[-TO_LAST]]`. Returns the
/// bind address and the host→guest ranges.
fn port_spec(
    option: &str,
    spec: &str,
    udp: bool,
    probe: &dyn PortProbe,
) -> Result<Vec<(Ipv4Addr, Range)>, PasstError> {
    if spec == "none" {
        return Ok(Vec::new());
    }
    let (addr, ports) = match spec.rsplit_once('/') {
        Some((a, p)) => (Some(a), p),
        None => (None, spec),
    };
    let bind = match addr {
        None => Ipv4Addr::UNSPECIFIED,
        Some(a) => {
            if a.contains('%') {
                return Err(unsupported(
                    option,
                    "binding a forwarded port to an interface (ADDR%DEV/): give the address alone",
                ));
            }
            match a.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => v4,
                Ok(IpAddr::V6(_)) => {
                    return Err(unsupported(
                        option,
                        "IPv6 bind addresses: passt-mode forwards bind IPv4 host addresses",
                    ))
                }
                Err(_) => return Err(bad(option, spec, "not an IP address before '/'")),
            }
        }
    };
    let mut include: Vec<Range> = Vec::new();
    let mut exclude: Vec<(u16, u16)> = Vec::new();
    let mut all = false;
    for item in ports.split(',') {
        if item == "all" {
            all = true;
            continue;
        }
        let (excl, item) = match item.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let (host, guest) = match item.split_once(':') {
            Some((h, g)) => (h, Some(g)),
            None => (item, None),
        };
        let range = |s: &str| -> Result<(u16, u16), PasstError> {
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (a, b),
                None => (s, s),
            };
            let a: u16 = a
                .parse()
                .map_err(|_| bad(option, spec, format!("{s:?} is not a port or range")))?;
            let b: u16 = b
                .parse()
                .map_err(|_| bad(option, spec, format!("{s:?} is not a port or range")))?;
            if a == 0 || b < a {
                return Err(bad(option, spec, format!("{s:?} is not a port or range")));
            }
            Ok((a, b))
        };
        let (first, last) = range(host)?;
        if excl {
            if guest.is_some() {
                return Err(bad(option, spec, "an excluded range has no target"));
            }
            exclude.push((first, last));
            continue;
        }
        let to = match guest {
            None => first,
            Some(g) => {
                let (t0, t1) = range(g)?;
                if g.contains('-') && t1 - t0 != last - first {
                    return Err(bad(
                        option,
                        spec,
                        format!("{item:?}: the target range has another length"),
                    ));
                }
                if u32::from(t0) + u32::from(last - first) > 65535 {
                    return Err(bad(option, spec, format!("{item:?}: past port 65535")));
                }
                t0
            }
        };
        include.push(Range { first, last, to });
    }
    // Exclusions alone, or `all`: every non-ephemeral port nobody holds.
    let probed = all || include.is_empty();
    if probed {
        let end = probe.ephemeral_start().saturating_sub(1).max(1);
        include.push(Range {
            first: 1,
            last: end,
            to: 1,
        });
    }
    let excluded = |p: u16| exclude.iter().any(|&(a, b)| (a..=b).contains(&p));
    let mut out = Vec::new();
    for r in include {
        let mut run: Option<Range> = None;
        for p in r.first..=r.last {
            let keep = !excluded(p) && (!probed || probe.free(bind, p, udp));
            let to = r.to + (p - r.first);
            match (&mut run, keep) {
                (Some(cur), true) if cur.last + 1 == p => cur.last = p,
                (_, true) => {
                    if let Some(done) = run.take() {
                        out.push((bind, done));
                    }
                    run = Some(Range {
                        first: p,
                        last: p,
                        to,
                    });
                }
                (_, false) => {
                    if let Some(done) = run.take() {
                        out.push((bind, done));
                    }
                }
            }
        }
        if let Some(done) = run {
            out.push((bind, done));
        }
    }
    Ok(out)
}

/// airlock-net's `--publish` for a forwarded range.
fn publish_arg(bind: Ipv4Addr, r: Range, proto: &str) -> String {
    let span = |a: u16, b: u16| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    format!(
        "{bind}:{}:{}/{proto}",
        span(r.first, r.last),
        span(r.to, r.to + (r.last - r.first))
    )
}

/// A dotted or bit-count netmask as a prefix length.
fn prefix_of(mask: &str) -> Option<u8> {
    if let Ok(bits) = mask.parse::<u8>() {
        return (bits <= 32).then_some(bits);
    }
    let m = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    let bits = m.leading_ones();
    (m.checked_shl(bits).unwrap_or(0) == 0).then_some(bits as u8)
}

/// The classful prefix of an address (RFC 4632's "CIDR block"), passt's
/// netmask when none is given and the host has no matching address.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// Translates passt's arguments (without `argv[0]`) into airlock-net's.
pub fn translate(args: &[OsString], probe: &dyn PortProbe) -> Result<Translation, PasstError> {
    let mut t = Translation {
        argv: vec![OsString::from("airlock-net")],
        ..Translation::default()
    };
    let mut out: Vec<String> = Vec::new();
    let mut address: Option<Ipv4Addr> = None;
    let mut netmask: Option<u8> = None;
    let mut gateway: Option<Ipv4Addr> = None;
    let mut tcp: Vec<String> = Vec::new();
    let mut udp: Vec<String> = Vec::new();
    let mut socket: Option<String> = None;
    let mut config: Option<String> = None;
    let mut vhost_user = false;
    let mut level: Option<&str> = None;
    for (name, value) in getopt(args)? {
        let v = value.unwrap_or_default();
        match name.as_str() {
            "debug" => level = Some("debug"),
            "trace" => level = Some("trace"),
            "quiet" => level = level.or(Some("warn")),
            "foreground" => t.foreground = true,
            "stderr" => t.stderr = true,
            "log-file" => t.log_file = Some(PathBuf::from(v)),
            "pcap" => out.extend(["--pcap".into(), v]),
            "pid" => t.pid_file = Some(PathBuf::from(v)),
            "mtu" => out.extend(["--mtu".into(), v]),
            "address" => match v.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => address = Some(a),
                Ok(IpAddr::V6(_)) => {
                    return Err(unsupported(
                        &name,
                        "an IPv6 guest address: airlock-net gives the guest an address in its \
                         --subnet6 prefix (set it with --config)",
                    ))
                }
                Err(_) => return Err(bad(&name, &v, "not an IP address")),
            },
            "netmask" => {
                netmask = Some(
                    prefix_of(&v)
                        .ok_or_else(|| bad(&name, &v, "not a netmask or a prefix length"))?,
                )
            }
            // passt's own MAC address towards the guest: the gateway's.
            "mac-addr" => out.extend(["--gateway-mac".into(), v]),
            "gateway" => match v.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => gateway = Some(a),
                Ok(IpAddr::V6(_)) => {
                    return Err(unsupported(
                        &name,
                        "an IPv6 gateway: airlock-net's is PREFIX::1 of --subnet6",
                    ))
                }
                Err(_) => return Err(bad(&name, &v, "not an IP address")),
            },
            "interface" | "outbound-if4" | "outbound-if6" => {
                return Err(unsupported(
                    &name,
                    "choosing a host interface: flows leave by the host's routing table",
                ))
            }
            "outbound" => {
                return Err(unsupported(
                    &name,
                    "a source address for outbound flows: the host's routing table chooses it",
                ))
            }
            "dns" => {
                if v == "none" {
                    out.extend(["--resolv-conf".into(), "/dev/null".into()]);
                } else {
                    out.extend(["--dns-upstream".into(), v]);
                }
            }
            "dns-forward" | "dns-host" => {
                return Err(unsupported(
                    &name,
                    "the guest's resolver is the gateway address (DHCP says so); give upstream resolvers with --dns",
                ))
            }
            // The DNS service's search list: DHCP, DHCPv6 and the RA's
            // DNSSL all carry it.
            "search" => {
                let list = if v == "none" { String::new() } else { v };
                out.extend(["--dns-search".into(), list]);
            }
            "no-dhcp-dns" => t.no_dhcp_dns = true,
            "no-dhcp-search" => out.extend(["--dns-search".into(), String::new()]),
            "dhcp-dns" | "dhcp-search" | "ns-ifname" | "netns" | "userns" | "netns-only"
            | "tcp-ns" | "udp-ns" | "config-net" | "no-netns-quit" | "ns-mac-addr"
            | "splice-only" | "host-lo-to-ns-lo" => {
                return Err(unsupported(&name, "a pasta option (network namespaces)"))
            }
            "no-tcp" => out.extend(["--deny".into(), "0.0.0.0/0/tcp".into()]),
            "no-udp" => out.extend(["--deny".into(), "0.0.0.0/0/udp".into()]),
            "no-icmp" => out.extend(["--deny".into(), "0.0.0.0/0/icmp".into()]),
            "no-dhcp" => {
                return Err(unsupported(
                    &name,
                    "the DHCP server is always on (the guest's address comes from it)",
                ))
            }
            "ipv4-only" => out.push("--no-ipv6".into()),
            "no-ndp" | "no-dhcpv6" | "no-ra" => {
                return Err(unsupported(
                    &name,
                    "IPv6's parts (NDP, RA, DHCPv6) go together: turn IPv6 off with -4",
                ))
            }
            // Airlock never maps the gateway address to the host (the host
            // is host.airlock.internal): what --no-map-gw asks for.
            "no-map-gw" => {}
            "map-host-loopback" => {
                if v == "none" {
                    out.push("--no-host-alias".into());
                } else {
                    out.extend(["--host-ip".into(), v]);
                }
            }
            "map-guest-addr" => {
                if v != "none" {
                    return Err(unsupported(
                        &name,
                        "mapping an address to the host's own: only \"none\" (Airlock's behaviour)",
                    ));
                }
            }
            "ipv6-only" => {
                return Err(unsupported(
                    &name,
                    "an IPv6-only guest: airlock-net's gateway always has IPv4",
                ))
            }
            "socket" => socket = Some(v),
            "fd" => {
                return Err(unsupported(
                    &name,
                    "an inherited connected socket: give --socket PATH",
                ))
            }
            "one-off" => out.push("--exit-on-disconnect".into()),
            "tcp-ports" => tcp.push(v),
            "udp-ports" => udp.push(v),
            "vhost-user" => vhost_user = true,
            "print-capabilities" => out.push("--print-capabilities".into()),
            "repair-path" => {
                if v != "none" {
                    return Err(unsupported(
                        &name,
                        "TCP connection repair for migration: only \"none\"",
                    ));
                }
            }
            "hostname" | "fqdn" => {
                return Err(unsupported(
                    &name,
                    "DHCP host name options (12, 81): not sent by airlock-net",
                ))
            }
            "freebind" | "no-copy-routes" | "no-copy-addrs" | "migrate-exit"
            | "migrate-no-linger" => {
                return Err(unsupported(&name, "no Airlock equivalent"));
            }
            "log-size" => {
                return Err(unsupported(
                    &name,
                    "a size-bounded log file: rotate --log-file with logrotate (copytruncate)",
                ))
            }
            "runas" => out.extend(["--user".into(), v]),
            "help" => t.help = true,
            "version" => t.version = true,
            "config" => config = Some(v),
            other => return Err(PasstError::Unknown(format!("--{other}"))),
        }
    }
    if let Some(level) = level {
        out.extend(["--log-level".into(), level.into()]);
    }
    if let Some(a) = address {
        let prefix = netmask.unwrap_or_else(|| classful_prefix(a));
        if prefix > 29 {
            return Err(bad(
                "netmask",
                &prefix.to_string(),
                "airlock-net's subnet holds at least the guest, gateway and two aliases: /29 or larger",
            ));
        }
        // airlock-net's --subnet is the network: the address's host bits cleared.
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(a) & mask);
        out.extend(["--subnet".into(), format!("{network}/{prefix}")]);
        out.extend(["--guest-ip".into(), a.to_string()]);
    } else if netmask.is_some() {
        return Err(PasstError::BadValue {
            option: "--netmask".into(),
            value: netmask.map(|n| n.to_string()).unwrap_or_default(),
            why: "airlock-net needs --address with it".into(),
        });
    }
    if let Some(g) = gateway {
        out.extend(["--gateway".into(), g.to_string()]);
    }
    for spec in &tcp {
        for (bind, r) in port_spec("tcp-ports", spec, false, probe)? {
            out.extend(["--publish".into(), publish_arg(bind, r, "tcp")]);
        }
    }
    // passt: without -u, the TCP ports are forwarded for UDP too, to the
    // same port numbers.
    if udp.is_empty() {
        for spec in &tcp {
            for (bind, r) in port_spec("tcp-ports", spec, true, probe)? {
                let same = Range { to: r.first, ..r };
                out.extend(["--publish".into(), publish_arg(bind, same, "udp")]);
            }
        }
    }
    for spec in &udp {
        for (bind, r) in port_spec("udp-ports", spec, true, probe)? {
            out.extend(["--publish".into(), publish_arg(bind, r, "udp")]);
        }
    }
    let socket = match socket {
        Some(s) => s,
        None if t.help || t.version || out.iter().any(|o| o == "--print-capabilities") => {
            String::new()
        }
        None => probe_socket_path().ok_or(PasstError::MissingValue("--socket".into()))?,
    };
    if !socket.is_empty() {
        out.extend(["--socket-path".into(), socket]);
    }
    out.extend([
        "--transport".into(),
        if vhost_user { "vhost-user" } else { "stream" }.into(),
    ]);
    let config = config.or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.to_owned())
    });
    if let Some(c) = config {
        t.argv.extend([OsString::from("--config"), c.into()]);
    }
    t.argv.extend(out.into_iter().map(OsString::from));
    Ok(t)
}

/// passt's default socket: the first of /tmp/passt_1.socket …
/// /tmp/passt_64.socket that does not exist.
fn probe_socket_path() -> Option<String> {
    (1..=64)
        .map(|i| format!("/tmp/passt_{i}.socket"))
        .find(|p| !Path::new(p).exists())
}

/// Forks into the background if `startup` asks (the parent writes the
/// child's id to the pid file and exits 0 at once: the sockets already
/// listen, so whoever started it may connect as soon as it returns), or
/// writes this process's id.
pub fn detach(startup: &Startup) -> Result<(), DetachError> {
    if !startup.background {
        return match &startup.pid_file {
            Some(path) => write_pid(path, std::process::id()),
            None => Ok(()),
        };
    }
    // The child waits for the parent to be done with the pid file: it
    // shares the parent's mount namespace and would otherwise go on to make
    // the mounts read-only (sandbox::confine) before the parent could write.
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: `pipe` is valid for writes of two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(DetachError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (parent_done, wait_for_parent) =
        unsafe { (OwnedFd::from_raw_fd(pipe[1]), OwnedFd::from_raw_fd(pipe[0])) };
    // SAFETY: called before this process starts any thread (run_with
    // detaches before the signal thread and the API server exist), so the
    // child is a complete copy of a single-threaded process.
    let child = unsafe { libc::fork() };
    if child == -1 {
        return Err(DetachError::Fork(io::Error::last_os_error()));
    }
    if child > 0 {
        drop(wait_for_parent);
        // The parent. Like passt, it writes the pid file before it exits:
        // libvirt reads the file as soon as the command returns. Its end of
        // the pipe closes when it exits, which lets the child go on.
        let code = match &startup.pid_file {
            Some(path) => match write_pid(path, child as u32) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{}", airlock_common::report::chain(&e));
                    // SAFETY: kill(2) on the child just forked.
                    unsafe { libc::kill(child, libc::SIGTERM) };
                    1
                }
            },
            None => 0,
        };
        // SAFETY: _exit ends the parent without running destructors: the
        // socket files it shares with the child must stay.
        unsafe { libc::_exit(code) }
    }
    drop(parent_done);
    // Blocks until the parent has exited (end of file). A parent that could
    // not write the pid file sends SIGTERM first, which ends this process.
    let mut byte = 0u8;
    loop {
        // SAFETY: read(2) into one valid byte from a descriptor owned here.
        let n = unsafe {
            libc::read(
                wait_for_parent.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
            )
        };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    drop(wait_for_parent);
    // SAFETY: setsid has no memory preconditions.
    if unsafe { libc::setsid() } == -1 {
        return Err(DetachError::Setsid(io::Error::last_os_error()));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(DetachError::DevNull)?;
    let mut fds = vec![libc::STDIN_FILENO, libc::STDOUT_FILENO];
    if !startup.keep_stderr {
        fds.push(libc::STDERR_FILENO);
    }
    for fd in fds {
        // SAFETY: dup2 onto a standard descriptor from an open file.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(DetachError::DevNull(io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn write_pid(path: &Path, pid: u32) -> Result<(), DetachError> {
    std::fs::write(path, format!("{pid}\n")).map_err(|e| DetachError::PidFile(path.to_owned(), e))
}

/// Sends standard error to `path` (appended, created 0600).
pub fn log_to(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: dup2 onto standard error from an open file.
    if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// airlock-net's `main` when started as `passt`: translate, configure,
/// then run with passt's start-up (background unless `--foreground`, the
/// pid file).
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let t = match translate(argv.get(1..).unwrap_or_default(), &HostPorts) {
        Ok(t) => t,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    if t.help {
        print!("{}", help());
        return ExitCode::SUCCESS;
    }
    if t.version {
        println!("passt (airlock-net {})", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &t.log_file {
        if let Err(e) = log_to(path) {
            eprintln!("cannot open --log-file {}: {e}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    let expanded = match config_file::expand(Args::command(), t.argv.clone()) {
        Ok(x) => x,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    let mut args = match Args::try_parse_ordered_from(expanded.argv) {
        Ok(a) => a,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    // In the background without --log-file, passt logs to the system log.
    if !t.foreground && t.log_file.is_none() && !t.stderr {
        args.log.syslog = true;
    }
    if args.print_capabilities {
        println!("{}", crate::capabilities());
        return ExitCode::SUCCESS;
    }
    airlock_common::logging::init(&args.log, "passt", crate::LOG_TARGETS);
    airlock_common::panic::install();
    log::info!(
        "started as passt: {}",
        t.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    if t.no_dhcp_dns {
        config.gateway.dhcp.dns_servers.clear();
    }
    let startup = Startup {
        background: !t.foreground,
        pid_file: t.pid_file,
        keep_stderr: t.log_file.is_some() || t.stderr,
    };
    match crate::run_with(config, startup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, e.exit_code()),
    }
}

/// `passt --help`.
pub fn help() -> String {
    let mut s = String::from(
        "passt: airlock-net started under passt's name (libvirt's passt backend).\n\
         It takes passt's options and serves QEMU's -netdev stream on --socket\n\
         (vhost-user with --vhost-user). Options passt has and Airlock cannot honour\n\
         are errors. Airlock's own options come from --config FILE (default ",
    );
    s.push_str(DEFAULT_CONFIG);
    s.push_str(", if it exists).\n\nOptions:\n");
    for (long, short, takes) in OPTIONS {
        let short = short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let value = if *takes == Takes::Value { " VALUE" } else { "" };
        s.push_str(&format!("  {short}--{long}{value}\n"));
    }
    s
}

/// The bytes of `s` as an `OsString` (test helper and callers with &str).
pub fn os(s: &str) -> OsString {
    OsStr::from_bytes(s.as_bytes()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every port free except those listed; ephemeral ports from 32768.
    struct Fake(Vec<u16>);

    impl PortProbe for Fake {
        fn free(&self, _: Ipv4Addr, port: u16, _: bool) -> bool {
            !self.0.contains(&port)
        }
        fn ephemeral_start(&self) -> u16 {
            32768
        }
    }

    fn tr(args: &[&str]) -> Result<Translation, PasstError> {
        let args: Vec<OsString> = args.iter().map(|a| os(a)).collect();
        translate(&args, &Fake(vec![]))
    }

    fn argv(t: &Translation) -> Vec<String> {
        t.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// libvirt 9.0's command line (src/qemu/qemu_passt.c at v9.0.0) for a
    /// domain with a MAC, an MTU, a log file, an IPv4 address with prefix
    /// and two <portForward>s.
    #[test]
    fn libvirt_9_0_command_line() {
        let t = tr(&[
            "--one-off",
            "--socket",
            "/run/libvirt/qemu/passt/1-vm-net0.socket",
            "--mac-addr",
            "52:54:00:12:34:56",
            "--mtu",
            "65520",
            "--log-file",
            "/var/log/passt.log",
            "--address",
            "10.0.2.15",
            "--netmask",
            "24",
            "--tcp-ports",
            "127.0.0.1/2222:22",
            "--udp-ports",
            "5000-5010:6000-6010,~5005",
        ])
        .unwrap();
        assert!(!t.foreground && t.pid_file.is_none());
        assert_eq!(t.log_file, Some(PathBuf::from("/var/log/passt.log")));
        assert_eq!(
            argv(&t),
            [
                "airlock-net",
                "--exit-on-disconnect",
                "--gateway-mac",
                "52:54:00:12:34:56",
                "--mtu",
                "65520",
                "--subnet",
                "10.0.2.0/24",
                "--guest-ip",
                "10.0.2.15",
                "--publish",
                "127.0.0.1:2222:22/tcp",
                "--publish",
                "0.0.0.0:5000-5004:6000-6004/udp",
                "--publish",
                "0.0.0.0:5006-5010:6006-6010/udp",
                "--socket-path",
                "/run/libvirt/qemu/passt/1-vm-net0.socket",
                "--transport",
                "stream",
            ]
        );
    }

    /// libvirt 11.x's vhost-user command line (qemuPasstBuildCommand).
    #[test]
    fn libvirt_11_vhost_user_command_line() {
        let t = tr(&[
            "--vhost-user",
            "--one-off",
            "--socket",
            "/run/libvirt/qemu/passt/2-vm-net0.socket",
            "--pid",
            "/run/libvirt/qemu/passt/2-vm-net0-passt.pid",
            "--address",
            "192.168.50.7",
            "--tcp-ports",
            "8022:22",
        ])
        .unwrap();
        assert_eq!(
            t.pid_file,
            Some(PathBuf::from("/run/libvirt/qemu/passt/2-vm-net0-passt.pid"))
        );
        let a = argv(&t);
        assert!(a.ends_with(&["--transport".into(), "vhost-user".into()]));
        // No --netmask: the address's classful block, as passt does.
        assert!(a.windows(2).any(|w| w == ["--subnet", "192.168.50.0/24"]));
        assert!(a
            .windows(2)
            .any(|w| w == ["--publish", "0.0.0.0:8022:22/tcp"]));
        // Without -u, the TCP port is forwarded for UDP, untranslated.
        assert!(a
            .windows(2)
            .any(|w| w == ["--publish", "0.0.0.0:8022:8022/udp"]));
    }

    #[test]
    fn short_options_bundle_and_take_values_inline() {
        let t = tr(&[
            "-fq14",
            "-s/tmp/x.sock",
            "-t",
            "22",
            "-u",
            "none",
            "-P",
            "/tmp/p",
        ])
        .unwrap();
        assert!(t.foreground);
        assert_eq!(t.pid_file, Some(PathBuf::from("/tmp/p")));
        let a = argv(&t);
        assert!(a.contains(&"--exit-on-disconnect".to_owned()));
        assert!(a.contains(&"--no-ipv6".to_owned()), "-4");
        assert!(a.windows(2).any(|w| w == ["--log-level", "warn"]));
        assert!(a.windows(2).any(|w| w == ["--socket-path", "/tmp/x.sock"]));
        assert!(a
            .windows(2)
            .any(|w| w == ["--publish", "0.0.0.0:22:22/tcp"]));
        assert!(!a.iter().any(|x| x.ends_with("/udp")), "-u none: no UDP");
    }

    #[test]
    fn all_and_exclusions_forward_free_non_ephemeral_ports() {
        let probe = Fake(vec![22, 80]);
        let ranges = port_spec("tcp-ports", "all", false, &probe).unwrap();
        let r: Vec<(u16, u16)> = ranges.iter().map(|(_, r)| (r.first, r.last)).collect();
        assert_eq!(r, [(1, 21), (23, 79), (81, 32767)]);
        let ranges = port_spec("tcp-ports", "~20000-20010", false, &probe).unwrap();
        let r: Vec<(u16, u16)> = ranges.iter().map(|(_, r)| (r.first, r.last)).collect();
        assert_eq!(r, [(1, 21), (23, 79), (81, 19999), (20011, 32767)]);
        let ranges = port_spec("tcp-ports", "192.0.2.1/20-30,~25", false, &probe).unwrap();
        let r: Vec<(Ipv4Addr, u16, u16)> =
            ranges.iter().map(|(a, r)| (*a, r.first, r.last)).collect();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(r, [(a, 20, 24), (a, 26, 30)]);
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_the_option() {
        for (args, option) in [
            (&["--interface", "eth0"][..], "--interface"),
            (&["-t", "127.0.0.1%lo/22"], "--tcp-ports"),
            (&["--address", "fd00::2"], "--address"),
            (&["--no-dhcp"], "--no-dhcp"),
            (&["--no-ndp"], "--no-ndp"),
            (&["-6"], "--ipv6-only"),
            (&["--hostname", "vm"], "--hostname"),
            (&["--netns", "x"], "--netns"),
            (&["--log-size", "1000"], "--log-size"),
            (&["-F", "3"], "--fd"),
            (&["--dns-forward", "10.0.2.3"], "--dns-forward"),
        ] {
            let mut full = vec!["--socket", "/tmp/s"];
            full.extend_from_slice(args);
            match tr(&full) {
                Err(PasstError::Unsupported { option: o, .. }) => assert_eq!(o, option),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert_eq!(tr(&["--bogus"]), Err(PasstError::Unknown("--bogus".into())));
        assert_eq!(tr(&["-X"]), Err(PasstError::Unknown("-X".into())));
        assert_eq!(
            tr(&["--mtu"]),
            Err(PasstError::MissingValue("--mtu".into()))
        );
        assert!(matches!(
            tr(&["-s", "/tmp/s", "-t", "80-70"]),
            Err(PasstError::BadValue { .. })
        ));
        assert!(matches!(
            tr(&["-s", "/tmp/s", "-t", "80-90:100-105"]),
            Err(PasstError::BadValue { .. })
        ));
        assert!(matches!(tr(&["stray"]), Err(PasstError::Positional(_))));
        assert!(matches!(
            tr(&["-s", "/tmp/s", "-a", "10.0.2.15", "-n", "30"]),
            Err(PasstError::BadValue { .. })
        ));
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_of("24"), Some(24));
        assert_eq!(prefix_of("255.255.255.0"), Some(24));
        assert_eq!(prefix_of("255.255.0.255"), None);
        assert_eq!(prefix_of("33"), None);
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 2, 15)), 8);
    }

    /// The translation parses as airlock-net's own command line.
    #[test]
    fn translations_parse_as_airlock_net_arguments() {
        let t = tr(&[
            "-f",
            "-s",
            "/tmp/s",
            "-a",
            "10.0.2.15",
            "-n",
            "24",
            "-g",
            "10.0.2.2",
            "-D",
            "none",
            "-t",
            "2222:22",
            "-m",
            "1500",
            "--no-udp",
            "-d",
        ])
        .unwrap();
        let args = crate::args::Args::try_parse_ordered_from(&t.argv).unwrap();
        let c = crate::config::Config::try_from(args).unwrap();
        assert_eq!(c.gateway.guest_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.gateway.gateway_ip, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.gateway.mtu, 1500);
        assert!(c.dns.upstreams.is_empty());
        assert_eq!(c.transport, crate::args::Transport::Stream);
        assert_eq!(c.publish.len(), 2);
    }

    /// `-S` and `--no-dhcp-search` set the DNS service's search list (DHCP,
    /// DHCPv6 and the RA's DNSSL), which then no longer follows the
    /// host's resolv.conf.
    #[test]
    fn search_lists_become_the_dns_search_list() {
        let config = |args: &[&str]| {
            let t = tr(args).unwrap();
            let args = crate::args::Args::try_parse_ordered_from(&t.argv).unwrap();
            crate::config::Config::try_from(args).unwrap()
        };
        let c = config(&["-S", "corp.test lab.corp.test"]);
        assert_eq!(c.dns.search, ["corp.test", "lab.corp.test"]);
        assert!(!c.search_from_file);
        for none in [&["-S", "none"][..], &["--no-dhcp-search"]] {
            let c = config(none);
            assert!(c.dns.search.is_empty(), "{none:?}");
            assert!(!c.search_from_file, "{none:?}");
        }
        assert!(config(&[]).search_from_file);
    }
}
