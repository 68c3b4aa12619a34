//! inotify watches vs fanotify marks on the same tree, measured the way
//! airlock-fs would use each: one watch (mark) per directory, a map from
//! the watch to the directory, a reader that takes every event of a
//! burst of appends made by another process.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_fs::notify::{dirs, fanotify};

use super::{burst, burst_files, Options};
use crate::results::{Failure, GroupRun, Row, Sample};

/// The results table.
pub const TABLE: &str = "inotify vs fanotify: a watch on each of 10 101 directories";

/// The name whose creation ends a burst.
const MARKER: &str = "bench-marker";

/// A row: test, unit, and the value of one repetition.
type RowSpec = (&'static str, &'static str, fn(&Outcome) -> f64);

/// What one mechanism cost in one repetition.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    setup: Duration,
    kernel_kib: f64,
    reader_cpu: Duration,
    events: u64,
    overflows: u64,
}

fn sunreclaim_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: zeroed rusage is valid storage for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn directories(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        for entry in std::fs::read_dir(&out[i])? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// A watching mechanism.
trait Watch {
    fn add(&mut self, dir: &Path) -> io::Result<()>;
    fn raw_fd(&self) -> i32;
    /// Reads what is queued: (events, overflows, whether the marker came).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<(u64, u64, bool)>;
}

struct Inotify {
    fd: OwnedFd,
    paths: HashMap<i32, PathBuf>,
}

impl Inotify {
    fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inotify {
            // SAFETY: a new descriptor owned here.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            paths: HashMap::new(),
        })
    }
}

impl Watch for Inotify {
    fn add(&mut self, dir: &Path) -> io::Result<()> {
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mask = libc::IN_MODIFY
            | libc::IN_ATTRIB
            | libc::IN_CLOSE_WRITE
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        // SAFETY: valid fd, NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        self.paths.insert(wd, dir.to_path_buf());
        Ok(())
    }

    fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<(u64, u64, bool)> {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok((0, 0, false))
            } else {
                Err(e)
            };
        }
        let (mut events, mut overflows, mut marker) = (0, 0, false);
        let mut at = 0usize;
        while at + 16 <= n as usize {
            let field = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let wd = field(at) as i32;
            let mask = field(at + 4);
            let len = field(at + 12) as usize;
            let name = buf.get(at + 16..at + 16 + len).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            events += 1;
            if mask & libc::IN_Q_OVERFLOW != 0 {
                overflows += 1;
            }
            // The map lookup a watcher makes for every event.
            let known = self.paths.contains_key(&wd);
            marker |= known && mask & libc::IN_CREATE != 0 && name == MARKER.as_bytes();
            at += 16 + len;
        }
        Ok((events, overflows, marker))
    }
}

struct Fanotify {
    group: Option<fanotify::Fanotify>,
    keys: HashMap<Box<[u8]>, PathBuf>,
    key: Vec<u8>,
}

impl Watch for Fanotify {
    fn add(&mut self, dir: &Path) -> io::Result<()> {
        let fd: OwnedFd = std::fs::File::open(dir)?.into();
        match &self.group {
            Some(group) => group.mark(fd.as_fd())?,
            None => self.group = Some(fanotify::Fanotify::new(fd.as_fd())?),
        }
        dirs::key_of(fd.as_fd(), &mut self.key)?;
        self.keys.insert(self.key.clone().into(), dir.to_path_buf());
        Ok(())
    }

