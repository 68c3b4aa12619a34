//! The system calls the watcher makes on the share's directories: opening
//! one beneath the root without ever following a symlink, its identity
//! (file system id + file handle, as fanotify reports it), and the names
//! of its subdirectories.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A directory's identity: the file system id (8 bytes), the handle type
/// (4 bytes) and the handle, packed. The same bytes come out of
/// [`key_of`] and of an event's [`Fid`](super::fanotify::Fid).
pub type DirKey = Box<[u8]>;

/// Largest file handle the kernel makes (`MAX_HANDLE_SZ`).
const MAX_HANDLE_SZ: usize = 128;

/// Packs a directory identity into `out` (cleared first).
pub fn pack_key(fsid: &[u8; 8], handle_type: i32, handle: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(fsid);
    out.extend_from_slice(&handle_type.to_ne_bytes());
    out.extend_from_slice(handle);
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens directory `path` (relative, `.` for `dir` itself) beneath `dir`:
/// no symlink is followed anywhere along it and `..` cannot climb out
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A guest can
/// replace a directory with a symlink at any time; the watcher never looks
/// through one.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let path = CString::new(if path.is_empty() { b"." } else { path })
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the
    // size passed; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nobody else; fds fit in c_int.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The identity fanotify reports for the directory open as `fd`.
pub fn key_of(fd: BorrowedFd<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    // SAFETY: zeroed statfs is valid storage for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` valid for writes.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    // SAFETY: fsid_t is two c_ints: 8 plain bytes.
    let fsid: [u8; 8] = unsafe { std::mem::transmute(st.f_fsid) };
    let mut buf = HandleBuf::new();
    let mut mount_id: libc::c_int = 0;
    let empty = c"";
    // AT_HANDLE_FID (6.5+) asks for the identity fanotify reports even on
    // file systems that cannot open by handle; older kernels refuse the
    // flag and give the same bytes without it on the ones fanotify FID
    // supports.
    let mut result = -1;
    for flags in [
        libc::AT_EMPTY_PATH | libc::AT_HANDLE_FID,
        libc::AT_EMPTY_PATH,
    ] {
        buf.reset();
        // SAFETY: `buf` holds a file_handle header with room for
        // MAX_HANDLE_SZ bytes, as handle_bytes says; `empty` is NUL-terminated.
        result = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                empty.as_ptr(),
                buf.as_mut_ptr(),
                &mut mount_id,
                flags,
            )
        };
        if result == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    check(result)?;
    let (handle_type, handle) = buf.handle();
    pack_key(&fsid, handle_type, handle, out);
    Ok(())
}

/// Opens the directory whose identity is `key` (for removing its mark
/// once it left the share); needs `CAP_DAC_READ_SEARCH`.
pub fn open_by_key(mount: BorrowedFd<'_>, key: &[u8]) -> io::Result<OwnedFd> {
    let (Some(ty), Some(handle)) = (key.get(8..12), key.get(12..)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let handle_type = i32::from_ne_bytes([ty[0], ty[1], ty[2], ty[3]]);
    let mut buf = HandleBuf::new();
    buf.set(handle_type, handle);
    // SAFETY: `buf` is a complete file_handle; a new fd or -1 comes back.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr(),
            // Not O_PATH: fanotify_mark refuses an O_PATH descriptor.
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `struct file_handle` with room for the largest handle.
#[repr(C)]
struct HandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

impl HandleBuf {
    fn new() -> HandleBuf {
        HandleBuf {
            handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
            handle_type: 0,
            f_handle: [0; MAX_HANDLE_SZ],
        }
    }

    fn reset(&mut self) {
        self.handle_bytes = MAX_HANDLE_SZ as libc::c_uint;
    }

    fn set(&mut self, handle_type: i32, handle: &[u8]) {
        self.handle_bytes = handle.len() as libc::c_uint;
        self.handle_type = handle_type;
        self.f_handle[..handle.len()].copy_from_slice(handle);
    }

    fn as_mut_ptr(&mut self) -> *mut libc::file_handle {
        (self as *mut HandleBuf).cast()
    }

    fn handle(&self) -> (i32, &[u8]) {
        let len = (self.handle_bytes as usize).min(MAX_HANDLE_SZ);
        (self.handle_type, &self.f_handle[..len])
    }
}

/// The names of the subdirectories of the directory open as `fd` (not
/// following symlinks; `.` and `..` left out).
pub fn subdirectories(fd: BorrowedFd<'_>) -> io::Result<Vec<Box<[u8]>>> {
    // fdopendir takes its descriptor over: give it a duplicate.
    // SAFETY: `fd` is open; F_DUPFD_CLOEXEC returns a new fd or -1.
    let dup = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is an open directory fd that the DIR now owns.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir reports errors through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir` is an open DIR stream used by this thread only.
        let entry = unsafe { libc::readdir64(dir) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir returned a valid entry, alive until the next call.
        let (d_type, name) = unsafe {
            (
                (*entry).d_type,
                CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes(),
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match d_type {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => is_directory(fd, name),
            _ => false,
        };
        if is_dir {
            names.push(name.into());
        }
    };
    // SAFETY: `dir` is open; closedir closes `dup` with it.
    unsafe { libc::closedir(dir) };
    result.map(|()| names)
}

/// For file systems that leave `d_type` unknown.
fn is_directory(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: zeroed stat is valid storage for fstatat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` NUL-terminated, `st` valid for writes.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn opens_beneath_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("a", root.join("alias")).unwrap();
        let fd = std::fs::File::open(&root).unwrap();
        assert!(open_dir_beneath(fd.as_fd(), b"a/b").is_ok());
        assert!(open_dir_beneath(fd.as_fd(), b"").is_ok());
        for escape in [&b"up"[..], b"alias/b", b"../share", b"/tmp"] {
            assert!(
                open_dir_beneath(fd.as_fd(), escape).is_err(),
                "{}",
                String::from_utf8_lossy(escape)
            );
        }
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("x/y")).unwrap();
        let root = std::fs::File::open(tmp.path()).unwrap();
        let x = open_dir_beneath(root.as_fd(), b"x").unwrap();
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        key_of(x.as_fd(), &mut a).unwrap();
        key_of(
            open_dir_beneath(root.as_fd(), b"x").unwrap().as_fd(),
            &mut b,
        )
        .unwrap();
        key_of(
            open_dir_beneath(root.as_fd(), b"x/y").unwrap().as_fd(),
            &mut c,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.len() > 12);
    }

    #[test]
    fn lists_only_subdirectories() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["d1", "d2", "d2/inner"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("d1", tmp.path().join("link")).unwrap();
        let root = std::fs::File::open(tmp.path()).unwrap();
        let mut names = subdirectories(root.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, vec![b"d1"[..].into(), b"d2"[..].into()]);
    }
}
