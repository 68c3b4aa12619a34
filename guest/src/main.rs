//! airlock-guest: parse → configure → run.

use std::process::ExitCode;

use airlock_guest::args::{Args, Command};
use airlock_guest::watch::{self, WatchConfig};
use clap::Parser;

fn main() -> ExitCode {
    let args = Args::parse();
    airlock_guest::logger::init(args.log_level);
    match args.command {
        Command::Watch(w) => {
            let config = match WatchConfig::try_from(w) {
                Ok(c) => c,
                Err(e) => return airlock_guest::report(&e, 2),
            };
            match watch::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => airlock_guest::report(&e, 1),
            }
        }
    }
}
