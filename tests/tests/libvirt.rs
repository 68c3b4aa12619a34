//! Libvirt swap-in, for real: Debian's libvirt 9.0 boots the domain of
//! `dist/libvirt/airlock-domain.xml`, launching airlock-fs itself (as it
//! would virtiofsd, with an inherited socket: `--fd=N -o source=DIR`) and
//! attaching the guest's network to an airlock-net socket this test
//! started. The guest gets its address by DHCP, mounts the share and writes
//! a file the test reads on the host.
//!
//! Libvirtd runs privileged but private to the test: in its own mount
//! namespace (`unshare -m`), where the test's directories are bind-mounted
//! over `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//! `/var/cache/libvirt` and `/var/log/libvirt` (this machine has no systemd
//! and no system libvirtd; nothing of the host's is touched but the empty
//! mount-point directories). Its client socket lives in the rig directory
//! (`unix_sock_dir`), so `virsh -c 'qemu:///system?socket=…'` reaches it
//! from outside the namespace. Its `qemu.conf` runs QEMU as root without
//! cgroups, security driver or virtlogd, none of which exist here. Debian's
//! libvirt refuses to start unless the user `libvirt-qemu` exists (its
//! compiled-in default, resolved before qemu.conf is read): the namespace
//! gets private copies of `/etc/passwd` and `/etc/group` that add it.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::{cpio_archive, guest_image, workspace_root, Rig, EXIT_MARKER, KERNEL_CMDLINE};

/// The example domain, relative to the workspace root.
const DOMAIN_XML: &str = "dist/libvirt/airlock-domain.xml";
/// The domain's name in the test (the private libvirtd knows no other).
const DOMAIN: &str = "airlock-e2e";
/// How long the guest may take from `virsh create` to its exit marker.
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long libvirtd may take to listen, and to tear a domain down.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// The example's placeholder paths, each replaced by the test's own.
const KERNEL_PLACEHOLDER: &str = "/var/lib/airlock/vm1/vmlinux";
const INITRD_PLACEHOLDER: &str = "/var/lib/airlock/vm1/initrd.img";
const AIRLOCK_FS_PLACEHOLDER: &str = "/usr/local/bin/airlock-fs";
const SHARE_PLACEHOLDER: &str = "/srv/vm1-share";
const NET_SOCKET_PLACEHOLDER: &str = "/run/airlock/vm1/net.sock";
const CONSOLE_PLACEHOLDER: &str = "/var/log/airlock/vm1-console.log";

const GUEST_SCRIPT: &str = r#"set -e
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }
echo "address $(ip -4 -o addr show eth0 | awk '{print $4}') mtu $(cat /sys/class/net/eth0/mtu)"
echo "host alias $(nslookup -type=a host.airlock.internal 2>/dev/null | awk '/^Address/ {a=$2} END {print a}')"
mkdir -p /mnt/share
mount -t virtiofs share /mnt/share
echo "host file: $(cat /mnt/share/from-host.txt)"
echo "written by the guest booted by libvirt" >/mnt/share/from-guest.txt
sync
"#;

/// Runs `program args` and returns its output; panics if it cannot start.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}); scripts/install-deps installs libvirt-clients, \
                 libvirt-daemon-driver-qemu and libxml2-utils"
            )
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `virt-xml-validate` on `path` against libvirt's domain schema.
fn validate(path: &Path) {
    let out = run("virt-xml-validate", &[path.to_str().unwrap(), "domain"]);
    assert!(
        out.status.success(),
        "virt-xml-validate rejects {}:\n{}",
        path.display(),
        text(&out)
    );
}

#[test]
fn domain_example_is_valid_libvirt_xml() {
    validate(&workspace_root().join(DOMAIN_XML));
}

/// The README's "Using it with libvirt" excerpt is taken from the example:
/// every line of its XML block appears in the example file.
#[test]
fn readme_excerpt_matches_the_example() {
    let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let example = fs::read_to_string(workspace_root().join(DOMAIN_XML)).unwrap();
    let section = readme
        .split("## Using it with libvirt")
        .nth(1)
        .expect("README.md has no \"Using it with libvirt\" section");
    let block = section
        .split("```xml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the libvirt section has no ```xml block");
    let example_lines: Vec<&str> = example.lines().map(str::trim).collect();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            example_lines.contains(&line),
            "README.md's libvirt excerpt has {line:?}, which {DOMAIN_XML} does not"
        );
    }
}

