//! QEMU: the command line, the test channel (the guest's ttyS1 on QEMU's
//! stdin/stdout), the per-VM deadline, and the vhost-user device arguments.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::diag::VmLogs;
use crate::process;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The machine type. q35 and pc boot equally fast here (~2.6 s to the first
/// script line with the PVH kernel); q35 is what libvirt users run.
pub const MACHINE: &str = "q35";
/// The guest kernel command line. `panic=-1` with QEMU's `-no-reboot` turns a
/// guest panic into a QEMU exit; `quiet loglevel=4` keeps the console to
/// warnings and worse (panics still show). `cryptomgr.notests` skips the
/// crypto self-tests (~0.3 s under TCG); `mitigations=off` because TCG's
/// `-cpu max` looks vulnerable to everything and page-table isolation makes
/// every guest system call slower. `no_timer_check`: at boot the kernel
/// checks that the IO-APIC delivers timer ticks within a few busy-wait
/// loops; a TCG guest on a busy host misses that window and panics ("IO-APIC
/// + timer doesn't work!"), so the check is off, as for most virtual machines.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet loglevel=4 panic=-1 cryptomgr.notests mitigations=off no_timer_check";
/// The line the guest's init prints on ttyS1 after the script: `AIRLOCK-EXIT <status>`.
pub const EXIT_MARKER: &str = "AIRLOCK-EXIT";
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Default time a VM may run, from `boot` to QEMU's exit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest `\nAIRLOCK-EXIT <i32>\n`.
const EXIT_LINE_MAX: usize = 32;
/// How long QEMU gets to power off after the script finished.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

/// What to boot. `VmConfig { script: "...".into(), ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in MiB (also the size of the shared memfd backend).
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub cpus: u32,
    /// The guest's `/test.sh`, run by busybox `sh` with ttyS1 as stdin,
    /// stdout and stderr; its exit status is the VM's result.
    pub script: String,
    /// Extra QEMU arguments: the devices under test (see [`fs_device_args`],
    /// [`net_device_args`]).
    pub qemu_args: Vec<OsString>,
    /// How long the VM may run; it is then killed and waiting on it panics.
    pub timeout: Duration,
    /// Host files copied into the guest's root file system before it boots,
    /// as (name in `/`, host path); executable (mode 0755). E.g. a helper
    /// program such as `airlock-guest-probe` (the guest has the host's
    /// glibc, so dynamically linked programs built here run there).
    pub files: Vec<(String, PathBuf)>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 1,
            script: String::new(),
            qemu_args: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            files: Vec::new(),
        }
    }
}

impl VmConfig {
    /// A default configuration running `script`.
    pub fn new(script: impl Into<String>) -> Self {
        VmConfig {
            script: script.into(),
            ..VmConfig::default()
        }
    }
}

