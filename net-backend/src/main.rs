//! airlock-net: parse → configure → run.

use std::process::ExitCode;

use airlock_common::config_file;
use airlock_common::report::{report, EXIT_USAGE};
use airlock_net::args::Args;
use airlock_net::config::Config;
use clap::CommandFactory;

fn main() -> ExitCode {
    // Started as `passt` (libvirt's passt backend): passt's command line.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if airlock_net::passt::invoked_as_passt(&argv0) {
        return airlock_net::passt::main(std::env::args_os().collect());
    }
    let args = match config_file::parse_args(Args::command(), Args::try_parse_ordered_from) {
        Ok(a) => a,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    if args.print_capabilities {
        println!("{}", airlock_net::capabilities());
        return ExitCode::SUCCESS;
    }
    airlock_common::logging::init(&args.log, "airlock-net", airlock_net::LOG_TARGETS);
    airlock_common::panic::install();
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    match airlock_net::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, e.exit_code()),
    }
}
