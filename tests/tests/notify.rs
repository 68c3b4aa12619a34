//! `airlock-fs --notify-socket` end to end: a real guest mounts the share,
//! runs Debian's `inotifywait -m -r` on it and `airlock-guest watch`; the
//! host changes the share and each change must show up as the events
//! docs/notify.md promises, the guest's own changes must not come back,
//! a burst must stay bounded (the helper stopped through it) while file
//! serving goes on, and events must
//! flow again after the helper or QEMU is restarted.
//!
//! Event lines are inotifywait's `%w %e %f` ("/mnt/sub/ MODIFY,ISDIR").
//! The waits below are failure bounds for a loaded machine under TCG; the
//! latency of each step is printed, not asserted (docs/notify.md has it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_e2e::{
    fs_device_args, notify_device_args, rss_anon_kib, DaemonHandle, Rig, Vm, VmConfig,
};

const TAG: &str = "share";
const PORT: &str = "org.airlock.notify";
/// Failure bound for one step's events.
const STEP_WAIT: Duration = Duration::from_secs(60);

/// The guest: watchers up, then commands from the test, one per line.
const SCRIPT: &str = r#"
set -e
mount -t virtiofs share /mnt
inotifywait -m -r --exclude readloop --format 'EV %w %e %f' /mnt 2>/tmp/inotifywait.err &
until grep -q 'Watches established' /tmp/inotifywait.err; do sleep 0.1; done
start_helper() {
    /airlock-guest --log-level debug watch --mount /mnt &
    HELPER=$!
}
start_helper
echo WATCHING
while read -r cmd arg; do
    case $cmd in
    write) echo guest > "/mnt/$arg" ;;
    kill-helper) kill "$HELPER"; wait "$HELPER" || true ;;
    stop-helper)
        kill -STOP "$HELPER"
        until grep -q '^State:.*stopped' "/proc/$HELPER/status"; do sleep 0.05; done
        ;;
    cont-helper) kill -CONT "$HELPER" ;;
    start-helper) start_helper ;;
    read-loop)
        (n=0; while :; do cat /mnt/readloop.txt > /dev/null; n=$((n + 1));
            [ $((n % 25)) -eq 0 ] && echo "READS $n"; done) &
        ;;
    quit) break ;;
    esac
    echo "DONE $cmd"
done
"#;

struct Setup {
    rig: Rig,
    share: PathBuf,
    fs: DaemonHandle,
    qemu_args: Vec<std::ffi::OsString>,
}

