//! The fanotify group that watches the share, and the parser of what it
//! reads.
//!
//! One inode mark per directory of the share, with FID reporting
//! (`FAN_REPORT_DFID_NAME`): an event names the directory by its file
//! handle and the entry by name, so no descriptor is opened per event and
//! a directory keeps its identity across renames. The group is made after
//! airlock-fs has dropped `CAP_SYS_ADMIN`, which makes it an unprivileged
//! group (Linux 5.13+): the kernel then reports an event's pid only when
//! the event was caused by this very process and 0 otherwise — exactly
//! what telling the guest's own changes (made through airlock-fs) from
//! the host's needs, with no other process' pid disclosed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The events every directory mark asks for. `FAN_ONDIR` makes
/// subdirectories report too; `FAN_EVENT_ON_CHILD` makes entries report
/// through their directory's mark.
const BASE_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_DELETE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// Renames as one event naming both ends (Linux 5.17+)…
const RENAME_MASK: u64 = libc::FAN_RENAME;
/// …or, before that, the two halves.
const MOVE_MASK: u64 = libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;

/// The fanotify group.
#[derive(Debug)]
pub struct Fanotify {
    fd: OwnedFd,
    mask: u64,
}

impl Fanotify {
    /// Makes the group and marks `root` (the share's root directory),
    /// learning on the way whether the kernel reports whole renames.
    pub fn new(root: BorrowedFd<'_>) -> io::Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: fanotify_init takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fanotify_init and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut group = Fanotify {
            fd,
            mask: BASE_MASK | RENAME_MASK,
        };
        match group.mark(root) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                group.mask = BASE_MASK | MOVE_MASK;
                group.mark(root)?;
            }
            other => other?,
        }
        Ok(group)
    }

    /// Whether renames arrive as one `FAN_RENAME` event.
    pub fn whole_renames(&self) -> bool {
        self.mask & RENAME_MASK != 0
    }

    /// Marks directory `dir` (adding to an existing mark is harmless).
    pub fn mark(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.mark_op(libc::FAN_MARK_ADD, dir)
    }

    /// Removes the mark on directory `dir`.
    pub fn unmark(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        self.mark_op(libc::FAN_MARK_REMOVE, dir)
    }

    fn mark_op(&self, op: libc::c_uint, dir: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: both fds are open; a null path marks `dir` itself.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                op,
                self.mask,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads queued events into `buf`; `Ok(0)` when there are none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Fanotify {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A directory as an event names it: its file system id and file handle,
/// packed as the [`DirKey`](super::dirs::DirKey) bytes the tree uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fid<'a> {
    pub fsid: [u8; 8],
    pub handle_type: i32,
    pub handle: &'a [u8],
}

/// A directory and a name in it; the name is `.` for an event on the
/// directory itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub dir: Fid<'a>,
    pub name: &'a [u8],
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub mask: u64,
    /// Who caused it: this process' pid, or 0 for anyone else (an
    /// unprivileged group sees no other pid).
    pub pid: i32,
    /// The entry (`FAN_EVENT_INFO_TYPE_DFID_NAME`); absent for an
    /// overflow and for a rename, which has `old`/`new` instead.
    pub entry: Option<DirEntry<'a>>,
    /// A rename's source (absent when its directory is not watched).
    pub old: Option<DirEntry<'a>>,
    /// A rename's destination (absent when its directory is not watched).
    pub new: Option<DirEntry<'a>>,
}

/// A buffer the kernel would not produce.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("fanotify event metadata version {0}, expected {FANOTIFY_VERSION}")]
    Version(u8),
    #[error("malformed fanotify event at offset {0}")]
    Malformed(usize),
}

const FANOTIFY_VERSION: u8 = libc::FANOTIFY_METADATA_VERSION;
/// `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;
/// `struct fanotify_event_info_header`.
const INFO_HEADER_LEN: usize = 4;
/// `struct fanotify_event_info_fid` before the handle: header, fsid.
const FID_HEADER_LEN: usize = INFO_HEADER_LEN + 8;
/// `struct file_handle` before its bytes.
const HANDLE_HEADER_LEN: usize = 8;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The events in `buf` (what one read returned), in order.
pub fn parse(buf: &[u8]) -> Result<Vec<Event<'_>>, ParseError> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let bad = || ParseError::Malformed(at);
        let event_len = u32_at(buf, at).ok_or_else(bad)? as usize;
        let vers = *buf.get(at + 4).ok_or_else(bad)?;
        if vers != FANOTIFY_VERSION {
            return Err(ParseError::Version(vers));
        }
        let metadata_len = u16_at(buf, at + 6).ok_or_else(bad)? as usize;
        if event_len < metadata_len || metadata_len < METADATA_LEN || at + event_len > buf.len() {
            return Err(bad());
        }
        let mask = u64_at(buf, at + 8).ok_or_else(bad)?;
        let pid = u32_at(buf, at + 20).ok_or_else(bad)? as i32;
        let mut event = Event {
            mask,
            pid,
            entry: None,
            old: None,
            new: None,
        };
        let record = &buf[at..at + event_len];
        let mut info = metadata_len;
        while info < record.len() {
            let info_type = record[info];
            let len = u16_at(record, info + 2).ok_or_else(bad)? as usize;
            if len < INFO_HEADER_LEN || info + len > record.len() {
                return Err(bad());
            }
            let body = &record[info..info + len];
            match info_type {
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME => event.entry = Some(dir_entry(body, at)?),
                libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => event.old = Some(dir_entry(body, at)?),
                libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => event.new = Some(dir_entry(body, at)?),
                // Other records (a future kernel's) are not ours to read.
                _ => {}
            }
            info += len;
        }
        events.push(event);
        at += event_len;
    }
    Ok(events)
}

