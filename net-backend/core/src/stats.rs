//! Counters the gateway keeps from the first frame: traffic per direction,
//! flows per protocol, and dropped frames by reason. Atomics, so the control
//! API can read them from another thread without stopping the data path.

use std::sync::atomic::{AtomicU64, Ordering};

use airlock_api::{FlowCount, FlowCounts, Proto, Stats as Snapshot, Traffic};

/// Why a frame or datagram was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A frame from the guest that does not parse (bad lengths, checksums).
    Malformed,
    /// EtherType or IP protocol the gateway does not handle (IPv6 with
    /// `--no-ipv6`, …).
    Unsupported,
    /// Larger than the negotiated MTU or the receive buffer.
    Oversize,
    /// The guest posted no receive buffers and the backlog is full.
    GuestRxFull,
    /// The flow table is full (`--max-flows`).
    FlowLimit,
    /// A host socket could not send (buffer full, unreachable).
    HostSendFailed,
    /// Egress policy refused the destination.
    Policy,
    /// Unprivileged ICMP sockets are not permitted on this host.
    PingNotPermitted,
    /// Traffic to a gateway service that does not exist.
    NoService,
    /// The guest used a source address that is not its own (the gateway's,
    /// an alias's, multicast, or unspecified where that is not allowed).
    SourceAddress,
    /// An IPv6 fragment (not reassembled).
    Fragment,
    /// Offload metadata that does not fit the frame or was not negotiated:
    /// a "larger TCP segment" that is not TCP, a segmentation type or
    /// checksum position the transport refuses.
    BadOffload,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::Unsupported,
        DropReason::Oversize,
        DropReason::GuestRxFull,
        DropReason::FlowLimit,
        DropReason::HostSendFailed,
        DropReason::Policy,
        DropReason::PingNotPermitted,
        DropReason::NoService,
        DropReason::SourceAddress,
        DropReason::Fragment,
        DropReason::BadOffload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unsupported => "unsupported",
            DropReason::Oversize => "oversize",
            DropReason::GuestRxFull => "guest_rx_full",
            DropReason::FlowLimit => "flow_limit",
            DropReason::HostSendFailed => "host_send_failed",
            DropReason::Policy => "policy",
            DropReason::PingNotPermitted => "ping_not_permitted",
            DropReason::NoService => "no_service",
            DropReason::SourceAddress => "source_address",
            DropReason::Fragment => "fragment",
            DropReason::BadOffload => "bad_offload",
        }
    }
}

/// What the gateway did with a DNS query the guest sent it over UDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Answered from the gateway's own names.
    Local,
    /// A name in the gateway's own zones that it does not have: NXDOMAIN
    /// without leaving the host.
    LocalNxdomain,
    /// Forwarded to an upstream resolver.
    Forwarded,
    /// No upstream resolver configured: SERVFAIL.
    NoUpstream,
    /// Not a DNS query the gateway can parse.
    Malformed,
}

impl DnsOutcome {
    pub const ALL: [DnsOutcome; 5] = [
        DnsOutcome::Local,
        DnsOutcome::LocalNxdomain,
        DnsOutcome::Forwarded,
        DnsOutcome::NoUpstream,
        DnsOutcome::Malformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DnsOutcome::Local => "local",
            DnsOutcome::LocalNxdomain => "local_nxdomain",
            DnsOutcome::Forwarded => "forwarded",
            DnsOutcome::NoUpstream => "no_upstream",
            DnsOutcome::Malformed => "malformed",
        }
    }
}

#[derive(Default)]
struct FlowCounters {
    opened: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
}

/// All counters of one airlock-net process (they survive frontend reconnects).
#[derive(Default)]
pub struct Stats {
    frames_from_guest: AtomicU64,
    bytes_from_guest: AtomicU64,
    frames_to_guest: AtomicU64,
    bytes_to_guest: AtomicU64,
    tcp: FlowCounters,
    udp: FlowCounters,
    icmp: FlowCounters,
    drops: [AtomicU64; DropReason::ALL.len()],
    dns: [AtomicU64; DnsOutcome::ALL.len()],
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn frame_from_guest(&self, len: usize) {
        add(&self.frames_from_guest, 1);
        add(&self.bytes_from_guest, len as u64);
    }

    pub fn frame_to_guest(&self, len: usize) {
        add(&self.frames_to_guest, 1);
        add(&self.bytes_to_guest, len as u64);
    }

    pub fn dns_query(&self, outcome: DnsOutcome) {
        add(&self.dns[outcome as usize], 1);
    }

    /// DNS queries by outcome, in [`DnsOutcome::ALL`]'s order.
    pub fn dns_queries(&self) -> Vec<(&'static str, u64)> {
        DnsOutcome::ALL
            .iter()
            .map(|o| (o.name(), self.dns[*o as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub fn dropped(&self, why: DropReason) {
        add(&self.drops[why as usize], 1);
    }

    fn flows(&self, p: Proto) -> &FlowCounters {
        match p {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
            Proto::Icmp => &self.icmp,
        }
    }

    pub fn flow_opened(&self, p: Proto) {
        add(&self.flows(p).opened, 1);
    }

    pub fn flow_closed(&self, p: Proto) {
        add(&self.flows(p).closed, 1);
    }

    pub fn flow_refused(&self, p: Proto) {
        add(&self.flows(p).refused, 1);
    }

    pub(crate) fn drop_count(&self, why: DropReason) -> u64 {
        self.drops[why as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flow = |f: &FlowCounters| FlowCount {
            opened: get(&f.opened),
            closed: get(&f.closed),
            refused: get(&f.refused),
        };
        Snapshot {
            guest_to_host: Traffic {
                frames: get(&self.frames_from_guest),
                bytes: get(&self.bytes_from_guest),
            },
            host_to_guest: Traffic {
                frames: get(&self.frames_to_guest),
                bytes: get(&self.bytes_to_guest),
            },
            flows: FlowCounts {
                tcp: flow(&self.tcp),
                udp: flow(&self.udp),
                icmp: flow(&self.icmp),
            },
            drops: DropReason::ALL
                .iter()
                .map(|d| (d.name().to_owned(), self.drop_count(*d)))
                .collect(),
            // The DNS service's counters live with it (LiveDns::stats).
            dns: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_per_direction_protocol_and_reason() {
        let s = Stats::default();
        s.frame_from_guest(100);
        s.frame_from_guest(60);
        s.frame_to_guest(1500);
        s.flow_opened(Proto::Tcp);
        s.flow_refused(Proto::Tcp);
        s.flow_closed(Proto::Udp);
        s.dropped(DropReason::FlowLimit);
        s.dropped(DropReason::FlowLimit);
        let snap = s.snapshot();
        assert_eq!(
            snap.guest_to_host,
            Traffic {
                frames: 2,
                bytes: 160
            }
        );
        assert_eq!(
            snap.host_to_guest,
            Traffic {
                frames: 1,
                bytes: 1500
            }
        );
        assert_eq!(snap.flows.tcp.opened, 1);
        assert_eq!(snap.flows.tcp.refused, 1);
        assert_eq!(snap.flows.udp.closed, 1);
        assert!(snap.drops.contains(&("flow_limit".to_owned(), 2)));
        assert!(snap.drops.contains(&("malformed".to_owned(), 0)));
    }
}
