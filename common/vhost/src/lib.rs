//! What the two vhost-user device daemons (airlock-net, airlock-fs) share
//! on the vhost-user side:
//!
//! - [`runner`]: serving one frontend (QEMU) after another on a listening
//!   socket, with a fresh device session, vring workers and guest memory
//!   each time;
//! - [`queue`]: draining a virtqueue the guest kicked — notification
//!   suppression with EVENT_IDX, and the guard against an available index
//!   more than a queue ahead (which used to make both devices spin).

pub mod queue;
pub mod runner;

pub use queue::{drain, Chain};
pub use runner::{GuestMemory, LifecycleArgs, RunError, Session, Vring, Worker};
