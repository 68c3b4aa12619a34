//! Test support, never part of a daemon: what the daemons' own tests, the
//! fuzz targets (`fuzzing/`, `fuzz/`), the end-to-end tests (`tests/`) and
//! the benchmarks (`bench/`) share.
//!
//! - [`input`]: a byte cursor over a fuzz input that never fails;
//! - [`queues`]: guest memory and split virtqueues laid out in-process, for
//!   driving a device's queue handlers directly.

pub mod input;
pub mod queues;

pub use input::Input;
