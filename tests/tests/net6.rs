//! airlock-net's IPv6 end to end (issue 14): a real guest brings eth0 up
//! and gets, with no configuration of its own, a SLAAC address in the
//! prefix and a default route from the gateway's Router Advertisements,
//! and its DNS server and search list (`--dns-search`) from RDNSS/DNSSL
//! and DHCPv6 (dhcpcd); then it pings the
//! gateway, fetches from a server bound only to `[::1]` through the v6
//! host alias (by name and by address), reaches a v6-only server in a
//! network namespace over TCP and UDP, is refused at once by a denied v6
//! destination (audited), and serves a port published on `[::1]`. A second
//! guest, with `--no-ipv6`, gets no Router Advertisement.
//!
//! airlock-net runs in namespace A, whose `::1` is "the host's"; the
//! outside is namespace B (fd77:200::2) behind a veth pair.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{DnsResolver, HttpServer, UdpEchoServer, HELLO_BODY};
use airlock_e2e::{net_device_args, veth_pair, DaemonHandle, NetNs, Rig, VmConfig};
use serde_json::Value;

const MAC: &str = "52:54:00:12:34:56";
/// The default prefix for 192.168.127.0/24, and the addresses in it.
const GATEWAY6: &str = "fd61:6972:c0a8:7f00::1";
const HOST_ALIAS6: &str = "fd61:6972:c0a8:7f00::fe";
/// The guest's SLAAC address: the prefix and its MAC's modified EUI-64.
const GUEST6: &str = "fd61:6972:c0a8:7f00:5054:ff:fe12:3456";
/// Namespace A's (airlock-net's) and B's (the outside's) veth addresses.
const A6: &str = "fd77:200::1";
const B6: &str = "fd77:200::2";
/// Published on A's `[::1]`: the guest's httpd (over IPv4 in the guest).
const PUBLISHED_PORT: u16 = 18080;
/// Published on A's `[::1]` with `/tcp6`: the same httpd over IPv6.
const PUBLISHED6_PORT: u16 = 18081;
/// The egress policy refuses B on this port.
const DENIED_PORT: u16 = 81;
const VM_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits (bounded) until eth0 has its global address and the default route.
const WAIT_SLAAC: &str = r#"
i=0
while [ $i -lt 300 ]; do
    ip -6 addr show dev eth0 | grep -q 'inet6 fd61:.* scope global' && ip -6 route show default | grep -q via && break
    sleep 0.1
    i=$((i+1))
done
"#;

