//! The egress policy at the moment a guest opens a flow: the decision,
//! counted, logged and audited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::policy::{Decision, Proto};
use crate::shared::Shared;
use crate::stats::DropReason;

/// How often a guest retrying a denied flow is audited: once per flow key
/// in this window.
const DENY_AUDIT_WINDOW: Duration = Duration::from_secs(10);

/// Asks the egress policy about new flows, and counts, logs and audits
/// denials without letting a guest that retries flood the audit log.
#[derive(Default)]
pub(crate) struct EgressCheck {
    /// When a denied flow was last written to the audit log.
    denied: HashMap<(Proto, SocketAddr, SocketAddr), Instant>,
}

impl EgressCheck {
    pub(crate) fn check(
        &mut self,
        shared: &Shared,
        proto: Proto,
        guest: SocketAddr,
        remote: SocketAddr,
    ) -> Decision {
        let port = (proto != Proto::Icmp).then_some(remote.port());
        let decision = shared.policy().decide(proto, remote.ip(), port);
        if !decision.allowed() {
            shared.stats.dropped(DropReason::Policy);
            shared.stats.flow_refused(proto);
            let now = Instant::now();
            let key = (proto, guest, remote);
            let recent = self
                .denied
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < DENY_AUDIT_WINDOW);
            if !recent {
                if self.denied.len() > 4096 {
                    self.denied
                        .retain(|_, t| now.duration_since(*t) < DENY_AUDIT_WINDOW);
                }
                self.denied.insert(key, now);
                log::info!(
                    "egress {proto} {guest} -> {remote}: {}",
                    decision.describe()
                );
                shared.audit(json!({
                    "event": "flow-deny", "proto": proto, "guest": guest.to_string(),
                    "remote": remote.to_string(), "decision": decision.describe(),
                }));
            }
        }
        decision
    }
}
