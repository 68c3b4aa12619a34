//! From a host change to the inotify events the guest's watchers get.
//!
//! The guest kernel emits inotify events only for operations made in the
//! guest, so the helper makes operations whose only effect on the host is
//! the change time (ctime) of what changed there anyway:
//!
//! | change | what the helper does | inotify events in the guest |
//! |---|---|---|
//! | file contents (or a new file) | open for writing, set the mtime to its current value, close | `OPEN`, `MODIFY`, `CLOSE_WRITE` on the file |
//! | metadata | set atime and mtime to their current values | `ATTRIB` on the object |
//! | a name appeared or went | set the directory's mtime to its current value | `MODIFY` (with `ISDIR`) on the directory |
//! | new directory | set its mtime to its current value | `MODIFY` (with `ISDIR`) on it |
//! | RESCAN of a directory | for it and every directory below: list it, set its mtime to its current value | `OPEN`, `ACCESS`, `CLOSE_NOWRITE`, `MODIFY` (`ISDIR`) on each |
//!
//! The current times are read fresh from the host (`AT_STATX_FORCE_SYNC`),
//! so the guest's attribute cache is brought up to date on the way, and
//! opening the file for writing (no `O_TRUNC`) drops stale cached pages
//! under virtio-fs' default cache mode. Symlinks and special files get no
//! event of their own (their directory's does). On a read-only share only
//! `OPEN` and `CLOSE_NOWRITE` can be produced.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use airlock_notify::Flags;

use crate::mount::{open_beneath, Share};

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Changes that produced events.
    pub applied: usize,
    /// Changes whose path no longer exists (or never showed up here).
    pub missing: usize,
    /// Changes that failed otherwise (logged).
    pub failed: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// An object's type and times, fresh from the host.
#[derive(Clone, Copy)]
struct Times {
    kind: Kind,
    atime: libc::timespec,
    mtime: libc::timespec,
}

/// The directory of `path` (empty for the share's root and its entries).
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => &path[..at],
        None => b"",
    }
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `/proc/self/fd/N`: the object `fd` holds, by path (an `O_PATH`
/// descriptor allows neither `futimens` nor reads).
fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn stat_fresh(fd: &OwnedFd) -> io::Result<Times> {
    // SAFETY: zeroed statx is valid storage for statx to fill.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open, the path is an empty C string (AT_EMPTY_PATH),
    // `st` is valid for writes.
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_TYPE | libc::STATX_ATIME | libc::STATX_MTIME,
            &mut st,
        )
    })?;
    let kind = match u32::from(st.stx_mode) & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        _ => Kind::Other,
    };
    let ts = |t: libc::statx_timestamp| libc::timespec {
        tv_sec: t.tv_sec,
        tv_nsec: i64::from(t.tv_nsec),
    };
    Ok(Times {
        kind,
        atime: ts(st.stx_atime),
        mtime: ts(st.stx_mtime),
    })
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

/// Sets the times of the object `fd` holds: the mtime alone (inotify
/// `MODIFY`) or atime and mtime (`ATTRIB`), to the values they have.
fn reset_times(
    fd: &OwnedFd,
    atime: Option<libc::timespec>,
    mtime: libc::timespec,
) -> io::Result<()> {
    let times = [atime.unwrap_or(OMIT), mtime];
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated, `times` two valid timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
    Ok(())
}

/// Opens the object `fd` holds again, with `flags`.
fn reopen(fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated; a new fd or -1 comes back.
    let new = check(unsafe {
        libc::open(
            path.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `OPEN`, `MODIFY`, `CLOSE_WRITE`: what a write in the guest produces.
fn contents_changed(fd: &OwnedFd, t: &Times) -> io::Result<&'static str> {
    match reopen(fd, libc::O_WRONLY) {
        Ok(w) => {
            let times = [OMIT, t.mtime];
            // SAFETY: `w` is open, `times` two valid timespecs.
            check(unsafe { libc::futimens(w.as_raw_fd(), times.as_ptr()) })?;
            Ok("open, modify, close_write")
        }
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            drop(reopen(fd, libc::O_RDONLY)?);
            Ok("open, close_nowrite (read-only)")
        }
        // A running program (ETXTBSY), or write access refused: the
        // MODIFY alone.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETXTBSY | libc::EACCES | libc::EPERM)
            ) =>
        {
            reset_times(fd, None, t.mtime)?;
            Ok("modify")
        }
        Err(e) => Err(e),
    }
}

/// `MODIFY` with `ISDIR`: the directory's entries changed.
fn dir_changed(fd: &OwnedFd, t: &Times) -> io::Result<&'static str> {
    match reset_times(fd, None, t.mtime) {
        Ok(()) => Ok("modify"),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            drop(reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?);
            Ok("open, close_nowrite (read-only)")
        }
        Err(e) => Err(e),
    }
}

