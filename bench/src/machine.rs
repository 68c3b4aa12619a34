//! Facts about the machine and the software measured, recorded with every
//! run: CPU, cores, memory, kernel, QEMU, and each peer's version.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The host a run happened on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// `MemTotal` in MiB.
    pub memory_mib: u64,
    /// The host kernel release (`uname -r`).
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    /// First line of `qemu-system-x86_64 --version`.
    pub qemu: String,
    /// The Rust compiler that built the daemons (`rustc --version`).
    pub rustc: String,
    /// Whether a hypervisor flag is set in `/proc/cpuinfo` (a cloud VM:
    /// neighbours may steal CPU time).
    pub virtualized: bool,
}

impl Machine {
    /// Collects the facts; anything unreadable is left empty.
    pub fn collect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let virtualized = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let os = fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            os,
            qemu: first_line_of(Command::new(airlock_e2e::QEMU).arg("--version")),
            rustc: first_line_of(Command::new("rustc").arg("--version")),
            virtualized,
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} cores{}), {} MiB RAM, {} kernel {}, {}",
            self.cpu_model,
            self.cores,
            if self.virtualized {
                ", virtual machine"
            } else {
                ""
            },
            self.memory_mib,
            self.os,
            self.kernel,
            self.qemu
        )
    }
}

/// The first non-empty line a command prints (stdout, else stderr), or "".
pub fn first_line_of(cmd: &mut Command) -> String {
    let Ok(out) = cmd.output() else {
        return String::new();
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// The installed version of a Debian package, or "".
pub fn debian_version(package: &str) -> String {
    first_line_of(Command::new("dpkg-query").args(["-W", "-f", "${Version}\n", package]))
}

/// `<binary> --version`'s first line, or "" if it does not run.
pub fn binary_version(binary: &Path) -> String {
    if !binary.exists() {
        return String::new();
    }
    first_line_of(Command::new(binary).arg("--version"))
}

/// A peer and the version measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's name in the tables.
    pub name: String,
    /// Its version (and where it came from).
    pub version: String,
}
