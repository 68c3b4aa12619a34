//! A guest that is the Linux kernel's own network stack: a TAP device (in
//! a network namespace the caller made) bridged to a vhost-user virtio-net
//! device's queues. The harness plays QEMU and vhost-net at once: frames
//! the namespace sends out of the TAP are read straight into transmit
//! buffers in guest memory, frames the device puts in receive buffers are
//! written to the TAP from there — one copy each way, as vhost-net makes.
//!
//! The TAP carries a 12-byte `virtio_net_hdr_v1` ahead of each frame
//! (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ`), so offload metadata passes through
//! unchanged: the kernel is told (`TUNSETOFFLOAD`) to hand over partial
//! checksums and TCP segments larger than the MTU exactly as far as the
//! device accepted them (VIRTIO_NET_F_CSUM, HOST_TSO4/6), and takes what
//! the device sends (GUEST_CSUM, GUEST_TSO4/6) as a virtio-net guest would.
//!
//! Nothing is translated: a TCP frame whose checksum the device left for
//! the guest (`NEEDS_CSUM` at the TCP checksum, the pseudo-header's sum in
//! it) becomes CHECKSUM_PARTIAL in the TAP's write path, as in Linux's
//! virtio-net driver, and the kernel checks the header's offsets as it
//! does there. (A TAP ignores `DATA_VALID`, so a frame only marked valid
//! with no checksum in it would count as `TcpInCsumErrors` and be dropped.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::Device;
use super::virtq::{self, Buffer};

/// Errors of the TAP device and the bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or configuring the TAP failed.
    #[error("TAP {what} failed")]
    Tap {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A TAP name that does not fit an interface name.
    #[error("TAP name {0:?} is longer than 15 bytes")]
    Name(String),
    /// The queue driver failed.
    #[error(transparent)]
    Queue(#[from] virtq::Error),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] super::memory::Error),
    /// Copying between the TAP and guest memory failed.
    #[error("{what} failed: {message}")]
    Copy {
        /// What was being done.
        what: &'static str,
        /// vm-memory's or the kernel's message.
        message: String,
    },
    /// The bridge thread panicked.
    #[error("the bridge thread panicked")]
    Panicked,
}

fn tap_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Tap { what, source }
}

// <linux/if_tun.h>
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The kernel may hand over partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// … and IPv4 TCP segments larger than the MTU.
pub const TUN_F_TSO4: u32 = 0x02;
/// … and IPv6 ones.
pub const TUN_F_TSO6: u32 = 0x04;

/// `struct virtio_net_hdr_v1`: what precedes every frame on the TAP.
pub const VNET_HDR_LEN: usize = 12;
/// A buffer: the header and the largest frame (an MTU of 65535 plus
/// Ethernet): what a TAP read or a TSO segment can be.
pub const BUF_LEN: u32 = (VNET_HDR_LEN + 65_535 + 14) as u32;
const IFNAMSIZ: usize = 16;