/// airlock-fs with --notify-socket on a share `prepare` filled.
fn setup(name: &str, prepare: &str) -> Setup {
    let mut rig = Rig::new(name);
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    host(&share, prepare);
    let fs_socket = rig.dir().join("fs.sock");
    let notify_socket = rig.dir().join("notify.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&fs_socket)
        .arg("--shared-dir")
        .arg(&share)
        .arg("--notify-socket")
        .arg(&notify_socket);
    let fs = rig.spawn_daemon("airlock-fs", cmd);
    rig.wait_for_socket(&fs_socket, Duration::from_secs(10));
    rig.wait_for_socket(&notify_socket, Duration::from_secs(10));
    let mut qemu_args = fs_device_args(&fs_socket, TAG, 1024);
    qemu_args.extend(notify_device_args(&notify_socket, PORT));
    Setup {
        rig,
        share,
        fs,
        qemu_args,
    }
}

impl Setup {
    /// Boots a guest running [`SCRIPT`]; returns once its watchers run
    /// and the helper is connected.
    fn boot(&mut self) -> Vm {
        let mut vm = self.rig.boot(VmConfig {
            script: SCRIPT.into(),
            qemu_args: self.qemu_args.clone(),
            timeout: Duration::from_secs(600),
            files: vec![("airlock-guest".into(), Rig::bin("airlock-guest"))],
            ..VmConfig::default()
        });
        vm.wait_for("WATCHING", Duration::from_secs(120));
        vm.wait_for("connected to airlock-fs", Duration::from_secs(60));
        vm
    }
}

/// Runs `script` with `sh` in `dir`: a host program, not airlock-fs.
fn host(dir: &Path, script: &str) {
    let status = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

/// Event lines (without the `EV ` prefix) and everything else the guest
/// printed on the way, until every line of `expected` was seen.
fn expect_events(vm: &mut Vm, expected: &[&str]) -> (Vec<String>, String) {
    let started = Instant::now();
    let mut events: Vec<String> = Vec::new();
    let mut text = String::new();
    while !expected.iter().all(|e| events.iter().any(|l| l == e)) {
        let left = STEP_WAIT.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "events {expected:?} not all seen within {STEP_WAIT:?}; saw {events:?}"
        );
        let chunk = vm.wait_for("EV ", left);
        for line in chunk.lines() {
            if let Some(ev) = line.strip_prefix("EV ") {
                events.push(ev.trim_end().to_string());
            }
        }
        text.push_str(&chunk);
    }
    eprintln!(
        "notify e2e: {expected:?} after {} ms",
        started.elapsed().as_millis()
    );
    (events, text)
}

#[test]
fn host_changes_reach_inotifywait_in_the_guest() {
    let mut s = setup(
        "notify_host_changes",
        "mkdir predir rm-file rm-dir rm-dir/gone away && echo 1 > predir/old && \
         echo v > rm-file/victim && echo r > readloop.txt",
    );
    let share = s.share.clone();
    let mut vm = s.boot();

    // Create: the file's own events, then its directory's.
    host(&share, "echo hello > new.txt");
    expect_events(
        &mut vm,
        &[
            "/mnt/ OPEN new.txt",
            "/mnt/ MODIFY new.txt",
            "/mnt/ CLOSE_WRITE,CLOSE new.txt",
            "/mnt/ MODIFY,ISDIR",
        ],
    );
    // Append and rewrite.
    for change in ["echo more >> new.txt", "echo rewritten > new.txt"] {
        host(&share, change);
        expect_events(
            &mut vm,
            &[
                "/mnt/ OPEN new.txt",
                "/mnt/ MODIFY new.txt",
                "/mnt/ CLOSE_WRITE,CLOSE new.txt",
            ],
        );
    }
    host(&share, "chmod 600 new.txt");
    expect_events(&mut vm, &["/mnt/ ATTRIB new.txt"]);
    // In a directory that existed at boot (inotifywait watches it).
    host(&share, "echo 2 >> predir/old && echo 3 > predir/fresh");
    expect_events(
        &mut vm,
        &[
            "/mnt/predir/ MODIFY old",
            "/mnt/predir/ CLOSE_WRITE,CLOSE fresh",
            "/mnt/predir/ MODIFY,ISDIR",
        ],
    );
    host(&share, "chmod 700 predir");
    expect_events(
        &mut vm,
        &["/mnt/ ATTRIB,ISDIR predir", "/mnt/predir/ ATTRIB,ISDIR"],
    );
    // A new directory: an event on it in its parent (no CREATE: see
    // docs/notify.md).
    host(&share, "mkdir newdir && echo x > newdir/inside");
    expect_events(
        &mut vm,
        &["/mnt/ MODIFY,ISDIR newdir", "/mnt/ MODIFY,ISDIR"],
    );
    host(&share, "mv new.txt renamed.txt");
    expect_events(
        &mut vm,
        &["/mnt/ CLOSE_WRITE,CLOSE renamed.txt", "/mnt/ MODIFY,ISDIR"],
    );
    host(&share, "mv predir/fresh fresh-moved");
    expect_events(
        &mut vm,
        &[
            "/mnt/predir/ MODIFY,ISDIR",
            "/mnt/ CLOSE_WRITE,CLOSE fresh-moved",
        ],
    );
    // Removals show as their directory's events (each step in a
    // directory of its own, so no earlier step's event can stand in).
    host(&share, "rm rm-file/victim");
    expect_events(&mut vm, &["/mnt/rm-file/ MODIFY,ISDIR"]);
    host(&share, "rmdir rm-dir/gone");
    expect_events(&mut vm, &["/mnt/rm-dir/ MODIFY,ISDIR"]);

    // The guest's own write: its own events only, nothing from the helper.
    vm.send_line("write guest.txt");
    let (own, text) = expect_events(&mut vm, &["/mnt/ CLOSE_WRITE,CLOSE guest.txt"]);
    assert!(
        own.iter().any(|l| l == "/mnt/ CREATE guest.txt"),
        "{own:?}\n{text}"
    );
    host(&share, "echo m > marker");
    let (after, text) = expect_events(&mut vm, &["/mnt/ CLOSE_WRITE,CLOSE marker"]);
    assert!(
        after.iter().all(|l| !l.contains("guest.txt")),
        "the guest's own change came back: {after:?}"
    );
    assert!(
        !vm.output().contains("\"guest.txt\""),
        "the helper applied a change the guest made itself:\n{text}"
    );
    assert_eq!(
        fs::read_to_string(share.join("guest.txt")).unwrap(),
        "guest\n"
    );

    // The helper restarted: what changed while it was away is not lost.
    vm.send_line("kill-helper");
    vm.wait_for("DONE kill-helper", STEP_WAIT);
    host(&share, "echo away > away/while-away");
    vm.send_line("start-helper");
    vm.wait_for("connected to airlock-fs", STEP_WAIT);
    // The change itself, or a RESCAN when the old helper had not
    // acknowledged it: either touches its directory.
    expect_events(&mut vm, &["/mnt/away/ MODIFY,ISDIR"]);
    host(&share, "echo back > after-restart");
    expect_events(&mut vm, &["/mnt/ CLOSE_WRITE,CLOSE after-restart"]);

    vm.send_line("quit");
    vm.wait().assert_success();
    assert!(
        s.fs.log().contains("notify: guest helper said hello"),
        "{}",
        s.fs.log()
    );
    // The host's files are what the host wrote; the helper changed nothing.
    assert_eq!(
        fs::read_to_string(share.join("predir/old")).unwrap(),
        "1\n2\n"
    );
    assert_eq!(fs::read_to_string(share.join("marker")).unwrap(), "m\n");
}

#[test]
fn events_flow_again_after_qemu_is_killed_and_restarted() {
    let mut s = setup("notify_qemu_restart", "echo r > readloop.txt");
    let share = s.share.clone();
    let mut vm = s.boot();
    host(&share, "echo 1 > first");
    expect_events(&mut vm, &["/mnt/ CLOSE_WRITE,CLOSE first"]);
    vm.kill();
    drop(vm);
    // Changed while no guest runs: nothing to tell the next one.
    host(&share, "echo 2 > between");
    let mut vm = s.boot();
    host(&share, "echo 3 > second");
    let (events, _) = expect_events(&mut vm, &["/mnt/ CLOSE_WRITE,CLOSE second"]);
    assert!(events.iter().all(|l| !l.contains("between")), "{events:?}");
    vm.send_line("quit");
    vm.wait().assert_success();
}

/// At most this many events are sent and not yet acknowledged
/// (docs/notify.md, "Coalescing and a bounded queue").
const WINDOW: usize = 128;
/// At most this many distinct paths wait in airlock-fs' queue ...
const QUEUE: usize = 1024;
/// ... and this many RESCANs (docs/notify.md, same section).
const MAX_RESCANS: usize = 16;

#[test]
fn a_burst_stays_bounded_and_file_serving_goes_on() {
    let mut s = setup(
        "notify_burst",
        "mkdir burst && echo r > readloop.txt && \
         i=0; while [ $i -lt 10000 ]; do : > burst/f$i; i=$((i + 1)); done",
    );
    let share = s.share.clone();
    let mut vm = s.boot();
    vm.send_line("read-loop");
    vm.wait_for("READS", STEP_WAIT);
    let pid = s.fs.pid();
    let rss_before = rss_anon_kib(pid);

    // The helper stopped (reading and acknowledging nothing) through the
    // burst: however fast the host and the guest run, at most WINDOW events
    // leave and the other 9 872 changed paths must wait in the bounded
    // queue, which overflows into one RESCAN covering burst/.
    vm.send_line("stop-helper");
    vm.wait_for("DONE stop-helper", STEP_WAIT);
    host(
        &share,
        "i=0; while [ $i -lt 10000 ]; do echo $i >> burst/f$i; i=$((i + 1)); done",
    );
    let rss_burst = rss_anon_kib(pid);
    // File serving goes on with the helper stopped and the queue full.
    vm.send_line("write served.txt");
    vm.wait_for("DONE write", STEP_WAIT);
    assert_eq!(
        fs::read_to_string(share.join("served.txt")).unwrap(),
        "guest\n"
    );
    vm.send_line("cont-helper");

    // Caught up once a marker's own events arrive (a RESCAN sent after a
    // marker covers it: then another marker).
    let mut events: Vec<String> = Vec::new();
    for i in 0.. {
        let marker = format!("marker{i}");
        host(&share, &format!("echo m > {marker}"));
        let done = format!("/mnt/ CLOSE_WRITE,CLOSE {marker}");
        let (got, _) = expect_events_until_either(&mut vm, &done, "/mnt/ MODIFY,ISDIR");
        let caught_up = got.contains(&done);
        events.extend(got);
        if caught_up {
            break;
        }
        assert!(
            i < 20,
            "the stream never caught up: {} events",
            events.len()
        );
    }
    // What the helper replayed about burst/: each file change is one
    // CLOSE_WRITE, each RESCAN covering it one listing of it (OPEN).
    let changes = events
        .iter()
        .filter(|l| l.starts_with("/mnt/burst/ CLOSE_WRITE,CLOSE "))
        .count();
    let rescans = events
        .iter()
        .filter(|l| *l == "/mnt/burst/ OPEN,ISDIR")
        .count();
    assert!(
        rescans >= 1,
        "no RESCAN covering burst/ in {} event lines ({changes} file changes)",
        events.len()
    );
    // The helper stopped, at most WINDOW messages left during the burst; the
    // rest is what the queue held when it resumed: at most QUEUE paths and
    // MAX_RESCANS RESCANs. Nothing else of the 10 000 may reach the guest.
    let bound = WINDOW + QUEUE + MAX_RESCANS;
    assert!(
        changes + rescans <= bound,
        "{changes} file changes and {rescans} RESCANs replayed for 10 000 changes, \
         more than {bound}: the queue did not bound them"
    );
    let rss_after = rss_anon_kib(pid).max(rss_burst);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "airlock-fs RssAnon grew from {rss_before} KiB to {rss_after} KiB in the burst"
    );
    eprintln!(
        "notify e2e burst: {} event lines, {changes} file changes and {rescans} RESCANs \
         replayed, airlock-fs RssAnon {rss_before} → {rss_after} KiB",
        events.len()
    );
    vm.send_line("quit");
    vm.wait().assert_success();
}

/// Event lines until `want` or `or` shows up.
fn expect_events_until_either(vm: &mut Vm, want: &str, or: &str) -> (Vec<String>, String) {
    let started = Instant::now();
    let mut events: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        let left = STEP_WAIT.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "neither {want:?} nor {or:?}; saw {events:?}"
        );
        let chunk = vm.wait_for("EV ", left);
        text.push_str(&chunk);
        let mut done = false;
        for line in chunk.lines() {
            if let Some(ev) = line.strip_prefix("EV ") {
                let ev = ev.trim_end().to_string();
                done |= ev == want || ev == or;
                events.push(ev);
            }
        }
        if done {
            return (events, text);
        }
    }
}
