//! The real `airlock-net` binary driven over its vhost-user socket by the
//! test kit's frontend, which plays QEMU and a guest driver without a VM:
//! the gateway answers ARP, and a datagram to host.airlock.internal reaches
//! a socket on the host's loopback and its answer comes back into the
//! guest's receive buffers.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_testkit::frontend::device::{self, Device, Setup};
use airlock_testkit::frontend::frames::{self, GATEWAY_IP, HOST_IP};
use airlock_testkit::frontend::netdev::NetDev;

const BIN: &str = env!("CARGO_BIN_EXE_airlock-net");

/// airlock-net on `<dir>/net.sock`, killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--socket-path")
            .arg(dir.path().join("net.sock"))
            .args(["--dns-upstream", "127.0.0.1", "--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.log().contains("ready for a frontend") {
            assert!(Instant::now() < deadline, "never ready:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("net.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(socket: &Path) -> NetDev {
    let setup = Setup {
        queues: 2,
        queue_size: 256,
        features: device::F_EVENT_IDX,
        memory: 32 << 20,
    };
    let dev = Device::connect(socket, setup).expect("vhost-user session");
    NetDev::new(dev, 64, 64).expect("virtio-net queues")
}

#[test]
fn a_frontend_without_a_vm_reaches_the_host_through_the_gateway() {
    let d = Daemon::start();
    let mut net = connect(&d.socket());
    let gw = net
        .resolve(GATEWAY_IP)
        .unwrap()
        .unwrap_or_else(|| panic!("no ARP reply from the gateway:\n{}", d.log()));

    // A "host service" on loopback, reached as host.airlock.internal.
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = host.local_addr().unwrap().port();
    net.send(&frames::udp(gw, 40000, HOST_IP, port, 100))
        .unwrap();
    net.flush().unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = host
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("the datagram never reached the host ({e}):\n{}", d.log()));
    assert_eq!(n, 100);
    assert!(buf[..n].iter().all(|&b| b == 0x5a), "payload changed");

    // The answer comes back to the guest's port 40000.
    host.send_to(&[7u8; 300], from).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = None;
    while answered.is_none() && Instant::now() < deadline {
        net.wait(Duration::from_millis(100)).unwrap();
        net.reap_tx().unwrap();
        net.poll_rx(64, |r| {
            if let Some((port, len)) = frames::udp_to_guest(r.head) {
                answered = Some((port, len));
            }
        })
        .unwrap();
    }
    assert_eq!(
        answered,
        Some((40000, 300)),
        "no answer in the guest:\n{}",
        d.log()
    );
}
