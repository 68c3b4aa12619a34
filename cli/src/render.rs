//! Readable tables of what the control API returns.

use airlock_api::{DnsInfo, FlowCount, FlowInfo, Lease, PortEntry, Stats};

#[derive(Copy, Clone, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns padded to their widest cell, two spaces apart, with a header
/// row; `right` marks the columns aligned right (numbers).
fn table(headers: &[&str], right: &[usize], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .chain(std::iter::once(headers[i].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let align = |i: usize| {
        if right.contains(&i) {
            Align::Right
        } else {
            Align::Left
        }
    };
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match align(i) {
                Align::Left => {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `1536` → `1.5 KiB`; below 1 KiB, bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3_723_000` ms → `1h02m03s`; under a minute with tenths.
pub fn duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{}.{}s", secs, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m{:02}s", secs / 3600, (secs / 60) % 60, secs % 60),
    }
}

pub fn ports(entries: &[PortEntry]) -> String {
    if entries.is_empty() {
        return "no published ports\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![e.protocol.clone(), e.local.clone(), e.remote.clone()])
        .collect();
    table(&["PROTO", "HOST", "GUEST"], &[], &rows)
}

pub fn stats(s: &Stats) -> String {
    let traffic = table(
        &["TRAFFIC", "FRAMES", "BYTES"],
        &[1, 2],
        &[
            vec![
                "guest -> host".into(),
                s.guest_to_host.frames.to_string(),
                bytes(s.guest_to_host.bytes),
            ],
            vec![
                "host -> guest".into(),
                s.host_to_guest.frames.to_string(),
                bytes(s.host_to_guest.bytes),
            ],
        ],
    );
    let flow = |name: &str, f: &FlowCount| {
        vec![
            name.to_owned(),
            f.opened.to_string(),
            f.closed.to_string(),
            f.refused.to_string(),
        ]
    };
    let flows = table(
        &["FLOWS", "OPENED", "CLOSED", "REFUSED"],
        &[1, 2, 3],
        &[
            flow("tcp", &s.flows.tcp),
            flow("udp", &s.flows.udp),
            flow("icmp", &s.flows.icmp),
        ],
    );
    let drops: Vec<Vec<String>> = s
        .drops
        .iter()
        .map(|(reason, n)| vec![reason.clone(), n.to_string()])
        .collect();
    let drops = table(&["DROPPED", "COUNT"], &[1], &drops);
    let d = &s.dns;
    let answered = table(
        &["DNS", "LOCAL", "FORWARDED", "FAILED"],
        &[1, 2, 3],
        &[vec![
            "queries".into(),
            d.local.to_string(),
            d.forwarded.to_string(),
            d.failed.to_string(),
        ]],
    );
    let upstreams: Vec<Vec<String>> = d
        .upstreams
        .iter()
        .map(|u| {
            let state = match (u.in_use, u.down) {
                (false, _) => "unused",
                (true, true) => "down",
                (true, false) => "up",
            };
            vec![
                u.address.clone(),
                state.into(),
                u.queries.to_string(),
                u.tcp_queries.to_string(),
                u.answers.to_string(),
                u.timeouts.to_string(),
                u.unreachable.to_string(),
            ]
        })
        .collect();
    let upstreams = if upstreams.is_empty() {
        "no upstream resolvers\n".to_owned()
    } else {
        table(
            &[
                "UPSTREAM",
                "STATE",
                "UDP",
                "TCP",
                "ANSWERS",
                "TIMEOUTS",
                "UNREACHABLE",
            ],
            &[2, 3, 4, 5, 6],
            &upstreams,
        )
    };
    format!("{traffic}\n{flows}\n{drops}\n{answered}\n{upstreams}")
}

/// `airlock dns ls`: where the resolvers come from and which they are,
/// the search list, the zones, and the records.
pub fn dns(d: &DnsInfo) -> String {
    let none = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(" ")
        }
    };
    let mut out = format!(
        "resolvers: {} (from {})\nsearch: {}\n",
        none(&d.upstreams),
        d.source,
        none(&d.search)
    );
    if !d.zones.is_empty() {
        let rows: Vec<Vec<String>> = d
            .zones
            .iter()
            .map(|z| vec![z.zone.clone(), z.target.clone()])
            .collect();
        out.push('\n');
        out.push_str(&table(&["ZONE", "ANSWERED BY"], &[], &rows));
    }
    out.push('\n');
    if d.records.is_empty() {
        out.push_str("no records\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .records
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.rtype.clone().unwrap_or_default(),
                    r.value.clone(),
                    r.source.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(&["NAME", "TYPE", "VALUE", "SOURCE"], &[], &rows));
    }
    out
}

pub fn flows(flows: &[FlowInfo]) -> String {
    if flows.is_empty() {
        return "no flows\n".to_owned();
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let mut proto = f.proto.to_string();
            if f.service {
                proto.push_str(" (dns)");
            }
            vec![
                proto,
                f.direction.to_string(),
                f.guest.clone(),
                f.remote.clone(),
                f.host_side.clone(),
                bytes(f.bytes_to_host),
                bytes(f.bytes_to_guest),
                duration_ms(f.age_ms),
            ]
        })
        .collect();
    table(
        &[
            "PROTO",
            "DIR",
            "GUEST",
            "REMOTE",
            "HOST SIDE",
            "TO HOST",
            "TO GUEST",
            "AGE",
        ],
        &[5, 6, 7],
        &rows,
    )
}

pub fn leases(leases: &[Lease]) -> String {
    if leases.is_empty() {
        return "no leases\n".to_owned();
    }
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                l.mac.clone(),
                l.ip.to_string(),
                l.hostname.clone().unwrap_or_else(|| "-".into()),
                duration_ms(l.expires_in.saturating_mul(1000)),
            ]
        })
        .collect();
    table(&["MAC", "IP", "HOSTNAME", "EXPIRES IN"], &[3], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "NUMBER", "C"],
            &[1],
            &[
                vec!["long cell".into(), "5".into(), "x".into()],
                vec!["b".into(), "12345678".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "A            NUMBER  C\n\
             long cell         5  x\n\
             b          12345678\n"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration_ms(0), "0.0s");
        assert_eq!(duration_ms(1500), "1.5s");
        assert_eq!(duration_ms(61_000), "1m01s");
        assert_eq!(duration_ms(3_723_000), "1h02m03s");
    }

    #[test]
    fn ports_table() {
        let entries = vec![
            PortEntry {
                local: "0.0.0.0:8080".into(),
                remote: "192.168.127.2:80".into(),
                protocol: "tcp".into(),
            },
            PortEntry {
                local: "127.0.0.1:5353".into(),
                remote: "192.168.127.2:53".into(),
                protocol: "udp".into(),
            },
        ];
        assert_eq!(
            ports(&entries),
            "PROTO  HOST            GUEST\n\
             tcp    0.0.0.0:8080    192.168.127.2:80\n\
             udp    127.0.0.1:5353  192.168.127.2:53\n"
        );
        assert_eq!(ports(&[]), "no published ports\n");
    }

    #[test]
    fn stats_tables() {
        let s: Stats = serde_json::from_value(serde_json::json!({
            "guest_to_host": {"frames": 12, "bytes": 2048},
            "host_to_guest": {"frames": 3, "bytes": 100},
            "flows": {"tcp": {"opened": 4, "closed": 3, "refused": 1},
                      "udp": {"opened": 0, "closed": 0, "refused": 0},
                      "icmp": {"opened": 1, "closed": 1, "refused": 0}},
            "drops": [["malformed", 0], ["policy", 1]],
        }))
        .unwrap();
        assert_eq!(
            stats(&s),
            "TRAFFIC        FRAMES    BYTES\n\
             guest -> host      12  2.0 KiB\n\
             host -> guest       3    100 B\n\
             \n\
             FLOWS  OPENED  CLOSED  REFUSED\n\
             tcp         4       3        1\n\
             udp         0       0        0\n\
             icmp        1       1        0\n\
             \n\
             DROPPED    COUNT\n\
             malformed      0\n\
             policy         1\n\
             \n\
             DNS      LOCAL  FORWARDED  FAILED\n\
             queries      0          0       0\n\
             \n\
             no upstream resolvers\n"
        );
        let s: Stats = serde_json::from_value(serde_json::json!({
            "dns": {"local": 5, "forwarded": 7, "failed": 1, "upstreams": [
                {"address": "127.0.0.53:53", "in_use": true, "queries": 9, "answers": 6, "timeouts": 3, "down": true},
                {"address": "10.0.0.1:53", "in_use": false, "answers": 2, "tcp_queries": 1},
            ]},
        }))
        .unwrap();
        let text = stats(&s);
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        assert_eq!(
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            "DNS      LOCAL  FORWARDED  FAILED\n\
             queries      5          7       1\n\
             \n\
             UPSTREAM       STATE   UDP  TCP  ANSWERS  TIMEOUTS  UNREACHABLE\n\
             127.0.0.53:53  down      9    0        6         3            0\n\
             10.0.0.1:53    unused    0    1        2         0            0"
        );
    }

    #[test]
    fn dns_listing() {
        let d: DnsInfo = serde_json::from_value(serde_json::json!({
            "source": "/etc/resolv.conf",
            "upstreams": ["127.0.0.53:53"],
            "search": ["corp.test", "lab.test"],
            "zones": [{"zone": "airlock.internal", "target": "local"},
                      {"zone": "corp.test", "target": "10.0.0.53:53"}],
            "records": [
                {"name": "host.airlock.internal", "type": "A", "value": "192.168.127.254", "source": "builtin"},
                {"name": "db.test", "type": "CNAME", "value": "host.airlock.internal", "source": "api"},
            ],
        }))
        .unwrap();
        assert_eq!(
            dns(&d),
            "resolvers: 127.0.0.53:53 (from /etc/resolv.conf)\n\
             search: corp.test lab.test\n\
             \n\
             ZONE              ANSWERED BY\n\
             airlock.internal  local\n\
             corp.test         10.0.0.53:53\n\
             \n\
             NAME                   TYPE   VALUE                  SOURCE\n\
             host.airlock.internal  A      192.168.127.254        builtin\n\
             db.test                CNAME  host.airlock.internal  api\n"
        );
        let empty = DnsInfo {
            source: "--dns-upstream".into(),
            ..DnsInfo::default()
        };
        assert_eq!(
            dns(&empty),
            "resolvers: none (from --dns-upstream)\nsearch: none\n\nno records\n"
        );
    }

    #[test]
    fn flows_and_leases_tables() {
        let f: Vec<FlowInfo> = serde_json::from_value(serde_json::json!([
            {"proto": "tcp", "direction": "inbound", "guest": "192.168.127.2:80",
             "remote": "192.168.127.1:40000", "host_side": "127.0.0.1:51000",
             "bytes_to_host": 5, "bytes_to_guest": 17_000_000, "age_ms": 1500},
            {"proto": "udp", "direction": "outbound", "guest": "192.168.127.2:5000",
             "remote": "192.168.127.1:53", "host_side": "10.0.0.53:53",
             "bytes_to_host": 40, "bytes_to_guest": 80, "age_ms": 90_000, "service": true},
        ]))
        .unwrap();
        assert_eq!(
            flows(&f),
            "PROTO      DIR       GUEST               REMOTE               HOST SIDE        TO HOST  TO GUEST    AGE\n\
             tcp        inbound   192.168.127.2:80    192.168.127.1:40000  127.0.0.1:51000      5 B  16.2 MiB   1.5s\n\
             udp (dns)  outbound  192.168.127.2:5000  192.168.127.1:53     10.0.0.53:53        40 B      80 B  1m30s\n"
        );
        assert_eq!(flows(&[]), "no flows\n");
        let l = vec![Lease {
            mac: "52:54:00:12:34:56".into(),
            ip: "192.168.127.2".parse().unwrap(),
            hostname: None,
            expires_in: 3599,
        }];
        assert_eq!(
            leases(&l),
            "MAC                IP             HOSTNAME  EXPIRES IN\n\
             52:54:00:12:34:56  192.168.127.2  -             59m59s\n"
        );
    }
}
