//! airlock-net as libvirt's passt backend and on QEMU's stream netdev.
//!
//! Debian bookworm's libvirt 9.0 rejects `<backend type='passt'/>` outright
//! (Debian's patch "Disable passt support": "Invalid value for attribute
//! 'type' in element 'backend': 'passt'"), so no libvirt on this machine
//! launches passt. These tests replay, to the byte, the command lines
//! libvirt builds (libvirt 9.0's `qemuPasstStart` for `-netdev stream`,
//! 11.x's `qemuPasstBuildCommand` for vhost-user) against airlock-net under
//! the name `passt`, and boot QEMU 7.2 with the netdev libvirt generates for
//! the same domain. Each guest gets its address by DHCP, reaches a server
//! on the host's loopback, serves a forwarded port, and when it powers off
//! the daemon (started with `--one-off`, under the default `--seccomp
//! kill`) is gone and its socket removed.
//!
//! A third test runs the stream transport under airlock-net's own name with
//! `--pcap` and `--api-socket`: tcpdump reads the capture back and
//! `GET /metrics` is parsed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{HttpServer, HELLO_BODY};
use airlock_e2e::{process_exists, Rig, VmConfig};

const MAC: &str = "52:54:00:12:34:56";
/// The domain's `<ip address='10.0.2.15' prefix='24'/>`.
const GUEST: &str = "10.0.2.15";
/// host.airlock.internal in that subnet (its last usable address).
const HOST_ALIAS: &str = "10.0.2.254";
const GUEST_HTTP_PORT: u16 = 8080;
/// The user airlock-net serves as when started as root (and passt too).
const NOBODY: u32 = 65534;
const VM_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the daemon may take to leave after the guest's QEMU exits.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The guest: DHCP, a fetch from the host's loopback through
/// host.airlock.internal, then an HTTP server on the forwarded port until
/// the host says it is done.
fn guest_script(host_port: u16) -> String {
    format!(
        r#"set -e
ip link set eth0 mtu 1500
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || {{ cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }}
echo "address $(ip -4 -o addr show dev eth0 | awk '{{print $4}}') mtu $(cat /sys/class/net/eth0/mtu)"
echo "route $(ip route show default)"
echo "host alias $(nslookup -type=a host.airlock.internal 2>/dev/null | awk '/^Address/ {{a=$2}} END {{print a}}')"
echo "fetched $(curl -sS --max-time 30 http://host.airlock.internal:{host_port}/hello)"
mkdir -p /www
echo 'hello from the guest' >/www/hello.txt
httpd -p {GUEST_HTTP_PORT} -h /www
echo READY
read line
echo "host said $line"
"#
    )
}

/// A free TCP port on the host's loopback (and so, for the tests' purpose,
/// on every address: the forwarded ports bind 0.0.0.0 as passt does).
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `<rig>/bin/passt`: a symlink to airlock-net, as `scripts/install
/// --as-passt` makes.
fn passt_link(rig: &Rig) -> PathBuf {
    let dir = rig.dir().join("bin");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("passt");
    std::os::unix::fs::symlink(Rig::bin("airlock-net"), &link).unwrap();
    link
}

/// The directory libvirt keeps passt's socket and pid file in
/// (`/run/libvirt/qemu/passt`), owned by the user passt serves as: started
/// as root, airlock-net (like passt) serves as nobody, and it removes its
/// socket at exit only where that user may.
fn passt_state_dir(rig: &Rig) -> PathBuf {
    let dir = rig.dir().join("passt");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// GET `path` from 127.0.0.1:`port`: the body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(reply)
}

/// The pid of the process whose command line contains `needle` (the
/// background daemon: its parent exited).
fn pid_of(needle: &str) -> Option<u32> {
    pids_of(needle).into_iter().next()
}

fn wait_gone(pid: u32, socket: &Path, log: &str) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while process_exists(pid) || socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon (pid {pid}, running {}) or its socket {} (exists {}) outlived the guest:\n{log}",
            process_exists(pid),
            socket.display(),
            socket.exists()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// What both libvirt replays check once the guest is up: its lease, the
