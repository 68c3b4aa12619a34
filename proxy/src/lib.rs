//! airlock-proxy: the HTTP/HTTPS forward proxy an Airlock guest reaches at
//! `http.airlock.internal:3128`.
//!
//! - [`noproxy`], [`policy`], [`upstream`], [`headers`], [`target`],
//!   [`credentials`]: transport-free logic (NO_PROXY matching with curl's
//!   semantics, allow/deny rules, upstream selection, hop-by-hop headers),
//!   unit-tested without sockets;
//! - [`server`]: listeners, connection limit, idle timeout, dispatch;
//!   [`forward`]: plain-HTTP requests; [`tunnel`]: CONNECT;
//!   [`connect`]: dialing; [`audit`]: one JSON line per request.

use std::sync::Arc;
use std::time::Duration;

use airlock_common::audit::AuditOpenError;
use airlock_common::daemon::Nofile;
use airlock_common::report::{EXIT_FAILURE, EXIT_USAGE};

pub mod audit;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod credentials;
pub mod forward;
pub mod headers;
pub mod io;
pub mod noproxy;
pub mod policy;
pub mod response;
pub mod server;
pub mod target;
pub mod tunnel;
pub mod upstream;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Sandbox(#[from] airlock_common::sandbox::SandboxError),
}

/// The system calls airlock-proxy may make once it serves clients.
pub const SECCOMP_ALLOW_LIST: &str = include_str!("../seccomp.allow");

impl RunError {
    /// 2 for what the user asked for (an audit log path that cannot be
    /// opened, a --user that does not exist), 1 for failures while starting
    /// or running (port in use).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Audit(_) => EXIT_USAGE,
            RunError::Sandbox(e) | RunError::Server(server::ServerError::Sandbox(e))
                if e.is_usage() =>
            {
                EXIT_USAGE
            }
            RunError::Runtime(_) | RunError::Server(_) | RunError::Sandbox(_) => EXIT_FAILURE,
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), RunError> {
    // The private mount namespace before the runtime's threads exist.
    let audit = airlock_common::daemon::prepare(
        Nofile::Limit(config.rlimit_nofile),
        config.audit_log.as_deref(),
        config.listen.iter().filter_map(|l| match l {
            config::Listen::Unix(socket) => Some(socket.as_path()),
            _ => None,
        }),
    )?
    .map(Arc::new);
    airlock_common::sandbox::enter(&config.confine)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("airlock-proxy")
        .build()
        .map_err(RunError::Runtime)?;
    let result = runtime.block_on(server::run(config, audit));
    // Tasks still running (open tunnels, DNS lookups) are abandoned.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(result?)
}

#[cfg(test)]
mod seccomp_list_tests {
    #[test]
    fn the_allow_list_compiles() {
        // Every name must be a system call of this architecture.
        airlock_common::seccomp::check_list(super::SECCOMP_ALLOW_LIST).expect("seccomp.allow");
    }
}
