//! airlock-net: a vhost-user-net daemon that is the guest's NAT gateway.
//! The gateway itself — frames in, host sockets out — is
//! [`airlock_netcore`]; this crate is what carries its frames and runs it:
//!
//! - [`device`] / `virtio_net`: the virtqueues (frames to and from guest
//!   memory) and the vhost-user backend;
//! - [`stream`]: the other transport, QEMU's `-netdev stream` framing;
//! - [`args`], [`config`]: the command line; [`passt`]: passt's command
//!   line, when the binary runs under that name (libvirt's passt backend);
//! - [`api`]: the control API (`--api-socket`): ports and DNS records at
//!   runtime, stats, flows, leases, Prometheus metrics ([`metrics`]);
//! - [`resolv`]: following the host's resolv.conf;
//! - [`pcap`]: `--pcap`, the frames of either transport in a capture file.

pub mod api;
pub mod args;
pub mod config;
pub mod device;
pub mod metrics;
pub mod passt;
pub mod pcap;
pub mod resolv;
pub mod stream;
mod virtio_net;

use std::sync::Arc;

use airlock_common::audit::AuditOpenError;
use airlock_common::daemon::Nofile;
use airlock_common::listen::ListenError;
use airlock_netcore::publish::PublishError;
use airlock_netcore::{Shared, SharedError};
use airlock_vhost::runner::{self, RunError};

use crate::args::Transport;
use crate::config::Config;
use crate::device::NetSession;
use crate::pcap::{Pcap, PcapError};

/// `--print-capabilities` output (QEMU's vhost-user.json: a net backend).
pub fn capabilities() -> serde_json::Value {
    serde_json::json!({ "type": "net" })
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    #[error(transparent)]
    Shared(#[from] SharedError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Sandbox(#[from] airlock_common::sandbox::SandboxError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot watch {0} for changes")]
    Watch(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] airlock_common::seccomp::SeccompError),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(transparent)]
    Detach(#[from] passt::DetachError),
}

/// What happens once the sockets are bound, before serving: passt's
/// command line (`--pid`, running in the background) asks for more than
/// airlock-net's own.
#[derive(Debug, Default)]
pub struct Startup {
    /// Fork into the background once the socket listens: the parent exits
    /// 0 then, so whoever started it can connect right away (what passt
    /// does without `--foreground`).
    pub background: bool,
    /// Write the serving process's id to this file (passt's `--pid`).
    pub pid_file: Option<std::path::PathBuf>,
    /// In the background, keep standard error (it is the `--log-file`);
    /// otherwise it goes to /dev/null like the other standard streams, so
    /// a parent reading the daemon's output sees it end.
    pub keep_stderr: bool,
}

/// The crates whose log records airlock-net shows below debug.
pub const LOG_TARGETS: &[&str] = &[
    "airlock_net",
    "airlock_netcore",
    "airlock_vhost",
    "airlock_common",
];

impl NetError {
    /// 2 for what the user asked for (no socket to serve, a --user or audit
    /// log path that cannot be used), 1 for failures while starting or
    /// running (a port or socket in use).
    pub fn exit_code(&self) -> u8 {
        use airlock_common::report::{EXIT_FAILURE, EXIT_USAGE};
        let usage = match self {
            NetError::Audit(_) | NetError::Pcap(_) => true,
            NetError::Listen(e) => e.is_usage(),
            NetError::Sandbox(e) => e.is_usage(),
            _ => false,
        };
        if usage {
            EXIT_USAGE
        } else {
            EXIT_FAILURE
        }
    }
}

/// The system calls airlock-net may make once it serves a guest.
pub const SECCOMP_ALLOW_LIST: &str = include_str!("../seccomp.allow");

/// Runs the daemon until a signal (or, with `--exit-on-disconnect`, the
/// first frontend's departure) ends it.
pub fn run(config: Config) -> Result<(), NetError> {
    run_with(config, Startup::default())
}

