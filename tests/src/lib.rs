//! The Airlock end-to-end test rig: boots a real guest kernel under QEMU
//! (TCG) next to the Airlock daemons and checks what a user would see.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use airlock_e2e::{fs_device_args, Rig, VmConfig};
//!
//! let mut rig = Rig::new("fs_reads_a_file");
//! let share = rig.dir().join("share");
//! std::fs::create_dir(&share).unwrap();
//! std::fs::write(share.join("hello"), "hi\n").unwrap();
//! let socket = rig.dir().join("fs.sock");
//! let mut cmd = Command::new(Rig::bin("airlock-fs")); // (flags illustrative)
//! cmd.arg("--socket").arg(&socket).arg("--shared-dir").arg(&share);
//! rig.spawn_daemon("airlock-fs", cmd);
//! rig.wait_for_socket(&socket, Duration::from_secs(10));
//! let vm = rig.boot(VmConfig {
//!     script: "mount -t virtiofs share /mnt && cat /mnt/hello".into(),
//!     qemu_args: fs_device_args(&socket, "share", 1024),
//!     ..VmConfig::default()
//! });
//! let out = vm.wait();
//! out.assert_success().assert_contains("hi");
//! ```
//!
//! The guest (`scripts/build-guest`) is Debian's kernel (booted as an
//! uncompressed PVH ELF, ~3.5 s to the script's first line under TCG) with
//! busybox, `setfattr`/`getfattr`, `iperf3`, `curl`, `fio`, `dhcpcd` and
//! `inotifywait`. Its init loads the virtio, virtio-net, virtio-fs, 9p,
//! virtio-blk and virtio-serial modules, runs the test's script with the
//! test channel (ttyS1, QEMU's stdin/stdout) as its stdin/stdout/stderr,
//! prints `AIRLOCK-EXIT <status>` and powers off. Kernel messages go to
//! the console log (ttyS0).
//!
//! Guest networking: `udhcpc -i eth0 -O mtu` (its lease script sets address,
//! default route, `/etc/resolv.conf` and the offered MTU) or
//! `dhcpcd -1 -4 -B eth0`. Only `lo` is up at start.
//!
//! Everything is bounded in time and cleaned up on drop, also when a test
//! panics; failure messages carry the guest output, the console tail, QEMU's
//! stderr and each daemon's log tail. `AIRLOCK_KEEP=1` keeps rig directories.

#![warn(missing_docs)]

mod cpio;
mod daemon;
mod diag;
pub mod frontend;
mod guest;
mod netns;
mod process;
mod qemu;
mod rig;
pub mod servers;

pub use cpio::{archive as cpio_archive, CpioWriter};
pub use daemon::{DaemonHandle, DROP_GRACE, TERMINATE_TIMEOUT};
pub use guest::{guest_dir, guest_image, workspace_root, GuestImage};
pub use netns::{veth_pair, NetNs};
pub use process::{fd_count, fd_listing, process_exists, rss_anon_kib, rss_kib};
pub use qemu::{
    fs_device_args, net_device_args, notify_device_args, GuestOutput, Vm, VmConfig,
    DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT, EXIT_MARKER, KERNEL_CMDLINE, MACHINE, QEMU,
};
pub use rig::Rig;
