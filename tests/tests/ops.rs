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
                "--notify-socket".into(),
                p("notify.sock"),
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
                "--pcap".into(),
                p("guest.pcap"),
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

/// The systemd units shipped in `dist/systemd`.
const UNITS: [&str; 5] = [
    "airlock-fs@.service",
    "airlock-fs@.socket",
    "airlock-net@.service",
    "airlock-net@.socket",
    "airlock-proxy@.service",
];
/// Programs and man pages `scripts/install` puts in place.
const PROGRAMS: [&str; 4] = ["airlock-fs", "airlock-net", "airlock-proxy", "airlock"];

/// Runs `scripts/install --no-build` with the test's binaries into
/// `destdir` with `prefix`.
fn install(destdir: &Path, prefix: &str) {
    let bin_dir = Rig::bin("airlock-man").parent().unwrap().to_path_buf();
    for program in PROGRAMS {
        Rig::bin(program);
    }
    run_ok(
        Command::new(workspace_root().join("scripts/install"))
            .arg("--no-build")
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--prefix")
            .arg(prefix)
            .env("DESTDIR", destdir),
    );
}

#[test]
fn install_lays_out_a_tree_whose_units_verify() {
    let help = run_ok(Command::new(workspace_root().join("scripts/install")).arg("--help"));
    assert!(
        help.contains("--no-build") && help.contains("DESTDIR"),
        "{help}"
    );
    let bad = run(Command::new(workspace_root().join("scripts/install")).arg("--bogus"));
    assert_eq!(bad.status.code(), Some(2));

    let dest = tempfile::tempdir().unwrap();
    let root = dest.path();
    install(root, "/usr/local");
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    for program in PROGRAMS {
        let bin = under(&format!("/usr/local/bin/{program}"));
        let mode = fs::metadata(&bin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", bin.display());
        let page = read(&under(&format!("/usr/local/share/man/man1/{program}.1")));
        assert!(
            page.starts_with(".ie") || page.contains(&format!(".TH {program}")),
            "{page}"
        );
        if program != "airlock" {
            assert!(page.contains("config"), "{program}.1 lacks --config");
        }
    }
    // The CLI's subcommands get pages too.
    assert!(under("/usr/local/share/man/man1/airlock-publish.1").is_file());
    for unit in UNITS {
        let text = read(&under(&format!("/usr/local/lib/systemd/system/{unit}")));
        assert_eq!(text, read(&dist(&format!("systemd/{unit}"))), "{unit}");
    }
    for daemon in ["airlock-fs", "airlock-net"] {
        let installed = under(&format!("/etc/qemu/vhost-user/50-{daemon}.json"));
        let json: serde_json::Value = serde_json::from_str(&read(&installed)).unwrap();
        assert_eq!(json["binary"], format!("/usr/local/bin/{daemon}"));
    }
    for daemon in DAEMONS {
        assert!(under(&format!(
            "/usr/local/share/doc/airlock/examples/{daemon}.toml"
        ))
        .is_file());
    }
    // Nothing outside PREFIX but the QEMU descriptors.
    let top: BTreeSet<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, BTreeSet::from(["etc".to_owned(), "usr".to_owned()]));

    verify_units(root, "/usr/local");

    // Another prefix is written into units, descriptors and examples.
    let dest = tempfile::tempdir().unwrap();
    install(dest.path(), "/usr");
    let root = dest.path();
    let unit = read(&root.join("usr/lib/systemd/system/airlock-fs@.service"));
    assert!(unit.contains("ExecStart=/usr/bin/airlock-fs --config /etc/airlock/%i/airlock-fs.toml"));
    assert!(!unit.contains("/usr/local"), "{unit}");
    let json = read(&root.join("usr/share/qemu/vhost-user/50-airlock-net.json"));
    assert!(json.contains("\"/usr/bin/airlock-net\""), "{json}");
}

/// `--as-passt` adds PREFIX/bin/passt, a relative link to airlock-net
/// (libvirt's passt backend runs `passt` from its PATH); without it there
/// is none.
#[test]
fn install_as_passt_links_passt_to_airlock_net() {
    let bin_dir = Rig::bin("airlock-man").parent().unwrap().to_path_buf();
    for program in PROGRAMS {
        Rig::bin(program);
    }
    let dest = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(workspace_root().join("scripts/install"))
            .args(["--no-build", "--as-passt", "--prefix", "/opt/airlock"])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--destdir")
            .arg(dest.path()),
    );
    let link = dest.path().join("opt/airlock/bin/passt");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("airlock-net"));
    let version = run_ok(Command::new(&link).arg("--version"));
    assert!(version.starts_with("passt (airlock-net "), "{version}");
    let plain = tempfile::tempdir().unwrap();
    install(plain.path(), "/opt/airlock");
    assert!(!plain.path().join("opt/airlock/bin/passt").exists());
}

