//! airlock: parse → run → print.

use std::process::ExitCode;

use airlock::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match airlock::run(&cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", airlock_common::report::chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
