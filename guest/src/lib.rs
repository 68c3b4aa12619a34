//! airlock-guest: the guest side of airlock-fs' `--notify-socket`.
//!
//! airlock-fs watches the shared directory on the host and sends each
//! change (path, what changed) over a virtio-serial port named
//! `org.airlock.notify`. `airlock-guest watch` finds that port itself
//! (`/sys/class/virtio-ports/*/name`: minimal guests have no udev for
//! `/dev/virtio-ports/` links), reads the changes and makes the guest
//! kernel emit the inotify events a watcher there expects, without
//! changing contents, mode or modification times on the host (see
//! [`apply`] and `docs/notify.md` for exactly which events).
//!
//! - [`args`]: the command line;
//! - [`port`]: finding and opening the port;
//! - [`mount`]: the share's mount point, paths beneath it;
//! - [`apply`]: changes → local operations → inotify events;
//! - [`watch`]: the session (HELLO, events, ACK, reconnects);
//! - [`logger`]: log lines on stderr.

pub mod apply;
pub mod args;
pub mod logger;
pub mod mount;
pub mod port;
pub mod watch;

use std::error::Error;
use std::process::ExitCode;

/// Prints `err` and its causes (`error: …` / `caused by: …`) and returns
/// `code` as the exit status.
pub fn report(err: &dyn Error, code: u8) -> ExitCode {
    let mut text = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!("\ncaused by: {cause}"));
        source = cause.source();
    }
    eprintln!("{text}");
    ExitCode::from(code)
}
