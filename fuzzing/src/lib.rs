//! The bodies of the cargo-fuzz targets in `fuzz/` (each target there is
//! a one-line wrapper around a function here), kept out of the daemons'
//! crates. `tests/` replays every kept input (`fuzz/seeds/`,
//! `fuzz/regressions/`) through the same functions on stable.
//!
//! Every target enters where production does, through the daemons' public
//! entry points: frames to the gateway, descriptor chains to the devices'
//! queue handlers, DHCP and DNS messages to their services, control API
//! bytes to its connection handler, FUSE requests to the file server, and
//! a guest's HTTP to the proxy's connection handler.

pub mod fs;
pub mod net;
pub mod proxy;
pub mod replay;

pub use replay::replay;
