//! The file-system peers: how each is started, attached to QEMU and mounted
//! in the guest, for a given cache mode.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_e2e::fs_device_args;

use crate::machine::{binary_version, debian_version, PeerInfo};
use crate::vm::sibling_binary;

/// Debian's C virtiofsd (QEMU 7.2's).
pub const C_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// Where `scripts/bench` installs the Rust virtiofsd from crates.io.
pub const RUST_VIRTIOFSD: &str = "target/bench-tools/virtiofsd/bin/virtiofsd";
/// virtio-fs queue size (libvirt's default).
const QUEUE_SIZE: u16 = 1024;
/// 9p message size: 512 KiB, the largest the guest's virtio transport takes.
pub const NINEP_MSIZE: u32 = 512 * 1024;

/// The guest's caching mode, as each peer spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Nothing cached in the guest.
    Never,
    /// Close-to-open consistency.
    Auto,
    /// Everything cached.
    Always,
}

impl CacheMode {
    /// All modes, in table order.
    pub const ALL: [CacheMode; 3] = [CacheMode::Never, CacheMode::Auto, CacheMode::Always];

    /// The airlock-fs / Rust virtiofsd name.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Never => "never",
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
        }
    }

    /// The C virtiofsd name (`-o cache=`).
    fn c_virtiofsd(self) -> &'static str {
        match self {
            CacheMode::Never => "none",
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
        }
    }

    /// The 9p mount option (`cache=`): 9p has no close-to-open mode, so
    /// `auto` maps to `mmap` (no data cache except for mmap, like `none`
    /// plus shared mappings) and `always` to `loose` (page and dentry
    /// caches, no coherency).
    pub fn ninep(self) -> &'static str {
        match self {
            CacheMode::Never => "none",
            CacheMode::Auto => "mmap",
            CacheMode::Always => "loose",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What serves a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// airlock-fs with a worker pool of this size (0: the queue thread) and
    /// optionally its audit log.
    AirlockFs {
        /// `--thread-pool-size`.
        pool: u32,
        /// `--audit-log FILE`.
        audit: bool,
    },
    /// Debian's C virtiofsd.
    CVirtiofsd,
    /// The Rust virtiofsd from crates.io.
    RustVirtiofsd,
    /// QEMU's built-in 9p server (`-fsdev local` + `virtio-9p-pci`).
    NineP,
}

/// One peer of a file-system run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Mount tag, share and log name: `[a-z0-9-]`.
    pub id: &'static str,
    /// Name in the tables.
    pub label: &'static str,
    /// What serves it.
    pub kind: Kind,
}

/// airlock-fs as it ships (no pool, no audit log).
pub const AIRLOCK: Peer = Peer {
    id: "airlock",
    label: "airlock-fs",
    kind: Kind::AirlockFs {
        pool: 0,
        audit: false,
    },
};
/// airlock-fs with four worker threads.
pub const AIRLOCK_POOL: Peer = Peer {
    id: "airlock-pool4",
    label: "airlock-fs --thread-pool-size 4",
    kind: Kind::AirlockFs {
        pool: 4,
        audit: false,
    },
};
/// airlock-fs writing its audit log.
pub const AIRLOCK_AUDIT: Peer = Peer {
    id: "airlock-audit",
    label: "airlock-fs --audit-log",
    kind: Kind::AirlockFs {
        pool: 0,
        audit: true,
    },
};
/// Debian's C virtiofsd.
pub const C_VIRTIOFSD_PEER: Peer = Peer {
    id: "virtiofsd-c",
    label: "virtiofsd (C, QEMU 7.2)",
    kind: Kind::CVirtiofsd,
};
/// The Rust virtiofsd.
pub const RUST_VIRTIOFSD_PEER: Peer = Peer {
    id: "virtiofsd-rs",
    label: "virtiofsd (Rust)",
    kind: Kind::RustVirtiofsd,
};
/// QEMU's 9p.
pub const NINEP: Peer = Peer {
    id: "9p",
    label: "9p (QEMU)",
    kind: Kind::NineP,
};

impl Peer {
    /// Whether a separate daemon serves it (else QEMU does).
    pub fn has_daemon(&self) -> bool {
        !matches!(self.kind, Kind::NineP)
    }