/// [`run`], with passt's start-up behaviour.
pub fn run_with(config: Config, startup: Startup) -> Result<(), NetError> {
    let audit = airlock_common::daemon::prepare(
        Nofile::Limit(config.rlimit_nofile),
        config.audit_log.as_deref(),
        config
            .listen
            .socket_path
            .iter()
            .chain(&config.api_socket)
            .map(|p| p.as_path()),
    )?;
    let pcap = match &config.pcap {
        Some((path, limit)) => Some(Arc::new(Pcap::create(path, *limit)?)),
        None => None,
    };
    // The private mount namespace, before any thread (threads spawned later
    // share it).
    airlock_common::sandbox::enter(&config.confine)?;
    let shared = Shared::new(
        config.gateway.guest_ip,
        config.policy.clone(),
        config.dns.clone(),
        audit,
    )?;
    // Published ports are bound before anything listens: a port in use is a
    // startup error, not a surprise later.
    shared.publish(&config.publish)?;
    let listener = config.listen.bind()?;
    // Everything a frontend needs is bound: the background process (passt
    // without --foreground) takes over here, before any thread exists.
    passt::detach(&startup)?;
    airlock_common::signals::install().map_err(NetError::Signals)?;
    // The control API (--api-socket): ports and DNS records at runtime,
    // stats, flows, leases. The socket file goes when `_api` drops or a
    // signal ends the process.
    let _api = match &config.api_socket {
        Some(path) => Some(api::start(
            path,
            api::Api::new(shared.clone(), api::GuestNet::new(&config.gateway)),
        )?),
        None => None,
    };
    // The host's resolv.conf is followed unless --dns-upstream fixed the
    // resolvers: watched from now on, and reread on SIGHUP.
    let reloader = config.resolv_conf.as_ref().map(|path| {
        Arc::new(resolv::Reloader::new(
            path.clone(),
            config.search_from_file,
            shared.clone(),
        ))
    });
    if let Some(r) = &reloader {
        resolv::watch(r.clone()).map_err(|e| NetError::Watch(r.path().to_owned(), e))?;
    }
    let reload = shared.clone();
    airlock_common::signals::on_hup(move || {
        if let Err(e) = reload.reload_policy() {
            log::error!(
                "{}; keeping the previous egress policy",
                airlock_common::report::chain(&e).replace('\n', "; ")
            );
        }
        if let Some(r) = &reloader {
            r.reload();
        }
    });
    // Everything is bound and open: read-only mounts, --user, seccomp.
    let serving_as = config.confine.switch_to().map(str::to_owned);
    airlock_common::sandbox::confine(&config.confine)?;
    if let Some(user) = serving_as {
        warn_unreachable_as_user(&config, &user);
    }
    airlock_common::seccomp::apply(SECCOMP_ALLOW_LIST, config.seccomp)?;
    let g = &config.gateway;
    let view = shared.dns.view();
    let upstreams: Vec<String> = view
        .upstreams()
        .iter()
        .map(|u| u.addr.to_string())
        .collect();
    log::info!(
        "gateway {}/{} for guest {}, mtu {}, dns upstream {} (from {}{}), search [{}]",
        g.gateway_ip,
        g.prefix_len,
        g.guest_ip,
        g.mtu,
        if upstreams.is_empty() {
            "none".to_owned()
        } else {
            upstreams.join(", ")
        },
        config.dns.source,
        if config.resolv_conf.is_some() {
            ", followed"
        } else {
            ""
        },
        view.search().join(" "),
    );
    match config.transport {
        Transport::VhostUser => {
            runner::run(listener, "airlock-net", config.exit_on_disconnect, || {
                NetSession::new(
                    config.gateway.clone(),
                    shared.clone(),
                    config.offloads,
                    pcap.clone(),
                )
            })?
        }
        Transport::Stream => stream::run(
            listener,
            &config.gateway,
            &shared,
            config.exit_on_disconnect,
            pcap.as_deref(),
        )?,
    }
    Ok(())
}

/// Paths airlock-net opens again once it serves as another user: the proxy
/// target's socket (at each proxied flow), the egress rules (on SIGHUP)
/// and the followed resolv.conf (when it changes, and on SIGHUP).
/// Says so at startup if `user` (which this process now is) may not,
/// rather than at the first flow or reload.
fn warn_unreachable_as_user(config: &Config, user: &str) {
    let mut wanted: Vec<(&std::path::Path, libc::c_int, String, &str)> = Vec::new();
    if let Some((_, airlock_netcore::host::Target::Unix(path))) = &config.gateway.proxy {
        wanted.push((
            path,
            libc::W_OK,
            format!("--proxy-target unix:{}", path.display()),
            "proxied connections will fail (airlock-proxy started as root gives its \
             sockets to the user it serves as: run both daemons as the same --user)",
        ));
    }
    if let Some(file) = &config.policy.file {
        wanted.push((
            file,
            libc::R_OK,
            format!("--egress-rules {}", file.display()),
            "SIGHUP will keep the rules read at startup",
        ));
    }
    if let Some(file) = &config.resolv_conf {
        wanted.push((
            file,
            libc::R_OK,
            format!("--resolv-conf {}", file.display()),
            "the DNS resolvers read at startup stay when it changes",
        ));
    }
    for (path, mode, what, consequence) in wanted {
        let Ok(c_path) = airlock_common::sandbox::cstr(path) else {
            continue;
        };
        // SAFETY: `c_path` is NUL-terminated. access(2) checks the real
        // uid, which the user switch has set.
        if unsafe { libc::access(c_path.as_ptr(), mode) } == 0 {
            continue;
        }
        let e = std::io::Error::last_os_error();
        // A proxy that is not up yet is found at the first proxied flow.
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            log::warn!(
                "{what}: user {user} may not reach it ({e}); it and every directory above \
                 it must be open to that user, or {consequence}"
            );
        }
    }
}

#[cfg(test)]
mod seccomp_list_tests {
    #[test]
    fn the_allow_list_compiles() {
        // Every name must be a system call of this architecture.
        airlock_common::seccomp::check_list(super::SECCOMP_ALLOW_LIST).expect("seccomp.allow");
    }
}
