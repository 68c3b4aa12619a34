//! airlock-proxy: arguments → `Config` → `run` → exit status.

use std::process::ExitCode;

use airlock_common::config_file;
use airlock_common::logging;
use airlock_common::report::{report, EXIT_USAGE};
use airlock_proxy::{cli, Config};
use clap::CommandFactory;

fn main() -> ExitCode {
    let args = match config_file::parse_args(cli::Args::command(), cli::parse_from) {
        Ok(args) => args,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    logging::init(
        &args.log,
        "airlock-proxy",
        &["airlock_proxy", "airlock_common"],
    );
    airlock_common::panic::install();
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    match airlock_proxy::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, e.exit_code()),
    }
}
