//! Logging for the daemons: plain lines on stderr (never daemonizing, so the
//! service manager or the user's terminal captures them), or syslog with
//! `--syslog`. `--log-level` picks the threshold.
//!
//! Anything a guest can trigger must be logged through [`ratelimited!`] so a
//! hostile guest cannot flood the host's journal. Dependencies' records are
//! rate-limited per target by the logger itself (below debug level).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use log::{Level, LevelFilter, Log, Metadata, Record};

/// `--log-level` values (virtiofsd's names).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Off => LevelFilter::Off,
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// The logging options every daemon accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log threshold.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log to syslog (facility daemon) instead of stderr.
    #[arg(long)]
    pub syslog: bool,
}

enum Sink {
    Stderr,
    Syslog,
}

struct Logger {
    sink: Sink,
    /// Crate-name prefixes whose records are shown; dependencies' chatter
    /// (fuse-backend-rs logs every ENOENT at info) only appears at debug.
    own_prefix: &'static [&'static str],
    threshold: LevelFilter,
    /// Below debug, dependencies' records go through one [`RateLimit`] per
    /// target: some log what a guest controls (virtio-queue logs an error
    /// for every out-of-range descriptor index the guest puts in its ring),
    /// and they cannot use [`ratelimited!`].
    dependency_limits: Mutex<BTreeMap<String, RateLimit>>,
}

impl Logger {
    fn is_own(&self, target: &str) -> bool {
        self.own_prefix.iter().any(|p| target.starts_with(p))
    }

    /// `None`: drop the record. `Some(n)`: log it, noting `n` suppressed.
    fn admit(&self, record: &Record) -> Option<u64> {
        if self.is_own(record.target()) || self.threshold >= LevelFilter::Debug {
            return Some(0);
        }
        let mut limits = self
            .dependency_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let limit = limits.entry(record.target().to_owned()).or_default();
        limit.check()
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let own = self.is_own(metadata.target());
        let limit = if own {
            self.threshold
        } else {
            // Dependencies are one level quieter than our own code.
            match self.threshold {
                LevelFilter::Debug | LevelFilter::Trace => self.threshold,
                LevelFilter::Info => LevelFilter::Warn,
                other => other,
            }
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(suppressed) = self.admit(record) else {
            return;
        };
        let note = match suppressed {
            0 => String::new(),
            n => format!(" ({n} similar messages suppressed)"),
        };
        match self.sink {
            Sink::Stderr => {
                let line = format!(
                    "{} {:<5} {}: {}{note}\n",
                    crate::time::rfc3339_now(),
                    record.level(),
                    record.target(),
                    record.args()
                );
                // One write per line so lines from threads don't interleave.
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog => {
                let priority = match record.level() {
                    Level::Error => libc::LOG_ERR,
                    Level::Warn => libc::LOG_WARNING,
                    Level::Info => libc::LOG_INFO,
                    Level::Debug | Level::Trace => libc::LOG_DEBUG,
                };
                let msg =
                    format!("{}: {}{note}", record.target(), record.args()).replace('\0', "\\0");
                if let Ok(msg) = CString::new(msg) {
                    // SAFETY: the format string is a static NUL-terminated "%s" and
                    // `msg` is a valid C string that outlives the call.
                    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Set by [`init`] when records go to syslog rather than stderr.
static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

/// Whether the process logger writes to syslog (`--syslog`): then what goes
/// to stderr is not in the log, and the other way round.
pub fn to_syslog() -> bool {
    TO_SYSLOG.load(Ordering::Relaxed)
}

/// Installs the process logger. `ident` names the daemon in syslog;
/// `own_prefix` lists the crate names (module path prefixes) of our own code.
pub fn init(args: &LogArgs, ident: &'static str, own_prefix: &'static [&'static str]) {
    let sink = if args.syslog {
        // openlog keeps the pointer: leak the string so it lives forever.
        let ident = CString::new(ident).unwrap_or_default().into_raw();
        // SAFETY: `ident` is a valid C string leaked for the life of the
        // process, as openlog(3) requires.
        unsafe { libc::openlog(ident, libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_DAEMON) };
        Sink::Syslog
    } else {
        Sink::Stderr
    };
    let threshold = LevelFilter::from(args.log_level);
    let logger = Logger {
        sink,
        own_prefix,
        threshold,
        dependency_limits: Mutex::new(BTreeMap::new()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(threshold);
        TO_SYSLOG.store(args.syslog, Ordering::Relaxed);
    }
}

/// A token bucket for one log call site: at most `BURST` messages per
/// `WINDOW`; the rest are counted and reported with the next message let
/// through.
pub struct RateLimit {
    state: Mutex<Option<RateState>>,
}

struct RateState {
    window_start: Instant,
    sent: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const BURST: u32 = 10;
    pub const WINDOW: Duration = Duration::from_secs(5);

    pub const fn new() -> Self {
        RateLimit {
            state: Mutex::new(None),
        }
    }

    /// `Some(n)`: log now, mentioning `n` messages suppressed since the last
    /// one logged. `None`: suppress this one.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = guard.get_or_insert(RateState {
            window_start: now,
            sent: 0,
            suppressed: 0,
        });
        if now.duration_since(st.window_start) >= Self::WINDOW {
            st.window_start = now;
            st.sent = 0;
        }
        if st.sent < Self::BURST {
            st.sent += 1;
            Some(std::mem::take(&mut st.suppressed))
        } else {
            st.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at `level` through a per-call-site [`RateLimit`]:
/// `ratelimited!(log::Level::Warn, "bad frame from guest: {e}")`.
#[macro_export]
macro_rules! ratelimited {
    ($lvl:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new();
        if log::log_enabled!($lvl) {
            if let Some(suppressed) = LIMIT.check() {
                if suppressed > 0 {
                    log::log!($lvl, "{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
                } else {
                    log::log!($lvl, $($arg)+);
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_bursts_then_suppresses_then_reports() {
        let rl = RateLimit::new();
        let t0 = Instant::now();
        for _ in 0..RateLimit::BURST {
            assert_eq!(rl.check_at(t0), Some(0));
        }
        assert_eq!(rl.check_at(t0), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), None);
        // Next window: the first message carries the count of the two dropped.
        assert_eq!(rl.check_at(t0 + RateLimit::WINDOW), Some(2));
        assert_eq!(rl.check_at(t0 + RateLimit::WINDOW), Some(0));
    }

    #[test]
    fn dependency_records_are_rate_limited_per_target_and_ours_are_not() {
        let logger = |threshold| Logger {
            sink: Sink::Stderr,
            own_prefix: &["airlock"],
            threshold,
            dependency_limits: Mutex::new(BTreeMap::new()),
        };
        let record = |target: &'static str| {
            Record::builder()
                .level(Level::Error)
                .target(target)
                .args(format_args!("x"))
                .build()
        };
        let info = logger(LevelFilter::Info);
        let admitted = |target| {
            (0..100)
                .filter(|_| info.admit(&record(target)).is_some())
                .count()
        };
        assert_eq!(admitted("virtio_queue::queue"), RateLimit::BURST as usize);
        // Another dependency has its own budget; our own code has none.
        assert_eq!(admitted("vhost_user_backend"), RateLimit::BURST as usize);
        assert_eq!(admitted("airlock_fs::device"), 100);
        // At debug level everything is shown.
        let debug = logger(LevelFilter::Debug);
        assert!((0..100).all(|_| debug.admit(&record("virtio_queue")).is_some()));
    }
}
