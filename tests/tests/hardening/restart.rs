//! A daemon killed and restarted under a running guest.

use std::fs;

use super::*;

/// airlock-net SIGKILLed while a guest runs with `reconnect=1`, and a new
/// airlock-net started on the same socket: QEMU reattaches within seconds,
/// the guest keeps its address and its network works again — HTTP to the
/// host, DNS, a DHCP renewal — without a reboot. The connections of the
/// old daemon are gone (a new daemon has no flow table to resume).
#[test]
fn airlock_net_killed_and_restarted_under_a_running_guest() {
    let http = airlock_e2e::servers::HttpServer::start(0);
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let hold = HoldServer::start();
    let mut rig = Rig::new("hardening_net_restart");
    let args = vec![
        "--dns-upstream".to_string(),
        resolver.addr().to_string(),
        "--dns-record".to_string(),
        "restart.test=10.9.8.7".to_string(),
    ];
    let (first, socket) = start_net(&mut rig, "airlock-net", "net.sock", &args);
    let url = format!("http://host.airlock.internal:{}/hello", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
echo "before: addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}') $(curl -sS --max-time 20 {url})"
mkfifo /tmp/in
nc {host_alias} {hold_port} </tmp/in >/dev/null 2>/tmp/nc.err &
nc_pid=$!
exec 5>/tmp/in
echo one >&5
sleep 1
kill -0 $nc_pid && echo "before: a connection is open"
echo DAEMON-CAN-DIE
read go
set +e
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ $i -lt 60 ]; do
    i=$((i+1))
    body=$(curl -sS --max-time 2 {url} 2>/dev/null) && break
    sleep 1
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "after: tries=$i seconds=$(( ${{t1%.*}} - ${{t0%.*}} )) body=$body"
echo "after: addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}') link=$(cat /sys/class/net/eth0/operstate)"
nslookup restart.test >/tmp/ns 2>&1; echo "after: dns status=$? $(grep -c 10.9.8.7 /tmp/ns)"
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/renew.log 2>&1; echo "after: renew status=$? addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}')"
kill -0 $nc_pid 2>/dev/null && echo "after: the old connection is still open before it is used"
echo two >&5
sleep 3
if kill -0 $nc_pid 2>/dev/null; then echo "after: the old connection still runs"; else wait $nc_pid; echo "after: the old connection ended: nc status=$? $(cat /tmp/nc.err)"; fi
"#,
        host_alias = "host.airlock.internal",
        hold_port = hold.port(),
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::net_device_args(&socket, MAC, true),
        timeout: Duration::from_secs(180),
        ..airlock_e2e::VmConfig::default()
    });
    let before = vm.wait_for("DAEMON-CAN-DIE", Duration::from_secs(120));
    assert!(before.contains("before: a connection is open"), "{before}");
    assert!(
        before.contains(&format!(
            "before: addr={GUEST_IP}/24 {}",
            airlock_e2e::servers::HELLO_BODY.trim_end()
        )),
        "{before}"
    );
    first.kill();
    let killed_at = Instant::now();
    let (second, _) = start_net(&mut rig, "airlock-net-2", "net.sock", &args);
    second.wait_for_log_lines("frontend connected", 1, Duration::from_secs(30));
    eprintln!(
        "QEMU reattached to the new airlock-net {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success()
        .assert_contains(&format!("after: addr={GUEST_IP}/24 link=up\n"))
        .assert_contains("after: dns status=0 1\n")
        .assert_contains(&format!("after: renew status=0 addr={GUEST_IP}/24\n"));
    let after = out
        .output
        .lines()
        .find(|l| l.starts_with("after: tries="))
        .unwrap_or_else(|| panic!("no recovery line:\n{}", out.output));
    assert!(
        after.ends_with(airlock_e2e::servers::HELLO_BODY.trim_end()),
        "the guest's network did not come back: {after}\n{}",
        out.output
    );
    eprintln!("guest network after the restart: {after}");
    // The dead daemon's connections died with it; the guest learns when it
    // next sends on one (the new daemon answers with a RST), not before.
    out.assert_contains("after: the old connection is still open before it is used\n")
        .assert_contains("after: the old connection ended: nc status=");
    assert_eq!(hold.accepted(), 1);
    assert!(second.is_running());
    let log = second.log();
    assert!(!log.contains("session ended with an error"), "{log}");
}

