//! One audit record per request or tunnel, written when it finishes.
//!
//! An [`Exchange`] collects what happened while the request is handled; it
//! is shared (`Arc`) by the handler, the response body and, for CONNECT, the
//! tunnel task. When the last of them lets go — the response body was sent
//! or dropped, or the tunnel closed — `Drop` writes the record with
//! [`AuditLog::record`] (which adds `time`):
//!
//! `{"time", "client", "method", "host", "port", "status", "bytes_up",
//! "bytes_down", "upstream", "duration_ms", "policy", "rule", "error"}`
//!
//! `bytes_up` counts request-body bytes (or, for a tunnel, bytes from client
//! to server), `bytes_down` response-body bytes (tunnel: server to client);
//! headers are not counted. `upstream` is `host:port` of the upstream proxy
//! used, or null. `policy` is "allow", "deny" or null (not evaluated, e.g. a
//! malformed request); `rule` the 1-based rule number that decided, or null
//! for the default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_common::audit::AuditLog;
use http::StatusCode;
use serde_json::{json, Value};

use crate::policy::Verdict;
use crate::target::Target;
use crate::upstream::Upstream;

/// Longest method string recorded (the method is client-controlled).
const MAX_METHOD_LEN: usize = 32;

#[derive(Default)]
struct Details {
    target: Option<Target>,
    status: Option<StatusCode>,
    upstream: Option<String>,
    verdict: Option<Verdict>,
    error: Option<String>,
}

/// What is known about one request or tunnel.
pub struct Exchange {
    audit: Option<Arc<AuditLog>>,
    client: Arc<str>,
    method: String,
    started: Instant,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    details: Mutex<Details>,
}

impl Exchange {
    pub fn new(audit: Option<Arc<AuditLog>>, client: Arc<str>, method: &str) -> Arc<Self> {
        Arc::new(Exchange {
            audit,
            client,
            method: method.chars().take(MAX_METHOD_LEN).collect(),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            details: Mutex::new(Details::default()),
        })
    }

    fn details(&self) -> std::sync::MutexGuard<'_, Details> {
        self.details.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_target(&self, target: &Target) {
        self.details().target = Some(target.clone());
    }

    pub fn set_status(&self, status: StatusCode) {
        self.details().status = Some(status);
    }

    pub fn set_upstream(&self, upstream: Option<&Upstream>) {
        self.details().upstream = upstream.map(|u| u.addr.to_string());
    }

    pub fn set_verdict(&self, verdict: Verdict) {
        self.details().verdict = Some(verdict);
    }

    /// Records what went wrong; the first error is kept.
    pub fn set_error(&self, error: impl Into<String>) {
        let mut d = self.details();
        if d.error.is_none() {
            d.error = Some(error.into());
        }
    }

    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    fn to_json(&self) -> Value {
        let d = self.details();
        let error = match (&d.error, d.status) {
            (Some(e), _) => Some(e.clone()),
            (None, None) => Some("closed before a response was sent".to_owned()),
            (None, Some(_)) => None,
        };
        json!({
            "client": &*self.client,
            "method": self.method,
            "host": d.target.as_ref().map(Target::host_plain),
            "port": d.target.as_ref().map(|t| t.port),
            "status": d.status.map(|s| s.as_u16()),
            "bytes_up": self.bytes_up.load(Ordering::Relaxed),
            "bytes_down": self.bytes_down.load(Ordering::Relaxed),
            "upstream": d.upstream,
            "duration_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "policy": d.verdict.map(|v| if v.allowed { "allow" } else { "deny" }),
            "rule": d.verdict.and_then(|v| v.rule),
            "error": error,
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let record = self.to_json();
        log::debug!("request finished: {record}");
        if let Some(audit) = &self.audit {
            audit.record(record);
        }
    }
}

/// Records a request hyper refused before it reached the proxy (malformed,
/// headers too large): hyper has already answered with `status`.
pub fn record_rejected(audit: Option<&AuditLog>, client: &str, status: StatusCode, error: String) {
    let record = json!({
        "client": client,
        "method": null,
        "host": null,
        "port": null,
        "status": status.as_u16(),
        "bytes_up": 0,
        "bytes_down": 0,
        "upstream": null,
        "duration_ms": 0,
        "policy": null,
        "rule": null,
        "error": error,
    });
    if let Some(audit) = audit {
        audit.record(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noproxy::Host;
    use crate::upstream::Source;

    #[test]
    fn record_has_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path).unwrap());
        let ex = Exchange::new(Some(log.clone()), Arc::from("127.0.0.1:5555"), "GET");
        let target = Target {
            host: Host::parse("example.com").unwrap(),
            port: 80,
        };
        ex.set_target(&target);
        ex.set_verdict(Verdict {
            allowed: true,
            rule: Some(2),
        });
        let up = Upstream::new(
            Target {
                host: Host::parse("proxy").unwrap(),
                port: 3128,
            },
            Source::Flag("upstream-http"),
            None,
        );
        ex.set_upstream(Some(&up));
        ex.set_status(StatusCode::OK);
        ex.add_up(3);
        ex.add_down(5);
        ex.add_down(5);
        drop(ex);
        let ex = Exchange::new(Some(log), Arc::from("c"), &"X".repeat(100));
        drop(ex);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let v = &lines[0];
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "time",
                "client",
                "method",
                "host",
                "port",
                "status",
                "bytes_up",
                "bytes_down",
                "upstream",
                "duration_ms",
                "policy",
                "rule",
                "error"
            ]
        );
        assert_eq!(v["client"], "127.0.0.1:5555");
        assert_eq!(v["host"], "example.com");
        assert_eq!(v["port"], 80);
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_up"], 3);
        assert_eq!(v["bytes_down"], 10);
        assert_eq!(v["upstream"], "proxy:3128");
        assert_eq!(v["policy"], "allow");
        assert_eq!(v["rule"], 2);
        assert_eq!(v["error"], Value::Null);
        let v = &lines[1];
        assert_eq!(v["method"].as_str().unwrap().len(), MAX_METHOD_LEN);
        assert_eq!(v["status"], Value::Null);
        assert_eq!(v["error"], "closed before a response was sent");
    }
}
