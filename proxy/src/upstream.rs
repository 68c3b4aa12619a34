//! Which upstream proxy (if any) a request goes through: `--upstream-http` /
//! `--upstream-https`, else the environment (curl's variable names and
//! order), minus hosts matched by `--no-proxy` / `NO_PROXY`.
//!
//! Precedence, for plain-HTTP requests (absolute-form `http://` URLs):
//!   `--upstream-http`, `http_proxy`, `all_proxy`, `ALL_PROXY`
//!   (upper-case `HTTP_PROXY` is never read: curl ignores it because a CGI
//!   environment lets a client set it through a `Proxy:` header, "httpoxy");
//! for CONNECT tunnels (HTTPS and anything else tunnelled):
//!   `--upstream-https`, `https_proxy`, `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY`;
//! for the bypass list: `--no-proxy`, `no_proxy`, `NO_PROXY`.
//!
//! The first one that is *set* decides, even if it is empty: an empty value
//! means "direct" (or "bypass nothing" for the list), as with curl.
//! `--ignore-proxy-env` skips the environment altogether.

use std::fmt;

use http::HeaderValue;

use crate::credentials::{Credentials, CredentialsError};
use crate::noproxy::{Host, PatternList};
use crate::target::Target;

/// Port used when an upstream URL has none: curl's default for HTTP proxies.
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// Environment variables read for each lookup, in order.
pub const HTTP_VARS: &[&str] = &["http_proxy", "all_proxy", "ALL_PROXY"];
pub const HTTPS_VARS: &[&str] = &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
pub const NO_PROXY_VARS: &[&str] = &["no_proxy", "NO_PROXY"];

/// The kind of request, which picks the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A plain-HTTP request forwarded as absolute-form.
    Http,
    /// A CONNECT tunnel.
    Connect,
}

/// Where a setting came from (for startup messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "--{name}"),
            Source::Env(name) => write!(f, "${name}"),
        }
    }
}

/// An upstream proxy. `Display` and `Debug` never show the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: Target,
    pub source: Source,
    auth: Option<HeaderValue>,
}

impl Upstream {
    pub fn new(addr: Target, source: Source, credentials: Option<&Credentials>) -> Self {
        Upstream {
            addr,
            source,
            auth: credentials.map(Credentials::header_value),
        }
    }

    /// The `Proxy-Authorization` value to send, if credentials are set.
    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upstream(http://{} from {}, {})",
            self.addr,
            self.source,
            if self.auth.is_some() {
                "credentials <redacted>"
            } else {
                "no credentials"
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream proxy URL {url:?} (from {source_name}): {why}")]
    BadUrl {
        source_name: Source,
        /// The URL with any userinfo replaced by `***`.
        url: String,
        why: String,
    },
    #[error("invalid credentials in the upstream proxy URL {url:?} (from {source_name})")]
    Userinfo {
        source_name: Source,
        url: String,
        #[source]
        source: CredentialsError,
    },
}

/// What the command line says about upstreams.
#[derive(Clone, Debug, Default)]
pub struct UpstreamArgs {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Option<String>,
    pub ignore_env: bool,
    /// From `--upstream-credentials-file`; overrides URL userinfo.
    pub credentials: Option<Credentials>,
}

/// The resolved upstream configuration.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub http: Option<Upstream>,
    pub https: Option<Upstream>,
    pub no_proxy: PatternList,
    pub no_proxy_source: Option<Source>,
    /// Things worth a warning at startup (ignored variables, inert entries).
    pub warnings: Vec<String>,
}

impl Upstreams {
    /// No upstream at all.
    pub fn direct() -> Self {
        Upstreams {
            http: None,
            https: None,
            no_proxy: PatternList::empty(),
            no_proxy_source: None,
            warnings: Vec::new(),
        }
    }

