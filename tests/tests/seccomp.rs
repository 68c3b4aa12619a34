//! The seccomp allow-lists (`*/seccomp.allow`) against the paths a daemon
//! can take that the other end-to-end tests do not, all under
//! `--seccomp kill` (how the lists are made: docs/security.md).
//!
//! - Process-level paths, under each daemon's list, through
//!   `airlock-seccomp-probe` (the daemons' own logging, panic hook and
//!   filter): a panic with a backtrace, threads started late, the
//!   allocator growing, shrinking and failing, a stop and continue while
//!   threads sit in timed waits, syslog losing its socket.
//! - The daemons themselves: stopped and continued, SIGHUP, and
//!   airlock-net following its `--resolv-conf` when it is replaced.
//! - airlock-proxy resolving origins and upstream proxies by name, in a
//!   network namespace whose resolver is the test's own (the namespace's
//!   `/etc/resolv.conf` and `/etc/nsswitch.conf` are the test's files,
//!   bind-mounted for the proxy alone): over UDP and TCP, a name with two
//!   addresses, other NSS modules, and through nscd.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::servers::{DnsResolver, HttpServer, HELLO_BODY};
use airlock_e2e::{workspace_root, DaemonHandle, NetNs, Rig};

/// Each daemon and the crate directory holding its list.
const LISTS: [(&str, &str); 3] = [
    ("airlock-fs", "fs-backend"),
    ("airlock-net", "net-backend"),
    ("airlock-proxy", "proxy"),
];
const PROBE: &str = env!("CARGO_BIN_EXE_airlock-seccomp-probe");
/// Upper bound for anything a test waits for (a daemon starting, a line).
const WAIT: Duration = Duration::from_secs(30);

fn list(crate_dir: &str) -> PathBuf {
    workspace_root().join(crate_dir).join("seccomp.allow")
}

fn probe(crate_dir: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(PROBE);
    cmd.arg(list(crate_dir)).args(args);
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

fn describe(status: ExitStatus) -> String {
    match status.signal() {
        Some(libc::SIGSYS) => format!("{status}: killed by seccomp (SIGSYS)"),
        _ => status.to_string(),
    }
}

// ---------------------------------------------------------------- probe paths

#[test]
fn panics_are_reported_under_every_list() {
    for (daemon, dir) in LISTS {
        for full in [false, true] {
            let out = probe(dir, &["panic"])
                .env("RUST_BACKTRACE", if full { "full" } else { "1" })
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(101),
                "{daemon}: a panic must end the process as Rust does (101), not {}\n{stderr}",
                describe(out.status)
            );
            assert!(
                stderr.contains("probe panic on the main thread")
                    && stderr.contains("stack backtrace:"),
                "{daemon}: message and backtrace expected:\n{stderr}"
            );
        }
        let out = probe(dir, &["panic-thread"])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("JOINED a panicked thread"),
            "{daemon}: a worker's panic: {}\n{stdout}{}",
            describe(out.status),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn threads_and_the_allocator_work_under_every_list() {
    for (daemon, dir) in LISTS {
        for scenario in ["threads", "alloc"] {
            let out = probe(dir, &[scenario]).output().unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("DONE"),
                "{daemon} {scenario}: {}\n{}",
                describe(out.status),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn allocation_failure_aborts_with_its_message_under_every_list() {
    for (daemon, dir) in LISTS {
        let out = probe(dir, &["alloc-failure"])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{daemon}: an allocation failure must abort, not {}\n{stderr}",
            describe(out.status)
        );
        assert!(
            stderr.contains("memory allocation of 2147483648 bytes failed"),
            "{daemon}: {stderr}"
        );
    }
}

/// Reads lines from `out` until one equals `want`; panics after [`WAIT`] or
/// at EOF.
fn expect_line(out: &mut BufReader<ChildStdout>, want: &str, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        if line.trim_end() == want {
            return;
        }
        if n == 0 || Instant::now() > deadline {
            let status = child.wait().unwrap();
            panic!("no {want:?} line from the probe ({})", describe(status));
        }
    }
}

/// The state letter of every thread of `pid` (`/proc/PID/task/*/stat`).
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            // pid (comm) STATE …; comm may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            after.trim_start().chars().next()
        })
        .collect()
}

