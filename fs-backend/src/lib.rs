//! airlock-fs: a vhost-user-fs daemon serving a host directory to a QEMU
//! guest over virtio-fs, on fuse-backend-rs' passthrough file system.
//!
//! - [`args`] / [`config`]: the virtiofsd-compatible command line;
//! - [`filesystem`]: `AirlockFs`, the policy layer over `PassthroughFs`
//!   (read-only, id translation, audit log, device-node refusal);
//! - [`device`]: the virtqueues and the FUSE server;
//! - [`idmap`]: `--translate-uid/--translate-gid` rules;
//! - [`sandbox`]: `--sandbox namespace|chroot|none`;
//! - [`notify`]: `--notify-socket`, host changes to the guest's watchers;

pub mod args;
pub mod config;
pub mod device;
pub mod filesystem;
mod handles;
pub mod idmap;
pub mod notify;
pub mod sandbox;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_common::audit::{AuditLog, AuditOpenError};
use airlock_common::daemon::Nofile;
use airlock_common::listen::ListenError;
use airlock_vhost::runner::{self, RunError};
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};

use airlock_common::seccomp::SeccompError;

use crate::args::{Cache, InodeFileHandles, Sandbox};
use crate::config::Config;
use crate::device::FsSession;
use crate::filesystem::{AirlockFs, Policy};

