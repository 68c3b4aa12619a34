//! A guest opening far more flows or files than the daemons allow.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;

use super::*;

/// `GET path` on an airlock-net control socket; the JSON body and how long
/// the answer took.
fn api_get(socket: &Path, path: &str) -> std::io::Result<(serde_json::Value, Duration)> {
    let started = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: airlock\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other(format!("no body in {reply:?}")))?;
    let json = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok((json, started.elapsed()))
}

/// Polls another daemon's control API every 100 ms until stopped; the
/// slowest answer and any failure.
struct ApiWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<(usize, Duration, Vec<String>)>>,
}

impl ApiWatch {
    fn start(socket: PathBuf) -> ApiWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let (mut calls, mut slowest, mut failures) = (0, Duration::ZERO, Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match api_get(&socket, "/stats") {
                    Ok((_, took)) => slowest = slowest.max(took),
                    Err(e) => failures.push(e.to_string()),
                }
                calls += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (calls, slowest, failures)
        });
        ApiWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// (calls, slowest answer, failures).
    fn finish(mut self) -> (usize, Duration, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// How many connections and flows the guest opens in the CI-sized run;
/// `AIRLOCK_EXHAUSTION_FLOWS` overrides it (100000 for the full-size run).
fn exhaustion_flows() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A guest opening many more TCP connections and UDP flows than
/// `--max-flows 256` allows: the first 256 go through, every other
/// connection is refused at once (RST, so ECONNREFUSED in the guest), UDP
/// flows past the limit are refused (ICMP, so an error on the guest's
/// socket), the refusals are logged a few times, not once each; the
/// daemon's fds and RSS stay bounded; once the guest lets go, new flows
/// work. Meanwhile a second airlock-net answers its API as fast as ever.
#[test]
fn airlock_net_flow_exhaustion_is_refused_and_bounded() {
    let max_flows: usize = std::env::var("AIRLOCK_EXHAUSTION_MAX_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let flows = exhaustion_flows();
    let big = flows > 20_000;
    let hold = HoldServer::start();
    let udp = airlock_e2e::servers::UdpEchoServer::start();
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let mut rig = Rig::new("hardening_net_flows");
    let api = rig.dir().join("api.sock");
    let other_api = rig.dir().join("other-api.sock");
    let common = ["--dns-upstream".to_string(), resolver.addr().to_string()];
    let mut args = common.to_vec();
    args.extend([
        "--max-flows".into(),
        max_flows.to_string(),
        "--udp-timeout".into(),
        "5".into(),
        "--api-socket".into(),
        api.display().to_string(),
    ]);
    let (daemon, socket) = start_net(&mut rig, "airlock-net", "net.sock", &args);
    let mut other_args = common.to_vec();
    other_args.extend(["--api-socket".into(), other_api.display().to_string()]);
    let (other, _) = start_net(&mut rig, "airlock-net-other", "other.sock", &other_args);
    // Each daemon's API socket is bound after its vhost-user socket and
    // before it prepares its first session.
    daemon.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(30));
    other.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(30));
    let pid = daemon.pid();
    let (base_fds, base_rss, base_anon) = (
        fd_count(pid),
        airlock_e2e::rss_kib(pid),
        airlock_e2e::rss_anon_kib(pid),
    );
    let (_, idle_latency) = api_get(&other_api, "/stats").unwrap();

    let host = "192.168.127.254";
    let script = format!(
        r#"set -e
{UDHCPC}
P={PROBE}
echo "1024 65535" >/proc/sys/net/ipv4/ip_local_port_range
echo 2000000 >/proc/sys/fs/file-max
$P tcp-flood {host}:{tcp_port} {flows} {flood_secs}
sleep 3
$P tcp-flood {host}:{tcp_port} 20 30
$P udp-flows {host}:{udp_port} {flows} 5000
sleep 8
$P udp-flows {host}:{udp_port} 20 5000
"#,
        tcp_port = hold.port(),
        udp_port = udp.addr().port(),
        flood_secs = 120 + flows / 100,
    );
    let watch = ApiWatch::start(other_api.clone());
    let started = Instant::now();
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::net_device_args(&socket, MAC, false),
        files: vec![probe_file()],
        memory_mib: if big { 2048 } else { 512 },
        timeout: Duration::from_secs(if big { 3600 } else { 300 }),
        ..airlock_e2e::VmConfig::default()
    });

    // Everything the guest could open is open.
    let flood = vm.wait_for("HOLDING", Duration::from_secs(if big { 3000 } else { 240 }));
    let flooded_after = started.elapsed();
    let established = guest_number(&flood, "tcp-flood", "established") as usize;
    let refused = guest_number(&flood, "tcp-flood", "refused") as usize;
    let pending = guest_number(&flood, "tcp-flood", "pending") as usize;
    let (held_fds, held_rss, held_anon) = (
        fd_count(pid),
        airlock_e2e::rss_kib(pid),
        airlock_e2e::rss_anon_kib(pid),
    );
    let (stats, _) = api_get(&api, "/stats").unwrap();
    eprintln!(
        "{flows} guest connections with --max-flows {max_flows}: {established} established, \
         {refused} refused, {pending} pending ({:.1} s); airlock-net fds {base_fds} -> \
         {held_fds}, RSS {base_rss} -> {held_rss} KiB (its own memory {base_anon} -> \
         {held_anon} KiB, the rest guest memory it touched); server accepted {}; tcp stats {}",
        flooded_after.as_secs_f64(),
        hold.accepted(),
        stats["flows"]["tcp"]
    );
    assert!(
        established <= max_flows && established + 8 >= max_flows,
        "{established} connections established with --max-flows {max_flows}:\n{flood}"
    );
    // The host server may still be accepting the last ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hold.accepted() < established && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hold.accepted(), established, "host connections");
    assert_eq!(
        refused + established,
        flows,
        "every connection past the limit must be refused at once:\n{flood}"
    );
    assert!(
        held_fds <= base_fds + max_flows + 16,
        "airlock-net holds {held_fds} fds (baseline {base_fds}, {max_flows} flows)"
    );
    // Its own memory within the documented worst case (two 256 KiB
    // buffers per flow) and some slack.
    let worst_kib = max_flows as u64 * 512 + 16 * 1024;
    assert!(
        held_anon <= base_anon + worst_kib,
        "airlock-net's own memory grew from {base_anon} to {held_anon} KiB (bound +{worst_kib})"
    );
    vm.send_line("release");

    // Closed connections free their flows: new ones go through.
    let again = vm.wait_for("HOLDING", Duration::from_secs(120));
    assert!(
        again.contains("tcp-flood established=20 refused=0 pending=0"),
        "new connections after the guest closed its own:\n{again}"
    );
    vm.send_line("release");
    let out = vm.wait();
    out.assert_success();
    let (calls, slowest, failures) = watch.finish();

    // UDP: as many flows as the limit allows get their echo; the others
    // are refused.
    let udp_first = out
        .output
        .lines()
        .find(|l| l.starts_with("udp-flows"))
        .unwrap()
        .to_string();
    let udp_last = out
        .output
        .lines()
        .rfind(|l| l.starts_with("udp-flows"))
        .unwrap()
        .to_string();
    eprintln!("UDP: {udp_first}; after the mappings expired: {udp_last}");
    let replies = guest_number(&udp_first, "udp-flows", "replies") as usize;
    // The probe sends in waves of 16384; in a longer run, mappings expire
    // (--udp-timeout 5) and make room again, so only one wave is bounded.
    let one_wave = flows <= 16384;
    assert!(
        replies + 8 >= max_flows && (!one_wave || replies <= max_flows),
        "{replies} UDP flows answered with --max-flows {max_flows}: {udp_first}"
    );
    assert!(
        udp_first.ends_with(&format!(
            "silent=0 errors=[EHOSTUNREACH:{}]",
            flows - replies
        )),
        "UDP flows past the limit must be refused (ICMP), not left waiting: {udp_first}"
    );
    assert!(
        udp_last.contains("sent=20 replies=20 "),
        "UDP after the flood: {udp_last}"
    );

    // The log: a few rate-limited lines, not one per refusal.
    let log = daemon.log();
    let limit_lines = log
        .matches(&format!("flow limit ({max_flows}) reached"))
        .count();
    eprintln!(
        "{limit_lines} 'flow limit' log lines for {} refusals; the other daemon answered \
         {calls} API calls, slowest {slowest:?} (idle {idle_latency:?})",
        refused + flows - replies
    );
    // 10 per call site (TCP, UDP) and 5 s window.
    let windows = started.elapsed().as_secs() as usize / 5 + 1;
    assert!(
        (1..=20 * windows).contains(&limit_lines),
        "{limit_lines} flow-limit lines:\n{log}"
    );
    assert!(
        failures.is_empty(),
        "the other daemon's API failed: {failures:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the other daemon's API took {slowest:?}"
    );
    assert!(other.is_running() && daemon.is_running());
    daemon.wait_for_log_lines("ready for a frontend", 2, Duration::from_secs(15));
    assert_fds(
        &daemon,
        base_fds,
        Duration::from_secs(10),
        "after the guest",
    );
}

