//! airlock-man: writes `airlock-fs.1`, `airlock-net.1`, `airlock-proxy.1`,
//! `airlock.1` (and a page per `airlock` subcommand) into a directory, from
//! the same clap definitions the programs parse their arguments with.
//!
//! ```sh
//! airlock-man target/man    # what scripts/install runs
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Command, CommandFactory};

/// Every installed program's command line.
pub fn commands() -> Vec<Command> {
    vec![
        airlock_fs::args::Args::command(),
        airlock_net::args::Args::command(),
        airlock_proxy::cli::Args::command(),
        airlock::Cli::command(),
    ]
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: airlock-man DIR\nWrites the Airlock man pages (section 1) into DIR.");
        return ExitCode::from(2);
    };
    if dir == "--help" || dir == "-h" {
        println!("usage: airlock-man DIR\nWrites the Airlock man pages (section 1) into DIR.");
        return ExitCode::SUCCESS;
    }
    let dir = PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}\ncaused by: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        if let Err(e) = clap_mangen::generate_to(cmd, &dir) {
            eprintln!(
                "error: cannot write the man page of {name} into {}\ncaused by: {e}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