    /// The daemon binary, if any.
    pub fn binary(&self, workspace: &Path) -> Option<PathBuf> {
        match self.kind {
            Kind::AirlockFs { .. } => Some(sibling_binary("airlock-fs")),
            Kind::CVirtiofsd => Some(PathBuf::from(C_VIRTIOFSD)),
            Kind::RustVirtiofsd => Some(workspace.join(RUST_VIRTIOFSD)),
            Kind::NineP => None,
        }
    }

    /// Why the peer cannot run here, if it cannot.
    pub fn unavailable(&self, workspace: &Path) -> Option<String> {
        let binary = self.binary(workspace)?;
        (!binary.is_file()).then(|| format!("{} is not installed", binary.display()))
    }

    /// Name and version for the report.
    pub fn info(&self, workspace: &Path) -> PeerInfo {
        let version = match self.kind {
            Kind::AirlockFs { .. } => {
                binary_version(&sibling_binary("airlock-fs")) + " (this workspace, release build)"
            }
            Kind::CVirtiofsd => format!(
                "{C_VIRTIOFSD} from qemu-system-common {}",
                debian_version("qemu-system-common")
            ),
            Kind::RustVirtiofsd => format!(
                "{} (crates.io, cargo install --locked)",
                binary_version(&workspace.join(RUST_VIRTIOFSD))
            ),
            Kind::NineP => format!("QEMU {}", debian_version("qemu-system-x86")),
        };
        PeerInfo {
            name: self.label.to_string(),
            version,
        }
    }

    /// The daemon's command line serving `share` on `socket`.
    pub fn command(
        &self,
        workspace: &Path,
        share: &Path,
        socket: &Path,
        cache: CacheMode,
        audit_log: &Path,
    ) -> Option<Command> {
        let binary = self.binary(workspace)?;
        let mut cmd = Command::new(binary);
        match self.kind {
            Kind::AirlockFs { pool, audit } => {
                cmd.arg("--socket-path")
                    .arg(socket)
                    .arg("--shared-dir")
                    .arg(share)
                    .args(["--cache", cache.name(), "--log-level", "warn"])
                    .args(["--thread-pool-size", &pool.to_string()]);
                if audit {
                    cmd.arg("--audit-log").arg(audit_log);
                }
            }
            Kind::CVirtiofsd => {
                let mut source = OsString::from("source=");
                source.push(share);
                source.push(format!(",cache={}", cache.c_virtiofsd()));
                // The namespace sandbox forks (the child would do the work,
                // hiding its CPU time); chroot keeps one process.
                cmd.arg(format!("--socket-path={}", socket.display()))
                    .arg("-o")
                    .arg(source)
                    .args(["-o", "sandbox=chroot", "-o", "log_level=warn"]);
            }
            Kind::RustVirtiofsd => {
                cmd.arg("--socket-path")
                    .arg(socket)
                    .arg("--shared-dir")
                    .arg(share)
                    .args(["--cache", cache.name(), "--sandbox", "chroot"])
                    .args(["--log-level", "warn"]);
            }
            Kind::NineP => return None,
        }
        Some(cmd)
    }

    /// QEMU arguments attaching the share.
    pub fn qemu_args(&self, share: &Path, socket: &Path) -> Vec<OsString> {
        match self.kind {
            Kind::NineP => {
                let fsdev = format!("fsdev-{}", self.id);
                vec![
                    "-fsdev".into(),
                    format!(
                        "local,id={fsdev},path={},security_model=passthrough",
                        share.display()
                    )
                    .into(),
                    "-device".into(),
                    format!("virtio-9p-pci,fsdev={fsdev},mount_tag={}", self.id).into(),
                ]
            }
            _ => fs_device_args(socket, self.id, QUEUE_SIZE),
        }
    }

    /// The guest's mount command for `/mnt/<id>`.
    pub fn mount_command(&self, cache: CacheMode) -> String {
        match self.kind {
            Kind::NineP => format!(
                "mount -t 9p -o trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache={} {id} /mnt/{id}",
                cache.ninep(),
                id = self.id
            ),
            _ => format!("mount -t virtiofs {id} /mnt/{id}", id = self.id),
        }
    }
}
