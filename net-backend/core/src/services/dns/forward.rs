//! Queries the gateway cannot answer itself, forwarded to the upstream
//! resolvers over UDP: one flow per guest endpoint, its host socket
//! connected to the current upstream. A query the guest repeats after a
//! second without an answer moves the flow to the next upstream.

use std::any::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use airlock_api::{Direction, FlowInfo, Proto};
use airlock_common::ratelimited;
use vmm_sys_util::epoll::EventSet;

use crate::flows::udp::HostUdp;
use crate::flows::{
    age_ms, Cx, Flow, FlowKey, Flows, GuestPacket, OpenError, Unreachable, Verdict,
};
use crate::phy::GuestTx;
use crate::poller::{FlowId, Poller, Source};
use crate::stats::DropReason;

/// How long a query may wait for its answer before a repeat of it goes to
/// the next upstream.
const FAILOVER_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct DnsForwardFlow {
    guest: SocketAddr,
    /// The gateway's DNS endpoint as the guest addressed it.
    gateway: SocketAddr,
    host: HostUdp,
    upstream_index: usize,
    /// When the oldest query still without an answer left.
    unanswered_since: Option<Instant>,
}

impl DnsForwardFlow {
    /// Sends `msg` upstream; a query repeated while the last went
    /// unanswered for [`FAILOVER_AFTER`] switches resolvers first.
    fn query(&mut self, msg: &[u8], upstreams: &[SocketAddr], cx: &mut Cx) {
        let stale = self
            .unanswered_since
            .is_some_and(|t| cx.now.duration_since(t) >= FAILOVER_AFTER);
        if stale && upstreams.len() > 1 {
            self.upstream_index = (self.upstream_index + 1) % upstreams.len();
            let next = upstreams[self.upstream_index];
            log::debug!("dns: no answer from {}, trying {next}", self.host.target);
            if let Err(e) = self.host.reconnect(next) {
                log::debug!("dns: cannot switch to {next}: {e}");
            }
            self.unanswered_since = None;
        }
        if let Err(e) = self.host.send(msg, cx.now) {
            log::debug!("dns {} -> {}: {e}", self.guest, self.host.target);
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                cx.unreachable(self.guest, self.gateway, Unreachable::Port);
            } else {
                cx.dropped(DropReason::HostSendFailed);
            }
        }
        self.unanswered_since.get_or_insert(cx.now);
    }
}

impl Flow for DnsForwardFlow {
    fn keys(&self) -> Vec<FlowKey> {
        vec![FlowKey::DnsUdp(self.guest)]
    }

    fn info(&self, now: Instant) -> FlowInfo {
        FlowInfo {
            proto: Proto::Udp,
            direction: Direction::Outbound,
            guest: self.guest.to_string(),
            remote: self.gateway.to_string(),
            host_side: self.host.target.to_string(),
            bytes_to_host: self.host.bytes_to_host,
            bytes_to_guest: self.host.bytes_to_guest,
            age_ms: age_ms(self.host.opened, now),
            service: true,
        }
    }

    /// Queries reach the flow through [`forward`], which knows the
    /// upstreams.
    fn guest_packet(&mut self, _: FlowId, _: &GuestPacket, _: &mut Cx) -> Verdict {
        Verdict::Keep
    }

    fn host_event(&mut self, _id: FlowId, _: Source, _: EventSet, cx: &mut Cx) -> Verdict {
        let (guest, gateway) = (self.guest, self.gateway);
        let unanswered = &mut self.unanswered_since;
        self.host.deliver(guest, gateway, cx, || *unanswered = None);
        Verdict::Keep
    }

    fn deadline(&self) -> Option<Instant> {
        self.host.idle.deadline()
    }

    fn timer(&mut self, _id: FlowId, cx: &mut Cx) -> Verdict {
        self.host.idle.verdict(cx.now)
    }

    fn guest_room(&mut self, id: FlowId, cx: &mut Cx) -> Verdict {
        self.host.resume(id, &cx.stack.poller);
        Verdict::Keep
    }

    fn close(&mut self, poller: &Poller) {
        self.host.close(poller);
    }

    fn service(&self) -> bool {
        true
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Forwards the guest's query `msg` (from `guest` to the gateway's
/// `gateway` endpoint) to the upstream resolvers.
pub(crate) fn forward(
    flows: &mut Flows,
    guest: SocketAddr,
    gateway: SocketAddr,
    msg: &[u8],
    upstreams: &[SocketAddr],
    timeout: Duration,
    tx: &mut dyn GuestTx,
) {
    let Some(&first) = upstreams.first() else {
        return;
    };
    let id = match flows.table.lookup(&FlowKey::DnsUdp(guest)) {
        Some(id) => id,
        None => {
            let opened = flows.open(tx, |id, cx| {
                Ok(Box::new(DnsForwardFlow {
                    guest,
                    gateway,
                    host: HostUdp::open(id, first, timeout, cx)?,
                    upstream_index: 0,
                    unanswered_since: None,
                }))
            });
            match opened {
                Ok(id) => id,
                Err(OpenError::Limit) => {
                    ratelimited!(
                        log::Level::Warn,
                        "flow limit ({}) reached: refusing udp {guest} -> {gateway}",
                        flows.table.max()
                    );
                    flows.stack.shared.stats.dropped(DropReason::FlowLimit);
                    flows.stack.shared.stats.flow_refused(Proto::Udp);
                    return;
                }
                Err(OpenError::Io(e)) => {
                    ratelimited!(
                        log::Level::Warn,
                        "udp {guest} -> {first}: cannot open a host socket: {e}"
                    );
                    flows.stack.shared.stats.flow_refused(Proto::Udp);
                    flows.stack.shared.stats.dropped(DropReason::HostSendFailed);
                    return;
                }
            }
        }
    };
    flows.with_as::<DnsForwardFlow>(id, tx, |flow, _, cx| {
        flow.query(msg, upstreams, cx);
        Verdict::Keep
    });
}
