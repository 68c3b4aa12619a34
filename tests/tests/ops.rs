//! Operations: the files in `dist/` and `scripts/install` work as shipped.
//!
//! - every example configuration parses through the real daemon and
//!   documents every option;
//! - each daemon sends `READY=1` to a `NOTIFY_SOCKET` (as `Type=notify`
//!   needs), started with its example configuration;
//! - the systemd units pass `systemd-analyze verify`;
//! - airlock-net and airlock-fs started by `systemd-socket-activate` (what a
//!   `.socket` unit does) serve a real guest: DHCP, mount, write;
//! - the QEMU vhost-user descriptors match `--print-capabilities`;
//! - `scripts/install` lays out a DESTDIR tree.
//!
//! This machine has no systemd as PID 1, so the units themselves cannot be
//! started here; each piece of what they rely on is checked instead.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use airlock_e2e::{workspace_root, DaemonHandle, Rig};

const DAEMONS: [&str; 3] = ["airlock-fs", "airlock-net", "airlock-proxy"];
/// Options a configuration file does not set: `--config` itself, the
/// inherited socket (`--fd`, libvirt's), and the ones that only print.
const NOT_IN_FILES: [&str; 5] = ["config", "fd", "help", "version", "print-capabilities"];
/// How long a daemon may take to report readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn dist(path: &str) -> PathBuf {
    workspace_root().join("dist").join(path)
}

fn example(daemon: &str) -> PathBuf {
    dist(&format!("config/{daemon}.toml"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `# key = value` lines of an example: an option shown commented out.
fn commented_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?.trim_start();
    let (key, _) = rest.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    is_key.then_some(key)
}

/// The example with every commented-out option switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match commented_key(line) {
            Some(_) => line.trim_start_matches('#').trim_start(),
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Keys an example sets or shows.
fn example_keys(text: &str) -> BTreeSet<String> {
    uncommented(text)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, _)| k.trim().to_owned())
        .collect()
}

