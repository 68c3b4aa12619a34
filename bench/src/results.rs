//! The raw results (`docs/bench/results.json`): every repetition of every
//! row, grouped by benchmark group (`fs`, `fs-quick`, `backend`, `net`).
//! A run replaces the groups it ran and keeps the others, so
//! `scripts/bench net` does not erase the file-system numbers.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::{Machine, PeerInfo};
use crate::procfs::Memory;
use crate::stats::Summary;

/// Version of the file layout.
pub const SCHEMA: u32 = 1;

/// Errors loading or saving results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a results file of this layout.
    #[error("{path} is not a results file this version understands")]
    Format {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The whole results file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultsFile {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Each group's latest run.
    pub groups: BTreeMap<String, GroupRun>,
}

/// One run of one benchmark group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupRun {
    /// The command as the user typed it.
    pub command: String,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// Whether it was a `--quick` smoke run (smaller sizes, fewer repetitions).
    pub quick: bool,
    /// Repetitions per row.
    pub reps: u32,
    /// The host.
    pub machine: Machine,
    /// The peers measured, with versions.
    pub peers: Vec<PeerInfo>,
    /// How the group was set up (sizes, cache modes, mount options, …).
    pub setup: Vec<String>,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Cost of each daemon (or QEMU) over a whole load.
    pub resources: Vec<Resource>,
    /// Rows or peers that could not be measured, and why.
    pub failures: Vec<Failure>,
}

/// One measured quantity of one peer, with all its repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The table it belongs to, e.g. `cache=auto`.
    pub table: String,
    /// What was measured, e.g. `write 128 MiB + fsync`.
    pub test: String,
    /// The peer.
    pub peer: String,
    /// Unit of the values.
    pub unit: String,
    /// Whether larger values are better (throughput) or worse (time).
    pub higher_is_better: bool,
    /// One entry per repetition.
    pub samples: Vec<Sample>,
    /// Median and spread of the sample values.
    pub summary: Option<Summary>,
}

impl Row {
    /// A row with its summary computed from `samples`.
    pub fn new(
        table: impl Into<String>,
        test: impl Into<String>,
        peer: impl Into<String>,
        unit: impl Into<String>,
        higher_is_better: bool,
        samples: Vec<Sample>,
    ) -> Row {
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        Row {
            table: table.into(),
            test: test.into(),
            peer: peer.into(),
            unit: unit.into(),
            higher_is_better,
            summary: Summary::of(&values),
            samples,
        }
    }

    /// Median CPU seconds of the serving process per GiB moved, where the
    /// samples carry cost figures.
    pub fn cpu_per_gib(&self) -> Option<Summary> {
        self.per_gib(|c| Some(c.cpu_s))
    }

    /// Median CPU seconds of QEMU outside its vCPU threads per GiB moved,
    /// where recorded next to a daemon's.
    pub fn qemu_cpu_per_gib(&self) -> Option<Summary> {
        self.per_gib(|c| c.qemu_cpu_s)
    }

    /// Median CPU seconds of the harness thread per GiB moved, where
    /// recorded next to a daemon's.
    pub fn harness_cpu_per_gib(&self) -> Option<Summary> {
        self.per_gib(|c| c.harness_cpu_s)
    }

    fn per_gib(&self, cpu: impl Fn(&Cost) -> Option<f64>) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| {
                let cost = s.cost.as_ref()?;
                let bytes = cost.bytes? as f64;
                let cpu = cpu(cost)?;
                (bytes > 0.0).then(|| cpu / (bytes / f64::from(1u32 << 30)))
            })
            .collect();
        Summary::of(&values)
    }
}

/// One repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The measured value, in the row's unit.
    pub value: f64,
    /// What serving it cost, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

impl Sample {
    /// A sample without cost figures.
    pub fn value(value: f64) -> Sample {
        Sample { value, cost: None }
    }
}

/// CPU time spent serving one repetition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// CPU seconds of the serving process (the daemon; for QEMU's built-in
    /// back ends, QEMU outside its vCPU threads).
    pub cpu_s: f64,
    /// CPU seconds of QEMU outside its vCPU threads during the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_cpu_s: Option<f64>,
    /// CPU seconds of the benchmark's own harness thread that plays QEMU
    /// and vhost-net for the daemon (the kernel-stack guest's TAP bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_cpu_s: Option<f64>,
    /// Payload bytes moved, for CPU-per-GiB figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A serving process' totals over one whole load (one guest's life or one
/// backend benchmark).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// The table (load) it belongs to.
    pub table: String,
    /// The peer.
    pub peer: String,
    /// The process measured (`airlock-fs`, `qemu (non-vCPU threads)`, …).
    pub process: String,
    /// CPU seconds over the load.
    pub cpu_s: f64,
    /// Memory at the end of the load; none for a thread of the benchmark
    /// itself (the harness), which has none of its own.
    #[serde(default)]
    pub memory: Option<Memory>,
}

/// Something that could not be measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The table.
    pub table: String,
    /// The peer, or "" for the whole table.
    pub peer: String,
    /// What failed and why.
    pub what: String,
}

impl ResultsFile {
    /// Loads `path`, or an empty file if it does not exist.
    pub fn load(path: &Path) -> Result<ResultsFile, Error> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ResultsFile {
                    schema: SCHEMA,
                    groups: BTreeMap::new(),
                })
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| Error::Format {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the file (pretty JSON), atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io_err = |source| Error::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(|e| io_err(e.into()))?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text).map_err(io_err)?;
        fs::rename(&tmp, path).map_err(io_err)
    }

    /// Replaces group `name` with `run`.
    pub fn put(&mut self, name: &str, run: GroupRun) {
        self.schema = SCHEMA;
        self.groups.insert(name.to_string(), run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_gib_uses_samples_with_bytes() {
        let cost = |cpu_s, bytes| {
            Some(Cost {
                cpu_s,
                qemu_cpu_s: None,
                harness_cpu_s: None,
                bytes,
            })
        };
        let row = Row::new(
            "t",
            "x",
            "p",
            "MiB/s",
            true,
            vec![
                Sample {
                    value: 1.0,
                    cost: cost(0.5, Some(512 << 20)),
                },
                Sample {
                    value: 2.0,
                    cost: cost(3.0, Some(1 << 30)),
                },
                Sample {
                    value: 3.0,
                    cost: cost(1.0, None),
                },
                Sample::value(4.0),
            ],
        );
        assert_eq!(row.summary.unwrap().median, 2.5);
        let per_gib = row.cpu_per_gib().unwrap();
        assert_eq!((per_gib.n, per_gib.median), (2, 2.0));
    }

    #[test]
    fn round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/results.json");
        let mut file = ResultsFile::load(&path).unwrap();
        assert!(file.groups.is_empty());
        file.put(
            "fs",
            GroupRun {
                command: "scripts/bench fs".into(),
                reps: 3,
                ..GroupRun::default()
            },
        );
        file.save(&path).unwrap();
        let mut again = ResultsFile::load(&path).unwrap();
        again.put("net", GroupRun::default());
        assert_eq!(again.groups.len(), 2);
        assert_eq!(again.groups["fs"].command, "scripts/bench fs");
    }
}
