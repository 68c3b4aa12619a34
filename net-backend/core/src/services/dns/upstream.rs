//! The upstream resolvers: their health (an upstream that failed is tried
//! after the others for a while) and their counters. One [`Upstream`] per
//! address for the life of the process, shared by every query, the
//! control API and each reload that keeps the address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use airlock_api::DnsUpstreamStats;

/// How long an upstream that did not answer (or was unreachable) is tried
/// only after every other one. An answer from it ends this at once.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// The time every upstream's clock counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `now` in milliseconds since [`epoch`], plus one so that 0 means "never".
fn stamp(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// One upstream resolver.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Until when it is down ([`stamp`]; 0: up).
    down_until: AtomicU64,
    queries: AtomicU64,
    tcp_queries: AtomicU64,
    answers: AtomicU64,
    timeouts: AtomicU64,
    unreachable: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Arc<Upstream> {
        // Fix the epoch before any stamp is taken.
        let _ = epoch();
        Arc::new(Upstream {
            addr,
            down_until: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            tcp_queries: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
        })
    }

    /// Whether it failed less than [`DOWN_FOR`] before `now` and has not
    /// answered since.
    pub fn is_down(&self, now: Instant) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && stamp(now) < until
    }

    fn down(&self, now: Instant) {
        let was_up = !self.is_down(now);
        self.down_until
            .store(stamp(now + DOWN_FOR), Ordering::Relaxed);
        if was_up {
            airlock_common::ratelimited!(
                log::Level::Info,
                "dns: upstream {} is not answering; trying the others first for {} s",
                self.addr,
                DOWN_FOR.as_secs()
            );
        }
    }

    /// A query went out over UDP.
    pub(crate) fn sent(&self) {
        add(&self.queries);
    }

    /// A query went out over TCP.
    pub(crate) fn sent_tcp(&self) {
        add(&self.tcp_queries);
    }

    /// It answered: it is up again.
    pub(crate) fn answered(&self) {
        add(&self.answers);
        if self.down_until.swap(0, Ordering::Relaxed) != 0 {
            log::info!("dns: upstream {} answers again", self.addr);
        }
    }

    /// A query to it went unanswered for its whole attempt.
    pub(crate) fn timed_out(&self, now: Instant) {
        add(&self.timeouts);
        self.down(now);
    }

    /// It cannot be reached: ICMP unreachable, a refused connection, a
    /// failed send.
    pub(crate) fn unreachable(&self, now: Instant) {
        add(&self.unreachable);
        self.down(now);
    }

    /// Its counters as `GET /stats` shows them.
    pub fn stats(&self, in_use: bool, now: Instant) -> DnsUpstreamStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsUpstreamStats {
            address: self.addr.to_string(),
            in_use,
            down: self.is_down(now),
            queries: get(&self.queries),
            tcp_queries: get(&self.tcp_queries),
            answers: get(&self.answers),
            timeouts: get(&self.timeouts),
            unreachable: get(&self.unreachable),
        }
    }
}

/// `list` in the order to try it at `now`: as configured, but upstreams
/// that are down after those that are up.
pub fn in_order(list: &[Arc<Upstream>], now: Instant) -> Vec<Arc<Upstream>> {
    let (up, down): (Vec<_>, Vec<_>) = list.iter().cloned().partition(|u| !u.is_down(now));
    up.into_iter().chain(down).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_upstream_goes_last_until_it_answers_or_time_passes() {
        let a = Upstream::new("127.0.0.1:53".parse().unwrap());
        let b = Upstream::new("127.0.0.2:53".parse().unwrap());
        let list = [a.clone(), b.clone()];
        let t = Instant::now();
        let order =
            |now| -> Vec<SocketAddr> { in_order(&list, now).iter().map(|u| u.addr).collect() };
        assert_eq!(order(t), [a.addr, b.addr]);
        a.timed_out(t);
        assert!(a.is_down(t));
        assert_eq!(order(t), [b.addr, a.addr]);
        assert_eq!(
            order(t + DOWN_FOR - Duration::from_millis(5)),
            [b.addr, a.addr]
        );
        assert_eq!(
            order(t + DOWN_FOR + Duration::from_millis(5)),
            [a.addr, b.addr]
        );
        b.unreachable(t);
        assert_eq!(order(t), [a.addr, b.addr], "both down: configured order");
        a.answered();
        assert_eq!(order(t), [a.addr, b.addr]);
        let s = a.stats(true, t);
        assert_eq!(
            (s.timeouts, s.answers, s.down, s.in_use),
            (1, 1, false, true)
        );
        assert_eq!(b.stats(false, t).unreachable, 1);
    }
}
