//! The command line and the run configuration it becomes.

use std::path::PathBuf;

use airlock_common::logging::LogArgs;
use clap::{Parser, ValueEnum};

/// Errors in the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--reps 0`.
    #[error("--reps must be at least 1")]
    NoReps,
}

/// A benchmark group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Group {
    /// File systems, guest-level: airlock-fs, virtiofsd (C and Rust) and 9p,
    /// every operation in every cache mode, plus airlock-fs' thread pool and
    /// audit log.
    Fs,
    /// Issue 2's first check: airlock-fs vs the C virtiofsd at cache=auto
    /// (write + fsync, cold read, create, `ls -l` cold, `rm -rf`).
    FsQuick,
    /// Backend-only: a Rust frontend plays QEMU over the vhost-user socket
    /// (FUSE ops/s, net Gbit/s and packets/s), plus this machine's memcpy
    /// and loopback TCP limits.
    Backend,
    /// Networks, guest-level: airlock-net, passt and QEMU's slirp with
    /// iperf3 (airlock-net also over IPv6), latency, UDP and published-port
    /// connection rates.
    Net,
    /// Networks with a fast guest: the kernel's own stack in a network
    /// namespace; airlock-net (through a TAP bridge playing QEMU and
    /// vhost-net), pasta and slirp4netns with iperf3, round trips, UDP and
    /// published-port connection rates.
    Netns,
    /// airlock-fs' --notify-socket on 100 000 files (walk, idle, a burst of
    /// 10 000 changes), and inotify vs fanotify on the same tree. No guest.
    Notify,
    /// fs, backend, net, netns and notify.
    All,
}

impl Group {
    /// The name used in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Fs => "fs",
            Group::FsQuick => "fs-quick",
            Group::Backend => "backend",
            Group::Net => "net",
            Group::Netns => "netns",
            Group::Notify => "notify",
            Group::All => "all",
        }
    }
}

/// airlock-bench: Airlock's daemons against their peers, on this machine.
///
/// Normally run through `scripts/bench`, which installs the peers, builds
/// the guest and the release binaries first. Writes every repetition to
/// docs/bench/results.json, charts to docs/bench/*.svg and the tables into
/// docs/benchmarks.md (between its generated-section markers).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// What to run.
    #[arg(value_enum, default_value = "all")]
    pub groups: Vec<Group>,

    /// Repetitions of every measurement [default: 5, or 1 with --quick;
    /// fs-quick: 3].
    #[arg(long, value_name = "N")]
    pub reps: Option<u32>,

    /// A fast smoke run: small sizes, short durations, one repetition.
    /// The numbers are not worth publishing.
    #[arg(long)]
    pub quick: bool,

    /// Only these peers (ids: airlock, airlock-pool4, airlock-audit,
    /// virtiofsd-c, virtiofsd-rs, 9p, airlock-net, airlock-net-stream, passt,
    /// slirp; netns: airlock-net, pasta, slirp4netns, airlock-net-no-tso);
    /// repeatable.
    #[arg(long = "peer", value_name = "ID")]
    pub peers: Vec<String>,

    /// Raw results file (merged: groups not run are kept).
    #[arg(long, value_name = "PATH", default_value = "docs/bench/results.json")]
    pub results: PathBuf,

    /// The Markdown report whose generated sections are rewritten.
    #[arg(long, value_name = "PATH", default_value = "docs/benchmarks.md")]
    pub doc: PathBuf,

    /// Where the SVG charts go.
    #[arg(long, value_name = "DIR", default_value = "docs/bench")]
    pub charts: PathBuf,

    /// Only regenerate the report and charts from the results file.
    #[arg(long)]
    pub report_only: bool,

    /// The command line to record (scripts/bench passes what the user typed).
    #[arg(long, value_name = "TEXT", hide = true)]
    pub invoked_as: Option<String>,

    /// Logging (`--log-level`).
    #[command(flatten)]
    pub log: LogArgs,
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Groups to run, expanded and deduplicated, in order.
    pub groups: Vec<Group>,
    /// Repetitions (`None`: each group's default).
    pub reps: Option<u32>,
    /// Smoke-run sizes.
    pub quick: bool,
    /// Peer filter.
    pub peers: Vec<String>,
    /// Results file.
    pub results: PathBuf,
    /// Report.
    pub doc: PathBuf,
    /// Chart directory.
    pub charts: PathBuf,
    /// Skip measuring.
    pub report_only: bool,
    /// The command recorded in the results.
    pub command: String,
    /// Logging.
    pub log: LogArgs,
}

impl Config {
    /// Repetitions for `group`.
    pub fn reps_for(&self, group: Group) -> u32 {
        match (self.reps, self.quick, group) {
            (Some(n), _, _) => n,
            (None, true, _) => 1,
            (None, false, Group::FsQuick) => 3,
            (None, false, _) => 5,
        }
    }
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(args: Args) -> Result<Config, Error> {
        if args.reps == Some(0) {
            return Err(Error::NoReps);
        }
        let mut groups = Vec::new();
        for g in &args.groups {
            let expanded: &[Group] = match g {
                Group::All => &[
                    Group::Fs,
                    Group::Backend,
                    Group::Net,
                    Group::Netns,
                    Group::Notify,
                ],
                one => std::slice::from_ref(one),
            };
            for &e in expanded {
                if !groups.contains(&e) {
                    groups.push(e);
                }
            }
        }
        let command = args.invoked_as.clone().unwrap_or_else(|| {
            std::env::args()
                .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
                .collect::<Vec<_>>()
                .join(" ")
        });
        Ok(Config {
            groups,
            reps: args.reps,
            quick: args.quick,
            peers: args.peers,
            results: args.results,
            doc: args.doc,
            charts: args.charts,
            report_only: args.report_only,
            command,
            log: args.log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["airlock-bench"];
        argv.extend_from_slice(args);
        Config::try_from(Args::parse_from(argv))
    }

    #[test]
    fn all_expands_without_duplicates() {
        let c = config(&["fs", "all", "net"]).unwrap();
        assert_eq!(
            c.groups,
            vec![
                Group::Fs,
                Group::Backend,
                Group::Net,
                Group::Netns,
                Group::Notify
            ]
        );
        assert_eq!(config(&[]).unwrap().groups.len(), 5);
    }

    #[test]
    fn reps_defaults() {
        let c = config(&["fs-quick"]).unwrap();
        assert_eq!((c.reps_for(Group::FsQuick), c.reps_for(Group::Fs)), (3, 5));
        let c = config(&["--quick", "all"]).unwrap();
        assert_eq!(c.reps_for(Group::Net), 1);
        let c = config(&["--quick", "--reps", "2"]).unwrap();
        assert_eq!(c.reps_for(Group::Net), 2);
        assert!(matches!(config(&["--reps", "0"]), Err(Error::NoReps)));
    }
}
