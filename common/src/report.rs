//! Printing a failure as a chain (`error: …` / `caused by: …`) and turning it
//! into the process exit status.

use std::error::Error;
use std::process::ExitCode;

/// Exit status for an error in what the user asked for (bad option values,
/// unusable paths): the same code clap uses for usage errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failure while running.
pub const EXIT_FAILURE: u8 = 1;

/// Formats `err` and all its sources, one per line.
pub fn chain(err: &dyn Error) -> String {
    let mut out = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!("\ncaused by: {cause}"));
        source = cause.source();
    }
    out
}

/// Prints the chain of `err` on stderr (and, with `--syslog`, to syslog too:
/// logged to stderr it would be printed twice) and returns `code` as the
/// exit status.
pub fn report(err: &dyn Error, code: u8) -> ExitCode {
    let text = chain(err);
    eprintln!("{text}");
    if crate::logging::to_syslog() && log::log_enabled!(log::Level::Error) {
        log::error!("{}", text.replace('\n', "; "));
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open share {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn chain_lists_every_cause() {
        let e = Outer("/srv", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            chain(&e),
            "error: cannot open share /srv\ncaused by: No such file or directory (os error 2)"
        );
    }
}
