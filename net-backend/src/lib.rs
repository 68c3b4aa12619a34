//! airlock-net: a vhost-user-net daemon that is the guest's NAT gateway.
//!
//! - [`gateway`]: frames in, host sockets out — ARP, DHCP, DNS, TCP/UDP/ICMP
//!   NAT — with no knowledge of virtqueues;
//! - [`device`] / [`virtio_net`]: the virtqueues (frames to and from guest
//!   memory) and the vhost-user backend;
//! - [`dhcp`], [`dns`]: the gateway's services, pure message handling;
//! - [`args`], [`config`]: the command line.
//! - [`api`]: the control API (`--api-socket`): ports at runtime, stats,
//!   flows, leases.
//! - `fuzzing` (hidden): the fuzz targets' bodies (`fuzz/`).

pub mod api;
pub mod args;
pub mod config;
pub mod device;
pub mod dhcp;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod policy;
pub mod publish;
pub mod shared;
pub mod virtio_net;

use airlock_common::listen::ListenError;
use airlock_common::runner::{self, RunError};

use airlock_common::audit::{AuditLog, AuditOpenError};

use crate::config::Config;
use crate::device::NetSession;
use crate::publish::PublishError;
use crate::shared::{Shared, SharedError};

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
}

/// Runs the daemon until a signal (or, with `--exit-on-disconnect`, the
/// first frontend's departure) ends it.
pub fn run(config: Config) -> Result<(), NetError> {
    let audit = config
        .audit_log
        .as_deref()
        .map(AuditLog::open)
        .transpose()?;
    let shared = Shared::new(config.gateway.guest_ip, config.policy.clone(), audit)?;
    // The control API (--api-socket): ports at runtime, stats, flows, leases.
    // The socket file goes when `_api` drops or a signal ends the process.
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
    let reload = shared.clone();
    airlock_common::signals::on_hup(move || {
        if let Err(e) = reload.reload_policy() {
            log::error!(
                "{}; keeping the previous egress policy",
                airlock_common::report::chain(&e).replace('\n', "; ")
            );
        }
    });
    let listener = config.listen.bind()?;
    let g = &config.gateway;
    log::info!(
        "gateway {}/{} for guest {}, mtu {}, dns upstream {} (from {})",
        g.gateway_ip,
        g.prefix_len,
        g.guest_ip,
        g.mtu,
        if g.dns_upstreams.is_empty() {
            "none".to_owned()
        } else {
            g.dns_upstreams
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        config.upstream_source,
    );
    runner::run(listener, "airlock-net", config.exit_on_disconnect, || {
        NetSession::new(config.gateway.clone(), shared.clone(), config.offer_csum)
    })?;
    Ok(())
}
