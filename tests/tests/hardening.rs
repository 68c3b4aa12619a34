//! Hardening, end to end: what the daemons do when their peers misbehave
//! or push them to their limits. A frontend sending malformed vhost-user
//! messages; a guest trying to leave its share; a guest opening far more
//! connections, flows or files than it may; a daemon killed under a
//! running guest; QEMU killed mid-traffic. Each check looks at the host
//! side too: the daemon still runs and serves, its descriptors and memory
//! are back where they were, nothing outside the share changed.

#[path = "hardening/escape.rs"]
mod escape;
#[path = "hardening/exhaustion.rs"]
mod exhaustion;
#[path = "hardening/qemu_killed.rs"]
mod qemu_killed;
#[path = "hardening/restart.rs"]
mod restart;
#[path = "hardening/vhost_user.rs"]
mod vhost_user;

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::{fd_count, fd_listing, DaemonHandle, Rig};

/// Starts airlock-net (logging as `name`) on `<rig>/<socket>` with `args`
/// and waits until it listens.
fn start_net(rig: &mut Rig, name: &str, socket: &str, args: &[String]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join(socket);
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path").arg(&socket).args(args);
    let daemon = rig.spawn_daemon(name, cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (daemon, socket)
}

/// Starts airlock-fs on `<rig>/fs.sock` serving `share` with `args`.
fn start_fs(rig: &mut Rig, share: &Path, args: &[&str]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(share)
        .args(args);
    let daemon = rig.spawn_daemon("airlock-fs", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (daemon, socket)
}

/// Waits up to `timeout` for the daemon's fd count to be `expected`, then
/// asserts it with the fd listing.
fn assert_fds(daemon: &DaemonHandle, expected: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while fd_count(daemon.pid()) != expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let fds = fd_count(daemon.pid());
    assert_eq!(
        fds,
        expected,
        "{what}: {} has {fds} fds, expected {expected}:\n{}",
        daemon.name(),
        fd_listing(daemon.pid())
    );
}

/// Starts another airlock-fs named `name` on `socket`.
fn start_fs_named(
    rig: &mut Rig,
    share: &Path,
    name: &str,
    socket: &Path,
) -> (DaemonHandle, PathBuf) {
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(share);
    let daemon = rig.spawn_daemon(name, cmd);
    rig.wait_for_socket(socket, Duration::from_secs(10));
    (daemon, socket.to_path_buf())
}

/// The guest-side name of `airlock-guest-probe`.
const PROBE: &str = "/airlock-guest-probe";

/// `VmConfig::files` entry putting the probe into the guest.
fn probe_file() -> (String, PathBuf) {
    (
        PROBE.trim_start_matches('/').to_string(),
        Rig::bin("airlock-guest-probe"),
    )
}

const MAC: &str = "52:54:00:12:34:56";
const GUEST_IP: &str = "192.168.127.2";

/// busybox udhcpc on eth0, applying the offered MTU.
const UDHCPC: &str = "udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }";

/// A number from the guest's `key=value` words on the line starting with
/// `prefix`.
fn guest_number(output: &str, prefix: &str, key: &str) -> u64 {
    output
        .lines()
        .filter(|l| l.starts_with(prefix))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= on a {prefix:?} line in:\n{output}"))
}

/// A TCP server on 127.0.0.1 that accepts connections and holds them open
/// (discarding what arrives) until the peer closes or the server is dropped.
struct HoldServer {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HoldServer {
    fn start() -> HoldServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A deep accept queue: thousands of connections arrive at once.
        // SAFETY: listen(2) on a socket we own; integers only.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 65535) }, 0);
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (count, done, streams) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::clone(&held));
        let acceptor = thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(true);
                        streams.lock().unwrap().push(stream);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let done = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::SeqCst) {
                // Close a connection once its peer has (end of file or
                // reset); discard whatever it sends meanwhile.
                held.lock().unwrap().retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
                thread::sleep(Duration::from_millis(100));
            }
            let _ = acceptor.join();
        });
        HoldServer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
