//! Host daemons a test runs next to the guest (`airlock-fs`, `airlock-net`,
//! a peer such as `virtiofsd`, a test server): output captured to a log file,
//! always stopped and reaped.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::diag;
use crate::process;

/// How long a daemon gets to exit after SIGTERM when the rig is dropped.
pub const DROP_GRACE: Duration = Duration::from_secs(2);
/// How long [`DaemonHandle::terminate`] waits after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon started by [`crate::Rig::spawn_daemon`]. Cheap to clone; the rig
/// keeps a handle too and stops the daemon when it is dropped.
#[derive(Clone)]
pub struct DaemonHandle {
    inner: Arc<Daemon>,
}

struct Daemon {
    name: String,
    log_path: PathBuf,
    pid: u32,
    state: Mutex<State>,
}

struct State {
    child: Child,
    /// Set when the test stopped the daemon on purpose.
    stopped_by_test: bool,
}

impl DaemonHandle {
    /// Starts `cmd` with stdin from /dev/null and stdout and stderr appended
    /// to `log_path`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> DaemonHandle {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("cannot open daemon log {}: {e}", log_path.display()));
        // A restarted daemon appends to the same log; mark where each run starts.
        let _ = writeln!(log, "=== airlock-e2e: starting {name}: {cmd:?}");
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate {}: {e}", log_path.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start daemon {name} ({cmd:?}): {e}"));
        DaemonHandle {
            inner: Arc::new(Daemon {
                name: name.to_string(),
                log_path: log_path.to_path_buf(),
                pid: child.id(),
                state: Mutex::new(State {
                    child,
                    stopped_by_test: false,
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name given to `spawn_daemon` (also the log's file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Path of the file receiving the daemon's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// Everything the daemon has written so far (stdout and stderr; lossy UTF-8).
    pub fn log(&self) -> String {
        match fs::read(&self.inner.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => panic!("cannot read {}: {e}", self.inner.log_path.display()),
        }
    }

    /// Waits until the daemon's log contains `needle` and returns the log.
    /// Gives up, returning the log as the error, when the daemon exits
    /// without having written it or `timeout` passes.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the log before asking whether the daemon lives: a line
            // written just before it exited is still found.
            let exited = self.try_wait().is_some();
            let log = self.log();
            if log.contains(needle) {
                return Ok(log);
            }
            if exited || Instant::now() >= deadline {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `needle` appears `count` times in the daemon's log (a
    /// state the daemon announces each time it reaches it, such as "ready
    /// for a frontend"); panics with the log if the daemon exits or
    /// `timeout` passes first.
    pub fn wait_for_log_lines(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_wait();
            let log = self.log();
            if log.matches(needle).count() >= count {
                return;
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) while waiting for {needle:?} {count} times:\n{log}",
                    self.name()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {} log never showed {needle:?} {count} times within {timeout:?}:\n{log}",
                self.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon is still running (reaps it if it has exited).
    pub fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// The exit status if the daemon has exited, without waiting.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        match state.child.try_wait() {
            Ok(status) => status,
            Err(e) => panic!("cannot wait for daemon {}: {e}", self.inner.name),
        }
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut state = self.state();
        process::wait_timeout(&mut state.child, timeout)
    }

    /// Sends SIGTERM and waits for the daemon to exit. Panics, with the log
    /// tail, if it is still running after [`TERMINATE_TIMEOUT`] (it is then
    /// killed). Returns at once if it had already exited.
    pub fn terminate(&self) -> ExitStatus {
        let mut state = self.state();
        state.stopped_by_test = true;
        let (status, killed) = process::terminate(&mut state.child, TERMINATE_TIMEOUT);
        drop(state);
        if killed {
            panic!(
                "daemon {} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM and was killed\n{}",
                self.inner.name,
                diag::file_tail("daemon log", &self.inner.log_path, diag::LOG_TAIL_LINES)
            );
        }
        status
    }

    /// Sends SIGKILL (a crash, as far as anyone else can tell) and reaps it.
    pub fn kill(&self) -> ExitStatus {
        let mut state = self.state();
        state.stopped_by_test = true;
        let _ = state.child.kill();
        state
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap daemon {}: {e}", self.inner.name))
    }

    /// `Some(status)` if the daemon exited although the test did not stop it.
    pub(crate) fn unexpected_exit(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        if state.stopped_by_test {
            return None;
        }
        state.child.try_wait().ok().flatten()
    }

    /// Stops the daemon for good: SIGTERM, SIGKILL after [`DROP_GRACE`].
    /// Never panics (it runs while a failed test unwinds).
    pub(crate) fn shut_down(&self) {
        let mut state = self.state();
        if !matches!(state.child.try_wait(), Ok(None)) {
            return;
        }
        let (_, killed) = process::terminate(&mut state.child, DROP_GRACE);
        if killed {
            eprintln!(
                "airlock-e2e: daemon {} (pid {}) ignored SIGTERM for {DROP_GRACE:?}; killed",
                self.inner.name, self.inner.pid
            );
        }
    }
}

impl std::fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonHandle")
            .field("name", &self.inner.name)
            .field("pid", &self.inner.pid)
            .field("log", &self.inner.log_path)
            .finish()
    }
}
