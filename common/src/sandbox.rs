//! Confinement the daemons share: a private mount namespace, read-only
//! mounts, dropping to an unprivileged user, dropping supplementary groups.
//!
//! The order matters and is the caller's job:
//!
//! 1. [`unshare_mounts`] before any thread is spawned (a mount namespace is
//!    per thread at the moment of `unshare(2)`; threads started later
//!    inherit it);
//! 2. bind every socket and open every file the daemon writes;
//! 3. [`make_mounts_readonly`], then [`switch_user`], then seccomp.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Set once this process has its own mount namespace: nothing here may touch
/// the mounts of a namespace it shares with the host.
static UNSHARED: AtomicBool = AtomicBool::new(false);

/// Directories of sockets the daemon creates, opened before it confines
/// itself: through these descriptors the sockets can still be removed at
/// exit, when the path is out of reach (pivot_root) or its mount is
/// read-only in the daemon's namespace (the descriptor keeps the host's).
static SOCKET_DIRS: Mutex<Vec<(PathBuf, OwnedFd, CString)>> = Mutex::new(Vec::new());

/// Sockets this process bound, by path, with their identity (device and
/// inode): [`remove_socket`] removes a name only while it still refers to
/// the socket this process bound. Replacing it needs nobody listening on it
/// (listen::bind_socket), which cannot happen while this process runs, so
/// only a socket deleted by someone else and bound anew is ever left alone.
static BOUND: Mutex<Vec<(PathBuf, (u64, u64))>> = Mutex::new(Vec::new());

/// Records that this process bound a socket at `socket` (for
/// [`remove_socket`]). Unknown paths are removed without the check.
pub(crate) fn note_bound(socket: &Path) {
    match std::fs::symlink_metadata(socket) {
        Ok(m) => {
            let mut bound = BOUND.lock().unwrap_or_else(|e| e.into_inner());
            bound.retain(|(p, _)| p != socket);
            bound.push((socket.to_owned(), (m.dev(), m.ino())));
        }
        Err(e) => log::debug!("cannot stat {} just bound: {e}", socket.display()),
    }
}

/// Device and inode of `name` in `dir`, not following a symlink.
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(u64, u64)> {
    // SAFETY: a zeroed stat is valid storage for fstatat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open directory descriptor (O_PATH serves as the
    // base of fstatat), `name` NUL-terminated, `st` valid for writes.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok((st.st_dev, st.st_ino))
}

/// Keeps a handle on the directory of `socket` (a path the daemon will
/// create) for [`remove_socket`]. Call before entering the sandbox.
pub fn keep_socket_dir(socket: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let fd = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let name = CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    SOCKET_DIRS.lock().unwrap_or_else(|e| e.into_inner()).push((
        socket.to_owned(),
        fd.into(),
        name,
    ));
    Ok(())
}

/// [`keep_socket_dir`] for each of `sockets`. A directory that cannot be
/// opened is logged, not fatal: binding there fails next with the real
/// error.
pub fn keep_socket_dirs<'a>(sockets: impl IntoIterator<Item = &'a Path>) {
    for socket in sockets {
        if let Err(e) = keep_socket_dir(socket) {
            log::debug!("cannot hold the directory of {}: {e}", socket.display());
        }
    }
}

