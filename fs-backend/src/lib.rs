//! airlock-fs: a vhost-user-fs daemon serving a host directory to a QEMU
//! guest over virtio-fs, on fuse-backend-rs' passthrough file system.
//!
//! - [`args`] / [`config`]: the virtiofsd-compatible command line;
//! - [`filesystem`]: `AirlockFs`, the policy layer over `PassthroughFs`
//!   (read-only, id translation, audit log, device-node refusal);
//! - [`device`]: the virtqueues and the FUSE server;
//! - [`idmap`]: `--translate-uid/--translate-gid` rules.
//! - `fuzzing` (hidden): the fuzz targets' bodies (`fuzz/`).

pub mod args;
pub mod config;
pub mod device;
pub mod filesystem;
#[doc(hidden)]
pub mod fuzzing;
pub mod handles;
pub mod idmap;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use airlock_common::audit::{AuditLog, AuditOpenError};
use airlock_common::listen::ListenError;
use airlock_common::runner::{self, RunError};
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};

use crate::args::{Cache, InodeFileHandles};
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
    Run(#[from] RunError),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open shared directory {0}")]
pub struct SessionError(String, #[source] io::Error);

fn passthrough_config(config: &Config) -> PassthroughConfig {
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
        root_dir: config.shared_dir.to_string_lossy().into_owned(),
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

/// Builds the device state for one frontend connection.
fn new_session(config: &Config, audit: Option<Arc<AuditLog>>) -> Result<FsSession, SessionError> {
    let shared = config.shared_dir.display().to_string();
    let inner = PassthroughFs::new(passthrough_config(config))
        .map_err(|e| SessionError(shared.clone(), e))?;
    let fs = AirlockFs::new(
        inner,
        &config.shared_dir,
        Policy {
            readonly: config.readonly,
            uid_map: config.uid_map.clone(),
            gid_map: config.gid_map.clone(),
            announce_submounts: config.announce_submounts,
            audit,
        },
    );
    FsSession::new(fs, config.thread_pool_size).map_err(|e| SessionError(shared, e))
}

/// Runs the daemon until a signal (or, with `--exit-on-disconnect`, the
/// first frontend's departure) ends it.
pub fn run(config: Config) -> Result<(), FsError> {
    match config.rlimit_nofile {
        Some(0) => {}
        Some(n) => airlock_common::sys::set_nofile_limit(n).map_err(|e| FsError::Rlimit(n, e))?,
        None => match airlock_common::sys::raise_nofile_to_hard() {
            Ok(n) => log::debug!("RLIMIT_NOFILE raised to {n}"),
            Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
        },
    }
    if config.inode_file_handles == InodeFileHandles::Mandatory {
        handles::check_supported(&config.shared_dir)
            .map_err(|e| FsError::FileHandles(config.shared_dir.display().to_string(), e))?;
    }
    let audit = config
        .audit_log
        .as_deref()
        .map(AuditLog::open)
        .transpose()?
        .map(Arc::new);
    let listener = config.listen.bind()?;
    log::info!(
        "sharing {} (cache {:?}{}{})",
        config.shared_dir.display(),
        config.cache,
        if config.readonly { ", read-only" } else { "" },
        if audit.is_some() { ", audited" } else { "" },
    );
    runner::run(listener, "airlock-fs", config.exit_on_disconnect, || {
        new_session(&config, audit.clone())
    })?;
    Ok(())
}