/// Chardev/netdev/device ids unique within this process (and so within any
/// QEMU command line built in it).
fn unique_id(kind: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("airlock-{kind}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A path as a QEMU option value: commas doubled (QEMU's escape).
fn option_path(path: &Path) -> String {
    let Some(text) = path.to_str() else {
        panic!(
            "QEMU options cannot carry the non-UTF-8 path {}",
            path.display()
        );
    };
    text.replace(',', ",,")
}

/// Arguments attaching a vhost-user-fs device (virtio-fs, mount tag `tag`)
/// served on the Unix socket `socket`. The guest mounts it with
/// `mount -t virtiofs <tag> <dir>`.
pub fn fs_device_args(socket: &Path, tag: &str, queue_size: u16) -> Vec<OsString> {
    let chardev = unique_id("fs");
    vec![
        "-chardev".into(),
        format!("socket,id={chardev},path={}", option_path(socket)).into(),
        "-device".into(),
        format!("vhost-user-fs-pci,chardev={chardev},tag={tag},queue-size={queue_size}").into(),
    ]
}

/// Arguments attaching a virtio-net device with MAC `mac` whose backend is a
/// vhost-user server on `socket`. With `reconnect`, QEMU redials the socket
/// every second after the backend goes away (`reconnect=1`). The guest
/// configures it with `udhcpc -i eth0 -O mtu` (or `dhcpcd`).
pub fn net_device_args(socket: &Path, mac: &str, reconnect: bool) -> Vec<OsString> {
    let chardev = unique_id("netchr");
    let netdev = unique_id("net");
    let reconnect = if reconnect { ",reconnect=1" } else { "" };
    vec![
        "-chardev".into(),
        format!(
            "socket,id={chardev},path={}{reconnect}",
            option_path(socket)
        )
        .into(),
        "-netdev".into(),
        format!("vhost-user,id={netdev},chardev={chardev}").into(),
        "-device".into(),
        // romfile=: no iPXE option ROM, which only costs boot time here.
        // vectors=0: QEMU 7.2 under TCG segfaults in vhost_net_start when
        // MSI-X is on (vhost-user-net turns off guest notifier masking, and
        // unmasking then takes the KVM irqfd path, whose table is NULL
        // without KVM; fixed in QEMU 8.0, docs/qemu-7.2-tcg-msix.md); INTx
        // works.
        // host_mtu: the device advertises the MTU the gateway offers.
        format!("virtio-net-pci,netdev={netdev},mac={mac},romfile=,vectors=0,host_mtu=65520")
            .into(),
    ]
}

/// Arguments attaching a virtio-serial port named `name` whose host side
/// is the Unix socket `socket`, served by airlock-fs' `--notify-socket`
/// (QEMU connects as a client; `reconnect=1` lets QEMU start before the
/// socket exists and come back to a restarted daemon). The guest helper
/// `airlock-guest watch` finds the port by its name.
pub fn notify_device_args(socket: &Path, name: &str) -> Vec<OsString> {
    let chardev = unique_id("notifychr");
    let bus = unique_id("vser");
    vec![
        "-chardev".into(),
        format!(
            "socket,id={chardev},path={},reconnect=1",
            option_path(socket)
        )
        .into(),
        "-device".into(),
        format!("virtio-serial-pci,id={bus}").into(),
        "-device".into(),
        format!("virtserialport,bus={bus}.0,chardev={chardev},name={name}").into(),
    ]
}

/// Files of one boot, chosen by the rig.
pub(crate) struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub logs: VmLogs,
}

/// The QEMU command line for `config`.
pub(crate) fn command(config: &VmConfig, files: &BootFiles) -> Command {
    let memory = config.memory_mib;
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "tcg", "-machine", MACHINE, "-cpu", "max"])
        .args(["-m", &memory.to_string(), "-smp", &config.cpus.to_string()])
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=mem,size={memory}M,share=on"
        ))
        .args(["-numa", "node,memdev=mem"])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&files.kernel)
        .arg("-initrd")
        .arg(&files.initrd)
        .args(["-append", KERNEL_CMDLINE])
        .arg("-serial")
        .arg(format!("file:{}", option_path(&files.logs.console)))
        .args([
            "-chardev",
            "stdio,id=test,signal=off",
            "-serial",
            "chardev:test",
        ])
        .args(&config.qemu_args);
    cmd
}

/// A running guest. Dropping it kills and reaps QEMU.
pub struct Vm {
    child: Arc<Mutex<Child>>,
    pid: u32,
    stdin: Option<ChildStdin>,
    chunks: Receiver<Vec<u8>>,
    /// Everything the guest wrote to ttyS1 so far.
    output: Vec<u8>,
    /// End of the output consumed by `wait_for`.
    cursor: usize,
    /// Complete lines before this offset (and after `cursor`) did not match
    /// the needle currently waited for.
    scanned: usize,
    /// QEMU closed its stdout: it has exited or is exiting.
    eof: bool,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    watchdog: Watchdog,
    logs: VmLogs,
}

/// Outcome of waiting for more output.
enum Pump {
    Data,
    Eof,
    Timeout,
}

