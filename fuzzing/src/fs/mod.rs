//! Fuzz target bodies (`fuzz/fuzz_targets/*.rs` are one-line wrappers, and
//! `fuzzing/tests/` replays the kept inputs through the same
//! functions on stable). Not part of the daemon's interface.
//!
//! Both targets enter where production does: [`FsSession`]'s event
//! handler, over guest memory and split queues, with an [`AirlockFs`] over
//! a real directory. The share is one directory per process (under
//! `/dev/shm` when it exists, so the fuzzer does no disk I/O), emptied
//! before every input; files are capped at [`MAX_FILE_BYTES`] with
//! `RLIMIT_FSIZE` so a guest's `fallocate` or `write` cannot fill a disk.
//!
//! [`FsSession`]: airlock_fs::device::FsSession

mod chain;
mod fuse;
mod notify;
pub mod seeds;

pub use chain::fuzz_fs_chain;
pub use fuse::{fuzz_fuse, run as run_fuse};
pub use notify::fuzz_notify_channel;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use airlock_common::audit::AuditLog;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};

use airlock_fs::device::FsSession;
use airlock_fs::filesystem::{AirlockFs, Policy};
use airlock_fs::idmap::{IdMap, Rule};

/// Largest file a fuzz input can make.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The process's share directory.
struct Share {
    dir: PathBuf,
    /// One input at a time uses the share (the replay test may run on
    /// several threads).
    lock: Mutex<()>,
}

fn share() -> &'static Share {
    static SHARE: OnceLock<Share> = OnceLock::new();
    SHARE.get_or_init(|| {
        // SAFETY: setrlimit reads the struct passed by pointer, which lives
        // across the call; signal only changes this process's disposition
        // of SIGXFSZ (so an oversized write fails with EFBIG instead of
        // killing the process).
        unsafe {
            let limit = libc::rlimit {
                rlim_cur: MAX_FILE_BYTES,
                rlim_max: MAX_FILE_BYTES,
            };
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit),
                0,
                "cannot cap file sizes"
            );
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("airlock-fs-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz share");
        let dir = std::fs::canonicalize(&dir).expect("cannot resolve the fuzz share");
        Share {
            dir,
            lock: Mutex::new(()),
        }
    })
}

/// Empties the share and holds it for one input.
fn fresh_share() -> (MutexGuard<'static, ()>, &'static Path) {
    let share = share();
    let guard = share.lock.lock().unwrap_or_else(|e| e.into_inner());
    let entries = std::fs::read_dir(&share.dir).expect("cannot list the fuzz share");
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            panic!("cannot empty the fuzz share ({}): {e}", path.display());
        }
    }
    (guard, &share.dir)
}

/// A session over `dir` in one of a few daemon configurations (`variant`):
/// read-write or read-only, cache modes, xattrs, id translation.
fn session(dir: &Path, variant: u8) -> FsSession {
    let cache_policy = match variant % 4 {
        0 => CachePolicy::Auto,
        1 => CachePolicy::Never,
        2 => CachePolicy::Metadata,
        _ => CachePolicy::Always,
    };
    let readonly = variant & 4 != 0;
    let inner = PassthroughFs::new(PassthroughConfig {
        root_dir: dir.to_string_lossy().into_owned(),
        cache_policy,
        attr_timeout: Duration::from_secs(1),
        entry_timeout: Duration::from_secs(1),
        writeback: variant & 8 != 0 && !readonly,
        xattr: variant & 16 != 0,
        do_import: true,
        ..Default::default()
    })
    .expect("cannot open the fuzz share");
    let uid_rules: Vec<Rule> = if variant & 32 != 0 {
        [
            "map:1000:0:1",
            "forbid-guest:5:1",
            "squash-guest:2000:65534:100",
        ]
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
    } else {
        Vec::new()
    };
    let fs = AirlockFs::new(
        inner,
        dir,
        Policy {
            readonly,
            uid_map: IdMap::new(&uid_rules).unwrap_or_default(),
            gid_map: IdMap::default(),
            announce_submounts: variant & 64 != 0,
            // Every record is built and written; none is kept.
            audit: AuditLog::open(Path::new("/dev/null")).ok().map(Arc::new),
        },
    );
    FsSession::new(std::sync::Arc::new(fs), 0, false).expect("cannot create the fs session")
}