/// vhost-user-fs arguments with `reconnect=1` on the chardev.
fn fs_device_args_reconnect(socket: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "-chardev".into(),
        format!("socket,id=fsre,path={},reconnect=1", socket.display()).into(),
        "-device".into(),
        "vhost-user-fs-pci,chardev=fsre,tag=share,queue-size=1024".into(),
    ]
}

/// What QEMU 7.2 does when airlock-fs dies under a mounted share — pinned
/// so a change (a QEMU that reconnects, or a daemon that can resume) shows.
///
/// 1. `reconnect=1` cannot be used with vhost-user-fs: QEMU 7.2's
///    vhost-user-fs does not wait for the chardev to connect (net and blk
///    do), the reconnecting chardev connects asynchronously, and the device
///    fails to realize: QEMU exits at start-up with "Failed to set msg fds"
///    and "vhost_backend_init failed: Protocol error".
/// 2. Without it, QEMU does not notice the daemon's death and never dials
///    the new one. Every guest request on the share from then on waits
///    forever: the process sleeps (state S) and, once killed, stays in D
///    for good, since virtio-fs cannot take back a request it queued. The
///    rest of the guest runs on; the share is lost until the guest reboots
///    (and the guest cannot power off cleanly).
#[test]
fn airlock_fs_killed_under_a_mounted_share_hangs_the_share() {
    let mut rig = Rig::new("hardening_fs_restart");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("before.txt"), "before\n").unwrap();
    let (first, socket) = start_fs(&mut rig, &share, &[]);

    // 1. reconnect=1: QEMU does not start.
    let vm = rig.boot(airlock_e2e::VmConfig {
        script: "echo STARTED".into(),
        qemu_args: fs_device_args_reconnect(&socket),
        timeout: Duration::from_secs(60),
        ..airlock_e2e::VmConfig::default()
    });
    let (status, qemu_log) = vm.wait_for_failure(Duration::from_secs(30));
    assert!(
        !status.success()
            && qemu_log.contains("Failed to set msg fds")
            && qemu_log.contains("vhost_backend_init failed"),
        "QEMU 7.2 with a reconnecting vhost-user-fs chardev was expected to fail at \
         start-up; it exited with {status}. QEMU stderr:\n{qemu_log}"
    );
    first.wait_for_log_lines("ready for a frontend", 2, Duration::from_secs(10));

    // 2. No reconnect: the daemon dies under a mounted share.
    let script = r#"
mount -t virtiofs share /mnt || exit 1
echo "before: $(cat /mnt/before.txt)"
echo DAEMON-CAN-DIE
read go
cat /mnt/before.txt >/tmp/cat.out 2>&1 &
reader=$!
echo x >/mnt/after.txt 2>/tmp/w.out &
writer=$!
sleep 8
echo "after 8 s: reader state $(awk '{print $3}' /proc/$reader/stat 2>/dev/null || echo gone) writer state $(awk '{print $3}' /proc/$writer/stat 2>/dev/null || echo gone)"
kill -9 $reader $writer
sleep 2
echo "after SIGKILL: reader state $(awk '{print $3}' /proc/$reader/stat 2>/dev/null || echo gone) writer state $(awk '{print $3}' /proc/$writer/stat 2>/dev/null || echo gone)"
echo "the rest of the guest runs: $(echo alive)"
"#;
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script: script.into(),
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        timeout: Duration::from_secs(150),
        ..airlock_e2e::VmConfig::default()
    });
    let before = vm.wait_for("DAEMON-CAN-DIE", Duration::from_secs(120));
    assert!(before.contains("before: before"), "{before}");
    first.kill();
    let (second, _) = start_fs_named(&mut rig, &share, "airlock-fs-2", &socket);
    vm.send_line("go");
    let hung = vm.wait_for("the rest of the guest runs", Duration::from_secs(60));
    // Waiting (interruptibly) for an answer that never comes; after
    // SIGKILL the request cannot be withdrawn: uninterruptible for good.
    assert!(
        hung.contains("after 8 s: reader state S writer state S\n")
            && hung.contains("after SIGKILL: reader state D writer state D\n"),
        "expected both share users waiting (S), then stuck in D after SIGKILL:\n{hung}"
    );
    assert!(hung.contains("the rest of the guest runs: alive"), "{hung}");
    // The guest could not power off cleanly with a dead share: pull the plug.
    vm.kill();
    drop(vm);
    assert!(
        !second.log().contains("frontend connected"),
        "QEMU dialled the new airlock-fs:\n{}",
        second.log()
    );
    assert!(!share.join("after.txt").exists());
    assert!(second.is_running());
}
