//! airlock-net end to end: a real guest configures eth0 by DHCP and talks
//! to the gateway, to the host's loopback through `host.airlock.internal`
//! and, through NAT, to a host in a network namespace the test built. Every
//! check looks at both sides: what the guest saw and what the server on the
//! host saw (bytes, hashes, peer addresses, queries). Traffic stays on
//! loopback and in the test's own namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{DnsResolver, HttpServer, LineEchoServer, UdpEchoServer, HELLO_BODY};
use airlock_e2e::{
    fd_count, fd_listing, net_device_args, process_exists, rss_kib, veth_pair, DaemonHandle,
    GuestOutput, NetNs, Rig, Vm, VmConfig,
};

const MAC: &str = "52:54:00:12:34:56";
const GATEWAY: &str = "192.168.127.1";
const GUEST: &str = "192.168.127.2";
const HOST_ALIAS: &str = "192.168.127.254";
const PROXY_ALIAS: &str = "192.168.127.253";
const MTU: u32 = 65520;
/// How long a guest may run.
const VM_TIMEOUT: Duration = Duration::from_secs(150);

/// Shell lines configuring eth0 with busybox udhcpc; the link MTU is reset
/// first so that seeing 65520 afterwards proves DHCP option 26 was applied
/// (virtio-net's `host_mtu` alone already sets it at probe time).
const UDHCPC: &str = "\
ip link set eth0 mtu 1500
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }
";

/// The guest's IPv4 address/prefix on eth0.
const SHOW_ADDR: &str = "$(ip -4 -o addr show dev eth0 | awk '{print $4}')";

/// Starts airlock-net on `<rig>/net.sock` (inside `ns` if given) with
/// `args`, and waits until it listens.
fn start_net(rig: &mut Rig, ns: Option<&NetNs>, args: &[String]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join("net.sock");
    let bin = Rig::bin("airlock-net");
    let mut cmd = match ns {
        Some(ns) => ns.command(&bin),
        None => Command::new(&bin),
    };
    cmd.arg("--socket-path").arg(&socket).args(args);
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (daemon, socket)
}

/// `--dns-upstream <resolver>`: every test points the forwarder at its own
/// resolver, so no query ever reaches the host's real resolvers.
fn upstream(resolver: &DnsResolver) -> [String; 2] {
    ["--dns-upstream".into(), resolver.addr().to_string()]
}

fn boot(rig: &mut Rig, socket: &std::path::Path, script: String, reconnect: bool) -> Vm {
    rig.boot(VmConfig {
        script,
        qemu_args: net_device_args(socket, MAC, reconnect),
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    })
}

/// The rest of the first output line starting with `prefix`.
fn line_value<'a>(output: &'a str, prefix: &str) -> Option<&'a str> {
    output.lines().find_map(|l| l.strip_prefix(prefix))
}

/// The rest of the first line starting with `prefix`; panics with the
/// guest's output and the logs if there is none.
fn value<'a>(out: &'a GuestOutput, prefix: &str) -> &'a str {
    line_value(&out.output, prefix).unwrap_or_else(|| {
        panic!(
            "no line starting with {prefix:?} in the guest output:\n{}",
            out.output
        )
    })
}

