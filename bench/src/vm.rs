//! A benchmark's guest: the end-to-end rig (`airlock-e2e`) driven as a
//! conversation. The rig reports failures by panicking (it is made for
//! tests); here each call catches that and returns it as an [`Error`], so a
//! failing peer costs one table row, not the whole run.

use std::any::Any;
use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_e2e::{DaemonHandle, Rig, Vm, VmConfig};

/// Errors of the rig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rig panicked; the message carries its diagnostics.
    #[error("{what} failed: {message}")]
    Rig {
        /// What was being done.
        what: String,
        /// The rig's panic message (guest output, console and daemon log tails).
        message: String,
    },
    /// The VM is gone (an earlier step failed).
    #[error("the guest is not running")]
    NoVm,
}

/// Longest rig message kept in an error (the full text went to stderr).
const MESSAGE_MAX: usize = 4000;

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    };
    if text.len() <= MESSAGE_MAX {
        return text;
    }
    let mut cut = MESSAGE_MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… (truncated)", &text[..cut])
}

/// Runs `f`, turning a rig panic into [`Error::Rig`].
pub(crate) fn guard<T>(what: impl Into<String>, f: impl FnOnce() -> T) -> Result<T, Error> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| Error::Rig {
        what: what.into(),
        message: panic_message(payload),
    })
}

/// Where the workspace's release binaries are: next to this executable
/// (`target/release/airlock-bench`).
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// One guest and the daemons serving it. Dropping it kills QEMU, stops the
/// daemons and removes the temporary directory.
pub struct Guest {
    // Declared before the rig: dropped (QEMU killed) first.
    vm: Option<Vm>,
    rig: Rig,
}

impl Guest {
    /// A fresh rig directory `/tmp/airlock-<name>-XXXXXX`.
    pub fn new(name: &str) -> Result<Guest, Error> {
        let rig = guard(format!("creating rig {name}"), || Rig::new(name))?;
        Ok(Guest { vm: None, rig })
    }

    /// The rig's temporary directory (sockets, logs, shares).
    pub fn dir(&self) -> &Path {
        self.rig.dir()
    }

    /// Starts a daemon (log in `<dir>/<name>.log`) and, if `socket` is
    /// given, waits until it listens there.
    pub fn spawn_daemon(
        &mut self,
        name: &str,
        cmd: Command,
        socket: Option<&Path>,
    ) -> Result<DaemonHandle, Error> {
        let rig = &mut self.rig;
        let handle = guard(format!("starting {name}"), || rig.spawn_daemon(name, cmd))?;
        if let Some(socket) = socket {
            let rig = &self.rig;
            guard(format!("waiting for {name} to listen"), || {
                rig.wait_for_socket(socket, Duration::from_secs(20))
            })?;
        }
        Ok(handle)
    }

    /// Boots the guest with `script` and extra QEMU arguments.
    pub fn boot(
        &mut self,
        script: String,
        qemu_args: Vec<OsString>,
        memory_mib: u32,
        timeout: Duration,
    ) -> Result<(), Error> {
        let config = VmConfig {
            memory_mib,
            cpus: 1,
            script,
            qemu_args,
            timeout,
            ..VmConfig::default()
        };
        let rig = &mut self.rig;
        let vm = guard("booting the guest", || rig.boot(config))?;
        self.vm = Some(vm);
        Ok(())
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.vm.as_ref().map(Vm::pid)
    }

    /// Waits for a guest line containing `needle`; returns the output since
    /// the previous match, through that line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, Error> {
        let vm = self.vm.as_mut().ok_or(Error::NoVm)?;
        let result = guard(format!("waiting for {needle:?} from the guest"), || {
            vm.wait_for(needle, timeout)
        });
        if result.is_err() {
            self.vm = None;
        }
        result
    }

    /// Sends a line to the guest script's stdin.
    pub fn send(&mut self, line: &str) -> Result<(), Error> {
        let vm = self.vm.as_mut().ok_or(Error::NoVm)?;
        let result = guard(format!("sending {line:?} to the guest"), || {
            vm.send_line(line)
        });
        if result.is_err() {
            self.vm = None;
        }
        result
    }

    /// Waits for the script to end and QEMU to exit.
    pub fn finish(&mut self) -> Result<(), Error> {
        let vm = self.vm.take().ok_or(Error::NoVm)?;
        guard("waiting for the guest to power off", || {
            vm.wait().assert_success();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let err = guard("x", || panic!("boom {}", 1)).unwrap_err();
        let long = guard("y", || panic!("{}", "é".repeat(MESSAGE_MAX))).unwrap_err();
        panic::set_hook(hook);
        assert_eq!(err.to_string(), "x failed: boom 1");
        assert!(long.to_string().ends_with("(truncated)"));
        assert_eq!(guard("z", || 5).unwrap(), 5);
    }
}
