//! Command-line arguments (clap derive). Turned into a
//! [`Config`](crate::config::Config) by `TryFrom`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use airlock_common::config_file::ConfigArgs;
use airlock_common::logging::LogArgs;
use airlock_common::sandbox::ConfineArgs;
use airlock_common::seccomp::SeccompArgs;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::policy::Action;

const AFTER_HELP: &str = "\
UPSTREAM SELECTION (curl's variable names and order):
  plain-HTTP requests:  --upstream-http, then $http_proxy, $all_proxy, $ALL_PROXY.
                        Upper-case $HTTP_PROXY is never read (curl ignores it too:
                        under CGI a client can set it with a `Proxy:` header).
  CONNECT tunnels:      --upstream-https, then $https_proxy, $HTTPS_PROXY,
                        $all_proxy, $ALL_PROXY.
  bypass list:          --no-proxy, then $no_proxy, $NO_PROXY.
  The first one that is set decides, even when empty: an empty value means
  \"connect directly\" (or, for the bypass list, \"bypass nothing\").
  --ignore-proxy-env skips the environment entirely.

PATTERNS (--no-proxy, --allow, --deny; curl's NO_PROXY rules):
  Comma-separated entries. `example.com` (or `.example.com`) matches that name
  and every name under it on a label boundary, case-insensitively; an IP
  address or CIDR block (10.0.0.0/8, ::1, fd00::/8; IPv6 without brackets)
  matches requests that name an IP address in that range; the whole list `*`
  matches everything. Ports are never part of matching. Names are matched as
  the client wrote them, not resolved.

CREDENTIALS:
  Upstream credentials are never logged, never sent to origin servers and
  never shown to clients; a client's own Proxy-Authorization is always
  removed. Command-line arguments are visible to other local users in
  /proc/PID/cmdline: prefer --upstream-credentials-file or the environment
  over user:password in an --upstream-* URL.

Proxy auto-config (PAC) files are not supported.";

/// airlock-proxy: the HTTP/HTTPS forward proxy an Airlock guest reaches at
/// http.airlock.internal:3128. It forwards plain-HTTP requests and CONNECT
/// tunnels, directly or through an upstream proxy whose credentials the guest
/// never sees, and can restrict and audit where the guest goes.
#[derive(Parser)]
#[command(name = "airlock-proxy", version, after_long_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Where to listen: IP:PORT (e.g. 127.0.0.1:3128, [::1]:3128; port 0
    /// picks a free port, logged at startup) or unix:PATH (a Unix socket
    /// created with mode 0600; a stale socket is replaced, one in use is an
    /// error). Repeat to listen on several.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    pub listen: Vec<String>,

    /// Upstream proxy for plain-HTTP requests: http://[USER:PASSWORD@]HOST[:PORT]
    /// (percent-encoded credentials; port 1080 if none, as curl). Requests are
    /// sent to it in absolute form. An empty value means direct. Overrides
    /// $http_proxy / $all_proxy / $ALL_PROXY.
    #[arg(long, value_name = "URL")]
    pub upstream_http: Option<String>,

    /// Upstream proxy for CONNECT tunnels (HTTPS): same form as
    /// --upstream-http; tunnels are opened with CONNECT through it. An empty
    /// value means direct. Overrides $https_proxy / $HTTPS_PROXY / $all_proxy
    /// / $ALL_PROXY.
    #[arg(long, value_name = "URL")]
    pub upstream_https: Option<String>,

    /// File holding the upstream proxy credentials as one line USER:PASSWORD.
    /// Used for both upstreams, in place of any credentials in their URLs.
    /// Refused if other users may read or write it (chmod o-rwx). Its
    /// contents are never logged.
    #[arg(long, value_name = "FILE")]
    pub upstream_credentials_file: Option<PathBuf>,

    /// Hosts reached directly, never through an upstream proxy: a
    /// comma-separated pattern list (see PATTERNS); "*" bypasses the
    /// upstream for everything, "" bypasses nothing. Overrides $no_proxy /
    /// $NO_PROXY.
    #[arg(long, value_name = "LIST")]
    pub no_proxy: Option<String>,

    /// Do not read any proxy environment variable (http_proxy, https_proxy,
    /// HTTPS_PROXY, all_proxy, ALL_PROXY, no_proxy, NO_PROXY).
    #[arg(long)]
    pub ignore_proxy_env: bool,

    /// Allow requests to hosts matching PATTERN (a pattern list, see
    /// PATTERNS). --allow and --deny rules are evaluated in the order given,
    /// first match wins. Once any --allow is given, hosts no rule matches are
    /// denied; without --allow they are allowed.
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,

    /// Deny requests to hosts matching PATTERN: the client gets 403 with the
    /// rule's number and text. Ordered together with --allow.
    #[arg(long, value_name = "PATTERN")]
    pub deny: Vec<String>,

    /// Filled in by [`parse_from`]: --allow and --deny in command-line order.
    #[arg(skip)]
    pub rules: Vec<(Action, String)>,

    /// Append one JSON object per request or tunnel to PATH when it finishes
    /// ("-" for stdout): time, client, method, host, port, status, bytes_up,
    /// bytes_down, upstream, duration_ms, policy, rule, error.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// Most client connections served at once (tunnels included). Beyond
    /// it, new connections get 503 and are closed.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// Close a client connection or tunnel after this long without a byte in
    /// either direction (also the time allowed to send a request's headers).
    /// A number of seconds, or with a unit: 500ms, 30s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time allowed to resolve and connect to an origin or upstream proxy
    /// (for tunnels through an upstream: until it answers the CONNECT); past
    /// it the client gets 504 Gateway Timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Largest request head (request line and headers) accepted from a
    /// client, in bytes (8192..=1048576); larger ones get 431, as do heads
    /// with more than 100 header fields.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub max_header_bytes: usize,

    /// Set RLIMIT_NOFILE (soft and hard) to N: each connection holds a
    /// client and an origin socket [default: 2 × --max-connections + 256].
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    #[command(flatten)]
    pub confine: ConfineArgs,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses the command line, recording the relative order of `--allow` and
/// `--deny` (clap keeps each option's values separately).
pub fn parse_from<I, T>(args: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Args::command().try_get_matches_from(args)?;
    let mut parsed = Args::from_arg_matches(&matches)?;
    let mut rules: Vec<(usize, Action, String)> = Vec::new();
    for (id, action) in [("allow", Action::Allow), ("deny", Action::Deny)] {
        if let (Some(indices), Some(values)) =
            (matches.indices_of(id), matches.get_many::<String>(id))
        {
            rules.extend(indices.zip(values).map(|(i, v)| (i, action, v.clone())));
        }
    }
    rules.sort_by_key(|r| r.0);
    parsed.rules = rules.into_iter().map(|(_, a, v)| (a, v)).collect();
    Ok(parsed)
}

/// `60`, `60s`, `500ms`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30, 30s, 500ms, 5m)"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if d.is_zero() {
        return Err("a duration of zero is not allowed".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_keep_command_line_order() {
        let a = parse_from([
            "airlock-proxy",
            "--deny",
            "a.example",
            "--allow",
            "b.example",
            "--listen",
            "127.0.0.1:1",
            "--deny",
            "c.example",
            "--allow=d.example",
        ])
        .unwrap();
        assert_eq!(
            a.rules,
            [
                (Action::Deny, "a.example".to_owned()),
                (Action::Allow, "b.example".to_owned()),
                (Action::Deny, "c.example".to_owned()),
                (Action::Allow, "d.example".to_owned()),
            ]
        );
    }

    #[test]
    fn defaults() {
        let a = parse_from(["airlock-proxy"]).unwrap();
        assert_eq!(a.listen, ["127.0.0.1:3128"]);
        assert_eq!(a.max_connections, 1024);
        assert_eq!(a.idle_timeout, Duration::from_secs(60));
        assert_eq!(a.connect_timeout, Duration::from_secs(10));
        assert_eq!(a.max_header_bytes, 65536);
        assert!(a.rules.is_empty());
        let a = parse_from([
            "airlock-proxy",
            "--listen",
            "unix:/x",
            "--listen",
            "[::1]:1",
        ])
        .unwrap();
        assert_eq!(a.listen, ["unix:/x", "[::1]:1"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "-1", "1.5s", "10x", "0", "0ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
