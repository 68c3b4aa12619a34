//! QEMU killed in the middle of traffic.

use std::fs;

use super::*;

/// Waits until the daemon's fd count is back to `fds` and its RSS within
/// `slack_kib` of `rss`; returns the RSS seen.
fn assert_back_to_baseline(
    daemon: &DaemonHandle,
    fds: usize,
    rss: u64,
    slack_kib: u64,
    when: &str,
) -> u64 {
    assert_fds(daemon, fds, Duration::from_secs(15), when);
    let now = airlock_e2e::rss_kib(daemon.pid());
    assert!(
        now <= rss + slack_kib,
        "{when}: {}'s RSS is {now} KiB, {rss} KiB before the first guest",
        daemon.name()
    );
    now
}

/// One QEMU with both devices, killed with SIGKILL while the guest
/// downloads an endless stream through airlock-net and writes an endless
/// file through airlock-fs (tens of MiB each by then): both daemons drop the session, go back to the
/// fds they held and (within a few MiB) the memory they used before the
/// first guest, and serve a new QEMU, after which they are back there
/// again. (net.rs and fs.rs kill QEMU under each daemon alone.)
#[test]
fn qemu_killed_mid_net_and_fs_traffic_both_daemons_recover() {
    const RSS_SLACK_KIB: u64 = 8 * 1024;
    let http = airlock_e2e::servers::HttpServer::start(0);
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let mut rig = Rig::new("hardening_qemu_killed");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let (net, net_socket) = start_net(
        &mut rig,
        "airlock-net",
        "net.sock",
        &["--dns-upstream".into(), resolver.addr().to_string()],
    );
    let (fsd, fs_socket) = start_fs(&mut rig, &share, &[]);
    net.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
    fsd.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
    let base: Vec<(usize, u64)> = [&net, &fsd]
        .iter()
        .map(|d| (fd_count(d.pid()), airlock_e2e::rss_kib(d.pid())))
        .collect();
    let devices = || {
        let mut args = airlock_e2e::net_device_args(&net_socket, MAC, false);
        args.extend(airlock_e2e::fs_device_args(&fs_socket, "share", 1024));
        args
    };
    let url = format!("http://host.airlock.internal:{}", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
mount -t virtiofs share /mnt
curl -sS {url}/stream >/dev/null &
dd if=/dev/zero of=/mnt/stream bs=1M count=100000 2>/dev/null &
echo TRAFFIC
wait
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: devices(),
        ..airlock_e2e::VmConfig::default()
    });
    vm.wait_for("TRAFFIC", Duration::from_secs(120));
    http.wait_until("the stream's start", Duration::from_secs(30), |l| {
        l.streams_started == 1
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(share.join("stream")).map_or(0, |m| m.len()) < 64 << 20 {
        assert!(Instant::now() < deadline, "the guest never wrote 64 MiB");
        thread::sleep(Duration::from_millis(100));
    }
    let written = fs::metadata(share.join("stream")).map_or(0, |m| m.len());
    let peak: Vec<u64> = [&net, &fsd]
        .iter()
        .map(|d| airlock_e2e::rss_kib(d.pid()))
        .collect();
    vm.kill();
    drop(vm);

    let mut after_kill = Vec::new();
    for (d, (fds, rss)) in [&net, &fsd].into_iter().zip(&base) {
        d.wait_for_log_lines("ready for a frontend", 2, Duration::from_secs(20));
        after_kill.push(assert_back_to_baseline(
            d,
            *fds,
            *rss,
            RSS_SLACK_KIB,
            "after the kill",
        ));
    }
    let streamed = http
        .wait_until(
            "the stream's host connection closed",
            Duration::from_secs(15),
            |l| l.stream_ends.len() == 1,
        )
        .stream_ends[0]
        .bytes;
    assert!(
        streamed >= 1 << 20,
        "only {streamed} bytes streamed before the kill"
    );

    // A new QEMU is served by both.
    let out = rig
        .boot(airlock_e2e::VmConfig {
            script: format!(
                "set -e\n{UDHCPC}\nmount -t virtiofs share /mnt\ncurl -sS --max-time 30 {url}/hello >/mnt/hello\ncat /mnt/hello\nls -l /mnt/stream >/dev/null\numount /mnt\n"
            ),
            qemu_args: devices(),
            ..airlock_e2e::VmConfig::default()
        })
        .wait();
    out.assert_success()
        .assert_contains(airlock_e2e::servers::HELLO_BODY);
    assert_eq!(
        fs::read_to_string(share.join("hello")).unwrap(),
        airlock_e2e::servers::HELLO_BODY
    );
    let mut after_next = Vec::new();
    for (d, (fds, rss)) in [&net, &fsd].into_iter().zip(&base) {
        d.wait_for_log_lines("ready for a frontend", 3, Duration::from_secs(20));
        after_next.push(assert_back_to_baseline(
            d,
            *fds,
            *rss,
            RSS_SLACK_KIB,
            "after the next guest",
        ));
    }
    eprintln!(
        "{} MiB streamed and {} MiB written when QEMU was killed; RSS KiB (airlock-net, \
         airlock-fs): before {:?}, during traffic {peak:?}, after the kill {after_kill:?}, \
         after the next guest {after_next:?}; fds before {:?}",
        streamed >> 20,
        written >> 20,
        base.iter().map(|b| b.1).collect::<Vec<_>>(),
        base.iter().map(|b| b.0).collect::<Vec<_>>()
    );
}
