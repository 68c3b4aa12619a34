//! File systems, guest-level: one guest per cache mode with every peer's
//! share attached side by side (each its own mount tag and host directory,
//! all on the same host file system); the host walks the guest through each
//! operation on each peer in turn, repetition after repetition, rotating the
//! peer order so no peer always goes first.

pub mod input;
pub mod ops;
pub mod peers;
pub mod script;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_e2e::DaemonHandle;

use crate::procfs;
use crate::results::{Cost, Failure, GroupRun, Resource, Row, Sample};
use crate::vm::{self, Guest};
use ops::{Op, Sizes};
use peers::{CacheMode, Peer};

/// Errors of a file-system run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Preparing a host directory failed.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source tarball could not be made.
    #[error("cannot prepare the source tree input")]
    Input(#[source] input::Error),
    /// The guest or a daemon failed.
    #[error("guest run failed")]
    Vm(#[source] vm::Error),
    /// The guest said something unexpected.
    #[error("unexpected guest output after {step}: {output}")]
    Protocol {
        /// The step.
        step: String,
        /// The tail of what the guest printed.
        output: String,
    },
}

/// Guest RAM for file-system runs: room for the page cache of a 128 MiB file.
const GUEST_MEMORY_MIB: u32 = 1024;
/// How long the guest may take to boot and mount everything.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one operation may take.
const OP_TIMEOUT: Duration = Duration::from_secs(1800);
/// The whole guest's limit.
const VM_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Which file-system benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// Every operation, every cache mode, every peer, plus airlock-fs'
    /// option variants at cache=auto.
    Full,
    /// Issue 2's first check: airlock-fs vs the C virtiofsd, cache=auto,
    /// write + cold read + create + `ls -l` cold + `rm -rf`.
    Issue2,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The workspace root.
    pub workspace: PathBuf,
    /// Repetitions of every operation.
    pub reps: u32,
    /// Sizes.
    pub sizes: Sizes,
    /// Only these peer ids, if not empty.
    pub only_peers: Vec<String>,
}

