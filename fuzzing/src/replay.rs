//! The replay of kept fuzz inputs: `fuzz/regressions/<target>/` (inputs
//! that once crashed) and `fuzz/seeds/<target>/`, each through the same
//! body the cargo-fuzz target calls.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// How long one kept input may run before the replay calls it a hang.
pub const REPLAY_LIMIT: Duration = Duration::from_secs(60);

/// Runs `target` on every file in `<fuzz_dir>/regressions/<name>/` and
/// `<fuzz_dir>/seeds/<name>/`, each on its own thread under
/// `catch_unwind` and [`REPLAY_LIMIT`], and panics naming every file that
/// made it panic or hang (a hung thread is left behind). Returns how many
/// files ran.
pub fn replay(fuzz_dir: &Path, name: &str, target: fn(&[u8])) -> usize {
    let mut files: Vec<PathBuf> = Vec::new();
    for kind in ["regressions", "seeds"] {
        let dir = fuzz_dir.join(kind).join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut failed = Vec::new();
    for path in &files {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                failed.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let (finished, done) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("fuzz-replay".into())
            .spawn(move || {
                let ok = panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_ok();
                let _ = finished.send(ok);
            });
        if let Err(e) = spawned {
            failed.push(format!("{}: cannot start a thread: {e}", path.display()));
            continue;
        }
        match done.recv_timeout(REPLAY_LIMIT) {
            Ok(true) => {}
            Ok(false) | Err(RecvTimeoutError::Disconnected) => {
                failed.push(path.display().to_string())
            }
            Err(RecvTimeoutError::Timeout) => failed.push(format!(
                "{} (still running after {REPLAY_LIMIT:?})",
                path.display()
            )),
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target {name} failed on:\n  {}",
        failed.join("\n  ")
    );
    files.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_names_the_inputs_that_panic() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = dir.path().join("seeds/t");
        std::fs::create_dir_all(&seeds).unwrap();
        std::fs::write(seeds.join("ok"), b"fine").unwrap();
        std::fs::write(seeds.join("bad"), b"boom").unwrap();
        let target: fn(&[u8]) = |d| assert_ne!(d, b"boom");
        let err = panic::catch_unwind(|| replay(dir.path(), "t", target)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("seeds/t/bad") && !msg.contains("seeds/t/ok"),
            "{msg}"
        );
        std::fs::remove_file(seeds.join("bad")).unwrap();
        assert_eq!(replay(dir.path(), "t", target), 1);
    }
}