    /// Resolves flags and environment (`env` looks a variable up; it returns
    /// `Some("")` for a variable that is set but empty).
    pub fn resolve(
        args: &UpstreamArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Upstreams, UpstreamError> {
        let env = |name: &str| if args.ignore_env { None } else { env(name) };
        let mut warnings = Vec::new();

        let pick = |flag: &'static str,
                    value: &Option<String>,
                    vars: &'static [&'static str]|
         -> Option<(Source, String)> {
            if let Some(v) = value {
                return Some((Source::Flag(flag), v.clone()));
            }
            vars.iter()
                .find_map(|&var| env(var).map(|v| (Source::Env(var), v)))
        };

        let build = |picked: Option<(Source, String)>| -> Result<Option<Upstream>, UpstreamError> {
            let Some((source, text)) = picked else {
                return Ok(None);
            };
            if text.is_empty() {
                return Ok(None);
            }
            let parsed = parse_proxy_url(&text).map_err(|why| UpstreamError::BadUrl {
                source_name: source,
                url: redact_url(&text),
                why: why.to_owned(),
            })?;
            let from_url =
                match parsed.userinfo {
                    Some(ui) => Some(Credentials::from_userinfo(ui).map_err(|e| {
                        UpstreamError::Userinfo {
                            source_name: source,
                            url: redact_url(&text),
                            source: e,
                        }
                    })?),
                    None => None,
                };
            let credentials = args.credentials.as_ref().or(from_url.as_ref());
            Ok(Some(Upstream::new(parsed.addr, source, credentials)))
        };

        let http = build(pick("upstream-http", &args.http, HTTP_VARS))?;
        let https = build(pick("upstream-https", &args.https, HTTPS_VARS))?;

        if args.http.is_none() && !args.ignore_env && env("http_proxy").is_none() {
            if let Some(v) = env("HTTP_PROXY").filter(|v| !v.is_empty()) {
                warnings.push(format!(
                    "$HTTP_PROXY ({}) is ignored, as curl ignores it (\"httpoxy\"): \
                     set http_proxy or --upstream-http instead",
                    redact_url(&v)
                ));
            }
        }

        let (no_proxy, no_proxy_source) = match pick("no-proxy", &args.no_proxy, NO_PROXY_VARS) {
            Some((source, text)) => (PatternList::parse(&text), Some(source)),
            None => (PatternList::empty(), None),
        };
        if let Some(source) = no_proxy_source {
            for inert in no_proxy.inert() {
                warnings.push(format!("{source}: entry {inert}"));
            }
            if let Some(tail) = no_proxy.ignored_tail() {
                warnings.push(format!(
                    "{source}: {tail:?} is ignored: entries are separated by commas \
                     (a blank not followed by a comma ends the list, as in curl)"
                ));
            }
        }

        Ok(Upstreams {
            http,
            https,
            no_proxy,
            no_proxy_source,
            warnings,
        })
    }

    /// The upstream a request of `kind` to `host` goes through, or `None`
    /// for a direct connection.
    pub fn select(&self, kind: Kind, host: &Host) -> Option<&Upstream> {
        let upstream = match kind {
            Kind::Http => self.http.as_ref(),
            Kind::Connect => self.https.as_ref(),
        }?;
        if self.no_proxy.matches(host) {
            None
        } else {
            Some(upstream)
        }
    }

    /// One line per setting, for the startup log (no credentials).
    pub fn describe(&self) -> Vec<String> {
        let one = |what: &str, u: &Option<Upstream>| match u {
            Some(u) => format!(
                "{what}: upstream proxy {u} (from {}{})",
                u.source,
                if u.has_credentials() {
                    ", with credentials"
                } else {
                    ", without credentials"
                }
            ),
            None => format!("{what}: direct"),
        };
        let mut lines = vec![
            one("plain HTTP requests", &self.http),
            one("CONNECT tunnels", &self.https),
        ];
        if let Some(source) = self.no_proxy_source {
            lines.push(format!(
                "bypass list (from {source}): {:?}",
                self.no_proxy.as_str()
            ));
        }
        lines
    }
}

struct ParsedUrl<'a> {
    addr: Target,
    userinfo: Option<&'a str>,
}

