//! The fuzz targets' kept inputs, replayed on stable: every file in
//! `fuzz/regressions/<target>/` (inputs that once crashed) and
//! `fuzz/seeds/<target>/` goes through the same function the cargo-fuzz
//! target calls, so CI covers them without nightly.
//!
//! The targets cap file sizes with `RLIMIT_FSIZE`, and this test caps the
//! address space, for the whole process: hence a test binary of their own.

use std::path::PathBuf;

use airlock_fuzzing::fs::{self as fuzzing, seeds};
use airlock_fuzzing::replay;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Caps the address space 4 GiB above what the process maps at first
/// use, so a guest-sized allocation aborts the replay as it would a
/// daemon on a small host (a 4 GiB xattr buffer did).
fn cap_address_space() {
    static CAP: std::sync::Once = std::sync::Once::new();
    CAP.call_once(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let bytes = vm_kib * 1024 + (4 << 30) - 1;
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads the rlimit passed by reference, which
        // outlives the call.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
    });
}

/// Replays the target's files and its built-in seeds.
fn run(target: &str, body: fn(&[u8])) {
    cap_address_space();
    let files = replay(&fuzz_dir(), target, body);
    assert!(
        files > 0,
        "no inputs for {target} in fuzz/seeds or fuzz/regressions"
    );
    for (t, _, bytes) in seeds::all() {
        if t == target {
            body(&bytes);
        }
    }
}

#[test]
fn fuse() {
    run("fuse", fuzzing::fuzz_fuse);
}

#[test]
fn fs_chain() {
    run("fs_chain", fuzzing::fuzz_fs_chain);
}

#[test]
fn notify_channel() {
    run("notify_channel", fuzzing::fuzz_notify_channel);
}

fn seed(name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == "fuse" && *n == name)
        .map(|(_, _, b)| b)
        .unwrap_or_else(|| panic!("no fuse seed {name}"))
}

/// The session seeds really work on the share: everything succeeds but
/// the lookup of a missing name and the device node, and a read-only share
/// refuses every change.
#[test]
fn fuse_seeds_do_what_a_guest_does() {
    const LOOKUP: u32 = 1;
    const MKNOD: u32 = 8;
    const MKDIR: u32 = 9;
    let replies = fuzzing::run_fuse(&seed("lifecycle"));
    assert!(replies.len() > 30, "{replies:?}");
    let failed: Vec<_> = replies
        .iter()
        .filter(|(_, e)| e.is_some_and(|e| e != 0))
        .collect();
    assert_eq!(
        failed,
        [&(LOOKUP, Some(-libc::ENOENT)), &(MKNOD, Some(-libc::EPERM))],
        "{replies:?}"
    );
    let replies = fuzzing::run_fuse(&seed("lifecycle-readonly"));
    assert!(
        replies.contains(&(MKDIR, Some(-libc::EROFS))),
        "{replies:?}"
    );
}

/// Writes the built-in seeds to `fuzz/seeds/` (run after changing them:
/// `cargo test -p airlock-fuzzing --test fs -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds::all() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
