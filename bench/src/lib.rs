//! airlock-bench: measures Airlock's daemons against their peers on this
//! machine and writes the results (`docs/bench/results.json`), the charts
//! (`docs/bench/*.svg`) and the tables in `docs/benchmarks.md`.
//!
//! Groups: [`fs`] (guest-level file systems), `backend` (a Rust frontend
//! playing QEMU over the vhost-user socket, no guest), `net`
//! (guest-level networks), [`netns`] (networks with the kernel's own stack
//! in a namespace as the guest) and [`notify`] (the cost of airlock-fs'
//! `--notify-socket`, and inotify vs fanotify). Everything runs on this machine; guest traffic
//! only reaches servers the benchmark starts on the host's loopback.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod fs;
pub mod machine;
pub mod net;
pub mod netns;
pub mod notify;
pub mod procfs;
pub mod report;
pub mod results;
pub mod stats;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cli::{Config, Group};
use results::{GroupRun, ResultsFile};

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Groups that failed as a whole (each recorded in the results).
    #[error("benchmark groups failed: {0}")]
    Groups(String),
    /// The results file could not be loaded or saved.
    #[error(transparent)]
    Results(#[from] results::Error),
    /// The report could not be written.
    #[error("cannot write the report")]
    Report(#[source] report::Error),
    /// A file-system group failed as a whole.
    #[error("file-system benchmark failed")]
    Fs(#[source] fs::Error),
    /// The network group failed as a whole.
    #[error("network benchmark failed")]
    Net(#[source] net::Error),
    /// The kernel-stack network group failed as a whole.
    #[error("kernel-stack network benchmark failed")]
    Netns(#[source] netns::Error),
    /// The backend group failed as a whole.
    #[error("backend benchmark failed")]
    Backend(#[source] backend::Error),
    /// The notify group failed as a whole.
    #[error("notify benchmark failed")]
    Notify(#[source] notify::Error),
}

/// `path` relative to the workspace root unless absolute.
fn in_workspace(workspace: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace.join(path)
    }
}

/// Runs the configured groups, saving results after each, then rewrites
/// the report.
pub fn run(config: Config) -> Result<(), Error> {
    let workspace = airlock_e2e::workspace_root();
    let results_path = in_workspace(&workspace, &config.results);
    let doc = in_workspace(&workspace, &config.doc);
    let charts = in_workspace(&workspace, &config.charts);
    let mut results = ResultsFile::load(&results_path)?;
    let mut failed = Vec::new();
    if !config.report_only {
        let machine = machine::Machine::collect();
        for &group in &config.groups {
            let mut run = GroupRun {
                command: config.command.clone(),
                date: airlock_common::time::rfc3339_now(),
                quick: config.quick,
                reps: config.reps_for(group),
                machine: machine.clone(),
                ..GroupRun::default()
            };
            log::info!("running {} ({} repetitions)", group.name(), run.reps);
            if let Err(e) = run_group(group, &config, &workspace, &mut run) {
                // One group failing as a whole (no guest, say) still leaves
                // its partial rows and the other groups worth reporting.
                let what = airlock_common::report::chain(&e);
                log::error!("{}: {what}", group.name());
                run.failures.push(results::Failure {
                    table: String::new(),
                    peer: String::new(),
                    what,
                });
                failed.push(group.name());
            }
            results.put(group.name(), run);
            results.save(&results_path)?;
            report::write(&results, &doc, &charts).map_err(Error::Report)?;
        }
    }
    report::write(&results, &doc, &charts).map_err(Error::Report)?;
    log::info!(
        "wrote {}, {} and charts in {}",
        results_path.display(),
        doc.display(),
        charts.display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Groups(failed.join(", ")))
    }
}

fn run_group(
    group: Group,
    config: &Config,
    workspace: &Path,
    run: &mut GroupRun,
) -> Result<(), Error> {
    let sizes = if config.quick {
        fs::ops::Sizes::QUICK
    } else {
        fs::ops::Sizes::FULL
    };
    let fs_options = fs::Options {
        workspace: workspace.to_path_buf(),
        reps: run.reps,
        sizes,
        only_peers: config.peers.clone(),
    };
    match group {
        Group::Fs => fs::run(fs::Suite::Full, &fs_options, run).map_err(Error::Fs),
        Group::FsQuick => fs::run(fs::Suite::Issue2, &fs_options, run).map_err(Error::Fs),
        Group::Backend => {
            let options = backend::Options {
                workspace: workspace.to_path_buf(),
                reps: run.reps,
                duration: if config.quick {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(3)
                },
                only_peers: config.peers.clone(),
            };
            backend::run(&options, run).map_err(Error::Backend)
        }
        Group::Net => {
            let options = net::Options {
                reps: run.reps,
                duration: Duration::from_secs(if config.quick { 2 } else { 10 }),
                round_trips: if config.quick { 50 } else { 200 },
                only_peers: config.peers.clone(),
            };
            net::run(&options, run).map_err(Error::Net)
        }
        Group::Netns => {
            // 12 rows on 4 peers: 5 s runs keep 3 repetitions near 15
            // minutes (no emulated CPU: iperf3 settles within a second).
            let options = netns::Options {
                reps: run.reps,
                duration: Duration::from_secs(if config.quick { 2 } else { 5 }),
                only_peers: config.peers.clone(),
            };
            netns::run(&options, run).map_err(Error::Netns)
        }
        Group::Notify => {
            let options = notify::Options { reps: run.reps };
            notify::run(&options, run).map_err(Error::Notify)
        }
        Group::All => Ok(()),
    }
}
