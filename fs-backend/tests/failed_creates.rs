//! A request that makes a name and then fails leaves nothing behind.
//!
//! Every way of making a name (CREATE, MKDIR, MKNOD, SYMLINK, LINK) makes
//! it on the host first and then looks it up, which opens a descriptor; at
//! the descriptor limit the lookup fails with EMFILE. The name made must
//! then go again: the guest was told the request failed.
//!
//! Its own test binary, so lowering `RLIMIT_NOFILE` touches no other test.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use airlock_fs::filesystem::{AirlockFs, Policy};
use airlock_fs::idmap::IdMap;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions};
use fuse_backend_rs::api::filesystem::{Context, FileSystem, ROOT_ID};
use fuse_backend_rs::passthrough::{Config, PassthroughFs};

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// Fills every free descriptor slot below a soft limit a little above the
/// descriptors in use, then frees `free` of them: the process can open
/// exactly `free` more. Dropping the result closes the fillers (the lowered
/// soft limit stays).
fn leave_free(free: usize) -> Vec<OwnedFd> {
    let in_use = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let limit = libc::rlimit {
        rlim_cur: (in_use + 64) as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is valid for writes.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let limit = libc::rlimit {
        rlim_max: old.rlim_max,
        ..limit
    };
    // SAFETY: `limit` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    // The file the fillers are copies of is one of them (kept first, so
    // that freeing fillers closes copies, not it).
    let mut fillers = vec![OwnedFd::from(std::fs::File::open("/dev/null").unwrap())];
    loop {
        // SAFETY: dup(2) of an open descriptor; the result is checked.
        let fd = unsafe { libc::dup(fillers[0].as_raw_fd()) };
        if fd < 0 {
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EMFILE)
            );
            break;
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        fillers.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    fillers.truncate(fillers.len() - free);
    fillers
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn requests_that_fail_after_making_a_name_remove_it() {
    let dir = tempfile::tempdir().unwrap();
    let share = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(share.join("target"), "x").unwrap();
    let inner = PassthroughFs::new(Config {
        root_dir: share.to_string_lossy().into_owned(),
        do_import: true,
        ..Default::default()
    })
    .unwrap();
    let fs = AirlockFs::new(
        inner,
        &share,
        Policy {
            readonly: false,
            uid_map: IdMap::default(),
            gid_map: IdMap::default(),
            announce_submounts: false,
            audit: None,
        },
    );
    fs.init(FsOptions::empty()).unwrap();
    let ctx = Context::new();
    let target = fs.lookup(&ctx, ROOT_ID, &c("target")).unwrap();

    // One descriptor free: CREATE opens the new file with it, then cannot
    // look the file up.
    let fillers = leave_free(1);
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    assert_eq!(
        errno(fs.create(&ctx, ROOT_ID, &c("file"), args)),
        libc::EMFILE
    );
    drop(fillers);

    // None free: each of these makes its name without a descriptor, then
    // cannot look it up.
    let fillers = leave_free(0);
    let made: [(&str, io::Result<_>); 4] = [
        ("dir", fs.mkdir(&ctx, ROOT_ID, &c("dir"), 0o755, 0o022)),
        (
            "fifo",
            fs.mknod(&ctx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0o022),
        ),
        (
            "symlink",
            fs.symlink(&ctx, c"target", ROOT_ID, &c("symlink")),
        ),
        ("link", fs.link(&ctx, target.inode, ROOT_ID, &c("link"))),
    ];
    drop(fillers);
    for (name, result) in made {
        assert_eq!(errno(result), libc::EMFILE, "{name}");
    }
    assert_eq!(names(&share), ["target"]);
    assert_eq!(std::fs::metadata(share.join("target")).unwrap().len(), 1);

    // With descriptors again, the same requests succeed.
    assert!(fs.create(&ctx, ROOT_ID, &c("file"), args).is_ok());
    assert!(fs.mkdir(&ctx, ROOT_ID, &c("dir"), 0o755, 0o022).is_ok());
    assert_eq!(names(&share), ["dir", "file", "target"]);
}
