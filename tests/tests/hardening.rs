//! Hardening, end to end: what the daemons do when their peers misbehave
//! or push them to their limits. A frontend sending malformed vhost-user
//! messages; a guest trying to leave its share; a guest opening far more
//! connections, flows or files than it may; a daemon killed under a
//! running guest; QEMU killed mid-traffic. Each check looks at the host
//! side too: the daemon still runs and serves, its descriptors and memory
//! are back where they were, nothing outside the share changed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use airlock_e2e::frontend::{
    self, eventfd, mem_table, memfd, req, u64_payload, vring_addr, vring_state, Outcome,
    RawFrontend, Region, VRING_NOFD,
};
use airlock_e2e::{fd_count, fd_listing, DaemonHandle, Rig};

/// Starts airlock-net on `<rig>/<name>.sock` with `args` and waits until it
/// listens.
fn start_net(rig: &mut Rig, name: &str, args: &[String]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join(format!("{name}.sock"));
    let mut cmd = Command::new(Rig::bin("airlock-net"));
    cmd.arg("--socket-path").arg(&socket).args(args);
    let daemon = rig.spawn_daemon(name, cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (daemon, socket)
}

/// Starts airlock-fs on `<rig>/fs.sock` serving `share` with `args`.
fn start_fs(rig: &mut Rig, share: &Path, args: &[&str]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join("fs.sock");
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(share)
        .args(args);
    let daemon = rig.spawn_daemon("airlock-fs", cmd);
    rig.wait_for_socket(&socket, Duration::from_secs(10));
    (daemon, socket)
}

/// Waits until `needle` appears `count` times in the daemon's log; panics
/// with the log if the daemon exits or `timeout` passes first.
fn wait_log(daemon: &DaemonHandle, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while daemon.log().matches(needle).count() < count {
        if let Some(status) = daemon.try_wait() {
            panic!(
                "{} exited ({status}) while waiting for {needle:?}:\n{}",
                daemon.name(),
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the {} log never showed {needle:?} {count} times within {timeout:?}:\n{}",
            daemon.name(),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for the daemon's fd count to be `expected`, then
/// asserts it with the fd listing.
fn assert_fds(daemon: &DaemonHandle, expected: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while fd_count(daemon.pid()) != expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let fds = fd_count(daemon.pid());
    assert_eq!(
        fds,
        expected,
        "{what}: {} has {fds} fds, expected {expected}:\n{}",
        daemon.name(),
        fd_listing(daemon.pid())
    );
}

// ---------------------------------------------------------------------------
// Malformed vhost-user messages
// ---------------------------------------------------------------------------

/// The misbehaving frontend's guest memory: a 1 MiB memfd at guest address
/// 0, seen at this (made-up) address in the frontend.
const MEM_SIZE: u64 = 1 << 20;
const USER_ADDR: u64 = 0x7f00_0000_0000;
/// Rings of `RING_SIZE` entries inside it: descriptors, avail, used.
const RING_SIZE: u32 = 256;
const DESC_OFFSET: u64 = 0;
const AVAIL_OFFSET: u64 = 0x1000;
const USED_OFFSET: u64 = 0x2000;
/// How long a daemon gets to answer or drop a bad session.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a case must lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The daemon refuses: an error ack (if one was asked for) and the
    /// connection closed by the daemon.
    Refused,
    /// A message the daemon may accept or refuse; it must keep running.
    Survives,
}

/// One misbehaving session: what it sends, then how it must end.
struct Case {
    name: &'static str,
    expect: Expect,
    send: fn(&mut RawFrontend) -> std::io::Result<()>,
}

fn region(guest_phys_addr: u64, memory_size: u64, user_addr: u64) -> Region {
    Region {
        guest_phys_addr,
        memory_size,
        user_addr,
        mmap_offset: 0,
    }
}

/// A well-formed memory table over a fresh 1 MiB memfd, with REPLY_ACK on.
fn with_memory(f: &mut RawFrontend) -> std::io::Result<OwnedFd> {
    f.negotiate()?;
    let mem = memfd(MEM_SIZE)?;
    f.request(
        req::SET_MEM_TABLE,
        &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
        &[mem.as_raw_fd()],
    )?;
    Ok(mem)
}

/// Queue `index` set up over `with_memory`'s memory (rings at the given
/// offsets of the frontend's address space), enabled, kick and call set.
fn start_queue(f: &mut RawFrontend, index: u32, base: u64) -> std::io::Result<(OwnedFd, OwnedFd)> {
    f.request(req::SET_VRING_NUM, &vring_state(index, RING_SIZE), &[])?;
    f.request(
        req::SET_VRING_ADDR,
        &vring_addr(
            index,
            base + DESC_OFFSET,
            base + USED_OFFSET,
            base + AVAIL_OFFSET,
        ),
        &[],
    )?;
    f.request(req::SET_VRING_BASE, &vring_state(index, 0), &[])?;
    let call = eventfd()?;
    f.request(
        req::SET_VRING_CALL,
        &u64_payload(u64::from(index)),
        &[call.as_raw_fd()],
    )?;
    let kick = eventfd()?;
    f.request(
        req::SET_VRING_KICK,
        &u64_payload(u64::from(index)),
        &[kick.as_raw_fd()],
    )?;
    f.request(req::SET_VRING_ENABLE, &vring_state(index, 1), &[])?;
    Ok((kick, call))
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every misbehaving session the malformed-message tests play.
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a truncated header",
            expect: Expect::Refused,
            send: |f| {
                f.send_bytes(&frontend::header(req::GET_FEATURES, 1, 0)[..6], &[])?;
                f.shutdown_write()
            },
        },
        Case {
            name: "a size field beyond the 4 KiB maximum",
            expect: Expect::Refused,
            send: |f| f.send_bytes(&frontend::header(req::GET_FEATURES, 1, 0x10_0000), &[]),
        },
        Case {
            name: "protocol version 2",
            expect: Expect::Refused,
            send: |f| f.send(req::GET_FEATURES, 2, &[], &[]),
        },
        Case {
            name: "the reply flag on a request",
            expect: Expect::Refused,
            send: |f| f.send(req::GET_FEATURES, 1 | frontend::REPLY, &[], &[]),
        },
        Case {
            name: "request code 0",
            expect: Expect::Refused,
            send: |f| f.request(0, &[], &[]),
        },
        Case {
            name: "unknown request code 9999",
            expect: Expect::Refused,
            send: |f| f.request(9999, &u64_payload(1), &[]),
        },
        Case {
            name: "a payload shorter than the header says",
            expect: Expect::Refused,
            send: |f| {
                let mut bytes = frontend::header(req::SET_FEATURES, 1, 8).to_vec();
                bytes.extend_from_slice(&[1, 2, 3]);
                f.send_bytes(&bytes, &[])?;
                f.shutdown_write()
            },
        },
        Case {
            name: "a payload of the wrong size for its request",
            expect: Expect::Refused,
            send: |f| f.request(req::SET_FEATURES, &[0, 0, 0, 0], &[]),
        },
        Case {
            name: "features the device never offered",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_FEATURES, &u64_payload(u64::MAX), &[])
            },
        },
        Case {
            name: "a file descriptor on a message that takes none",
            expect: Expect::Refused,
            send: |f| {
                let fd = eventfd()?;
                f.request(req::GET_FEATURES, &[], &[fd.as_raw_fd()])
            },
        },
        Case {
            name: "a memory table with fewer fds than regions",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                let regions = [
                    region(0, MEM_SIZE / 2, USER_ADDR),
                    region(MEM_SIZE / 2, MEM_SIZE / 2, USER_ADDR + MEM_SIZE / 2),
                ];
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(2, &regions),
                    &[mem.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a memory table with no fds at all",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &[],
                )
            },
        },
        Case {
            name: "a memory table with 32 fds for 1 region",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let fds: Vec<OwnedFd> =
                    (0..32).map(|_| memfd(MEM_SIZE)).collect::<Result<_, _>>()?;
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &raw,
                )
            },
        },
        Case {
            name: "a memory table claiming 3 regions and carrying 1",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(3, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &[mem.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a memory region backed by a pipe (cannot be mapped)",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let (reader, _writer) = pipe()?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &[reader.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a memory region backed by a read-only file",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                let read_only = File::open(format!("/proc/self/fd/{}", mem.as_raw_fd()))?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &[read_only.as_raw_fd()],
                )
            },
        },
        Case {
            name: "overlapping memory regions",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let (a, b) = (memfd(MEM_SIZE)?, memfd(MEM_SIZE)?);
                let regions = [
                    region(0, MEM_SIZE, USER_ADDR),
                    region(MEM_SIZE / 2, MEM_SIZE, USER_ADDR + 4 * MEM_SIZE),
                ];
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(2, &regions),
                    &[a.as_raw_fd(), b.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a zero-sized memory region",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, 0, USER_ADDR)]),
                    &[mem.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a memory region whose end overflows 64 bits",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(u64::MAX - 0xfff, MEM_SIZE, USER_ADDR)]),
                    &[mem.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a 1 TiB memory region over a 1 MiB memfd",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                f.request_ack(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, 1 << 40, USER_ADDR)]),
                    &[mem.as_raw_fd()],
                )
            },
        },
        Case {
            name: "a memory region past the end of its memfd, then a ring there",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                // 64 KiB of file behind a 1 MiB region: touching the rest
                // of the mapping would raise SIGBUS in the daemon.
                let mem = memfd(64 << 10)?;
                f.request(
                    req::SET_MEM_TABLE,
                    &mem_table(1, &[region(0, MEM_SIZE, USER_ADDR)]),
                    &[mem.as_raw_fd()],
                )?;
                f.request(req::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])?;
                let far = USER_ADDR + MEM_SIZE / 2;
                f.request_ack(
                    req::SET_VRING_ADDR,
                    &vring_addr(0, far, far + USED_OFFSET, far + AVAIL_OFFSET),
                    &[],
                )
            },
        },
        Case {
            name: "a memory region at a file offset past the end of its memfd",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mem = memfd(MEM_SIZE)?;
                let mut r = region(0, MEM_SIZE, USER_ADDR);
                r.mmap_offset = 16 * MEM_SIZE;
                f.request(req::SET_MEM_TABLE, &mem_table(1, &[r]), &[mem.as_raw_fd()])?;
                f.request(req::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])?;
                f.request_ack(
                    req::SET_VRING_ADDR,
                    &vring_addr(
                        0,
                        USER_ADDR + DESC_OFFSET,
                        USER_ADDR + USED_OFFSET,
                        USER_ADDR + AVAIL_OFFSET,
                    ),
                    &[],
                )
            },
        },
        Case {
            name: "SET_VRING_NUM 0",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_NUM, &vring_state(0, 0), &[])
            },
        },
        Case {
            name: "SET_VRING_NUM 100 (not a power of two)",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_NUM, &vring_state(0, 100), &[])
            },
        },
        Case {
            name: "SET_VRING_NUM 32768 (above the device's maximum)",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_NUM, &vring_state(0, 32768), &[])
            },
        },
        Case {
            name: "SET_VRING_NUM for a queue the device does not have",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_NUM, &vring_state(u32::MAX, 256), &[])
            },
        },
        Case {
            name: "SET_VRING_ADDR before any memory table",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(
                    req::SET_VRING_ADDR,
                    &vring_addr(
                        0,
                        USER_ADDR,
                        USER_ADDR + USED_OFFSET,
                        USER_ADDR + AVAIL_OFFSET,
                    ),
                    &[],
                )
            },
        },
        Case {
            name: "SET_VRING_ADDR outside guest memory",
            expect: Expect::Refused,
            send: |f| {
                let _mem = with_memory(f)?;
                let outside = USER_ADDR + 2 * MEM_SIZE;
                f.request_ack(
                    req::SET_VRING_ADDR,
                    &vring_addr(0, outside, outside + USED_OFFSET, outside + AVAIL_OFFSET),
                    &[],
                )
            },
        },
        Case {
            name: "SET_VRING_ADDR with a used ring running off the end of memory",
            expect: Expect::Survives,
            send: |f| {
                let _mem = with_memory(f)?;
                f.request(req::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])?;
                let end = USER_ADDR + MEM_SIZE - 4;
                f.request_ack(
                    req::SET_VRING_ADDR,
                    &vring_addr(0, USER_ADDR, end, USER_ADDR + AVAIL_OFFSET),
                    &[],
                )?;
                let kick = eventfd()?;
                f.request(req::SET_VRING_KICK, &u64_payload(0), &[kick.as_raw_fd()])?;
                f.request(req::SET_VRING_ENABLE, &vring_state(0, 1), &[])?;
                kick_n(&kick, 10)
            },
        },
        Case {
            name: "SET_VRING_KICK without an fd or the no-fd flag",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_KICK, &u64_payload(0), &[])
            },
        },
        Case {
            name: "SET_VRING_KICK with an fd and the no-fd flag",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let fd = eventfd()?;
                f.request_ack(
                    req::SET_VRING_KICK,
                    &u64_payload(VRING_NOFD),
                    &[fd.as_raw_fd()],
                )
            },
        },
        Case {
            name: "SET_VRING_KICK for queue 200",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let fd = eventfd()?;
                f.request_ack(req::SET_VRING_KICK, &u64_payload(200), &[fd.as_raw_fd()])
            },
        },
        Case {
            name: "a regular file as the kick fd of an enabled queue",
            expect: Expect::Refused,
            send: |f| {
                let _mem = with_memory(f)?;
                f.request(req::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])?;
                f.request(
                    req::SET_VRING_ADDR,
                    &vring_addr(
                        0,
                        USER_ADDR,
                        USER_ADDR + USED_OFFSET,
                        USER_ADDR + AVAIL_OFFSET,
                    ),
                    &[],
                )?;
                f.request(req::SET_VRING_ENABLE, &vring_state(0, 1), &[])?;
                let file = memfd(4096)?;
                f.request_ack(req::SET_VRING_KICK, &u64_payload(0), &[file.as_raw_fd()])
            },
        },
        Case {
            name: "SET_VRING_ENABLE 2",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request_ack(req::SET_VRING_ENABLE, &vring_state(0, 2), &[])
            },
        },
        Case {
            name: "GET_VRING_BASE for a queue the device does not have",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                f.request(req::GET_VRING_BASE, &vring_state(77, 0), &[])
            },
        },
        Case {
            name: "ADD_MEM_REG without the protocol feature or an fd",
            expect: Expect::Refused,
            send: |f| f.request(req::ADD_MEM_REG, &[0u8; 40], &[]),
        },
        Case {
            name: "GET_CONFIG with a size beyond its payload",
            expect: Expect::Refused,
            send: |f| {
                f.negotiate()?;
                let mut p = vec![0u8; 12];
                p[4..8].copy_from_slice(&256u32.to_le_bytes());
                f.request(req::GET_CONFIG, &p, &[])
            },
        },
        Case {
            name: "rings full of random bytes, kicked on every queue",
            expect: Expect::Survives,
            send: |f| {
                let mem = with_memory(f)?;
                let file = File::from(mem.try_clone()?);
                let mut kicks = Vec::new();
                for index in 0..2u32 {
                    // Each queue's rings in their own 64 KiB of memory.
                    let base = u64::from(index) * 0x10000;
                    kicks.push(start_queue(f, index, USER_ADDR + base)?);
                }
                for round in 0..20u64 {
                    file.write_all_at(&noise(MEM_SIZE as usize, round + 1), 0)?;
                    for (index, (kick, _call)) in kicks.iter().enumerate() {
                        // A plausible avail index, so descriptors get read.
                        let avail = index as u64 * 0x10000 + AVAIL_OFFSET;
                        file.write_all_at(&0u16.to_le_bytes(), avail)?;
                        file.write_all_at(&((round as u16 + 1) * 8).to_le_bytes(), avail + 2)?;
                        kick_n(kick, 1)?;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            },
        },
    ]
}

