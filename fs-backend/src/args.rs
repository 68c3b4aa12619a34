//! The command line: virtiofsd-compatible so libvirt and scripts can swap
//! the binary, including the legacy `-o source=…,cache=…` form libvirt uses.

use std::path::PathBuf;

use airlock_common::config_file::ConfigArgs;
use airlock_common::listen::ListenArgs;
use airlock_common::logging::LogArgs;
use airlock_common::seccomp::SeccompArgs;
use airlock_vhost::LifecycleArgs;
use clap::{Parser, ValueEnum};

use crate::idmap::Rule;

/// `--cache`: how much the guest may cache (virtiofsd's modes).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    /// No data caching in the guest: every read and write goes to the host.
    /// Use when the host or another guest changes the files too.
    Never,
    /// Like never for file data, but directory contents and metadata are cached.
    Metadata,
    /// Close-to-open consistency: data cached while a file is open,
    /// revalidated when it is opened again (the default).
    Auto,
    /// Data and metadata cached and kept across opens. Only safe when the
    /// guest is the sole writer of the share.
    Always,
}

/// `--sandbox`: how airlock-fs confines itself (virtiofsd's modes).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sandbox {
    /// New mount, network, IPC and UTS namespaces; the root becomes an empty
    /// read-only tmpfs holding only /proc and the share (at /share), so
    /// nothing else of the host's file system exists for the daemon. Needs
    /// CAP_SYS_ADMIN (start as root).
    Namespace,
    /// chroot(2) into the shared directory. Needs CAP_SYS_CHROOT; for hosts
    /// where namespaces are not available (some containers).
    Chroot,
    /// No confinement beyond the per-request path discipline.
    None,
}

/// `--inode-file-handles`: how inodes are referenced on the host.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    /// One O_PATH file descriptor per inode the guest knows (default).
    Never,
    /// File handles where the host file system supports them, O_PATH fds
    /// elsewhere; needs CAP_DAC_READ_SEARCH. Saves file descriptors.
    Prefer,
    /// As prefer, but startup fails unless the shared directory's file
    /// system supports file handles and they can be opened.
    Mandatory,
}

