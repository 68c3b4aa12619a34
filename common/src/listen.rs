//! Where a vhost-user daemon gets its listening socket, per QEMU's
//! "vhost-user backend program conventions": a path it creates
//! (`--socket-path`), a socket it inherits (`--fd`, as libvirt passes), or a
//! socket systemd passes by socket activation (`LISTEN_FDS`). Exactly one.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::sys;

/// First file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("no socket to serve: give --socket-path PATH or --fd N, or start under systemd socket activation")]
    NoSource,
    #[error("{0} and systemd socket activation (LISTEN_FDS) both given: use one")]
    Conflict(&'static str),
    #[error("systemd passed {0} sockets; this daemon serves exactly one")]
    TooManyActivated(usize),
    #[error("invalid LISTEN_FDS value {0:?}")]
    BadListenFds(String),
    #[error("socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot remove stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    #[error("cannot bind socket {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot set permissions of socket {0}")]
    Permissions(PathBuf, #[source] io::Error),
    #[error("cannot resolve --socket-group {0:?}")]
    Group(String, #[source] io::Error),
    #[error("file descriptor {0} is not a usable socket")]
    BadFd(RawFd, #[source] io::Error),
    #[error("file descriptor {0} is not a listening Unix stream socket")]
    NotListening(RawFd),
}

impl ListenError {
    /// Whether the command line (or the environment systemd set) asked for
    /// something unusable — exit status 2 — rather than the socket failing
    /// (in use, cannot bind: status 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ListenError::NoSource
                | ListenError::Conflict(_)
                | ListenError::TooManyActivated(_)
                | ListenError::BadListenFds(_)
                | ListenError::Group(..)
                | ListenError::BadFd(..)
                | ListenError::NotListening(_)
        )
    }
}

/// `--socket-path`, `--socket-group`, `--fd`: shared by every vhost-user daemon.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListenArgs {
    /// vhost-user socket to create and listen on. Created with mode 0600 (0660
    /// with --socket-group); a stale socket left by a dead daemon is replaced,
    /// one a live process listens on is an error.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Group allowed to connect to --socket-path (name or number); the socket
    /// becomes mode 0660 owned by that group.
    #[arg(long, value_name = "GROUP", requires = "socket_path")]
    pub socket_group: Option<String>,

    /// Serve an already-listening Unix socket inherited as file descriptor N
    /// (how libvirt starts the daemon).
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,
}

/// Where the listening socket came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Fd(RawFd),
    SocketActivation(RawFd),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path(p) => write!(f, "{}", p.display()),
            Source::Fd(fd) => write!(f, "inherited fd {fd}"),
            Source::SocketActivation(fd) => write!(f, "systemd socket fd {fd}"),
        }
    }
}

/// A listening socket ready to accept frontends. Removes the socket file on
/// drop if it created it.
#[derive(Debug)]
pub struct BoundListener {
    pub listener: UnixListener,
    pub source: Source,
    created: Option<PathBuf>,
}

impl BoundListener {
    /// Path of the socket file this process created, if any.
    pub fn created_path(&self) -> Option<&Path> {
        self.created.as_deref()
    }

    /// Stops removing the socket file on drop (the caller took over).
    pub fn keep_file(&mut self) -> Option<PathBuf> {
        self.created.take()
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if let Some(p) = &self.created {
            let _ = crate::sandbox::remove_socket(p);
        }
    }
}

/// Reads systemd's socket-activation variables: `Some(fd)` if sockets were
/// passed to this process.
fn activated_fds() -> Result<Option<RawFd>, ListenError> {
    let Ok(fds) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    // LISTEN_PID must name us; otherwise the variables were meant for a parent.
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None);
        }
    }
    let n: usize = fds
        .parse()
        .map_err(|_| ListenError::BadListenFds(fds.clone()))?;
    // Children must not see them (sd_listen_fds(unset_environment=1)).
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    match n {
        0 => Ok(None),
        1 => Ok(Some(LISTEN_FDS_START)),
        n => Err(ListenError::TooManyActivated(n)),
    }
}

