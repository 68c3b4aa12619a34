//! What outlives a single guest connection: counters, published ports, the
//! egress policy, the DNS service's live settings and the audit log. One
//! per process, shared with every gateway and with the control API.
//!
//! The control API never touches a gateway's state: it changes ports or
//! the policy here and wakes the gateway ([`Shared::control_fd`]), and it
//! asks about the current guest's flows and leases with a [`Query`] that
//! the gateway answers on its own thread ([`Shared::current_guest`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use airlock_api::{FlowInfo, Lease, PortSpec, Proto};
use airlock_common::audit::AuditLog;
use serde_json::json;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::policy::{Action, Policy, PolicyError, Rule};
use crate::publish::{PortTable, PublishError};
use crate::services::dhcp::LeaseInfo;
use crate::services::dns::{DnsError, DnsSettings, LiveDns, LocalRecord, RecordData};
use crate::stats::Stats;

/// Where the egress policy comes from (reloaded on SIGHUP).
#[derive(Clone, Debug, Default)]
pub struct PolicySource {
    /// `--allow`/`--deny`, evaluated first.
    pub cli_rules: Vec<Rule>,
    /// `--egress`.
    pub default: Option<Action>,
    /// `--egress-rules FILE`: more rules, and possibly the default.
    pub file: Option<PathBuf>,
}

impl PolicySource {
    /// Builds the policy: command-line rules, then the file's; the file's
    /// `default` line wins over `--egress`.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        let mut rules = self.cli_rules.clone();
        let mut default = self.default.unwrap_or(Action::Allow);
        if let Some(path) = &self.file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| PolicyError::Read(name.clone(), Arc::new(e)))?;
            let (file_rules, file_default) = Policy::parse_file(&name, &text)?;
            rules.extend(file_rules);
            if let Some(d) = file_default {
                default = d;
            }
        }
        Ok(Policy { rules, default })
    }
}

pub struct Shared {
    pub stats: Stats,
    /// The DNS service's resolvers, search list, zones and records; change
    /// them through [`Shared`]'s `dns_*` methods, which wake the gateway.
    pub dns: LiveDns,
    pub audit: Option<AuditLog>,
    pub guest_ip: Ipv4Addr,
    ports: Mutex<PortTable>,
    policy: RwLock<Arc<Policy>>,
    policy_source: PolicySource,
    control: EventFd,
    queries: Mutex<Queries>,
}

/// Questions for the gateway that serves the current guest.
#[derive(Default)]
struct Queries {
    /// Whether a gateway is serving a guest (and will answer).
    attached: bool,
    pending: Vec<Query>,
}

/// What the current guest has: its flows and DHCP leases.
#[derive(Debug, Clone, Default)]
pub struct GuestView {
    pub flows: Vec<FlowInfo>,
    pub leases: Vec<Lease>,
}

/// A question waiting for the gateway's answer.
pub(crate) struct Query(mpsc::Sender<GuestView>);

