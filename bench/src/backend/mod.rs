//! Backend-only benchmarks: no guest and no QEMU. A frontend harness in this
//! process plays QEMU over the daemon's vhost-user socket — memfd guest
//! memory, its own split-queue driver, eventfds for kick and call — and
//! pushes FUSE requests (virtio-fs) or Ethernet frames (virtio-net) as fast
//! as the daemon takes them. Also measures this machine's memcpy and
//! loopback TCP limits for comparison.

pub mod fuse;
pub mod limits;
pub mod net;
pub mod tcp;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fs::peers::{self as fs_peers, CacheMode, Peer};
use crate::procfs;
use crate::results::{Cost, Failure, GroupRun, Resource, Row, Sample};
use crate::vm::{self, Guest};
use airlock_testkit::frontend::device::{self, Device, Setup};
use fuse::FuseOp;

/// Errors of the backend group as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host directory could not be prepared.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The rig failed.
    #[error(transparent)]
    Vm(#[from] vm::Error),
}

/// Settings of a backend run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The workspace root.
    pub workspace: PathBuf,
    /// Repetitions.
    pub reps: u32,
    /// Length of each timed run.
    pub duration: Duration,
    /// Only these peers, if not empty.
    pub only_peers: Vec<String>,
}

/// Requests in flight in the FUSE tests.
pub const FUSE_DEPTHS: [usize; 2] = [1, 16];
/// The table of this machine's limits.
pub const LIMITS_TABLE: &str = "limits of this machine";

fn wanted(options: &Options, id: &str) -> bool {
    options.only_peers.is_empty() || options.only_peers.iter().any(|p| p == id)
}