impl Vm {
    /// Starts QEMU. The console log and QEMU's stderr go to the files in
    /// `files.logs`.
    pub(crate) fn launch(config: &VmConfig, files: BootFiles) -> Vm {
        let stderr = File::create(&files.logs.qemu_stderr)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", files.logs.qemu_stderr.display()));
        let mut cmd = command(config, &files);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e} ({cmd:?})"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout was piped");
        let (sender, chunks) = mpsc::channel();
        thread::Builder::new()
            .name(format!("qemu-{pid}-ttyS1"))
            .spawn(move || read_chunks(stdout, sender))
            .unwrap_or_else(|e| panic!("cannot start the ttyS1 reader thread: {e}"));
        let child = Arc::new(Mutex::new(child));
        let deadline = started + config.timeout;
        let watchdog = Watchdog::start(Arc::clone(&child), deadline, pid);
        Vm {
            child,
            pid,
            stdin,
            chunks,
            output: Vec::new(),
            cursor: 0,
            scanned: 0,
            eof: false,
            started,
            deadline,
            timeout: config.timeout,
            watchdog,
            logs: files.logs,
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the guest has written to the test channel so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Path of the guest's console log (ttyS0: kernel messages, init's errors).
    pub fn console_log(&self) -> &Path {
        &self.logs.console
    }

    /// Reads guest output until a complete line containing `needle` arrives
    /// after the previous `wait_for` match. Returns the output from the end
    /// of that previous match through the matching line (so the match is the
    /// last line). Panics with diagnostics if `timeout` (or the VM's own
    /// deadline) passes first or the guest finishes without such a line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = (Instant::now() + timeout).min(self.deadline);
        self.scanned = self.scanned.max(self.cursor);
        loop {
            if let Some(end) = self.find_line(needle.as_bytes()) {
                let text = String::from_utf8_lossy(&self.output[self.cursor..end]).into_owned();
                self.cursor = end;
                self.scanned = end;
                return text;
            }
            if self.eof {
                let status = self.reap();
                if self.watchdog.fired() {
                    self.fail_timeout();
                }
                self.fail(&format!(
                    "{} without the guest printing a line containing {needle:?}",
                    self.describe_end(status)
                ));
            }
            match self.pump(deadline) {
                Pump::Data | Pump::Eof => {}
                Pump::Timeout if Instant::now() >= self.deadline => self.fail_timeout(),
                Pump::Timeout => self.fail(&format!(
                    "no line containing {needle:?} within {timeout:?} ({:.1} s after boot)",
                    self.started.elapsed().as_secs_f64()
                )),
            }
        }
    }

    /// Writes `line` and a newline to the guest's ttyS1 (the script's stdin).
    pub fn send_line(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&bytes).and_then(|()| stdin.flush()),
            None => Err(io::Error::other("stdin already closed")),
        };
        if let Err(e) = result {
            self.fail(&format!("cannot send {line:?} to the guest: {e}"));
        }
    }

    /// Waits for the script to finish and QEMU to exit; returns the script's
    /// exit status and output. Panics with diagnostics if the VM's timeout
    /// passes first (QEMU is killed) or QEMU exits without the script's
    /// exit line (guest panic, QEMU error, [`Vm::kill`]).
    pub fn wait(mut self) -> GuestOutput {
        let mut deadline = self.deadline;
        while !self.eof {
            let before = self.output.len();
            match self.pump(deadline) {
                Pump::Data => {
                    // An exit line completed by this chunk starts at most a
                    // few bytes before it; no need to rescan everything.
                    let tail = before.saturating_sub(EXIT_LINE_MAX);
                    if parse_exit_line(&self.output[tail..]).is_some() {
                        // Leave QEMU time to power off (sync, ACPI), not forever:
                        // a guest stuck in sync on a dead file system must not
                        // turn a finished test into a hang.
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    }
                }
                Pump::Eof => {}
                Pump::Timeout if self.exit_line().is_some() => {
                    eprintln!(
                        "airlock-e2e: QEMU (pid {}) did not power off within {POWEROFF_GRACE:?} \
                         of the script's end; killing it",
                        self.pid
                    );
                    self.kill();
                    self.drain();
                }
                Pump::Timeout => self.fail_timeout(),
            }
        }
        let end = self.reap();
        if self.watchdog.fired() && self.exit_line().is_none() {
            self.fail_timeout();
        }
        match self.exit_line() {
            Some((status, start)) => GuestOutput {
                status,
                output: String::from_utf8_lossy(&self.output[..start]).into_owned(),
                logs: self.logs.clone(),
            },
            None => self.fail(&format!(
                "{} before the guest script finished",
                self.describe_end(end)
            )),
        }
    }

    /// For a VM expected not to run its script (QEMU refusing a device):
    /// waits up to `timeout` for QEMU to exit and returns its exit status
    /// and its stderr. Panics with diagnostics if the script ran to its end
    /// or QEMU is still running at the deadline.
    pub fn wait_for_failure(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = (Instant::now() + timeout).min(self.deadline);
        while !self.eof {
            if let Pump::Timeout = self.pump(deadline) {
                self.fail(&format!(
                    "QEMU was expected to fail but still runs after {timeout:?}"
                ));
            }
        }
        let status = self.reap();
        if self.exit_line().is_some() {
            self.fail("QEMU was expected to fail but the guest script ran to its end");
        }
        let Some(status) = status else {
            self.fail("QEMU's exit status is unknown");
        };
        let stderr = std::fs::read_to_string(&self.logs.qemu_stderr).unwrap_or_default();
        (status, stderr)
    }

    /// Kills QEMU with SIGKILL and reaps it (a crashing VMM, as far as the
    /// daemons can tell).
    pub fn kill(&mut self) {
        let mut child = self.lock_child();
        let _ = child.kill();
        let _ = child.wait();
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receives output until `deadline`.
    fn pump(&mut self, deadline: Instant) -> Pump {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self.chunks.recv_timeout(remaining) {
            Ok(chunk) => {
                self.output.extend_from_slice(&chunk);
                Pump::Data
            }
            Err(RecvTimeoutError::Timeout) => Pump::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                Pump::Eof
            }
        }
    }

    /// Reads the rest of the output of a killed QEMU (its stdout closes as it dies).
    fn drain(&mut self) {
        while !self.eof {
            if let Pump::Timeout = self.pump(Instant::now() + Duration::from_secs(10)) {
                return;
            }
        }
    }

    /// End offset (after the newline) of the first complete line at or after
    /// `scanned` that contains `needle`.
    fn find_line(&mut self, needle: &[u8]) -> Option<usize> {
        while let Some(newline) = self.output[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + newline + 1;
            let line = &self.output[self.scanned..end];
            self.scanned = end;
            if needle.is_empty() || line.windows(needle.len()).any(|w| w == needle) {
                return Some(end);
            }
        }
        None
    }

    /// The script's exit status and where init's exit line starts (the
    /// newline init prints before `AIRLOCK-EXIT`), once the line is complete.
    fn exit_line(&self) -> Option<(i32, usize)> {
        parse_exit_line(&self.output)
    }

    /// QEMU's exit status, waiting a little for it after its stdout closed.
    fn reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.lock_child();
        if let Some(status) = process::wait_timeout(&mut child, Duration::from_secs(10)) {
            return Some(status);
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// "QEMU exited (<status>) <t> s after boot".
    fn describe_end(&self, status: Option<ExitStatus>) -> String {
        let status = match status {
            Some(status) => status.to_string(),
            None => "status unknown".to_string(),
        };
        format!(
            "QEMU exited ({status}) {:.1} s after boot",
            self.started.elapsed().as_secs_f64()
        )
    }

    fn fail_timeout(&mut self) -> ! {
        self.kill();
        self.fail(&format!(
            "the VM timed out after {:?}; QEMU (pid {}) was killed",
            self.timeout, self.pid
        ))
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}",
            self.logs
                .report(what, &String::from_utf8_lossy(&self.output))
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.watchdog.cancel();
        drop(self.stdin.take());
        self.kill();
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.pid)
            .field("console", &self.logs.console)
            .finish_non_exhaustive()
    }
}