/// One guest: a cache mode, its peers and operations, and which table each
/// peer's rows go to.
struct Plan {
    cache: CacheMode,
    peers: Vec<Peer>,
    ops: Vec<Op>,
    tables: Vec<(String, Vec<&'static str>)>,
}

impl Plan {
    fn tables_of(&self, peer: &Peer) -> Vec<&str> {
        self.tables
            .iter()
            .filter(|(_, ids)| ids.contains(&peer.id))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn name(&self) -> String {
        format!("cache={}", self.cache)
    }
}

/// Table name of the main comparison at `cache`.
pub fn table_name(cache: CacheMode) -> String {
    format!("cache={cache}")
}

/// Table name of airlock-fs' option variants.
pub const VARIANTS_TABLE: &str = "airlock-fs options (cache=auto)";

fn plans(suite: Suite) -> Vec<Plan> {
    let main = [
        peers::AIRLOCK,
        peers::C_VIRTIOFSD_PEER,
        peers::RUST_VIRTIOFSD_PEER,
        peers::NINEP,
    ];
    match suite {
        Suite::Issue2 => vec![Plan {
            cache: CacheMode::Auto,
            peers: vec![peers::AIRLOCK, peers::C_VIRTIOFSD_PEER],
            ops: ops::QUICK.to_vec(),
            tables: vec![(
                table_name(CacheMode::Auto),
                vec![peers::AIRLOCK.id, peers::C_VIRTIOFSD_PEER.id],
            )],
        }],
        Suite::Full => CacheMode::ALL
            .iter()
            .map(|&cache| {
                let mut peers = main.to_vec();
                let mut tables = vec![(table_name(cache), main.iter().map(|p| p.id).collect())];
                if cache == CacheMode::Auto {
                    peers.extend([peers::AIRLOCK_POOL, peers::AIRLOCK_AUDIT]);
                    tables.push((
                        VARIANTS_TABLE.to_string(),
                        vec![
                            peers::AIRLOCK.id,
                            peers::AIRLOCK_POOL.id,
                            peers::AIRLOCK_AUDIT.id,
                        ],
                    ));
                }
                Plan {
                    cache,
                    peers,
                    ops: ops::ALL.to_vec(),
                    tables,
                }
            })
            .collect(),
    }
}

/// Runs `suite` and fills `out` (rows, resources, failures, setup, peers).
pub fn run(suite: Suite, options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    let tarball = input::source_tarball(&options.workspace).map_err(Error::Input)?;
    out.setup.extend(setup_notes(suite, options, &tarball));
    let mut seen = Vec::new();
    for plan in plans(suite) {
        let mut plan = plan;
        plan.peers.retain(|p| {
            options.only_peers.is_empty() || options.only_peers.iter().any(|o| o == p.id)
        });
        for peer in &plan.peers {
            if !seen.contains(&peer.id) {
                seen.push(peer.id);
                out.peers.push(peer.info(&options.workspace));
            }
        }
        log::info!(
            "fs {}: {} peers, {} operations, {} repetitions",
            plan.name(),
            plan.peers.len(),
            plan.ops.len(),
            options.reps
        );
        if let Err(e) = run_plan(&plan, options, &tarball, out) {
            let what = airlock_common::report::chain(&e);
            log::error!("fs {}: {what}", plan.name());
            out.failures.push(Failure {
                table: plan.name(),
                peer: String::new(),
                what,
            });
        }
    }
    Ok(())
}

fn setup_notes(suite: Suite, options: &Options, tarball: &input::Tarball) -> Vec<String> {
    let s = options.sizes;
    let mut notes = vec![
        format!(
            "One TCG guest per cache mode ({} MiB RAM, 1 vCPU) with every peer's share attached at once; \
             each peer serves its own directory on the same host file system; operations run on each \
             peer in turn, the peer order rotated every repetition.",
            GUEST_MEMORY_MIB
        ),
        "Before every operation but `stat`, the guest runs `sync; echo 3 > /proc/sys/vm/drop_caches`; \
         before the cold ones (cold read, random I/O, `ls -l`, `find`) the host drops its caches too \
         (`echo 3 > /proc/sys/vm/drop_caches`)."
            .to_string(),
        format!(
            "Sequential: `dd bs=1M count={}` from /dev/zero with `conv=fsync`, then `dd` to /dev/null. \
             Random: fio `--bs=4k --direct=1 --ioengine=psync --iodepth=1 --io_size={}M` on that file \
             (O_DIRECT so every 4 KiB request reaches the server; IOPS as fio reports them).",
            s.seq_mib, s.random_io_mib
        ),
        format!(
            "Small files: {} × `echo x > f$i` (shell built-ins), one `stat` of all of them, `ls -l`, `rm -rf`. \
             Source tree: {}, extracted by busybox `tar -xf` from the guest's tmpfs into the share.",
            s.files, tarball.description
        ),
        "Cache modes: airlock-fs and the Rust virtiofsd `--cache never|auto|always`, the C virtiofsd \
         `-o cache=none|auto|always`; 9p has no close-to-open mode, so never → `cache=none`, \
         auto → `cache=mmap`, always → `cache=loose`."
            .to_string(),
        format!(
            "virtiofsd (C) runs with `-o sandbox=chroot` and the Rust virtiofsd with `--sandbox chroot` \
             (their default namespace sandbox forks; a container cannot always create the namespaces, and \
             one process keeps CPU accounting comparable); both with their default thread pools. \
             virtio-fs queue size 1024. 9p: `-fsdev local,security_model=passthrough`, \
             `mount -t 9p -o trans=virtio,version=9p2000.L,msize={}`.",
            peers::NINEP_MSIZE
        ),
    ];
    if suite == Suite::Issue2 {
        notes.push(
            "Issue 2's subset: airlock-fs and the C virtiofsd at cache=auto only.".to_string(),
        );
    }
    notes
}

/// A running peer: its daemon, if it has one.
struct Running {
    peer: Peer,
    daemon: Option<DaemonHandle>,
}

/// CPU counters around one operation.
struct CpuMark {
    daemon: Option<Duration>,
    qemu: Option<Duration>,
}

fn mark(running: &Running, qemu_pid: Option<u32>) -> CpuMark {
    CpuMark {
        daemon: running
            .daemon
            .as_ref()
            .and_then(|d| procfs::cpu_time(d.pid()).ok()),
        qemu: qemu_pid.and_then(|pid| procfs::qemu_device_cpu_time(pid).ok()),
    }
}

/// `AIRLOCK_BENCH_FS_STRACE=DIR`: every operation's system calls in each
/// peer daemon, counted by `strace -c -f` into
/// `DIR/<cache>-<op>-<peer>-<n>.txt` (n counts the repetitions), with its
/// page faults and context switches. Tracing
/// slows the daemons several-fold: such a run's numbers are not for
/// publication; the counts per operation are what it is for.
const STRACE_ENV: &str = "AIRLOCK_BENCH_FS_STRACE";

/// A `strace -c` attached to a peer daemon for one operation, and the
/// daemon's page faults and context switches when it started.
struct SyscallTrace {
    child: std::process::Child,
    out: PathBuf,
    pid: u32,
    events: Option<procfs::Events>,
}

/// Attaches strace to `r`'s daemon if [`STRACE_ENV`] asks for it, and
/// returns once every thread is traced. Failures are logged and the
/// operation runs untraced.
fn syscall_trace(r: &Running, op: Op, cache: CacheMode) -> Option<SyscallTrace> {
    let dir = PathBuf::from(std::env::var_os(STRACE_ENV)?);
    let pid = r.daemon.as_ref()?.pid();
    if let Err(e) = fs::create_dir_all(&dir) {
        log::warn!("{STRACE_ENV}: cannot create {}: {e}", dir.display());
        return None;
    }
    let out = (0..)
        .map(|n| dir.join(format!("{cache}-{}-{}-{n}.txt", op.id(), r.peer.id)))
        .find(|p| !p.exists())?;
    let child = std::process::Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(&out)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{STRACE_ENV}: cannot run strace: {e}");
            return None;
        }
    };
    let mut trace = SyscallTrace {
        child,
        out,
        pid,
        events: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !procfs::all_threads_traced(pid) {
        if Instant::now() >= deadline {
            log::warn!("{STRACE_ENV}: strace did not attach to {pid} within 10 s");
            trace.finish();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    trace.events = procfs::events(pid).ok();
    Some(trace)
}

impl SyscallTrace {
    /// Detaches (SIGINT makes strace write its table) and waits for it,
    /// then appends the daemon's page faults and context switches during
    /// the operation to the table.
    fn finish(mut self) {
        let during = self
            .events
            .zip(procfs::events(self.pid).ok())
            .map(|(before, after)| before.since(after));
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        match self.child.wait() {
            // strace writes its table and ends by the SIGINT it was sent.
            Ok(status) if status.success() || status.signal() == Some(libc::SIGINT) => {
                log::info!("system calls counted in {}", self.out.display())
            }
            Ok(status) => log::warn!("strace for {} ended with {status}", self.out.display()),
            Err(e) => log::warn!("cannot wait for strace: {e}"),
        }
        if let Some(e) = during {
            let line = format!(
                "page faults: {} minor, {} major; context switches: {} voluntary, {} involuntary\n",
                e.minor_faults, e.major_faults, e.voluntary_switches, e.involuntary_switches
            );
            let appended = fs::OpenOptions::new()
                .append(true)
                .open(&self.out)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            if let Err(e) = appended {
                log::warn!("cannot append to {}: {e}", self.out.display());
            }
        }
    }
}

fn prepare_dir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

fn run_plan(
    plan: &Plan,
    options: &Options,
    tarball: &input::Tarball,
    out: &mut GroupRun,
) -> Result<(), Error> {
    let mut guest = Guest::new(&format!("bench-fs-{}", plan.cache)).map_err(Error::Vm)?;
    let dir = guest.dir().to_path_buf();
    let mut qemu_args: Vec<OsString> = vec!["-name".into(), "bench,debug-threads=on".into()];
    qemu_args.extend([
        "-fsdev".into(),
        format!(
            "local,id=fsdev-input,path={},security_model=none,readonly=on",
            tarball.dir.display()
        )
        .into(),
        "-device".into(),
        format!(
            "virtio-9p-pci,fsdev=fsdev-input,mount_tag={}",
            script::INPUT_TAG
        )
        .into(),
    ]);
    let mut running = Vec::new();
    for &peer in &plan.peers {
        if let Some(why) = peer.unavailable(&options.workspace) {
            fail(out, plan, &peer, why);
            continue;
        }
        let share = dir.join(format!("share-{}", peer.id));
        prepare_dir(&share)?;
        let socket = dir.join(format!("{}.sock", peer.id));
        let audit = dir.join(format!("audit-{}.log", peer.id));
        let daemon = match peer.command(&options.workspace, &share, &socket, plan.cache, &audit) {
            Some(cmd) => match guest.spawn_daemon(peer.id, cmd, Some(&socket)) {
                Ok(d) => Some(d),
                Err(e) => {
                    fail(out, plan, &peer, airlock_common::report::chain(&e));
                    continue;
                }
            },
            None => None,
        };
        qemu_args.extend(peer.qemu_args(&share, &socket));
        running.push(Running { peer, daemon });
    }
    let active: Vec<Peer> = running.iter().map(|r| r.peer).collect();
    let script = script::guest_script(&active, plan.cache, &options.sizes);
    guest
        .boot(script, qemu_args, GUEST_MEMORY_MIB, VM_TIMEOUT)
        .map_err(Error::Vm)?;
    let qemu_pid = guest.qemu_pid();
    let text = guest
        .wait_for(script::READY, READY_TIMEOUT)
        .map_err(Error::Vm)?;
    let mounts = script::parse_mounts(&text);
    running.retain(|r| {
        let ok = mounts
            .iter()
            .any(|(id, status)| id == r.peer.id && *status == 0);
        if !ok {
            fail(
                out,
                plan,
                &r.peer,
                format!("the guest could not mount it:\n{text}"),
            );
        }
        ok
    });

    let mut samples: BTreeMap<(&str, usize), Vec<Sample>> = BTreeMap::new();
    let started = Instant::now();
    for rep in 0..options.reps {
        for (op_index, &op) in plan.ops.iter().enumerate() {
            let n = running.len().max(1);
            for i in 0..running.len() {
                let r = &running[(i + rep as usize) % n];
                match step(&mut guest, r, op, plan.cache, qemu_pid, &options.sizes)? {
                    Ok(sample) => samples
                        .entry((r.peer.id, op_index))
                        .or_default()
                        .push(sample),
                    Err(why) => fail(out, plan, &r.peer, format!("{}: {why}", op.id())),
                }
            }
            log::info!(
                "fs {}: {} done ({:.0} s)",
                plan.name(),
                op.label(&options.sizes),
                started.elapsed().as_secs_f64()
            );
        }
        log::info!(
            "fs {}: repetition {}/{} done ({:.0} s)",
            plan.name(),
            rep + 1,
            options.reps,
            started.elapsed().as_secs_f64()
        );
    }
    for r in &running {
        record_resources(out, plan, r, qemu_pid);
    }
    guest.send("quit").map_err(Error::Vm)?;
    if let Err(e) = guest.finish() {
        log::warn!("fs {}: {}", plan.name(), airlock_common::report::chain(&e));
    }

    for r in &running {
        for (op_index, &op) in plan.ops.iter().enumerate() {
            let Some(s) = samples.remove(&(r.peer.id, op_index)) else {
                continue;
            };
            for table in plan.tables_of(&r.peer) {
                let metric = op.metric();
                out.rows.push(Row::new(
                    table,
                    op.label(&options.sizes),
                    r.peer.label,
                    metric.unit(),
                    metric.higher_is_better(),
                    s.clone(),
                ));
            }
        }
    }
    Ok(())
}

fn fail(out: &mut GroupRun, plan: &Plan, peer: &Peer, what: String) {
    log::warn!("fs {} {}: {what}", plan.name(), peer.label);
    for table in plan.tables_of(peer) {
        out.failures.push(Failure {
            table: table.to_string(),
            peer: peer.label.to_string(),
            what: what.clone(),
        });
    }
}

fn record_resources(out: &mut GroupRun, plan: &Plan, r: &Running, qemu_pid: Option<u32>) {
    let (pid, process, cpu) = match &r.daemon {
        Some(d) => (d.pid(), r.peer.label.to_string(), procfs::cpu_time(d.pid())),
        None => match qemu_pid {
            Some(pid) => (
                pid,
                "QEMU, non-vCPU threads (also everything else QEMU does)".to_string(),
                procfs::qemu_device_cpu_time(pid),
            ),
            None => return,
        },
    };
    let (Ok(cpu), Ok(memory)) = (cpu, procfs::memory(pid)) else {
        return;
    };
    for table in plan.tables_of(&r.peer) {
        out.resources.push(Resource {
            table: table.to_string(),
            peer: r.peer.label.to_string(),
            process: process.clone(),
            cpu_s: cpu.as_secs_f64(),
            memory: Some(memory),
        });
    }
}

/// Runs one operation on one peer. The outer error ends the guest (it no
/// longer answers); the inner one is this operation's failure.
fn step(
    guest: &mut Guest,
    r: &Running,
    op: Op,
    cache: CacheMode,
    qemu_pid: Option<u32>,
    sizes: &Sizes,
) -> Result<Result<Sample, String>, Error> {
    guest
        .send(&format!("run {} {}", op.id(), r.peer.id))
        .map_err(Error::Vm)?;
    guest
        .wait_for(script::PREPPED, OP_TIMEOUT)
        .map_err(Error::Vm)?;
    if op.cold_host() {
        if let Err(e) = procfs::drop_host_caches() {
            log::warn!(
                "host caches not dropped: {}",
                airlock_common::report::chain(&e)
            );
        }
    }
    let traced = syscall_trace(r, op, cache);
    let before = mark(r, qemu_pid);
    guest.send("go").map_err(Error::Vm)?;
    let text = guest
        .wait_for(script::RESULT, OP_TIMEOUT)
        .map_err(Error::Vm)?;
    let after = mark(r, qemu_pid);
    if let Some(trace) = traced {
        trace.finish();
    }
    let Some(result) = script::parse_result(&text) else {
        return Err(Error::Protocol {
            step: format!("{} on {}", op.id(), r.peer.id),
            output: text,
        });
    };
    if result.status != 0 {
        return Ok(Err(format!(
            "exit status {}; guest output:\n{}",
            result.status,
            text.trim()
        )));
    }
    let seconds = result.elapsed_ns as f64 / 1e9;
    let value = match op.metric() {
        ops::Metric::Throughput => {
            let bytes = op.bytes(sizes).unwrap_or(0) as f64;
            bytes / f64::from(1u32 << 20) / seconds.max(1e-9)
        }
        ops::Metric::Iops => match script::parse_fio_iops(&text) {
            Some(iops) => iops,
            None => return Ok(Err(format!("no IOPS in fio's output:\n{text}"))),
        },
        ops::Metric::Seconds => seconds,
    };
    let delta = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let qemu_cpu_s = delta(before.qemu, after.qemu);
    let cpu_s = if r.daemon.is_some() {
        delta(before.daemon, after.daemon)
    } else {
        qemu_cpu_s
    };
    Ok(Ok(Sample {
        value,
        cost: cpu_s.map(|cpu_s| Cost {
            cpu_s,
            qemu_cpu_s: if r.daemon.is_some() { qemu_cpu_s } else { None },
            harness_cpu_s: None,
            bytes: op.bytes(sizes),
        }),
    }))
}