/// Removes a socket file the daemon created, through the directory kept by
/// [`keep_socket_dir`] if there is one, and only while the name still
/// refers to the socket this process bound (recorded at bind). A daemon that
/// switched users may not be allowed to (the directory is root's): then the
/// [socket reaper](spawn_socket_reaper), forked while it was root, removes
/// the socket once it has exited, or — without a reaper — the file stays
/// and the next start replaces it. Failures are logged here; the result is for
/// callers that act on it.
pub fn remove_socket(socket: &Path) -> io::Result<()> {
    let dirs = SOCKET_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    let kept = dirs.iter().find(|(p, _, _)| p == socket);
    let bound = {
        let mut bound = BOUND.lock().unwrap_or_else(|e| e.into_inner());
        let at = bound.iter().position(|(p, _)| p == socket);
        at.map(|at| bound.swap_remove(at).1)
    };
    if let Some(ours) = bound {
        let now = match kept {
            Some((_, dir, name)) => stat_at(dir.as_fd(), name),
            None => std::fs::symlink_metadata(socket).map(|m| (m.dev(), m.ino())),
        };
        match now {
            Ok(now) if now != ours => {
                log::info!(
                    "leaving {}: it is no longer the socket this process bound",
                    socket.display()
                );
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
    }
    let result = match kept {
        Some((_, dir, name)) => {
            // SAFETY: `dir` is an open directory descriptor and `name` a
            // NUL-terminated file name.
            check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
        }
        None => std::fs::remove_file(socket),
    };
    match &result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if kept.is_some() && REAPER.get().is_some() {
                log::debug!(
                    "{} is removed by the socket reaper after exit",
                    socket.display()
                );
                return Ok(());
            }
            log::info!(
                "leaving {}: this process (uid {}) may not remove files from its \
                 directory; the next start replaces it",
                socket.display(),
                // SAFETY: geteuid(2) has no preconditions and cannot fail.
                unsafe { libc::geteuid() }
            )
        }
        Err(e) => log::warn!("cannot remove socket {}: {e}", socket.display()),
    }
    result
}

/// The write end of the pipe the socket reaper waits on; set once it runs.
static REAPER: OnceLock<OwnedFd> = OnceLock::new();

/// A socket the reaper removes: its directory, name and identity.
struct ReapTarget {
    dir: RawFd,
    /// The directory opened for reading, to hold its lock (see
    /// [`crate::listen::lock_socket_dir`]) while checking and unlinking;
    /// -1 if it could not be opened.
    lock: RawFd,
    name: *const libc::c_char,
    dev: libc::dev_t,
    ino: libc::ino_t,
    /// What the reaper writes to stderr if it cannot remove it.
    failure: Vec<u8>,
}

/// Forks a helper that removes the daemon's sockets (those kept with
/// [`keep_socket_dir`] that exist now) once the daemon has exited, however
/// it exits. It is for `--user`: the switched-to user usually may not
/// delete files in the sockets' directories, so the daemon could not.
///
/// The helper stays root but can do little: it closes every descriptor but
/// the socket directories, stdio and a pipe, blocks every signal, installs
/// a seccomp filter allowing read, stat, unlink, write and exit, and waits
/// for the pipe to close (the daemon exited). It unlinks a socket only if
/// the name still refers to the one this daemon bound (a new daemon may
/// have replaced it). Call it while root, before the user switch; the
/// process may already have threads (the child only makes system calls).
pub fn spawn_socket_reaper() -> io::Result<()> {
    let dirs = SOCKET_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    let mut targets = Vec::new();
    for (path, dir, name) in dirs.iter() {
        // SAFETY: a zeroed stat is valid storage for fstatat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is an open directory descriptor, `name` a
        // NUL-terminated file name, `st` valid for writes.
        let rc = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
            // SAFETY: `dir` is an open directory descriptor (O_PATH serves
            // as the base of openat) and "." a NUL-terminated name.
            let lock = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c".".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            targets.push(ReapTarget {
                dir: dir.as_raw_fd(),
                lock,
                name: name.as_ptr(),
                dev: st.st_dev,
                ino: st.st_ino,
                failure: format!(
                    "airlock: cannot remove socket {} after exit\n",
                    path.display()
                )
                .into_bytes(),
            });
        }
    }
    // The parent keeps no lock descriptor: only the reaper locks.
    let close_locks = |targets: &[ReapTarget]| {
        for t in targets.iter().filter(|t| t.lock >= 0) {
            // SAFETY: opened above and owned by nobody else in this process.
            unsafe { libc::close(t.lock) };
        }
    };
    if targets.is_empty() {
        return Ok(());
    }
    let filter = match reaper_filter() {
        Ok(f) => f,
        Err(e) => {
            close_locks(&targets);
            return Err(e);
        }
    };
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: `pipe` is valid for writes of two descriptors.
    if let Err(e) = check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }) {
        close_locks(&targets);
        return Err(e);
    }
    let mut keep: Vec<RawFd> = targets
        .iter()
        .flat_map(|t| [t.dir, t.lock])
        .filter(|&fd| fd >= 0)
        .collect();
    keep.push(pipe[0]);
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: the child only makes async-signal-safe system calls on
    // memory prepared here (no allocation, no locks) and ends in _exit.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: both descriptors were just created and are ours.
            unsafe {
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
            close_locks(&targets);
            Err(e)
        }
        // SAFETY: in the child; see reap.
        0 => unsafe { reap(pipe[0], &keep, &targets, &filter) },
        _ => {
            // SAFETY: the read end is the child's; the write end is ours
            // alone and stays open until this process exits.
            unsafe { libc::close(pipe[0]) };
            close_locks(&targets);
            // SAFETY: `pipe[1]` is an open descriptor owned by nobody else.
            let _ = REAPER.set(unsafe { OwnedFd::from_raw_fd(pipe[1]) });
            drop(dirs);
            log::debug!("socket reaper started: the sockets are removed after exit");
            Ok(())
        }
    }
}