/// `template` with `placeholder` replaced by `value`; panics if the
/// example no longer has the placeholder (the test must follow it).
fn substitute(template: &str, placeholder: &str, value: &Path) -> String {
    assert!(
        template.contains(placeholder),
        "{DOMAIN_XML} no longer contains {placeholder}; update tests/tests/libvirt.rs"
    );
    template.replace(placeholder, value.to_str().unwrap())
}

/// The example domain with the test's paths, and a second serial port
/// (the guest's ttyS1: its script's output) written to `test_log`.
struct DomainPaths<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    airlock_fs: &'a Path,
    share: &'a Path,
    net_socket: &'a Path,
    console: &'a Path,
    test_log: &'a Path,
}

fn domain_xml(paths: &DomainPaths) -> String {
    let template = fs::read_to_string(workspace_root().join(DOMAIN_XML)).unwrap();
    assert!(
        template.contains(&format!("<cmdline>{KERNEL_CMDLINE}</cmdline>")),
        "{DOMAIN_XML} should boot with the rig's kernel command line"
    );
    let mut xml = template.replace(
        "<name>airlock-vm1</name>",
        &format!("<name>{DOMAIN}</name>"),
    );
    xml = substitute(&xml, KERNEL_PLACEHOLDER, paths.kernel);
    xml = substitute(&xml, INITRD_PLACEHOLDER, paths.initrd);
    // Every <binary> setting libvirt 9.0 turns into an airlock-fs option,
    // so the test proves airlock-fs accepts the whole command line.
    let binary = format!("<binary path='{AIRLOCK_FS_PLACEHOLDER}'/>");
    assert!(template.contains(&binary), "{DOMAIN_XML} has no {binary}");
    xml = xml.replace(
        &binary,
        &format!(
            "<binary path='{AIRLOCK_FS_PLACEHOLDER}' xattr='on'>\n        \
             <cache mode='always'/>\n        <lock posix='off' flock='off'/>\n        \
             <thread_pool size='2'/>\n      </binary>"
        ),
    );
    xml = substitute(&xml, AIRLOCK_FS_PLACEHOLDER, paths.airlock_fs);
    xml = substitute(&xml, SHARE_PLACEHOLDER, paths.share);
    xml = substitute(&xml, NET_SOCKET_PLACEHOLDER, paths.net_socket);
    xml = substitute(&xml, CONSOLE_PLACEHOLDER, paths.console);
    let test_serial = format!(
        "    <serial type='file'>\n      <source path='{}'/>\n      <target port='1'/>\n    </serial>\n  </devices>",
        paths.test_log.display()
    );
    assert!(xml.contains("</devices>"));
    xml.replace("  </devices>", &test_serial)
}

/// A libvirtd private to the test (see the module documentation).
struct Libvirtd {
    uri: String,
    /// The rig directories behind /run/libvirt and /var/log/libvirt.
    run_dir: PathBuf,
    log_dir: PathBuf,
    daemon_log: PathBuf,
}