impl Query {
    pub(crate) fn answer(self, flows: Vec<FlowInfo>, leases: Vec<LeaseInfo>) {
        let leases = leases.iter().map(LeaseInfo::to_api).collect();
        // The asker may have given up waiting.
        let _ = self.0.send(GuestView { flows, leases });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("cannot create the control eventfd")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Shared {
    pub fn new(
        guest_ip: Ipv4Addr,
        policy_source: PolicySource,
        dns: DnsSettings,
        audit: Option<AuditLog>,
    ) -> Result<Arc<Shared>, SharedError> {
        let policy = policy_source.load()?;
        Ok(Arc::new(Shared {
            stats: Stats::default(),
            dns: LiveDns::new(dns),
            audit,
            guest_ip,
            ports: Mutex::new(PortTable::default()),
            policy: RwLock::new(Arc::new(policy)),
            policy_source,
            control: EventFd::new(EFD_NONBLOCK).map_err(SharedError::EventFd)?,
            queries: Mutex::new(Queries::default()),
        }))
    }

    /// Writes an audit record if `--audit-log` is on.
    pub fn audit(&self, fields: serde_json::Value) {
        if let Some(log) = &self.audit {
            log.record(fields);
        }
    }

    // ---- policy ------------------------------------------------------------

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rereads the policy (SIGHUP). On error the old policy stays in force.
    /// Established flows the new policy denies are closed by the session.
    pub fn reload_policy(&self) -> Result<(), PolicyError> {
        let policy = self.policy_source.load()?;
        let n = policy.rules.len();
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        log::info!("egress policy reloaded: {n} rules");
        self.audit(json!({"event": "policy-reload", "rules": n}));
        self.notify();
        Ok(())
    }

    // ---- DNS -------------------------------------------------------------------

    /// New upstream resolvers (and search list, with `Some`) after a
    /// reload of `source`; returns whether anything changed.
    pub fn dns_set_upstreams(
        &self,
        upstreams: &[SocketAddr],
        search: Option<Vec<String>>,
        source: &str,
    ) -> bool {
        if !self.dns.set_upstreams(upstreams, search) {
            return false;
        }
        let view = self.dns.view();
        let list: Vec<String> = view
            .upstreams()
            .iter()
            .map(|u| u.addr.to_string())
            .collect();
        log::info!(
            "dns: upstream {} (from {source}), search [{}]",
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            },
            view.search().join(" ")
        );
        self.audit(json!({
            "event": "dns-upstreams", "source": source, "upstreams": list, "search": view.search(),
        }));
        self.notify();
        true
    }

    /// Adds a local record (control API); `Ok(false)`: it existed already.
    pub fn dns_add_record(&self, name: &str, data: RecordData) -> Result<bool, DnsError> {
        let added = self.dns.add_record(name, data.clone())?;
        if added {
            log::info!("dns: added {name} {} {data}", data.type_name());
            self.audit(json!({
                "event": "dns-add", "name": name, "type": data.type_name(), "value": data.to_string(),
            }));
            self.notify();
        }
        Ok(added)
    }

    /// Removes local records (control API); see [`LiveDns::remove_records`].
    pub fn dns_remove_records(
        &self,
        name: &str,
        data: Option<&RecordData>,
    ) -> Result<Vec<LocalRecord>, DnsError> {
        let gone = self.dns.remove_records(name, data)?;
        for r in &gone {
            log::info!("dns: removed {} {} {}", r.name, r.data.type_name(), r.data);
            self.audit(json!({
                "event": "dns-remove", "name": r.name, "type": r.data.type_name(), "value": r.data.to_string(),
            }));
        }
        self.notify();
        Ok(gone)
    }

    /// gvisor-tap-vsock's `/services/dns/add`; see [`LiveDns::add_gv_zone`].
    pub fn dns_add_gv_zone(
        &self,
        zone: &str,
        records: &[(String, std::net::IpAddr)],
        default: Option<std::net::IpAddr>,
    ) -> Result<String, DnsError> {
        let zone = self.dns.add_gv_zone(zone, records, default)?;
        log::info!("dns: zone {zone} is local, {} records set", records.len());
        self.audit(json!({
            "event": "dns-zone", "zone": zone, "records": records.len(),
            "default": default.map(|ip| ip.to_string()),
        }));
        self.notify();
        Ok(zone)
    }

    // ---- published ports -----------------------------------------------------

    pub fn publish(&self, specs: &[PortSpec]) -> Result<(), PublishError> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expose(specs)?;
        for s in specs {
            log::info!("published {s}");
            self.audit(json!({
                "event": "publish", "proto": s.proto, "host": s.host.to_string(), "guest": s.guest.to_string(),
            }));
        }
        self.notify();
        Ok(())
    }

    pub fn unpublish(&self, host: SocketAddr, proto: Proto) -> Result<PortSpec, PublishError> {
        let s = self
            .ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unexpose(host, proto)?;
        log::info!("unpublished {s}");
        self.audit(json!({
            "event": "unpublish", "proto": s.proto, "host": s.host.to_string(), "guest": s.guest.to_string(),
        }));
        self.notify();
        Ok(s)
    }

    pub fn published(&self) -> Vec<PortSpec> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).specs()
    }

    /// Runs `f` with the port table locked (the session's worker).
    pub(crate) fn with_ports<R>(&self, f: impl FnOnce(&PortTable) -> R) -> R {
        f(&self.ports.lock().unwrap_or_else(|e| e.into_inner()))
    }

    // ---- the current session ---------------------------------------------

    /// Readable when ports or the policy changed and the session must catch up.
    pub fn control_fd(&self) -> RawFd {
        self.control.as_raw_fd()
    }

    pub fn notify(&self) {
        let _ = self.control.write(1);
    }

    /// Consumes pending notifications and returns the questions to answer.
    pub(crate) fn take_notification(&self) -> Vec<Query> {
        let _ = self.control.read();
        std::mem::take(
            &mut self
                .queries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pending,
        )
    }

    /// A gateway serves a guest from now on ([`Shared::detach`] when it
    /// stops): it answers [`Shared::current_guest`].
    pub fn attach(&self) {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attached = true;
    }

    /// The guest went away: questions still waiting get an empty answer.
    pub fn detach(&self) {
        let pending = {
            let mut q = self.queries.lock().unwrap_or_else(|e| e.into_inner());
            q.attached = false;
            std::mem::take(&mut q.pending)
        };
        for query in pending {
            query.answer(Vec::new(), Vec::new());
        }
    }

    /// The current guest's flows and leases (empty when no guest is
    /// attached), as its gateway answers within `timeout`; `None` if it
    /// did not answer in time.
    pub fn current_guest(&self, timeout: Duration) -> Option<GuestView> {
        let (tx, rx) = mpsc::channel();
        {
            let mut q = self.queries.lock().unwrap_or_else(|e| e.into_inner());
            if !q.attached {
                return Some(GuestView::default());
            }
            q.pending.push(Query(tx));
        }
        self.notify();
        rx.recv_timeout(timeout).ok()
    }
}
