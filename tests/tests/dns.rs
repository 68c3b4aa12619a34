//! The gateway's DNS as a real guest sees it while the host changes under
//! it: airlock-net (default confinement) runs in a network namespace of its
//! own, with the test's resolvers on that namespace's loopback at port 53
//! (R1 127.0.0.11, R2 127.0.0.12; R3 127.0.0.13:5353 for the zone
//! corp.test), and follows a resolv.conf in the test's directory. The
//! guest (busybox nslookup, glibc through curl, udhcpc) checks each step;
//! the resolvers' own logs say who was asked.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::servers::DnsResolver;
use airlock_e2e::{net_device_args, GuestOutput, NetNs, Rig, Vm, VmConfig};

const MAC: &str = "52:54:00:12:34:56";
const GATEWAY: &str = "192.168.127.1";
const VM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the daemon may take to show a change in `GET /dns` before the
/// test gives up (the time it took is printed, not asserted).
const PATIENCE: Duration = Duration::from_secs(30);

const R1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const R2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
const R3: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 13)), 5353);

/// One HTTP request to the control API: status and body.
fn api(path: &Path, method: &str, target: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}")),
    )
}

/// Waits until the daemon's resolvers are `want`; returns how long it took.
fn wait_upstreams(api_path: &Path, want: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let (_, dns) = api(api_path, "GET", "/dns", "");
        if dns["upstreams"] == serde_json::json!(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "resolvers stay {}, want {want:?}",
            dns["upstreams"]
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `text` to `path` by a rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Points the symlink (or file) `link` at `target` with a rename.
fn retarget(link: &Path, target: &Path) {
    let tmp = link.with_extension("link");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// The value after `prefix` on the guest's line starting with it.
fn value(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
        .to_owned()
}

/// Names each resolver was asked, in order.
fn asked(r: &DnsResolver) -> Vec<String> {
    r.queries().into_iter().map(|q| q.name).collect()
}

/// The guest's side of one step: wait for the host, then print lookups.
fn step(vm: &mut Vm, name: &str) -> String {
    vm.send_line("go");
    vm.wait_for(&format!("DONE {name}"), Duration::from_secs(120))
}

#[test]
fn the_guest_follows_the_hosts_resolvers_zones_search_list_and_records() {
    let ns = NetNs::new("dns");
    let records = |ip: [u8; 4]| {
        vec![
            ("which.test", Ipv4Addr::from(ip)),
            ("short.lab.test", Ipv4Addr::new(192, 168, 127, 1)),
        ]
    };
    let r1 = DnsResolver::serve(ns.bind_udp((R1, 53).into()), &records([10, 1, 0, 1]));
    let r2 = DnsResolver::serve(ns.bind_udp((R2, 53).into()), &records([10, 2, 0, 2]));
    let r3 = DnsResolver::serve(
        ns.bind_udp(R3),
        &[("a.corp.test", Ipv4Addr::new(10, 3, 0, 3))],
    );
    let mut rig = Rig::new("dns_follows_the_host");
    let dir: PathBuf = rig.dir().to_owned();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let conf = dir.join("etc/resolv.conf");
    std::fs::write(&conf, format!("nameserver {R1}\nsearch lab.test\n")).unwrap();
    let socket = dir.join("net.sock");
    let api_path = dir.join("net.api");
    let mut cmd = ns.command(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--api-socket")
        .arg(&api_path)
        .arg("--resolv-conf")
        .arg(&conf)
        .args([
            "--dns-zone",
            &format!("corp.test={R3}"),
            "--log-level",
            "debug",
        ]);
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));

    let script = r#"
ip link set eth0 mtu 1500
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }
echo "dhcp $(grep ^search /etc/resolv.conf) | $(grep ^nameserver /etc/resolv.conf)"
lookup() {
    nslookup -type=a "$1" >/tmp/ns 2>&1
    status=$?
    echo "$(awk '/^Name:/ {n=1} n && /^Address/ {printf "%s%s", s, $2; s=","}' /tmp/ns)$(grep -o 'NXDOMAIN\|SERVFAIL' /tmp/ns | head -n 1) status=$status"
}
echo "first which=$(lookup which.test)"
echo "short $(curl -sv --max-time 20 http://short:9/ 2>&1 | grep -o 'Trying [0-9.]*' | head -n 1)"
echo "zone a.corp.test=$(lookup a.corp.test)"
for step in renamed symlinked retargeted both stopped; do
    echo "READY $step"; read -r go
    echo "$step which=$(lookup which.test)"
    echo "DONE $step"
done
echo "READY records"; read -r go
for name in api.test test.dynamic.internal alias.test; do
    echo "records $name=$(lookup $name)"
done
echo "DONE records"
echo "READY removed"; read -r go
echo "removed api.test=$(lookup api.test)"
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || cat /tmp/udhcpc.log
echo "renewed $(grep ^search /etc/resolv.conf)"
echo "DONE removed"
"#;
    let mut vm = rig.boot(VmConfig {
        script: script.to_owned(),
        qemu_args: net_device_args(&socket, MAC, false),
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let mut out = vm.wait_for("READY renamed", Duration::from_secs(180));
    assert_eq!(
        value(&out, "dhcp "),
        format!("search lab.test | nameserver {GATEWAY}"),
        "the search list came by DHCP"
    );
    assert_eq!(value(&out, "first which="), "10.1.0.1 status=0");
    // glibc (curl) tried short.lab.test: the search list at work.
    assert_eq!(value(&out, "short "), format!("Trying {GATEWAY}"));
    assert!(
        asked(&r1).contains(&"short.lab.test".to_owned()),
        "{:?}",
        asked(&r1)
    );
    // The zone's name went to R3 only.
    assert_eq!(value(&out, "zone a.corp.test="), "10.3.0.3 status=0");
    let corp = asked(&r3);
    assert!(
        !corp.is_empty() && corp.iter().all(|n| n == "a.corp.test"),
        "{corp:?}"
    );
    for r in [&r1, &r2] {
        assert!(
            !asked(r).iter().any(|n| n.ends_with("corp.test")),
            "{:?}",
            asked(r)
        );
    }

    let r1s = format!("{R1}:53");
    let r2s = format!("{R2}:53");
    let mut took = Vec::new();
    // Renamed over.
    replace(&conf, &format!("nameserver {R2}\nsearch lab.test\n"));
    took.push(("rename", wait_upstreams(&api_path, &[&r2s])));
    out.push_str(&step(&mut vm, "renamed"));
    assert_eq!(value(&out, "renamed which="), "10.2.0.2 status=0");
    // A symlink, then the symlink pointed elsewhere.
    std::fs::write(dir.join("run/one.conf"), format!("nameserver {R1}\n")).unwrap();
    std::fs::write(dir.join("run/two.conf"), format!("nameserver {R2}\n")).unwrap();
    retarget(&conf, &dir.join("run/one.conf"));
    took.push(("symlink", wait_upstreams(&api_path, &[&r1s])));
    out.push_str(&step(&mut vm, "symlinked"));
    assert_eq!(value(&out, "symlinked which="), "10.1.0.1 status=0");
    retarget(&conf, Path::new("../run/two.conf"));
    took.push(("retarget", wait_upstreams(&api_path, &[&r2s])));
    out.push_str(&step(&mut vm, "retargeted"));
    assert_eq!(value(&out, "retargeted which="), "10.2.0.2 status=0");
    // Both, R1 first (and a new search list for renewals).
    replace(
        &dir.join("run/two.conf"),
        &format!("nameserver {R1}\nnameserver {R2}\nsearch other.test\n"),
    );
    took.push(("target", wait_upstreams(&api_path, &[&r1s, &r2s])));
    out.push_str(&step(&mut vm, "both"));
    assert_eq!(value(&out, "both which="), "10.1.0.1 status=0");
    for (how, t) in &took {
        eprintln!("resolv.conf change ({how}) in use by airlock-net after {t:?}");
    }

    // R1 stops mid-run: the next lookup fails over to R2.
    let r2_before = asked(&r2).len();
    drop(r1);
    out.push_str(&step(&mut vm, "stopped"));
    assert_eq!(value(&out, "stopped which="), "10.2.0.2 status=0");
    assert!(asked(&r2)[r2_before..].contains(&"which.test".to_owned()));
    let (_, stats) = api(&api_path, "GET", "/stats", "");
    let r1_stats = stats["dns"]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == r1s.as_str())
        .unwrap_or_else(|| panic!("{stats}"))
        .clone();
    assert!(
        r1_stats["down"] == true && r1_stats["unreachable"].as_u64() >= Some(1),
        "{r1_stats}"
    );

    // Records through the API: the airlock CLI, gvisor-tap-vsock's shape,
    // a CNAME to a name only the resolvers know; bad input is a 400.
    let cli = |args: &[&str]| {
        let out = Command::new(Rig::bin("airlock"))
            .arg("--api-socket")
            .arg(&api_path)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "airlock {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        cli(&["dns", "add", "api.test", "10.9.9.9"]),
        "added api.test A 10.9.9.9\n"
    );
    assert_eq!(
        cli(&["dns", "add", "alias.test", "which.test"]),
        "added alias.test CNAME which.test\n"
    );
    let (status, _) = api(
        &api_path,
        "POST",
        "/services/dns/add",
        r#"{"Name":"dynamic.internal.","Records":[{"Name":"test","IP":"192.168.127.254"}]}"#,
    );
    assert_eq!(status, 200);
    for body in [
        r#"{"name":"x.test"}"#,
        r#"{"name":"x.test","value":"1.2.3"}"#,
        "not json",
    ] {
        let (status, err) = api(&api_path, "POST", "/dns/add", body);
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{err}"
        );
    }
    out.push_str(&step(&mut vm, "records"));
    assert_eq!(value(&out, "records api.test="), "10.9.9.9 status=0");
    assert_eq!(
        value(&out, "records test.dynamic.internal="),
        "192.168.127.254 status=0"
    );
    assert_eq!(value(&out, "records alias.test="), "10.2.0.2 status=0");
    for r in [&r2, &r3] {
        let names = asked(r);
        assert!(
            !names
                .iter()
                .any(|n| n == "api.test" || n.ends_with("dynamic.internal")),
            "local names went upstream: {names:?}"
        );
    }

    // Removed: the name is the resolvers' again (they do not know it).
    assert_eq!(
        cli(&["dns", "rm", "api.test"]),
        "removed api.test A 10.9.9.9\n"
    );
    out.push_str(&step(&mut vm, "removed"));
    let removed = value(&out, "removed api.test=");
    assert!(
        removed.starts_with("NXDOMAIN") && !removed.ends_with("status=0"),
        "{removed}"
    );
    assert!(asked(&r2).contains(&"api.test".to_owned()));
    // A renewing guest picks up the new search list.
    assert_eq!(value(&out, "renewed "), "search other.test");

    let out: GuestOutput = vm.wait();
    out.assert_success();
    assert!(daemon.is_running(), "{}", daemon.log());
}

/// Not a check but a measurement (`cargo test -p airlock-e2e --test dns --
/// --ignored --nocapture`): what one lookup costs the guest when the
/// gateway answers it itself (the best a cache in airlock-net could do)
/// and when it forwards it to a resolver on the host's loopback, with
/// busybox nslookup and with glibc (getent is not in the test guest, so
/// curl's resolve step: `curl -w %{time_namelookup}`).
#[test]
#[ignore]
fn measure_local_and_forwarded_lookups() {
    let resolver = DnsResolver::start(&[("forwarded.test", Ipv4Addr::new(10, 1, 2, 3))]);
    let mut rig = Rig::new("dns_measure");
    let socket = rig.dir().join("net.sock");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(["--dns-upstream", &resolver.addr().to_string()])
        .args(["--dns-record", "local.test=192.168.127.1"]);
    rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    let script = r#"
udhcpc -i eth0 -q -n -t 5 -O mtu >/dev/null 2>&1 || exit 1
now() { cut -d' ' -f1 /proc/uptime | tr -d .; }
for name in local.test forwarded.test local.test forwarded.test; do
    nslookup -type=a $name | grep -q 'Address: 1' || { echo "no answer for $name"; exit 1; }
    t0=$(now); i=0
    while [ $i -lt 200 ]; do nslookup -type=a $name >/dev/null 2>&1; i=$((i+1)); done
    t1=$(now)
    echo "nslookup $name: $(( (t1 - t0) * 10 / 200 )) ms per lookup (200)"
    us=$(for i in $(seq 50); do
        curl -s -o /dev/null -w '%{time_namelookup}\n' --max-time 5 http://$name:9/
    done | awk '{ s += $1 } END { printf "%d", s / NR * 1000000 }')
    echo "glibc $name: $us us per lookup (50, curl time_namelookup)"
done
"#;
    let out = rig
        .boot(VmConfig {
            script: script.to_owned(),
            qemu_args: net_device_args(&socket, MAC, false),
            timeout: VM_TIMEOUT,
            ..VmConfig::default()
        })
        .wait();
    out.assert_success();
    for line in out.output.lines().filter(|l| l.contains(" per lookup")) {
        eprintln!("{line}");
    }
}
