//! `--pcap FILE`: every frame between the guest and the gateway, in the
//! classic pcap format (what tcpdump, Wireshark and passt's own `--pcap`
//! write), on either transport.
//!
//! The file is opened at start-up, before the sandbox and the seccomp
//! filter; capturing is then plain `write(2)` calls. It is bounded by
//! `--pcap-size`: the frame that would pass the limit is not written, and
//! capturing stops there (a log line says so), so the file is always a
//! whole, readable capture of the session's beginning.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microsecond-resolution pcap, native byte order (readers detect it).
const MAGIC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Captured bytes per frame: the largest frame either transport carries.
const SNAPLEN: u32 = 65_535 + 14;
const FILE_HEADER: usize = 24;
const RECORD_HEADER: usize = 16;

/// Smallest `--pcap-size`: the file header and one full-sized frame.
pub const MIN_SIZE: u64 = (FILE_HEADER + RECORD_HEADER) as u64 + SNAPLEN as u64;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot create --pcap file {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot write the header of --pcap file {0}")]
    Header(PathBuf, #[source] io::Error),
}

struct State {
    file: File,
    written: u64,
    stopped: bool,
}

/// An open capture file, shared by the sessions of one process (each
/// transport session records on its own thread, one at a time).
pub struct Pcap {
    path: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

impl Pcap {
    /// Creates (or truncates) `path`, mode 0600, and writes the pcap file
    /// header. `limit` is the file's largest size in bytes.
    pub fn create(path: &Path, limit: u64) -> Result<Pcap, PcapError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| PcapError::Create(path.to_owned(), e))?;
        let mut header = [0u8; FILE_HEADER];
        header[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        header[4..6].copy_from_slice(&2u16.to_ne_bytes());
        header[6..8].copy_from_slice(&4u16.to_ne_bytes());
        // thiszone and sigfigs: 0.
        header[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        file.write_all(&header)
            .map_err(|e| PcapError::Header(path.to_owned(), e))?;
        Ok(Pcap {
            path: path.to_owned(),
            limit,
            state: Mutex::new(State {
                file,
                written: FILE_HEADER as u64,
                stopped: false,
            }),
        })
    }

    /// Appends one frame, unless the capture is full or failed.
    pub fn record(&self, frame: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.stopped {
            return;
        }
        let caplen = frame.len().min(SNAPLEN as usize);
        let size = (RECORD_HEADER + caplen) as u64;
        if st.written + size > self.limit {
            st.stopped = true;
            log::warn!(
                "--pcap file {} reached --pcap-size ({} bytes): capture stopped",
                self.path.display(),
                self.limit
            );
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut header = [0u8; RECORD_HEADER];
        // The 32-bit seconds field wraps in 2106, as every pcap reader expects.
        header[0..4].copy_from_slice(&(now.as_secs() as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&now.subsec_micros().to_ne_bytes());
        header[8..12].copy_from_slice(&(caplen as u32).to_ne_bytes());
        header[12..16].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let mut record = Vec::with_capacity(RECORD_HEADER + caplen);
        record.extend_from_slice(&header);
        record.extend_from_slice(&frame[..caplen]);
        match st.file.write_all(&record) {
            Ok(()) => st.written += size,
            Err(e) => {
                st.stopped = true;
                log::error!(
                    "cannot write --pcap file {}: {e}; capture stopped",
                    self.path.display()
                );
            }
        }
    }
}

/// Parses `--pcap-size`: bytes, or with a K, M or G suffix (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn frames_are_recorded_until_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cap.pcap");
        // Room for the header and exactly two 100-byte frames.
        let limit = (FILE_HEADER + 2 * (RECORD_HEADER + 100)) as u64;
        let pcap = Pcap::create(&path, limit).unwrap();
        for i in 0..3u8 {
            pcap.record(&[i; 100]);
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, limit, "the third frame would not fit");
        assert_eq!(u32_at(&bytes, 0), MAGIC);
        assert_eq!(u32_at(&bytes, 20), LINKTYPE_ETHERNET);
        let second = FILE_HEADER + RECORD_HEADER + 100;
        assert_eq!(u32_at(&bytes, second + 8), 100, "caplen");
        assert_eq!(u32_at(&bytes, second + 12), 100, "original length");
        assert_eq!(bytes[second + RECORD_HEADER], 1, "the second frame's bytes");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