/// DHCP (udhcpc, then dhcpcd), the gateway's ICMP echo and its DNS: local
/// names, `--dns-record`, forwarding to the test's resolver, NXDOMAIN for
/// unknown names in the local zone without asking upstream.
#[test]
fn dhcp_ping_and_dns() {
    let forwarded_ip = Ipv4Addr::new(10, 1, 2, 3);
    let resolver = DnsResolver::start(&[("forwarded.test", forwarded_ip)]);
    let mut rig = Rig::new("net_dhcp_dns");
    let mut args = upstream(&resolver).to_vec();
    args.extend(["--dns-record".into(), "test.example=10.9.8.7".into()]);
    // A search list whose names share a tail: option 119 compresses it.
    args.extend([
        "--dns-search".into(),
        "lab.corp.example,corp.example".into(),
    ]);
    let (daemon, socket) = start_net(&mut rig, None, &args);

    let script = format!(
        r#"{UDHCPC}
echo "udhcpc addr={SHOW_ADDR} mtu=$(cat /sys/class/net/eth0/mtu)"
echo "udhcpc default=$(ip route show default)"
echo "udhcpc resolv=$(grep nameserver /etc/resolv.conf | tr '\n' ' ')"
echo "udhcpc $(grep ^search /etc/resolv.conf)"
ping -c 2 -W 5 {GATEWAY} >/tmp/ping 2>&1
echo "ping gateway status=$? replies=$(grep -c 'bytes from {GATEWAY}' /tmp/ping)"
ping -c 1 -W 5 host.airlock.internal >/tmp/ping 2>&1
echo "ping host status=$? $(grep -o 'bytes from [0-9.]*' /tmp/ping)"
for name in host.airlock.internal gateway.airlock.internal http.airlock.internal test.example forwarded.test nope.airlock.internal; do
    nslookup -type=a $name >/tmp/ns 2>&1
    status=$?
    echo "dns $name status=$status answer=$(awk '/^Name:/ {{n=1}} n && /^Address/ {{printf "%s%s", s, $2; s=","}}' /tmp/ns)$(grep -o NXDOMAIN /tmp/ns | head -n 1)"
    sed 's/^/  nslookup: /' /tmp/ns
done
# Release the lease (udhcpc -R: renew it, then release it on exit).
udhcpc -i eth0 -q -n -R -t 5 2>&1 | sed 's/^/release: /'
echo "released addr={SHOW_ADDR}"
ip route flush dev eth0
ip link set eth0 mtu 1500
: >/etc/resolv.conf
dhcpcd -1 -4 -B -t 20 eth0 >/tmp/dhcpcd.log 2>&1 || {{ cat /tmp/dhcpcd.log; echo 'dhcpcd failed'; exit 1; }}
echo "dhcpcd addr={SHOW_ADDR} mtu=$(cat /sys/class/net/eth0/mtu)"
ip route | sed 's/^/dhcpcd route: /'
# dhcpcd -U only prints to a terminal (it exits without flushing stdio).
echo "dhcpcd lease begin"
dhcpcd -4 -U </var/lib/dhcpcd/eth0.lease
echo "dhcpcd lease end"
echo "dhcpcd resolv=$(grep nameserver /etc/resolv.conf | tr '\n' ' ')"
ping -c 1 -W 5 {GATEWAY} >/tmp/ping 2>&1
echo "dhcpcd ping status=$?"
"#
    );
    let out = boot(&mut rig, &socket, script, false).wait();
    out.assert_success()
        .assert_contains(&format!("udhcpc addr={GUEST}/24 mtu={MTU}\n"))
        .assert_contains(&format!("udhcpc default=default via {GATEWAY} dev eth0"))
        .assert_contains(&format!("udhcpc resolv=nameserver {GATEWAY} \n"))
        .assert_contains("udhcpc search lab.corp.example corp.example\n")
        .assert_contains("ping gateway status=0 replies=2\n")
        .assert_contains(&format!("ping host status=0 bytes from {HOST_ALIAS}\n"));
    for (name, answer) in [
        ("host.airlock.internal", HOST_ALIAS),
        ("gateway.airlock.internal", GATEWAY),
        ("http.airlock.internal", PROXY_ALIAS),
        ("test.example", "10.9.8.7"),
        ("forwarded.test", "10.1.2.3"),
    ] {
        out.assert_contains(&format!("dns {name} status=0 answer={answer}\n"));
    }
    let nope = value(&out, "dns nope.airlock.internal ");
    assert!(
        nope.ends_with("answer=NXDOMAIN") && !nope.starts_with("status=0"),
        "nope.airlock.internal: {nope}\n{}",
        out.output
    );

    // The forwarder asked our resolver for the forwarded name, and only
    // for names outside the gateway's own zone.
    let queries = resolver.wait_for_query("forwarded.test", Duration::from_secs(1));
    let local: Vec<_> = queries
        .iter()
        .filter(|q| q.name.ends_with("airlock.internal") || q.name == "test.example")
        .collect();
    assert!(
        local.is_empty(),
        "local names reached the upstream resolver: {local:?}"
    );
    assert!(
        queries
            .iter()
            .all(|q| q.peer.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{queries:?}"
    );

    out.assert_contains("released addr=\n");
    // dhcpcd: the same address. It asks for option 26 (interface_mtu in
    // Debian's dhcpcd.conf) and gets 65520, but dhcpcd 9 applies it to the
    // routes it adds (RTAX_MTU), not to the link: the link stays at the
    // 1500 the script set. busybox `ip route` does not print route
    // metrics, so the lease dump is where the offered MTU shows.
    let lease: Vec<&str> = out
        .output
        .lines()
        .skip_while(|l| *l != "dhcpcd lease begin")
        .take_while(|l| *l != "dhcpcd lease end")
        .collect();
    for expected in [
        format!("ip_address={GUEST}"),
        format!("interface_mtu={MTU}"),
        format!("routers={GATEWAY}"),
        format!("domain_name_servers={GATEWAY}"),
        "domain_name=lab.corp.example".to_owned(),
        "domain_search=lab.corp.example corp.example".to_owned(),
    ] {
        assert!(
            lease.contains(&expected.as_str()),
            "dhcpcd's lease lacks {expected}: {lease:#?}\n{}",
            out.output
        );
    }
    out.assert_contains(&format!("dhcpcd addr={GUEST}/24 mtu=1500\n"))
        .assert_contains(&format!("dhcpcd route: default via {GATEWAY} dev eth0 "))
        .assert_contains(&format!("dhcpcd resolv=nameserver {GATEWAY} \n"))
        .assert_contains("dhcpcd ping status=0\n");
    assert!(daemon.is_running());
}

/// host.airlock.internal reaches the host's 127.0.0.1: a 16 MiB download
/// and a 16 MiB upload, each checked by SHA-256 on the other side.
#[test]
fn host_loopback_download_and_upload_16_mib() {
    const SIZE: usize = 16 << 20;
    let http = HttpServer::start(SIZE);
    let resolver = DnsResolver::start(&[]);
    let mut rig = Rig::new("net_host_loopback");
    let (_daemon, socket) = start_net(&mut rig, None, &upstream(&resolver));
    let url = format!("http://host.airlock.internal:{}", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
curl -sS --max-time 120 -o /tmp/blob -w 'download %{{http_code}} %{{size_download}} %{{time_total}}\n' {url}/blob
echo "blob sha=$(sha256sum /tmp/blob | cut -c1-64)"
head -c {SIZE} /dev/urandom >/tmp/up
echo "upload sha=$(sha256sum /tmp/up | cut -c1-64)"
curl -sS --max-time 120 --data-binary @/tmp/up -w 'upload %{{http_code}} %{{size_upload}} %{{time_total}}\n' {url}/upload
echo "rx_length_errors=$(cat /sys/class/net/eth0/statistics/rx_length_errors)"
"#
    );
    let out = boot(&mut rig, &socket, script, false).wait();
    out.assert_success()
        .assert_contains(&format!("download 200 {SIZE} "))
        .assert_contains(&format!("blob sha={}\n", http.blob_sha256()));
    let guest_sha = value(&out, "upload sha=");
    out.assert_contains(&format!("received {SIZE} {guest_sha}\n"))
        .assert_contains(&format!("upload 200 {SIZE} "))
        // Frames spanning several receive buffers arrive whole (the guest
        // counts a frame whose buffers were not all published yet here).
        .assert_contains("rx_length_errors=0\n");
    let log = http.log();
    assert_eq!(log.uploads.len(), 1, "{log:?}");
    assert_eq!(log.uploads[0].len, SIZE as u64);
    assert_eq!(log.uploads[0].sha256, guest_sha, "upload hash");
    // Connections to the alias arrive from the host's loopback.
    assert!(
        log.requests.iter().all(|r| r.peer.ip().is_loopback()),
        "{:?}",
        log.requests
    );
    let seconds = |prefix: &str| {
        value(&out, prefix)
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mib = SIZE as f64 / f64::from(1 << 20);
    let (down, up) = (seconds("download 200 "), seconds("upload 200 "));
    eprintln!(
        "16 MiB through host.airlock.internal (TCG guest, for information): \
         download {down:.2} s ({:.1} MiB/s), upload {up:.2} s ({:.1} MiB/s)",
        mib / down,
        mib / up
    );
}

/// TCP segmentation offload in a real guest at MTU 1500: the guest
/// negotiates HOST_TSO4/6 and GUEST_TSO4/6, 16 MiB go each way intact, and
/// the guest's own counters show frames larger than the MTU crossing the
/// queues in both directions (a TSO segment is one frame for virtio-net).
/// With `--no-segmentation-offload` nothing is offered and every frame
/// stays within the MTU.
#[test]
fn tso_carries_segments_larger_than_the_mtu_both_ways() {
    const SIZE: usize = 16 << 20;
    let http = HttpServer::start(SIZE);
    let resolver = DnsResolver::start(&[]);
    let url = format!("http://host.airlock.internal:{}", http.port());
    // virtio features as the guest's sysfs shows them: one character per
    // bit, from bit 0.
    let script = format!(
        r#"set -e
{UDHCPC}
ip link set eth0 mtu 1500
f=$(cat /sys/class/net/eth0/device/features)
echo "tso bits=$(echo "$f" | cut -c8,9,12,13)"
s() {{ cat /sys/class/net/eth0/statistics/$1; }}
rp=$(s rx_packets); rb=$(s rx_bytes)
curl -sS --max-time 120 -o /tmp/blob -w 'download %{{http_code}} %{{size_download}}\n' {url}/blob
echo "blob sha=$(sha256sum /tmp/blob | cut -c1-64)"
echo "rx bytes/frame=$(( ($(s rx_bytes) - rb) / ($(s rx_packets) - rp) ))"
head -c {SIZE} /dev/urandom >/tmp/up
echo "upload sha=$(sha256sum /tmp/up | cut -c1-64)"
tp=$(s tx_packets); tb=$(s tx_bytes)
curl -sS --max-time 120 --data-binary @/tmp/up -w 'upload %{{http_code}} %{{size_upload}}\n' {url}/upload
echo "tx bytes/frame=$(( ($(s tx_bytes) - tb) / ($(s tx_packets) - tp) ))"
"#
    );
    for tso in [true, false] {
        let mut rig = Rig::new(if tso { "net_tso" } else { "net_no_tso" });
        let mut args = upstream(&resolver).to_vec();
        if !tso {
            args.push("--no-segmentation-offload".into());
        }
        let (daemon, socket) = start_net(&mut rig, None, &args);
        let out = boot(&mut rig, &socket, script.clone(), false).wait();
        out.assert_success()
            .assert_contains(&format!("download 200 {SIZE}\n"))
            .assert_contains(&format!("blob sha={}\n", http.blob_sha256()))
            .assert_contains(&format!("upload 200 {SIZE}\n"))
            .assert_contains(if tso {
                "tso bits=1111\n"
            } else {
                "tso bits=0000\n"
            });
        let guest_sha = value(&out, "upload sha=");
        out.assert_contains(&format!("received {SIZE} {guest_sha}\n"));
        let per_frame = |prefix: &str| -> u64 {
            value(&out, prefix).trim().parse().unwrap_or_else(|e| {
                panic!("{prefix}: {e}\n{}", out.output);
            })
        };
        let (rx, tx) = (per_frame("rx bytes/frame="), per_frame("tx bytes/frame="));
        // An Ethernet frame at MTU 1500 is at most 1514 bytes.
        if tso {
            assert!(
                rx > 1514 && tx > 1514,
                "with TSO the average frame exceeds the MTU: rx {rx}, tx {tx}\n{}",
                daemon.log()
            );
        } else {
            assert!(
                rx <= 1514 && tx <= 1514,
                "without TSO every frame fits the MTU: rx {rx}, tx {tx}"
            );
        }
        let log = daemon.log();
        assert!(
            !log.contains("frame from the guest refused"),
            "no frame refused for its offload header:\n{log}"
        );
    }
}

/// 200 connections from the guest open at the same time to a host-loopback
/// server; each gets its own reply.
#[test]
fn two_hundred_concurrent_guest_connections() {
    const CONNECTIONS: usize = 200;
    // Replies wait until all connections are open (at most 30 s).
    let echo = LineEchoServer::start(CONNECTIONS, Duration::from_secs(30));
    let resolver = DnsResolver::start(&[]);
    let mut rig = Rig::new("net_concurrent");
    let (daemon, socket) = start_net(&mut rig, None, &upstream(&resolver));
    let port = echo.addr().port();
    let script = format!(
        r#"set -e
{UDHCPC}
set +e
i=0
while [ $i -lt {CONNECTIONS} ]; do
    echo "connection $i" >/tmp/q$i
    timeout 60 nc -w 30 {HOST_ALIAS} {port} </tmp/q$i >/tmp/r$i 2>&1 &
    i=$((i+1))
done
echo "launched $i connections"
wait
ok=0
i=0
while [ $i -lt {CONNECTIONS} ]; do
    if [ "$(cat /tmp/r$i)" = "echo connection $i" ]; then
        ok=$((ok+1))
    else
        echo "connection $i got: $(cat /tmp/r$i)"
    fi
    i=$((i+1))
done
echo "correct replies: $ok"
"#
    );
    let vm = boot(&mut rig, &socket, script, false);
    let watch = RssWatch::start(daemon.pid(), vm.pid(), RSS_LIMIT_KIB);
    let out = watch.wait(vm, &daemon, || {
        let log = echo.log();
        format!(
            "The echo server saw {} connections ({} at once at most) and sent {} replies.",
            log.peers.len(),
            log.max_open,
            log.replies
        )
    });
    out.assert_success()
        .assert_contains(&format!("correct replies: {CONNECTIONS}\n"));
    let log = echo.log();
    assert_eq!(log.peers.len(), CONNECTIONS, "connections the server saw");
    assert_eq!(
        log.max_open, CONNECTIONS,
        "the connections were not all open at once"
    );
    assert!(daemon.is_running());
}

/// NAT to an outside host for real: airlock-net runs in namespace A, the
/// servers in namespace B (10.200.0.2) behind a veth pair. TCP and UDP
/// round trips arrive from A's address; a closed port is refused at once;
/// ICMP echo works once A permits ping sockets, and before that the daemon
/// says so once and keeps running.
#[test]
fn nat_to_an_outside_namespace() {
    let a = NetNs::new("nat-a");
    let b = NetNs::new("nat-b");
    veth_pair(&a, "10.200.0.1/24", &b, "10.200.0.2/24");
    let outside = Ipv4Addr::new(10, 200, 0, 2);
    let any_port = SocketAddr::from((outside, 0));
    let http = HttpServer::serve(b.bind_tcp(any_port), 0);
    let udp = UdpEchoServer::serve(b.bind_udp(any_port));
    let resolver = DnsResolver::serve(b.bind_udp(any_port), &[]);
    // Bound, then closed: nothing listens there.
    let closed_port = b.bind_tcp(any_port).local_addr().unwrap().port();
    // A fresh namespace has ping_group_range "1 0": no ping sockets.
    let mut rig = Rig::new("net_nat");
    let (daemon, socket) = start_net(&mut rig, Some(&a), &upstream(&resolver));

    let script = format!(
        r#"{UDHCPC}
echo "tcp $(curl -sS --max-time 20 --data-binary 'round trip through NAT' http://{outside}:{http_port}/echo 2>&1 | tr '\n' '|')"
echo "udp $(curl -sS --max-time 20 tftp://{outside}:{udp_port}/udp-through-nat 2>&1)"
t0=$(cut -d' ' -f1 /proc/uptime)
nc -w 10 {outside} {closed_port} </dev/null >/tmp/closed 2>&1
status=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "closed status=$status centiseconds=$(( ${{t1%.*}}${{t1#*.}} - ${{t0%.*}}${{t0#*.}} )) $(cat /tmp/closed)"
ping -c 2 -W 2 {outside} >/tmp/ping 2>&1
echo "ping before status=$? replies=$(grep -c 'bytes from' /tmp/ping)"
echo PING-BLOCKED-DONE
read go
ping -c 1 -W 5 {outside} >/tmp/ping 2>&1
echo "ping after status=$? $(grep -o 'bytes from [0-9.]*' /tmp/ping)"
"#,
        http_port = http.port(),
        udp_port = udp.addr().port(),
    );
    let mut vm = boot(&mut rig, &socket, script, false);
    let first = vm.wait_for("PING-BLOCKED-DONE", Duration::from_secs(120));
    let line = |prefix: &str| {
        line_value(&first, prefix)
            .unwrap_or_else(|| panic!("no {prefix:?} line in the guest output:\n{first}"))
            .to_string()
    };

    // TCP: the body came back, and the server saw A's address.
    let tcp = line("tcp ");
    assert!(
        tcp.starts_with("peer 10.200.0.1:") && tcp.ends_with("|round trip through NAT"),
        "TCP through NAT: {tcp:?}\n{first}"
    );
    // UDP: the TFTP answer names A's address too.
    let udp_line = line("udp ");
    assert!(
        udp_line.starts_with("udp-through-nat from 10.200.0.1:"),
        "UDP through NAT: {udp_line:?}\n{first}"
    );
    let peers = udp.log().peers;
    assert!(
        !peers.is_empty()
            && peers
                .iter()
                .all(|p| p.ip() == IpAddr::V4([10, 200, 0, 1].into())),
        "UDP peers {peers:?}"
    );
    let requests = http.log().requests;
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.peer.ip() == IpAddr::V4([10, 200, 0, 1].into())),
        "HTTP requests {requests:?}"
    );

    // A closed port: refused, at once (the host's RST becomes the guest's).
    let closed = line("closed ");
    let centiseconds: u64 = closed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("centiseconds="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the time from {closed:?}"));
    assert!(
        closed.starts_with("status=1 ") && closed.contains("Connection refused"),
        "connect to a closed port: {closed:?}"
    );
    assert!(
        centiseconds < 200,
        "the refusal took {centiseconds} cs (a timeout, not a RST?): {closed:?}"
    );
    eprintln!("connect to a closed port in namespace B refused after {centiseconds} cs");

    // Ping without permission: no reply, one log line, the daemon runs on.
    let ping_before = line("ping before ");
    assert!(
        ping_before.ends_with("replies=0") && !ping_before.starts_with("status=0"),
        "ping without ping sockets: {ping_before:?}"
    );
    assert!(daemon.is_running(), "airlock-net exited:\n{}", daemon.log());
    let log = daemon.log();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ping_group_range"))
        .collect();
    assert_eq!(
        complaints.len(),
        1,
        "expected exactly one line about ping sockets not being permitted:\n{log}"
    );
    assert!(
        complaints[0].contains("not permitted"),
        "{:?}",
        complaints[0]
    );

    // Permit ping sockets in A: the next echo request gets its reply.
    a.sysctl("net.ipv4.ping_group_range", "0 2147483647");
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success()
        .assert_contains("ping after status=0 bytes from 10.200.0.2\n");
    assert_eq!(
        daemon.log().matches("ping_group_range").count(),
        1,
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
}

/// QEMU killed while the guest downloads an endless stream: the daemon
/// closes the host connection, frees everything the guest had and serves
/// the next QEMU — three times, with fd count back to the baseline each
/// time and RSS flat.
#[test]
fn qemu_killed_mid_transfer_then_new_guests() {
    const ROUNDS: usize = 3;
    /// RSS growth allowed between rounds.
    const RSS_SLACK_KIB: u64 = 4 * 1024;
    let http = HttpServer::start(0);
    let resolver = DnsResolver::start(&[]);
    let mut rig = Rig::new("net_qemu_killed");
    let (daemon, socket) = start_net(&mut rig, None, &upstream(&resolver));
    let pid = daemon.pid();
    daemon.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
    let baseline_fds = fd_count(pid);
    let url = format!("http://host.airlock.internal:{}", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
curl -sS --max-time 30 {url}/hello
curl -sS {url}/stream | {{ head -c 1048576 >/dev/null; echo STREAMING; cat >/dev/null; }}
echo "the stream ended"
"#
    );
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        // Rounds alternate between a plain chardev and one with reconnect=1.
        let reconnect = round % 2 == 1;
        let mut vm = boot(&mut rig, &socket, script.clone(), reconnect);
        let out = vm.wait_for("STREAMING", Duration::from_secs(120));
        assert!(out.contains(HELLO_BODY), "round {round}: {out}");
        http.wait_until("the stream's start", Duration::from_secs(5), |l| {
            l.streams_started == round + 1
        });
        vm.kill();

        let log = http.wait_until(
            "the daemon closing the stream's host connection",
            Duration::from_secs(15),
            |l| l.stream_ends.len() == round + 1,
        );
        let end = &log.stream_ends[round];
        assert!(
            end.kind != std::io::ErrorKind::WouldBlock && end.kind != std::io::ErrorKind::TimedOut,
            "round {round}: the stream stalled instead of being closed: {end:?}"
        );
        daemon.wait_for_log_lines("frontend disconnected", round + 1, Duration::from_secs(15));
        daemon.wait_for_log_lines("ready for a frontend", round + 2, Duration::from_secs(15));
        assert!(
            daemon.is_running(),
            "round {round}: airlock-net exited:\n{}",
            daemon.log()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while fd_count(pid) != baseline_fds && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let fds = fd_count(pid);
        assert_eq!(
            fds,
            baseline_fds,
            "round {round}: airlock-net has {fds} fds, {baseline_fds} before the first guest: {}",
            fd_listing(pid)
        );
        rss.push(rss_kib(pid));
        eprintln!(
            "round {round}: {} bytes streamed before the kill; fds {fds}; RSS {} KiB",
            end.bytes, rss[round]
        );
    }
    let log = daemon.log();
    assert!(
        !log.contains("frontend session ended with an error"),
        "{log}"
    );
    let (min, max) = (rss.iter().min().unwrap(), rss.iter().max().unwrap());
    assert!(
        max - min <= RSS_SLACK_KIB,
        "airlock-net's RSS grew across reconnects: {rss:?} KiB"
    );

    // And a last guest still gets a lease and a file.
    let out = boot(
        &mut rig,
        &socket,
        format!("set -e\n{UDHCPC}\ncurl -sS --max-time 30 {url}/hello\n"),
        true,
    )
    .wait();
    out.assert_success().assert_contains(HELLO_BODY);
}

/// The most airlock-net may hold while [`RssWatch`] watches: the guest's
/// memory it touched (at most the VM's 512 MiB) plus bounded flow buffers.
const RSS_LIMIT_KIB: u64 = 1536 * 1024;

/// Watches airlock-net's RSS while a guest runs and kills QEMU if it passes
/// a limit: a runaway daemon would otherwise eat the machine's memory
/// before the VM's timeout ends the test.
struct RssWatch {
    done: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Option<u64>>>,
}

impl RssWatch {
    fn start(daemon_pid: u32, qemu_pid: u32, limit_kib: u64) -> RssWatch {
        let done = Arc::new(AtomicBool::new(false));
        let thread_done = Arc::clone(&done);
        let thread = thread::spawn(move || {
            while !thread_done.load(Ordering::SeqCst) {
                if !process_exists(daemon_pid) {
                    return None;
                }
                let rss = rss_kib(daemon_pid);
                if rss > limit_kib {
                    // Only signal QEMU if the pid is still QEMU's.
                    let comm = std::fs::read_to_string(format!("/proc/{qemu_pid}/comm"))
                        .unwrap_or_default();
                    if comm.starts_with("qemu") {
                        let _ = Command::new("kill")
                            .args(["-KILL", &qemu_pid.to_string()])
                            .status();
                    }
                    return Some(rss);
                }
                thread::sleep(Duration::from_millis(200));
            }
            None
        });
        RssWatch {
            done,
            thread: Some(thread),
        }
    }

    /// Waits for the guest like [`Vm::wait`]; panics naming the RSS if the
    /// watch killed QEMU.
    /// `context` describes the rest of the world for the failure message.
    fn wait(mut self, vm: Vm, daemon: &DaemonHandle, context: impl Fn() -> String) -> GuestOutput {
        let result = panic::catch_unwind(AssertUnwindSafe(|| vm.wait()));
        self.done.store(true, Ordering::SeqCst);
        let tripped = self.thread.take().and_then(|t| t.join().ok()).flatten();
        if let Some(rss) = tripped {
            let log = daemon.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            panic!(
                "airlock-net's RSS reached {} MiB (limit {} MiB); QEMU was killed. {}\n\
                 --- airlock-net log tail ---\n{}",
                rss / 1024,
                RSS_LIMIT_KIB / 1024,
                context(),
                tail.join("\n")
            );
        }
        match result {
            Ok(out) => out,
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}