/// Runs the backend group into `out`.
pub fn run(options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    out.setup.push(format!(
        "Each measurement runs {:.1} s. The harness and the daemon share this machine's {} cores.",
        options.duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    limits(options, out);
    run_fuse(options, out)?;
    net::run(options, out);
    Ok(())
}

fn limits(options: &Options, out: &mut GroupRun) {
    let mut memcpy = Vec::new();
    let mut tcp = Vec::new();
    for _ in 0..options.reps {
        memcpy.push(Sample::value(limits::memcpy_gbits(options.duration)));
        match limits::loopback_tcp_gbits(options.duration) {
            Ok(v) => tcp.push(Sample::value(v)),
            Err(e) => out.failures.push(Failure {
                table: LIMITS_TABLE.into(),
                peer: "loopback TCP".into(),
                what: airlock_common::report::chain(&e),
            }),
        }
    }
    out.rows.push(Row::new(
        LIMITS_TABLE,
        "memcpy, 64 MiB buffers, 1 thread",
        "this machine",
        "Gbit/s",
        true,
        memcpy,
    ));
    if !tcp.is_empty() {
        out.rows.push(Row::new(
            LIMITS_TABLE,
            "TCP over 127.0.0.1, 1 connection",
            "this machine",
            "Gbit/s",
            true,
            tcp,
        ));
    }
}

/// A connected FUSE peer.
struct FusePeer {
    peer: Peer,
    pid: u32,
    session: fuse::Session,
}

fn fuse_table(depth: usize) -> String {
    format!("FUSE requests/s, {depth} in flight")
}

fn fuse_cpu_table(depth: usize) -> String {
    format!("daemon CPU µs per FUSE request, {depth} in flight")
}

fn run_fuse(options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    out.setup.push(format!(
        "virtio-fs: queue size 256, {} and {} requests in flight on the request queue, a 64 MiB file \
         in the host page cache, cache=auto; EVENT_IDX when the daemon offers it. Each request is one \
         readable descriptor (header, arguments, data) and one writable one (reply).",
        FUSE_DEPTHS[0], FUSE_DEPTHS[1]
    ));
    let peers = [
        fs_peers::AIRLOCK,
        fs_peers::RUST_VIRTIOFSD_PEER,
        fs_peers::C_VIRTIOFSD_PEER,
    ];
    let mut rig = Guest::new("bench-backend-fs")?;
    let dir = rig.dir().to_path_buf();
    let mut connected = Vec::new();
    for peer in peers.into_iter().filter(|p| wanted(options, p.id)) {
        out.peers.push(peer.info(&options.workspace));
        match connect_fuse(&mut rig, &dir, &options.workspace, peer) {
            Ok(p) => connected.push(p),
            Err(what) => {
                for depth in FUSE_DEPTHS {
                    out.failures.push(Failure {
                        table: fuse_table(depth),
                        peer: peer.label.into(),
                        what: what.clone(),
                    });
                }
            }
        }
    }
    let mut samples: Vec<Vec<Vec<(Sample, Sample)>>> =
        vec![vec![Vec::new(); FuseOp::ALL.len() * FUSE_DEPTHS.len()]; connected.len()];
    let mut failed = vec![None::<String>; connected.len()];
    for rep in 0..options.reps {
        for (oi, op) in FuseOp::ALL.iter().enumerate() {
            for (di, &depth) in FUSE_DEPTHS.iter().enumerate() {
                let n = connected.len().max(1);
                for i in 0..connected.len() {
                    let pi = (i + rep as usize) % n;
                    if failed[pi].is_some() {
                        continue;
                    }
                    let p = &mut connected[pi];
                    let before = procfs::cpu_time(p.pid).ok();
                    match p.session.run(*op, depth, options.duration) {
                        Ok(t) => {
                            let after = procfs::cpu_time(p.pid).ok();
                            let secs = t.elapsed.as_secs_f64();
                            let cpu = before
                                .zip(after)
                                .map(|(b, a)| a.saturating_sub(b).as_secs_f64());
                            let rate = Sample {
                                value: t.ops as f64 / secs,
                                cost: cpu.map(|cpu_s| Cost {
                                    cpu_s,
                                    qemu_cpu_s: None,
                                    harness_cpu_s: None,
                                    bytes: Some(op.bytes() * t.ops).filter(|&b| b > 0),
                                }),
                            };
                            let per_op = Sample::value(
                                cpu.map_or(f64::NAN, |c| c * 1e6 / t.ops.max(1) as f64),
                            );
                            samples[pi][oi * FUSE_DEPTHS.len() + di].push((rate, per_op));
                        }
                        Err(e) => {
                            let what =
                                format!("{}: {}", op.label(), airlock_common::report::chain(&e));
                            log::warn!("backend fs {}: {what}", p.peer.label);
                            failed[pi] = Some(what);
                        }
                    }
                }
            }
        }
        log::info!("backend fs: repetition {}/{} done", rep + 1, options.reps);
    }
    for (pi, p) in connected.iter().enumerate() {
        for (oi, op) in FuseOp::ALL.iter().enumerate() {
            for (di, &depth) in FUSE_DEPTHS.iter().enumerate() {
                let s = &samples[pi][oi * FUSE_DEPTHS.len() + di];
                if s.is_empty() {
                    continue;
                }
                out.rows.push(Row::new(
                    fuse_table(depth),
                    op.label(),
                    p.peer.label,
                    "ops/s",
                    true,
                    s.iter().map(|x| x.0.clone()).collect(),
                ));
                out.rows.push(Row::new(
                    fuse_cpu_table(depth),
                    op.label(),
                    p.peer.label,
                    "µs",
                    false,
                    s.iter().map(|x| x.1.clone()).collect(),
                ));
            }
        }
        if let Some(what) = &failed[pi] {
            out.failures.push(Failure {
                table: fuse_table(FUSE_DEPTHS[0]),
                peer: p.peer.label.into(),
                what: what.clone(),
            });
        }
        if let (Ok(cpu), Ok(memory)) = (procfs::cpu_time(p.pid), procfs::memory(p.pid)) {
            out.resources.push(Resource {
                table: fuse_table(FUSE_DEPTHS[0]),
                peer: p.peer.label.into(),
                process: p.peer.label.into(),
                cpu_s: cpu.as_secs_f64(),
                memory: Some(memory),
            });
        }
    }
    Ok(())
}

fn connect_fuse(
    rig: &mut Guest,
    dir: &Path,
    workspace: &Path,
    peer: Peer,
) -> Result<FusePeer, String> {
    if let Some(why) = peer.unavailable(workspace) {
        return Err(why);
    }
    let share = dir.join(format!("share-{}", peer.id));
    let prepare = || -> std::io::Result<()> {
        fs::create_dir_all(&share)?;
        fs::write(
            share.join(fuse::FILE_NAME),
            vec![0x11u8; fuse::FILE_SIZE as usize],
        )
    };
    prepare().map_err(|e| format!("cannot prepare {}: {e}", share.display()))?;
    let socket = dir.join(format!("{}.sock", peer.id));
    let cmd = peer
        .command(
            workspace,
            &share,
            &socket,
            CacheMode::Auto,
            &dir.join("audit.log"),
        )
        .ok_or_else(|| "no daemon".to_string())?;
    let daemon = rig
        .spawn_daemon(peer.id, cmd, Some(&socket))
        .map_err(|e| airlock_common::report::chain(&e))?;
    let setup = Setup {
        queues: 2,
        queue_size: 256,
        features: device::F_EVENT_IDX,
        memory: 64 << 20,
    };
    let dev = Device::connect(&socket, setup).map_err(|e| airlock_common::report::chain(&e))?;
    let session =
        fuse::Session::start(dev, FUSE_DEPTHS[1]).map_err(|e| airlock_common::report::chain(&e))?;
    Ok(FusePeer {
        peer,
        pid: daemon.pid(),
        session,
    })
}