/// virtio-net feature bits the bridge acknowledges where offered.
pub mod features {
    /// `VIRTIO_NET_F_CSUM`: the device takes partial checksums.
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes them.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_GUEST_TSO4`.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// `VIRTIO_NET_F_GUEST_TSO6`.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// `VIRTIO_NET_F_HOST_TSO4`.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// `VIRTIO_NET_F_HOST_TSO6`.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Everything a Linux virtio-net guest with offloads on takes of what
    /// airlock-net offers.
    pub const OFFLOADS: u64 = CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | HOST_TSO4 | HOST_TSO6;
}

/// A TAP device with virtio-net headers, non-blocking.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates TAP `name` in the calling thread's network namespace.
    pub fn open(name: &str) -> Result<Tap, Error> {
        if name.len() >= IFNAMSIZ {
            return Err(Error::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(tap_err("open /dev/net/tun"))?;
        // struct ifreq: the name, then the flags (a short) in the union.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        ifreq[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes on
        // Linux) at the pointer; `ifreq` is that large and lives across the
        // call; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
        if rc < 0 {
            return Err(tap_err("TUNSETIFF")(io::Error::last_os_error()));
        }
        let hdr = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, a live
        // local.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) };
        if rc < 0 {
            return Err(tap_err("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads (`TUN_F_*`) the kernel may use in frames it hands
    /// over.
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(tap_err("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The `TUN_F_*` flags matching what the device accepted of the driver
    /// (`acked` feature bits): partial checksums with CSUM, larger TCP
    /// segments with HOST_TSO4/6.
    pub fn offload_for(acked: u64) -> u32 {
        let mut flags = 0;
        if acked & features::CSUM != 0 {
            flags |= TUN_F_CSUM;
            if acked & features::HOST_TSO4 != 0 {
                flags |= TUN_F_TSO4;
            }
            if acked & features::HOST_TSO6 != 0 {
                flags |= TUN_F_TSO6;
            }
        }
        flags
    }
}

/// Traffic through the bridge, and the thread that carries it (for its
/// CPU time).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames from the TAP into the transmit queue.
    pub to_device: AtomicU64,
    /// Frames from the receive queue to the TAP.
    pub to_tap: AtomicU64,
    /// Frames the TAP refused (write errors: the namespace's backlog full).
    pub tap_drops: AtomicU64,
    /// The bridge thread's kernel thread id, once it runs.
    pub tid: AtomicI32,
}

/// The bridge's thread: runs until dropped.
pub struct TapBridge {
    stop: EventFd,
    thread: Option<JoinHandle<Result<(), Error>>>,
    counters: Arc<Counters>,
    acked: u64,
}

const RX: usize = 0;
const TX: usize = 1;
/// Frames read from the TAP before the device is kicked.
const KICK_BATCH: usize = 64;

impl TapBridge {
    /// Bridges `tap` to `dev` (queue 0 receives, 1 transmits) with `rx`
    /// receive and `tx` transmit buffers of [`BUF_LEN`], on a thread of its
    /// own. The TAP's offloads are set from what `dev` acknowledged.
    pub fn start(mut dev: Device, tap: Tap, rx: usize, tx: usize) -> Result<TapBridge, Error> {
        tap.set_offload(Tap::offload_for(dev.acked))?;
        let mut rx_bufs = Vec::with_capacity(rx);
        for _ in 0..rx {
            rx_bufs.push(dev.mem.alloc(u64::from(BUF_LEN), 64)?);
        }
        let mut tx_free = Vec::with_capacity(tx);
        for _ in 0..tx {
            tx_free.push(dev.mem.alloc(u64::from(BUF_LEN), 64)?);
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(tap_err("stop eventfd"))?;
        let stop_rx = stop.try_clone().map_err(tap_err("stop eventfd"))?;
        let counters = Arc::new(Counters::default());
        let acked = dev.acked;
        let c = counters.clone();
        let thread = thread::Builder::new()
            .name("tap-bridge".into())
            .spawn(move || {
                // SAFETY: gettid takes no arguments and cannot fail.
                c.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                let mut bridge = Bridge {
                    rx_posted: vec![None; usize::from(dev.queues[RX].size())],
                    tx_inflight: vec![None; usize::from(dev.queues[TX].size())],
                    dev,
                    tap,
                    tx_free,
                    counters: c,
                };
                bridge.post_rx(rx_bufs)?;
                bridge.run(&stop_rx)
            })
            .map_err(tap_err("spawn the bridge thread"))?;
        Ok(TapBridge {
            stop,
            thread: Some(thread),
            counters,
            acked,
        })
    }

    /// The bridge's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The feature bits the device acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the thread is still bridging (it stops on an error).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread and returns how it ended.
    pub fn stop(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        let _ = self.stop.write(1);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for TapBridge {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

struct Bridge {
    dev: Device,
    tap: Tap,
    /// Receive buffers by head descriptor.
    rx_posted: Vec<Option<GuestAddress>>,
    /// Transmit buffers in the device's hands, by head descriptor.
    tx_inflight: Vec<Option<GuestAddress>>,
    tx_free: Vec<GuestAddress>,
    counters: Arc<Counters>,
}

fn copy_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
    move |e| Error::Copy {
        what,
        message: e.to_string(),
    }
}

fn would_block(e: &vm_memory::GuestMemoryError) -> bool {
    match e {
        vm_memory::GuestMemoryError::IOError(io) => io.kind() == io::ErrorKind::WouldBlock,
        _ => false,
    }
}

impl Bridge {
    fn post_rx(&mut self, bufs: Vec<GuestAddress>) -> Result<(), Error> {
        for addr in bufs {
            self.post_one_rx(addr)?;
        }
        self.dev.queues[RX].publish_and_kick(&self.dev.mem)?;
        Ok(())
    }

    fn post_one_rx(&mut self, addr: GuestAddress) -> Result<(), Error> {
        let head = self.dev.queues[RX].add(
            &self.dev.mem,
            &[Buffer {
                addr,
                len: BUF_LEN,
                writable: true,
            }],
        )?;
        if let Some(slot) = self.rx_posted.get_mut(usize::from(head)) {
            *slot = Some(addr);
        }
        Ok(())
    }

    fn run(&mut self, stop: &EventFd) -> Result<(), Error> {
        loop {
            let want_tap = !self.tx_free.is_empty();
            let mut fds = [
                pollfd(stop.as_raw_fd()),
                pollfd(self.dev.queues[RX].call_fd().as_raw_fd()),
                pollfd(self.dev.queues[TX].call_fd().as_raw_fd()),
                libc::pollfd {
                    // A negative fd is skipped: no transmit buffer is free.
                    fd: if want_tap {
                        self.tap.file.as_raw_fd()
                    } else {
                        -1
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is an array of 4 initialised pollfds that lives
            // across the call; poll writes only their `revents`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(tap_err("poll")(e));
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
            for (fd, q) in [(&fds[1], RX), (&fds[2], TX)] {
                if fd.revents != 0 {
                    // Non-blocking: the count is only a wake-up.
                    let _ = self.dev.queues[q].call_fd().read();
                }
            }
            self.reap_tx()?;
            self.tap_to_device()?;
            self.device_to_tap()?;
        }
    }

    /// Transmit buffers the device is done with.
    fn reap_tx(&mut self) -> Result<(), Error> {
        while let Some(used) = self.dev.queues[TX].pop_used(&self.dev.mem)? {
            if let Some(addr) = self
                .tx_inflight
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            {
                self.tx_free.push(addr);
            }
        }
        Ok(())
    }

    /// Frames the namespace sent: each read from the TAP (header and
    /// frame) straight into a transmit buffer.
    fn tap_to_device(&mut self) -> Result<(), Error> {
        let mut queued = 0;
        while let Some(addr) = self.tx_free.pop() {
            let read =
                self.dev
                    .mem
                    .mem()
                    .read_volatile_from(addr, &mut self.tap.file, BUF_LEN as usize);
            let len = match read {
                Ok(n) => n,
                Err(e) if would_block(&e) => {
                    self.tx_free.push(addr);
                    break;
                }
                Err(e) => {
                    self.tx_free.push(addr);
                    return Err(copy_err("reading the TAP")(e));
                }
            };
            let head = self.dev.queues[TX].add(
                &self.dev.mem,
                &[Buffer {
                    addr,
                    len: len as u32,
                    writable: false,
                }],
            )?;
            if let Some(slot) = self.tx_inflight.get_mut(usize::from(head)) {
                *slot = Some(addr);
            }
            self.counters.to_device.fetch_add(1, Ordering::Relaxed);
            queued += 1;
            if queued % KICK_BATCH == 0 {
                self.dev.queues[TX].publish_and_kick(&self.dev.mem)?;
            }
        }
        self.dev.queues[TX].publish_and_kick(&self.dev.mem)?;
        Ok(())
    }

    /// Frames the device sent: each written to the TAP from its receive
    /// buffer, which is then posted again.
    fn device_to_tap(&mut self) -> Result<(), Error> {
        let mut reposted = 0;
        while let Some(used) = self.dev.queues[RX].pop_used(&self.dev.mem)? {
            let Some(addr) = self
                .rx_posted
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            else {
                continue;
            };
            let len = (used.len as usize).min(BUF_LEN as usize);
            if len > VNET_HDR_LEN {
                match self
                    .dev
                    .mem
                    .mem()
                    .write_volatile_to(addr, &mut self.tap.file, len)
                {
                    Ok(_) => {
                        self.counters.to_tap.fetch_add(1, Ordering::Relaxed);
                    }
                    // The namespace's input queue is full (or the frame
                    // malformed): dropped, as a NIC would.
                    Err(_) => {
                        self.counters.tap_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.post_one_rx(addr)?;
            reposted += 1;
            if reposted % KICK_BATCH == 0 {
                self.dev.queues[RX].publish_and_kick(&self.dev.mem)?;
            }
        }
        self.dev.queues[RX].publish_and_kick(&self.dev.mem)?;
        Ok(())
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_what_the_device_accepted() {
        use features::*;
        assert_eq!(Tap::offload_for(0), 0);
        assert_eq!(Tap::offload_for(CSUM), TUN_F_CSUM);
        assert_eq!(
            Tap::offload_for(CSUM | HOST_TSO4 | HOST_TSO6 | GUEST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
        // Segments without checksum offload cannot be: none.
        assert_eq!(Tap::offload_for(HOST_TSO4), 0);
        assert!(Tap::open("a-name-longer-than-15").is_err());
    }
}