/// Signals an eventfd `n` times.
fn kick_n(fd: &OwnedFd, n: usize) -> std::io::Result<()> {
    for _ in 0..n {
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        let rc = unsafe {
            libc::write(
                fd.as_raw_fd(),
                (&1u64 as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created both descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Plays every case against the daemon listening on `socket`, one session
/// each, then a well-formed frontend; checks the daemon survived each,
/// ended each refused session, logged a bounded amount, and holds exactly
/// the descriptors it held before the first.
fn malformed_sessions(daemon: &DaemonHandle, socket: &Path) {
    wait_log(daemon, "ready for a frontend", 1, Duration::from_secs(10));
    let baseline = fd_count(daemon.pid());
    let mut report = Vec::new();
    let mut sessions = 1;
    for case in cases() {
        let log_before = daemon.log().lines().count();
        let mut front = RawFrontend::connect(socket)
            .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", case.name));
        let sent = (case.send)(&mut front);
        // The daemon may hang up while the case is still sending: a send
        // error is reported, not fatal. A session that may stay open is
        // given less time to be closed.
        let patience = match case.expect {
            Expect::Refused => VERDICT_TIMEOUT,
            Expect::Survives => Duration::from_secs(1),
        };
        let outcome = front
            .outcome(patience)
            .unwrap_or_else(|e| panic!("{}: reading the daemon's answer: {e}", case.name));
        drop(front);
        sessions += 1;
        // The next session is prepared only after this one ended: proof it
        // did, and that the daemon is alive.
        wait_log(daemon, "ready for a frontend", sessions, VERDICT_TIMEOUT);
        let errors: Vec<u64> = outcome.replies.iter().filter_map(|r| r.value()).collect();
        match case.expect {
            Expect::Refused => {
                assert!(
                    outcome.closed,
                    "{}: the daemon kept the session open: {outcome:?} (send: {sent:?})\n{}",
                    case.name,
                    daemon.log()
                );
                assert!(
                    errors.iter().all(|&v| v != 0),
                    "{}: the daemon acknowledged the bad message: {outcome:?}",
                    case.name
                );
            }
            Expect::Survives => {}
        }
        let new_lines = daemon.log().lines().count() - log_before;
        assert!(
            new_lines <= 60,
            "{}: {new_lines} log lines for one session:\n{}",
            case.name,
            daemon.log()
        );
        report.push(format!(
            "  {:<70} {}",
            case.name,
            describe(&outcome, sent.as_ref().err())
        ));
        assert_fds(daemon, baseline, VERDICT_TIMEOUT, case.name);
    }
    eprintln!("{} sessions:\n{}", daemon.name(), report.join("\n"));

    // A well-formed frontend is served as before.
    let mut front = RawFrontend::connect(socket).unwrap();
    let _mem = with_memory(&mut front).unwrap();
    let features = front.get_u64(req::GET_FEATURES).unwrap();
    assert!(
        features & frontend::F_PROTOCOL_FEATURES != 0,
        "{features:#x}"
    );
    front
        .request_ack(req::SET_VRING_NUM, &vring_state(0, RING_SIZE), &[])
        .unwrap();
    let ack = front.read_reply(VERDICT_TIMEOUT).unwrap().expect("an ack");
    assert_eq!(ack.value(), Some(0), "{ack:?}");
    drop(front);
    wait_log(
        daemon,
        "ready for a frontend",
        sessions + 1,
        VERDICT_TIMEOUT,
    );
    assert_fds(
        daemon,
        baseline,
        VERDICT_TIMEOUT,
        "after the well-formed frontend",
    );
    assert!(daemon.is_running());
}

fn describe(outcome: &Outcome, send_error: Option<&std::io::Error>) -> String {
    let acks: Vec<String> = outcome
        .replies
        .iter()
        .map(|r| format!("reply {}={:?}", r.code, r.value()))
        .collect();
    let mut text = if outcome.closed {
        "closed".to_string()
    } else {
        "open".to_string()
    };
    if !acks.is_empty() {
        text.push_str(&format!(" after {}", acks.join(", ")));
    }
    if let Some(e) = send_error {
        text.push_str(&format!(" (send failed: {e})"));
    }
    text
}

/// airlock-net against a misbehaving frontend: bad headers and sizes,
/// unknown requests, memory tables with missing, extra, unmappable,
/// overlapping, empty, overflowing and oversized regions, bad vring sizes,
/// addresses and kick fds, rings full of noise. Every bad session is ended
/// (with an error ack where one was asked for), the daemon keeps running,
/// serves a well-formed frontend afterwards and leaks no descriptor.
#[test]
fn airlock_net_survives_malformed_vhost_user_messages() {
    let mut rig = Rig::new("hardening_vu_net");
    let (daemon, socket) = start_net(
        &mut rig,
        "airlock-net",
        &["--dns-upstream".into(), "127.0.0.1:9".into()],
    );
    malformed_sessions(&daemon, &socket);
}

/// The same sessions against airlock-fs.
#[test]
fn airlock_fs_survives_malformed_vhost_user_messages() {
    let mut rig = Rig::new("hardening_vu_fs");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let (daemon, socket) = start_fs(&mut rig, &share, &[]);
    malformed_sessions(&daemon, &socket);
}

// ---------------------------------------------------------------------------
// Path escapes
// ---------------------------------------------------------------------------

/// The guest-side name of `airlock-guest-probe`.
const PROBE: &str = "/airlock-guest-probe";

/// `VmConfig::files` entry putting the probe into the guest.
fn probe_file() -> (String, PathBuf) {
    (
        PROBE.trim_start_matches('/').to_string(),
        Rig::bin("airlock-guest-probe"),
    )
}

/// Every entry under `dir` (recursively, symlinks not followed) with its
/// type, size and content hash: what "nothing changed" is checked against.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.mode())
            } else if kind.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                format!(
                    "file {:o} {} {}",
                    meta.mode(),
                    meta.nlink(),
                    String::from_utf8_lossy(&fs::read(&path).unwrap_or_default())
                )
            } else {
                format!("special {:o} rdev {:x}", meta.mode(), meta.rdev())
            };
            out.insert(path, what);
        }
    }
    out
}

