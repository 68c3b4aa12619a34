//! What the connections of one airlock-proxy share ([`Shared`]: upstreams,
//! policy, audit, limits) and what one client connection holds
//! ([`ClientConn`]: its kept-alive origin connection and its slot). The
//! server and both ways of serving a request (forward, tunnel) use them;
//! this module uses none of those.

use std::sync::{Arc, Mutex};

use airlock_common::audit::AuditLog;
use airlock_common::ratelimited;
use http::{Response, StatusCode};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::Exchange;
use crate::body::ProxyBody;
use crate::config::Limits;
use crate::connect::Loops;
use crate::policy::Policy;
use crate::response;
use crate::target::Target;
use crate::upstream::Upstreams;

/// Connections being refused (503) at once, beyond which they are just
/// closed.
const MAX_REFUSING: usize = 64;

/// What every connection needs.
pub struct Shared {
    pub upstreams: Upstreams,
    pub policy: Policy,
    pub audit: Option<Arc<AuditLog>>,
    pub limits: Limits,
    /// The proxy's own addresses, never connected to.
    pub loops: Loops,
    pub(crate) refusing: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        upstreams: Upstreams,
        policy: Policy,
        audit: Option<Arc<AuditLog>>,
        limits: Limits,
    ) -> Shared {
        Shared {
            upstreams,
            policy,
            audit,
            limits,
            loops: Loops::default(),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }

    /// Applies the policy to `target`: `Some` is the 403 to send instead.
    pub fn refusal(
        &self,
        target: &Target,
        exchange: &Arc<Exchange>,
        client: &str,
    ) -> Option<Response<ProxyBody>> {
        let verdict = self.policy.evaluate(&target.host);
        exchange.set_verdict(verdict);
        if verdict.allowed {
            return None;
        }
        let why = self.policy.explain(&verdict);
        ratelimited!(
            log::Level::Info,
            "{client}: {target} forbidden by policy: {why}"
        );
        Some(response::text(
            StatusCode::FORBIDDEN,
            Some("http_request_denied"),
            format!(
                "forbidden by policy: {why}\n\
                 {target} may not be reached through airlock-proxy.\n"
            ),
            exchange,
        ))
    }
}

/// One client connection: who it is, its kept-alive origin connection, and
/// its `--max-connections` slot (held until the connection and any tunnel
/// it became are gone).
pub struct ClientConn {
    pub client: Arc<str>,
    kept: Mutex<Option<Pooled>>,
    _slot: OwnedSemaphorePermit,
}

impl ClientConn {
    pub fn new(client: Arc<str>, slot: OwnedSemaphorePermit) -> ClientConn {
        ClientConn {
            client,
            kept: Mutex::new(None),
            _slot: slot,
        }
    }

    pub fn take_kept(&self) -> Option<Pooled> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn keep(&self, pooled: Pooled) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(pooled);
    }
}

/// Which connection a kept-alive origin connection leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolKey {
    Direct(Target),
    Upstream(Target),
}

/// A kept-alive connection held by a [`ClientConn`].
pub struct Pooled {
    pub key: PoolKey,
    pub sender: SendRequest<ProxyBody>,
}