impl Libvirtd {
    fn start(rig: &mut Rig) -> Libvirtd {
        let root = rig.dir().join("libvirt");
        let dirs = ["etc", "run", "lib", "cache", "log", "sock"];
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let sock_dir = root.join("sock");
        fs::write(
            root.join("etc/libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
                sock_dir.display()
            ),
        )
        .unwrap();
        // QEMU as root; nothing here offers cgroup delegation, an LSM,
        // virtlogd or the per-domain /dev namespace's prerequisites.
        fs::write(
            root.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\n\
             namespaces = [ ]\n",
        )
        .unwrap();
        // Private passwd/group with libvirt-qemu, unless the host has it.
        let has_user = run("getent", &["passwd", "libvirt-qemu"]).status.success();
        let mut identity = String::new();
        if !has_user {
            let mut passwd = fs::read_to_string("/etc/passwd").unwrap();
            passwd.push_str("libvirt-qemu:x:64055:64055:libvirt:/nonexistent:/usr/sbin/nologin\n");
            fs::write(root.join("passwd"), passwd).unwrap();
            let mut group = fs::read_to_string("/etc/group").unwrap();
            if !run("getent", &["group", "libvirt-qemu"]).status.success() {
                group.push_str("libvirt-qemu:x:64055:\n");
            }
            fs::write(root.join("group"), group).unwrap();
            let r = root.display();
            identity =
                format!("mount --bind {r}/passwd /etc/passwd\nmount --bind {r}/group /etc/group\n");
        }
        let mut script = String::from("set -e\n");
        for (dir, target) in [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ] {
            let _ = writeln!(
                script,
                "mkdir -p {target}\nmount --bind {} {target}",
                root.join(dir).display()
            );
        }
        script.push_str(&identity);
        let _ = writeln!(
            script,
            "exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file {}",
            root.join("libvirtd.pid").display()
        );
        let script_path = root.join("start-libvirtd.sh");
        fs::write(&script_path, script).unwrap();
        fs::set_permissions(&script_path, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            Path::new("/usr/sbin/libvirtd").exists(),
            "libvirtd is not installed; scripts/install-deps installs libvirt-daemon and \
             libvirt-daemon-driver-qemu"
        );

        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh"])
            .arg(&script_path);
        let daemon = rig.spawn_daemon("libvirtd", cmd);
        let socket = sock_dir.join("libvirt-sock");
        rig.wait_for_socket(&socket, DAEMON_TIMEOUT);
        Libvirtd {
            uri: format!("qemu:///system?socket={}", socket.display()),
            run_dir: root.join("run"),
            log_dir: root.join("log"),
            daemon_log: daemon.log_path().to_path_buf(),
        }
    }

    fn virsh(&self, args: &[&str]) -> Output {
        let mut all = vec!["-c", &self.uri];
        all.extend_from_slice(args);
        run("virsh", &all)
    }

