//! `--notify-socket` without a guest: the airlock-fs binary watches a share
//! while this test plays the guest helper on the socket (the bytes QEMU's
//! virtio-serial port would carry) and changes the share from child
//! processes, as the host's programs would. What a real guest sees is
//! tested in airlock-e2e (`tests/tests/notify.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_notify::{Decoder, Flags, Message};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-fs");
/// Longest wait for anything (a failure bound, not a speed requirement).
const PATIENCE: Duration = Duration::from_secs(20);

struct Daemon {
    child: Child,
    log: PathBuf,
    notify: PathBuf,
}

impl Daemon {
    /// airlock-fs sharing `share` with `--notify-socket`, `extra` options.
    fn start(dir: &Path, share: &Path, extra: &[&str]) -> Daemon {
        let log = dir.join("fs.log");
        let notify = dir.join("notify.sock");
        let child = Command::new(BIN)
            .arg("--socket-path")
            .arg(dir.join("fs.sock"))
            .arg("--shared-dir")
            .arg(share)
            .arg("--notify-socket")
            .arg(&notify)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, log, notify };
        d.wait_log("notify: watching");
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "daemon log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the daemon died (a seccomp kill shows here).
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("airlock-fs exited ({status}):\n{}", self.log());
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The fanotify marks airlock-fs holds (`/proc/PID/fdinfo`).
    fn marks(&self) -> usize {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .map(|info| {
                info.lines()
                    .filter(|l| l.starts_with("fanotify ino:"))
                    .count()
            })
            .sum()
    }