fn start_net(rig: &mut Rig, ns: &NetNs, args: &[String]) -> (DaemonHandle, PathBuf, PathBuf) {
    let socket = rig.dir().join("net.sock");
    let api = rig.dir().join("net.api");
    let mut cmd = ns.command(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--api-socket")
        .arg(&api)
        .args(args);
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    rig.wait_for_socket(&api, Duration::from_secs(10));
    (daemon, socket, api)
}

/// `airlock --api-socket <api> --json <args>`, parsed.
fn airlock_json(api: &Path, args: &[&str]) -> Value {
    let out = Command::new(Rig::bin("airlock"))
        .arg("--api-socket")
        .arg(api)
        .arg("--json")
        .args(args)
        .output()
        .expect("cannot run airlock");
    assert!(
        out.status.success(),
        "airlock {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("airlock --json prints JSON")
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn ipv6_slaac_dns_host_alias_outside_policy_and_publishing() {
    let a = NetNs::new("v6-a");
    let b = NetNs::new("v6-b");
    veth_pair(&a, "10.202.0.1/24", &b, "10.202.0.2/24");
    // Without DAD, so the servers can bind at once.
    for (ns, addr) in [(&a, A6), (&b, B6)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "veth0",
            "nodad",
        ]);
    }
    let b_addr: Ipv6Addr = B6.parse().unwrap();
    let outside_http = HttpServer::serve(b.bind_tcp(SocketAddr::from((b_addr, 0))), 0);
    let outside_udp = UdpEchoServer::serve(b.bind_udp(SocketAddr::from((b_addr, 0))));
    let _denied = HttpServer::serve(b.bind_tcp(SocketAddr::from((b_addr, DENIED_PORT))), 0);
    // "The host's" services: bound only to A's ::1.
    let loopback6 = HttpServer::serve(a.bind_tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))), 0);
    let resolver = DnsResolver::serve(a.bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))), &[]);

    let mut rig = Rig::new("net6");
    let audit = rig.dir().join("audit.log");
    let args = vec![
        "--dns-upstream".to_owned(),
        resolver.addr().to_string(),
        "--dns-search".to_owned(),
        "v6.test,lab.v6.test".to_owned(),
        "--audit-log".to_owned(),
        audit.display().to_string(),
        "--deny".to_owned(),
        format!("[{B6}]:{DENIED_PORT}/tcp"),
        "--publish".to_owned(),
        format!("[::1]:{PUBLISHED_PORT}:80"),
        "--publish".to_owned(),
        format!("[::1]:{PUBLISHED6_PORT}:80/tcp6"),
    ];
    let (daemon, socket, api) = start_net(&mut rig, &a, &args);
    let (http_port, udp_port, host_port) = (
        outside_http.port(),
        outside_udp.addr().port(),
        loopback6.port(),
    );
    let script = format!(
        r#"ip link set eth0 up
{WAIT_SLAAC}
echo "addr6=$(ip -6 -o addr show dev eth0 scope global | awk '{{print $4}}' | tr '\n' ' ')"
echo "route6=$(ip -6 route show default)"
# -1 makes dhcpcd exit once it has an address: without ipv6ra_noautoconf that
# is its own SLAAC address passing DAD, which can come before the DHCPv6 reply.
dhcpcd -6 -1 -t 30 --ipv6ra_noautoconf eth0 >/tmp/dhcpcd6.log 2>&1 || echo 'dhcpcd -6 failed'
sed 's/^/dhcpcd6: /' /tmp/dhcpcd6.log
echo "resolv6=$(grep nameserver /etc/resolv.conf | tr '\n' ' ')"
echo "search6=$(grep ^search /etc/resolv.conf)"
ping6 -c 2 -W 5 {GATEWAY6} >/tmp/ping 2>&1
echo "ping6 gateway status=$? replies=$(grep -c 'bytes from' /tmp/ping)"
echo "alias by name: $(curl -6 -sS --max-time 20 http://host.airlock.internal:{host_port}/hello 2>&1)"
echo "alias by address: $(curl -sS -g --max-time 20 'http://[{HOST_ALIAS6}]:{host_port}/hello' 2>&1)"
echo "outside tcp: $(curl -sS -g --max-time 20 --data-binary 'v6 through NAT' 'http://[{B6}]:{http_port}/echo' 2>&1 | tr '\n' '|')"
echo "outside udp: $(curl -sS -g --max-time 20 'tftp://[{B6}]:{udp_port}/udp6-through-nat' 2>&1)"
curl -sS -g --max-time 20 'http://[{B6}]:{DENIED_PORT}/peer' >/tmp/denied 2>&1
echo "denied status=$? $(cat /tmp/denied)"
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || {{ cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }}
mkdir -p /www && echo 'hello from the guest over [::1]' >/www/hello.txt
httpd -p 80 -h /www
echo READY
read line
echo "host said $line"
"#
    );
    let mut vm = rig.boot(VmConfig {
        script,
        qemu_args: net_device_args(&socket, MAC, false),
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let out = vm.wait_for("READY", Duration::from_secs(150));
    let line = |prefix: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in the guest output:\n{out}"))
            .to_owned()
    };

    // SLAAC address in the prefix, default route via the gateway.
    let addr6 = line("addr6=");
    assert!(
        addr6.contains(&format!("{GUEST6}/64")),
        "SLAAC: {addr6:?}\n{out}"
    );
    let route6 = line("route6=");
    assert!(
        route6.starts_with("default via fe80::5894:efff:fee4:cdd dev eth0"),
        "default route: {route6:?}\n{out}"
    );
    // DNS from the RA (RDNSS) or DHCPv6.
    assert_eq!(line("resolv6="), format!("nameserver {GATEWAY6} "), "{out}");
    // The DNS service's search list, by DHCPv6 (option 24) and the RA's
    // DNSSL.
    assert_eq!(line("search6="), "search v6.test lab.v6.test", "{out}");
    assert_eq!(line("ping6 gateway "), "status=0 replies=2", "{out}");
    assert_eq!(line("alias by name: "), HELLO_BODY.trim_end(), "{out}");
    assert_eq!(line("alias by address: "), HELLO_BODY.trim_end(), "{out}");
    assert!(
        loopback6
            .log()
            .requests
            .iter()
            .all(|r| r.peer.ip().is_loopback()),
        "the v6 alias reaches the host's ::1"
    );
    // The outside saw A's address, over TCP and UDP.
    let tcp = line("outside tcp: ");
    assert!(
        tcp.starts_with(&format!("peer [{A6}]:")) && tcp.ends_with("|v6 through NAT"),
        "TCP over v6 NAT: {tcp:?}\n{out}"
    );
    let udp = line("outside udp: ");
    assert!(
        udp.starts_with(&format!("udp6-through-nat from [{A6}]:")),
        "UDP over v6 NAT: {udp:?}\n{out}"
    );
    // Denied: refused at once (curl exit 7), and audited with v6 addresses.
    let denied = line("denied ");
    assert!(
        denied.starts_with("status=7 ") && denied.contains("Failed to connect"),
        "denied destination: {denied:?}\n{out}"
    );
    let deny = audit_records(&audit)
        .into_iter()
        .find(|r| r["event"] == "flow-deny")
        .unwrap_or_else(|| {
            panic!(
                "no flow-deny audit record:\n{}",
                std::fs::read_to_string(&audit).unwrap_or_default()
            )
        });
    assert_eq!(deny["remote"], format!("[{B6}]:{DENIED_PORT}"));
    // The guest's source: one of its addresses in the prefix.
    assert!(
        deny["guest"]
            .as_str()
            .unwrap_or("")
            .starts_with("[fd61:6972:c0a8:7f00:"),
        "{deny}"
    );

    // The DHCPv6 lease is listed next to the DHCPv4 one.
    let leases = airlock_json(&api, &["leases"]);
    let ips: Vec<&str> = leases
        .as_array()
        .map(|l| l.iter().filter_map(|e| e["ip"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ips.contains(&GUEST6) && ips.contains(&"192.168.127.2"),
        "leases: {leases}\n{out}"
    );

    // Ports published on A's [::1] reach the guest's httpd: over IPv4,
    // and with /tcp6 over IPv6, at the guest's own address.
    for port in [PUBLISHED_PORT, PUBLISHED6_PORT] {
        let body = a.run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect((Ipv6Addr::LOCALHOST, port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        let body = body.unwrap_or_else(|e| panic!("published [::1]:{port}: {e}"));
        assert!(
            body.ends_with("hello from the guest over [::1]\n"),
            "{port}: {body}"
        );
    }
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let inbound: Vec<serde_json::Value> = audit_text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["event"] == "flow-open" && v["direction"] == "inbound")
        .collect();
    let guests: Vec<&str> = inbound.iter().filter_map(|v| v["guest"].as_str()).collect();
    assert!(
        guests.contains(&"192.168.127.2:80") && guests.contains(&format!("[{GUEST6}]:80").as_str()),
        "inbound flows: {guests:?}"
    );

    vm.send_line("done");
    let finished = vm.wait();
    finished.assert_success();
    assert!(daemon.is_running());
}

#[test]
fn no_ipv6_guest_gets_no_router_advertisement() {
    let mut rig = Rig::new("net6_off");
    let socket = rig.dir().join("net.sock");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(["--no-ipv6", "--dns-upstream", "127.0.0.1"]);
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    // Two solicitations are 4 s apart: an advertisement answering the first
    // would have arrived before the second leaves.
    let script = r#"ip link set eth0 up
i=0
while [ $i -lt 300 ]; do
    [ "$(awk '$1 == "Icmp6OutRouterSolicits" {print $2}' /proc/net/snmp6)" -ge 2 ] && break
    sleep 0.1
    i=$((i+1))
done
echo "solicits=$(awk '$1 == "Icmp6OutRouterSolicits" {print $2}' /proc/net/snmp6)"
echo "adverts=$(awk '$1 == "Icmp6InRouterAdvertisements" {print $2}' /proc/net/snmp6)"
echo "global=$(ip -6 -o addr show dev eth0 scope global | wc -l) default=$(ip -6 route show default | wc -l)"
"#
    .to_owned();
    let started = Instant::now();
    let out = rig
        .boot(VmConfig {
            script,
            qemu_args: net_device_args(&socket, MAC, false),
            timeout: VM_TIMEOUT,
            ..VmConfig::default()
        })
        .wait();
    out.assert_success()
        .assert_contains("adverts=0\n")
        .assert_contains("global=0 default=0\n");
    let solicits: u32 = out
        .output
        .lines()
        .find_map(|l| l.strip_prefix("solicits="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        solicits >= 2,
        "the guest sent {solicits} solicitations:\n{}",
        out.output
    );
    eprintln!("--no-ipv6 guest done in {:?}", started.elapsed());
    assert!(daemon.is_running());
}
