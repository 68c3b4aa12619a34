//! Tests of the test rig itself: the guest boots, the test channel carries
//! data both ways, the tools run, timeouts and failures are reported, and
//! nothing outlives a test.

use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::{fs_device_args, guest_image, process_exists, Rig, VmConfig};

/// The message of a caught panic.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "(non-string panic)".to_string(),
        },
    }
}

/// Runs `f`, which must panic; returns the panic message.
fn expect_panic(f: impl FnOnce()) -> String {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => panic!("expected a panic"),
        Err(payload) => panic_message(payload),
    }
}

#[test]
fn guest_runs_the_debian_kernel_and_reports_the_exit_status() {
    let release = &guest_image().kernel_release;
    assert!(
        release.ends_with("-amd64") && release.split('.').count() >= 3,
        "unexpected kernel release {release:?}"
    );
    let mut rig = Rig::new("exit_status");
    let boot = Instant::now();
    let mut vm = rig.boot(VmConfig::new("echo \"hello from $(uname -r)\"\nexit 3\n"));
    vm.wait_for("hello from", Duration::from_secs(60));
    eprintln!(
        "boot to the script's first line: {:.2} s",
        boot.elapsed().as_secs_f64()
    );
    let out = vm.wait();
    out.assert_status(3);
    assert_eq!(out.output, format!("hello from {release}\n"));
}

#[test]
fn send_line_and_wait_for_round_trip() {
    let mut rig = Rig::new("round_trip");
    let mut vm = rig.boot(VmConfig::new(
        "echo READY\nread x\necho \"got $x\"\nread y\necho \"then $y\"\n",
    ));
    let first = vm.wait_for("READY", Duration::from_secs(60));
    assert_eq!(first, "READY\n");
    vm.send_line("ping");
    // Raw mode, no echo: the reply is the only thing that comes back.
    assert_eq!(vm.wait_for("got", Duration::from_secs(30)), "got ping\n");
    vm.send_line("pong with  spaces");
    assert_eq!(
        vm.wait_for("then", Duration::from_secs(30)),
        "then pong with  spaces\n"
    );
    let out = vm.wait();
    out.assert_success();
    assert_eq!(out.output, "READY\ngot ping\nthen pong with  spaces\n");
}

/// The guest's copies of the host tools: each prints the same version line
/// as on the host.
#[test]
fn userland_tools_and_modules_work_in_the_guest() {
    let tools = [
        ("setfattr", "--version"),
        ("getfattr", "--version"),
        ("iperf3", "--version"),
        ("curl", "--version"),
        ("fio", "--version"),
        ("dhcpcd", "--version"),
    ];
    let mut script = String::from("set -e\n");
    for (tool, arg) in tools {
        script.push_str(&format!("echo \"$({tool} {arg} | head -n 1)\"\n"));
    }
    script.push_str(
        "for m in virtio_net virtiofs fuse 9p 9pnet_virtio virtio_blk virtio_pci; do\n\
         \x20   grep -q \"^$m \" /proc/modules || { echo \"module $m not loaded\"; exit 1; }\n\
         done\n\
         lsmod | grep -q '^virtiofs' || { echo 'lsmod misses virtiofs'; exit 1; }\n\
         busybox udhcpc --help >/dev/null 2>&1 || true\n\
         echo MODULES-OK\n",
    );
    let mut rig = Rig::new("tools");
    let out = rig.boot(VmConfig::new(script)).wait();
    out.assert_success().assert_contains("MODULES-OK");
    let mut lines = out.output.lines();
    for (tool, arg) in tools {
        let host = Command::new(tool)
            .arg(arg)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool} on the host: {e}"));
        let host_line = String::from_utf8_lossy(&host.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            !host_line.is_empty(),
            "{tool} {arg} printed nothing on the host"
        );
        assert_eq!(lines.next(), Some(host_line.as_str()), "{tool} {arg}");
    }
}

