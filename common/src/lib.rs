//! What the Airlock daemons share.
//!
//! - [`listen`]: acquiring the listening socket those three ways;
//! - [`logging`]: stderr/syslog logger with `--log-level` and rate limiting for
//!   guest-triggerable paths;
//! - [`audit`]: the JSON-lines audit log writer every daemon uses;
//! - [`report`]: printing an error chain and mapping it to an exit code;
//! - [`daemon`]: the start-up steps every daemon shares;
//! - [`panic`]: the panic hook (panics also reach syslog);
//! - [`config_file`]: `--config FILE`, options from a TOML file;
//! - [`sandbox`] / [`seccomp`]: confinement (mount namespace, read-only
//!   mounts, `--user`) and the `--seccomp` allow-list filter;

pub mod audit;
pub mod config_file;
pub mod daemon;
pub mod listen;
pub mod logging;
pub mod notify;
pub mod panic;
pub mod report;
pub mod sandbox;
pub mod seccomp;
pub mod signals;
pub mod sys;
pub mod time;
