//! The share as the guest mounted it: its root held open, every path of
//! an event opened beneath it without following symlinks (a guest user
//! can replace any directory of the share with a symlink to somewhere
//! else in the guest; the helper, running as root, never looks through
//! one).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `statfs` type of FUSE file systems, virtio-fs included.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// How the share is named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountSpec {
    /// `--mount DIR`.
    Dir(PathBuf),
    /// `--tag TAG`: the virtio-fs mount of that tag.
    Tag(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("no virtio-fs mount of tag {0:?} in /proc/self/mountinfo")]
    NoTag(String),
    #[error("{0} is not a virtio-fs (FUSE) mount yet")]
    NotMounted(PathBuf),
    #[error("cannot read /proc/self/mountinfo")]
    MountInfo(#[source] io::Error),
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] io::Error),
}

/// The mounted share.
#[derive(Debug)]
pub struct Share {
    path: PathBuf,
    root: OwnedFd,
    dev: u64,
    ino: u64,
}

/// The mount point of the last virtio-fs mount of `tag` in `mountinfo`
/// (the text of `/proc/self/mountinfo`).
pub fn find_tag(mountinfo: &str, tag: &str) -> Option<PathBuf> {
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(source)) = (right.next(), right.next()) else {
            continue;
        };
        if fstype != "virtiofs" || unescape(source) != tag.as_bytes() {
            continue;
        }
        if let Some(point) = left.split(' ').nth(4) {
            found = Some(PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(point))));
        }
    }
    found
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Share {
    /// Finds and opens the share.
    pub fn open(spec: &MountSpec) -> Result<Share, MountError> {
        let path = match spec {
            MountSpec::Dir(dir) => dir.clone(),
            MountSpec::Tag(tag) => {
                let info = std::fs::read_to_string("/proc/self/mountinfo")
                    .map_err(MountError::MountInfo)?;
                find_tag(&info, tag).ok_or_else(|| MountError::NoTag(tag.clone()))?
            }
        };
        Share::open_path(path, true)
    }

    /// A local directory standing in for the share (tests).
    #[cfg(test)]
    pub(crate) fn open_local(path: &Path) -> Result<Share, MountError> {
        Share::open_path(path.to_owned(), false)
    }

    fn open_path(path: PathBuf, require_fuse: bool) -> Result<Share, MountError> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| MountError::Open(path.clone(), io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `c` is NUL-terminated; a new fd or -1 comes back.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| MountError::Open(path.clone(), e))?;
        // SAFETY: a new descriptor owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed statfs is valid storage for fstatfs to fill.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `root` is open and `st` valid for writes.
        check(unsafe { libc::fstatfs(root.as_raw_fd(), &mut st) })
            .map_err(|e| MountError::Open(path.clone(), e))?;
        if require_fuse && st.f_type as i64 != FUSE_SUPER_MAGIC {
            return Err(MountError::NotMounted(path));
        }
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", root.as_raw_fd()))
            .map_err(|e| MountError::Open(path.clone(), e))?;
        Ok(Share {
            path,
            root,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the mount point still shows this mount (not unmounted,
    /// remounted or covered since it was opened).
    pub fn is_current(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (relative to the share, empty for its root) beneath the
    /// share with `flags`, following no symlink anywhere (`openat2` with
    /// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`).
    pub fn open_beneath(&self, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
        open_beneath(self.root.as_fd(), rel, flags)
    }
}

/// [`Share::open_beneath`] from any directory descriptor.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = CString::new(if rel.is_empty() { b"." } else { rel })
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` a valid open_how of the
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - rootfs rootfs rw
36 22 0:32 / /mnt rw,relatime - virtiofs share rw
37 22 0:33 / /srv/my\\040share rw,relatime shared:5 - virtiofs data\\040set rw
38 22 0:34 / /mnt rw,relatime - virtiofs share rw
";

    #[test]
    fn mount_points_come_from_mountinfo() {
        assert_eq!(find_tag(MOUNTINFO, "share"), Some(PathBuf::from("/mnt")));
        assert_eq!(
            find_tag(MOUNTINFO, "data set"),
            Some(PathBuf::from("/srv/my share"))
        );
        assert_eq!(find_tag(MOUNTINFO, "rootfs"), None);
        assert_eq!(find_tag(MOUNTINFO, "nope"), None);
        assert_eq!(unescape("a\\134b\\"), b"a\\b\\");
    }

    #[test]
    fn paths_never_leave_the_share() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir_all(share.join("d")).unwrap();
        std::fs::write(share.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", share.join("etc")).unwrap();
        std::os::unix::fs::symlink("d", share.join("alias")).unwrap();
        let root = std::fs::File::open(&share).unwrap();
        assert!(open_beneath(root.as_fd(), b"d/f", libc::O_PATH).is_ok());
        assert!(open_beneath(root.as_fd(), b"", libc::O_PATH).is_ok());
        for bad in [&b"etc/passwd"[..], b"alias/f", b"../share/d"] {
            assert!(open_beneath(root.as_fd(), bad, libc::O_PATH).is_err());
        }
        // A symlink at the end is opened as itself, never its target.
        let link = open_beneath(root.as_fd(), b"etc", libc::O_PATH).unwrap();
        // SAFETY: zeroed stat is valid storage for fstatat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `link` is open, the path is empty (AT_EMPTY_PATH).
        let rc =
            unsafe { libc::fstatat(link.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH) };
        assert_eq!((rc, st.st_mode & libc::S_IFMT), (0, libc::S_IFLNK));
        assert!(open_beneath(root.as_fd(), b"etc", libc::O_RDONLY).is_err());
    }
}