/// `ATTRIB`.
fn attrib_changed(fd: &OwnedFd, t: &Times) -> io::Result<&'static str> {
    reset_times(fd, Some(t.atime), t.mtime).map(|()| "attrib")
}

/// Applies a batch of changes, in order; the directories whose entries
/// changed are touched once each, at the end.
pub fn apply(share: &Share, batch: &[(Flags, Vec<u8>)]) -> Outcome {
    let mut out = Outcome::default();
    let mut dirs: Vec<&[u8]> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    for (flags, path) in batch {
        if flags.contains(Flags::RESCAN) {
            rescan(share, path, &mut out);
            continue;
        }
        if flags.intersects(Flags::CREATED | Flags::REMOVED) && seen.insert(parent(path)) {
            dirs.push(parent(path));
        }
        if flags.intersects(Flags::CREATED | Flags::CHANGED | Flags::ATTRIB) {
            record(&mut out, *flags, path, object_changed(share, *flags, path));
        }
    }
    for dir in dirs {
        let result = share
            .open_beneath(dir, libc::O_PATH | libc::O_DIRECTORY)
            .and_then(|fd| {
                let t = stat_fresh(&fd)?;
                dir_changed(&fd, &t)
            });
        record(&mut out, Flags::empty(), dir, result.map(Some));
    }
    out
}

fn record(out: &mut Outcome, flags: Flags, path: &[u8], result: io::Result<Option<&str>>) {
    let shown = String::from_utf8_lossy(path);
    match result {
        Ok(Some(what)) => {
            out.applied += 1;
            if flags.is_empty() {
                log::debug!("directory {shown:?}: {what}");
            } else {
                log::debug!("{flags} {shown:?}: {what}");
            }
        }
        Ok(None) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ESTALE)
            ) =>
        {
            out.missing += 1;
            log::debug!("{flags} {shown:?}: gone ({e})");
        }
        Err(e) => {
            out.failed += 1;
            log::warn!("{flags} {shown:?}: {e}");
        }
    }
}

/// The events of the changed object itself.
fn object_changed(share: &Share, flags: Flags, path: &[u8]) -> io::Result<Option<&'static str>> {
    let fd = share.open_beneath(path, libc::O_PATH)?;
    let t = stat_fresh(&fd)?;
    let mut what = None;
    match t.kind {
        Kind::File if flags.intersects(Flags::CREATED | Flags::CHANGED) => {
            what = Some(contents_changed(&fd, &t)?);
        }
        Kind::Dir if flags.contains(Flags::CREATED) => what = Some(dir_changed(&fd, &t)?),
        _ => {}
    }
    if flags.contains(Flags::ATTRIB) && t.kind != Kind::Other {
        what = Some(attrib_changed(&fd, &t)?);
    }
    Ok(what)
}