/// host fetch, and the forwarded port.
fn check_guest(ready: &str, forwarded: u16) {
    for expected in [
        format!("address {GUEST}/24 mtu 65520"),
        "route default via 10.0.2.1 dev eth0".to_owned(),
        format!("host alias {HOST_ALIAS}"),
        format!("fetched {}", HELLO_BODY.trim_end()),
    ] {
        assert!(ready.contains(&expected), "no {expected:?} in:\n{ready}");
    }
    assert_eq!(
        http_get(forwarded, "/hello.txt"),
        "hello from the guest\n",
        "the forwarded port did not reach the guest's server"
    );
}

/// libvirt 9.0 (`qemuPasstStart`, src/qemu/qemu_passt.c at v9.0.0) for
/// `<interface type='user'>` with `<mac>`, `<mtu size='65520'/>`,
/// `<backend type='passt' logFile=…/>`, `<ip address='10.0.2.15'
/// prefix='24'/>` and `<portForward proto='tcp' address='127.0.0.1'>`
/// `<range start='HOST' to='8080'/>`: libvirt runs passt and waits for it
/// to exit 0 (it forks into the background), then starts QEMU with
/// `-netdev stream,…,server=off`.
#[test]
fn libvirt_9_0_passt_command_line_on_the_stream_netdev() {
    let http = HttpServer::start(0);
    let mut rig = Rig::new("passt_libvirt9");
    let passt = passt_link(&rig);
    let socket = passt_state_dir(&rig).join("1-airlock-e2e-net0.socket");
    let log_file = rig.dir().join("passt.log");
    let forwarded = free_port();
    let args: Vec<String> = [
        "--one-off",
        "--socket",
        socket.to_str().unwrap(),
        "--mac-addr",
        MAC,
        "--mtu",
        "65520",
        "--log-file",
        log_file.to_str().unwrap(),
        "--address",
        GUEST,
        "--netmask",
        "24",
        "--tcp-ports",
        &format!("127.0.0.1/{forwarded}:{GUEST_HTTP_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let status = Command::new(&passt).args(&args).status().unwrap();
    let log = || fs::read_to_string(&log_file).unwrap_or_default();
    assert!(status.success(), "passt exited {status}:\n{}", log());
    // The parent has exited; the socket listens already (QEMU connects at
    // once and does not retry without reconnect=).
    assert!(
        socket.exists(),
        "no socket after passt returned:\n{}",
        log()
    );
    let pid = pid_of(socket.to_str().unwrap()).expect("no background passt process");

    let netdev = format!(
        "stream,id=hostnet0,server=off,addr.type=unix,addr.path={}",
        socket.display()
    );
    let device =
        format!("virtio-net-pci,netdev=hostnet0,id=net0,mac={MAC},host_mtu=65520,romfile=");
    let mut vm = rig.boot(VmConfig {
        script: guest_script(http.port()),
        qemu_args: vec![
            "-netdev".into(),
            netdev.into(),
            "-device".into(),
            device.into(),
        ],
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let ready = vm.wait_for("READY", Duration::from_secs(120));
    check_guest(&ready, forwarded);
    vm.send_line("done");
    vm.wait().assert_success().assert_contains("host said done");
    wait_gone(pid, &socket, &log());
    let log = log();
    assert!(log.contains("frontend connected"), "{log}");
    // The MAC libvirt 9.0 passes is passt's own (the gateway's) address.
    assert!(log.contains("--gateway-mac 52:54:00:12:34:56"), "{log}");
}

/// libvirt 11.x (`qemuPasstBuildCommand`) for `<interface
/// type='vhostuser'>` with `<backend type='passt'/>`: `--vhost-user`,
/// `--pid`, and QEMU's vhost-user netdev on a chardev with reconnect=5
/// (libvirt's QEMU_PASST_RECONNECT_TIMEOUT).
#[test]
fn libvirt_11_passt_vhost_user_command_line() {
    let http = HttpServer::start(0);
    let mut rig = Rig::new("passt_libvirt11");
    let passt = passt_link(&rig);
    let state = passt_state_dir(&rig);
    let socket = state.join("2-airlock-e2e-net0.socket");
    let pid_file = state.join("2-airlock-e2e-net0-passt.pid");
    let log_file = rig.dir().join("passt.log");
    let forwarded = free_port();
    let status = Command::new(&passt)
        .args(["--vhost-user", "--one-off", "--socket"])
        .arg(&socket)
        .arg("--pid")
        .arg(&pid_file)
        .args(["--mtu", "65520", "--log-file"])
        .arg(&log_file)
        .args(["--address", GUEST, "--netmask", "24", "--tcp-ports"])
        .arg(format!("{forwarded}:{GUEST_HTTP_PORT}"))
        .status()
        .unwrap();
    let log = || fs::read_to_string(&log_file).unwrap_or_default();
    assert!(status.success(), "passt exited {status}:\n{}", log());
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("no pid file: {e}\n{}", log()))
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_exists(pid),
        "the pid file names no process:\n{}",
        log()
    );

    let mut vm = rig.boot(VmConfig {
        script: guest_script(http.port()),
        qemu_args: vec![
            "-chardev".into(),
            format!("socket,id=charnet0,path={},reconnect=5", socket.display()).into(),
            "-netdev".into(),
            "vhost-user,chardev=charnet0,id=hostnet0".into(),
            "-device".into(),
            // vectors=0: QEMU 7.2 under TCG (see tests/src/qemu.rs).
            format!("virtio-net-pci,netdev=hostnet0,id=net0,mac={MAC},host_mtu=65520,romfile=,vectors=0")
                .into(),
        ],
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let ready = vm.wait_for("READY", Duration::from_secs(120));
    check_guest(&ready, forwarded);
    vm.send_line("done");
    vm.wait().assert_success().assert_contains("host said done");
    wait_gone(pid, &socket, &log());
}

/// GET `path` on the control API socket: status and body.
fn api_get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// Prometheus text: every sample as `series → value`; panics on a line
/// that is neither a comment nor `name[{labels}] value`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// `--transport stream` under airlock-net's own name, with `--pcap` and
/// `--api-socket`, under the default `--seccomp kill`: QEMU's
/// `-netdev stream`, a guest that takes a lease and fetches from the host;
/// `GET /metrics` while it runs, `tcpdump -r` on the capture after.
#[test]
fn stream_transport_pcap_and_metrics() {
    let http = HttpServer::start(0);
    let mut rig = Rig::new("passt_stream_pcap");
    let socket = rig.dir().join("net.sock");
    let api = rig.dir().join("api.sock");
    let pcap = rig.dir().join("guest.pcap");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--transport")
        .arg("stream")
        .arg("--socket-path")
        .arg(&socket)
        .arg("--api-socket")
        .arg(&api)
        .arg("--pcap")
        .arg(&pcap)
        .args(["--dns-upstream", "127.0.0.1:9"]);
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));

    let script = format!(
        r#"set -e
ip link set eth0 mtu 1500
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || {{ cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }}
echo "address $(ip -4 -o addr show dev eth0 | awk '{{print $4}}') mtu $(cat /sys/class/net/eth0/mtu)"
echo "fetched $(curl -sS --max-time 30 http://host.airlock.internal:{port}/hello)"
ping -c 2 -W 5 192.168.127.1 >/dev/null && echo "ping ok"
echo READY
read line
"#,
        port = http.port()
    );
    let mut vm = rig.boot(VmConfig {
        script,
        qemu_args: vec![
            "-netdev".into(),
            format!(
                "stream,id=s0,server=off,addr.type=unix,addr.path={}",
                socket.display()
            )
            .into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=s0,mac={MAC},host_mtu=65520,romfile=").into(),
        ],
        timeout: VM_TIMEOUT,
        ..VmConfig::default()
    });
    let ready = vm.wait_for("READY", Duration::from_secs(120));
    for expected in [
        "address 192.168.127.2/24 mtu 65520",
        &format!("fetched {}", HELLO_BODY.trim_end()),
        "ping ok",
    ] {
        assert!(ready.contains(expected), "no {expected:?} in:\n{ready}");
    }

    let (status, text) = api_get(&api, "/metrics");
    assert_eq!(status, 200, "{text}");
    let m = parse_metrics(&text);
    let get = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    };
    assert!(get("airlock_net_frames_total{direction=\"guest_to_host\"}") >= 4.0);
    assert!(get("airlock_net_bytes_total{direction=\"host_to_guest\"}") > 0.0);
    assert!(get("airlock_net_flows_opened_total{proto=\"tcp\"}") >= 1.0);
    assert_eq!(get("airlock_net_dhcp_leases"), 1.0);
    // curl looked host.airlock.internal up: the gateway answered itself.
    assert!(get("airlock_net_dns_queries_total{outcome=\"local\"}") >= 1.0);
    assert!(m.contains_key("airlock_net_drops_total{reason=\"malformed\"}"));
    assert!(m.contains_key("airlock_net_flows{proto=\"tcp\",direction=\"outbound\"}"));

    vm.send_line("done");
    vm.wait().assert_success();
    assert!(daemon.is_running(), "{}", daemon.log());

    // The capture, read back by tcpdump: the DHCP exchange, the guest's
    // HTTP request and the host's answer, the pings.
    let out = Command::new("tcpdump")
        .args(["-n", "-A", "-r"])
        .arg(&pcap)
        .output()
        .expect("cannot run tcpdump (scripts/install-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump -r failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "BOOTP/DHCP, Request",
        "BOOTP/DHCP, Reply",
        "192.168.127.2 > 192.168.127.1: ICMP echo request",
        "192.168.127.1 > 192.168.127.2: ICMP echo reply",
        "GET /hello HTTP/1.1",
        "HTTP/1.1 200 OK",
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the capture:\n{text}"
        );
    }
}

