//! `--notify-socket`: the host's changes to the share reach the guest's
//! file watchers (inotify), through a virtio-serial port and the guest
//! helper `airlock-guest`. Design, wire format and what watchers see:
//! `docs/notify.md`.
//!
//! - [`fanotify`]: the fanotify group (one inode mark per directory, FID
//!   reporting) and the parser of its events;
//! - [`dirs`]: opening directories beneath the share, their identities;
//! - [`tree`]: identity → path of every watched directory;
//! - [`queue`]: coalescing, bounded changes waiting to be sent;
//! - [`channel`]: the protocol state of a connection (HELLO, window, ACK);
//! - `watcher`: the thread tying them together ([`start`]).

pub mod channel;
pub mod dirs;
pub mod fanotify;
pub mod queue;
pub mod tree;
mod watcher;

use std::io;
use std::path::PathBuf;

pub use watcher::start;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("--notify-socket: cannot open the share {0}")]
    OpenShare(PathBuf, #[source] io::Error),
    #[error(
        "--notify-socket: cannot watch the share with fanotify (it needs Linux 5.13 or later \
         and a file system that has file handles)"
    )]
    Fanotify(#[source] io::Error),
    #[error("--notify-socket: cannot use the listening socket")]
    Socket(#[source] io::Error),
    #[error("--notify-socket: cannot start the notify thread")]
    Thread(#[source] io::Error),
}
