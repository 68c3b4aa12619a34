//! airlock-net: parse → configure → run.

use std::process::ExitCode;

use airlock_common::report::{report, EXIT_FAILURE, EXIT_USAGE};
use airlock_net::args::Args;
use airlock_net::config::Config;

fn main() -> ExitCode {
    let args = Args::parse_ordered();
    if args.print_capabilities {
        println!("{}", airlock_net::capabilities());
        return ExitCode::SUCCESS;
    }
    airlock_common::logging::init(&args.log, "airlock-net", &["airlock_net", "airlock_common"]);
    let config = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => return report(&e, EXIT_USAGE),
    };
    if let Err(e) = airlock_common::signals::install() {
        return report(&e, EXIT_FAILURE);
    }
    match airlock_net::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, EXIT_FAILURE),
    }
}
