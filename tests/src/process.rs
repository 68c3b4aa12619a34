//! Process helpers: `/proc` readings the tests assert on, signals, and
//! waiting for a child with a deadline.

use std::fs;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// How often a child is polled while waiting for it with a deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Number of open file descriptors of process `pid` (entries of
/// `/proc/<pid>/fd`). Panics if the process does not exist.
pub fn fd_count(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fd");
    match fs::read_dir(&dir) {
        Ok(entries) => entries.count(),
        Err(e) => panic!("cannot list {dir}: {e}"),
    }
}

/// `/proc/<pid>/fd` as sorted `fd -> target` lines, for failure messages.
pub fn fd_listing(pid: u32) -> String {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return String::from("(cannot list)");
    };
    let mut lines: Vec<String> = entries
        .flatten()
        .map(|e| {
            let target = fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Resident set size of process `pid` in KiB (`VmRSS` of
/// `/proc/<pid>/status`). Panics if the process does not exist.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The anonymous part of the resident set of process `pid` in KiB
/// (`RssAnon`): the process' own heap and stacks, without the guest memory
/// a vhost-user daemon maps (shared memory, counted in `RssShmem`).
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon")
}

/// A `<field>: <n> kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in {path} (a zombie?)"))
}

/// Sends `signal` to a child that has not been reaped yet. A child that was
/// already reaped is left alone: its pid may belong to another process now.
pub(crate) fn signal_child(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return;
        };
        // SAFETY: kill(2) takes two integers and accesses no memory of this
        // process. The child is unreaped (try_wait just returned None and we
        // hold the only handle that can reap it), so `pid` still names it, at
        // worst as a zombie, and never an unrelated process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Waits until `child` exits or `timeout` passes; `None` on timeout.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(e) => panic!("cannot wait for process {}: {e}", child.id()),
        }
    }
}

/// SIGTERM, up to `grace` for the child to exit, then SIGKILL. Returns the
/// exit status and whether SIGKILL was needed.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> (ExitStatus, bool) {
    signal_child(child, libc::SIGTERM);
    if let Some(status) = wait_timeout(child, grace) {
        return (status, false);
    }
    // Child::kill sends SIGKILL unless the child was reaped already.
    let _ = child.kill();
    match child.wait() {
        Ok(status) => (status, true),
        Err(e) => panic!("cannot reap process {}: {e}", child.id()),
    }
}

/// Whether a process with this pid exists (as anything but a zombie).
pub fn process_exists(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reads_own_fd_count_and_rss() {
        let pid = std::process::id();
        let before = fd_count(pid);
        let files: Vec<_> = (0..5)
            .map(|_| fs::File::open("/proc/self/stat").unwrap())
            .collect();
        assert_eq!(fd_count(pid), before + files.len());
        assert!(rss_kib(pid) > 100);
        assert!(rss_anon_kib(pid) > 0 && rss_anon_kib(pid) <= rss_kib(pid));
    }

    #[test]
    fn terminate_needs_no_kill_for_a_polite_child_and_kill_for_a_stubborn_one() {
        let mut polite = Command::new("sleep").arg("100").spawn().unwrap();
        let (status, killed) = terminate(&mut polite, Duration::from_secs(5));
        assert!(!killed);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert!(!process_exists(polite.id()));

        let mut stubborn = Command::new("sh")
            .args([
                "-c",
                "trap '' TERM; echo ready; while :; do sleep 0.1; done",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the trap is installed before signalling.
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let (status, killed) = terminate(&mut stubborn, Duration::from_millis(300));
        assert!(killed);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}