/// The file-status flags of each of `pid`'s descriptors that refers to
/// `path` (from /proc/<pid>/fdinfo).
fn fd_flags_on(pid: u32, path: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == path))
        .filter_map(|e| {
            let info =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_str()?))
                    .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            u32::from_str_radix(flags.trim(), 8).ok()
        })
        .collect()
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A guest (root, no id mapping: the strongest guest there is) tries every
/// way out of its share we know of, from the list in virtiofsd's and Kata's
/// advisories: `..` past the root; symlinks to `/`, `/etc` and a host file
/// placed in the share by the host; absolute symlinks it makes itself and
/// then follows, writes through, renames and hard-links; renames and hard
/// links across the share's edge; a host device node and a host hard link
/// placed in the share; mknod. Each gets the errno a local file system
/// would give, every symlink resolves in the guest, the daemon never opens
/// a device node for I/O, and nothing outside the share changes on the host.
#[test]
fn airlock_fs_path_escape_attempts_stay_in_the_share() {
    let mut rig = Rig::new("hardening_escape");
    let dir = rig.dir().to_path_buf();
    let share = dir.join("share");
    let outside = dir.join("outside");
    fs::create_dir_all(share.join("dir/sub")).unwrap();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret.txt"), "HOST-SECRET\n").unwrap();
    fs::write(outside.join("linked.txt"), "outside, hard-linked in\n").unwrap();
    fs::write(share.join("data.txt"), "shared\n").unwrap();
    fs::write(share.join("dir/f"), "in dir\n").unwrap();
    let symlink =
        |target: &Path, name: &str| std::os::unix::fs::symlink(target, share.join(name)).unwrap();
    symlink(Path::new("/"), "root-link");
    symlink(Path::new("/etc"), "etc-link");
    symlink(&outside.join("secret.txt"), "secret-link");
    symlink(Path::new("../outside/secret.txt"), "up-link");
    fs::hard_link(outside.join("linked.txt"), share.join("hardlink-out")).unwrap();
    mknod(&share.join("hostnull"), libc::S_IFCHR, 1, 3);
    mknod(&share.join("hostblk"), libc::S_IFBLK, 7, 0);
    let host_root_names = ["airlock-escape-planted", "airlock-escape-renamed"];
    for name in host_root_names {
        assert!(
            !Path::new("/").join(name).exists(),
            "/{name} exists already"
        );
    }
    let before = snapshot(&outside);
    let (daemon, socket) = start_fs(&mut rig, &share, &[]);

    let secret = outside.join("secret.txt").display().to_string();
    let outside_dir = outside.display().to_string();
    let script = format!(
        r#"
P={PROBE}
mount -t virtiofs share /mnt || exit 1
touch /guest-root-marker
echo "dotdot inode $(stat -c %i /mnt/..) root inode $(stat -c %i /)"
$P errno open-read /mnt/../../outside/secret.txt
$P errno open-read /mnt/dir/../../outside/secret.txt
echo "root-link -> $(readlink /mnt/root-link): $(test -e /mnt/root-link/guest-root-marker && echo the guest root)"
echo "etc-link -> $(readlink /mnt/etc-link)"
$P errno open-read /mnt/etc-link/shadow
$P errno open-read /mnt/secret-link
$P errno open-read /mnt/up-link
$P errno open-nofollow /mnt/secret-link
$P errno symlink {secret} /mnt/g-abs
$P errno open-read /mnt/g-abs
mkdir -p {outside_dir}
echo guest-side > {secret}
echo "through g-abs: $(cat /mnt/g-abs)"
echo overwritten > /mnt/g-abs
echo "guest file now: $(cat {secret})"
$P errno symlink {outside_dir} /mnt/g-dir
$P errno create /mnt/g-dir/airlock-escape-planted
$P errno symlink / /mnt/g-root
$P errno create /mnt/g-root/airlock-escape-planted
$P errno rename /mnt/g-abs /mnt/g-abs2
$P errno link /mnt/g-abs2 /mnt/g-abs-hard
$P errno rename /mnt/dir /airlock-escape-renamed
$P errno rename /mnt/dir/f /tmp/f
echo local > /tmp/local
$P errno rename /tmp/local /mnt/local
cd /mnt/dir
$P errno rename sub ../../airlock-escape-renamed
cd /
$P errno rename /mnt/dir /mnt/dir/sub/inside
$P errno link /mnt/data.txt /tmp/hl
$P errno link /guest-root-marker /mnt/marker
$P errno link /mnt/hostnull /mnt/hostnull-hard
echo "hardlink-out: $(cat /mnt/hardlink-out)"
echo "hostnull: $(stat -c '%F %t:%T' /mnt/hostnull)"
echo "hostblk: $(stat -c '%F %t:%T' /mnt/hostblk)"
$P errno open-read /mnt/hostnull
$P errno open-write /mnt/hostnull
$P errno open-read /mnt/hostblk
$P errno truncate /mnt/hostnull
$P errno mknod-chr /mnt/newnull 1 3
$P errno mknod-blk /mnt/newblk 7 0
$P errno mkfifo /mnt/fifo
exec 3</mnt/hostnull 4</mnt/data.txt
echo HOLDING-DEVICE
read go
exec 3<&- 4<&-
ls -la /mnt | sed 's/^/ls: /'
umount /mnt
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        files: vec![probe_file()],
        ..airlock_e2e::VmConfig::default()
    });
    let held = vm.wait_for("HOLDING-DEVICE", Duration::from_secs(150));
    // The guest holds the host's device node open: the daemon has no fd on
    // it but O_PATH ones (lookups), i.e. it never opened the device.
    // The daemon runs in its default sandbox (as root: --sandbox
    // namespace), where the share is /share: that is what its descriptors'
    // paths show.
    let inside = Path::new("/share");
    let flags = fd_flags_on(daemon.pid(), &inside.join("hostnull"));
    assert!(
        flags.iter().all(|f| f & libc::O_PATH as u32 != 0),
        "airlock-fs opened the host's device node: flags {flags:?}\n{held}"
    );
    // The regular file the guest holds open is open in the daemon too (so
    // the check above can see an open when there is one).
    let data = fd_flags_on(daemon.pid(), &inside.join("data.txt"));
    assert!(
        data.iter().any(|f| f & libc::O_PATH as u32 == 0),
        "no open fd on data.txt: {data:?}"
    );
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success();
    let mut results = BTreeMap::new();
    for line in out.output.lines() {
        if let Some((call, result)) = line
            .strip_prefix("errno ")
            .and_then(|l| l.rsplit_once(": "))
        {
            results.insert(call.to_string(), result.to_string());
        }
    }
    eprintln!(
        "path escape probes:\n{}",
        results
            .iter()
            .map(|(c, r)| format!("  {c}: {r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let expect = |call: &str, want: &str| {
        assert_eq!(
            results.get(call).map(String::as_str),
            Some(want),
            "{call}\n{}",
            out.output
        );
    };
    // `..` never leaves the guest's own tree.
    let line = out
        .output
        .lines()
        .find(|l| l.starts_with("dotdot inode"))
        .unwrap();
    let inodes: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(inodes.len(), 2, "{line}");
    assert_eq!(inodes[0], inodes[1], "/mnt/.. is not the guest's /: {line}");
    expect("open-read /mnt/../../outside/secret.txt", "ENOENT");
    expect("open-read /mnt/dir/../../outside/secret.txt", "ENOENT");
    // Host-made symlinks resolve in the guest.
    out.assert_contains("root-link -> /: the guest root\n")
        .assert_contains("etc-link -> /etc\n");
    expect("open-read /mnt/etc-link/shadow", "ENOENT");
    expect("open-read /mnt/secret-link", "ENOENT");
    expect("open-read /mnt/up-link", "ENOENT");
    expect("open-nofollow /mnt/secret-link", "ELOOP");
    // Guest-made absolute symlinks: stored verbatim, followed in the guest.
    expect(&format!("symlink {secret} /mnt/g-abs"), "ok");
    expect("open-read /mnt/g-abs", "ENOENT");
    out.assert_contains("through g-abs: guest-side\n")
        .assert_contains("guest file now: overwritten\n");
    expect(&format!("symlink {outside_dir} /mnt/g-dir"), "ok");
    expect("create /mnt/g-dir/airlock-escape-planted", "ok");
    expect("symlink / /mnt/g-root", "ok");
    expect("create /mnt/g-root/airlock-escape-planted", "ok");
    expect("rename /mnt/g-abs /mnt/g-abs2", "ok");
    expect("link /mnt/g-abs2 /mnt/g-abs-hard", "ok");
    // Renames and links across the share's edge: another file system.
    expect("rename /mnt/dir /airlock-escape-renamed", "EXDEV");
    expect("rename /mnt/dir/f /tmp/f", "EXDEV");
    expect("rename /tmp/local /mnt/local", "EXDEV");
    expect("rename sub ../../airlock-escape-renamed", "EXDEV");
    expect("rename /mnt/dir /mnt/dir/sub/inside", "EINVAL");
    expect("link /mnt/data.txt /tmp/hl", "EXDEV");
    expect("link /guest-root-marker /mnt/marker", "EXDEV");
    // Device nodes: the guest sees the host's node as its own device (the
    // guest kernel opens it; the daemon is never asked), cannot make new ones.
    out.assert_contains("hostnull: character special file 1:3\n")
        .assert_contains("hostblk: block special file 7:0\n")
        .assert_contains("hardlink-out: outside, hard-linked in\n");
    // Opening one is answered by the guest's own drivers: 1:3 is the
    // guest's null device; the guest has no block device 7:0.
    expect("open-read /mnt/hostnull", "ok");
    expect("open-write /mnt/hostnull", "ok");
    expect("open-read /mnt/hostblk", "ENXIO");
    expect("truncate /mnt/hostnull", "EINVAL");
    // A second name for it inside the share is just another name.
    expect("link /mnt/hostnull /mnt/hostnull-hard", "ok");
    expect("mknod-chr /mnt/newnull 1 3", "EPERM");
    expect("mknod-blk /mnt/newblk 7 0", "EPERM");
    expect("mkfifo /mnt/fifo", "ok");

    // On the host: the share holds what the guest made, as links and names;
    // the outside is untouched; nothing appeared at the host's root.
    assert_eq!(
        fs::read_link(share.join("g-abs2")).unwrap(),
        outside.join("secret.txt")
    );
    let hard = fs::symlink_metadata(share.join("g-abs-hard")).unwrap();
    assert!(
        hard.file_type().is_symlink() && hard.nlink() == 2,
        "{hard:?}"
    );
    assert_eq!(fs::read_link(share.join("g-dir")).unwrap(), outside);
    assert_eq!(fs::read_link(share.join("g-root")).unwrap(), Path::new("/"));
    assert!(share.join("dir/sub").is_dir() && share.join("dir/f").is_file());
    for name in ["newnull", "newblk", "local", "marker"] {
        assert!(!share.join(name).exists(), "{name} appeared in the share");
    }
    assert_eq!(
        fs::symlink_metadata(share.join("hostnull")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the share changed"
    );
    assert_eq!(
        fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "HOST-SECRET\n"
    );
    for name in host_root_names {
        assert!(
            !Path::new("/").join(name).exists(),
            "/{name} appeared on the host"
        );
    }
    assert!(daemon.is_running());
}
