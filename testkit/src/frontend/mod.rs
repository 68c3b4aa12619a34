//! A vhost-user frontend that plays QEMU, for backend-only benchmarks and
//! tests without a VM: it connects to a daemon's socket the way QEMU does
//! (features, memory table, vrings, enable), owns the "guest" memory (a
//! shared memfd) and drives split virtqueues as a guest driver would.
//!
//! - [`device`]: the vhost-user session and the device's queues;
//! - [`memory`]: the guest memory with a bump allocator;
//! - [`virtq`]: a split-virtqueue driver;
//! - [`netdev`]: a virtio-net driver on top (receive buffers, frames out);
//! - [`frames`]: the Ethernet/IPv4/UDP/ARP frames a harness guest sends;
//! - [`tap`]: a TAP device bridged to a virtio-net device, so that the
//!   guest is the kernel's network stack in a namespace.

pub mod device;
pub mod frames;
pub mod memory;
pub mod netdev;
pub mod tap;
pub mod virtq;