/// Checks that `fd` is a listening `AF_UNIX` stream socket and takes it over.
fn adopt_fd(fd: RawFd) -> Result<UnixListener, ListenError> {
    let domain = sys::sockopt_int(fd, libc::SO_DOMAIN).map_err(|e| ListenError::BadFd(fd, e))?;
    let ty = sys::sockopt_int(fd, libc::SO_TYPE).map_err(|e| ListenError::BadFd(fd, e))?;
    let listening =
        sys::sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| ListenError::BadFd(fd, e))?;
    if domain != libc::AF_UNIX || ty != libc::SOCK_STREAM || listening == 0 {
        return Err(ListenError::NotListening(fd));
    }
    sys::set_cloexec(fd, true).map_err(|e| ListenError::BadFd(fd, e))?;
    // SAFETY: `fd` was checked above to be an open listening Unix stream socket;
    // the command line / systemd handed its ownership to this process.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

/// Who may use a socket that [`bind_socket`] creates, besides root.
#[derive(Clone, Copy, Debug)]
pub enum SocketAccess {
    /// Mode 0600, owned by this process's user.
    Owner,
    /// Mode 0660, in group `gid` (`--socket-group`).
    Group(libc::gid_t),
    /// Mode 0600, owned by `uid`:`gid` — the user a daemon started as root
    /// serves as, so it can still accept on it and remove it at exit.
    User(libc::uid_t, libc::gid_t),
}

/// Binds `path` with mode 0600 (0660 and group `group` if given), replacing a
/// stale socket file but never a live socket or a non-socket file. Used for
/// the vhost-user socket and for control sockets alike.
pub fn bind_path(path: &Path, group: Option<&str>) -> Result<UnixListener, ListenError> {
    let access = match group {
        Some(g) => SocketAccess::Group(
            sys::resolve_group(g).map_err(|e| ListenError::Group(g.to_owned(), e))?,
        ),
        None => SocketAccess::Owner,
    };
    bind_socket(path, access)
}

/// Binds `path` for `access`, replacing a stale socket file (one nobody
/// listens on) but never a live socket or a non-socket file.
pub fn bind_socket(path: &Path, access: SocketAccess) -> Result<UnixListener, ListenError> {
    // Held until the socket is bound: a previous daemon's socket reaper
    // checks and unlinks under the same lock.
    let _lock = lock_socket_dir(path);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            Err(_) => {
                std::fs::remove_file(path)
                    .map_err(|e| ListenError::RemoveStale(path.to_owned(), e))?;
                log::info!("replaced stale socket {}", path.display());
            }
        },
        Ok(_) => return Err(ListenError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ListenError::Bind(path.to_owned(), e)),
    }
    // The socket must never exist with wider permissions, even briefly: bind
    // under a umask that leaves only the owner's bits. Startup is
    // single-threaded, so changing the process umask here is race-free.
    // SAFETY: umask has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| ListenError::Bind(path.to_owned(), e))?;
    let set = match access {
        SocketAccess::Owner => Ok(()),
        SocketAccess::Group(gid) => std::os::unix::fs::chown(path, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))),
        SocketAccess::User(uid, gid) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
    };
    if let Err(e) = set {
        let _ = std::fs::remove_file(path);
        return Err(ListenError::Permissions(path.to_owned(), e));
    }
    crate::sandbox::note_bound(path);
    Ok(listener)
}

/// Takes the exclusive `flock(2)` of the directory of `socket`, released
/// when the returned file closes. Replacing a stale socket and binding a
/// new one happen under it, and so does the socket reaper's
/// check-then-unlink of the socket it was left (sandbox.rs): otherwise a
/// daemon restarted at once could bind its socket between the old reaper's
/// check and its unlink, and lose it. `None` (no lock, logged at debug)
/// when the directory cannot be opened for reading; binding then goes on
/// and fails with the real error if it must.
pub fn lock_socket_dir(socket: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| log::debug!("cannot open {} to lock it: {e}", dir.display()))
        .ok()?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        log::debug!(
            "cannot lock {}: {}",
            dir.display(),
            io::Error::last_os_error()
        );
        return None;
    }
    Some(file)
}

