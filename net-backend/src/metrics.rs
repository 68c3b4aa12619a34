//! `GET /metrics`: the gateway's counters and the current guest's flows and
//! leases in Prometheus' text exposition format (version 0.0.4), for a
//! Prometheus server or node_exporter's textfile collector to scrape through
//! the control socket.

use std::fmt::Write as _;

use airlock_api::{FlowInfo, Lease, Proto, Stats};

/// `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: its `# HELP` and `# TYPE` lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
    }
}

/// The exposition text. `dns` is the DNS queries by outcome; `guest` is
/// the current guest's flows and leases, `None` when the data path did not
/// answer in time (those families are then left out rather than reported
/// as zero).
pub fn render(
    stats: &Stats,
    dns: &[(&str, u64)],
    guest: Option<(&[FlowInfo], &[Lease])>,
) -> String {
    let mut out = String::new();
    let dirs = [
        ("guest_to_host", &stats.guest_to_host),
        ("host_to_guest", &stats.host_to_guest),
    ];
    family(
        &mut out,
        "airlock_net_frames_total",
        "counter",
        "Ethernet frames between the guest and the gateway, by direction.",
        &dirs
            .iter()
            .map(|(d, t)| (format!("direction=\"{d}\""), t.frames))
            .collect::<Vec<_>>(),
    );
    family(
        &mut out,
        "airlock_net_bytes_total",
        "counter",
        "Bytes of those frames, by direction.",
        &dirs
            .iter()
            .map(|(d, t)| (format!("direction=\"{d}\""), t.bytes))
            .collect::<Vec<_>>(),
    );
    let kinds = [
        ("tcp", &stats.flows.tcp),
        ("udp", &stats.flows.udp),
        ("icmp", &stats.flows.icmp),
    ];
    for (name, help, get) in [
        (
            "airlock_net_flows_opened_total",
            "Flows opened since start, by protocol.",
            (|c: &airlock_api::FlowCount| c.opened) as fn(&airlock_api::FlowCount) -> u64,
        ),
        (
            "airlock_net_flows_closed_total",
            "Flows closed since start, by protocol.",
            |c| c.closed,
        ),
        (
            "airlock_net_flows_refused_total",
            "Flows refused (policy, connect failure, --max-flows), by protocol.",
            |c| c.refused,
        ),
    ] {
        family(
            &mut out,
            name,
            "counter",
            help,
            &kinds
                .iter()
                .map(|(k, c)| (format!("proto=\"{k}\""), get(c)))
                .collect::<Vec<_>>(),
        );
    }
    family(
        &mut out,
        "airlock_net_drops_total",
        "counter",
        "Frames or datagrams dropped, by reason.",
        &stats
            .drops
            .iter()
            .map(|(why, n)| (format!("reason=\"{why}\""), *n))
            .collect::<Vec<_>>(),
    );
    family(
        &mut out,
        "airlock_net_dns_queries_total",
        "counter",
        "DNS queries the guest sent the gateway over UDP, by outcome (local: answered from its own \
         names; local_nxdomain: an unknown name in its own zones; forwarded: sent upstream; \
         no_upstream: SERVFAIL, no resolver for the name; malformed).",
        &dns.iter()
            .map(|(o, n)| (format!("outcome=\"{o}\""), *n))
            .collect::<Vec<_>>(),
    );
    let Some((flows, leases)) = guest else {
        return out;
    };
    let mut open: Vec<(String, u64)> = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
        for (direction, inbound) in [("outbound", false), ("inbound", true)] {
            let n = flows
                .iter()
                .filter(|f| f.proto == proto)
                .filter(|f| (f.direction == airlock_api::Direction::Inbound) == inbound)
                .count();
            open.push((
                format!("proto=\"{}\",direction=\"{direction}\"", proto_name(proto)),
                n as u64,
            ));
        }
    }
    family(
        &mut out,
        "airlock_net_flows",
        "gauge",
        "Flows open now, by protocol and by who opened them (outbound: the guest; inbound: a published port).",
        &open,
    );
    family(
        &mut out,
        "airlock_net_dns_queries_in_flight",
        "gauge",
        "DNS queries the gateway is forwarding upstream now.",
        &[(
            String::new(),
            flows.iter().filter(|f| f.service).count() as u64,
        )],
    );
    family(
        &mut out,
        "airlock_net_dhcp_leases",
        "gauge",
        "DHCP leases held now.",
        &[(String::new(), leases.len() as u64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_api::{Direction, Traffic};

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let stats = Stats {
            guest_to_host: Traffic {
                frames: 3,
                bytes: 300,
            },
            drops: vec![("malformed".into(), 2)],
            ..Stats::default()
        };
        let flow = FlowInfo {
            proto: Proto::Tcp,
            direction: Direction::Inbound,
            ..FlowInfo::default()
        };
        let text = render(&stats, &[("local", 4)], Some((&[flow], &[])));
        assert!(text.contains("airlock_net_frames_total{direction=\"guest_to_host\"} 3\n"));
        assert!(text.contains("airlock_net_drops_total{reason=\"malformed\"} 2\n"));
        assert!(text.contains("airlock_net_flows{proto=\"tcp\",direction=\"inbound\"} 1\n"));
        assert!(text.contains("airlock_net_dhcp_leases 0\n"));
        assert!(text.contains("airlock_net_dns_queries_total{outcome=\"local\"} 4\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
            assert!(series.starts_with("airlock_net_"), "{line}");
        }
        // Without the guest's answer, its families are left out.
        assert!(!render(&stats, &[], None).contains("airlock_net_flows{"));
    }
}
