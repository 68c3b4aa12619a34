//! [`Rig`]: one test's temporary directory, daemons and VMs, all cleaned up
//! when it is dropped — including when the test panics.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cpio;
use crate::daemon::DaemonHandle;
use crate::diag::{Logs, VmLogs};
use crate::guest::{guest_image, workspace_bin};
use crate::qemu::{BootFiles, Vm, VmConfig};

/// Where rig directories are created. Not `$TMPDIR`: Unix socket paths must
/// stay under 108 bytes.
const RIG_PARENT: &str = "/tmp";
/// Longest test-name part of a rig directory name.
const MAX_NAME_LEN: usize = 40;
/// How often [`Rig::wait_for_socket`] looks.
const SOCKET_POLL: Duration = Duration::from_millis(20);

/// One test's world: a unique temporary directory (sockets, logs, shared
/// directories live there), the daemons it started and the VMs it booted.
///
/// Dropping the rig stops every daemon (SIGTERM, SIGKILL after 2 s) and
/// removes the directory, unless `AIRLOCK_KEEP=1` is set: then only the
/// sockets are removed and the path is printed. Declare the rig before the
/// VMs it boots so they are dropped (killed) first.
pub struct Rig {
    dir: Option<TempDir>,
    path: PathBuf,
    daemons: Vec<DaemonHandle>,
    logs: Logs,
    boots: usize,
}

impl Rig {
    /// Creates the rig's directory, `/tmp/airlock-<test_name>-XXXXXX`.
    /// Unique across the threads and processes of parallel test runs.
    pub fn new(test_name: &str) -> Rig {
        let name: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_NAME_LEN)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("airlock-{name}-"))
            .tempdir_in(RIG_PARENT)
            .unwrap_or_else(|e| panic!("cannot create a rig directory in {RIG_PARENT}: {e}"));
        let path = dir.path().to_path_buf();
        // Searchable by everyone, listable by its owner only, as an admin's
        // /run/vm1 would be: daemons started as root serve as an
        // unprivileged user (nobody), which must still reach the proxy's
        // socket and reread the egress rules in here.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o711))
            .unwrap_or_else(|e| panic!("cannot open {} to other users: {e}", path.display()));
        Rig {
            dir: Some(dir),
            logs: Logs::new(&path),
            path,
            daemons: Vec::new(),
            boots: 0,
        }
    }

    /// The rig's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Path of the workspace binary `name` (`airlock-fs`, `airlock-net`, …)
    /// built with the test binary's profile. The first call for a name in a
    /// process runs `cargo build --bin <name>` so the binary is current.
    /// Panics with cargo's output if the build fails or there is no such
    /// binary.
    pub fn bin(name: &str) -> PathBuf {
        match workspace_bin(name) {
            Ok(path) => path,
            Err(message) => panic!("{message}"),
        }
    }

    /// Starts `cmd` as daemon `name`: stdout and stderr go to
    /// `<dir>/<name>.log` (appended, so a restarted daemon keeps one log),
    /// stdin is /dev/null. The rig stops it when dropped; its log tail is
    /// part of every failure report of this rig.
    pub fn spawn_daemon(&mut self, name: &str, cmd: Command) -> DaemonHandle {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "daemon name {name:?} must be a plain file name ([A-Za-z0-9._-])"
        );
        let log = self.path.join(format!("{name}.log"));
        let daemon = DaemonHandle::spawn(name, cmd, &log);
        self.logs.add_daemon(name, &log);
        self.daemons.push(daemon.clone());
        daemon
    }

    /// The daemons started so far, in order.
    pub fn daemons(&self) -> &[DaemonHandle] {
        &self.daemons
    }

    /// Waits until a process listens on the Unix socket `path` (pass the
    /// path the daemon was told to bind). It looks the socket up in
    /// `/proc/net/unix` instead of connecting: a vhost-user backend serves
    /// its first connection as the frontend's and may exit when it closes.
    /// Panics with the daemon logs if `timeout` passes first or one of the
    /// rig's daemons exits meanwhile.
    pub fn wait_for_socket(&self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_listening(path) {
                return;
            }
            for daemon in &self.daemons {
                if let Some(status) = daemon.unexpected_exit() {
                    self.fail(&format!(
                        "daemon {} exited ({status}) while waiting for {} to listen",
                        daemon.name(),
                        path.display()
                    ));
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "nothing listens on {} after {timeout:?}",
                    path.display()
                ));
            }
            thread::sleep(SOCKET_POLL);
        }
    }

    /// Whether a listening Unix socket is bound to `path`, in this process'
    /// network namespace or in a daemon's (one run by `ip netns exec`).
    fn is_listening(&self, path: &Path) -> bool {
        if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return false;
        }
        let mut names = vec![path.to_path_buf()];
        if let Ok(canonical) = fs::canonicalize(path) {
            names.push(canonical);
        }
        let tables = std::iter::once(PathBuf::from("/proc/net/unix")).chain(
            self.daemons
                .iter()
                .map(|d| PathBuf::from(format!("/proc/{}/net/unix", d.pid()))),
        );
        tables
            .filter_map(|table| fs::read_to_string(table).ok())
            .any(|table| unix_table_has_listener(&table, &names))
    }

    /// Boots a VM running `vm.script`. The guest image is built on the first
    /// boot of the process (`scripts/build-guest`; quick when cached). Files
    /// of the n-th boot of this rig: `console.log`, `qemu.log` (QEMU's
    /// stderr), `initrd`, with a `-n` suffix from the second boot on.
    pub fn boot(&mut self, vm: VmConfig) -> Vm {
        let image = guest_image();
        self.boots += 1;
        let suffix = match self.boots {
            1 => String::new(),
            n => format!("-{n}"),
        };
        let initrd = self.path.join(format!("initrd{suffix}"));
        if let Err(e) = write_initrd(&image.initramfs, &vm.script, &vm.files, &initrd) {
            panic!("cannot write {}: {e}", initrd.display());
        }
        let files = BootFiles {
            kernel: image.kernel.clone(),
            initrd,
            logs: VmLogs {
                console: self.path.join(format!("console{suffix}.log")),
                qemu_stderr: self.path.join(format!("qemu{suffix}.log")),
                rig: self.logs.clone(),
            },
        };
        Vm::launch(&vm, files)
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.logs.daemon_tails())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for daemon in self.daemons.iter().rev() {
            daemon.shut_down();
        }
        remove_sockets(&self.path);
        if std::env::var_os("AIRLOCK_KEEP").is_some_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("airlock-e2e: kept {}", dir.keep().display());
            }
        }
        // Otherwise TempDir's drop removes the directory.
    }
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig")
            .field("dir", &self.path)
            .field("daemons", &self.daemons)
            .finish_non_exhaustive()
    }
}