#[test]
fn a_vm_past_its_timeout_is_killed_and_waiting_panics() {
    let mut rig = Rig::new("timeout");
    let mut vm = rig.boot(VmConfig {
        script: "echo started\nwhile :; do sleep 1000; done\n".into(),
        timeout: Duration::from_secs(20),
        ..VmConfig::default()
    });
    vm.wait_for("started", Duration::from_secs(20));
    let pid = vm.pid();
    let started = Instant::now();
    let message = expect_panic(move || {
        vm.wait();
    });
    assert!(message.contains("timed out after 20s"), "{message}");
    assert!(message.contains("started"), "no guest output in: {message}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!process_exists(pid), "QEMU (pid {pid}) still running");
}

#[test]
fn wait_for_times_out_with_diagnostics_and_the_vm_dies_with_it() {
    let mut rig = Rig::new("wait_for_timeout");
    let mut vm = rig.boot(VmConfig::new("echo first line\nsleep 1000\n"));
    vm.wait_for("first", Duration::from_secs(60));
    let pid = vm.pid();
    let message = expect_panic(move || {
        vm.wait_for("never printed", Duration::from_secs(2));
    });
    assert!(
        message.contains("no line containing \"never printed\" within 2s"),
        "{message}"
    );
    assert!(message.contains("first line"), "{message}");
    assert!(message.contains("guest console (ttyS0)"), "{message}");
    assert!(!process_exists(pid), "QEMU (pid {pid}) still running");
}

#[test]
fn a_failing_script_reports_output_console_and_daemon_logs() {
    let mut rig = Rig::new("failure_report");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo daemon-was-here; exec sleep 1000"]);
    let daemon = rig.spawn_daemon("helper", cmd);
    let out = rig
        .boot(VmConfig::new(
            "echo some output\necho to stderr >&2\nexit 1\n",
        ))
        .wait();
    assert_eq!(out.status, 1);
    assert_eq!(out.output, "some output\nto stderr\n");
    let message = expect_panic(|| {
        out.assert_success();
    });
    for needle in [
        "exited with status 1, expected 0",
        "some output",
        "guest console (ttyS0)",
        "QEMU stderr",
        "daemon helper",
        "daemon-was-here",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    assert!(daemon.is_running());
}

#[test]
fn a_guest_kernel_panic_ends_qemu_and_shows_on_the_console() {
    let mut rig = Rig::new("guest_panic");
    let vm = rig.boot(VmConfig::new(
        "echo about to crash\necho c >/proc/sysrq-trigger\n",
    ));
    let started = Instant::now();
    let message = expect_panic(move || {
        vm.wait();
    });
    assert!(
        message.contains("QEMU exited (exit status: 0)"),
        "{message}"
    );
    assert!(message.contains("Kernel panic"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn daemons_log_and_terminate_and_die_with_the_rig() {
    let mut rig = Rig::new("daemons");
    let dir = rig.dir().to_path_buf();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out-line; echo err-line >&2; exec sleep 1000"]);
    let polite = rig.spawn_daemon("polite", cmd);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; echo stubborn; while :; do sleep 0.1; done",
    ]);
    let stubborn = rig.spawn_daemon("stubborn", cmd);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !(polite.log().contains("err-line") && stubborn.log().contains("stubborn")) {
        assert!(Instant::now() < deadline, "logs: {:?}", polite.log());
        thread::sleep(Duration::from_millis(10));
    }
    assert!(polite.log().contains("out-line"));
    assert!(polite.log_path().starts_with(&dir));
    assert!(polite.is_running());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&polite.terminate()),
        Some(libc::SIGTERM)
    );
    assert!(!polite.is_running());
    assert!(!process_exists(polite.pid()));

    let pid = stubborn.pid();
    let dropped = Instant::now();
    drop(rig);
    assert!(
        dropped.elapsed() >= Duration::from_secs(2),
        "no grace period"
    );
    assert!(!process_exists(pid), "stubborn daemon survived the rig");
    if std::env::var_os("AIRLOCK_KEEP").is_none() {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
}

#[test]
fn wait_for_socket_waits_for_a_listener_and_fails_fast_on_a_dead_daemon() {
    let mut rig = Rig::new("sockets");
    let path = rig.dir().join("late.sock");
    let bind_path = path.clone();
    let binder = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        UnixListener::bind(bind_path).unwrap()
    });
    rig.wait_for_socket(&path, Duration::from_secs(10));
    let _listener = binder.join().unwrap();

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo cannot start >&2; exit 7"]);
    rig.spawn_daemon("broken", cmd);
    let started = Instant::now();
    let message = expect_panic(|| {
        rig.wait_for_socket(&rig.dir().join("never.sock"), Duration::from_secs(30));
    });
    assert!(message.contains("daemon broken exited"), "{message}");
    assert!(message.contains("cannot start"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The fs device arguments and the shared memory backend work with a real
/// vhost-user-fs backend: QEMU's own virtiofsd.
#[test]
fn virtiofs_share_through_fs_device_args() {
    let virtiofsd = Path::new("/usr/lib/qemu/virtiofsd");
    assert!(
        virtiofsd.exists(),
        "{} missing (package qemu-system-common)",
        virtiofsd.display()
    );
    let mut rig = Rig::new("virtiofs");
    let share = rig.dir().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host"), "host data\n").unwrap();
    let socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(virtiofsd);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", share.display()))
        .args(["-o", "cache=none", "-o", "sandbox=chroot"]);
    rig.spawn_daemon("virtiofsd", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    let out = rig
        .boot(VmConfig {
            script: "set -e\nmount -t virtiofs share /mnt\ncat /mnt/from-host\n\
                     echo guest data >/mnt/from-guest\numount /mnt\n"
                .into(),
            qemu_args: fs_device_args(&socket, "share", 1024),
            ..VmConfig::default()
        })
        .wait();
    out.assert_success();
    assert_eq!(out.output, "host data\n");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        "guest data\n"
    );
}

/// `Rig::bin` builds the workspace binaries (a nested `cargo build` while
/// `cargo test` runs) and finds them next to the test binary's profile.
#[test]
fn bin_finds_workspace_binaries_and_names_missing_ones() {
    let fs = Rig::bin("airlock-fs");
    assert!(fs.is_file(), "{}", fs.display());
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    assert_eq!(fs.parent().unwrap(), profile_dir);
    let message = expect_panic(|| {
        Rig::bin("airlock-no-such-binary");
    });
    assert!(
        message.contains("cannot build workspace binary \"airlock-no-such-binary\"")
            && message.contains("no bin target named"),
        "{message}"
    );
}

/// The guest's network side: virtio-net, AF_PACKET, both DHCP clients
/// obtaining a lease, and udhcpc's lease script applying address, route,
/// DNS and MTU. The DHCP server is QEMU's user-mode network with
/// `restrict=on`, so nothing leaves QEMU (restricted, it offers no router or
/// DNS server: the script is also run on a made-up lease).
#[test]
fn guest_dhcp_clients_configure_eth0() {
    let mut rig = Rig::new("dhcp");
    let script = r#"set -e
udhcpc -i eth0 -O mtu -n -q -t 5 -T 2 >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; exit 1; }
echo "udhcpc $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
ip -4 addr flush dev eth0
dhcpcd -1 -4 -B -t 30 eth0 >/tmp/dhcpcd.log 2>&1 || { cat /tmp/dhcpcd.log; exit 1; }
echo "dhcpcd $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
dhcpcd -x eth0 >/dev/null 2>&1 || true
interface=eth0 ip=10.9.0.5 mask=24 router=10.9.0.1 dns="10.9.0.1 10.9.0.2" mtu=9000     /etc/udhcpc/default.script bound
echo "script $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
ip route | grep '^default'
cat /etc/resolv.conf
cat /sys/class/net/eth0/mtu
"#;
    let out = rig
        .boot(VmConfig {
            script: script.into(),
            qemu_args: [
                "-netdev",
                "user,id=slirp,restrict=on",
                "-device",
                "virtio-net-pci,netdev=slirp,romfile=",
            ]
            .map(Into::into)
            .to_vec(),
            ..VmConfig::default()
        })
        .wait();
    out.assert_success();
    assert_eq!(
        out.output,
        "udhcpc 10.0.2.15/24\n\
         dhcpcd 10.0.2.15/24\n\
         script 10.9.0.5/24\n\
         default via 10.9.0.1 dev eth0 \n\
         nameserver 10.9.0.1\n\
         nameserver 10.9.0.2\n\
         9000\n",
        "{out:?}"
    );
}
