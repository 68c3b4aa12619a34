//! The netns group's guest: the kernel's stack in a namespace, its TAP
//! bridged to airlock-net's virtqueues by the harness
//! (`airlock_testkit::frontend::tap`). A TCP connection from the namespace
//! to the host's 127.0.0.1 through airlock-net's host alias carries data
//! both ways intact, with and without segmentation offload; with it, the
//! frames cross the queues larger than the namespace's MTU. Needs root
//! (namespaces, TAP).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use airlock_e2e::{NetNs, Rig};
use airlock_testkit::frontend::device::{self, Device, Setup};
use airlock_testkit::frontend::tap::{features, Tap, TapBridge};

const SIZE: usize = 8 << 20;
const MTU: &str = "1500";

/// Deterministic bytes that differ between the two directions.
fn pattern(seed: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// The namespace's counter `name` from `nstat` (0 if absent).
fn nstat(ns: &NetNs, name: &str) -> u64 {
    let out = ns
        .command("nstat")
        .args(["-az", name])
        .output()
        .expect("run nstat");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

fn exchange(tso: bool) {
    let ns = NetNs::new(if tso { "bridge-tso" } else { "bridge" });
    let mut rig = Rig::new(if tso { "tap_bridge_tso" } else { "tap_bridge" });
    let socket = rig.dir().join("net.sock");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(["--log-level", "warn"]);
    if !tso {
        cmd.arg("--no-segmentation-offload");
    }
    let daemon = rig.spawn_daemon("airlock-net", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(20));
    let setup = Setup {
        queues: 2,
        queue_size: 256,
        features: device::F_EVENT_IDX | features::OFFLOADS,
        memory: 48 << 20,
    };
    let dev = Device::connect(&socket, setup).expect("connect to airlock-net");
    let tap = ns.run(|| Tap::open("eth0")).expect("open the TAP");
    let bridge = TapBridge::start(dev, tap, 256, 256).expect("start the bridge");
    let tso_bits = features::HOST_TSO4 | features::GUEST_TSO4;
    assert_eq!(bridge.acked() & tso_bits == tso_bits, tso);
    ns.ip(&["addr", "add", "192.168.127.2/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "mtu", MTU, "up"]);
    ns.ip(&["route", "add", "default", "via", "192.168.127.1"]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (up, down) = (pattern(1), pattern(2));
    let server = {
        let down = down.clone();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let writer = {
                let mut s = s.try_clone().unwrap();
                thread::spawn(move || {
                    s.write_all(&down).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                })
            };
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            writer.join().unwrap();
            got
        })
    };
    let alias: SocketAddr = format!("192.168.127.254:{port}").parse().unwrap();
    let received = ns.run(|| {
        let mut s = TcpStream::connect_timeout(&alias, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {alias} from the namespace: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let writer = {
            let mut s = s.try_clone().unwrap();
            let up = up.clone();
            thread::spawn(move || {
                s.write_all(&up).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        got
    });
    let at_host = server.join().unwrap();
    assert!(at_host == up, "guest→host bytes differ");
    assert!(received == down, "host→guest bytes differ");
    assert_eq!(nstat(&ns, "TcpInCsumErrors"), 0);

    let c = bridge.counters();
    let (to_device, to_tap) = (
        c.to_device.load(Ordering::Relaxed),
        c.to_tap.load(Ordering::Relaxed),
    );
    assert!(bridge.running(), "{}", daemon.log());
    // 8 MiB in frames of at most 1514 bytes takes over 5 500 frames; with
    // segmentation offload the same data crosses in far fewer.
    let mss_frames = (SIZE / 1448) as u64;
    if tso {
        assert!(
            to_device < mss_frames / 2 && to_tap < mss_frames / 2,
            "with TSO frames exceed the MTU: {to_device} to the device, {to_tap} to the TAP"
        );
    } else {
        assert!(
            to_device > mss_frames && to_tap > mss_frames,
            "without TSO every frame fits the MTU: {to_device} to the device, {to_tap} to the TAP"
        );
    }
    bridge.stop().expect("the bridge ended cleanly");
}

#[test]
fn a_namespace_bridged_to_airlock_net_exchanges_data_with_segmentation_offload() {
    exchange(true);
}

#[test]
fn a_namespace_bridged_to_airlock_net_exchanges_data_without_segmentation_offload() {
    exchange(false);
}