/// The reaper's filter: what waiting and unlinking takes.
fn reaper_filter() -> io::Result<seccompiler::BpfProgram> {
    let list =
        "read\nwrite\nclose\nflock\nnewfstatat\nstatx\nunlinkat\nexit\nexit_group\nrt_sigreturn\n";
    crate::seccomp::compile(list, crate::seccomp::SeccompMode::Kill)
        .ok()
        .flatten()
        .and_then(|mut map| map.remove("main"))
        .ok_or_else(|| io::Error::other("cannot compile the socket reaper's filter"))
}

/// The reaper child: see [`spawn_socket_reaper`].
///
/// # Safety
///
/// Only in the child of a fork: it makes raw system calls on the memory it
/// is given and never returns.
unsafe fn reap(
    pipe: RawFd,
    keep: &[RawFd],
    targets: &[ReapTarget],
    filter: &seccompiler::BpfProgram,
) -> ! {
    // SAFETY: system calls on valid pointers into memory the parent
    // prepared, which the child's copy of the address space holds; no
    // allocation and no locks (other threads of the parent do not exist
    // here).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_NAME, c"airlock-reaper".as_ptr());
        // Everything but stdio, the pipe and the socket directories: the
        // listening sockets must not outlive the daemon in here.
        let mut next: libc::c_uint = 3;
        for &fd in keep {
            let fd = fd as libc::c_uint;
            if fd > next {
                libc::syscall(libc::SYS_close_range, next, fd - 1, 0);
            }
            next = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
        if seccompiler::apply_filter(filter).is_err() {
            libc::_exit(1);
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(pipe, (&mut byte as *mut u8).cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        for t in targets {
            // A daemon starting on the same path replaces the stale socket
            // under the directory's lock (listen::bind_socket): holding it,
            // the check and the unlink see the same file, so the new
            // daemon's socket is never the one removed.
            if t.lock >= 0 {
                libc::flock(t.lock, libc::LOCK_EX);
            }
            let mut st: libc::stat = std::mem::zeroed();
            let same = libc::fstatat(t.dir, t.name, &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
                && st.st_dev == t.dev
                && st.st_ino == t.ino;
            if same && libc::unlinkat(t.dir, t.name, 0) != 0 {
                libc::write(2, t.failure.as_ptr().cast(), t.failure.len());
            }
            if t.lock >= 0 {
                libc::flock(t.lock, libc::LOCK_UN);
            }
        }
        libc::_exit(0)
    }
}

/// `--sandbox` for airlock-net and airlock-proxy.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetSandbox {
    /// A private mount namespace in which every mount is read-only, entered
    /// before any thread starts (needs CAP_SYS_ADMIN: start as root).
    Namespace,
    /// No mount namespace.
    None,
}

/// Confinement options of a daemon that needs the host's network
/// (airlock-net, airlock-proxy).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfineArgs {
    /// Confinement: "namespace" runs the daemon in a private mount namespace
    /// where every file system is read-only once its sockets are bound and
    /// its files are open; "none" leaves the mounts alone. Default:
    /// namespace when started as root (it needs CAP_SYS_ADMIN), none
    /// otherwise.
    #[arg(long, value_enum, value_name = "MODE")]
    pub sandbox: Option<NetSandbox>,

    /// Once sockets are bound and files are open, switch to this user (name
    /// or uid) and its primary group, with no supplementary groups and no
    /// capabilities. Started as root, the daemon always switches: to USER,
    /// or by default to "nobody"; root itself is refused. Only root can
    /// switch. Ports below 1024 published later through the API then fail
    /// with EACCES: publish them with -p.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

/// The user a daemon started as root switches to when `--user` is not given
/// (as passt does): it owns no files, so a compromised daemon can write
/// nothing of anyone's.
pub const DEFAULT_USER: &str = "nobody";

impl ConfineArgs {
    /// The user this process switches to once it is set up (ask before
    /// [`confine`]: afterwards it is no longer root): `--user`, or
    /// [`DEFAULT_USER`] when started as root; `None` when not root and
    /// no `--user` was given (nothing to switch).
    pub fn switch_to(&self) -> Option<&str> {
        match &self.user {
            Some(user) => Some(user),
            None if is_root() => Some(DEFAULT_USER),
            None => None,
        }
    }

    /// The uid and gid this process serves as once confined, resolved now;
    /// `None` when it keeps its identity. Sockets the daemon's peers reach
    /// as that user (airlock-proxy's Unix listeners) are given to it.
    pub fn identity(&self) -> Result<Option<(libc::uid_t, libc::gid_t)>, SandboxError> {
        let Some(user) = self.switch_to() else {
            return Ok(None);
        };
        let (uid, gid) = crate::sys::resolve_user(user).map_err(|e| match self.user {
            Some(_) => SandboxError::UnknownUser(user.to_owned(), e),
            None => SandboxError::NoDefaultUser(e),
        })?;
        if uid == 0 {
            return Err(SandboxError::StaysRoot(user.to_owned()));
        }
        Ok(Some((uid, gid)))
    }

    /// The sandbox mode, with the default resolved for this process.
    pub fn sandbox_mode(&self) -> NetSandbox {
        self.sandbox.unwrap_or(if is_root() {
            NetSandbox::Namespace
        } else {
            NetSandbox::None
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--sandbox namespace needs CAP_SYS_ADMIN (start as root, or use --sandbox none)")]
    NotPermitted(#[source] io::Error),
    #[error("cannot create a private mount namespace")]
    Unshare(#[source] io::Error),
    #[error("cannot make the mounts read-only")]
    Readonly(#[source] io::Error),
    #[error("--user {0}: only root can switch users")]
    UserNotRoot(String),
    #[error("--user {0}")]
    UnknownUser(String, #[source] io::Error),
    #[error(
        "started as root without --user, and the default user {DEFAULT_USER} cannot be found: \
         give --user USER"
    )]
    NoDefaultUser(#[source] io::Error),
    #[error("--user {0}: the daemon does not serve as root; give an unprivileged user")]
    StaysRoot(String),
    #[error("cannot switch to user {0}")]
    SwitchUser(String, #[source] io::Error),
    #[error("cannot drop supplementary groups")]
    Groups(#[source] io::Error),
}

impl SandboxError {
    /// Whether the command line named something that does not exist (a
    /// `--user` typo): exit status 2. The rest are failures to confine (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SandboxError::UnknownUser(..))
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `rc` of a libc call that returns 0 or -1 with errno, as a `Result`.
pub fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `path` as a C string for a libc call.
pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Moves the calling thread into a new mount namespace whose mounts do not
/// propagate back to the host's. Call it before spawning any thread.
pub fn unshare_mounts() -> Result<(), SandboxError> {
    // SAFETY: unshare(2) takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            SandboxError::NotPermitted(e)
        } else {
            SandboxError::Unshare(e)
        }
    })?;
    make_private(Path::new("/")).map_err(SandboxError::Unshare)?;
    UNSHARED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Records that the caller created its own mount namespace by other means
/// (airlock-fs unshares more namespaces at once).
pub fn mark_unshared() {
    UNSHARED.store(true, Ordering::SeqCst);
}

/// Whether this process has its own mount namespace (see [`unshare_mounts`]).
pub fn is_unshared() -> bool {
    UNSHARED.load(Ordering::SeqCst)
}

/// Marks every mount under `path` private, so our mounts stay ours.
pub fn make_private(path: &Path) -> io::Result<()> {
    let target = cstr(path)?;
    // SAFETY: `target` is NUL-terminated; the other pointers may be null for
    // a propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

/// Sets `attr` (`MOUNT_ATTR_*`) on the mount at `path`, and with `recursive`
/// on every mount below it (`mount_setattr(2)`, Linux 5.12).
pub fn set_mount_attr(path: &Path, attr: u64, recursive: bool) -> io::Result<()> {
    let target = cstr(path)?;
    let mut set = libc::mount_attr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `target` is NUL-terminated and `set` is a valid mount_attr of
    // the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags as libc::c_uint,
            &mut set as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes every mount of this (private) mount namespace read-only, nosuid
/// and nodev. Files already open for writing (audit logs) keep working.
pub fn make_mounts_readonly() -> Result<(), SandboxError> {
    if !UNSHARED.load(Ordering::SeqCst) {
        return Err(SandboxError::Readonly(io::Error::other(
            "refusing: this process shares the host's mount namespace",
        )));
    }
    set_mount_attr(
        Path::new("/"),
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        true,
    )
    .map_err(SandboxError::Readonly)
}

/// Drops every supplementary group (CVE-2022-0358: a daemon that kept root's
/// groups let the guest create files owned by them). A no-op unless root.
pub fn drop_supplementary_groups() -> Result<(), SandboxError> {
    if !is_root() {
        return Ok(());
    }
    // SAFETY: a zero-length list with a null pointer is valid for setgroups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(SandboxError::Groups)
}

/// Capability numbers (linux/capability.h) the daemons name.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const MKNOD: u32 = 27;
}

/// Reduces the calling thread's capabilities (and those of threads it
/// spawns later) to `keep`: bounding set, permitted, effective; inheritable
/// and ambient emptied. Call it before spawning threads.
pub fn keep_only_capabilities(keep: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // Past the kernel's last capability.
                Some(libc::EINVAL) => break,
                // Without CAP_SETPCAP (not root) the bounding set stays;
                // permitted and effective below are what count.
                Some(libc::EPERM) => break,
                _ => return Err(e),
            }
        }
    }
    let mask: u64 = keep.iter().fold(0, |m, &c| m | (1u64 << c));
    let data = [
        Data {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        Data {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: `header` and the two-element `data` array are what capset(2)
    // version 3 reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Switches every thread to `user` (name or uid) and its primary group with
/// no supplementary groups. The uid change clears every capability.
pub fn switch_user(user: &str) -> Result<(), SandboxError> {
    let (uid, gid) = crate::sys::resolve_user(user)
        .map_err(|e| SandboxError::UnknownUser(user.to_owned(), e))?;
    switch_to_ids(user, uid, gid)
}

/// [`switch_user`] with the ids already resolved (`user` names them in
/// errors).
fn switch_to_ids(user: &str, uid: libc::uid_t, gid: libc::gid_t) -> Result<(), SandboxError> {
    if !is_root() {
        return Err(SandboxError::UserNotRoot(user.to_owned()));
    }
    let fail = |e| SandboxError::SwitchUser(user.to_owned(), e);
    // glibc applies each of these to every thread of the process.
    // SAFETY: setgroups with an empty list, setresgid/setresuid with plain ids.
    unsafe {
        check(libc::setgroups(0, std::ptr::null())).map_err(fail)?;
        check(libc::setresgid(gid, gid, gid)).map_err(fail)?;
        check(libc::setresuid(uid, uid, uid)).map_err(fail)?;
    }
    // No way back: a process that can regain root was not confined.
    // SAFETY: setuid(2) with a plain id.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(fail(io::Error::other("could regain root after the switch")));
    }
    Ok(())
}

/// What a network daemon does once its sockets are bound and files are
/// open: read-only mounts (if it unshared them), then the user switch.
pub fn confine(args: &ConfineArgs) -> Result<(), SandboxError> {
    // $NOTIFY_SOCKET may not be writable by --user: connect while root.
    if let Err(e) = crate::notify::connect_early() {
        log::warn!("cannot reach $NOTIFY_SOCKET: {e}");
    }
    if args.sandbox_mode() == NetSandbox::Namespace {
        make_mounts_readonly()?;
    }
    match (args.switch_to(), args.identity()?) {
        (Some(user), Some((uid, gid))) => {
            // The user switched to may not delete the sockets at exit.
            if is_root() {
                if let Err(e) = spawn_socket_reaper() {
                    log::warn!("cannot start the socket reaper: {e}; sockets may be left at exit");
                }
            }
            switch_to_ids(user, uid, gid)?;
            log::info!("serving as user {user} (uid {uid}, gid {gid}), without capabilities");
        }
        _ => drop_supplementary_groups()?,
    }
    Ok(())
}

/// What a network daemon does first, before any thread: enter the private
/// mount namespace if its sandbox asks for one.
pub fn enter(args: &ConfineArgs) -> Result<(), SandboxError> {
    if let Some(user) = &args.user {
        if !is_root() {
            return Err(SandboxError::UserNotRoot(user.clone()));
        }
    }
    // A typo, a missing default user or root itself is a startup error, not
    // a surprise once sockets are bound.
    args.identity()?;
    match args.sandbox_mode() {
        NetSandbox::Namespace => unshare_mounts(),
        NetSandbox::None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sandbox_follows_privilege() {
        let args = ConfineArgs::default();
        let want = if is_root() {
            NetSandbox::Namespace
        } else {
            NetSandbox::None
        };
        assert_eq!(args.sandbox_mode(), want);
        let explicit = ConfineArgs {
            sandbox: Some(NetSandbox::None),
            user: None,
        };
        assert_eq!(explicit.sandbox_mode(), NetSandbox::None);
    }

    #[test]
    fn root_never_keeps_its_identity() {
        let default = ConfineArgs::default();
        if is_root() {
            assert_eq!(default.switch_to(), Some(DEFAULT_USER));
            let (uid, _) = default.identity().unwrap().expect("a user to switch to");
            assert_ne!(uid, 0);
        } else {
            assert_eq!(default.switch_to(), None);
            assert_eq!(default.identity().unwrap(), None);
        }
        for root in ["root", "0"] {
            let args = ConfineArgs {
                sandbox: None,
                user: Some(root.into()),
            };
            let err = args.identity().unwrap_err();
            assert!(matches!(err, SandboxError::StaysRoot(..)), "{err:?}");
            assert!(err.to_string().contains("does not serve as root"), "{err}");
        }
    }

    #[test]
    fn unknown_user_is_a_clear_error() {
        // The name is resolved before anything changes, so the test process
        // keeps its identity.
        let err = switch_user("no-such-user-airlock").unwrap_err();
        assert!(matches!(err, SandboxError::UnknownUser(..)), "{err:?}");
    }
}