#[derive(Parser, Debug, Default)]
#[command(
    name = "airlock-fs",
    version,
    about = "vhost-user-fs daemon: serves a host directory to a QEMU guest over virtio-fs",
    long_about = "airlock-fs serves a host directory to a QEMU guest over virtio-fs \
(`-device vhost-user-fs-pci`). It is a drop-in for virtiofsd: the same options, \
including the legacy `-o source=DIR,cache=…` form libvirt passes.\n\n\
Give the socket with --socket-path, --fd, or systemd socket activation. The guest \
mounts the share with `mount -t virtiofs TAG /mnt`, where TAG is the `tag=` of \
QEMU's vhost-user-fs-pci device.\n\n\
After QEMU disconnects, airlock-fs waits for the next QEMU on the same socket; \
--exit-on-disconnect exits instead, like virtiofsd.",
    after_help = "Example:\n  airlock-fs --socket-path /run/vm1/fs.sock --shared-dir /srv/share\n  \
qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \
-numa node,memdev=mem -chardev socket,id=fs0,path=/run/vm1/fs.sock \
-device vhost-user-fs-pci,chardev=fs0,tag=share\n\nHost changes to guest file watchers (--notify-socket /run/vm1/notify.sock):\n  \
qemu-system-x86_64 ... -chardev socket,id=nt0,path=/run/vm1/notify.sock,reconnect=1 \
-device virtio-serial-pci -device virtserialport,chardev=nt0,name=org.airlock.notify"
)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    /// Host directory to share with the guest.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Guest caching mode [default: auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub cache: Option<Cache>,

    /// Share read-only: every request that would modify the share fails with
    /// EROFS (open for writing, create, write, unlink, rename, chmod, …).
    #[arg(long)]
    pub readonly: bool,

    /// Let the guest create character and block device nodes (mknod), as
    /// virtiofsd does: guests that build root file systems in the share
    /// (debootstrap, container images) need them. airlock-fs never opens
    /// them and mounts the share nodev in its sandbox, but any host user who
    /// can reach the share can open a node the guest made: see
    /// docs/security.md. Without it, mknod of a device fails with EPERM.
    #[arg(long)]
    pub allow_device_nodes: bool,

    /// Support extended attributes (getfattr/setfattr, ACLs, capabilities).
    #[arg(long)]
    pub xattr: bool,

    /// Let the guest cache writes and send them in batches (writeback
    /// caching). Only safe when the guest is the sole writer of the share.
    #[arg(long)]
    pub writeback: bool,

    /// Honour O_DIRECT from the guest (otherwise it is dropped and the host
    /// page cache is used).
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Tell the guest about mount points inside the shared directory, so each
    /// appears as its own submount with its own device number.
    #[arg(long)]
    pub announce_submounts: bool,

    /// Reference inodes by file handles instead of O_PATH descriptors
    /// [default: never].
    #[arg(long, value_enum, value_name = "MODE")]
    pub inode_file_handles: Option<InodeFileHandles>,

    /// Translate user ids between guest and host (repeatable):
    /// map:GUEST:HOST:COUNT (both ways), guest:GUEST:HOST:COUNT and
    /// squash-guest:GUEST:HOST:COUNT (guest→host only; squash maps the whole
    /// range to HOST), host:HOST:GUEST:COUNT and squash-host:HOST:GUEST:COUNT
    /// (host→guest only), forbid-guest:GUEST:COUNT (those guest ids get EPERM).
    /// Ids no rule covers pass through unchanged.
    #[arg(long, value_name = "RULE")]
    pub translate_uid: Vec<Rule>,

    /// Translate group ids; same forms as --translate-uid.
    #[arg(long, value_name = "RULE")]
    pub translate_gid: Vec<Rule>,

    /// Serve requests on N worker threads (at most 1024, the most requests
    /// a queue holds); 0 serves them on the queue thread [default: 0].
    #[arg(long, value_name = "N")]
    pub thread_pool_size: Option<usize>,

    /// Set RLIMIT_NOFILE to N (each inode the guest knows holds one file
    /// descriptor). 0 leaves the limit alone [default: raise the soft limit
    /// to the hard limit].
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    /// Confinement [default: namespace when started as root, none
    /// otherwise]. Whatever the mode, the daemon drops supplementary groups
    /// when root (CVE-2022-0358).
    #[arg(long, value_enum, value_name = "MODE")]
    pub sandbox: Option<Sandbox>,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    /// Append one JSON line per modifying operation (create, open for
    /// writing, unlink, rename, setattr, mkdir, rmdir, symlink, link, mknod,
    /// setxattr, removexattr) to PATH, or to stdout with `-`: time, op, path
    /// relative to the share, guest uid/gid/pid, result.
    #[arg(long, value_name = "PATH|-")]
    pub audit_log: Option<PathBuf>,

    /// Send the host's changes to the shared directory to the guest's file
    /// watchers: listen on PATH (mode 0600, 0660 with --socket-group) for
    /// QEMU's virtio-serial port named org.airlock.notify; the guest runs
    /// `airlock-guest watch`. Changes the guest made itself are never sent
    /// back. See docs/notify.md.
    #[arg(long, value_name = "PATH")]
    pub notify_socket: Option<PathBuf>,

    #[command(flatten)]
    pub lifecycle: LifecycleArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Print the vhost-user capabilities JSON (for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Legacy virtiofsd options, comma-separated (`,,` is a literal comma):
    /// source=DIR, cache=none|never|metadata|auto|always, xattr, no_xattr,
    /// writeback, no_writeback, announce_submounts, allow_direct_io, readonly,
    /// flock, no_flock, posix_lock, no_posix_lock,
    /// sandbox=namespace|chroot|none, seccomp=kill|log|none,
    /// log_level=err|warn|info|debug, debug. Repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Run in the foreground (accepted for virtiofsd compatibility; airlock-fs
    /// never daemonizes).
    #[arg(short = 'f')]
    pub foreground: bool,

    /// Debug logging (same as --log-level debug).
    #[arg(short = 'd')]
    pub debug: bool,
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
    fn libvirt_command_line_parses() {
        // What libvirt 9 runs: --fd=N -o source=…,cache=…,xattr --thread-pool-size=N -d
        let a = Args::try_parse_from([
            "airlock-fs",
            "--fd=3",
            "-o",
            "source=/srv/a,,b,cache=none,xattr,no_flock,no_posix_lock",
            "--thread-pool-size=4",
            "-d",
        ])
        .unwrap();
        assert_eq!(a.listen.fd, Some(3));
        assert_eq!(a.options.len(), 1);
        assert_eq!(a.thread_pool_size, Some(4));
        assert!(a.debug);
    }

    #[test]
    fn unknown_option_is_rejected() {
        let e = Args::try_parse_from(["airlock-fs", "--no-such-thing"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = Args::try_parse_from(["airlock-fs", "--translate-uid", "map:1:2"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