/// The initrd of one boot: a small uncompressed cpio holding `/test.sh`
/// (and the config's extra `files`), then the cached compressed initramfs. The kernel unpacks both, in this
/// order (the layout distributions use for early microcode). The other order
/// fails: the kernel's lz4 decoder reads whatever follows its stream as
/// another chunk.
fn write_initrd(
    initramfs: &Path,
    script: &str,
    files: &[(String, PathBuf)],
    out: &Path,
) -> io::Result<()> {
    let mut initrd = File::create(out)?;
    let contents = files
        .iter()
        .map(|(name, path)| {
            fs::read(path)
                .map(|bytes| (name.as_str(), bytes))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut entries = vec![("test.sh", 0o755, script.as_bytes())];
    entries.extend(
        contents
            .iter()
            .map(|(name, bytes)| (*name, 0o755, &bytes[..])),
    );
    // Padded to a multiple of 4 bytes, where the compressed archive starts.
    initrd.write_all(&cpio::archive(&entries)?)?;
    io::copy(&mut File::open(initramfs)?, &mut initrd)?;
    initrd.flush()
}

/// Whether `/proc/net/unix` text lists a listening socket bound to one of
/// `names`. Columns: `Num RefCount Protocol Flags Type St Inode Path`;
/// flag `__SO_ACCEPTCON` (0x10000) marks a listener.
fn unix_table_has_listener(table: &str, names: &[PathBuf]) -> bool {
    const SO_ACCEPTCON: u32 = 0x10000;
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(path)) = (fields.get(3), fields.get(7)) else {
            return false;
        };
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & SO_ACCEPTCON != 0);
        listening && names.iter().any(|n| n.as_os_str() == *path)
    })
}

/// Removes the Unix sockets under `dir` (a kept rig directory should not
/// hold dead sockets a later run might trip over).
fn remove_sockets(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_socket() {
            let _ = fs::remove_file(entry.path());
        } else if file_type.is_dir() {
            remove_sockets(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 22977 /tmp/a/fs.sock
0000000000000000: 00000002 00000000 00000000 0001 03 22978 /tmp/a/net.sock
0000000000000000: 00000003 00000000 00000000 0001 03 22979
";

    #[test]
    fn unix_table_lists_only_listeners() {
        assert!(unix_table_has_listener(
            TABLE,
            &[PathBuf::from("/tmp/a/fs.sock")]
        ));
        // Connected, not listening.
        assert!(!unix_table_has_listener(
            TABLE,
            &[PathBuf::from("/tmp/a/net.sock")]
        ));
        assert!(!unix_table_has_listener(
            TABLE,
            &[PathBuf::from("/tmp/a/other.sock")]
        ));
    }
}