/// Waits until every thread of `pid` is in `state` (`S` sleeping, `T`
/// stopped), and at least `threads` of them exist.
fn wait_threads(pid: u32, state: char, threads: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let states = thread_states(pid);
        if states.len() >= threads && states.iter().all(|&s| s == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "threads of {pid} not all {state:?}: {states:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGSTOP, then SIGCONT once every thread has stopped: threads in timed
/// waits are then resumed by the kernel with restart_syscall.
fn stop_and_continue(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_threads(pid, 'T', 1);
    signal(pid, libc::SIGCONT);
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child
    // process of this test.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn stop_and_continue_under_every_list() {
    for (daemon, dir) in LISTS {
        let mut child = probe(dir, &["stop"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        expect_line(&mut out, "WAITING", &mut child);
        // The main thread sleeping, and one each in a futex, poll and
        // epoll wait with a timeout.
        wait_threads(child.id(), 'S', 4);
        stop_and_continue(child.id());
        let status = child.wait().unwrap();
        assert!(status.success(), "{daemon}: {}", describe(status));
    }
}

#[test]
fn syslog_reconnects_under_every_list() {
    for (daemon, dir) in LISTS {
        let tmp = tempfile::Builder::new()
            .prefix("airlock-syslog-")
            .tempdir_in("/tmp")
            .unwrap();
        let path = tmp.path().join("log");
        let bind = || {
            let s = UnixDatagram::bind(&path).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        };
        let mut syslogd = bind();
        let mut child = probe(dir, &["syslog", path.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        expect_line(&mut out, "READY", &mut child);
        let received = |syslogd: &UnixDatagram, want: &str| {
            let mut buf = [0u8; 2048];
            let n = syslogd
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{daemon}: no syslog message {want:?}: {e}"));
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.contains(want), "{daemon}: {text:?} lacks {want:?}");
        };
        writeln!(stdin, "first").unwrap();
        expect_line(&mut out, "LOGGED first", &mut child);
        received(&syslogd, "first");
        // The syslog daemon restarts: its socket goes away and comes back.
        drop(syslogd);
        std::fs::remove_file(&path).unwrap();
        syslogd = bind();
        writeln!(stdin, "second").unwrap();
        expect_line(&mut out, "LOGGED second", &mut child);
        received(&syslogd, "second");
        // A panic reaches syslog too (the panic hook).
        writeln!(stdin, "panic").unwrap();
        received(&syslogd, "probe panic while logging to syslog");
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(101), "{daemon}: {}", describe(status));
    }
}

// ------------------------------------------------------------- the daemons

/// Polls `daemon`'s log until it contains `want`.
fn wait_for_log(daemon: &DaemonHandle, want: &str) {
    let deadline = Instant::now() + WAIT;
    while !daemon.log().contains(want) {
        if let Some(status) = daemon.try_wait() {
            panic!(
                "{} exited ({}) before logging {want:?}:\n{}",
                daemon.name(),
                describe(status),
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not log {want:?}:\n{}",
            daemon.name(),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn assert_running(daemon: &DaemonHandle) {
    if let Some(status) = daemon.try_wait() {
        panic!(
            "{} exited: {}\n{}",
            daemon.name(),
            describe(status),
            daemon.log()
        );
    }
}

#[test]
fn daemons_survive_stop_continue_and_sighup() {
    let mut rig = Rig::new("seccomp_signals");
    let share = rig.dir().join("share");
    std::fs::create_dir(&share).unwrap();
    let rules = rig.dir().join("egress.rules");
    std::fs::write(&rules, "deny 10.0.0.0/8\n").unwrap();

    let fs_socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&fs_socket)
        .arg("--shared-dir")
        .arg(&share)
        .args(["--seccomp", "kill"]);
    let fs = rig.spawn_daemon("airlock-fs", cmd);
    // airlock-net follows its resolv.conf: inotify, and a reread on SIGHUP.
    let resolv_conf = rig.dir().join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\n").unwrap();
    let net_socket = rig.dir().join("net.sock");
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path")
        .arg(&net_socket)
        .arg("--resolv-conf")
        .arg(&resolv_conf)
        .args(["--seccomp", "kill"])
        .arg("--egress-rules")
        .arg(&rules);
    let net = rig.spawn_daemon("airlock-net", cmd);
    let proxy_socket = rig.dir().join("proxy.sock");
    let mut cmd = Command::new(Rig::bin("airlock-proxy"));
    cmd.arg("--listen")
        .arg(format!("unix:{}", proxy_socket.display()))
        .args(["--seccomp", "kill"]);
    let proxy = rig.spawn_daemon("airlock-proxy", cmd);
    for socket in [&fs_socket, &net_socket, &proxy_socket] {
        rig.wait_for_socket(socket, WAIT);
    }
    std::fs::write(&rules, "deny 10.0.0.0/8\nallow 10.1.0.0/16\n").unwrap();
    for (daemon, after_hup) in [
        (&fs, "SIGHUP ignored"),
        (&net, "egress policy reloaded: 2 rules"),
        (&proxy, "SIGHUP ignored"),
    ] {
        wait_threads(daemon.pid(), 'S', 1);
        stop_and_continue(daemon.pid());
        signal(daemon.pid(), libc::SIGHUP);
        wait_for_log(daemon, after_hup);
        assert_running(daemon);
    }
    // Replaced as NetworkManager does: a new file renamed over it.
    let new = rig.dir().join("resolv.conf.new");
    std::fs::write(&new, "nameserver 127.0.0.2\nsearch follow.test\n").unwrap();
    std::fs::rename(&new, &resolv_conf).unwrap();
    wait_for_log(&net, "dns: upstream 127.0.0.2:53");
    assert_running(&net);
}

// ------------------------------------------------- airlock-proxy by name

const PROXY_PORT: u16 = 3128;
const ORIGIN_PORT: u16 = 8080;
const UPSTREAM_PORT: u16 = 8888;
const TINYPROXY: &str = "/usr/bin/tinyproxy";
/// `ip netns exec` makes a mount namespace per command; these are the
/// test's files the proxy sees there.
const RESOLV_CONF: &str = "/etc/resolv.conf";
const NSSWITCH_CONF: &str = "/etc/nsswitch.conf";

/// A network namespace with the test's resolver at 127.0.0.1:53 (UDP and
/// TCP) and an origin on port 8080 of every loopback address.
/// `origin.test` and `upstream.test` are 127.0.0.1; `two.test` is
/// 127.0.0.1 and 127.0.0.2 (glibc sorts several addresses by RFC 3484,
/// asking the kernel for the host's own addresses over netlink).
struct Named {
    // Dropped in this order: the rig stops the daemons first.
    rig: Rig,
    resolver: DnsResolver,
    origin: HttpServer,
    ns: NetNs,
}

impl Named {
    fn new(tag: &str) -> Named {
        let ns = NetNs::new(tag);
        let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let resolver = DnsResolver::serve_with_tcp(
            ns.bind_udp(lo(53)),
            ns.bind_tcp(lo(53)),
            &[
                ("origin.test", Ipv4Addr::LOCALHOST),
                ("two.test", Ipv4Addr::LOCALHOST),
                ("two.test", Ipv4Addr::new(127, 0, 0, 2)),
                ("upstream.test", Ipv4Addr::LOCALHOST),
            ],
        );
        let origin = HttpServer::serve(
            ns.bind_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ORIGIN_PORT))),
            0,
        );
        Named {
            rig: Rig::new(tag),
            resolver,
            origin,
            ns,
        }
    }

    /// Writes `text` to a file of the rig (a resolv.conf, an nsswitch.conf).
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.rig.dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts airlock-proxy (`--seccomp kill`) on 127.0.0.1:`port` of the
    /// namespace, with `mounts` bind-mounted for it, and waits until it
    /// accepts connections.
    fn proxy(
        &mut self,
        name: &str,
        port: u16,
        mounts: &[(&Path, &str)],
        env: &[(&str, &Path)],
        args: &[&str],
    ) -> DaemonHandle {
        let mut cmd = self
            .ns
            .command_with_files(Rig::bin("airlock-proxy"), mounts);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--seccomp", "kill", "--log-level", "debug"])
            .args(args);
        for var in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
            cmd.env_remove(var).env_remove(var.to_uppercase());
        }
        for (var, value) in env {
            cmd.env(var, value);
        }
        let proxy = self.rig.spawn_daemon(name, cmd);
        self.wait_listening(&proxy, port);
        proxy
    }

    fn wait_listening(&self, daemon: &DaemonHandle, port: u16) {
        let deadline = Instant::now() + WAIT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while self.ns.run(|| TcpStream::connect(addr)).is_err() {
            assert_running(daemon);
            assert!(
                Instant::now() < deadline,
                "{} never listened",
                daemon.name()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// curl in the namespace through the proxy on `port`; returns
    /// (HTTP status, body).
    fn fetch(&self, port: u16, url: &str, tunnel: bool) -> (String, String) {
        let mut cmd = self.ns.command("curl");
        cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .args(["--proxy", &format!("http://127.0.0.1:{port}")]);
        if tunnel {
            cmd.arg("--proxytunnel");
        }
        let out = cmd.arg(url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.to_owned(),
            format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Fetches `/hello` from `host` (plain and, with `tunnel`, through
    /// CONNECT) and checks the answer and that the proxy lives on.
    fn hello(&self, proxy: &DaemonHandle, port: u16, host: &str, tunnel: bool) {
        let url = format!("http://{host}:{ORIGIN_PORT}/hello");
        let (code, body) = self.fetch(port, &url, tunnel);
        assert_running(proxy);
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("200", HELLO_BODY),
            "{url} (tunnel: {tunnel}) through {}:\n{}",
            proxy.name(),
            proxy.log()
        );
    }
}

#[test]
fn proxy_resolves_names_over_udp() {
    let mut w = Named::new("names-udp");
    let resolv = w.file("resolv.conf", "nameserver 127.0.0.1\n");
    let proxy = w.proxy("proxy", PROXY_PORT, &[(&resolv, RESOLV_CONF)], &[], &[]);
    w.hello(&proxy, PROXY_PORT, "origin.test", false);
    w.hello(&proxy, PROXY_PORT, "origin.test", true);
    w.hello(&proxy, PROXY_PORT, "two.test", false);
    w.resolver
        .wait_for_query("two.test", WAIT)
        .iter()
        .for_each(|q| assert!(!q.tcp, "{q:?}"));
    // The lookup's thread now idles in a timed wait: stopped and
    // continued, the kernel resumes it with restart_syscall.
    wait_threads(proxy.pid(), 'S', 1);
    stop_and_continue(proxy.pid());
    w.hello(&proxy, PROXY_PORT, "origin.test", false);

    // glibc sends A and AAAA one after the other instead of together.
    let single = w.file(
        "resolv-single.conf",
        "nameserver 127.0.0.1\noptions single-request\n",
    );
    let port = PROXY_PORT + 1;
    let proxy = w.proxy("proxy-single", port, &[(&single, RESOLV_CONF)], &[], &[]);
    w.hello(&proxy, port, "two.test", false);
}

#[test]
fn proxy_resolves_names_over_tcp() {
    let mut w = Named::new("names-tcp");
    let resolv = w.file("resolv.conf", "nameserver 127.0.0.1\noptions use-vc\n");
    let proxy = w.proxy("proxy", PROXY_PORT, &[(&resolv, RESOLV_CONF)], &[], &[]);
    w.hello(&proxy, PROXY_PORT, "origin.test", false);
    w.hello(&proxy, PROXY_PORT, "two.test", true);
    let queries = w.resolver.wait_for_query("two.test", WAIT);
    assert!(queries.iter().all(|q| q.tcp), "{queries:?}");
}

/// NSS modules unpacked (not installed) by scripts/install-deps.
fn host_packages() -> PathBuf {
    let root = workspace_root().join("target/host-packages/root");
    assert!(
        root.join("usr/sbin/nscd").is_file(),
        "{} lacks nscd and the NSS modules: run scripts/install-deps",
        root.display()
    );
    root
}

#[test]
fn proxy_resolves_names_with_other_nss_modules() {
    let mut w = Named::new("names-nss");
    let root = host_packages();
    let library_path = PathBuf::from(format!(
        "{}:{}",
        root.join("usr/lib/x86_64-linux-gnu").display(),
        root.join("lib/x86_64-linux-gnu").display()
    ));
    let resolv = w.file("resolv.conf", "nameserver 127.0.0.1\n");
    // Debian's usual hosts lines, each module asked first (the daemons
    // they talk to, systemd-resolved, machined and avahi, do not run
    // here: the modules fail over to dns); myhostname answers the
    // localhost names itself from the kernel's addresses.
    let variants = [
        ("dns-files", "hosts: dns files\n", "origin.test"),
        ("myhostname", "hosts: myhostname files dns\n", "localhost"),
        ("myhostname-miss", "hosts: myhostname dns\n", "two.test"),
        (
            "resolve",
            "hosts: resolve [!UNAVAIL=return] dns\n",
            "two.test",
        ),
        ("mymachines", "hosts: mymachines dns\n", "two.test"),
        (
            "mdns",
            "hosts: mdns4_minimal [NOTFOUND=return] dns\n",
            "two.test",
        ),
    ];
    for (i, (name, hosts, host)) in variants.iter().enumerate() {
        let nsswitch = w.file(
            &format!("nsswitch-{name}.conf"),
            &format!("passwd: files\ngroup: files\n{hosts}"),
        );
        let port = PROXY_PORT + i as u16;
        let proxy = w.proxy(
            &format!("proxy-{name}"),
            port,
            &[(&resolv, RESOLV_CONF), (&nsswitch, NSSWITCH_CONF)],
            &[("LD_LIBRARY_PATH", &library_path)],
            &[],
        );
        w.hello(&proxy, port, host, false);
        let status = proxy.terminate();
        assert!(status.success(), "{name}: {}", describe(status));
    }
}

#[test]
fn proxy_resolves_names_through_nscd() {
    let mut w = Named::new("names-nscd");
    let root = host_packages();
    let nscd = root.join("usr/sbin/nscd");
    let resolv = w.file("resolv.conf", "nameserver 127.0.0.1\n");
    // A private /run: glibc finds nscd at /var/run/nscd/socket.
    let run = w.rig.dir().join("run");
    std::fs::create_dir_all(run.join("nscd")).unwrap();
    let conf = w.file(
        "nscd.conf",
        "server-user root\nenable-cache hosts yes\npersistent hosts no\nshared hosts yes\n",
    );
    let mounts = [(resolv.as_path(), RESOLV_CONF), (run.as_path(), "/run")];
    let mut cmd = w.ns.command_with_files(&nscd, &mounts);
    cmd.arg("-F").arg("-f").arg(&conf);
    let nscd_daemon = w.rig.spawn_daemon("nscd", cmd);
    let deadline = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(run.join("nscd/socket")).is_err() {
        assert_running(&nscd_daemon);
        assert!(Instant::now() < deadline, "nscd never listened");
        thread::sleep(Duration::from_millis(20));
    }
    let proxy = w.proxy("proxy", PROXY_PORT, &mounts, &[], &[]);
    w.hello(&proxy, PROXY_PORT, "two.test", false);
    w.hello(&proxy, PROXY_PORT, "origin.test", true);
    // nscd answered: it looked the names up (a miss each).
    let mut stats = w.ns.command_with_files(&nscd, &mounts);
    let stats = stats.arg("-g").arg("-f").arg(&conf).output().unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    let hosts = text.split("hosts cache:").nth(1).unwrap_or("");
    let misses: u64 = hosts
        .lines()
        .find(|l| l.contains("cache misses on positive entries"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        misses >= 2,
        "nscd did not resolve for the proxy:\n{text}\n{}",
        nscd_daemon.log()
    );
}

#[test]
fn proxy_reaches_an_upstream_proxy_by_name() {
    assert!(
        Path::new(TINYPROXY).exists(),
        "{TINYPROXY} not found: run scripts/install-deps"
    );
    let mut w = Named::new("names-upstream");
    let resolv = w.file("resolv.conf", "nameserver 127.0.0.1\n");
    let conf = w.file(
        "tinyproxy.conf",
        &format!("Port {UPSTREAM_PORT}\nListen 127.0.0.1\nTimeout 30\nLogLevel Info\n"),
    );
    let mut cmd =
        w.ns.command_with_files(TINYPROXY, &[(&resolv, RESOLV_CONF)]);
    cmd.arg("-d").arg("-c").arg(&conf);
    let tinyproxy = w.rig.spawn_daemon("tinyproxy", cmd);
    w.wait_listening(&tinyproxy, UPSTREAM_PORT);
    let upstream = format!("http://upstream.test:{UPSTREAM_PORT}");
    let proxy = w.proxy(
        "proxy",
        PROXY_PORT,
        &[(&resolv, RESOLV_CONF)],
        &[],
        &["--upstream-http", &upstream, "--upstream-https", &upstream],
    );
    w.hello(&proxy, PROXY_PORT, "origin.test", false);
    w.hello(&proxy, PROXY_PORT, "origin.test", true);
    // Both went through tinyproxy, which the proxy found by name.
    w.resolver.wait_for_query("upstream.test", WAIT);
    let log = w.origin.log();
    assert_eq!(log.requests.len(), 2, "{log:?}");
    let tiny = tinyproxy.log();
    assert!(
        tiny.contains("origin.test"),
        "tinyproxy did not carry the requests:\n{tiny}"
    );
}
