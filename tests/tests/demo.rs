//! The README's main command: `scripts/demo --no-shell` boots its guest,
//! shows every step working, exits 0 and leaves nothing behind.
//!
//! To keep the test quick it skips what the test run already did:
//! `DEMO_SKIP_DEPS=1` (scripts/test ran scripts/install-deps) and
//! `AIRLOCK_BIN_DIR` pointing at the daemons this test run built (instead of
//! a release build). Everything else — scripts/build-guest, the daemons,
//! the host web server, QEMU — runs as it does for a user.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::{guest_image, workspace_root, Rig};

/// The demo boots one guest (~10 s); generous for a loaded CI machine.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

/// Lines (or parts of lines) the demo must print, in this order.
const EXPECTED: &[&str] = &[
    "demo: skipping host packages (DEMO_SKIP_DEPS=1)",
    "demo: starting a web server on the host's 127.0.0.1:",
    "demo: starting airlock-proxy on ",
    "demo: starting airlock-net: http.airlock.internal:3128 → airlock-proxy, host 127.0.0.1:",
    "demo: starting airlock-fs, sharing ",
    "demo: booting the guest",
    "guest: eth0 is 192.168.127.2/24, gateway 192.168.127.1, mtu 65520",
    "guest: host.airlock.internal resolves to 192.168.127.254 (IPv4) and fd61:6972:c0a8:7f00::fe (IPv6)",
    "guest: fetching http://host.airlock.internal:",
    "    hello from the host's loopback web server",
    "guest: fetching http://127.0.0.1:",
    "    hello from the host's loopback web server",
    "guest: mounted the shared folder at /mnt/share: from-host.txt",
    "guest: from-host.txt says: this file lives on the host",
    "guest: wrote /mnt/share/from-guest.txt",
    "guest: serving http://192.168.127.2/cgi-bin/hello",
    "guest: the host fetched the page",
    "demo: the guest powered off; checking on the host",
    "(written by the guest) says: written in the guest at ",
    "demo: airlock-proxy's audit log: {",
    "demo: all done: DHCP, DNS, host loopback, proxy, published port and shared folder work",
];

#[test]
fn demo_runs_every_step_and_cleans_up() {
    // Build (or find current) what the demo would otherwise build.
    guest_image();
    let bin = Rig::bin("airlock-net");
    Rig::bin("airlock-fs");
    Rig::bin("airlock-proxy");
    let bin_dir = bin.parent().unwrap();

    let root = workspace_root();
    // stderr (the demo's lines) and stdout (the guest's) through one pipe,
    // so their order is the order a user sees.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --no-shell 2>&1")
        .arg(root.join("scripts/demo"))
        .env("DEMO_SKIP_DEPS", "1")
        .env("AIRLOCK_BIN_DIR", bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group, so a timeout can stop all of it.
        .process_group(0)
        .spawn()
        .expect("cannot run scripts/demo");
    let pid = child.id() as i32;
    let mut pipe = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: signals the demo's own process group; its trap then
            // stops what it started.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            thread::sleep(Duration::from_secs(5));
            // SAFETY: as above; whatever ignored SIGTERM.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let output = reader.join().unwrap();
    let all = format!("--- scripts/demo --no-shell\n{output}");
    let status = status.unwrap_or_else(|| panic!("scripts/demo ran over {DEMO_TIMEOUT:?}\n{all}"));
    assert!(status.success(), "scripts/demo failed ({status})\n{all}");

    // The host's fetch and the guest's word that it saw it come from two
    // processes: either may print first.
    assert!(
        output.contains("(published port → guest:80): hello from the guest's web server"),
        "scripts/demo did not print the host's fetch through the published port\n{all}"
    );
    let mut pos = 0;
    for want in EXPECTED {
        match output[pos..].find(want) {
            Some(i) => pos += i + want.len(),
            None => panic!("scripts/demo did not print {want:?} (in this order)\n{all}"),
        }
    }
    assert!(
        !output.contains("demo: error:") && !output.contains("FAILED"),
        "{all}"
    );

    // It removed its directory and stopped everything it started.
    let work = output
        .split("sharing ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|share| Path::new(share.trim()).parent())
        .unwrap_or_else(|| panic!("no work directory in the demo's output\n{all}"))
        .to_path_buf();
    assert!(
        work.to_string_lossy().starts_with("/tmp/airlock-demo."),
        "{}",
        work.display()
    );
    assert!(
        !work.exists(),
        "scripts/demo left {} behind",
        work.display()
    );
    let needle = work.to_string_lossy().into_owned();
    let leftovers: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(
        leftovers.is_empty(),
        "scripts/demo left processes running: {leftovers:?}"
    );
}
