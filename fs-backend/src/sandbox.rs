//! `--sandbox namespace|chroot|none`: what of the host airlock-fs can see.
//!
//! `namespace` (the default as root) works like virtiofsd's: new mount,
//! network, IPC and UTS namespaces, entered before any thread starts
//! ([`unshare`]); then ([`enter`]) an empty tmpfs becomes the root, holding
//! a fresh /proc (fuse-backend-rs reopens inodes through /proc/self/fd) and
//! the share bind-mounted at /share with `nodev` (a device node in the share
//! cannot be opened even if a bug let the guest ask) and `ro` with
//! `--readonly`. The old root is detached and the tmpfs made read-only, so
//! the rest of the host's file system no longer exists for the daemon, and
//! there is no network interface but an unconfigured loopback.
//!
//! `chroot` is for hosts without namespaces: chroot(2) into the share. /proc
//! is then out of reach, so one file system instance opened before the
//! chroot serves every frontend, reset between them (`destroy`).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use airlock_common::sandbox::{check, cstr, make_private, set_mount_attr};

use crate::args::Sandbox;

/// Where the share is inside the `namespace` sandbox.
pub const NAMESPACE_SHARE: &str = "/share";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--sandbox {0} needs {1} (start as root, or choose --sandbox none)")]
    NotPermitted(&'static str, &'static str, #[source] io::Error),
    #[error("sandbox: {0}")]
    Step(&'static str, #[source] io::Error),
}

fn mount(src: &Path, target: &Path, fstype: Option<&str>, flags: libc::c_ulong) -> io::Result<()> {
    let src = cstr(src)?;
    let target = cstr(target)?;
    let fstype = fstype.map(|t| CString::new(t).expect("no NUL in a file system type"));
    // SAFETY: every pointer is a NUL-terminated string or null.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            std::ptr::null(),
        )
    })
}

/// The first half of `namespace`: new namespaces for the calling thread.
/// Call it before any thread is spawned so every later thread shares them.
pub fn unshare(mode: Sandbox) -> Result<(), SandboxError> {
    if mode != Sandbox::Namespace {
        return Ok(());
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare(2) takes flags only.
    check(unsafe { libc::unshare(flags) }).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            SandboxError::NotPermitted("namespace", "CAP_SYS_ADMIN", e)
        } else {
            SandboxError::Step("unshare", e)
        }
    })?;
    make_private(Path::new("/")).map_err(|e| SandboxError::Step("make / private", e))?;
    airlock_common::sandbox::mark_unshared();
    Ok(())
}

/// The second half: leaves the host's file system. Returns the shared
/// directory's path as the daemon now sees it.
pub fn enter(mode: Sandbox, share: &Path, readonly: bool) -> Result<PathBuf, SandboxError> {
    match mode {
        Sandbox::None => Ok(share.to_owned()),
        Sandbox::Chroot => {
            let dir = cstr(share).map_err(|e| SandboxError::Step("share path", e))?;
            // SAFETY: `dir` is NUL-terminated; chdir/chroot take a path only.
            check(unsafe { libc::chdir(dir.as_ptr()) })
                .map_err(|e| SandboxError::Step("chdir to the share", e))?;
            // SAFETY: as above.
            check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    SandboxError::NotPermitted("chroot", "CAP_SYS_CHROOT", e)
                } else {
                    SandboxError::Step("chroot", e)
                }
            })?;
            // SAFETY: as above.
            check(unsafe { libc::chdir(c"/".as_ptr()) })
                .map_err(|e| SandboxError::Step("chdir /", e))?;
            Ok(PathBuf::from("/"))
        }
        Sandbox::Namespace => pivot(share, readonly),
    }
}

fn pivot(share: &Path, readonly: bool) -> Result<PathBuf, SandboxError> {
    let step = |what| move |e| SandboxError::Step(what, e);
    if !airlock_common::sandbox::is_unshared() {
        // Never mount over the host's view of the share.
        return Err(step("enter")(io::Error::other(
            "unshare() was not called first",
        )));
    }
    // Hold the share before the tmpfs covers its path.
    let held = File::open(share).map_err(step("open the share"))?;
    let held_path = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    mount(
        Path::new("tmpfs"),
        share,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
    .map_err(step("mount the new root (tmpfs)"))?;
    let new_proc = share.join("proc");
    let new_share = share.join(&NAMESPACE_SHARE[1..]);
    for dir in [&new_proc, &new_share] {
        std::fs::create_dir(dir).map_err(step("populate the new root"))?;
    }
    // Recursive, so mounts inside the share stay visible; that also copies
    // the tmpfs sitting on the share's root, which is taken off again.
    mount(&held_path, &new_share, None, libc::MS_BIND | libc::MS_REC)
        .map_err(step("bind-mount the share"))?;
    let share_dev = held.metadata().map_err(step("stat the share"))?.dev();
    for _ in 0..2 {
        if std::fs::metadata(&new_share)
            .map_err(step("stat /share"))?
            .dev()
            == share_dev
        {
            break;
        }
        let target = cstr(&new_share).map_err(step("share path"))?;
        // SAFETY: `target` is NUL-terminated.
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
            .map_err(step("uncover the share"))?;
    }
    if std::fs::metadata(&new_share)
        .map_err(step("stat /share"))?
        .dev()
        != share_dev
    {
        return Err(step("bind-mount the share")(io::Error::other(
            "the share is not what /share shows",
        )));
    }
    drop(held);
    let mut attrs = libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID;
    if readonly {
        attrs |= libc::MOUNT_ATTR_RDONLY;
    }
    set_mount_attr(&new_share, attrs, true).map_err(step("restrict the share's mount"))?;
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // A fresh proc shows this process' own /proc/self; where the kernel
    // refuses one (a container with a masked /proc), bind the existing one.
    mount(Path::new("proc"), &new_proc, Some("proc"), proc_flags)
        .or_else(|_| {
            mount(
                Path::new("/proc"),
                &new_proc,
                None,
                libc::MS_BIND | libc::MS_REC,
            )
        })
        .map_err(step("mount /proc"))?;
    let root = cstr(share).map_err(step("share path"))?;
    // SAFETY: `root` is NUL-terminated. pivot_root(".", ".") stacks the old
    // root on top of the new one; detaching "." then removes it (the
    // documented idiom, see pivot_root(2)).
    unsafe {
        check(libc::chdir(root.as_ptr())).map_err(step("chdir to the new root"))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)
            .map_err(step("pivot_root"))?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))
            .map_err(step("detach the old root"))?;
        check(libc::chdir(c"/".as_ptr())).map_err(step("chdir /"))?;
    }
    set_mount_attr(Path::new("/"), libc::MOUNT_ATTR_RDONLY, false)
        .map_err(step("make the new root read-only"))?;
    Ok(PathBuf::from(NAMESPACE_SHARE))
}
