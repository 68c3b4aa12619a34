//! What a benchmark reads about the processes under load from `/proc`: CPU
//! time (`utime + stime` of `/proc/PID/stat`, all threads, including exited
//! ones) and memory (`VmHWM`, the peak resident set, and `RssAnon` of
//! `/proc/PID/status`).

use std::fs;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `/proc` file could not be read (the process exited?).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A `/proc` file did not have the expected shape.
    #[error("unexpected contents in {path}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// What was missing.
        what: &'static str,
    },
}

fn read(path: String) -> Result<String, Error> {
    fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc` CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The comm and the fields after it of a `stat` file's text; field 3 of
/// proc(5) (state) is index 0 of the fields.
fn stat_fields(text: &str) -> Option<(&str, Vec<&str>)> {
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    Some((comm, text.get(close + 1..)?.split_whitespace().collect()))
}

/// `(comm, utime + stime in ticks)` from the text of a `stat` file.
fn parse_stat(text: &str) -> Option<(&str, u64)> {
    let (comm, fields) = stat_fields(text)?;
    // utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The CPU time (`utime + stime`) a `stat` file reports.
fn stat_cpu_time(path: String) -> Result<Duration, Error> {
    let text = read(path.clone())?;
    let (_, ticks) = parse_stat(&text).ok_or(Error::Parse {
        path,
        what: "utime/stime",
    })?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// Calls `each` with the text of `/proc/PID/task/*/FILE` for every live
/// thread of `pid`; a thread that exits between listing and reading is
/// skipped.
fn for_each_task(pid: u32, file: &str, mut each: impl FnMut(&str)) -> Result<(), Error> {
    let dir = format!("/proc/{pid}/task");
    let entries = fs::read_dir(&dir).map_err(|source| Error::Read { path: dir, source })?;
    for entry in entries.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path().join(file)) {
            each(&text);
        }
    }
    Ok(())
}

/// CPU time used so far by process `pid` (all its threads, live and exited).
pub fn cpu_time(pid: u32) -> Result<Duration, Error> {
    stat_cpu_time(format!("/proc/{pid}/stat"))
}

/// CPU time used so far by thread `tid` of process `pid`.
pub fn task_cpu_time(pid: u32, tid: u32) -> Result<Duration, Error> {
    stat_cpu_time(format!("/proc/{pid}/task/{tid}/stat"))
}

/// CPU time of the threads of `pid` whose name satisfies `select` (live
/// threads only: `/proc/PID/task/*/stat`).
pub fn thread_cpu_time(pid: u32, select: impl Fn(&str) -> bool) -> Result<Duration, Error> {
    let mut ticks = 0;
    for_each_task(pid, "stat", |text| {
        if let Some((comm, t)) = parse_stat(text) {
            if select(comm) {
                ticks += t;
            }
        }
    })?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// Page faults and context switches of a process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Minor page faults (all threads, live and exited).
    pub minor_faults: u64,
    /// Major page faults (all threads, live and exited).
    pub major_faults: u64,
    /// Voluntary context switches of the live threads.
    pub voluntary_switches: u64,
    /// Involuntary context switches of the live threads.
    pub involuntary_switches: u64,
}

impl Events {
    /// What happened between `self` and `later` (saturating: a thread that
    /// exited takes its switches with it).
    pub fn since(self, later: Events) -> Events {
        Events {
            minor_faults: later.minor_faults.saturating_sub(self.minor_faults),
            major_faults: later.major_faults.saturating_sub(self.major_faults),
            voluntary_switches: later
                .voluntary_switches
                .saturating_sub(self.voluntary_switches),
            involuntary_switches: later
                .involuntary_switches
                .saturating_sub(self.involuntary_switches),
        }
    }
}

/// Page faults (`/proc/PID/stat` minflt, majflt) and context switches
/// (`/proc/PID/task/*/status`) of `pid`.
pub fn events(pid: u32) -> Result<Events, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = read(path.clone())?;
    let fields = stat_fields(&text).map(|(_, f)| f).unwrap_or_default();
    // minflt is field 10, majflt 12.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(minor_faults), Some(major_faults)) = (field(7), field(9)) else {
        return Err(Error::Parse {
            path,
            what: "minflt/majflt",
        });
    };
    let mut events = Events {
        minor_faults,
        major_faults,
        ..Events::default()
    };
    for_each_task(pid, "status", |text| {
        for line in text.lines() {
            let value = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                events.voluntary_switches += value(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                events.involuntary_switches += value(v);
            }
        }
    })?;
    Ok(events)
}

/// Whether every live thread of `pid` has a tracer (`TracerPid` in
/// `/proc/PID/task/*/status`); false if the process cannot be read.
pub fn all_threads_traced(pid: u32) -> bool {
    let mut all = true;
    let listed = for_each_task(pid, "status", |text| {
        all &= text
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0");
    });
    listed.is_ok() && all
}

/// QEMU's CPU time outside its vCPU threads (named `CPU n/TCG` with
/// `-name …,debug-threads=on`): the main loop, I/O threads and the thread
/// pool, i.e. QEMU's built-in device back ends (9p, slirp) plus its
/// vhost-user and virtio bookkeeping — not the guest's own execution.
pub fn qemu_device_cpu_time(pid: u32) -> Result<Duration, Error> {
    let total = cpu_time(pid)?;
    let vcpus = thread_cpu_time(pid, |comm| comm.starts_with("CPU "))?;
    Ok(total.saturating_sub(vcpus))
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak resident set (`VmHWM`): includes the pages of the shared guest
    /// memory the process has touched.
    pub peak_rss_kib: u64,
    /// Anonymous resident memory now (`RssAnon`): the process' own heap
    /// and stacks, without the shared guest memory.
    pub rss_anon_kib: u64,
}

fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Memory figures of process `pid`.
pub fn memory(pid: u32) -> Result<Memory, Error> {
    let path = format!("/proc/{pid}/status");
    let text = read(path.clone())?;
    let peak_rss_kib = status_field(&text, "VmHWM").ok_or(Error::Parse {
        path: path.clone(),
        what: "VmHWM",
    })?;
    let rss_anon_kib = status_field(&text, "RssAnon").ok_or(Error::Parse {
        path,
        what: "RssAnon",
    })?;
    Ok(Memory {
        peak_rss_kib,
        rss_anon_kib,
    })
}

/// Drops the host's page cache, dentries and inodes
/// (`echo 3 > /proc/sys/vm/drop_caches`, after `sync`). Needs root.
pub fn drop_host_caches() -> Result<(), Error> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let path = "/proc/sys/vm/drop_caches";
    fs::write(path, "3\n").map_err(|source| Error::Read {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_fresh_memory_counts_minor_faults() {
        let before = events(std::process::id()).unwrap();
        let mut memory = vec![0u8; 16 << 20];
        for page in memory.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&memory);
        let during = before.since(events(std::process::id()).unwrap());
        assert!(during.minor_faults >= 1000, "{during:?}");
        assert!(before.voluntary_switches + before.involuntary_switches > 0);
    }

    #[test]
    fn stat_with_odd_comm() {
        let text = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(parse_stat(text), Some(("a b) c)", 12)));
        // minflt (field 10 of proc(5)).
        assert_eq!(stat_fields(text).map(|(_, f)| f[7]), Some("100"));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn own_process_figures() {
        let pid = std::process::id();
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        let m = memory(pid).unwrap();
        assert!(m.peak_rss_kib >= m.rss_anon_kib && m.peak_rss_kib > 0);
        let all = thread_cpu_time(pid, |_| true).unwrap();
        assert!(all > Duration::ZERO);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tx\nVmHWM:\t  1234 kB\nRssAnon:\t  56 kB\n";
        assert_eq!(status_field(text, "VmHWM"), Some(1234));
        assert_eq!(status_field(text, "RssAnon"), Some(56));
        assert_eq!(status_field(text, "VmRSS"), None);
    }
}
