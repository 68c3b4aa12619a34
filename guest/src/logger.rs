//! Log lines on stderr (systemd's journal takes them from there).

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

use crate::args::LogLevel;

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("airlock_guest")
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // One write per line: stderr is often shared (a console, a
            // terminal) and pieces of lines must not interleave.
            let line = format!("airlock-guest: {}: {}\n", record.level(), record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger with threshold `level`.
pub fn init(level: LogLevel) {
    let level = match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    };
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
