//! The harness' "guest" memory: one memfd mapped shared (so the daemon can
//! map the same pages from the fd it receives in `SET_MEM_TABLE`), with a
//! bump allocator for rings and buffers.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Errors of the guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] io::Error),
    /// Mapping it failed.
    #[error("cannot map the guest memory: {0}")]
    Map(String),
    /// The bump allocator ran out.
    #[error("guest memory exhausted: {wanted} bytes wanted, {left} left")]
    Exhausted {
        /// Bytes asked for.
        wanted: u64,
        /// Bytes left.
        left: u64,
    },
    /// An access fell outside the memory.
    #[error("guest memory access at {addr:#x} failed: {message}")]
    Access {
        /// The guest address.
        addr: u64,
        /// vm-memory's message.
        message: String,
    },
}

/// Guest memory shared with a vhost-user backend.
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    size: u64,
    next: u64,
}

impl GuestMem {
    /// `size` bytes of shared memory at guest address 0.
    pub fn new(size: usize) -> Result<GuestMem, Error> {
        let name: &CStr = c"airlock-bench-guest";
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create
        // only reads it.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by no
        // one else; the File takes ownership and closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(Error::Memfd)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| Error::Map(e.to_string()))?;
        Ok(GuestMem {
            mem,
            size: size as u64,
            next: 0,
        })
    }

    /// The regions to send in `SET_MEM_TABLE`.
    pub fn regions(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, Error> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| Error::Map(e.to_string()))
            })
            .collect()
    }

    /// Allocates `len` bytes aligned to `align` (a power of two), zeroed.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, Error> {
        let start = self.next.div_ceil(align) * align;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or(Error::Exhausted {
                wanted: len,
                left: self.size.saturating_sub(start),
            })?;
        self.next = end;
        Ok(GuestAddress(start))
    }

    /// The host (this process') address of guest address `addr`, which the
    /// vhost-user protocol uses for ring addresses.
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64, Error> {
        self.mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|e| Error::Access {
                addr: addr.0,
                message: e.to_string(),
            })
    }

    /// The vm-memory view, for typed and atomic accesses.
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Copies `data` to `addr`.
    pub fn write(&self, data: &[u8], addr: GuestAddress) -> Result<(), Error> {
        self.mem.write_slice(data, addr).map_err(|e| Error::Access {
            addr: addr.0,
            message: e.to_string(),
        })
    }

    /// Copies `buf.len()` bytes from `addr`.
    pub fn read(&self, buf: &mut [u8], addr: GuestAddress) -> Result<(), Error> {
        self.mem.read_slice(buf, addr).map_err(|e| Error::Access {
            addr: addr.0,
            message: e.to_string(),
        })
    }

    /// Size of region 0 (for assertions in tests).
    pub fn size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_and_runs_out() {
        let mut m = GuestMem::new(1 << 20).unwrap();
        assert_eq!(m.size(), 1 << 20);
        let a = m.alloc(3, 1).unwrap();
        let b = m.alloc(16, 4096).unwrap();
        assert_eq!((a.0, b.0), (0, 4096));
        m.write(b"hello", b).unwrap();
        let mut buf = [0; 5];
        m.read(&mut buf, b).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(m.alloc(1 << 20, 1), Err(Error::Exhausted { .. })));
        assert_eq!(m.regions().unwrap().len(), 1);
        assert_ne!(m.host_address(b).unwrap(), 0);
    }
}
