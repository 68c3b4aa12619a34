//! airlock-fs: parse → configure → run.

use std::process::ExitCode;

use airlock_common::config_file;
use airlock_common::report::{report, EXIT_FAILURE, EXIT_USAGE};
use airlock_fs::args::Args;
use airlock_fs::config::Config;
use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let args = match config_file::parse_args(Args::command(), Args::try_parse_from) {
        Ok(a) => a,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    if args.print_capabilities {
        println!("{}", airlock_fs::capabilities());
        return ExitCode::SUCCESS;
    }
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    airlock_common::logging::init(
        &config.log,
        "airlock-fs",
        &["airlock_fs", "airlock_vhost", "airlock_common"],
    );
    airlock_common::panic::install();
    // Namespaces first: threads spawned from here on share them.
    if let Err(e) = airlock_fs::sandbox::unshare(config.sandbox) {
        return report(&e, EXIT_FAILURE);
    }
    match airlock_fs::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, e.exit_code()),
    }
}
