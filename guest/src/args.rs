//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Log threshold.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    /// Also one line per change applied.
    Debug,
}

#[derive(Parser, Debug)]
#[command(
    name = "airlock-guest",
    version,
    about = "The guest side of Airlock: makes host file changes visible to the guest's file watchers",
    long_about = "airlock-guest runs inside a QEMU guest next to a virtio-fs share served by \
airlock-fs with --notify-socket. `airlock-guest watch` reads the host's changes from the \
virtio-serial port org.airlock.notify and makes the guest kernel report them to inotify \
watchers (webpack, vite, nodemon, cargo watch, pytest-watch, inotifywait) as if they had \
happened in the guest, without changing contents, modes or modification times on the host."
)]
pub struct Args {
    /// Log threshold (to stderr).
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info, global = true)]
    pub log_level: LogLevel,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay the host's changes to a virtio-fs share for the guest's file
    /// watchers, until stopped.
    Watch(WatchArgs),
}

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  airlock-guest watch --mount /mnt/share\n  \
airlock-guest watch --tag share     # wherever the virtio-fs tag `share` is mounted")]
pub struct WatchArgs {
    /// Where the share is mounted in the guest.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "tag",
        required_unless_present = "tag"
    )]
    pub mount: Option<PathBuf>,

    /// Find the mount point from /proc/self/mountinfo: the virtio-fs mount
    /// of this tag (QEMU's `vhost-user-fs-pci,tag=…`).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Name of the virtio-serial port (QEMU's `virtserialport,name=…`).
    #[arg(long, value_name = "NAME", default_value = airlock_notify::PORT_NAME)]
    pub port: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn watch_needs_exactly_one_of_mount_and_tag() {
        let a = Args::try_parse_from(["airlock-guest", "watch", "--mount", "/mnt"]).unwrap();
        let Command::Watch(w) = a.command;
        assert_eq!(w.port, "org.airlock.notify");
        assert!(Args::try_parse_from(["airlock-guest", "watch"]).is_err());
        assert!(Args::try_parse_from([
            "airlock-guest",
            "watch",
            "--mount",
            "/mnt",
            "--tag",
            "share"
        ])
        .is_err());
        let a = Args::try_parse_from([
            "airlock-guest",
            "--log-level",
            "debug",
            "watch",
            "--tag",
            "s",
        ])
        .unwrap();
        assert_eq!(a.log_level, LogLevel::Debug);
    }
}
