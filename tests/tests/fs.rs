//! airlock-fs end to end: a real guest mounts the share over virtio-fs and
//! every check looks at both sides — what the guest sees and what lands on
//! the host, byte for byte, with modes and owners.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::{fd_count, fs_device_args, rss_kib, DaemonHandle, Rig, VmConfig};

const TAG: &str = "share";

/// Starts airlock-fs on `<rig>/fs.sock` serving `share` with `extra` options.
fn start_fs(rig: &mut Rig, share: &Path, extra: &[&str]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(share)
        .args(extra);
    let d = rig.spawn_daemon("airlock-fs", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (d, socket)
}

fn share_dir(rig: &Rig) -> PathBuf {
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    share
}

/// Deterministic pseudo-random bytes (xorshift), so both sides can be
/// checked without a checksum tool on the host.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

#[test]
fn files_round_trip_between_guest_and_host() {
    let mut rig = Rig::new("fs_round_trip");
    let share = share_dir(&rig);
    fs::write(share.join("host.txt"), "written on the host\n").unwrap();
    fs::create_dir(share.join("hostdir")).unwrap();
    fs::write(share.join("hostdir/nested.txt"), "nested\n").unwrap();
    let big = pattern(64 << 20, 7);
    fs::write(share.join("big_host.bin"), &big).unwrap();
    let big_sha = sha256_hex(&share.join("big_host.bin"));
    let (_d, socket) = start_fs(&mut rig, &share, &["--xattr", "--cache", "auto"]);

    let script = r#"
set -e
mount -t virtiofs share /mnt
cd /mnt
cat host.txt
cat hostdir/nested.txt
echo "big sha $(sha256sum big_host.bin | cut -c1-64)"
printf 'guest-data\n' > g.txt
printf 'appended\n' >> g.txt
printf '0123456789' > t.txt
truncate -s 4 t.txt
mkdir gdir gdir/sub
rmdir gdir/sub
echo moved > tmp.txt
mv tmp.txt renamed.txt
echo gone > gone.txt
rm gone.txt
ln -s g.txt link
ln g.txt hard
chmod 640 g.txt
chown 1234:5678 g.txt
setfattr -n user.color -v blue g.txt
echo "xattr $(getfattr --only-values -n user.color g.txt)"
cp big_host.bin big_copy.bin
mkdir many
i=0
while [ $i -lt 300 ]; do echo "file $i" > many/f$i; i=$((i+1)); done
echo "many $(ls many | wc -l)"
sync
echo GUEST-WROTE
read go
cat host2.txt
echo "after host edit: $(cat host.txt)"
cd /
umount /mnt
"#;
    let mut vm = rig.boot(VmConfig {
        script: script.into(),
        qemu_args: fs_device_args(&socket, TAG, 1024),
        timeout: Duration::from_secs(240),
        ..VmConfig::default()
    });
    let out = vm.wait_for("GUEST-WROTE", Duration::from_secs(200));
    // Host → guest reads.
    assert!(out.contains("written on the host"), "{out}");
    assert!(out.contains("nested"), "{out}");
    assert!(
        out.contains(&format!("big sha {big_sha}")),
        "guest read of 64 MiB differs:\n{out}"
    );
    assert!(out.contains("xattr blue"), "{out}");
    assert!(out.contains("many 300"), "{out}");

    // Guest → host writes, checked on the host.
    assert_eq!(
        fs::read_to_string(share.join("g.txt")).unwrap(),
        "guest-data\nappended\n"
    );
    assert_eq!(fs::read(share.join("t.txt")).unwrap(), b"0123");
    let g = fs::metadata(share.join("g.txt")).unwrap();
    assert_eq!(g.permissions().mode() & 0o777, 0o640);
    assert_eq!((g.uid(), g.gid()), (1234, 5678));
    assert_eq!(g.nlink(), 2, "hard link counted");
    assert_eq!(
        fs::read_link(share.join("link")).unwrap(),
        Path::new("g.txt")
    );
    assert_eq!(
        fs::read_to_string(share.join("hard")).unwrap(),
        "guest-data\nappended\n"
    );
    assert!(share.join("gdir").is_dir() && !share.join("gdir/sub").exists());
    assert_eq!(
        fs::read_to_string(share.join("renamed.txt")).unwrap(),
        "moved\n"
    );
    assert!(!share.join("tmp.txt").exists() && !share.join("gone.txt").exists());
    assert_eq!(
        getxattr(&share.join("g.txt"), "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        sha256_hex(&share.join("big_copy.bin")),
        big_sha,
        "64 MiB written by the guest differs"
    );
    for i in [0, 150, 299] {
        assert_eq!(
            fs::read_to_string(share.join(format!("many/f{i}"))).unwrap(),
            format!("file {i}\n")
        );
    }
    assert_eq!(fs::read_dir(share.join("many")).unwrap().count(), 300);

    // Host writes while mounted; the guest sees them.
    fs::write(share.join("host2.txt"), "new from host\n").unwrap();
    fs::write(share.join("host.txt"), "edited on the host\n").unwrap();
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success()
        .assert_contains("new from host")
        .assert_contains("after host edit: edited on the host");
}

/// Spawns airlock-fs the way libvirt does: an inherited listening socket
/// (`--fd`) and the legacy `-o` options.
fn spawn_libvirt_style(rig: &mut Rig, socket: &Path, extra: &[&str]) -> DaemonHandle {
    let fd = UnixListener::bind(socket).unwrap().into_raw_fd();
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--fd=7").args(extra);
    // SAFETY: only dup2 or fcntl, async-signal-safe, between fork and exec.
    // A listener that already is fd 7 keeps its FD_CLOEXEC through dup2 onto
    // itself, so that case clears the flag instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 7 {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 7)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = rig.spawn_daemon("airlock-fs", cmd);
    // SAFETY: `fd` is ours and the child has its own copy now.
    unsafe { libc::close(fd) };
    d
}

#[test]
fn readonly_share_refuses_writes_libvirt_style() {
    let mut rig = Rig::new("fs_readonly");
    let share = share_dir(&rig);
    fs::write(share.join("keep.txt"), "original\n").unwrap();
    let socket = rig.dir().join("fs.sock");
    let source = format!(
        "source={},cache=none,no_xattr,no_flock,no_posix_lock",
        share.display()
    );
    let d = spawn_libvirt_style(
        &mut rig,
        &socket,
        &["-o", &source, "--readonly", "--exit-on-disconnect"],
    );
    rig.wait_for_socket(&socket, Duration::from_secs(10));

    let script = r#"
mount -t virtiofs share /mnt || exit 1
cat /mnt/keep.txt
for op in "echo x > /mnt/new.txt" "echo x >> /mnt/keep.txt" "rm /mnt/keep.txt" "mkdir /mnt/d" \
          "mv /mnt/keep.txt /mnt/moved" "chmod 777 /mnt/keep.txt" "touch /mnt/keep.txt" "ln -s keep.txt /mnt/l"; do
  if sh -c "$op" 2>/tmp/err; then echo "ALLOWED: $op"; else echo "refused: $op: $(cat /tmp/err)"; fi
done
umount /mnt
"#;
    let out = rig
        .boot(VmConfig {
            script: script.into(),
            qemu_args: fs_device_args(&socket, TAG, 1024),
            ..VmConfig::default()
        })
        .wait();
    out.assert_success().assert_contains("original");
    assert!(
        !out.output.contains("ALLOWED"),
        "a write got through:\n{}",
        out.output
    );
    assert_eq!(
        out.output.matches("Read-only file system").count(),
        8,
        "{}",
        out.output
    );
    assert_eq!(
        fs::read_to_string(share.join("keep.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(fs::read_dir(&share).unwrap().count(), 1);
    // --exit-on-disconnect: the daemon ends with the VM, status 0.
    let status = d
        .wait_timeout(Duration::from_secs(10))
        .expect("airlock-fs still running after the VM ended");
    assert!(status.success(), "{status}");
}

#[test]
fn translated_owners_audit_log_and_escape_attempts() {
    let mut rig = Rig::new("fs_uid_escape");
    let share = share_dir(&rig);
    // Guest root becomes host uid 1000, so the share belongs to that user
    // (as a real setup would); the guest sees it as its own.
    std::os::unix::fs::chown(&share, Some(1000), Some(1000)).unwrap();
    let secret = rig.dir().join("secret.txt");
    fs::write(&secret, "host secret\n").unwrap();
    let audit = rig.dir().join("audit.jsonl");
    let (_d, socket) = start_fs(
        &mut rig,
        &share,
        &[
            "--translate-uid",
            "map:0:1000:1",
            "--translate-gid",
            "map:0:1000:1",
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let secret_path = secret.display().to_string();
    let script = format!(
        r#"
mount -t virtiofs share /mnt || exit 1
echo mine > /mnt/mine.txt
echo "guest owner $(stat -c %u:%g /mnt/mine.txt)"
ls /mnt/.. >/dev/null && echo "dotdot is the guest's own root"
cat /mnt/../secret.txt 2>/dev/null && echo LEAK-DOTDOT
ln -s {secret_path} /mnt/abs-link
ln -s ../secret.txt /mnt/rel-link
cat /mnt/abs-link 2>/dev/null && echo LEAK-ABS
cat /mnt/rel-link 2>/dev/null && echo LEAK-REL
mknod /mnt/null c 1 3 2>/tmp/e || echo "mknod refused: $(cat /tmp/e)"
mkfifo /mnt/fifo && echo "fifo ok"
echo moving > /mnt/mv.txt
mv /mnt/mv.txt /tmp/mv.txt && echo "moved out by copy"
umount /mnt
"#
    );
    let out = rig
        .boot(VmConfig {
            script,
            qemu_args: fs_device_args(&socket, TAG, 1024),
            ..VmConfig::default()
        })
        .wait();
    out.assert_success()
        .assert_contains("guest owner 0:0")
        .assert_contains("dotdot is the guest's own root")
        .assert_contains("mknod refused")
        .assert_contains("Operation not permitted")
        .assert_contains("fifo ok")
        .assert_contains("moved out by copy");
    assert!(!out.output.contains("LEAK"), "{}", out.output);
    // On the host: the owner is the mapped uid; nothing outside changed.
    let meta = fs::metadata(share.join("mine.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    assert_eq!(fs::read_to_string(&secret).unwrap(), "host secret\n");
    assert!(!share.join("null").exists());
    assert!(!share.join("mv.txt").exists());
    assert_eq!(fs::read_link(share.join("abs-link")).unwrap(), secret);
    // The audit log saw the changes, with paths relative to the share.
    let log = fs::read_to_string(&audit).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |op: &str, path: &str, result: &str| {
        recs.iter()
            .any(|r| r["op"] == op && r["path"] == path && r["result"] == result)
    };
    assert!(has("create", "mine.txt", "ok"), "{log}");
    assert!(has("symlink", "abs-link", "ok"), "{log}");
    assert!(has("mknod", "null", "EPERM"), "{log}");
    assert!(has("unlink", "mv.txt", "ok"), "{log}");
    assert!(recs
        .iter()
        .all(|r| r["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
}

#[test]
fn killed_qemu_mid_write_then_the_next_qemu_is_served_without_leaks() {
    let mut rig = Rig::new("fs_reconnect");
    let share = share_dir(&rig);
    let (d, socket) = start_fs(&mut rig, &share, &[]);
    // Measured once the daemon is idle with its next session prepared.
    d.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(20));
    let baseline_fds = fd_count(d.pid());

    let mut vm = rig.boot(VmConfig {
        script: "mount -t virtiofs share /mnt && echo WRITING && dd if=/dev/zero of=/mnt/stream bs=1M count=100000".into(),
        qemu_args: fs_device_args(&socket, TAG, 1024),
        ..VmConfig::default()
    });
    vm.wait_for("WRITING", Duration::from_secs(120));
    // Let the write get going, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(share.join("stream"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 8 << 20
    {
        assert!(Instant::now() < deadline, "the guest never wrote 8 MiB");
        std::thread::sleep(Duration::from_millis(100));
    }
    vm.kill();
    drop(vm);
    d.wait_for_log_lines("ready for a frontend", 2, Duration::from_secs(20));
    assert!(d.is_running());
    assert_eq!(
        fd_count(d.pid()),
        baseline_fds,
        "fds leaked by the killed session"
    );
    let rss_after_first = rss_kib(d.pid());

    for round in 0..2 {
        let out = rig
            .boot(VmConfig {
                script: format!(
                    "mount -t virtiofs share /mnt || exit 1\nls -l /mnt/stream | wc -l\necho round{round} > /mnt/r{round}\numount /mnt"
                ),
                qemu_args: fs_device_args(&socket, TAG, 1024),
                ..VmConfig::default()
            })
            .wait();
        out.assert_success();
        assert_eq!(
            fs::read_to_string(share.join(format!("r{round}"))).unwrap(),
            format!("round{round}\n")
        );
        d.wait_for_log_lines("ready for a frontend", 3 + round, Duration::from_secs(20));
        assert_eq!(
            fd_count(d.pid()),
            baseline_fds,
            "fds leaked across reconnect {round}"
        );
    }
    let rss_end = rss_kib(d.pid());
    assert!(
        rss_end < rss_after_first + 8 * 1024,
        "RSS grew from {rss_after_first} KiB to {rss_end} KiB over two sessions"
    );
}
