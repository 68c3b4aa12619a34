//! `airlock`: the command line of airlock-net's control API
//! (`airlock-net --api-socket PATH`).
//!
//! - [`client`]: a small blocking HTTP/1.1 client over the Unix socket;
//! - [`render`]: tables of what the API returns;
//! - here: the arguments, and one function per command.

pub mod client;
pub mod render;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use airlock_api::{
    parse_publish as parse_spec, DnsInfo, DnsRecord, DnsRemoveRequest, ExposeRequest, FlowInfo,
    Lease, PortEntry, PortSpec, Proto, SpecError, Stats, UnexposeRequest, ALL, DNS, DNS_ADD,
    DNS_REMOVE, EXPOSE, FLOWS, LEASES, STATS, UNEXPOSE,
};
use clap::{Parser, Subcommand};

use crate::client::{Client, ClientError};

/// Where the control socket is when neither `--api-socket` nor
/// `AIRLOCK_API_SOCKET` says.
pub const DEFAULT_SOCKET: &str = "/run/airlock/net.api";

#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version,
    about = "Control a running airlock-net: publish ports, DNS records, show stats, flows and leases",
    long_about = "Control a running airlock-net through its control API (airlock-net \
--api-socket PATH): publish and unpublish ports and add or remove the names its DNS \
answers while the guest runs, and show the gateway's counters, current flows, DHCP leases \
and DNS settings. Tables by default; --json prints the API's JSON.",
    after_help = "Examples:\n  airlock publish 8080:80              host 127.0.0.1:8080 -> guest port 80\n  \
airlock publish 0.0.0.0:5353:53/udp  every interface, UDP\n  airlock unpublish 8080\n  \
airlock ports\n  airlock dns add db.test 10.0.0.5      the guest resolves db.test\n  \
airlock dns ls\n  airlock --json stats\n\n\
Exit status: 0 on success, 1 if airlock-net cannot be reached or refuses, 2 for usage errors."
)]
pub struct Cli {
    /// airlock-net's control socket (the daemon's --api-socket).
    #[arg(
        long,
        value_name = "PATH",
        env = "AIRLOCK_API_SOCKET",
        default_value = DEFAULT_SOCKET,
        global = true
    )]
    pub api_socket: PathBuf,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long airlock-net may take to answer a request.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Command {
    /// Publish a port: connections (or datagrams) to the host address are
    /// carried to the guest's port. Same syntax and defaults as
    /// airlock-net --publish: BIND_ADDR defaults to 127.0.0.1 (this host
    /// only); 0.0.0.0:8080:80 or [::]:8080:80 accept from the network.
    /// Ranges (8000-8010:8000-8010) publish every port, or none. /tcp6 and
    /// /udp6 reach the guest over IPv6 (its own address), the others over
    /// IPv4.
    Publish {
        #[arg(value_name = "[BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp|/tcp6|/udp6]")]
        spec: String,
    },
    /// Stop publishing a port (BIND_ADDR defaults to 127.0.0.1, the
    /// protocol to tcp; ranges allowed).
    Unpublish {
        #[arg(value_name = "[BIND_ADDR:]HOST_PORT[/tcp|/udp]")]
        spec: String,
    },
    /// List the published ports.
    Ports,
    /// Show traffic, flow and drop counters.
    Stats,
    /// List the guest's current flows.
    Flows,
    /// List the DHCP leases.
    Leases,
    /// The gateway's DNS: add and remove the names it answers, show its
    /// resolvers, search list, zones and records.
    #[command(subcommand)]
    Dns(DnsCommand),
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum DnsCommand {
    /// Add a record: VALUE is an IPv4 address (A), an IPv6 address (AAAA)
    /// or a host name (CNAME). *.NAME answers for every name below NAME
    /// that has no records of its own. The guest sees it at once; it lasts
    /// until airlock-net stops (use --dns-record for good).
    Add {
        /// The name (db.test), or *.NAME for every name below NAME.
        #[arg(value_name = "NAME")]
        name: String,
        /// An IPv4 address, an IPv6 address or a host name.
        #[arg(value_name = "VALUE")]
        value: String,
    },
    /// Remove the records of NAME, or only the one with VALUE.
    Rm {
        /// The name whose records go.
        #[arg(value_name = "NAME")]
        name: String,
        /// Only the record with this address or target.
        #[arg(value_name = "VALUE")]
        value: Option<String>,
    },
    /// Show the resolvers (and where they come from), the search list, the
    /// zones and every record.
    Ls,
}

/// A command-line value that does not parse (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("invalid port to publish {0:?}: expected [BIND_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp|/tcp6|/udp6], e.g. 8080:80 or 0.0.0.0:5353:53/udp")]
    Publish(String),
    #[error("invalid port to unpublish {0:?}: expected [BIND_ADDR:]HOST_PORT[/tcp|/udp], e.g. 8080 or 0.0.0.0:5353/udp")]
    Unpublish(String),
    #[error(transparent)]
    Range(SpecError),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot publish {failed} (part of {spec}); the ports published before it were unpublished again")]
    Partial {
        spec: String,
        failed: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot unpublish {failed} (part of {spec}); the ports unpublished before it were published again")]
    PartialUnpublish {
        spec: String,
        failed: String,
        #[source]
        source: ClientError,
    },
    #[error("cannot unpublish {spec}: {} {} not published; nothing was unpublished", .missing.join(", "), if .missing.len() == 1 { "is" } else { "are" })]
    NotPublished { spec: String, missing: Vec<String> },
    #[error("unexpected answer from airlock-net to {0}")]
    Decode(&'static str, #[source] serde_json::Error),
}

impl CliError {
    /// The process exit status: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The ports a `publish` argument names. The guest address is left
/// unspecified: the API fills in the guest's own (`remote` ":PORT").
pub fn parse_publish(spec: &str) -> Result<Vec<PortSpec>, UsageError> {
    parse_spec(spec, Ipv4Addr::UNSPECIFIED).map_err(|e| match e {
        SpecError::Range(_) => UsageError::Range(e),
        _ => UsageError::Publish(spec.to_owned()),
    })
}

/// The host addresses an `unpublish` argument names: the same syntax as
/// `publish` without the guest port.
pub fn parse_unpublish(spec: &str) -> Result<Vec<(SocketAddr, Proto)>, UsageError> {
    let (body, proto) = match spec.rsplit_once('/') {
        Some((body, p @ ("tcp" | "udp"))) => (body, Some(p)),
        Some(_) => return Err(UsageError::Unpublish(spec.to_owned())),
        None => (spec, None),
    };
    // BIND:PORT is BIND:PORT:PORT to the publish parser.
    let ports = body
        .rsplit(':')
        .next()
        .filter(|p| !p.is_empty() && !p.contains(']'))
        .ok_or_else(|| UsageError::Unpublish(spec.to_owned()))?;
    let as_publish = match proto {
        Some(p) => format!("{body}:{ports}/{p}"),
        None => format!("{body}:{ports}"),
    };
    match parse_spec(&as_publish, Ipv4Addr::UNSPECIFIED) {
        Ok(specs) => Ok(specs.iter().map(|s| (s.host, s.proto)).collect()),
        Err(SpecError::Range(_)) => Err(UsageError::Range(SpecError::Range(spec.to_owned()))),
        Err(_) => Err(UsageError::Unpublish(spec.to_owned())),
    }
}

/// Runs `cli`; returns what to print on stdout.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    let client = Client::new(&cli.api_socket).with_timeout(Duration::from_secs(cli.timeout));
    match &cli.command {
        Command::Publish { spec } => publish(&client, spec, cli.json),
        Command::Unpublish { spec } => unpublish(&client, spec, cli.json),
        Command::Ports => show(&client, ALL, cli.json, |v: Vec<PortEntry>| {
            render::ports(&v)
        }),
        Command::Stats => show(&client, STATS, cli.json, |s: Stats| render::stats(&s)),
        Command::Flows => show(&client, FLOWS, cli.json, |f: Vec<FlowInfo>| {
            render::flows(&f)
        }),
        Command::Leases => show(&client, LEASES, cli.json, |l: Vec<Lease>| {
            render::leases(&l)
        }),
        Command::Dns(DnsCommand::Ls) => show(&client, DNS, cli.json, |d: DnsInfo| render::dns(&d)),
        Command::Dns(DnsCommand::Add { name, value }) => {
            let req = DnsRecord {
                name: name.clone(),
                rtype: None,
                value: value.clone(),
                source: None,
            };
            let reply = client.post(DNS_ADD, &req)?;
            let added: DnsRecord =
                serde_json::from_slice(&reply.body).map_err(|e| CliError::Decode(DNS_ADD, e))?;
            Ok(if cli.json {
                json_text(&reply.body)
            } else {
                format!(
                    "added {} {} {}\n",
                    added.name,
                    added.rtype.unwrap_or_default(),
                    added.value
                )
            })
        }
        Command::Dns(DnsCommand::Rm { name, value }) => {
            let req = DnsRemoveRequest {
                name: name.clone(),
                value: value.clone(),
            };
            let reply = client.post(DNS_REMOVE, &req)?;
            let gone: Vec<DnsRecord> =
                serde_json::from_slice(&reply.body).map_err(|e| CliError::Decode(DNS_REMOVE, e))?;
            Ok(if cli.json {
                json_text(&reply.body)
            } else {
                gone.iter()
                    .map(|r| {
                        format!(
                            "removed {} {} {}\n",
                            r.name,
                            r.rtype.as_deref().unwrap_or_default(),
                            r.value
                        )
                    })
                    .collect()
            })
        }
    }
}

/// GETs `target`: its JSON as is, or rendered.
fn show<T: for<'de> serde::Deserialize<'de>>(
    client: &Client,
    target: &'static str,
    json: bool,
    render: impl FnOnce(T) -> String,
) -> Result<String, CliError> {
    let reply = client.get(target)?;
    let value: T = serde_json::from_slice(&reply.body).map_err(|e| CliError::Decode(target, e))?;
    if json {
        Ok(json_text(&reply.body))
    } else {
        Ok(render(value))
    }
}

fn json_text(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).trim_end().to_owned();
    text.push('\n');
    text
}

fn protocol(p: Proto) -> Option<String> {
    Some(p.to_string())
}

fn publish(client: &Client, spec: &str, json: bool) -> Result<String, CliError> {
    let specs = parse_publish(spec)?;
    let mut done: Vec<PortEntry> = Vec::new();
    for s in &specs {
        let req = ExposeRequest {
            local: s.host.to_string(),
            remote: if s.guest.is_ipv6() {
                // The guest's own IPv6 address (/tcp6, /udp6).
                format!("[::]:{}", s.guest.port())
            } else {
                format!(":{}", s.guest.port())
            },
            protocol: protocol(s.proto),
        };
        let entry = client
            .post(EXPOSE, &req)
            .map_err(CliError::Client)
            .and_then(|r| serde_json::from_slice(&r.body).map_err(|e| CliError::Decode(EXPOSE, e)));
        match entry {
            Ok(e) => done.push(e),
            Err(err) => {
                if done.is_empty() {
                    return Err(err);
                }
                // All or none, like --publish at startup.
                for e in &done {
                    let _ = client.post(
                        UNEXPOSE,
                        &UnexposeRequest {
                            local: e.local.clone(),
                            protocol: Some(e.protocol.clone()),
                        },
                    );
                }
                let source = match err {
                    CliError::Client(c) => c,
                    other => return Err(other),
                };
                return Err(CliError::Partial {
                    spec: spec.to_owned(),
                    failed: format!("{}/{}", s.host, s.proto),
                    source,
                });
            }
        }
    }
    Ok(report(&done, "published", json))
}

fn unpublish(client: &Client, spec: &str, json: bool) -> Result<String, CliError> {
    let targets = parse_unpublish(spec)?;
    // A range is all or none, like publish: every port must be published
    // before any is removed. (One port: the daemon's own answer says it.)
    let published: Vec<PortEntry> = if targets.len() == 1 {
        Vec::new()
    } else {
        let reply = client.get(ALL)?;
        serde_json::from_slice(&reply.body).map_err(|e| CliError::Decode(ALL, e))?
    };
    let find = |host: &SocketAddr, proto: Proto| {
        published.iter().find(|e| {
            e.protocol == proto.to_string() && e.local.parse::<SocketAddr>().ok() == Some(*host)
        })
    };
    let missing: Vec<String> = targets
        .iter()
        .filter(|(host, proto)| targets.len() > 1 && find(host, *proto).is_none())
        .map(|(host, proto)| format!("{host}/{proto}"))
        .collect();
    if !missing.is_empty() {
        return Err(CliError::NotPublished {
            spec: spec.to_owned(),
            missing,
        });
    }
    let mut done: Vec<PortEntry> = Vec::new();
    for (host, proto) in &targets {
        let removed = client
            .post(
                UNEXPOSE,
                &UnexposeRequest {
                    local: host.to_string(),
                    protocol: protocol(*proto),
                },
            )
            .map_err(CliError::Client)
            .and_then(|r| {
                serde_json::from_slice(&r.body).map_err(|e| CliError::Decode(UNEXPOSE, e))
            });
        match removed {
            Ok(e) => done.push(e),
            Err(err) => {
                // Put back what this command removed.
                for e in &done {
                    let _ = client.post(
                        EXPOSE,
                        &ExposeRequest {
                            local: e.local.clone(),
                            remote: e.remote.clone(),
                            protocol: Some(e.protocol.clone()),
                        },
                    );
                }
                if done.is_empty() {
                    return Err(err);
                }
                let source = match err {
                    CliError::Client(c) => c,
                    other => return Err(other),
                };
                return Err(CliError::PartialUnpublish {
                    spec: spec.to_owned(),
                    failed: format!("{host}/{proto}"),
                    source,
                });
            }
        }
    }
    Ok(report(&done, "unpublished", json))
}

fn report(entries: &[PortEntry], verb: &str, json: bool) -> String {
    if json {
        let mut text = serde_json::to_string(entries).unwrap_or_default();
        text.push('\n');
        return text;
    }
    entries
        .iter()
        .map(|e| format!("{verb} {} -> {}/{}\n", e.local, e.remote, e.protocol))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("airlock").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_and_global_options() {
        let c = parse(&["--api-socket", "/tmp/a.api", "publish", "8080:80"]).unwrap();
        assert_eq!(c.api_socket, PathBuf::from("/tmp/a.api"));
        assert!(!c.json);
        assert_eq!(
            c.command,
            Command::Publish {
                spec: "8080:80".into()
            }
        );
        // Global options go after the command too.
        let c = parse(&["stats", "--json", "--api-socket", "/x"]).unwrap();
        assert!(c.json);
        assert_eq!(
            (c.command, c.api_socket),
            (Command::Stats, PathBuf::from("/x"))
        );
        for (arg, cmd) in [
            ("ports", Command::Ports),
            ("flows", Command::Flows),
            ("leases", Command::Leases),
        ] {
            assert_eq!(parse(&[arg]).unwrap().command, cmd);
        }
        assert_eq!(
            parse(&["unpublish", "0.0.0.0:8080/udp"]).unwrap().command,
            Command::Unpublish {
                spec: "0.0.0.0:8080/udp".into()
            }
        );
        assert_eq!(
            parse(&["dns", "add", "db.test", "10.0.0.5"])
                .unwrap()
                .command,
            Command::Dns(DnsCommand::Add {
                name: "db.test".into(),
                value: "10.0.0.5".into()
            })
        );
        assert_eq!(
            parse(&["dns", "rm", "db.test"]).unwrap().command,
            Command::Dns(DnsCommand::Rm {
                name: "db.test".into(),
                value: None
            })
        );
        assert_eq!(
            parse(&["dns", "ls"]).unwrap().command,
            Command::Dns(DnsCommand::Ls)
        );
        for bad in [
            &[][..],
            &["publish"],
            &["nope"],
            &["ports", "extra"],
            &["--jsn", "ports"],
            &["dns"],
            &["dns", "add", "db.test"],
            &["dns", "rm"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn default_socket_and_environment() {
        // Only this test touches the variable.
        std::env::remove_var("AIRLOCK_API_SOCKET");
        assert_eq!(
            parse(&["ports"]).unwrap().api_socket,
            PathBuf::from(DEFAULT_SOCKET)
        );
        std::env::set_var("AIRLOCK_API_SOCKET", "/run/vm1/net.api");
        assert_eq!(
            parse(&["ports"]).unwrap().api_socket,
            PathBuf::from("/run/vm1/net.api")
        );
        // The option wins over the environment.
        assert_eq!(
            parse(&["--api-socket", "/a", "ports"]).unwrap().api_socket,
            PathBuf::from("/a")
        );
        std::env::remove_var("AIRLOCK_API_SOCKET");
    }

    #[test]
    fn publish_specs_follow_airlock_net() {
        let one = |s: &str| {
            let v = parse_publish(s).unwrap();
            assert_eq!(v.len(), 1);
            (v[0].host.to_string(), v[0].guest.port(), v[0].proto)
        };
        assert_eq!(one("8080:80"), ("127.0.0.1:8080".into(), 80, Proto::Tcp));
        assert_eq!(
            one("0.0.0.0:5353:53/udp"),
            ("0.0.0.0:5353".into(), 53, Proto::Udp)
        );
        assert_eq!(one("[::1]:8080:80"), ("[::1]:8080".into(), 80, Proto::Tcp));
        assert_eq!(parse_publish("8000-8002:9000-9002").unwrap().len(), 3);
        assert!(matches!(parse_publish("80"), Err(UsageError::Publish(_))));
        assert!(matches!(
            parse_publish("8000-8002:80"),
            Err(UsageError::Range(_))
        ));
        assert!(parse_publish("8080:80/sctp").is_err());
    }

    #[test]
    fn unpublish_specs() {
        let hosts = |s: &str| -> Vec<(String, Proto)> {
            parse_unpublish(s)
                .unwrap()
                .into_iter()
                .map(|(a, p)| (a.to_string(), p))
                .collect()
        };
        assert_eq!(hosts("8080"), vec![("127.0.0.1:8080".into(), Proto::Tcp)]);
        assert_eq!(
            hosts("0.0.0.0:5353/udp"),
            vec![("0.0.0.0:5353".into(), Proto::Udp)]
        );
        assert_eq!(hosts("[::]:8080"), vec![("[::]:8080".into(), Proto::Tcp)]);
        assert_eq!(
            hosts("127.0.0.1:8000-8001/tcp"),
            vec![
                ("127.0.0.1:8000".into(), Proto::Tcp),
                ("127.0.0.1:8001".into(), Proto::Tcp)
            ]
        );
        for bad in [
            "",
            "x",
            "8080/sctp",
            "8080:80",
            "1.2.3.4:",
            "[::1]",
            "0",
            "70000",
            "9-8",
            "a:b:c",
        ] {
            assert!(parse_unpublish(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn usage_errors_exit_2_others_1() {
        let usage = CliError::from(UsageError::Publish("x".into()));
        assert_eq!(usage.exit_code(), 2);
        let api = CliError::from(ClientError::Api {
            status: 409,
            message: "taken".into(),
        });
        assert_eq!(api.exit_code(), 1);
        assert_eq!(api.to_string(), "airlock-net: taken (HTTP 409)");
    }
}
