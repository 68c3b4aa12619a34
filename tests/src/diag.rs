//! Failure diagnostics: what a panicking test prints so the failure can be
//! understood from the CI log alone.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Lines of each log shown in a failure message.
pub const LOG_TAIL_LINES: usize = 40;
/// Lines of guest output shown in a failure message.
pub const OUTPUT_TAIL_LINES: usize = 200;

/// The logs of one rig (daemon logs are added as daemons are spawned), shared
/// by the rig, its VMs and their outputs.
#[derive(Clone, Default)]
pub(crate) struct Logs {
    inner: Arc<Mutex<LogList>>,
}

#[derive(Default)]
struct LogList {
    rig_dir: PathBuf,
    /// (title, path), in the order they were added.
    daemons: Vec<(String, PathBuf)>,
}

impl Logs {
    pub(crate) fn new(rig_dir: &Path) -> Self {
        let logs = Logs::default();
        logs.lock().rig_dir = rig_dir.to_path_buf();
        logs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogList> {
        // A panic while holding this lock leaves the list intact.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_daemon(&self, name: &str, path: &Path) {
        let mut list = self.lock();
        if !list.daemons.iter().any(|(_, p)| p == path) {
            list.daemons.push((name.to_string(), path.to_path_buf()));
        }
    }

    /// The tails of all daemon logs.
    pub(crate) fn daemon_tails(&self) -> String {
        let list = self.lock();
        let mut text = String::new();
        for (name, path) in &list.daemons {
            text.push_str(&file_tail(&format!("daemon {name}"), path, LOG_TAIL_LINES));
        }
        if !list.rig_dir.as_os_str().is_empty() {
            let _ = writeln!(
                text,
                "(rig directory {}; set AIRLOCK_KEEP=1 to keep it)",
                list.rig_dir.display()
            );
        }
        text
    }
}

/// The VM-side files of one boot.
#[derive(Clone)]
pub(crate) struct VmLogs {
    pub console: PathBuf,
    pub qemu_stderr: PathBuf,
    pub rig: Logs,
}

impl VmLogs {
    /// A failure report: `what` happened, the guest output, then the logs.
    pub(crate) fn report(&self, what: &str, guest_output: &str) -> String {
        let mut text = format!("{what}\n");
        text.push_str(&section(
            "guest output (ttyS1)",
            &tail_lines(guest_output, OUTPUT_TAIL_LINES),
        ));
        text.push_str(&file_tail(
            "guest console (ttyS0)",
            &self.console,
            LOG_TAIL_LINES,
        ));
        text.push_str(&file_tail("QEMU stderr", &self.qemu_stderr, LOG_TAIL_LINES));
        text.push_str(&self.rig.daemon_tails());
        text
    }
}

/// "--- title ---" followed by `body` (ending in a newline).
pub(crate) fn section(title: &str, body: &str) -> String {
    let mut text = format!("--- {title} ---\n");
    if body.is_empty() {
        text.push_str("(empty)\n");
    } else {
        text.push_str(body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// A section with the last `lines` lines of the file at `path`.
pub(crate) fn file_tail(title: &str, path: &Path, lines: usize) -> String {
    let title = format!("{title}: {}, last {lines} lines", path.display());
    match fs::read(path) {
        Ok(bytes) => section(&title, &tail_lines(&printable(&bytes), lines)),
        Err(e) => section(&title, &format!("(cannot read: {e})")),
    }
}

/// Kernel messages that start a guest crash report.
fn is_crash_marker(line: &str) -> bool {
    ["Kernel panic", "BUG:", "Oops:", "general protection fault"]
        .iter()
        .any(|m| line.contains(m))
}

/// The last `n` lines of `text`, with a note of how many were left out; left
/// out lines that start a guest crash report are kept.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_string();
    }
    let (earlier, shown) = lines.split_at(lines.len() - n);
    let mut out = format!("({} earlier lines not shown)\n", earlier.len());
    // A guest crash's first line is what a reader needs most, and a long
    // stack trace can push it out of the window: keep those lines.
    for line in earlier.iter().filter(|l| is_crash_marker(l)) {
        out.push_str(line);
        out.push('\n');
    }
    if earlier.iter().any(|l| is_crash_marker(l)) {
        out.push_str("(…)\n");
    }
    for line in shown {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Bytes as text with terminal control sequences (SeaBIOS clears the screen,
/// the kernel may print `\r`) made visible instead of acting on the reader's
/// terminal.
pub(crate) fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| c != '\r')
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => format!("^{}", char::from(((c as u32) & 0x1f) as u8 + b'@')),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_counts_the_rest() {
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(
            tail_lines("a\nb\nc\nd", 2),
            "(2 earlier lines not shown)\nc\nd\n"
        );
        assert_eq!(
            tail_lines("[1] Kernel panic - x\na\nb\nc", 2),
            "(2 earlier lines not shown)\n[1] Kernel panic - x\n(…)\nb\nc\n"
        );
    }

    #[test]
    fn printable_neutralises_escape_sequences() {
        assert_eq!(printable(b"\x1b[2Jhi\r\n\tx"), "^[[2Jhi\n\tx");
    }
}
