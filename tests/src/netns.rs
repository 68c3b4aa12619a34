//! Network namespaces a test creates for itself: the "outside world" of a
//! NAT test (`airlock-net` in namespace A, a server at 10.200.0.2 in
//! namespace B, a veth pair between them), removed when the guard drops —
//! also when the test panics.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// The `ip` binary (iproute2).
const IP: &str = "ip";
/// Where `ip netns add` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Longest tag part of a namespace name.
const MAX_TAG_LEN: usize = 16;

/// A named network namespace (`ip netns add`), deleted on drop.
///
/// Names are `airlock-<pid>-<n>-<tag>`: unique across the threads and
/// processes of parallel test runs. A new namespace has only `lo`, which
/// [`NetNs::new`] brings up. Processes started in it with
/// [`NetNs::command`] keep it alive after the name is deleted, until they
/// exit; declare the guard before the [`crate::Rig`] whose daemons run in
/// it, so the daemons are stopped first.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up. `tag` (letters,
    /// digits and `-`; others become `_`) makes the name readable in
    /// `ip netns list`. Panics if `ip` fails (this needs root).
    pub fn new(tag: &str) -> NetNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_TAG_LEN)
            .collect();
        let name = format!(
            "airlock-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        // From here on the guard owns the name: a failure below deletes it.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`, `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`; panics with `ip`'s stderr if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// A command running `program` inside the namespace
    /// (`ip netns exec <name> <program>`); add arguments with `.arg(…)`.
    /// `ip netns exec` execs the program, so the child's pid is the
    /// program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(IP);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// As [`NetNs::command`], with each `(source, target)` of `mounts`
    /// bind-mounted over `target` first — a test's `resolv.conf` over
    /// `/etc/resolv.conf`, a directory over `/run` — so the program sees
    /// the test's files while the host's stay untouched: `ip netns exec`
    /// gives every command a mount namespace of its own (whose mounts do
    /// not propagate back), and the mounts are made in it by `sh` before it
    /// execs `program` (whose pid is the child's).
    pub fn command_with_files(
        &self,
        program: impl AsRef<OsStr>,
        mounts: &[(&std::path::Path, &str)],
    ) -> Command {
        const SCRIPT: &str =
            "set -e; while [ \"$1\" != -- ]; do mount --bind \"$1\" \"$2\"; shift 2; done; \
             shift; exec \"$@\"";
        let mut cmd = self.command("sh");
        cmd.args(["-c", SCRIPT, "sh"]);
        for (source, target) in mounts {
            cmd.arg(source).arg(target);
        }
        cmd.arg("--").arg(program);
        cmd
    }

    /// Sets the sysctl `key` (e.g. `net.ipv4.ping_group_range`) to `value`
    /// in this namespace. Panics if `sysctl` fails.
    pub fn sysctl(&self, key: &str, value: &str) {
        let output = self
            .command("sysctl")
            .arg("-w")
            .arg(format!("{key}={value}"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run sysctl in {}: {e}", self.name));
        assert!(
            output.status.success(),
            "sysctl -w {key}={value} in {} failed ({}): {}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `f` on a thread that has entered the namespace (`setns`), and
    /// returns its result. Sockets created by `f` belong to the namespace
    /// for their whole life, wherever they are used afterwards: that is how
    /// a test serves from inside the namespace without a helper process.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from(NETNS_DIR).join(&self.name);
        let file =
            File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        thread::scope(|scope| {
            let inside = scope.spawn(|| {
                // SAFETY: setns(2) only reads the descriptor, which `file`
                // keeps open for the call; CLONE_NEWNET changes the network
                // namespace of this thread alone (a scoped thread that ends
                // when `f` returns), never the test's other threads.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!(
                        "cannot enter network namespace {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                }
                f()
            });
            match inside.join() {
                Ok(value) => value,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A TCP listener bound to `addr` inside the namespace.
    pub fn bind_tcp(&self, addr: SocketAddr) -> TcpListener {
        self.run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("cannot bind TCP {addr} in {}: {e}", self.name))
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> UdpSocket {
        self.run(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("cannot bind UDP {addr} in {}: {e}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Never panics: this runs while a failed test unwinds.
        match Command::new(IP).args(["netns", "del", &self.name]).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "airlock-e2e: ip netns del {} failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => eprintln!("airlock-e2e: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// Connects two namespaces with a veth pair: interface `veth0` in each,
/// with the addresses `a_cidr` and `b_cidr` (e.g. `10.200.0.1/24`), both
/// up. The interfaces are created directly inside the namespaces, so their
/// names never meet another test's, and vanish with the namespaces.
pub fn veth_pair(a: &NetNs, a_cidr: &str, b: &NetNs, b_cidr: &str) {
    const IFNAME: &str = "veth0";
    run_ip(&[
        "link", "add", IFNAME, "netns", &a.name, "type", "veth", "peer", "name", IFNAME, "netns",
        &b.name,
    ]);
    for (ns, cidr) in [(a, a_cidr), (b, b_cidr)] {
        ns.ip(&["addr", "add", cidr, "dev", IFNAME]);
        ns.ip(&["link", "set", IFNAME, "up"]);
    }
}

/// Runs `ip <args>`; panics with its stderr if it fails.
fn run_ip(args: &[&str]) {
    let output = Command::new(IP)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {IP} {}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "{IP} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};
    use std::panic::{self, AssertUnwindSafe};

    fn listed(name: &str) -> bool {
        let out = Command::new(IP).args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    #[test]
    fn veth_pair_connects_two_namespaces() {
        let a = NetNs::new("unit-a");
        let b = NetNs::new("unit-b");
        assert_ne!(a.name(), b.name());
        veth_pair(&a, "10.201.0.1/24", &b, "10.201.0.2/24");
        let listener = b.bind_tcp(SocketAddr::from((Ipv4Addr::new(10, 201, 0, 2), 0)));
        let addr = listener.local_addr().unwrap();
        let mut client = a.run(|| TcpStream::connect(addr)).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), Ipv4Addr::new(10, 201, 0, 1));
        client.write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // Programs run inside see the namespace's interfaces.
        let out = a.command("cat").arg("/proc/net/dev").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("veth0:"));
    }

    #[test]
    fn namespace_is_deleted_on_drop_also_when_panicking() {
        let ns = NetNs::new("unit-drop");
        let name = ns.name().to_string();
        assert!(listed(&name));
        drop(ns);
        assert!(!listed(&name));

        let mut name = String::new();
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let ns = NetNs::new("unit-panic");
            name = ns.name().to_string();
            panic!("test failure while the namespace exists");
        }));
        assert!(result.is_err());
        assert!(
            !name.is_empty() && !listed(&name),
            "{name} survived a panic"
        );
    }
}
