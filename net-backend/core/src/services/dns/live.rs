//! The DNS service's settings while the daemon runs: the resolvers (which
//! follow the host's resolv.conf), the search list, the zones and the
//! local records. [`LiveDns`] holds the current [`DnsView`], an immutable
//! snapshot: a query takes the view of the moment it arrives and keeps it
//! until it is answered, so a reload never changes a query in flight. The
//! control API, SIGHUP and the resolv.conf watcher replace the view; the
//! gateway reads it (an `Arc` clone under a read lock) and is woken to
//! pass the search list on to DHCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use airlock_api::{DnsInfo, DnsRecord, DnsStats, DnsZone, GvRecord, GvZone};

use super::records::{normalize_name, LocalRecord, LocalRecords, RecordData, RecordSource};
use super::upstream::Upstream;
use super::{in_zone, DnsError};

/// Most upstreams whose counters are kept once they are no longer in use.
const MAX_KNOWN_UPSTREAMS: usize = 256;
/// Most names in the search list.
pub const MAX_SEARCH: usize = 32;

/// Where a zone's names go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneTarget {
    /// Answered from local records; other names get NXDOMAIN.
    Local,
    /// Only these resolvers, in order.
    Upstreams(Vec<SocketAddr>),
}

/// A zone as configured (`--dns-zone`, the gateway's own zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    /// Lowercase, no trailing dot.
    pub name: String,
    pub target: ZoneTarget,
}

/// The DNS service at start.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// Resolvers for names outside every zone, in order.
    pub upstreams: Vec<SocketAddr>,
    /// Where they came from (a resolv.conf path, `--dns-upstream`).
    pub source: String,
    /// Search list for DHCP (normalised, see [`normalize_search`]).
    pub search: Vec<String>,
    pub zones: Vec<ZoneSpec>,
    pub records: LocalRecords,
}

/// Where one name's queries go.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// A local zone: answered here.
    Local,
    /// These resolvers, in configured order (empty: nobody to ask).
    Upstreams(&'a [Arc<Upstream>]),
}

#[derive(Debug, Clone)]
enum ZoneRoute {
    Local,
    Upstreams(Vec<Arc<Upstream>>),
}

#[derive(Debug, Clone)]
struct Zone {
    name: String,
    route: ZoneRoute,
}

/// The DNS service's settings at one moment.
#[derive(Debug, Clone)]
pub struct DnsView {
    /// Increases with every change.
    pub generation: u64,
    pub records: LocalRecords,
    /// Longest name first, so the first match is the longest.
    zones: Vec<Zone>,
    upstreams: Vec<Arc<Upstream>>,
    search: Vec<String>,
    source: String,
}

impl DnsView {
    /// The search list (DHCPv4 options 15 and 119; DHCPv6 option 24 and
    /// the RA's DNSSL can use it too, with [`super::encode_names`]).
    pub fn search(&self) -> &[String] {
        &self.search
    }

