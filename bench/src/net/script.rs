//! The guest side of a network run: every NIC configured by DHCP (busybox
//! udhcpc applying the offered MTU), busybox httpd on port 80 and an
//! `iperf3 -s` for the published-port tests, then the same run/go/RESULT conversation as the
//! file-system guest (see [`crate::fs::script`]).

use std::fmt::Write as _;

use super::peers::{Peer, GUEST_IPERF_PORT};

/// Printed once every NIC is configured.
pub const READY: &str = "BENCH-READY";
/// `NET <peer> <interface> <udhcpc status> mtu=<mtu> addr=<cidr>`.
pub const NET: &str = "NET ";
/// `NET6 <peer> <cidr>...`: the NIC's global IPv6 addresses (SLAAC).
pub const NET6: &str = "NET6 ";
/// The guest is ready for `go`.
pub const PREPPED: &str = "PREPPED";
/// Test output follows / ended.
pub const OUT_BEGIN: &str = "OUT-BEGIN";
/// See [`OUT_BEGIN`].
pub const OUT_END: &str = "OUT-END";
/// Prefix of the result line (`RESULT <status> <t0> <t1>`).
pub const RESULT: &str = "RESULT ";

/// The guest shell functions, one per test: `test_<id> ALIAS PORT ARG`.
const TESTS: &str = r#"
test_tcpup1() { iperf3 -c "$1" -p "$2" -t "$3" -J; }
test_tcpup4() { iperf3 -c "$1" -p "$2" -t "$3" -P 4 -J; }
test_tcpdown1() { iperf3 -c "$1" -p "$2" -t "$3" -R -J; }
test_tcpdown4() { iperf3 -c "$1" -p "$2" -t "$3" -P 4 -R -J; }
test_udpup() { iperf3 -c "$1" -p "$2" -t "$3" -u -b 0 -l 1400 -J; }
test_udpdown() { iperf3 -c "$1" -p "$2" -t "$3" -u -b 0 -l 1400 -R -J; }
test_rr() { curl -sS -o /dev/null -w '%{time_total}\n' "http://$1:$2/[1-$3]"; }
test_wait() { read -r done; }
"#;

/// The guest script for `peers`.
pub fn guest_script(peers: &[Peer]) -> String {
    let mut s = String::from("#!/bin/sh\n# airlock-bench: network guest\n");
    s.push_str(
        r#"NOW=0
now() {
    if [ -r /proc/timer_list ]; then
        { read -r _; read -r _; read -r _ _ NOW _; } < /proc/timer_list
    else
        read -r up _ < /proc/uptime
        NOW="${up%.*}${up#*.}0000000"
    fi
}
iface_of() {
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address")" = "$1" ] && { basename "$d"; return 0; }
    done
    return 1
}
"#,
    );
    s.push_str(TESTS);
    for peer in peers {
        let _ = writeln!(
            s,
            "IF=$(iface_of {mac}) && udhcpc -i \"$IF\" -q -n -t 5 -O mtu > /tmp/udhcpc-{id}.log 2>&1\n\
             echo \"{NET}{id} $IF $? mtu=$(cat /sys/class/net/$IF/mtu 2>/dev/null) addr=$(ip -4 -o addr show dev \"$IF\" 2>/dev/null | awk '{{print $4}}')\"",
            mac = peer.mac,
            id = peer.id
        );
        if peer.host_alias6.is_some() {
            // The kernel configures the address itself (SLAAC) from the
            // peer's Router Advertisements once the link is up.
            let _ = writeln!(
                s,
                "i=0; while [ $i -lt 100 ] && ! ip -6 addr show dev \"$IF\" scope global | grep -q inet6; do sleep 0.1; i=$((i+1)); done\n\
                 echo \"{NET6}{id} $(ip -6 -o addr show dev \"$IF\" scope global 2>/dev/null | awk '{{print $4}}')\"",
                id = peer.id
            );
        }
    }
    let _ = write!(
        s,
        r#"mkdir -p /www && echo ok > /www/index.html && httpd -p 80 -h /www
iperf3 -s -D -p {GUEST_IPERF_PORT}
echo {READY}
while read -r cmd test peer alias port arg; do
    case "$cmd" in
    run)
        echo {PREPPED}
        read -r go
        now; t0=$NOW
        test_$test "$alias" "$port" "$arg" > /tmp/out 2>&1
        status=$?
        now; t1=$NOW
        echo {OUT_BEGIN}; cat /tmp/out; echo; echo {OUT_END}
        echo "{RESULT}$status $t0 $t1"
        ;;
    quit) break ;;
    esac
done
exit 0
"#
    );
    s
}

/// The text between the output markers of the last test in `text`.
pub fn output(text: &str) -> Option<&str> {
    let start = text.rfind(OUT_BEGIN)? + OUT_BEGIN.len();
    let end = start + text.get(start..)?.find(OUT_END)?;
    text.get(start..end).map(str::trim)
}

/// The global IPv6 addresses of `peer`'s NIC from its `NET6` line.
pub fn parse_net6(text: &str, peer: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(NET6)?;
        let (id, addrs) = rest.split_once(' ').unwrap_or((rest, ""));
        (id == peer).then(|| addrs.trim().to_string())
    })
}

/// `(peer, interface, status, mtu, address)` of every `NET` line.
pub fn parse_nets(text: &str) -> Vec<(String, String, i32, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().strip_prefix(NET)?.split_whitespace();
            let peer = f.next()?.to_string();
            let iface = f.next()?.to_string();
            let status = f.next()?.parse().ok()?;
            let mtu = f.next()?.strip_prefix("mtu=")?.to_string();
            let addr = f
                .next()
                .and_then(|a| a.strip_prefix("addr="))
                .unwrap_or("")
                .to_string();
            Some((peer, iface, status, mtu, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::peers::{AIRLOCK_NET, SLIRP};
    use super::*;

    #[test]
    fn script_configures_each_nic() {
        let s = guest_script(&[AIRLOCK_NET, SLIRP]);
        assert!(s.contains("iface_of 52:54:00:00:00:01"));
        assert!(s.contains("iface_of 52:54:00:00:00:03"));
        // Only airlock-net's NIC waits for an IPv6 address.
        assert_eq!(s.matches("NET6 ").count(), 1);
        assert!(s.contains("NET6 airlock-net "));
        assert!(s.contains("httpd -p 80"));
        assert!(s.contains("test_$test"));
    }

    #[test]
    fn output_and_net_lines_parse() {
        let text = "x\nOUT-BEGIN\n{\"a\":1}\n\nOUT-END\nRESULT 0 1 2\n";
        assert_eq!(output(text), Some("{\"a\":1}"));
        assert_eq!(output("OUT-BEGIN only"), None);
        let nets = parse_nets(
            "NET passt eth1 0 mtu=65520 addr=10.88.0.2/24\nNET slirp eth2 1 mtu=1500 addr=\n",
        );
        assert_eq!(nets.len(), 2);
        assert_eq!(
            nets[0],
            (
                "passt".into(),
                "eth1".into(),
                0,
                "65520".into(),
                "10.88.0.2/24".into()
            )
        );
        assert_eq!(nets[1].2, 1);
        let text = "NET6 airlock-net fd61:6972:c0a8:7f00:5054:ff:fe00:1/64\nNET6 other\n";
        assert_eq!(
            parse_net6(text, "airlock-net").as_deref(),
            Some("fd61:6972:c0a8:7f00:5054:ff:fe00:1/64")
        );
        assert_eq!(parse_net6(text, "other").as_deref(), Some(""));
        assert_eq!(parse_net6(text, "passt"), None);
    }
}