    fn raw_fd(&self) -> i32 {
        self.group.as_ref().map_or(-1, |g| g.as_raw_fd())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<(u64, u64, bool)> {
        let Some(group) = &self.group else {
            return Ok((0, 0, false));
        };
        let n = group.read(buf)?;
        let events = fanotify::parse(&buf[..n]).map_err(io::Error::other)?;
        let (mut overflows, mut marker) = (0, false);
        for e in &events {
            if e.mask & libc::FAN_Q_OVERFLOW != 0 {
                overflows += 1;
            }
            if let Some(entry) = e.entry {
                // The map lookup a watcher makes for every event.
                dirs::pack_key(
                    &entry.dir.fsid,
                    entry.dir.handle_type,
                    entry.dir.handle,
                    &mut self.key,
                );
                let known = self.keys.contains_key(&self.key[..]);
                marker |=
                    known && e.mask & libc::FAN_CREATE != 0 && entry.name == MARKER.as_bytes();
            }
        }
        Ok((events.len() as u64, overflows, marker))
    }
}

/// One repetition with `watch`.
fn measure(watch: &mut dyn Watch, share: &Path, dirs: &[PathBuf]) -> io::Result<Outcome> {
    let _ = std::fs::remove_file(share.join(MARKER));
    let kib_before = sunreclaim_kib();
    let started = Instant::now();
    for dir in dirs {
        watch.add(dir)?;
    }
    let setup = started.elapsed();
    let kernel_kib = sunreclaim_kib() as f64 - kib_before as f64;
    // Another process changes the files, then creates the marker.
    let share_owned = share.to_path_buf();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        burst(&share_owned, &burst_files())?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(": > {MARKER}"))
            .current_dir(&share_owned)
            .status()?;
        if !status.success() {
            return Err(io::Error::other("cannot create the marker"));
        }
        Ok(())
    });
    let cpu_before = thread_cpu();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Outcome {
        setup,
        kernel_kib,
        ..Outcome::default()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut pfd = libc::pollfd {
            fd: watch.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        let (events, overflows, marker) = watch.read(&mut buf)?;
        out.events += events;
        out.overflows += overflows;
        if marker || Instant::now() > deadline {
            break;
        }
    }
    out.reader_cpu = thread_cpu().saturating_sub(cpu_before);
    writer
        .join()
        .map_err(|_| io::Error::other("the writer thread panicked"))??;
    Ok(out)
}

/// Runs both mechanisms `options.reps` times and records the rows.
pub fn run(options: &Options, share: &Path, out: &mut GroupRun) {
    let dirs = match directories(share) {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(Failure {
                table: TABLE.into(),
                peer: String::new(),
                what: format!("cannot list the tree: {e}"),
            });
            return;
        }
    };
    type Make = fn() -> io::Result<Box<dyn Watch>>;
    let mechanisms: [(&str, Make); 2] = [
        ("inotify", || Ok(Box::new(Inotify::new()?))),
        ("fanotify (FID)", || {
            Ok(Box::new(Fanotify {
                group: None,
                keys: HashMap::new(),
                key: Vec::new(),
            }))
        }),
    ];
    for (name, make) in mechanisms {
        let mut samples: Vec<Outcome> = Vec::new();
        for _ in 0..options.reps {
            let result = make().and_then(|mut w| measure(w.as_mut(), share, &dirs));
            match result {
                Ok(o) => samples.push(o),
                Err(e) => {
                    out.failures.push(Failure {
                        table: TABLE.into(),
                        peer: name.into(),
                        what: e.to_string(),
                    });
                    break;
                }
            }
        }
        if samples.is_empty() {
            continue;
        }
        let rows: [RowSpec; 5] = [
            ("watch every directory", "ms", |o| {
                o.setup.as_secs_f64() * 1e3
            }),
            ("kernel memory of the watches", "KiB", |o| o.kernel_kib),
            ("reader CPU for 10 000 appends", "ms", |o| {
                o.reader_cpu.as_secs_f64() * 1e3
            }),
            ("events read for 10 000 appends", "events", |o| {
                o.events as f64
            }),
            ("queue overflows", "overflows", |o| o.overflows as f64),
        ];
        for (test, unit, value) in rows {
            out.rows.push(Row::new(
                TABLE,
                test,
                name,
                unit,
                false,
                samples.iter().map(|o| Sample::value(value(o))).collect(),
            ));
        }
    }
}
