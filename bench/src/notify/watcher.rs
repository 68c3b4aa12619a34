//! airlock-fs with `--notify-socket` on the 100 000-file share: the walk,
//! idle cost, and a burst, with the harness as the guest helper.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::DaemonHandle;
use airlock_notify::{Decoder, Flags, Message};

use super::{burst, burst_files, Options};
use crate::machine::binary_version;
use crate::machine::PeerInfo;
use crate::procfs;
use crate::results::{GroupRun, Row, Sample};
use crate::vm::{sibling_binary, Guest};

/// The results table.
pub const TABLE: &str = "airlock-fs --notify-socket: 100 000 files, 10 101 directories";

/// How long idle cost is measured.
const IDLE: Duration = Duration::from_secs(10);
/// Longest wait for the helper to catch up after a burst.
const CATCH_UP: Duration = Duration::from_secs(300);

/// Errors of one repetition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rig failed (starting airlock-fs).
    #[error(transparent)]
    Rig(#[from] crate::vm::Error),
    /// airlock-fs' CPU or memory could not be read.
    #[error("reading /proc")]
    Proc(#[from] procfs::Error),
    /// A step failed; the text says which.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// Something else went wrong; the text says what.
    #[error("{0}")]
    Other(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(what.to_string(), e)
}

/// A row: test, unit, and the value of one repetition.
type RowSpec = (&'static str, &'static str, fn(&Outcome) -> f64);

/// One repetition's numbers.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    walk_ms: f64,
    idle_cpu_pct: f64,
    idle_rss_mib: f64,
    burst_cpu_ms: f64,
    burst_rss_mib: f64,
    burst_events: f64,
}

/// The guest helper's end: HELLO, then read and acknowledge forever,
/// counting events and noting marker files.
struct Helper {
    events: Arc<AtomicU64>,
    last_marker: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Helper {
    fn start(socket: &Path) -> Result<Helper, Error> {
        let mut stream =
            UnixStream::connect(socket).map_err(io("connecting to the notify socket"))?;
        let mut hello = Vec::new();
        Message::Hello {
            version: 1,
            nonce: 7,
        }
        .encode(&mut hello)
        .map_err(|e| Error::Other(e.to_string()))?;
        stream.write_all(&hello).map_err(io("sending HELLO"))?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io("setting a read timeout"))?;
        let events = Arc::new(AtomicU64::new(0));
        let last_marker = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, lm, st) = (events.clone(), last_marker.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut decoder = Decoder::awaiting_welcome(7);
            let mut buf = vec![0u8; 64 * 1024];
            while !st.load(Ordering::Relaxed) {
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => decoder.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
                let mut last = None;
                for m in decoder.by_ref().flatten() {
                    if let Message::Event { seq, flags, path } = m {
                        last = Some(seq);
                        ev.fetch_add(1, Ordering::Relaxed);
                        let marker = path
                            .strip_prefix(b"marker")
                            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok());
                        match marker {
                            Some(n) => lm.store(n, Ordering::Relaxed),
                            // A RESCAN of the root covers any marker.
                            None if flags.contains(Flags::RESCAN) && path.is_empty() => {
                                lm.store(u64::MAX, Ordering::Relaxed)
                            }
                            None => {}
                        }
                    }
                }
                if let Some(seq) = last {
                    let mut ack = Vec::new();
                    if (Message::Ack { seq }).encode(&mut ack).is_err()
                        || stream.write_all(&ack).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Helper {
            events,
            last_marker,
            stop,
        })
    }

    /// Creates marker files until one comes back on its own (a RESCAN of
    /// the root sent after a marker covers it, then another is needed).
    fn catch_up(&self, share: &Path) -> Result<(), Error> {
        let deadline = Instant::now() + CATCH_UP;
        for i in 0u64.. {
            self.last_marker.store(0, Ordering::Relaxed);
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(": > marker{}", i + 1))
                .current_dir(share)
                .status()
                .map_err(io("creating a marker"))?;
            if !status.success() {
                return Err(Error::Other("cannot create a marker".into()));
            }
            loop {
                match self.last_marker.load(Ordering::Relaxed) {
                    0 => {}
                    n if n == i + 1 => return Ok(()),
                    _ => break,
                }
                if Instant::now() > deadline {
                    return Err(Error::Other("the helper never caught up".into()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_fs(
    rig: &mut Guest,
    share: &Path,
    notify: bool,
    n: u32,
) -> Result<(DaemonHandle, std::path::PathBuf), Error> {
    let dir = rig.dir().to_path_buf();
    let socket = dir.join(format!("fs{n}.sock"));
    let notify_socket = dir.join(format!("notify{n}.sock"));
    let mut cmd = Command::new(sibling_binary("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(share);
    if notify {
        cmd.arg("--notify-socket").arg(&notify_socket);
    }
    let name = format!("airlock-fs-{n}");
    let d = rig.spawn_daemon(&name, cmd, Some(&socket))?;
    Ok((d, notify_socket))
}

/// Waits for the log line of the initial walk; returns its milliseconds.
fn walk_ms(d: &DaemonHandle) -> Result<f64, Error> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let log = d.log();
        if let Some(line) = log.lines().find(|l| l.contains("notify: watching")) {
            // "... watching N directories (T ms, ...".
            let ms = line
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(" ms"))
                .and_then(|(n, _)| n.trim().parse().ok())
                .ok_or_else(|| Error::Other(format!("unexpected log line {line:?}")))?;
            return Ok(ms);
        }
        if Instant::now() > deadline {
            return Err(Error::Other("airlock-fs never finished its walk".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn idle(pid: u32) -> Result<(f64, f64), Error> {
    let before = procfs::cpu_time(pid)?;
    std::thread::sleep(IDLE);
    let cpu = procfs::cpu_time(pid)?.saturating_sub(before);
    let rss = procfs::memory(pid)?.rss_anon_kib;
    Ok((cpu.as_secs_f64() / IDLE.as_secs_f64() * 100.0, mib(rss)))
}

fn one(rig: &mut Guest, share: &Path, n: u32) -> Result<Outcome, Error> {
    let (d, notify_socket) = start_fs(rig, share, true, n)?;
    let pid = d.pid();
    let walk_ms = walk_ms(&d)?;
    let helper = Helper::start(&notify_socket)?;
    let (idle_cpu_pct, idle_rss_mib) = idle(pid)?;
    let cpu_before = procfs::cpu_time(pid)?;
    let events_before = helper.events.load(Ordering::Relaxed);
    // Sample memory while the burst and the catching up go on.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let (p, s) = (peak.clone(), sampling.clone());
    let sampler = std::thread::spawn(move || {
        while s.load(Ordering::Relaxed) {
            if let Ok(m) = procfs::memory(pid) {
                p.fetch_max(m.rss_anon_kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let result = burst(share, &burst_files())
        .map_err(io("the burst"))
        .and_then(|()| helper.catch_up(share));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    result?;
    let burst_cpu = procfs::cpu_time(pid)?.saturating_sub(cpu_before);
    let outcome = Outcome {
        walk_ms,
        idle_cpu_pct,
        idle_rss_mib,
        burst_cpu_ms: burst_cpu.as_secs_f64() * 1e3,
        burst_rss_mib: mib(peak.load(Ordering::Relaxed)),
        burst_events: (helper.events.load(Ordering::Relaxed) - events_before) as f64,
    };
    drop(helper);
    d.terminate();
    Ok(outcome)
}

/// Runs the repetitions and records the rows; `rig` holds the tree.
pub fn run(
    options: &Options,
    mut rig: Guest,
    share: &Path,
    out: &mut GroupRun,
) -> Result<(), Error> {
    let airlock = sibling_binary("airlock-fs");
    out.peers.push(PeerInfo {
        name: "airlock-fs".into(),
        version: binary_version(&airlock) + " (this workspace, release build)",
    });
    let mut with = Vec::new();
    let mut without = Vec::new();
    for rep in 0..options.reps {
        with.push(one(&mut rig, share, rep * 2)?);
        let (d, _) = start_fs(&mut rig, share, false, rep * 2 + 1)?;
        without.push(idle(d.pid())?);
        d.terminate();
    }
    let peer = "airlock-fs --notify-socket";
    let rows: [RowSpec; 6] = [
        ("initial walk and marks", "ms", |o| o.walk_ms),
        ("idle CPU", "% of a core", |o| o.idle_cpu_pct),
        ("idle RssAnon", "MiB", |o| o.idle_rss_mib),
        ("burst of 10 000 changes: CPU until caught up", "ms", |o| {
            o.burst_cpu_ms
        }),
        ("burst: peak RssAnon", "MiB", |o| o.burst_rss_mib),
        ("burst: events sent", "events", |o| o.burst_events),
    ];
    for (test, unit, value) in rows {
        out.rows.push(Row::new(
            TABLE,
            test,
            peer,
            unit,
            false,
            with.iter().map(|o| Sample::value(value(o))).collect(),
        ));
    }
    let base = "airlock-fs (no --notify-socket)";
    out.rows.push(Row::new(
        TABLE,
        "idle CPU",
        base,
        "% of a core",
        false,
        without.iter().map(|(c, _)| Sample::value(*c)).collect(),
    ));
    out.rows.push(Row::new(
        TABLE,
        "idle RssAnon",
        base,
        "MiB",
        false,
        without.iter().map(|(_, m)| Sample::value(*m)).collect(),
    ));
    Ok(())
}