/// Touches `path` and every directory below it, so watchers read them
/// all again.
fn rescan(share: &Share, path: &[u8], out: &mut Outcome) {
    let top = match share.open_beneath(path, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) => return record(out, Flags::RESCAN, path, Err(e)),
    };
    let mut stack = vec![(path.to_vec(), top)];
    while let Some((rel, fd)) = stack.pop() {
        let touched = stat_fresh(&fd).and_then(|t| dir_changed(&fd, &t));
        record(out, Flags::RESCAN, &rel, touched.map(Some));
        let entries =
            match std::fs::read_dir(std::ffi::OsStr::from_bytes(proc_path(&fd).as_bytes())) {
                Ok(entries) => entries,
                Err(e) => {
                    log::debug!("rescan {:?}: {e}", String::from_utf8_lossy(&rel));
                    continue;
                }
            };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let Ok(child) = open_beneath(
                fd.as_fd(),
                name.as_bytes(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) else {
                continue;
            };
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            stack.push((child_rel, child));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    #[test]
    fn parents_of_share_paths() {
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"top"), b"");
        assert_eq!(parent(b""), b"");
    }

    /// An inotify instance watching directories, as a watcher would.
    struct Watcher {
        fd: OwnedFd,
        dirs: Vec<(i32, String)>,
    }

    impl Watcher {
        fn new(dirs: &[(&Path, &str)]) -> Watcher {
            // SAFETY: inotify_init1 takes flags only.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a new descriptor owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut watcher = Watcher {
                fd,
                dirs: Vec::new(),
            };
            for (path, label) in dirs {
                let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                // SAFETY: valid fd and NUL-terminated path.
                let wd = unsafe {
                    libc::inotify_add_watch(watcher.fd.as_raw_fd(), c.as_ptr(), libc::IN_ALL_EVENTS)
                };
                assert!(wd >= 0);
                watcher.dirs.push((wd, label.to_string()));
            }
            watcher
        }

        /// "dir: EVENT,EVENT name" lines, as inotifywait prints them.
        fn events(&self) -> Vec<String> {
            let mut buf = [0u8; 16384];
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let mut out = Vec::new();
            let mut at = 0usize;
            while n > 0 && at < n as usize {
                let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + 16..at + 16 + len];
                let name =
                    String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or_default());
                let names: Vec<&str> = [
                    (libc::IN_OPEN, "OPEN"),
                    (libc::IN_ACCESS, "ACCESS"),
                    (libc::IN_MODIFY, "MODIFY"),
                    (libc::IN_ATTRIB, "ATTRIB"),
                    (libc::IN_CLOSE_WRITE, "CLOSE_WRITE"),
                    (libc::IN_CLOSE_NOWRITE, "CLOSE_NOWRITE"),
                    (libc::IN_ISDIR, "ISDIR"),
                ]
                .into_iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, n)| n)
                .collect();
                let dir = &self.dirs.iter().find(|(w, _)| *w == wd).unwrap().1;
                out.push(
                    format!("{dir}: {} {name}", names.join(","))
                        .trim_end()
                        .to_string(),
                );
                at += 16 + len;
            }
            out
        }
    }

    fn share() -> (tempfile::TempDir, Share) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        std::fs::write(tmp.path().join("f"), b"contents").unwrap();
        std::fs::write(tmp.path().join("d/g"), b"more").unwrap();
        let share = Share::open_local(tmp.path()).unwrap();
        (tmp, share)
    }

    fn ev(flags: Flags, path: &str) -> (Flags, Vec<u8>) {
        (flags, path.as_bytes().to_vec())
    }

    #[test]
    fn changes_become_the_documented_events_and_keep_contents_and_mtimes() {
        let (tmp, share) = share();
        let before = std::fs::metadata(tmp.path().join("f")).unwrap();
        let dir_before = std::fs::metadata(tmp.path()).unwrap();
        let w = Watcher::new(&[(tmp.path(), "/"), (&tmp.path().join("d"), "d")]);
        let out = apply(&share, &[ev(Flags::CHANGED, "f")]);
        assert_eq!(out.applied, 1);
        assert_eq!(w.events(), ["/: OPEN f", "/: MODIFY f", "/: CLOSE_WRITE f"]);
        apply(&share, &[ev(Flags::ATTRIB, "d/g")]);
        assert_eq!(w.events(), ["d: ATTRIB g"]);
        apply(
            &share,
            &[ev(Flags::CREATED, "d/e"), ev(Flags::REMOVED, "d/gone")],
        );
        assert_eq!(
            w.events(),
            ["d: MODIFY,ISDIR e", "/: MODIFY,ISDIR d", "d: MODIFY,ISDIR"]
        );
        apply(&share, &[ev(Flags::REMOVED, "x"), ev(Flags::CREATED, "y")]);
        assert_eq!(w.events(), ["/: MODIFY,ISDIR"]);
        let after = std::fs::metadata(tmp.path().join("f")).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"contents");
        assert_eq!(
            (after.mtime(), after.mtime_nsec(), after.mode(), after.len()),
            (
                before.mtime(),
                before.mtime_nsec(),
                before.mode(),
                before.len()
            )
        );
        let dir_after = std::fs::metadata(tmp.path()).unwrap();
        assert_eq!(
            (dir_after.mtime(), dir_after.mtime_nsec()),
            (dir_before.mtime(), dir_before.mtime_nsec())
        );
    }

    #[test]
    fn a_rescan_touches_every_directory_below() {
        let (tmp, share) = share();
        let w = Watcher::new(&[(tmp.path(), "/")]);
        apply(&share, &[ev(Flags::RESCAN, "")]);
        let events = w.events();
        for dir in ["/: MODIFY,ISDIR", "/: MODIFY,ISDIR d"] {
            assert!(
                events.iter().any(|e| e == dir),
                "{dir} missing in {events:?}"
            );
        }
        // d/e is below d: its own watch (none here) would see it; the
        // share's root watch does not.
        assert!(events.iter().all(|e| !e.ends_with(" e")), "{events:?}");
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (tmp, share) = share();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), tmp.path().join("flink"))
            .unwrap();
        let w = Watcher::new(&[(outside.path(), "outside")]);
        let out = apply(
            &share,
            &[
                ev(Flags::CHANGED, "link/victim"),
                ev(Flags::CHANGED | Flags::ATTRIB, "flink"),
                ev(Flags::RESCAN, "link"),
            ],
        );
        assert_eq!(w.events(), Vec::<String>::new());
        assert_eq!(out.applied, 0, "{out:?}");
    }
}
