//! The start-up every Airlock daemon goes through, in this order:
//!
//! 1. [`prepare`], before any sandbox or thread: the descriptor limit, the
//!    audit log (opened before mounts turn read-only: a file open for
//!    writing would keep its mount from turning read-only), and the
//!    directories of the sockets the daemon creates, held open so the
//!    sockets can be removed at exit once the sandbox hides their paths;
//! 2. the daemon's sandbox ([`crate::sandbox::enter`], or airlock-fs's own);
//! 3. binding its sockets, then [`crate::sandbox::confine`] (read-only
//!    mounts, the user switch) or airlock-fs's capability drop;
//! 4. the seccomp filter ([`crate::seccomp::apply`]), once nothing but
//!    serving is left.

use std::path::Path;

use crate::audit::{AuditLog, AuditOpenError};

/// What `RLIMIT_NOFILE` the daemon runs with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Nofile {
    /// This limit, as close as the hard limit allows; what cannot be done
    /// is logged (a service manager may forbid setrlimit and set
    /// `LimitNOFILE=` itself).
    Limit(u64),
    /// The soft limit raised to the hard limit (virtiofsd's default: a file
    /// server holds a descriptor per inode the guest knows); a failure is
    /// logged.
    RaiseToHard,
    /// Left as inherited.
    Inherited,
}

/// Step 1 of the start-up: returns the audit log, if one was asked for.
pub fn prepare<'a>(
    nofile: Nofile,
    audit_log: Option<&Path>,
    sockets: impl IntoIterator<Item = &'a Path>,
) -> Result<Option<AuditLog>, AuditOpenError> {
    match nofile {
        Nofile::Limit(n) => crate::sys::apply_nofile_limit(n),
        Nofile::RaiseToHard => match crate::sys::raise_nofile_to_hard() {
            Ok(n) => log::debug!("RLIMIT_NOFILE raised to {n}"),
            Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
        },
        Nofile::Inherited => {}
    }
    let audit = audit_log.map(AuditLog::open).transpose()?;
    crate::sandbox::keep_socket_dirs(sockets);
    Ok(audit)
}