/// Long options in `<bin> --help`.
fn long_options(bin: &Path) -> BTreeSet<String> {
    let help = run_ok(Command::new(bin).arg("--help"));
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .and_then(|s| s.get(1..))
                .map_or(l, |s| s.strip_prefix(", ").unwrap_or(l));
            let name = l.strip_prefix("--")?;
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .filter(|n| !NOT_IN_FILES.contains(&n.as_str()))
        .collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, panics with its output unless it succeeds, returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn example_configs_parse_and_show_every_option() {
    for daemon in DAEMONS {
        let bin = Rig::bin(daemon);
        let text = read(&example(daemon));
        let keys = example_keys(&text);
        let options = long_options(&bin);
        assert_eq!(
            keys,
            options,
            "{} must show exactly the options of {daemon} --help",
            example(daemon).display()
        );
        for key in &keys {
            let shown = text
                .lines()
                .filter(|l| commented_key(l) == Some(key) || l.starts_with(&format!("{key} = ")))
                .count();
            assert_eq!(shown, 1, "{daemon}: `{key}` must appear exactly once");
        }
    }
    // airlock-proxy has no --print-capabilities: its example is run for real
    // in `daemons_started_from_their_examples_send_ready`.
    for daemon in ["airlock-fs", "airlock-net"] {
        let bin = Rig::bin(daemon);
        let caps = run_ok(Command::new(&bin).arg("--print-capabilities"));
        let dir = tempfile::tempdir().unwrap();
        let all = dir.path().join("all.toml");
        fs::write(&all, uncommented(&read(&example(daemon)))).unwrap();
        for config in [example(daemon), all] {
            let out = run_ok(
                Command::new(&bin)
                    .arg("--config")
                    .arg(&config)
                    .arg("--print-capabilities"),
            );
            assert_eq!(out, caps, "{daemon} --config {}", config.display());
        }
        // And a bad key in the same file is caught by the same parser.
        let bad = dir.path().join("bad.toml");
        fs::write(
            &bad,
            format!("{}\nno-such-option = 1\n", read(&example(daemon))),
        )
        .unwrap();
        let out = run(Command::new(&bin)
            .arg("--config")
            .arg(&bad)
            .arg("--print-capabilities"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{daemon} accepted an unknown key"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unknown key `no-such-option`") && stderr.contains("bad.toml"),
            "{stderr}"
        );
    }
}

/// A `NOTIFY_SOCKET` the test listens on.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new(dir: &Path, name: &str) -> NotifySocket {
        let path = dir.join(format!("notify-{name}"));
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { path, socket }
    }

    /// Waits for a datagram holding `READY=1`; panics with the daemon's log
    /// if none comes or the daemon exits first.
    fn wait_ready(&self, daemon: &DaemonHandle) {
        let deadline = Instant::now() + READY_TIMEOUT;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv on {}: {e}", self.path.display()),
            }
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "{} exited ({status}) without READY=1:\n{}",
                    daemon.name(),
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 from {} within {READY_TIMEOUT:?}:\n{}",
                daemon.name(),
                daemon.log()
            );
        }
    }
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The command-line options that move everything an example (with every
/// option switched on) touches on the host into the rig's directory — and
/// that prove the command line wins over the file.
fn rig_overrides(daemon: &str, dir: &Path) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut args: Vec<String> = match daemon {
        "airlock-fs" => {
            fs::create_dir_all(dir.join("share")).unwrap();
            vec![
                "--socket-path".into(),
                p("fs.sock"),
                "--shared-dir".into(),
                p("share"),
            ]
        }
        "airlock-net" => {
            fs::write(dir.join("egress.rules"), "default allow\n").unwrap();
            vec![
                "--socket-path".into(),
                p("net.sock"),
                "--api-socket".into(),
                p("api.sock"),
                "--egress-rules".into(),
                p("egress.rules"),
                "--publish".into(),
                format!("127.0.0.1:{}:80", free_port()),
                "--dns-upstream".into(),
                "127.0.0.1:53".into(),
                "--proxy-target".into(),
                format!("unix:{}", p("proxy.sock")),
            ]
        }
        "airlock-proxy" => {
            let cred = dir.join("credentials");
            fs::write(&cred, "user:secret\n").unwrap();
            fs::set_permissions(&cred, fs::Permissions::from_mode(0o600)).unwrap();
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--upstream-credentials-file".into(),
                cred.display().to_string(),
            ]
        }
        other => panic!("unknown daemon {other}"),
    };
    if daemon != "airlock-proxy" {
        // The example's group (kvm) need not exist here.
        args.extend(["--socket-group".into(), "0".into()]);
    }
    args.extend(["--audit-log".into(), p(&format!("{daemon}-audit.jsonl"))]);
    args
}

#[test]
fn daemons_started_from_their_examples_send_ready() {
    let mut rig = Rig::new("ops_ready");
    for daemon in DAEMONS {
        let config = rig.dir().join(format!("{daemon}.toml"));
        fs::write(&config, uncommented(&read(&example(daemon)))).unwrap();
        let notify = NotifySocket::new(rig.dir(), daemon);
        let mut cmd = Command::new(Rig::bin(daemon));
        cmd.arg("--config")
            .arg(&config)
            .args(rig_overrides(daemon, rig.dir()))
            .env("NOTIFY_SOCKET", &notify.path);
        let handle = rig.spawn_daemon(daemon, cmd);
        notify.wait_ready(&handle);
        // The command line won: the sockets are where it said, not where
        // the file said.
        let own_socket = match daemon {
            "airlock-fs" => Some("fs.sock"),
            "airlock-net" => Some("net.sock"),
            _ => None,
        };
        if let Some(socket) = own_socket {
            rig.wait_for_socket(&rig.dir().join(socket), Duration::from_secs(5));
        }
        let status = handle.terminate();
        assert!(status.success(), "{daemon} exited with {status} on SIGTERM");
    }
}
