//! airlock-net: a vhost-user-net daemon that is the guest's NAT gateway.
//! The gateway itself — frames in, host sockets out — is
//! [`airlock_netcore`]; this crate is what carries its frames and runs it:
//!
//! - [`device`] / `virtio_net`: the virtqueues (frames to and from guest
//!   memory) and the vhost-user backend;
//! - [`args`], [`config`]: the command line;
//! - [`api`]: the control API (`--api-socket`): ports and DNS records at
//!   runtime, stats, flows, leases;
//! - [`resolv`]: following the host's resolv.conf.

pub mod api;
pub mod args;
pub mod config;
pub mod device;
pub mod resolv;
mod virtio_net;

use std::sync::Arc;

use airlock_common::audit::AuditOpenError;
use airlock_common::daemon::Nofile;
use airlock_common::listen::ListenError;
use airlock_netcore::publish::PublishError;
use airlock_netcore::{Shared, SharedError};
use airlock_vhost::runner::{self, RunError};

use crate::config::Config;
use crate::device::NetSession;

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
}

/// The system calls airlock-net may make once it serves a guest.
pub const SECCOMP_ALLOW_LIST: &str = include_str!("../seccomp.allow");

/// Runs the daemon until a signal (or, with `--exit-on-disconnect`, the
/// first frontend's departure) ends it.
pub fn run(config: Config) -> Result<(), NetError> {
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
    // The private mount namespace, before any thread (threads spawned later
    // share it).
    airlock_common::sandbox::enter(&config.confine)?;
    airlock_common::signals::install().map_err(NetError::Signals)?;
    let shared = Shared::new(
        config.gateway.guest_ip,
        config.policy.clone(),
        config.dns.clone(),
        audit,
    )?;
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
    // Published ports are bound before anything listens: a port in use is a
    // startup error, not a surprise later.
    shared.publish(&config.publish)?;
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
    let listener = config.listen.bind()?;
    // Everything is bound and open: read-only mounts, --user, seccomp.
    airlock_common::sandbox::confine(&config.confine)?;
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
    runner::run(listener, "airlock-net", config.exit_on_disconnect, || {
        NetSession::new(config.gateway.clone(), shared.clone(), config.offer_csum)
    })?;
    Ok(())
}

#[cfg(test)]
mod seccomp_list_tests {
    #[test]
    fn the_allow_list_compiles() {
        // Every name must be a system call of this architecture.
        airlock_common::seccomp::check_list(super::SECCOMP_ALLOW_LIST).expect("seccomp.allow");
    }
}