    fn helper(&self) -> Helper {
        Helper::connect(&self.notify)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest helper's end of the port.
struct Helper {
    stream: UnixStream,
    decoder: Decoder,
    last_seq: u64,
}

impl Helper {
    fn connect(path: &Path) -> Helper {
        let stream = UnixStream::connect(path).unwrap();
        Helper {
            stream,
            decoder: Decoder::awaiting_welcome(0),
            last_seq: 0,
        }
    }

    fn hello(&mut self, nonce: u64) {
        let mut frame = Vec::new();
        Message::Hello { version: 1, nonce }
            .encode(&mut frame)
            .unwrap();
        self.stream.write_all(&frame).unwrap();
        self.decoder = Decoder::awaiting_welcome(nonce);
        match self.next_message(PATIENCE) {
            Some(Message::Welcome { nonce: n, version }) => {
                assert_eq!((n, version), (nonce, 1));
            }
            other => panic!("expected a WELCOME, got {other:?}"),
        }
        self.last_seq = 0;
    }

    fn ack(&mut self) {
        let mut frame = Vec::new();
        Message::Ack { seq: self.last_seq }
            .encode(&mut frame)
            .unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    /// The next message within `wait`.
    fn next_message(&mut self, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        loop {
            match self.decoder.next() {
                Some(Ok(m)) => return Some(m),
                Some(Err(e)) => panic!("bad input from airlock-fs: {e}"),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 8192];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("airlock-fs closed the notify connection"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
    }

    /// The next event (acknowledged) within `wait`, as (path, flags).
    fn next_event(&mut self, wait: Duration) -> Option<(String, Flags)> {
        match self.next_message(wait)? {
            Message::Event { seq, flags, path } => {
                assert_eq!(seq, self.last_seq + 1, "sequence numbers count up");
                self.last_seq = seq;
                self.ack();
                Some((String::from_utf8(path).unwrap(), flags))
            }
            other => panic!("expected an EVENT, got {other:?}"),
        }
    }

    /// Events until one for `path` with all of `flags`; returns them all.
    fn expect(&mut self, path: &str, flags: Flags) -> Vec<(String, Flags)> {
        self.expect_either(path, flags, path, flags)
    }

    /// Events until one for `path` with `flags` or for `other` with
    /// `other_flags`; returns them all.
    fn expect_either(
        &mut self,
        path: &str,
        flags: Flags,
        other: &str,
        other_flags: Flags,
    ) -> Vec<(String, Flags)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some((p, f)) => {
                    let done =
                        (p == path && f.contains(flags)) || (p == other && f.contains(other_flags));
                    seen.push((p, f));
                    if done {
                        return seen;
                    }
                }
                None => panic!("no event {path:?} {flags} within {PATIENCE:?}; saw {seen:?}"),
            }
        }
    }
}

/// Runs `script` with `sh` in `dir`: a process other than airlock-fs, as
/// the host's programs are.
fn host(dir: &Path, script: &str) {
    let status = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    (dir, share)
}

/// The events each host action produces, one action at a time.
fn host_changes_arrive_as_events_in(sandbox: &str) {
    let (dir, share) = setup();
    host(&share, "mkdir -p old/deep/er && echo 1 > old/deep/er/f");
    let mut d = Daemon::start(dir.path(), &share, &["--sandbox", sandbox]);
    let mut h = d.helper();
    h.hello(11);
    host(&share, "echo hello > new.txt");
    h.expect("new.txt", Flags::CREATED | Flags::CHANGED);
    host(&share, "echo more >> new.txt");
    h.expect("new.txt", Flags::CHANGED);
    host(&share, "chmod 600 new.txt");
    h.expect("new.txt", Flags::ATTRIB);
    host(&share, "mkdir sub");
    h.expect("sub", Flags::CREATED);
    // The new directory is watched: changes inside it arrive too.
    host(&share, "echo x > sub/inner");
    h.expect("sub/inner", Flags::CREATED);
    host(&share, "mv new.txt sub/moved.txt");
    let seen = h.expect("sub/moved.txt", Flags::CREATED);
    assert!(
        seen.iter()
            .any(|(p, f)| p == "new.txt" && f.contains(Flags::REMOVED)),
        "{seen:?}"
    );
    // A renamed directory keeps being watched under its new name.
    host(&share, "mv old renamed");
    h.expect("renamed", Flags::CREATED);
    host(&share, "echo 2 >> renamed/deep/er/f");
    h.expect("renamed/deep/er/f", Flags::CHANGED);
    host(&share, "chmod 700 renamed/deep");
    h.expect("renamed/deep", Flags::ATTRIB);
    host(&share, "rm sub/moved.txt");
    h.expect("sub/moved.txt", Flags::REMOVED);
    host(&share, "rm -r renamed");
    h.expect("renamed", Flags::REMOVED);
    host(&share, "touch .");
    h.expect("", Flags::ATTRIB);
    d.assert_alive();
    assert!(d.log().contains("FAN_RENAME"), "{}", d.log());
}

#[test]
fn host_changes_arrive_as_events() {
    let sandbox = if unsafe_is_root() {
        "namespace"
    } else {
        "none"
    };
    host_changes_arrive_as_events_in(sandbox);
}

#[test]
fn host_changes_arrive_as_events_in_a_chroot() {
    if !unsafe_is_root() {
        eprintln!("skipped: --sandbox chroot needs root");
        return;
    }
    host_changes_arrive_as_events_in("chroot");
}

#[test]
fn host_changes_arrive_as_events_without_a_sandbox() {
    host_changes_arrive_as_events_in("none");
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn directories_that_leave_the_share_or_are_symlinks_report_nothing() {
    let (dir, share) = setup();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    host(&share, "mkdir -p leaving/a/b && ln -s ../outside link");
    let d = Daemon::start(dir.path(), &share, &[]);
    let mut h = d.helper();
    h.hello(1);
    // The share's root and leaving, leaving/a, leaving/a/b.
    assert_eq!(d.marks(), 4);
    host(&share, "mv leaving ../outside/left");
    h.expect("leaving", Flags::REMOVED);
    // Their marks went with them (airlock-fs runs as root here, with the
    // CAP_DAC_READ_SEARCH that opening them by handle needs).
    if unsafe_is_root() {
        assert_eq!(d.marks(), 1);
    }
    host(
        dir.path(),
        "echo x > outside/left/f && echo y > outside/g && echo z > share/link/h",
    );
    // The marker comes after: anything from outside would have come first.
    host(&share, "echo m > marker");
    let seen = h.expect("marker", Flags::CREATED);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn a_burst_is_coalesced_and_memory_stays_bounded() {
    let (dir, share) = setup();
    host(
        &share,
        "for d in 0 1 2 3 4 5 6 7 8 9; do mkdir d$d; done; \
         i=0; while [ $i -lt 10000 ]; do : > d$((i % 10))/f$i; i=$((i+1)); done",
    );
    let d = Daemon::start(dir.path(), &share, &[]);
    let mut h = d.helper();
    h.hello(1);
    let before = d.rss_kib();
    // 10 000 changes while the helper does not read: the host coalesces.
    host(
        &share,
        "i=0; while [ $i -lt 10000 ]; do echo $i >> d$((i % 10))/f$i; i=$((i+1)); done",
    );
    // What waited was folded into a RESCAN of the share.
    let mut seen = h.expect("", Flags::RESCAN);
    // A marker file shows the stream has caught up, unless a RESCAN sent
    // after it covers it: then another marker.
    for i in 0.. {
        let marker = format!("marker{i}");
        host(&share, &format!("echo done > {marker}"));
        let got = h.expect_either(&marker, Flags::CREATED, "", Flags::RESCAN);
        let caught_up = got.last().is_some_and(|(p, _)| *p == marker);
        seen.extend(got);
        if caught_up {
            break;
        }
    }
    let after = d.rss_kib();
    let rescans: Vec<_> = seen
        .iter()
        .filter(|(_, f)| f.contains(Flags::RESCAN))
        .collect();
    assert!(!rescans.is_empty(), "no RESCAN in {} events", seen.len());
    assert!(
        seen.len() < 2000,
        "{} events for 10 000 changes: not coalesced",
        seen.len()
    );
    // Generous: the queue's bound is 1024 paths, a few hundred KiB.
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    eprintln!(
        "burst: {} events ({} rescans) for 10 000 changes, RSS {before} → {after} KiB",
        seen.len(),
        rescans.len()
    );
}

#[test]
fn a_restarted_helper_is_told_to_rescan_what_it_may_have_missed() {
    let (dir, share) = setup();
    let d = Daemon::start(dir.path(), &share, &[]);
    let mut h = d.helper();
    h.hello(1);
    host(&share, "echo a > a");
    // Read but never acknowledged: the helper "died" before applying it.
    match h.next_message(PATIENCE) {
        Some(Message::Event { path, .. }) => assert_eq!(path, b"a"),
        other => panic!("expected the event for a, got {other:?}"),
    }
    h.hello(2);
    let (path, flags) = h.next_event(PATIENCE).expect("a RESCAN");
    assert_eq!((path.as_str(), flags), ("", Flags::RESCAN));
    // Applied and acknowledged: another restart costs nothing.
    h.hello(3);
    host(&share, "echo b > b");
    assert_eq!(
        h.next_event(PATIENCE).map(|(p, _)| p),
        Some("b".to_string())
    );
}

#[test]
fn changes_wait_for_a_helper_and_a_new_connection_replaces_the_old() {
    let (dir, share) = setup();
    let d = Daemon::start(dir.path(), &share, &[]);
    let mut first = d.helper();
    // Accepted (what arrived before the connection was taken belongs to no
    // guest), no HELLO yet: a change waits for one, it is not lost.
    d.wait_log("notify: connected on");
    host(&share, "echo 1 > early");
    first.hello(1);
    first.expect("early", Flags::CREATED);
    // A new connection (QEMU restarted) replaces the old one.
    let mut second = d.helper();
    d.wait_log("new connection replaces the previous one");
    let mut buf = [0u8; 64];
    first.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // Closed: end of stream, or a reset (our ACKs were left unread).
    match first.stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("old connection not closed: {other:?}"),
    }
    second.hello(2);
    host(&share, "echo 3 > for-the-new-guest");
    let seen = second.expect("for-the-new-guest", Flags::CREATED);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn junk_on_the_socket_is_skipped() {
    let (dir, share) = setup();
    let mut d = Daemon::start(dir.path(), &share, &[]);
    let mut h = d.helper();
    h.stream.write_all(&[0xff; 10_000]).unwrap();
    h.stream.write_all(&[4, 0, 0, 0, 9, 1, 2]).unwrap();
    h.hello(5);
    host(&share, "echo x > after-junk");
    h.expect("after-junk", Flags::CREATED);
    d.assert_alive();
}

#[test]
fn startup_fails_clearly_when_the_socket_cannot_be_bound() {
    let (dir, share) = setup();
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.path().join("fs.sock"))
        .arg("--shared-dir")
        .arg(&share)
        .arg("--notify-socket")
        .arg(dir.path().join("no/such/dir/notify.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind socket"), "{err}");
    assert!(err.contains("notify.sock"), "{err}");
}