impl ListenArgs {
    /// Produces the listening socket from exactly one of the three sources.
    pub fn bind(&self) -> Result<BoundListener, ListenError> {
        let activated = activated_fds()?;
        match (&self.socket_path, self.fd, activated) {
            (Some(_), _, Some(_)) => Err(ListenError::Conflict("--socket-path")),
            (_, Some(_), Some(_)) => Err(ListenError::Conflict("--fd")),
            (Some(path), None, None) => {
                let listener = bind_path(path, self.socket_group.as_deref())?;
                Ok(BoundListener {
                    listener,
                    source: Source::Path(path.clone()),
                    created: Some(path.clone()),
                })
            }
            (None, Some(fd), None) => Ok(BoundListener {
                listener: adopt_fd(fd)?,
                source: Source::Fd(fd),
                created: None,
            }),
            (None, None, Some(fd)) => Ok(BoundListener {
                listener: adopt_fd(fd)?,
                source: Source::SocketActivation(fd),
                created: None,
            }),
            (None, None, None) => Err(ListenError::NoSource),
            // clap rejects --socket-path together with --fd.
            (Some(_), Some(_), None) => Err(ListenError::Conflict("--socket-path with --fd")),
        }
    }
}

impl AsRawFd for BoundListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::IntoRawFd;

    fn args(path: &Path) -> ListenArgs {
        ListenArgs {
            socket_path: Some(path.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn creates_socket_owner_only_and_removes_it_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = args(&path).bind().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        drop(bound);
        assert!(!path.exists());
    }

    #[test]
    fn socket_group_widens_to_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let mut a = args(&path);
        a.socket_group = Some("0".into());
        let _bound = a.bind().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), 0);
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A socket file nobody listens on: bind, then close without unlinking.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = args(&path).bind().unwrap();
        let err = args(&path).bind().unwrap_err();
        assert!(matches!(err, ListenError::InUse(_)), "{err}");
        drop(live);
    }

    #[test]
    fn a_stale_socket_is_replaced_only_under_the_directory_lock() {
        // What a previous daemon's socket reaper holds while it checks and
        // unlinks the socket it was left.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        let stale = std::fs::metadata(&path).unwrap().ino();
        let reaper = lock_socket_dir(&path).expect("lock");
        // (A replacement may reuse the inode number: whether anyone
        // listens tells the two apart.)
        let binder = {
            let path = path.clone();
            std::thread::spawn(move || bind_socket(&path, SocketAccess::Owner))
        };
        // The binder is blocked on the lock, so the reaper's view holds:
        // the stale socket is still the one at the path. (However long
        // this waits, a binder that ignored the lock would have been free
        // to replace it; one that honours it never can.)
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), stale);
        assert!(UnixStream::connect(&path).is_err());
        assert!(!binder.is_finished());
        drop(reaper);
        let _listener = binder.join().unwrap().unwrap();
        assert!(UnixStream::connect(&path).is_ok());
    }

    #[test]
    fn at_exit_only_the_socket_this_process_bound_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.sock");
        let _listener = bind_socket(&ours, SocketAccess::Owner).unwrap();
        crate::sandbox::remove_socket(&ours).unwrap();
        assert!(!ours.exists());

        // Deleted by someone else while this process ran, and bound anew
        // by another program: that program's socket stays.
        let theirs = dir.path().join("theirs.sock");
        let _listener = bind_socket(&theirs, SocketAccess::Owner).unwrap();
        std::fs::remove_file(&theirs).unwrap();
        // (Our listener still holds the unlinked inode: the new socket's
        // number differs.)
        let other = UnixListener::bind(&theirs).unwrap();
        crate::sandbox::remove_socket(&theirs).unwrap();
        assert!(UnixStream::connect(&theirs).is_ok());
        drop(other);
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"precious").unwrap();
        let err = args(&path).bind().unwrap_err();
        assert!(matches!(err, ListenError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn fd_must_be_a_listening_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("l.sock")).unwrap();
        let fd = listener.into_raw_fd();
        let a = ListenArgs {
            fd: Some(fd),
            ..Default::default()
        };
        let bound = a.bind().unwrap();
        assert_eq!(bound.source, Source::Fd(fd));
        assert!(bound.created_path().is_none());

        let (s1, _s2) = UnixStream::pair().unwrap();
        let a = ListenArgs {
            fd: Some(s1.as_raw_fd()),
            ..Default::default()
        };
        assert!(matches!(
            a.bind().unwrap_err(),
            ListenError::NotListening(_)
        ));
        let a = ListenArgs {
            fd: Some(9999),
            ..Default::default()
        };
        assert!(matches!(a.bind().unwrap_err(), ListenError::BadFd(9999, _)));
    }

    #[test]
    fn nothing_given_is_an_error() {
        assert!(matches!(
            ListenArgs::default().bind().unwrap_err(),
            ListenError::NoSource
        ));
    }
}
