//! Checking that file handles work for a directory
//! (`--inode-file-handles=mandatory`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Linux's `MAX_HANDLE_SZ`.
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// Fails unless `dir`'s file system can produce file handles and this
/// process can open them (which needs CAP_DAC_READ_SEARCH).
pub(crate) fn check_supported(dir: &Path) -> io::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut fh = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `path` is NUL-terminated; `fh` is a file_handle header followed
    // by MAX_HANDLE_SZ bytes, as `handle_bytes` tells the kernel; `mount_id`
    // is valid for writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            (&mut fh as *mut FileHandleBuf).cast::<libc::c_void>(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("the file system does not provide file handles ({e})"),
        ));
    }
    let dir_file = std::fs::File::open(dir)?;
    // SAFETY: `fh` holds the handle the kernel just wrote; the mount fd is an
    // open directory on the same mount.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir_file.as_raw_fd(),
            (&mut fh as *mut FileHandleBuf).cast::<libc::c_void>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open by file handle; CAP_DAC_READ_SEARCH is required ({e})"),
        ));
    }
    // SAFETY: the syscall returned a new descriptor this function now owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_on_tmp_supports_handles() {
        // As root on an ordinary file system (tmpfs or ext4) handles work.
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            check_supported(dir.path()).unwrap();
        }
        assert!(check_supported(Path::new("/no/such/dir")).is_err());
    }
}