/// The capabilities object libvirt reads with `--print-capabilities`
/// (QEMU's docs/interop/vhost-user.json): the device type, and that the
/// daemon takes separate `--shared-dir`-style options. Migration is not
/// supported, so `migrate-precopy` is not claimed.
pub fn capabilities() -> serde_json::Value {
    serde_json::json!({ "type": "fs", "features": ["separate-options"] })
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot set RLIMIT_NOFILE to {0}")]
    Rlimit(u64, #[source] io::Error),
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    #[error("--inode-file-handles=mandatory cannot be honoured for {0}")]
    FileHandles(String, #[source] io::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error(transparent)]
    Groups(#[from] airlock_common::sandbox::SandboxError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot open shared directory {0}")]
    Share(String, #[source] io::Error),
    #[error("cannot drop capabilities")]
    Capabilities(#[source] io::Error),
    #[error("cannot start {0} request threads (--thread-pool-size)")]
    Threads(usize, #[source] io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl FsError {
    /// 2 for what the user asked for (no socket to serve, an audit log
    /// path that cannot be opened), 1 for failures while starting or
    /// running.
    pub fn exit_code(&self) -> u8 {
        use airlock_common::report::{EXIT_FAILURE, EXIT_USAGE};
        let usage = match self {
            FsError::Audit(_) => true,
            FsError::Listen(e) => e.is_usage(),
            _ => false,
        };
        if usage {
            EXIT_USAGE
        } else {
            EXIT_FAILURE
        }
    }
}

/// The system calls airlock-fs may make once it serves a guest.
pub const SECCOMP_ALLOW_LIST: &str = include_str!("../seccomp.allow");

/// `root` is the share's path as the daemon sees it (inside the sandbox).
fn passthrough_config(config: &Config, root: &Path) -> PassthroughConfig {
    let cache_policy = match config.cache {
        Cache::Never => CachePolicy::Never,
        Cache::Metadata => CachePolicy::Metadata,
        Cache::Auto => CachePolicy::Auto,
        Cache::Always => CachePolicy::Always,
    };
    // Attribute and entry timeouts follow virtiofsd: 1 s for auto (the host
    // may change files), a day for always (the guest owns the share), none
    // for never.
    let timeout = match config.cache {
        Cache::Never => Duration::ZERO,
        Cache::Metadata | Cache::Always => Duration::from_secs(86_400),
        Cache::Auto => Duration::from_secs(1),
    };
    PassthroughConfig {
        root_dir: root.to_string_lossy().into_owned(),
        cache_policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        writeback: config.writeback && !config.readonly,
        xattr: config.xattr,
        allow_direct_io: config.allow_direct_io,
        inode_file_handles: config.inode_file_handles != InodeFileHandles::Never,
        do_import: true,
        ..Default::default()
    }
}

/// The file system for one frontend, serving `root` (the share as the
/// daemon sees it).
fn new_fs(config: &Config, root: &Path, audit: Option<Arc<AuditLog>>) -> io::Result<AirlockFs> {
    let inner = PassthroughFs::new(passthrough_config(config, root))?;
    Ok(AirlockFs::new(
        inner,
        root,
        Policy {
            readonly: config.readonly,
            uid_map: config.uid_map.clone(),
            gid_map: config.gid_map.clone(),
            announce_submounts: config.announce_submounts,
            audit,
        },
    )
    .allow_device_nodes(config.allow_device_nodes))
}

/// Runs the daemon until a signal (or, with `--exit-on-disconnect`, the
/// first frontend's departure) ends it.
pub fn run(config: Config) -> Result<(), FsError> {
    let nofile = match config.rlimit_nofile {
        Some(0) => Nofile::Inherited,
        Some(n) => {
            airlock_common::sys::set_nofile_limit(n).map_err(|e| FsError::Rlimit(n, e))?;
            Nofile::Inherited
        }
        None => Nofile::RaiseToHard,
    };
    if config.inode_file_handles == InodeFileHandles::Mandatory {
        handles::check_supported(&config.shared_dir)
            .map_err(|e| FsError::FileHandles(config.shared_dir.display().to_string(), e))?;
    }
    let audit = airlock_common::daemon::prepare(
        nofile,
        config.audit_log.as_deref(),
        config
            .listen
            .socket_path
            .iter()
            .chain(&config.notify_socket)
            .map(PathBuf::as_path),
    )?
    .map(Arc::new);
    let listener = config.listen.bind()?;
    let notify_listener = match &config.notify_socket {
        Some(path) => {
            let l = airlock_common::listen::bind_path(path, config.listen.socket_group.as_deref())?;
            let path = path.clone();
            airlock_common::signals::at_exit(move || {
                let _ = airlock_common::sandbox::remove_socket(&path);
            });
            Some(l)
        }
        None => None,
    };
    // The sandbox hides $NOTIFY_SOCKET's path (and, in a new network
    // namespace, its abstract name): connect while it is reachable.
    if let Err(e) = airlock_common::notify::connect_early() {
        log::warn!("cannot reach $NOTIFY_SOCKET: {e}");
    }
    // With chroot, /proc is out of reach once inside: the one file system
    // instance is made before, and reset between frontends.
    let shared_fs = match config.sandbox {
        Sandbox::Chroot => Some(Arc::new(
            new_fs(&config, Path::new("/"), audit.clone())
                .map_err(|e| FsError::Share(config.shared_dir.display().to_string(), e))?,
        )),
        _ => None,
    };
    let root: PathBuf = sandbox::enter(config.sandbox, &config.shared_dir, config.readonly)?;
    airlock_common::sandbox::drop_supplementary_groups()?;
    // What serving files as the guest's users needs, nothing else: no
    // CAP_SYS_ADMIN or CAP_SYS_CHROOT once the sandbox is up, no CAP_MKNOD
    // unless --allow-device-nodes, no CAP_SETFCAP (the guest cannot give
    // host files capabilities).
    if airlock_common::sandbox::is_root() {
        use airlock_common::sandbox::cap;
        let mut keep = vec![
            cap::CHOWN,
            cap::DAC_OVERRIDE,
            cap::DAC_READ_SEARCH,
            cap::FOWNER,
            cap::FSETID,
            cap::SETGID,
            cap::SETUID,
        ];
        if config.allow_device_nodes {
            keep.push(cap::MKNOD);
        }
        airlock_common::sandbox::keep_only_capabilities(&keep).map_err(FsError::Capabilities)?;
    }
    // Signals are taken by a thread of their own, started only now so it
    // shares the confinement above.
    airlock_common::signals::install().map_err(FsError::Signals)?;
    // After the capability drop: the fanotify group is then unprivileged,
    // which is what tells the guest's own changes from the host's.
    if let (Some(l), Some(path)) = (notify_listener, &config.notify_socket) {
        notify::start(l, &root, path)?;
    }
    airlock_common::seccomp::apply(SECCOMP_ALLOW_LIST, config.seccomp)?;
    log::info!(
        "sharing {} (cache {:?}, sandbox {:?}{}{}{})",
        config.shared_dir.display(),
        config.cache,
        config.sandbox,
        if config.readonly { ", read-only" } else { "" },
        if config.allow_device_nodes {
            ", device nodes allowed"
        } else {
            ""
        },
        if audit.is_some() { ", audited" } else { "" },
    );
    let shared = config.shared_dir.display().to_string();
    runner::run(listener, "airlock-fs", config.exit_on_disconnect, || {
        let (fs, reset) = match &shared_fs {
            Some(fs) => (fs.clone(), true),
            None => (
                Arc::new(new_fs(&config, &root, audit.clone()).map_err(SessionError::Share)?),
                false,
            ),
        };
        FsSession::new(fs, config.thread_pool_size, reset)
            .map_err(|e| SessionError::Threads(config.thread_pool_size, e))
    })
    .map_err(|e| match e {
        RunError::Session(e) => match e.downcast::<SessionError>() {
            Ok(e) => match *e {
                SessionError::Share(e) => FsError::Share(shared, e),
                SessionError::Threads(n, e) => FsError::Threads(n, e),
            },
            Err(e) => FsError::Run(RunError::Session(e)),
        },
        e => FsError::Run(e),
    })?;
    Ok(())
}

/// What creating one frontend's session can fail at.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot open the shared directory")]
    Share(#[source] io::Error),
    #[error("cannot start the request threads")]
    Threads(usize, #[source] io::Error),
}

#[cfg(test)]
mod seccomp_list_tests {
    #[test]
    fn the_allow_list_compiles() {
        // Every name must be a system call of this architecture.
        airlock_common::seccomp::check_list(super::SECCOMP_ALLOW_LIST).expect("seccomp.allow");
    }
}
