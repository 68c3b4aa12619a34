//! The daemons' panic hook.
//!
//! A panic is a bug; what matters is that its message reaches whoever runs
//! the daemon, also under `--seccomp kill`. Rust's default hook prints the
//! message and, with `RUST_BACKTRACE` set, a backtrace whose file names are
//! shortened relative to the working directory (`getcwd`): every allow-list
//! has `getcwd` for that (it only reads this process's working directory,
//! which `/proc/self/cwd` shows anyway). This hook runs the default one and,
//! with `--syslog`, also logs the message there, where the daemon's other
//! messages are (stderr may go nowhere then).

use std::panic::PanicHookInfo;

/// Installs the hook; call it once logging is set up.
pub fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::logging::to_syslog() {
            log::error!("{}", describe(info));
        }
        default(info);
    }));
}

/// `panic in thread 'name' at src/x.rs:1:2: message`.
pub fn describe(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    match info.location() {
        Some(at) => format!("panic in thread '{name}' at {at}: {message}"),
        None => format!("panic in thread '{name}': {message}"),
    }
}
