//! A writer for uncompressed `newc` cpio archives, the format Linux unpacks
//! as an initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! The harness uses it to add the per-test `/test.sh` to the cached guest
//! initramfs: the kernel unpacks concatenated archives one after another, so a
//! second small archive appended to the first overrides or adds files.

use std::io::{self, Write};

/// `newc` magic: ASCII cpio with hex fields, no checksum.
const MAGIC: &str = "070701";
/// The header is the magic plus 13 eight-digit hex fields.
const HEADER_LEN: usize = 6 + 13 * 8;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// File type bits of `st_mode`.
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// Writes a `newc` archive entry by entry; call [`CpioWriter::finish`] to add
/// the trailer. Entries are owned by root and have mtime 0.
pub struct CpioWriter<W: Write> {
    out: W,
    /// Bytes written so far: entries are padded to 4-byte boundaries of the
    /// archive, so the archive must start 4-byte aligned in its container.
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Adds a regular file. `path` is relative to the root (`"test.sh"`,
    /// `"etc/x.conf"`; a leading `/` is removed); `perm` holds the permission
    /// bits (e.g. `0o755`).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data)
    }

    /// Adds a directory (parents are not created implicitly).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_entry(TRAILER, 0, 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {path:?}"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(name, ino, mode, nlink, data)
    }

    fn write_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: newc entries are limited to 4 GiB"),
            )
        })?;
        // Name length includes the terminating NUL.
        let name_len = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let fields: [u32; 13] = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            size, 0, 0, // dev major, minor
            0, 0, // rdev major, minor
            name_len, 0, // check: unused by newc
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..padding])
    }
}

/// An archive holding just these regular files (`(path, permissions, contents)`).
pub fn archive(files: &[(&str, u32, &[u8])]) -> io::Result<Vec<u8>> {
    let mut writer = CpioWriter::new(Vec::new());
    for (path, perm, data) in files {
        writer.file(path, *perm, data)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: (name, mode, nlink, data).
    type Entry = (String, u32, u32, Vec<u8>);

    /// An independent reader, written from the format description.
    fn parse(mut archive: &[u8]) -> Vec<Entry> {
        let total = archive.len();
        let mut entries = Vec::new();
        loop {
            let offset = total - archive.len();
            assert_eq!(offset % 4, 0, "entry at unaligned offset {offset}");
            assert_eq!(&archive[..6], b"070701", "bad magic at {offset}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&archive[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, nlink, size, name_len) = (field(1), field(4), field(6), field(11));
            let name_end = HEADER_LEN + name_len as usize;
            assert_eq!(archive[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(archive[HEADER_LEN..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = archive[data_start..data_end].to_vec();
            archive = &archive[data_end.next_multiple_of(4)..];
            if name == TRAILER {
                assert!(archive.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push((name, mode, nlink, data));
        }
    }

    #[test]
    fn single_file_matches_the_reference_layout() {
        let bytes = archive(&[("/test.sh", 0o755, b"echo hi\n")]).unwrap();
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081ed", // mode: regular file, 0755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000008", // size
            "00000000", "00000000", "00000000", "00000000", "00000008", // "test.sh\0"
            "00000000",
        );
        assert_eq!(&bytes[..HEADER_LEN], expected_header.as_bytes());
        // 110 + 8 = 118 -> padded to 120; data 8 bytes -> 128.
        assert_eq!(&bytes[HEADER_LEN..120], b"test.sh\0\0\0");
        assert_eq!(&bytes[120..128], b"echo hi\n");
        assert_eq!(&bytes[128..134], b"070701");
        // Trailer: 110 + 11 = 121 -> 124.
        assert_eq!(bytes.len(), 128 + 124);
    }

    #[test]
    fn round_trips_files_and_directories_with_any_length() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.dir("etc", 0o755).unwrap();
        let mut expected = vec![("etc".to_string(), S_IFDIR | 0o755, 2, Vec::new())];
        // Every name and data length modulo 4 so each padding case occurs.
        for len in 0..9 {
            let name = format!("etc/{}", "n".repeat(len + 1));
            let data: Vec<u8> = (0..len as u8).collect();
            writer.file(&name, 0o644, &data).unwrap();
            expected.push((name, S_IFREG | 0o644, 1, data));
        }
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(parse(&bytes), expected);
    }

    #[test]
    fn rejects_names_the_kernel_would_misread() {
        for bad in ["", "/", "a\0b", TRAILER] {
            let mut writer = CpioWriter::new(Vec::new());
            assert!(writer.file(bad, 0o644, b"").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keeps_only_permission_bits_of_perm() {
        let bytes = archive(&[("x", 0o170_755, b"")]).unwrap();
        assert_eq!(parse(&bytes)[0].1, S_IFREG | 0o755);
    }
}
