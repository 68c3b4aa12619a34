//! Test support, never part of a daemon: what the daemons' own tests, the
//! fuzz targets (`fuzzing/`, `fuzz/`), the end-to-end tests (`tests/`) and
//! the benchmarks (`bench/`) share.
//!
//! - [`input`]: a byte cursor over a fuzz input that never fails;
//! - [`queues`]: guest memory and split virtqueues laid out in-process, for
//!   driving a device's queue handlers directly;
//! - [`frontend`]: a vhost-user frontend over a real socket, for driving a
//!   running daemon as QEMU would (backend-only benchmarks, tests).

pub mod frontend;
pub mod input;
pub mod queues;

pub use input::Input;