/// The example domain passes libvirt's own schema check.
#[test]
fn passt_domain_example_is_valid_libvirt_xml() {
    let path = airlock_e2e::workspace_root().join("dist/libvirt/airlock-passt-domain.xml");
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("cannot run virt-xml-validate (scripts/install-deps installs libvirt-clients)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In the background, the daemon confines itself (read-only mounts in the
/// mount namespace it shares with its parent) only after the parent has
/// written the pid file and exited: a parent slower than the child (a busy
/// machine) once found the mounts read-only and failed with EROFS. Here the
/// pid file is a FIFO nobody reads yet, so the parent stays blocked on it,
/// and the child must not go on until it is read.
#[test]
fn the_background_daemon_waits_for_its_pid_file_to_be_written() {
    let rig = Rig::new("passt_pid_order");
    let passt = passt_link(&rig);
    let state = passt_state_dir(&rig);
    let socket = state.join("order.socket");
    let pid_file = state.join("order.pid");
    let log_file = rig.dir().join("passt.log");
    let fifo = std::ffi::CString::new(pid_file.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut parent = Command::new(&passt)
        .args(["--vhost-user", "--one-off", "--socket"])
        .arg(&socket)
        .arg("--pid")
        .arg(&pid_file)
        .arg("--log-file")
        .arg(&log_file)
        .spawn()
        .unwrap();
    let log = || fs::read_to_string(&log_file).unwrap_or_default();
    // Whatever happens, neither process outlives the test (the parent
    // would wait on the FIFO for ever).
    let mut started = Started(vec![parent.id()]);
    // The child exists once a second process has the socket on its
    // command line.
    let needle = socket.to_str().unwrap().to_owned();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let child = loop {
        if let Some(pid) = pids_of(&needle).into_iter().find(|&p| p != parent.id()) {
            started.0.push(pid);
            break pid;
        }
        assert!(parent.try_wait().unwrap().is_none(), "{}", log());
        assert!(
            Instant::now() < deadline,
            "no background process:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    // Without the wait the child confines and reports ready within
    // milliseconds; give it two seconds to show it does not.
    thread::sleep(Duration::from_secs(2));
    assert!(
        !log().contains("ready for a frontend"),
        "the daemon went on before its pid file was written:\n{}",
        log()
    );
    let written = fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), child.to_string());
    let status = parent.wait().unwrap();
    assert!(status.success(), "passt exited {status}:\n{}", log());
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !log().contains("ready for a frontend") {
        assert!(process_exists(child), "the daemon exited:\n{}", log());
        assert!(Instant::now() < deadline, "never ready:\n{}", log());
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(child as libc::pid_t, libc::SIGTERM) };
    wait_gone(child, &socket, &log());
}

/// Processes a test started, killed (SIGKILL) when it ends, however.
struct Started(Vec<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if process_exists(pid) {
                // SAFETY: kill(2) on a process this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Every live process whose command line contains `needle`.
fn pids_of(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (text.contains(needle) && process_exists(pid)).then_some(pid)
        })
        .collect()
}