/// How many files the guest creates and holds open in the CI-sized run;
/// `AIRLOCK_EXHAUSTION_FILES` overrides it.
fn exhaustion_files() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// The records of an audit log (one JSON object a line).
fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// airlock-fs' `--rlimit-nofile` in the exhaustion test: 1024, or
/// `AIRLOCK_EXHAUSTION_RLIMIT`.
fn exhaustion_rlimit() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_RLIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A guest creating and holding open far more files than airlock-fs may
/// hold descriptors (`--rlimit-nofile 1024`; each inode the guest knows is
/// one descriptor, each open file another): the guest gets EMFILE for the
/// files past the limit, the daemon stays alive and within its limit,
/// logs a bounded amount, and once the guest closes the files and drops
/// its caches (FORGET) the descriptors are released and new files can be
/// made; after the guest is gone the daemon holds exactly what it held
/// before.
#[test]
fn airlock_fs_file_exhaustion_is_refused_and_recovers() {
    let files = exhaustion_files();
    let rlimit = exhaustion_rlimit();
    let mut rig = Rig::new("hardening_fs_files");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let rlimit_arg = rlimit.to_string();
    let audit = rig.dir().join("fs-audit.jsonl");
    let (daemon, socket) = start_fs(
        &mut rig,
        &share,
        &[
            "--rlimit-nofile",
            &rlimit_arg,
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    daemon.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
    let pid = daemon.pid();
    let (base_fds, base_anon) = (fd_count(pid), airlock_e2e::rss_anon_kib(pid));
    let script = format!(
        r#"
P={PROBE}
echo 2000000 >/proc/sys/fs/file-max
mount -t virtiofs share /mnt || exit 1
mkdir /mnt/many /mnt/again
echo MOUNTED
read go
$P hold-files /mnt/many {files}
sync
echo 3 >/proc/sys/vm/drop_caches
echo DROPPED
read go
$P hold-files /mnt/again 100
umount /mnt
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        files: vec![probe_file()],
        memory_mib: if files > 20_000 { 2048 } else { 512 },
        timeout: Duration::from_secs(if files > 20_000 { 3600 } else { 300 }),
        ..airlock_e2e::VmConfig::default()
    });
    vm.wait_for("MOUNTED", Duration::from_secs(120));
    let mounted_fds = fd_count(pid);
    let log_before = daemon.log().lines().count();
    vm.send_line("go");
    let held = vm.wait_for("HOLDING", Duration::from_secs(3000));
    let (held_fds, held_anon) = (fd_count(pid), airlock_e2e::rss_anon_kib(pid));
    let on_host = fs::read_dir(share.join("many")).unwrap().count();
    let opened = guest_number(&held, "hold-files", "opened") as usize;
    let failed = guest_number(&held, "hold-files", "failed") as usize;
    let summary = held.lines().find(|l| l.starts_with("hold-files")).unwrap();
    eprintln!(
        "{files} files against --rlimit-nofile {rlimit}: {summary}; airlock-fs fds {base_fds} \
         idle, {mounted_fds} mounted, {held_fds} while held; own memory (RssAnon) {base_anon} \
         -> {held_anon} KiB; \
         {on_host} files on the host"
    );
    assert!(daemon.is_running(), "{}", daemon.log());
    assert!(held_fds <= rlimit, "{held_fds} fds over the limit {rlimit}");
    assert!(
        held_anon <= base_anon + 64 * 1024,
        "airlock-fs' own memory grew from {base_anon} to {held_anon} KiB"
    );
    if 2 * files + mounted_fds > rlimit {
        // Each created file costs the daemon two fds (the inode's O_PATH
        // and the open file), so it runs out at about half the limit.
        let room = (rlimit - mounted_fds) / 2;
        assert!(
            opened + 8 >= room && opened <= room,
            "{opened} files opened; the limit leaves room for {room}:\n{held}"
        );
        assert!(
            failed > 0 && summary.ends_with(&format!("errors=[EMFILE:{failed}]")),
            "the guest must get EMFILE past the limit: {summary}"
        );
        // A refused create leaves nothing on the host, wherever it ran out:
        // with one descriptor free the file server makes the file, then
        // cannot look it up, and must remove it again. The same for the
        // other ways of making a name, tried at the limit: the host has
        // exactly the names the guest was told were made (f0 was closed
        // to free that descriptor; it stays on the host).
        let others = held
            .lines()
            .find_map(|l| l.strip_prefix("hold-files others "))
            .unwrap_or_else(|| panic!("no other creations tried:\n{held}"));
        eprintln!("at the limit: {others}");
        let made: BTreeSet<String> = others
            .split(' ')
            .find_map(|w| w.strip_prefix("made="))
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let names: BTreeSet<String> = fs::read_dir(share.join("many"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let files_on_host = names
            .iter()
            .filter(|n| {
                n.strip_prefix('f')
                    .is_some_and(|i| i.parse::<u64>().is_ok())
            })
            .count();
        let others_on_host: BTreeSet<String> =
            names.into_iter().filter(|n| !n.starts_with('f')).collect();
        assert_eq!(
            files_on_host, opened,
            "{files_on_host} files on the host, {opened} opened, {failed} refused"
        );
        // The server really got creates it could not finish: its audit
        // log has them, refused with EMFILE.
        let refused_creates = audit_lines(&audit)
            .iter()
            .filter(|r| r["op"] == "create" && r["result"] == "EMFILE")
            .count();
        assert!(
            refused_creates > 0,
            "no create reached the server and failed: {others}"
        );
        assert_eq!(others_on_host, made, "names on the host vs made: {others}");
    } else {
        assert_eq!((opened, failed), (files, 0), "{summary}");
    }
    let log_lines = daemon.log().lines().count() - log_before;
    assert!(
        log_lines <= 40,
        "{log_lines} log lines for {failed} refusals:\n{}",
        daemon.log()
    );
    vm.send_line("release");

    // The guest closes everything and forgets its inodes: the daemon's
    // descriptors go back to what a fresh mount holds.
    vm.wait_for("DROPPED", Duration::from_secs(600));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(pid) > mounted_fds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let dropped_fds = fd_count(pid);
    eprintln!("after close and drop_caches: {dropped_fds} fds");
    assert!(
        dropped_fds <= mounted_fds,
        "{dropped_fds} fds after the guest forgot its files ({mounted_fds} when mounted)"
    );
    vm.send_line("go");
    let again = vm.wait_for("HOLDING", Duration::from_secs(120));
    assert!(
        again.contains("hold-files opened=100 failed=0 "),
        "new files after the guest let go:\n{again}"
    );
    vm.send_line("release");
    let out = vm.wait();
    out.assert_success();
    daemon.wait_for_log_lines("ready for a frontend", 2, Duration::from_secs(15));
    assert_fds(
        &daemon,
        base_fds,
        Duration::from_secs(10),
        "after the guest",
    );
}
