//! The airlock-fs binary as a process: options, errors, exit codes, the
//! socket conventions (path, --fd, socket activation), READY=1 and signals.
//! No guest needed; the QEMU tests live in the airlock-e2e crate.

use std::io::Read;
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-fs");

fn share() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Runs airlock-fs to completion and returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Daemon {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "daemon log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `secs` for the process to exit; returns its exit code.
    fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_on_path(share: &Path, sock: &Path, extra: &[&str]) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket-path")
        .arg(sock)
        .arg("--shared-dir")
        .arg(share)
        .args(extra);
    Daemon::spawn(&mut cmd, sock.with_extension("log"))
}

#[test]
fn print_capabilities_is_json_for_libvirt() {
    let (code, out, _) = run(&["--print-capabilities"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "fs");
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(features, vec!["separate-options"]);
}

#[test]
fn help_documents_every_option() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--socket-path",
        "--socket-group",
        "--fd",
        "--shared-dir",
        "--cache",
        "--readonly",
        "--xattr",
        "--writeback",
        "--allow-direct-io",
        "--announce-submounts",
        "--inode-file-handles",
        "--translate-uid",
        "--translate-gid",
        "--thread-pool-size",
        "--rlimit-nofile",
        "--audit-log",
        "--notify-socket",
        "--exit-on-disconnect",
        "--log-level",
        "--syslog",
        "--print-capabilities",
        "-o <OPTIONS>",
    ] {
        assert!(out.contains(opt), "--help does not mention {opt}");
    }
}

#[test]
fn usage_errors_are_chains_with_status_2() {
    let (code, _, err) = run(&["--socket-path", "/tmp/x.sock"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: no directory to share"), "{err}");

    let (code, _, err) = run(&[
        "--socket-path",
        "/tmp/x.sock",
        "--shared-dir",
        "/no/such/airlock",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("error: shared directory /no/such/airlock is not usable"),
        "{err}"
    );
    assert!(
        err.contains("caused by: No such file or directory"),
        "{err}"
    );

    let (code, _, err) = run(&["-o", "source=/tmp,bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown -o option \"bogus\""), "{err}");

    let (code, _, err) = run(&["--cache", "sometimes"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["--frobnicate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn no_socket_source_is_a_usage_error_printed_once() {
    let dir = share();
    let (code, _, err) = run(&["--shared-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no socket to serve"), "{err}");
    assert_eq!(err.matches("no socket to serve").count(), 1, "{err}");
}

#[test]
fn socket_is_private_live_one_refused_stale_one_replaced() {
    use std::os::unix::fs::MetadataExt;
    let dir = share();
    let sock = dir.path().join("fs.sock");
    let mut first = daemon_on_path(dir.path(), &sock, &[]);
    first.wait_log("listening for a vhost-user frontend");
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);

    // A second daemon on the same live socket must refuse.
    let (code, _, err) = run(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--shared-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("is in use by a running process"), "{err}");

    // SIGKILL leaves a stale socket file behind; the next daemon replaces it.
    first.signal(libc::SIGKILL);
    first.wait_exit(5);
    assert!(sock.exists());
    let second = daemon_on_path(dir.path(), &sock, &[]);
    second.wait_log("replaced stale socket");
    second.wait_log("listening for a vhost-user frontend");
    UnixStream::connect(&sock).unwrap();
}

/// Connects as a frontend does: a connection is served once its first
/// message arrived (QEMU's GET_FEATURES: request 1, version 1, no payload).
fn frontend(socket: &Path) -> UnixStream {
    use std::io::Write;
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    s
}

#[test]
fn sigterm_exits_zero_promptly_and_removes_the_socket() {
    let dir = share();
    let sock = dir.path().join("fs.sock");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = daemon_on_path(dir.path(), &sock, &[]);
        d.wait_log("listening for a vhost-user frontend");
        // Also while a frontend is connected.
        let _conn = frontend(&sock);
        d.wait_log("frontend connected");
        d.signal(sig);
        assert_eq!(d.wait_exit(3), Some(0), "{}", d.log());
        assert!(!sock.exists(), "socket file left behind");
    }
}

#[test]
fn ready_is_sent_once_listening() {
    let dir = share();
    let sock = dir.path().join("fs.sock");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &notify_path);
    let _d = Daemon::spawn(&mut cmd, dir.path().join("d.log"));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("no READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the socket accepts right now.
    UnixStream::connect(&sock).unwrap();
}

/// Starts airlock-fs with `listener` as file descriptor `target_fd`.
fn spawn_with_fd(
    listener: UnixListener,
    target_fd: i32,
    args: &[&str],
    envs: &[(&str, &str)],
    log: PathBuf,
) -> Daemon {
    let fd = listener.into_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(envs.iter().copied());
    // SAFETY: between fork and exec only async-signal-safe calls are made:
    // dup2 onto the target number (which clears FD_CLOEXEC on the copy) or,
    // when the listener already has that number, clearing FD_CLOEXEC on it
    // (dup2 of a descriptor onto itself changes nothing, and exec would then
    // close it: the daemon found fd 3 closed whenever the listener happened
    // to get number 3, which parallel tests' descriptors made a matter of
    // timing).
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == target_fd {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target_fd)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Daemon::spawn(&mut cmd, log);
    // SAFETY: `fd` is ours (from into_raw_fd) and no longer used here.
    unsafe { libc::close(fd) };
    d
}

#[test]
fn inherited_fd_and_socket_activation_are_served() {
    let dir = share();
    let shared = dir.path().to_str().unwrap();

    // libvirt style: --fd=N
    let path = dir.path().join("fd.sock");
    let d = spawn_with_fd(
        UnixListener::bind(&path).unwrap(),
        7,
        &["--fd=7", "--shared-dir", shared],
        &[],
        dir.path().join("fd.log"),
    );
    d.wait_log("listening for a vhost-user frontend on inherited fd 7");
    let _c = frontend(&path);
    d.wait_log("frontend connected");
    drop(d);
    assert!(
        path.exists(),
        "an inherited socket's file is not ours to remove"
    );

    // systemd style: LISTEN_FDS=1, fd 3
    let path = dir.path().join("act.sock");
    let d = spawn_with_fd(
        UnixListener::bind(&path).unwrap(),
        3,
        &["--shared-dir", shared],
        &[("LISTEN_FDS", "1")],
        dir.path().join("act.log"),
    );
    d.wait_log("listening for a vhost-user frontend on systemd socket fd 3");
    let _c = frontend(&path);
    d.wait_log("frontend connected");

    // Both at once is refused.
    let mut d = spawn_with_fd(
        UnixListener::bind(dir.path().join("both.sock")).unwrap(),
        3,
        &[
            "--shared-dir",
            shared,
            "--socket-path",
            dir.path().join("x.sock").to_str().unwrap(),
        ],
        &[("LISTEN_FDS", "1")],
        dir.path().join("both.log"),
    );
    assert_eq!(d.wait_exit(5), Some(2));
    assert!(d.log().contains("both given"), "{}", d.log());

    // An fd that is not a listening socket is refused clearly.
    let (a, _b) = UnixStream::pair().unwrap();
    let raw = a.as_raw_fd();
    let mut cmd = Command::new(BIN);
    cmd.args(["--fd", &raw.to_string(), "--shared-dir", shared]);
    // SAFETY: clears FD_CLOEXEC on `raw` in the child only (async-signal-safe fcntl).
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(raw, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut out = String::new();
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
    assert!(
        out.contains("is not a listening Unix stream socket"),
        "{out}"
    );
}