/// Parses `[http://][user[:password]@]host[:port][/]`.
fn parse_proxy_url(text: &str) -> Result<ParsedUrl<'_>, String> {
    let rest = match text.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => rest,
            "https" => {
                return Err(
                    "https:// upstream proxies (TLS to the proxy itself) are not \
                            supported; use http:// — CONNECT tunnels still carry TLS end to end"
                        .into(),
                )
            }
            other => return Err(format!("scheme {other}:// is not supported (only http://)")),
        },
        None => text,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !(tail.is_empty() || tail == "/") {
        return Err(
            "a proxy URL has no path, query or fragment (percent-encode `/`, `?` \
                    or `#` in a password)"
                .into(),
        );
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or("unterminated [IPv6] address")?;
        let (h, p) = hostport.split_at(close + 1);
        match p {
            "" => (h, None),
            _ => (
                h,
                Some(p.strip_prefix(':').ok_or("expected :port after ]")?),
            ),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let host = Host::parse(host).map_err(|e| e.to_string())?;
    let port = match port {
        None | Some("") => DEFAULT_PROXY_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok(ParsedUrl {
        addr: Target { host, port },
        userinfo,
    })
}

/// The URL with its userinfo replaced by `***`, safe to print.
pub fn redact_url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (&text[..s.len() + 3], r),
        None => ("", text),
    };
    match rest.rfind('@') {
        Some(i) => format!("{scheme}***@{}", &rest[i + 1..]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    fn shown(u: Option<&Upstream>) -> Option<String> {
        u.map(|u| format!("{u} {}", u.source))
    }

    fn resolve(args: &UpstreamArgs, vars: &[(&str, &str)]) -> Upstreams {
        Upstreams::resolve(args, env(vars)).unwrap()
    }

    #[test]
    fn url_forms() {
        let p = |s: &str| {
            parse_proxy_url(s).map(|u| (u.addr.to_string(), u.userinfo.map(str::to_owned)))
        };
        assert_eq!(p("http://proxy:3128"), Ok(("proxy:3128".into(), None)));
        assert_eq!(p("http://proxy:3128/"), Ok(("proxy:3128".into(), None)));
        assert_eq!(p("HTTP://Proxy.Corp"), Ok(("proxy.corp:1080".into(), None)));
        assert_eq!(p("proxy:8080"), Ok(("proxy:8080".into(), None)));
        assert_eq!(p("http://[::1]:3128"), Ok(("[::1]:3128".into(), None)));
        assert_eq!(p("http://[::1]"), Ok(("[::1]:1080".into(), None)));
        assert_eq!(
            p("http://us%40er:p@ss@proxy:3128"),
            Ok(("proxy:3128".into(), Some("us%40er:p@ss".into())))
        );
        assert_eq!(
            p("u:p@10.0.0.1:3128"),
            Ok(("10.0.0.1:3128".into(), Some("u:p".into())))
        );
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy:3128/path",
            "http://proxy:port",
            "http://proxy:0",
            "http://proxy:65536",
            "http://",
            "http://:3128",
            "http://[::1:3128",
            "http://[::1]x",
            "http://pro xy:3128",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("http://u:p@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact_url("u:p@x@proxy"), "***@proxy");
        assert_eq!(redact_url("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn flags_win_over_environment() {
        let args = UpstreamArgs {
            http: Some("http://flag-http:1".into()),
            https: Some("http://flag-https:2".into()),
            ..Default::default()
        };
        let u = resolve(
            &args,
            &[
                ("http_proxy", "http://env:9"),
                ("https_proxy", "http://env:9"),
            ],
        );
        assert_eq!(
            shown(u.http.as_ref()).unwrap(),
            "http://flag-http:1 --upstream-http"
        );
        assert_eq!(
            shown(u.https.as_ref()).unwrap(),
            "http://flag-https:2 --upstream-https"
        );
    }

    #[test]
    fn curl_environment_precedence() {
        let none = UpstreamArgs::default();
        // http: lower-case only; upper-case HTTP_PROXY ignored (httpoxy).
        let u = resolve(&none, &[("HTTP_PROXY", "http://upper:1")]);
        assert_eq!(u.http, None);
        assert_eq!(u.warnings.len(), 1, "{:?}", u.warnings);
        assert!(u.warnings[0].contains("HTTP_PROXY"));
        let u = resolve(
            &none,
            &[
                ("http_proxy", "http://lower:1"),
                ("HTTP_PROXY", "http://upper:1"),
            ],
        );
        assert_eq!(
            shown(u.http.as_ref()).unwrap(),
            "http://lower:1 $http_proxy"
        );
        assert!(u.warnings.is_empty());
        // https: lower-case first, then upper-case.
        let u = resolve(&none, &[("HTTPS_PROXY", "http://upper:2")]);
        assert_eq!(
            shown(u.https.as_ref()).unwrap(),
            "http://upper:2 $HTTPS_PROXY"
        );
        let u = resolve(
            &none,
            &[
                ("https_proxy", "http://lower:2"),
                ("HTTPS_PROXY", "http://upper:2"),
            ],
        );
        assert_eq!(
            shown(u.https.as_ref()).unwrap(),
            "http://lower:2 $https_proxy"
        );
        // ALL_PROXY fallback for both, lower-case first.
        let u = resolve(&none, &[("ALL_PROXY", "http://all:3")]);
        assert_eq!(shown(u.http.as_ref()).unwrap(), "http://all:3 $ALL_PROXY");
        assert_eq!(shown(u.https.as_ref()).unwrap(), "http://all:3 $ALL_PROXY");
        let u = resolve(
            &none,
            &[
                ("all_proxy", "http://lower-all:3"),
                ("ALL_PROXY", "http://all:3"),
            ],
        );
        assert_eq!(
            shown(u.http.as_ref()).unwrap(),
            "http://lower-all:3 $all_proxy"
        );
        // The scheme's own variable beats ALL_PROXY.
        let u = resolve(
            &none,
            &[("ALL_PROXY", "http://all:3"), ("https_proxy", "http://s:4")],
        );
        assert_eq!(shown(u.https.as_ref()).unwrap(), "http://s:4 $https_proxy");
        assert_eq!(shown(u.http.as_ref()).unwrap(), "http://all:3 $ALL_PROXY");
        // Upper-case HTTP_PROXY does not block the ALL_PROXY fallback either.
        let u = resolve(
            &none,
            &[
                ("HTTP_PROXY", "http://upper:1"),
                ("ALL_PROXY", "http://all:3"),
            ],
        );
        assert_eq!(shown(u.http.as_ref()).unwrap(), "http://all:3 $ALL_PROXY");
    }

    #[test]
    fn set_but_empty_means_direct() {
        let none = UpstreamArgs::default();
        let u = resolve(
            &none,
            &[
                ("https_proxy", ""),
                ("HTTPS_PROXY", "http://upper:2"),
                ("ALL_PROXY", "http://all:3"),
            ],
        );
        assert_eq!(u.https, None);
        assert!(u.http.is_some());
        let flag_empty = UpstreamArgs {
            http: Some(String::new()),
            ..Default::default()
        };
        let u = resolve(&flag_empty, &[("http_proxy", "http://env:1")]);
        assert_eq!(u.http, None);
        // Empty no_proxy hides NO_PROXY.
        let u = resolve(
            &none,
            &[
                ("ALL_PROXY", "http://all:3"),
                ("no_proxy", ""),
                ("NO_PROXY", "*"),
            ],
        );
        assert!(u.select(Kind::Http, &host("example.com")).is_some());
    }

    #[test]
    fn ignore_env() {
        let args = UpstreamArgs {
            ignore_env: true,
            https: Some("http://flag:2".into()),
            ..Default::default()
        };
        let u = resolve(
            &args,
            &[
                ("http_proxy", "http://env:1"),
                ("NO_PROXY", "*"),
                ("HTTP_PROXY", "x"),
            ],
        );
        assert_eq!(u.http, None);
        assert!(u.select(Kind::Connect, &host("example.com")).is_some());
        assert!(u.warnings.is_empty());
    }

    #[test]
    fn no_proxy_bypass() {
        let none = UpstreamArgs::default();
        let vars = [
            ("ALL_PROXY", "http://all:3"),
            ("NO_PROXY", "localhost,.internal,10.0.0.0/8"),
        ];
        let u = resolve(&none, &vars);
        assert!(u.select(Kind::Http, &host("localhost")).is_none());
        assert!(u.select(Kind::Connect, &host("svc.internal")).is_none());
        assert!(u.select(Kind::Connect, &host("10.2.3.4")).is_none());
        assert!(u.select(Kind::Connect, &host("11.2.3.4")).is_some());
        assert!(u.select(Kind::Http, &host("example.com")).is_some());
        // lower-case no_proxy wins over NO_PROXY
        let u = resolve(
            &none,
            &[
                ("ALL_PROXY", "http://all:3"),
                ("no_proxy", "a.example"),
                ("NO_PROXY", "b.example"),
            ],
        );
        assert!(u.select(Kind::Http, &host("a.example")).is_none());
        assert!(u.select(Kind::Http, &host("b.example")).is_some());
        // --no-proxy wins over the environment, and "" re-enables the proxy.
        let args = UpstreamArgs {
            no_proxy: Some(String::new()),
            ..Default::default()
        };
        let u = resolve(&args, &[("ALL_PROXY", "http://all:3"), ("no_proxy", "*")]);
        assert!(u.select(Kind::Http, &host("example.com")).is_some());
        let args = UpstreamArgs {
            no_proxy: Some("*".into()),
            ..Default::default()
        };
        let u = resolve(&args, &[("ALL_PROXY", "http://all:3")]);
        assert!(u.select(Kind::Connect, &host("example.com")).is_none());
    }

    #[test]
    fn inert_no_proxy_entries_warn() {
        let none = UpstreamArgs::default();
        let u = resolve(&none, &[("no_proxy", "example.com:443,a b")]);
        assert_eq!(u.warnings.len(), 2, "{:?}", u.warnings);
        assert!(u.warnings[0].contains("example.com:443"));
        assert!(u.warnings[1].contains("\"b\""));
    }

    #[test]
    fn credentials_from_url_and_file() {
        let none = UpstreamArgs::default();
        let u = resolve(
            &none,
            &[("https_proxy", "http://alice:s%3Acret@proxy:3128")],
        );
        let https = u.https.unwrap();
        let expected = Credentials::new("alice".into(), "s:cret".into()).header_value();
        assert_eq!(https.auth(), Some(&expected));
        // Neither Display nor Debug shows them.
        for text in [
            format!("{https}"),
            format!("{https:?}"),
            format!("{:?}", u.warnings),
        ] {
            assert!(!text.contains("alice") && !text.contains("cret"), "{text}");
        }
        // The file overrides the URL's userinfo, for both upstreams.
        let file = Credentials::new("bob".into(), "pw".into());
        let args = UpstreamArgs {
            credentials: Some(file.clone()),
            ..Default::default()
        };
        let u = resolve(
            &args,
            &[
                ("http_proxy", "http://alice:x@proxy:1"),
                ("https_proxy", "http://proxy:2"),
            ],
        );
        assert_eq!(u.http.unwrap().auth(), Some(&file.header_value()));
        assert_eq!(u.https.unwrap().auth(), Some(&file.header_value()));
    }

    #[test]
    fn errors_never_show_credentials() {
        let args = UpstreamArgs {
            https: Some("http://alice:s3cret@proxy:badport".into()),
            ..Default::default()
        };
        let err = Upstreams::resolve(&args, env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--upstream-https") && text.contains("***@proxy:badport"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
        let err = Upstreams::resolve(
            &UpstreamArgs::default(),
            env(&[("http_proxy", "http://:pw@proxy:1")]),
        )
        .unwrap_err();
        assert!(matches!(err, UpstreamError::Userinfo { .. }), "{err}");
        assert!(!err.to_string().contains("pw"));
    }
}
