//! Confinement as the kernel reports it: each daemon's seccomp mode,
//! namespaces, root directory, mounts, user, groups and capabilities read
//! from /proc while it serves, and a guest served by airlock-fs under
//! `--sandbox chroot` (the mode whose file system instance is reused across
//! frontends). Every other end-to-end test runs the daemons with their
//! defaults as root — `--sandbox namespace` and `--seccomp kill` — so the
//! whole suite is the test that the allow-lists are complete.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_e2e::{fd_count, fd_listing, fs_device_args, DaemonHandle, Rig, VmConfig};

/// CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID.
const FS_CAPS: u64 = 0b1101_1111;
const NOBODY: u32 = 65534;
/// A user id no account and no other test uses.
const LONE_UID: u32 = 64_999;
/// What the vhost-user daemons log each time a session is prepared.
const READY: &str = "ready for a frontend";

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn caps(pid: u32, set: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, set), 16).unwrap()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Seccomp filter mode (2) and no_new_privs, as every daemon must have.
/// Waits for the filter, which comes a moment after the socket appears.
fn assert_filtered(d: &DaemonHandle) {
    let pid = d.pid();
    for _ in 0..200 {
        if status_field(pid, "Seccomp") == "2" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_field(pid, "Seccomp"), "2", "{}", d.log());
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Groups"), "", "supplementary groups kept");
}

fn start(rig: &mut Rig, name: &str, args: &[&str]) -> DaemonHandle {
    let mut cmd = Command::new(Rig::bin(name));
    cmd.args(args);
    rig.spawn_daemon(name, cmd)
}

/// airlock-fs on `<rig>/fs.sock` serving `share`, once its socket exists.
fn start_fs(rig: &mut Rig, share: &Path, extra: &[&str]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join("fs.sock");
    let mut args = vec![
        "--socket-path",
        socket.to_str().unwrap(),
        "--shared-dir",
        share.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = start(rig, "airlock-fs", &args);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (d, socket)
}

#[test]
fn airlock_fs_namespace_sandbox_leaves_only_the_share() {
    let mut rig = Rig::new("confine_fs_namespace");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("host.txt"), "x").unwrap();
    let (d, _socket) = start_fs(&mut rig, &share, &[]);
    let pid = d.pid();
    assert_filtered(&d);
    for kind in ["mnt", "net", "ipc", "uts"] {
        assert_ne!(ns("self", kind), ns(&pid.to_string(), kind), "{kind}");
    }
    // Its root: an empty tmpfs with /proc and the share, nothing else.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let names: BTreeSet<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["proc".into(), "share".into()]));
    assert_eq!(fs::read(root.join("share/host.txt")).unwrap(), b"x");
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_mount = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/"));
    let root_mount = root_mount.unwrap_or_else(|| panic!("{mounts}"));
    assert!(root_mount.contains(" ro,"), "root not read-only: {mounts}");
    let share_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/share"))
        .unwrap_or_else(|| panic!("{mounts}"));
    assert!(share_mount.contains("nodev"), "{share_mount}");
    assert_eq!(caps(pid, "CapEff"), FS_CAPS);
    assert_eq!(caps(pid, "CapPrm"), FS_CAPS);
    assert_eq!(caps(pid, "CapBnd"), FS_CAPS);
}

/// `--allow-device-nodes` adds CAP_MKNOD and nothing else; the share stays
/// `nodev` in the sandbox, so no node in it can be opened through the
/// daemon's mount.
#[test]
fn airlock_fs_allowing_device_nodes_adds_only_cap_mknod() {
    let mut rig = Rig::new("confine_fs_mknod");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let (d, _socket) = start_fs(&mut rig, &share, &["--allow-device-nodes"]);
    let pid = d.pid();
    assert_filtered(&d);
    const MKNOD: u64 = 1 << 27;
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(caps(pid, set), FS_CAPS | MKNOD, "{set}");
    }
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let share_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/share"))
        .unwrap_or_else(|| panic!("{mounts}"));
    assert!(share_mount.contains("nodev"), "{share_mount}");
}

