//! The validated configuration the server runs with.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::cli::Args;
use crate::credentials::{Credentials, CredentialsError};
use crate::policy::{Policy, PolicyError};
use crate::upstream::{UpstreamArgs, UpstreamError, Upstreams};

/// hyper refuses read buffers smaller than this.
pub const MIN_HEADER_BYTES: usize = 8192;
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ConfigError::Listen(text.to_owned(), "no path after unix:"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            ConfigError::Listen(
                text.to_owned(),
                "expected IP:PORT (e.g. 127.0.0.1:3128, [::1]:3128) or unix:PATH",
            )
        })
    }
}

/// Resource limits and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
        }
    }
}

/// Everything `run` needs. `Debug` never shows credentials.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<Listen>,
    pub upstreams: Upstreams,
    pub policy: Policy,
    pub audit_log: Option<PathBuf>,
    pub limits: Limits,
    pub rlimit_nofile: u64,
    pub confine: airlock_common::sandbox::ConfineArgs,
    pub seccomp: airlock_common::seccomp::SeccompMode,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --listen {0:?}: {1}")]
    Listen(String, &'static str),
    #[error("--listen {0} is given twice")]
    DuplicateListen(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot use --upstream-credentials-file")]
    Credentials(#[source] CredentialsError),
    #[error("invalid policy")]
    Policy(#[from] PolicyError),
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("--max-header-bytes {0} is outside {MIN_HEADER_BYTES}..={MAX_HEADER_BYTES}")]
    MaxHeaderBytes(usize),
}

impl Config {
    /// Builds the configuration from `args` and an environment lookup
    /// (`Some("")` for a variable set to the empty string).
    pub fn from_args(
        args: Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut listen: Vec<Listen> = Vec::with_capacity(args.listen.len());
        for text in &args.listen {
            let l: Listen = text.parse()?;
            // Port 0 twice is two ports, each picked when bound.
            let any_port = matches!(l, Listen::Tcp(a) if a.port() == 0);
            if !any_port && listen.contains(&l) {
                return Err(ConfigError::DuplicateListen(l.to_string()));
            }
            listen.push(l);
        }
        if args.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&args.max_header_bytes) {
            return Err(ConfigError::MaxHeaderBytes(args.max_header_bytes));
        }
        let credentials = args
            .upstream_credentials_file
            .as_deref()
            .map(Credentials::read_file)
            .transpose()
            .map_err(ConfigError::Credentials)?;
        let upstream_args = UpstreamArgs {
            http: args.upstream_http,
            https: args.upstream_https,
            no_proxy: args.no_proxy,
            ignore_env: args.ignore_proxy_env,
            credentials,
        };
        let upstreams = Upstreams::resolve(&upstream_args, env)?;
        let policy = Policy::new(&args.rules)?;
        Ok(Config {
            listen,
            upstreams,
            policy,
            audit_log: args.audit_log,
            rlimit_nofile: args
                .rlimit_nofile
                .unwrap_or(2 * args.max_connections as u64 + 256),
            confine: args.confine,
            seccomp: args.seccomp.seccomp.unwrap_or_default(),
            limits: Limits {
                max_connections: args.max_connections,
                idle_timeout: args.idle_timeout,
                connect_timeout: args.connect_timeout,
                max_header_bytes: args.max_header_bytes,
            },
        })
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    /// Reads the process environment for the proxy variables.
    fn try_from(args: Args) -> Result<Self, Self::Error> {
        Config::from_args(args, |name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_from;
    use airlock_common::report::chain;
    use std::os::unix::fs::PermissionsExt;

    fn config(argv: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["airlock-proxy"];
        full.extend_from_slice(argv);
        Config::from_args(parse_from(full).unwrap(), |_| None)
    }

    #[test]
    fn listen_addresses() {
        let c = config(&[
            "--listen",
            "127.0.0.1:3128",
            "--listen",
            "[::1]:0",
            "--listen",
            "unix:/run/p.sock",
        ])
        .unwrap();
        assert_eq!(
            c.listen,
            [
                Listen::Tcp("127.0.0.1:3128".parse().unwrap()),
                Listen::Tcp("[::1]:0".parse().unwrap()),
                Listen::Unix("/run/p.sock".into()),
            ]
        );
        for bad in ["localhost:3128", "3128", "unix:", "127.0.0.1"] {
            let err = config(&["--listen", bad]).unwrap_err();
            assert!(matches!(err, ConfigError::Listen(..)), "{bad}: {err}");
        }
        let err = config(&["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1"]).unwrap_err();
        assert!(matches!(err, ConfigError::DuplicateListen(_)));
        // Port 0 twice: two ports picked at bind time.
        let c = config(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn limits_are_validated() {
        assert!(matches!(
            config(&["--max-connections", "0"]),
            Err(ConfigError::MaxConnections)
        ));
        assert!(matches!(
            config(&["--max-header-bytes", "1024"]),
            Err(ConfigError::MaxHeaderBytes(1024))
        ));
        assert!(matches!(
            config(&["--max-header-bytes", "2000000"]),
            Err(ConfigError::MaxHeaderBytes(_))
        ));
        let c = config(&[
            "--idle-timeout",
            "5s",
            "--connect-timeout",
            "250ms",
            "--max-header-bytes",
            "8192",
        ])
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.max_header_bytes, 8192);
    }

    #[test]
    fn upstream_and_policy_errors_surface() {
        let err = config(&["--upstream-http", "socks5://p:1"]).unwrap_err();
        assert!(matches!(err, ConfigError::Upstream(_)), "{err}");
        let err = config(&["--deny", "example.com:443"]).unwrap_err();
        assert!(matches!(err, ConfigError::Policy(_)), "{err}");
        assert!(
            chain(&err).contains("rule 1 (--deny \"example.com:443\")"),
            "{}",
            chain(&err)
        );
    }

    #[test]
    fn credentials_file_errors_are_reported_with_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "alice:s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = path.to_str().unwrap();
        let err = config(&[
            "--upstream-credentials-file",
            p,
            "--upstream-https",
            "http://proxy:3128",
        ])
        .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("cannot use --upstream-credentials-file"),
            "{text}"
        );
        assert!(text.contains("accessible to other users"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = config(&[
            "--upstream-credentials-file",
            p,
            "--upstream-https",
            "http://proxy:3128",
        ])
        .unwrap();
        assert!(c.upstreams.https.as_ref().unwrap().has_credentials());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
        let err = config(&["--upstream-credentials-file", "/nonexistent/creds"]).unwrap_err();
        assert!(chain(&err).contains("No such file"), "{}", chain(&err));
    }

    #[test]
    fn environment_is_read_unless_ignored() {
        let env = |k: &str| (k == "https_proxy").then(|| "http://envproxy:3128".to_owned());
        let c = Config::from_args(parse_from(["airlock-proxy"]).unwrap(), env).unwrap();
        assert_eq!(
            c.upstreams.https.unwrap().to_string(),
            "http://envproxy:3128"
        );
        let c = Config::from_args(
            parse_from(["airlock-proxy", "--ignore-proxy-env"]).unwrap(),
            env,
        )
        .unwrap();
        assert!(c.upstreams.https.is_none());
    }
}