    /// The resolvers for names outside every zone.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Where queries for `name` (lowercase, no trailing dot) go: the
    /// longest zone containing it, else the resolvers.
    pub fn route(&self, name: &str) -> Route<'_> {
        match self.zones.iter().find(|z| in_zone(name, &z.name)) {
            Some(Zone {
                route: ZoneRoute::Local,
                ..
            }) => Route::Local,
            Some(Zone {
                route: ZoneRoute::Upstreams(list),
                ..
            }) => Route::Upstreams(list),
            None => Route::Upstreams(&self.upstreams),
        }
    }

    /// Every upstream this view may send to (for the counters' `in_use`).
    fn all_upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> + '_ {
        self.upstreams
            .iter()
            .chain(self.zones.iter().flat_map(|z| match &z.route {
                ZoneRoute::Upstreams(list) => list.as_slice(),
                ZoneRoute::Local => &[],
            }))
    }

    /// `GET /dns`.
    pub fn info(&self) -> DnsInfo {
        let mut zones: Vec<DnsZone> = self
            .zones
            .iter()
            .map(|z| DnsZone {
                zone: z.name.clone(),
                target: match &z.route {
                    ZoneRoute::Local => "local".to_owned(),
                    ZoneRoute::Upstreams(list) => list
                        .iter()
                        .map(|u| u.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                },
            })
            .collect();
        zones.sort_by(|a, b| a.zone.cmp(&b.zone));
        DnsInfo {
            source: self.source.clone(),
            upstreams: self.upstreams.iter().map(|u| u.addr.to_string()).collect(),
            search: self.search.clone(),
            zones,
            records: self.records.iter().map(api_record).collect(),
        }
    }

    /// `GET /services/dns/all`: the local zones in gvisor-tap-vsock's
    /// shape, with the address records below each (names relative to the
    /// zone) and its wildcard address as `DefaultIP`.
    pub fn gv_zones(&self) -> Vec<GvZone> {
        let mut out: Vec<GvZone> = self
            .zones
            .iter()
            .filter(|z| matches!(z.route, ZoneRoute::Local))
            .map(|z| {
                let suffix = format!(".{}", z.name);
                let mut zone = GvZone {
                    name: format!("{}.", z.name),
                    ..GvZone::default()
                };
                for r in self.records.iter() {
                    let (RecordData::A(_) | RecordData::Aaaa(_)) = r.data else {
                        continue;
                    };
                    let Some(relative) = r.name.strip_suffix(&suffix) else {
                        continue;
                    };
                    if relative == "*" {
                        zone.default_ip = r.data.to_string();
                    } else if !relative.starts_with("*.") {
                        zone.records.push(GvRecord {
                            name: relative.to_owned(),
                            ip: r.data.to_string(),
                            regexp: None,
                        });
                    }
                }
                zone
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// A record as the API shows it.
pub fn api_record(r: &LocalRecord) -> DnsRecord {
    DnsRecord {
        name: r.name.clone(),
        rtype: Some(r.data.type_name().to_owned()),
        value: r.data.to_string(),
        source: Some(r.source.name().to_owned()),
    }
}

/// `list` as a search list: valid names, lowercase, without trailing dots
/// or duplicates, at most [`MAX_SEARCH`]. Names that are not valid host
/// names (`.`, `bad..name`) are left out.
pub fn normalize_search<S: AsRef<str>>(list: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in list {
        match normalize_name(name.as_ref(), false) {
            Ok(n) if !out.contains(&n) => out.push(n),
            Ok(_) => {}
            Err(e) => log::debug!("dns: search domain left out: {e}"),
        }
    }
    out.truncate(MAX_SEARCH);
    out
}

/// The DNS service's live settings and counters. One per process, in
/// [`crate::Shared`].
#[derive(Debug)]
pub struct LiveDns {
    view: RwLock<Arc<DnsView>>,
    /// Every upstream used so far, so a reload that keeps an address
    /// keeps its health and counters.
    known: Mutex<Vec<Arc<Upstream>>>,
    local: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
}

impl LiveDns {
    pub fn new(settings: DnsSettings) -> LiveDns {
        let live = LiveDns {
            view: RwLock::new(Arc::new(DnsView {
                generation: 0,
                records: settings.records,
                zones: Vec::new(),
                upstreams: Vec::new(),
                search: normalize_search(&settings.search),
                source: settings.source,
            })),
            known: Mutex::new(Vec::new()),
            local: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let upstreams = live.upstreams(&settings.upstreams);
        let mut zones: Vec<Zone> = Vec::new();
        for spec in settings.zones {
            let route = match spec.target {
                ZoneTarget::Local => ZoneRoute::Local,
                ZoneTarget::Upstreams(list) => ZoneRoute::Upstreams(live.upstreams(&list)),
            };
            zones.retain(|z| z.name != spec.name);
            zones.push(Zone {
                name: spec.name,
                route,
            });
        }
        sort_zones(&mut zones);
        live.update(|v| {
            v.upstreams = upstreams;
            v.zones = zones;
        });
        live
    }

    /// The current settings.
    pub fn view(&self) -> Arc<DnsView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes a copy of the view and makes it current (a new generation).
    fn update<R>(&self, change: impl FnOnce(&mut DnsView) -> R) -> R {
        let mut slot = self.view.write().unwrap_or_else(|e| e.into_inner());
        let mut next = DnsView::clone(&slot);
        let result = change(&mut next);
        next.generation = slot.generation + 1;
        *slot = Arc::new(next);
        result
    }

    /// [`LiveDns::update`] for a change that may fail: nothing changes then.
    fn try_update<R>(
        &self,
        change: impl FnOnce(&mut DnsView) -> Result<R, DnsError>,
    ) -> Result<R, DnsError> {
        let mut slot = self.view.write().unwrap_or_else(|e| e.into_inner());
        let mut next = DnsView::clone(&slot);
        let result = change(&mut next)?;
        next.generation = slot.generation + 1;
        *slot = Arc::new(next);
        Ok(result)
    }

    /// The [`Upstream`] of each address, the same one for an address every
    /// time.
    fn upstreams(&self, addrs: &[SocketAddr]) -> Vec<Arc<Upstream>> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<Upstream>> = Vec::new();
        for addr in addrs {
            if out.iter().any(|u| u.addr == *addr) {
                continue;
            }
            let upstream = match known.iter().find(|u| u.addr == *addr) {
                Some(u) => u.clone(),
                None => {
                    if known.len() >= MAX_KNOWN_UPSTREAMS {
                        // Forget those no view or query holds any more.
                        known.retain(|u| Arc::strong_count(u) > 1);
                    }
                    let u = Upstream::new(*addr);
                    known.push(u.clone());
                    u
                }
            };
            out.push(upstream);
        }
        out
    }

    /// New resolvers (and, with `Some`, a new search list), from a reload.
    /// Returns whether anything changed; queries in flight keep the
    /// resolvers they started with.
    pub fn set_upstreams(&self, addrs: &[SocketAddr], search: Option<Vec<String>>) -> bool {
        let upstreams = self.upstreams(addrs);
        let search = search.map(|s| normalize_search(&s));
        let current = self.view();
        let same_upstreams = current
            .upstreams
            .iter()
            .map(|u| u.addr)
            .eq(upstreams.iter().map(|u| u.addr));
        let same_search = search.as_ref().is_none_or(|s| *s == current.search);
        if same_upstreams && same_search {
            return false;
        }
        self.update(|v| {
            v.upstreams = upstreams;
            if let Some(s) = search {
                v.search = s;
            }
        });
        true
    }

    /// Adds a record from the control API. `Ok(false)`: it existed already.
    pub fn add_record(&self, name: &str, data: RecordData) -> Result<bool, DnsError> {
        self.try_update(|v| v.records.add(name, data, RecordSource::Api))
    }

    /// Removes the records of `name` (only the one equal to `data`, if
    /// given). Built-in names cannot be removed; removing nothing is an
    /// error.
    pub fn remove_records(
        &self,
        name: &str,
        data: Option<&RecordData>,
    ) -> Result<Vec<LocalRecord>, DnsError> {
        self.try_update(|v| {
            let gone = v.records.remove(name, data);
            if gone.is_empty() {
                return Err(DnsError::NoSuchRecord(name.to_owned()));
            }
            if let Some(b) = gone.iter().find(|r| r.source == RecordSource::Builtin) {
                return Err(DnsError::BuiltinRecord(b.name.clone()));
            }
            Ok(gone)
        })
    }

    /// gvisor-tap-vsock's `/services/dns/add`: `zone` becomes a local zone
    /// (unless it already has a rule), each `(name, ip)` the only address
    /// record of `name.zone`, and `default` the address of every other name
    /// in it (`None` removes a previous one). All or nothing.
    pub fn add_gv_zone(
        &self,
        zone: &str,
        records: &[(String, IpAddr)],
        default: Option<IpAddr>,
    ) -> Result<String, DnsError> {
        let zone = normalize_name(zone, false)?;
        self.try_update(|v| {
            for (name, ip) in records {
                let full = normalize_name(&format!("{name}.{zone}"), false)?;
                let stale: Vec<RecordData> = v
                    .records
                    .iter()
                    .filter(|r| r.name == full && r.source != RecordSource::Builtin)
                    .filter(|r| !matches!(r.data, RecordData::Cname(_)))
                    .map(|r| r.data.clone())
                    .collect();
                for d in &stale {
                    v.records.remove(&full, Some(d));
                }
                v.records
                    .add(&full, RecordData::from(*ip), RecordSource::Api)?;
            }
            let wildcard = format!("*.{zone}");
            let stale: Vec<RecordData> = v
                .records
                .iter()
                .filter(|r| r.name == wildcard && r.source == RecordSource::Api)
                .map(|r| r.data.clone())
                .collect();
            for d in &stale {
                v.records.remove(&wildcard, Some(d));
            }
            if let Some(ip) = default {
                v.records
                    .add(&wildcard, RecordData::from(ip), RecordSource::Api)?;
            }
            if !v.zones.iter().any(|z| z.name == zone) {
                v.zones.push(Zone {
                    name: zone.clone(),
                    route: ZoneRoute::Local,
                });
                sort_zones(&mut v.zones);
            }
            Ok(zone)
        })
    }

    pub(crate) fn count_local(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, with every upstream known so far (those of the current
    /// view marked `in_use`).
    pub fn stats(&self) -> DnsStats {
        let view = self.view();
        let now = Instant::now();
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        DnsStats {
            local: self.local.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            upstreams: known
                .iter()
                .map(|u| u.stats(view.all_upstreams().any(|v| Arc::ptr_eq(u, v)), now))
                .collect(),
        }
    }
}

fn sort_zones(zones: &mut [Zone]) {
    zones.sort_by(|a, b| b.name.len().cmp(&a.name.len()).then(a.name.cmp(&b.name)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn settings() -> DnsSettings {
        let mut records = LocalRecords::new();
        records
            .add(
                "gateway.airlock.internal",
                RecordData::A(Ipv4Addr::new(192, 168, 127, 1)),
                RecordSource::Builtin,
            )
            .unwrap();
        DnsSettings {
            upstreams: vec![addr("127.0.0.1:53"), addr("127.0.0.2:53")],
            source: "/etc/resolv.conf".into(),
            search: vec![
                "Corp.Example.".into(),
                "bad..name".into(),
                "corp.example".into(),
            ],
            zones: vec![
                ZoneSpec {
                    name: "airlock.internal".into(),
                    target: ZoneTarget::Local,
                },
                ZoneSpec {
                    name: "corp.example".into(),
                    target: ZoneTarget::Upstreams(vec![addr("10.0.0.53:53")]),
                },
                ZoneSpec {
                    name: "lab.corp.example".into(),
                    target: ZoneTarget::Upstreams(vec![addr("10.1.0.53:5353")]),
                },
            ],
            records,
        }
    }

    fn route(v: &DnsView, name: &str) -> String {
        match v.route(name) {
            Route::Local => "local".into(),
            Route::Upstreams(list) => list
                .iter()
                .map(|u| u.addr.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    #[test]
    fn the_longest_zone_wins() {
        let live = LiveDns::new(settings());
        let v = live.view();
        assert_eq!(v.search(), ["corp.example"]);
        assert_eq!(route(&v, "a.corp.example"), "10.0.0.53:53");
        assert_eq!(route(&v, "corp.example"), "10.0.0.53:53");
        assert_eq!(route(&v, "x.lab.corp.example"), "10.1.0.53:5353");
        assert_eq!(route(&v, "nope.airlock.internal"), "local");
        assert_eq!(route(&v, "notcorp.example"), "127.0.0.1:53,127.0.0.2:53");
        assert_eq!(route(&v, "example"), "127.0.0.1:53,127.0.0.2:53");
    }

    #[test]
    fn reloads_make_new_views_and_keep_upstream_state() {
        let live = LiveDns::new(settings());
        let before = live.view();
        let first = before.upstreams()[0].clone();
        first.sent();
        assert!(!live.set_upstreams(&[addr("127.0.0.1:53"), addr("127.0.0.2:53")], None));
        assert!(live.set_upstreams(&[addr("127.0.0.3:53"), addr("127.0.0.1:53")], None));
        let after = live.view();
        assert!(after.generation > before.generation);
        assert_eq!(
            route(&before, "x.test"),
            "127.0.0.1:53,127.0.0.2:53",
            "old view kept"
        );
        assert_eq!(route(&after, "x.test"), "127.0.0.3:53,127.0.0.1:53");
        assert!(
            Arc::ptr_eq(&after.upstreams()[1], &first),
            "same address, same state"
        );
        assert!(live.set_upstreams(
            &[addr("127.0.0.3:53"), addr("127.0.0.1:53")],
            Some(vec!["b.test".into()])
        ));
        assert_eq!(live.view().search(), ["b.test"]);
        let stats = live.stats();
        let one = stats
            .upstreams
            .iter()
            .find(|u| u.address == "127.0.0.1:53")
            .unwrap();
        assert_eq!((one.queries, one.in_use), (1, true));
        let two = stats
            .upstreams
            .iter()
            .find(|u| u.address == "127.0.0.2:53")
            .unwrap();
        assert!(!two.in_use);
        assert!(stats
            .upstreams
            .iter()
            .any(|u| u.address == "10.0.0.53:53" && u.in_use));
    }

    #[test]
    fn records_from_the_api() {
        let live = LiveDns::new(settings());
        assert_eq!(
            live.add_record("web.test", RecordData::parse("10.0.0.5").unwrap()),
            Ok(true)
        );
        assert_eq!(
            live.add_record("web.test", RecordData::parse("10.0.0.5").unwrap()),
            Ok(false)
        );
        assert!(live
            .add_record("web.test", RecordData::parse("::1").unwrap())
            .unwrap());
        assert_eq!(
            live.add_record("web.test", RecordData::parse("other.test").unwrap()),
            Err(DnsError::CnameConflict("web.test".into()))
        );
        let g = live.view().generation;
        assert_eq!(
            live.remove_records("gateway.airlock.internal", None),
            Err(DnsError::BuiltinRecord("gateway.airlock.internal".into()))
        );
        assert_eq!(live.view().generation, g, "a failed change changes nothing");
        assert!(live
            .view()
            .records
            .lookup("gateway.airlock.internal")
            .is_some());
        assert_eq!(
            live.remove_records("none.test", None),
            Err(DnsError::NoSuchRecord("none.test".into()))
        );
        let gone = live
            .remove_records("WEB.test.", Some(&RecordData::parse("::1").unwrap()))
            .unwrap();
        assert_eq!(gone.len(), 1);
        let info = live.view().info();
        assert_eq!(
            info.records.last().unwrap(),
            &DnsRecord {
                name: "web.test".into(),
                rtype: Some("A".into()),
                value: "10.0.0.5".into(),
                source: Some("api".into()),
            }
        );
        assert_eq!(info.zones[0].zone, "airlock.internal");
    }

    #[test]
    fn gvisor_zones() {
        let live = LiveDns::new(settings());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        live.add_gv_zone(
            "dynamic.internal.",
            &[("test".into(), ip("192.168.127.254"))],
            None,
        )
        .unwrap();
        live.add_gv_zone(
            "dynamic.internal.",
            &[("test".into(), ip("192.168.127.253"))],
            Some(ip("10.0.0.1")),
        )
        .unwrap();
        let v = live.view();
        assert_eq!(
            v.records.find("test.dynamic.internal"),
            [&RecordData::parse("192.168.127.253").unwrap()]
        );
        assert_eq!(
            v.records.find("other.dynamic.internal"),
            [&RecordData::parse("10.0.0.1").unwrap()]
        );
        assert!(matches!(v.route("nothing.dynamic.internal"), Route::Local));
        let zones = v.gv_zones();
        let z = zones
            .iter()
            .find(|z| z.name == "dynamic.internal.")
            .unwrap();
        assert_eq!(z.default_ip, "10.0.0.1");
        assert_eq!(z.records.len(), 1);
        // A bad name anywhere: nothing changes.
        let g = live.view().generation;
        assert!(live
            .add_gv_zone(
                "dynamic.internal",
                &[
                    ("ok".into(), ip("10.0.0.2")),
                    ("bad name".into(), ip("10.0.0.3"))
                ],
                None
            )
            .is_err());
        assert_eq!(live.view().generation, g);
        // The zone of the corp resolvers keeps its rule.
        live.add_gv_zone("corp.example", &[("a".into(), ip("10.9.9.9"))], None)
            .unwrap();
        assert_eq!(route(&live.view(), "b.corp.example"), "10.0.0.53:53");
    }
}
