//! Small wrappers over libc calls the daemons share.

use std::ffi::CString;
use std::io;
use std::os::unix::io::RawFd;

/// Resolves a group given by name or number to its gid.
pub fn resolve_group(group: &str) -> io::Result<libc::gid_t> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `struct group` (pointers null).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is NUL-terminated,
    // `grp` and `result` are live locals, `buf` is writable for its length.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such group: {group}"),
        ));
    }
    Ok(grp.gr_gid)
}

/// Resolves a user given by name or number to (uid, primary gid).
pub fn resolve_user(user: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero bytes are a valid `struct passwd` (pointers null).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = if let Ok(uid) = user.parse::<libc::uid_t>() {
        // SAFETY: `pw`, `buf` and `result` are valid for writes for the call.
        unsafe {
            libc::getpwuid_r(
                uid,
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    } else {
        let name = CString::new(user).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is NUL-terminated; `pw`, `buf`, `result` are valid for writes.
        unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        }
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such user: {user}"),
        ));
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// Sets the soft and hard `RLIMIT_NOFILE` to `limit`.
pub fn set_nofile_limit(limit: u64) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rl` is a valid rlimit struct that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `RLIMIT_NOFILE` (soft and hard) to `want`, so a guest that makes
/// the daemon open descriptors meets this limit, not the host's. Without
/// the privilege to move the hard limit, the soft limit goes as close to
/// `want` as the hard limit allows. Returns the soft limit now in force.
pub fn limit_nofile(want: u64) -> io::Result<u64> {
    match set_nofile_limit(want) {
        Ok(()) => return Ok(want),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(e),
    }
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is valid for writes for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    rl.rlim_cur = want.min(rl.rlim_max);
    // SAFETY: `rl` is a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rl.rlim_cur)
}

/// [`limit_nofile`] for a daemon's default: what it could not do is
/// logged, not fatal (a service manager may forbid setrlimit and set
/// `LimitNOFILE=` itself).
pub fn apply_nofile_limit(want: u64) {
    match limit_nofile(want) {
        Ok(n) if n < want => {
            log::warn!("RLIMIT_NOFILE is {n} (the hard limit), below the {want} wanted")
        }
        Ok(n) => log::debug!("RLIMIT_NOFILE set to {n}"),
        Err(e) => log::warn!("cannot set RLIMIT_NOFILE to {want}: {e}"),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as virtiofsd does by
/// default): a file server holds one fd per inode the guest knows.
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is valid for writes for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    rl.rlim_cur = rl.rlim_max;
    // SAFETY: `rl` is a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rl.rlim_cur)
}

/// `getsockopt(fd, SOL_SOCKET, opt)` as an int.
pub fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid for writes and `len` holds val's size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD has no memory-safety preconditions.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Number of open file descriptors of this process (from /proc/self/fd).
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_number_and_name() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-airlock").is_err());
        assert_eq!(resolve_user("root").unwrap().0, 0);
        assert!(resolve_user("no-such-user-airlock").is_err());
    }
}