    /// libvirtd's own log and every log under /var/log/libvirt (QEMU's
    /// command line and stderr, airlock-fs's output).
    fn logs(&self) -> String {
        let mut out = format!(
            "--- libvirtd\n{}",
            fs::read_to_string(&self.daemon_log).unwrap_or_default()
        );
        if let Ok(entries) = fs::read_dir(self.log_dir.join("qemu")) {
            for entry in entries.flatten() {
                let _ = write!(
                    out,
                    "\n--- {}\n{}",
                    entry.path().display(),
                    fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
        out
    }
}

/// Destroys the domain when dropped (libvirtd leaves running domains and
/// their airlock-fs alone when it exits), and kills whatever libvirt's pid
/// files still name if that did not work.
struct DomainGuard<'a> {
    libvirtd: &'a Libvirtd,
}

impl Drop for DomainGuard<'_> {
    fn drop(&mut self) {
        let _ = self.libvirtd.virsh(&["destroy", DOMAIN]);
        let Ok(entries) = fs::read_dir(self.libvirtd.run_dir.join("qemu")) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = fs::read_to_string(entry.path()) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // SAFETY: plain kill(2) on a pid libvirt recorded.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

#[test]
fn libvirt_boots_a_guest_on_airlock_fs_and_airlock_net() {
    let mut rig = Rig::new("libvirt");
    let dir = rig.dir().to_path_buf();
    let share = dir.join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("from-host.txt"), "shared by the host\n").unwrap();

    // airlock-net: started by us, as a systemd socket unit would; QEMU
    // connects to it as a client.
    let net_socket = dir.join("net.sock");
    let mut net = Command::new(Rig::bin("airlock-net"));
    net.arg("--socket-path").arg(&net_socket);
    rig.spawn_daemon("airlock-net", net);
    rig.wait_for_socket(&net_socket, DAEMON_TIMEOUT);

    // The boot's initrd: the script in front of the cached initramfs.
    let image = guest_image();
    let initrd = dir.join("initrd");
    let mut bytes = cpio_archive(&[("test.sh", 0o755, GUEST_SCRIPT.as_bytes())]).unwrap();
    bytes.extend(fs::read(&image.initramfs).unwrap());
    fs::write(&initrd, bytes).unwrap();

    let airlock_fs = Rig::bin("airlock-fs");
    let console = dir.join("console.log");
    let test_log = dir.join("test.log");
    let xml = domain_xml(&DomainPaths {
        kernel: &image.kernel,
        initrd: &initrd,
        airlock_fs: &airlock_fs,
        share: &share,
        net_socket: &net_socket,
        console: &console,
        test_log: &test_log,
    });
    let xml_path = dir.join("domain.xml");
    fs::write(&xml_path, &xml).unwrap();
    validate(&xml_path);

    let libvirtd = Libvirtd::start(&mut rig);
    let _guard = DomainGuard {
        libvirtd: &libvirtd,
    };
    let report = |what: &str| -> String {
        format!(
            "{what}\n--- guest (ttyS1)\n{}\n--- console (ttyS0, tail)\n{}\n{}",
            fs::read_to_string(&test_log).unwrap_or_default(),
            tail(&fs::read_to_string(&console).unwrap_or_default(), 30),
            libvirtd.logs()
        )
    };

    let created = libvirtd.virsh(&["create", xml_path.to_str().unwrap()]);
    assert!(
        created.status.success(),
        "{}",
        report(&format!("virsh create failed:\n{}", text(&created)))
    );

    // The script's output ends with the exit marker, then the guest powers
    // off and libvirt (on_poweroff destroy) tears the domain down.
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let output = loop {
        let output = fs::read_to_string(&test_log).unwrap_or_default();
        if output.contains(&format!("{EXIT_MARKER} ")) && output.ends_with('\n') {
            break output;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            report(&format!("no {EXIT_MARKER} within {GUEST_TIMEOUT:?}"))
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        output.contains(&format!("{EXIT_MARKER} 0")),
        "{}",
        report("the guest script failed")
    );
    assert!(
        output.contains("address 192.168.127.2/24 mtu 65520"),
        "{}",
        report("no DHCP lease from airlock-net (or the wrong MTU)")
    );
    assert!(
        output.contains("host alias 192.168.127.254"),
        "{}",
        report("host.airlock.internal did not resolve")
    );
    assert!(
        output.contains("host file: shared by the host"),
        "{}",
        report("the guest did not read the host's file")
    );
    assert_eq!(
        fs::read_to_string(share.join("from-guest.txt")).unwrap_or_default(),
        "written by the guest booted by libvirt\n",
        "{}",
        report("the guest's file is not on the host")
    );

    // Libvirt launched our binary the way it launches virtiofsd.
    let qemu_log =
        fs::read_to_string(libvirtd.log_dir.join(format!("qemu/{DOMAIN}.log"))).unwrap_or_default();
    let launch = qemu_log
        .lines()
        .find(|l| l.starts_with(airlock_fs.to_str().unwrap()))
        .unwrap_or_else(|| {
            panic!(
                "{}",
                report("libvirt's log does not show airlock-fs starting")
            )
        });
    assert!(
        launch.contains(" --fd=")
            && launch.contains(&format!(" -o source={}", share.display()))
            && launch.contains("--thread-pool-size=2"),
        "unexpected airlock-fs command line from libvirt: {launch}"
    );
    assert!(
        qemu_log.contains("\"vectors\":0"),
        "{}",
        report("the qemu:override did not set vectors=0")
    );
    assert!(
        qemu_log.contains(&format!("path={},reconnect=1", net_socket.display())),
        "{}",
        report("the vhost-user chardev has no reconnect=1")
    );

    // The domain is gone, and libvirt stopped airlock-fs with it.
    let deadline = Instant::now() + DAEMON_TIMEOUT;
    loop {
        let state = libvirtd.virsh(&["domstate", DOMAIN]);
        let fs_running = fs::read_dir(libvirtd.run_dir.join("qemu"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("virtiofsd"))
            })
            .unwrap_or(false);
        if !state.status.success() && !fs_running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            report(&format!(
                "domain still there after the guest powered off: {} (airlock-fs pid file: {fs_running})",
                text(&state)
            ))
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
