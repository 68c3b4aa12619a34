//! Shared pieces of the fuzz targets (`fuzz/`, `scripts/fuzz`) and of the
//! stable tests that replay their inputs: a byte cursor that never fails
//! (a fuzz input ends where it ends; missing bytes read as zero), and the
//! replay of `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`.
//!
//! Not part of the daemons' interface.

pub mod queues;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// Reads a fuzz input front to back. Reads past the end yield zeros and
/// empty slices, so a target's decoding never fails and every input
/// decodes to *something*.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.bytes(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    /// A length read as one byte (`max` ≤ 255) or two, capped at `max`,
    /// then that many bytes.
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let n = if max <= usize::from(u8::MAX) {
            usize::from(self.u8())
        } else {
            usize::from(self.u16())
        };
        self.bytes(n.min(max))
    }
}

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
    fn reads_past_the_end_are_zero_and_empty() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0102);
        assert_eq!(input.u32(), 0x0300_0000);
        assert!(input.is_empty());
        assert_eq!(input.u8(), 0);
        assert_eq!(input.bytes(5), &[] as &[u8]);
    }

    #[test]
    fn chunks_take_a_capped_length_prefix() {
        let mut input = Input::new(&[5, b'a', b'b', b'c', b'd', b'e', b'f']);
        assert_eq!(input.chunk(3), b"abc");
        assert_eq!(input.rest(), b"def");
        let mut input = Input::new(&[0, 2, b'x', b'y', b'z']);
        assert_eq!(input.chunk(1000), b"xy");
    }

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