/// A `fanotify_event_info_fid` record with a name after the handle.
fn dir_entry(body: &[u8], at: usize) -> Result<DirEntry<'_>, ParseError> {
    let bad = || ParseError::Malformed(at);
    let fsid: [u8; 8] = body
        .get(INFO_HEADER_LEN..FID_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let handle_bytes = u32_at(body, FID_HEADER_LEN).ok_or_else(bad)? as usize;
    let handle_type = u32_at(body, FID_HEADER_LEN + 4).ok_or_else(bad)? as i32;
    let start = FID_HEADER_LEN + HANDLE_HEADER_LEN;
    let handle = body.get(start..start + handle_bytes).ok_or_else(bad)?;
    // The name is NUL-terminated; the record is padded after it.
    let rest = &body[start + handle_bytes..];
    let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
    Ok(DirEntry {
        dir: Fid {
            fsid,
            handle_type,
            handle,
        },
        name: &rest[..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One info record as the kernel lays it out (padded to 4 bytes).
    fn info(info_type: u8, fsid: [u8; 8], handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut r = vec![info_type, 0, 0, 0];
        r.extend(fsid);
        r.extend((handle.len() as u32).to_ne_bytes());
        r.extend(1i32.to_ne_bytes());
        r.extend(handle);
        r.extend(name);
        r.push(0);
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    fn event(mask: u64, pid: i32, infos: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = infos.concat();
        let mut e = Vec::new();
        e.extend(((METADATA_LEN + body.len()) as u32).to_ne_bytes());
        e.push(FANOTIFY_VERSION);
        e.push(0);
        e.extend((METADATA_LEN as u16).to_ne_bytes());
        e.extend(mask.to_ne_bytes());
        e.extend((-1i32).to_ne_bytes());
        e.extend(pid.to_ne_bytes());
        e.extend(body);
        e
    }

    #[test]
    fn parses_entries_renames_and_overflows() {
        let fsid = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = event(
            libc::FAN_CREATE | libc::FAN_MODIFY,
            0,
            &[info(
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                fsid,
                b"dirA",
                b"file",
            )],
        );
        buf.extend(event(
            libc::FAN_RENAME | libc::FAN_ONDIR,
            77,
            &[
                info(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, fsid, b"dirA", b"x"),
                info(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    fsid,
                    b"dirBB",
                    b"yy",
                ),
            ],
        ));
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        let events = parse(&buf).unwrap();
        assert_eq!(events.len(), 3);
        let e = events[0].entry.unwrap();
        assert_eq!(
            (e.dir.handle, e.name, e.dir.fsid),
            (&b"dirA"[..], &b"file"[..], fsid)
        );
        assert_eq!(events[1].pid, 77);
        assert_eq!(events[1].old.unwrap().name, b"x");
        assert_eq!(events[1].new.unwrap().dir.handle, b"dirBB");
        assert_eq!(events[2].mask, libc::FAN_Q_OVERFLOW);
        assert!(events[2].entry.is_none());
    }

    #[test]
    fn truncated_or_inconsistent_buffers_are_errors_not_panics() {
        let fsid = [0; 8];
        let good = event(
            libc::FAN_DELETE,
            0,
            &[info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, fsid, b"h", b"n")],
        );
        for cut in 1..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_version = good.clone();
        wrong_version[4] = 2;
        assert_eq!(parse(&wrong_version), Err(ParseError::Version(2)));
        let mut long_handle = good.clone();
        // handle_bytes beyond the record.
        long_handle[METADATA_LEN + 12..METADATA_LEN + 16].copy_from_slice(&999u32.to_ne_bytes());
        assert!(parse(&long_handle).is_err());
    }
}