/// `systemd-analyze verify` on an instance of every installed unit. It
/// checks that ExecStart= binaries exist and Documentation= man pages
/// resolve, so the units are copied with PREFIX pointing into the DESTDIR
/// tree and `man` is told where the installed pages are. Any output at all
/// (unknown directives, bad values, missing units) fails.
fn verify_units(destdir: &Path, prefix: &str) {
    let units = tempfile::tempdir().unwrap();
    let staged = format!("{}{prefix}/", destdir.display());
    for unit in UNITS {
        let installed = destdir.join(format!(
            "{}/lib/systemd/system/{unit}",
            prefix.trim_start_matches('/')
        ));
        let text = read(&installed).replace(&format!("{prefix}/"), &staged);
        fs::write(units.path().join(unit), text).unwrap();
    }
    for unit in UNITS {
        let instance = unit.replace("@.", "@vm1.");
        let out = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(units.path().join(&instance))
            .env("MANPATH", format!("{staged}share/man"))
            .env("SYSTEMD_LOG_COLOR", "0"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {instance} ({}):\n{stderr}",
            out.status
        );
    }
}

/// The guest helper's unit (`dist/guest/`, installed in guests, not by
/// `scripts/install`) verifies, with its ExecStart pointing at the built
/// binary.
#[test]
fn guest_unit_verifies() {
    let unit = read(&dist("guest/airlock-guest@.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/airlock-guest watch --tag %i"));
    let bin = Rig::bin("airlock-guest");
    let dir = tempfile::tempdir().unwrap();
    let instance = dir.path().join("airlock-guest@share.service");
    fs::write(
        &instance,
        unit.replace("/usr/local/bin/airlock-guest", &bin.display().to_string()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .env("SYSTEMD_LOG_COLOR", "0"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify airlock-guest@share.service ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn qemu_descriptors_match_print_capabilities() {
    for daemon in ["airlock-fs", "airlock-net"] {
        let path = dist(&format!("qemu/50-{daemon}.json"));
        let text = read(&path);
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let object = json.as_object().expect("a descriptor is a JSON object");
        // QEMU's docs/interop/vhost-user.json, struct VhostUserBackend.
        for key in object.keys() {
            assert!(
                ["description", "type", "binary", "tags"].contains(&key.as_str()),
                "{}: {key} is not a VhostUserBackend member",
                path.display()
            );
        }
        assert!(object["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert_eq!(object["binary"], format!("/usr/local/bin/{daemon}"));
        let caps: serde_json::Value = serde_json::from_str(&run_ok(
            Command::new(Rig::bin(daemon)).arg("--print-capabilities"),
        ))
        .unwrap();
        assert_eq!(object["type"], caps["type"], "{}", path.display());
    }
}

#[test]
fn socket_activated_daemons_serve_a_guest() {
    let mut rig = Rig::new("ops_socket_activation");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("from-host.txt"), "put there by the host\n").unwrap();
    let mut sockets = Vec::new();
    let mut notifies = Vec::new();
    for daemon in ["airlock-net", "airlock-fs"] {
        let socket = rig.dir().join(format!("{daemon}.sock"));
        let notify = NotifySocket::new(rig.dir(), daemon);
        // What the .socket + .service pair runs: the socket is systemd's,
        // the daemon starts on the first connection with LISTEN_FDS=1 and
        // the shipped example configuration.
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l")
            .arg(&socket)
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
            .arg(Rig::bin(daemon))
            .arg("--config")
            .arg(example(daemon));
        if daemon == "airlock-fs" {
            cmd.arg("--shared-dir").arg(&share);
        }
        let handle = rig.spawn_daemon(daemon, cmd);
        rig.wait_for_socket(&socket, Duration::from_secs(10));
        sockets.push(socket);
        notifies.push((notify, handle));
    }
    let mut qemu_args = airlock_e2e::net_device_args(&sockets[0], "52:54:00:12:34:56", false);
    qemu_args.extend(airlock_e2e::fs_device_args(&sockets[1], "share", 1024));
    let vm = rig.boot(airlock_e2e::VmConfig {
        script: "\
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }
echo \"addr $(ip -4 -o addr show dev eth0 | awk '{print $4}')\"
mount -t virtiofs share /mnt || exit 1
cat /mnt/from-host.txt
echo 'written by the guest' > /mnt/from-guest.txt && sync
"
        .into(),
        qemu_args,
        ..airlock_e2e::VmConfig::default()
    });
    let out = vm.wait();
    out.assert_success()
        .assert_contains("addr 192.168.127.2/24")
        .assert_contains("put there by the host");
    assert_eq!(
        fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
    for (notify, handle) in &notifies {
        notify.wait_ready(handle);
        let log = handle.log();
        assert!(
            log.contains("on systemd socket fd 3"),
            "{} did not serve the activated socket:\n{log}",
            handle.name()
        );
    }
}
