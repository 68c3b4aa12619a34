//! POSIX conformance of the shared folder, judged by a third-party suite:
//! pjdfstest (its Rust rewrite, built by `scripts/build-guest`) runs as
//! root in the guest on a virtio-fs mount, once served by airlock-fs with
//! `--allow-device-nodes` and once by QEMU's C virtiofsd. airlock-fs must
//! pass every test virtiofsd passes, and fail none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_e2e::{fs_device_args, guest_dir, DaemonHandle, Rig, VmConfig};

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// What pjdfstest said about one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
}

/// The suite, where `scripts/build-guest` installed it.
fn pjdfstest() -> PathBuf {
    // The guest image first: building it also builds pjdfstest.
    airlock_e2e::guest_image();
    let bin = guest_dir().join("pjdfstest/bin/pjdfstest");
    assert!(
        bin.is_file(),
        "{} missing: scripts/build-guest installs it",
        bin.display()
    );
    bin
}

/// The guest: the suite's second dummy user, its configuration, the mount,
/// the run. Every test's result line goes to the test channel.
const SCRIPT: &str = r#"set -e
echo 'tests:x:1000:1000:pjdfstest:/:/bin/false' >>/etc/passwd
echo 'tests:x:1000:' >>/etc/group
cat >/tmp/pjdfstest.toml <<'EOF'
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}
[settings]
naptime = 0.01
# The EROFS tests remount the share read-only while other tests, run in
# parallel, hold files open for writing: EBUSY, on any server.
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
EOF
mount -t virtiofs share /mnt
mkdir /tmp/secondary
cd /mnt
set +e
/pjdfstest -c /tmp/pjdfstest.toml -p /mnt -s /tmp/secondary >/tmp/pjdfstest.out 2>&1
echo "pjdfstest status=$?"
grep -E ' (ok|FAILED|skipped)$' /tmp/pjdfstest.out
grep '^Summary' /tmp/pjdfstest.out
cd /
umount /mnt
"#;

/// Runs the suite in a guest whose share is served on `socket`; returns
/// each test's outcomes (a few names run more than once) and the summary.
fn run_suite(rig: &mut Rig, socket: &Path) -> (BTreeMap<String, Vec<Outcome>>, String) {
    let out = rig
        .boot(VmConfig {
            script: SCRIPT.into(),
            qemu_args: fs_device_args(socket, "share", 1024),
            files: vec![("pjdfstest".into(), pjdfstest())],
            timeout: Duration::from_secs(1200),
            ..VmConfig::default()
        })
        .wait();
    out.assert_success();
    let mut results: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for line in out.output.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(word), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let outcome = match word {
            "ok" => Outcome::Ok,
            "FAILED" => Outcome::Failed,
            "skipped" => Outcome::Skipped,
            _ => continue,
        };
        results.entry(name.to_owned()).or_default().push(outcome);
    }
    let summary = out
        .output
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or_else(|| panic!("no pjdfstest summary:\n{}", out.output))
        .to_owned();
    assert!(results.len() > 100, "too few results:\n{}", out.output);
    (results, summary)
}

fn passed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Ok)
}

fn start(rig: &mut Rig, name: &str, cmd: Command, socket: &Path) -> DaemonHandle {
    let d = rig.spawn_daemon(name, cmd);
    rig.wait_for_socket(socket, Duration::from_secs(10));
    d
}

#[test]
fn pjdfstest_passes_on_airlock_fs_everything_it_passes_on_virtiofsd() {
    assert!(
        Path::new(VIRTIOFSD).exists(),
        "{VIRTIOFSD} missing (package qemu-system-common)"
    );
    let mut rig = Rig::new("posix_pjdfstest");

    let c_share = rig.dir().join("virtiofsd-share");
    std::fs::create_dir(&c_share).unwrap();
    let c_socket = rig.dir().join("virtiofsd.sock");
    let mut cmd = Command::new(VIRTIOFSD);
    cmd.arg(format!("--socket-path={}", c_socket.display()))
        .arg("-o")
        .arg(format!("source={}", c_share.display()));
    let c = start(&mut rig, "virtiofsd", cmd, &c_socket);
    let (reference, reference_summary) = run_suite(&mut rig, &c_socket);
    // virtiofsd exits with its guest.
    c.terminate();

    let share = rig.dir().join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&share)
        .arg("--allow-device-nodes");
    let airlock = start(&mut rig, "airlock-fs", cmd, &socket);
    let (results, summary) = run_suite(&mut rig, &socket);
    eprintln!("virtiofsd:  {reference_summary}\nairlock-fs: {summary}");

    let failed: Vec<&String> = results
        .iter()
        .filter(|(_, o)| o.contains(&Outcome::Failed))
        .map(|(name, _)| name)
        .collect();
    let lost: Vec<&String> = reference
        .iter()
        .filter(|(name, o)| passed(o) && !results.get(*name).is_some_and(|r| passed(r)))
        .map(|(name, _)| name)
        .collect();
    assert!(
        failed.is_empty() && lost.is_empty(),
        "airlock-fs failed {failed:?}; passed with virtiofsd but not airlock-fs: {lost:?}\n\
         virtiofsd: {reference_summary}\nairlock-fs: {summary}\n{}",
        airlock.log()
    );
    // The device tests ran, and made real nodes on the host.
    assert!(
        results
            .iter()
            .any(|(name, o)| name.starts_with("mknod::") && name.contains("char") && passed(o)),
        "no mknod test of a character device passed: {results:?}"
    );
}