/// Finds init's `\nAIRLOCK-EXIT <status>\n` (the last one: a script may
/// print the marker text itself). Returns the status and the offset of the
/// newline before the marker, which ends the script's output.
fn parse_exit_line(output: &[u8]) -> Option<(i32, usize)> {
    let marker = format!("\n{EXIT_MARKER} ");
    let marker = marker.as_bytes();
    let start = output.windows(marker.len()).rposition(|w| w == marker)?;
    let rest = &output[start + marker.len()..];
    let newline = rest.iter().position(|&b| b == b'\n')?;
    let status = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
    Some((status, start))
}

/// Forwards QEMU's stdout (the guest's ttyS1) to the channel until EOF.
fn read_chunks(mut stdout: impl Read, sender: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if sender.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Kills QEMU at the VM's deadline even if nobody is waiting on the VM (the
/// test may be blocked on something else entirely).
struct Watchdog {
    shared: Arc<WatchdogShared>,
}

struct WatchdogShared {
    cancelled: Mutex<bool>,
    wake: Condvar,
    fired: AtomicBool,
}

impl Watchdog {
    fn start(child: Arc<Mutex<Child>>, deadline: Instant, pid: u32) -> Watchdog {
        let shared = Arc::new(WatchdogShared {
            cancelled: Mutex::new(false),
            wake: Condvar::new(),
            fired: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("qemu-{pid}-watchdog"))
            .spawn(move || {
                let shared = thread_shared;
                let mut cancelled = shared.cancelled.lock().unwrap_or_else(|e| e.into_inner());
                while !*cancelled {
                    let now = Instant::now();
                    if now >= deadline {
                        shared.fired.store(true, Ordering::SeqCst);
                        drop(cancelled);
                        let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                        // No-op if the child was reaped already.
                        let _ = child.kill();
                        return;
                    }
                    cancelled = shared
                        .wake
                        .wait_timeout(cancelled, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            });
        if let Err(e) = spawned {
            panic!("cannot start the QEMU watchdog thread: {e}");
        }
        Watchdog { shared }
    }

    fn cancel(&self) {
        *self
            .shared
            .cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
    }

    fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }
}

/// What a guest script produced.
pub struct GuestOutput {
    /// The script's exit status.
    pub status: i32,
    /// Everything the script wrote to stdout and stderr (one stream, ttyS1).
    pub output: String,
    logs: VmLogs,
}

impl GuestOutput {
    /// Panics with the output, console tail and daemon log tails unless the
    /// script exited with status 0.
    pub fn assert_success(&self) -> &Self {
        self.assert_status(0)
    }

    /// Panics with diagnostics unless the script exited with `expected`.
    pub fn assert_status(&self, expected: i32) -> &Self {
        if self.status != expected {
            self.fail(&format!(
                "the guest script exited with status {}, expected {expected}",
                self.status
            ));
        }
        self
    }

    /// Panics with diagnostics unless the output contains `needle`.
    pub fn assert_contains(&self, needle: &str) -> &Self {
        if !self.output.contains(needle) {
            self.fail(&format!("the guest output does not contain {needle:?}"));
        }
        self
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{}", self.logs.report(what, &self.output))
    }
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOutput")
            .field("status", &self.status)
            .field("output", &self.output)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_line_needs_the_whole_line_and_takes_the_last() {
        assert_eq!(parse_exit_line(b"hi\n\nAIRLOCK-EXIT 3"), None);
        assert_eq!(parse_exit_line(b"hi\n\nAIRLOCK-EXIT 3\n"), Some((3, 3)));
        assert_eq!(parse_exit_line(b"\nAIRLOCK-EXIT 0\n"), Some((0, 0)));
        assert_eq!(
            parse_exit_line(b"x\nAIRLOCK-EXIT 1\ny\nAIRLOCK-EXIT 2\n"),
            Some((2, 18))
        );
        assert_eq!(parse_exit_line(b"\nAIRLOCK-EXIT oops\n"), None);
    }

    /// The value of `key=` in a QEMU option string.
    fn option<'a>(options: &'a str, key: &str) -> &'a str {
        options
            .split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {options}"))
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn fs_device_args_link_chardev_and_device_with_fresh_ids() {
        let a = fs_device_args(Path::new("/tmp/a,b/fs.sock"), "share", 1024);
        let a = strings(&a);
        assert_eq!((a[0], a[2]), ("-chardev", "-device"));
        assert!(a[1].ends_with(",path=/tmp/a,,b/fs.sock"), "{}", a[1]);
        assert!(a[3].starts_with("vhost-user-fs-pci,"), "{}", a[3]);
        assert_eq!(option(a[3], "chardev"), option(a[1], "id"));
        assert_eq!(option(a[3], "tag"), "share");
        assert_eq!(option(a[3], "queue-size"), "1024");

        let b = fs_device_args(Path::new("/tmp/fs.sock"), "share", 1024);
        assert_ne!(option(strings(&b)[1], "id"), option(a[1], "id"));
    }

    #[test]
    fn net_device_args_link_chardev_netdev_and_device() {
        let args = net_device_args(Path::new("/tmp/n.sock"), "52:54:00:12:34:56", true);
        let args = strings(&args);
        assert_eq!(
            (args[0], args[2], args[4]),
            ("-chardev", "-netdev", "-device")
        );
        assert!(
            args[1].ends_with(",path=/tmp/n.sock,reconnect=1"),
            "{}",
            args[1]
        );
        assert!(args[3].starts_with("vhost-user,"), "{}", args[3]);
        assert_eq!(option(args[3], "chardev"), option(args[1], "id"));
        assert!(args[5].starts_with("virtio-net-pci,"), "{}", args[5]);
        assert_eq!(option(args[5], "netdev"), option(args[3], "id"));
        assert_eq!(option(args[5], "mac"), "52:54:00:12:34:56");
        assert_eq!(option(args[5], "romfile"), "");

        let plain = net_device_args(Path::new("/tmp/n.sock"), "52:54:00:12:34:56", false);
        assert!(!strings(&plain)[1].contains("reconnect"));
    }

    #[test]
    fn notify_device_args_put_the_named_port_on_its_own_bus() {
        let args = notify_device_args(Path::new("/tmp/notify.sock"), "org.airlock.notify");
        let args = strings(&args);
        assert_eq!(
            (args[0], args[2], args[4]),
            ("-chardev", "-device", "-device")
        );
        assert!(
            args[1].ends_with(",path=/tmp/notify.sock,reconnect=1"),
            "{}",
            args[1]
        );
        assert!(args[3].starts_with("virtio-serial-pci,"), "{}", args[3]);
        assert!(args[5].starts_with("virtserialport,"), "{}", args[5]);
        assert_eq!(option(args[5], "chardev"), option(args[1], "id"));
        assert_eq!(
            option(args[5], "bus"),
            format!("{}.0", option(args[3], "id"))
        );
        assert_eq!(option(args[5], "name"), "org.airlock.notify");
    }
}