#[test]
fn airlock_fs_chroot_serves_one_guest_after_another() {
    let mut rig = Rig::new("confine_fs_chroot");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("host.txt"), "from the host\n").unwrap();
    let (d, socket) = start_fs(&mut rig, &share, &["--sandbox", "chroot"]);
    let pid = d.pid();
    assert_filtered(&d);
    assert_eq!(fs::read_link(format!("/proc/{pid}/root")).unwrap(), share);
    assert_eq!(caps(pid, "CapEff"), FS_CAPS);
    // Counted once the daemon is idle with its first session prepared: the
    // socket exists before that session's workers and eventfds do.
    d.wait_for_log_lines(READY, 1, Duration::from_secs(20));
    let baseline = fd_count(pid);

    // Two guests in turn: the second is served by the same file system
    // instance after its reset, and sees what the first wrote.
    let mut after_first = None;
    let scripts = [
        "set -e\nmount -t virtiofs share /mnt\ncat /mnt/host.txt\nmkdir /mnt/d\necho first > /mnt/d/f\nln -s /etc/passwd /mnt/abs\nsync\numount /mnt\necho ROUND-DONE\n",
        "set -e\nmount -t virtiofs share /mnt\ncat /mnt/d/f\nls /mnt\nreadlink /mnt/abs\nrm -r /mnt/d\numount /mnt\necho ROUND-DONE\n",
    ];
    for (round, script) in scripts.iter().enumerate() {
        let vm = rig.boot(VmConfig {
            script: (*script).into(),
            qemu_args: fs_device_args(&socket, "share", 1024),
            timeout: Duration::from_secs(180),
            ..VmConfig::default()
        });
        let out = vm.wait();
        out.assert_success().assert_contains("ROUND-DONE");
        if round == 1 {
            out.assert_contains("first").assert_contains("/etc/passwd");
        } else {
            out.assert_contains("from the host");
        }
        // The guest's inodes and handles are gone once it is: the next
        // session is prepared only after this one was torn down. What may
        // stay is the share's root, opened for the first guest and reopened
        // by each reset for the next; from then on the count is constant.
        d.wait_for_log_lines(READY, round + 2, Duration::from_secs(20));
        let fds = fd_count(pid);
        let allowed = *after_first.get_or_insert(baseline + 1);
        assert!(
            fds <= allowed,
            "round {round}: {fds} fds, {baseline} before the first guest:\n{}",
            fd_listing(pid)
        );
        if round == 0 {
            after_first = Some(fds);
        }
    }
    assert!(!share.join("d").exists());
    assert_eq!(
        fs::read_link(share.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(d.is_running(), "{}", d.log());
}

fn api_get(socket: &Path, path: &str) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// airlock-net and airlock-proxy started as root with `user_args`: serving
/// as nobody with no groups, no capabilities, every mount read-only, and
/// still serving (the API answers; the proxy forwards a request).
fn net_and_proxy_serve_as_nobody(test: &str, user_args: &[&str]) {
    let mut rig = Rig::new(test);
    let dir = rig.dir().to_owned();
    let api = dir.join("api.sock");
    let vsock = dir.join("net.sock");
    let mut net_args = vec![
        "--socket-path",
        vsock.to_str().unwrap(),
        "--api-socket",
        api.to_str().unwrap(),
        "--dns-upstream",
        "127.0.0.1:53",
    ];
    net_args.extend_from_slice(user_args);
    let net = start(&mut rig, "airlock-net", &net_args);
    rig.wait_for_socket(&vsock, Duration::from_secs(10));

    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = origin.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).unwrap();
        c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin")
            .unwrap();
    });
    let proxy_port = free_port();
    let listen = format!("127.0.0.1:{proxy_port}");
    let proxy_socket = dir.join("proxy.sock");
    let listen_unix = format!("unix:{}", proxy_socket.display());
    let mut proxy_args = vec![
        "--listen",
        &listen,
        "--listen",
        &listen_unix,
        "--ignore-proxy-env",
    ];
    proxy_args.extend_from_slice(user_args);
    let proxy = start(&mut rig, "airlock-proxy", &proxy_args);
    let mut conn = None;
    for _ in 0..200 {
        if let Ok(c) = TcpStream::connect(&listen) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = conn.unwrap_or_else(|| panic!("proxy never listened:\n{}", proxy.log()));
    write!(
        conn,
        "GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        proxy.log()
    );
    assert!(reply.ends_with("origin"), "{reply}");
    server.join().unwrap();

    let stats = api_get(&api, "/stats");
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}\n{}", net.log());
    // The proxy's Unix socket belongs to the user it serves as (so an
    // airlock-net serving as that user may connect), still mode 0600; the
    // vhost-user and API sockets stay root's, for QEMU and the admin.
    let meta = fs::metadata(&proxy_socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
    for socket in [&vsock, &api] {
        assert_eq!(fs::metadata(socket).unwrap().uid(), 0);
    }

    for d in [&net, &proxy] {
        let pid = d.pid();
        assert_filtered(d);
        let uid = status_field(pid, "Uid");
        assert_eq!(uid, format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}"));
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(caps(pid, set), 0, "{} {set}", d.name());
        }
        assert_ne!(ns("self", "mnt"), ns(&pid.to_string(), "mnt"));
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        for line in mounts.lines() {
            let opts = line.split(' ').nth(5).unwrap();
            assert!(
                opts.split(',').any(|o| o == "ro"),
                "{}: writable mount: {line}",
                d.name()
            );
        }
        assert!(d.is_running(), "{}", d.log());
        assert!(
            d.log().contains(&format!(
                "serving as user {}",
                user_args.last().unwrap_or(&"nobody")
            )),
            "{}",
            d.log()
        );
    }
    // Their sockets go when they exit, although nobody may not delete
    // files in the (root's) directory they are in.
    let meta = fs::metadata(&dir).unwrap();
    assert!(
        meta.uid() == 0 && meta.mode() & 0o022 == 0,
        "the rig directory is root's, writable by root only"
    );
    for (d, sockets) in [(&net, vec![&vsock, &api]), (&proxy, vec![&proxy_socket])] {
        let status = d.terminate();
        assert!(status.success(), "{}: {status}\n{}", d.name(), d.log());
        for socket in sockets {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while socket.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} left {} behind\n{}",
                    d.name(),
                    socket.display(),
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Started as root with no `--user`, neither daemon keeps root: both serve
/// as `nobody`, as passt does.
#[test]
fn airlock_net_and_proxy_started_as_root_serve_as_nobody() {
    net_and_proxy_serve_as_nobody("confine_default_user", &[]);
}

#[test]
fn airlock_net_and_proxy_drop_to_the_user_they_are_given() {
    net_and_proxy_serve_as_nobody("confine_user", &["--user", "65534"]);
}

fn run_as(uid: Option<u32>, bin: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(Rig::bin(bin));
    cmd.args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn confinement_that_cannot_be_had_is_a_clear_error() {
    let rig = Rig::new("confine_errors");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let socket = rig.dir().join("x.sock");
    let (sock, dir) = (socket.to_str().unwrap(), share.to_str().unwrap());

    let (code, err) = run_as(
        Some(NOBODY),
        "airlock-fs",
        // /tmp: a directory nobody can reach; the error comes before the socket.
        &[
            "--socket-path",
            "/nonexistent/x.sock",
            "--shared-dir",
            "/tmp",
            "--sandbox",
            "namespace",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--sandbox namespace needs CAP_SYS_ADMIN"),
        "{err}"
    );

    let (code, err) = run_as(
        None,
        "airlock-net",
        &[
            "--socket-path",
            sock,
            "--dns-upstream",
            "127.0.0.1:53",
            "--user",
            "no-such-user-airlock",
        ],
    );
    // A user that does not exist is a usage error (2).
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--user no-such-user-airlock"), "{err}");

    let (code, err) = run_as(
        Some(NOBODY),
        "airlock-proxy",
        &["--listen", "127.0.0.1:1", "--user", "root"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only root can switch users"), "{err}");

    // Root may not be asked for by name or number: it is what the switch
    // is there to leave.
    for root in ["root", "0"] {
        let (code, err) = run_as(
            None,
            "airlock-net",
            &[
                "--socket-path",
                sock,
                "--dns-upstream",
                "127.0.0.1:53",
                "--user",
                root,
            ],
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("--user {root}: the daemon does not serve as root")),
            "{err}"
        );
        assert!(!socket.exists(), "socket created before the refusal");
    }

    let (code, err) = run_as(
        None,
        "airlock-fs",
        &["--shared-dir", dir, "--seccomp", "off"],
    );
    assert_eq!(code, 2, "{err}");
}

/// What airlock-net opens again after switching users — the proxy's socket
/// at each proxied flow, the egress rules on SIGHUP — is checked as that
/// user at startup, and a path it cannot reach is named then, not at the
/// first flow or reload.
#[test]
fn airlock_net_names_paths_its_user_cannot_reach() {
    let mut rig = Rig::new("confine_unreachable");
    // Root's alone: nobody may not even look inside.
    let private = rig.dir().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let proxy_socket = private.join("proxy.sock");
    let _proxy = std::os::unix::net::UnixListener::bind(&proxy_socket).unwrap();
    let rules = private.join("egress.rules");
    fs::write(&rules, "allow 0.0.0.0/0\n").unwrap();
    let vsock = rig.dir().join("net.sock");
    let target = format!("unix:{}", proxy_socket.display());
    let net = start(
        &mut rig,
        "airlock-net",
        &[
            "--socket-path",
            vsock.to_str().unwrap(),
            "--dns-upstream",
            "127.0.0.1:53",
            "--proxy-target",
            &target,
            "--egress-rules",
            rules.to_str().unwrap(),
        ],
    );
    // The warnings come after the user switch, which follows binding the
    // socket: wait for each line rather than reading the log once.
    for what in [
        format!("--proxy-target {target}: user nobody may not reach it"),
        format!(
            "--egress-rules {}: user nobody may not reach it",
            rules.display()
        ),
    ] {
        if let Err(log) = net.wait_for_log(&what, Duration::from_secs(30)) {
            panic!("no {what:?} in\n{log}");
        }
    }
    assert!(net.is_running(), "{}", net.log());
}

/// airlock-fs checks at startup what it will need to serve: a share it can
/// list and search as the user it runs as, and the request threads it was
/// asked for (a bounded number).
#[test]
fn airlock_fs_startup_checks_the_share_and_its_threads() {
    // Reachable by nobody up to the share itself (rig directories are not).
    let top = tempfile::Builder::new()
        .prefix("airlock-fs-startup-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let share = top.path().join("share");
    fs::create_dir(&share).unwrap();
    fs::set_permissions(&share, fs::Permissions::from_mode(0o000)).unwrap();
    let run = top.path().join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = run.join("fs.sock");
    let (sock, dir) = (socket.to_str().unwrap(), share.to_str().unwrap());

    // Before this was checked the daemon started and waited for a guest:
    // give it a bounded time to exit.
    let mut child = Command::new(airlock_e2e::Rig::bin("airlock-fs"))
        .args(["--socket-path", sock, "--shared-dir", dir])
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("airlock-fs started with a share it cannot read");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (code, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "shared directory {dir} cannot be listed and searched by this process (uid {NOBODY})"
        )) && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!socket.exists());

    fs::set_permissions(&share, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = run_as(
        None,
        "airlock-fs",
        &[
            "--socket-path",
            sock,
            "--shared-dir",
            dir,
            "--thread-pool-size",
            "20000",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--thread-pool-size 20000 is more than 1024"),
        "{err}"
    );

    // Threads the system will not give: said so, not blamed on the share.
    // RLIMIT_NPROC counts every process and thread of the real user, so the
    // daemon runs as a user nothing else runs as (as nobody, the daemons
    // of other tests would use up the limit first).
    std::os::unix::fs::chown(&run, Some(LONE_UID), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(airlock_e2e::Rig::bin("airlock-fs"));
    cmd.args([
        "--socket-path",
        sock,
        "--shared-dir",
        dir,
        "--thread-pool-size",
        "1000",
    ])
    .uid(LONE_UID)
    .gid(NOBODY);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 16,
                rlim_max: 16,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: cannot start 1000 request threads (--thread-pool-size)"),
        "{err}"
    );
    assert!(!err.contains("shared directory"), "{err}");
}
