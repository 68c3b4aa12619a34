//! airlock-bench: parse → configure → run.

use std::process::ExitCode;

use airlock_bench::cli::{Args, Config};
use airlock_common::report::{report, EXIT_FAILURE, EXIT_USAGE};
use clap::Parser;

fn main() -> ExitCode {
    let config = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    airlock_common::logging::init(&config.log, "airlock-bench", &["airlock_bench"]);
    match airlock_bench::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, EXIT_FAILURE),
    }
}
