//! Hardening, end to end: what the daemons do when their peers misbehave
//! or push them to their limits. A frontend sending malformed vhost-user
//! messages; a guest trying to leave its share; a guest opening far more
//! connections, flows or files than it may; a daemon killed under a
//! running guest; QEMU killed mid-traffic. Each check looks at the host
//! side too: the daemon still runs and serves, its descriptors and memory
//! are back where they were, nothing outside the share changed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
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

/// Starts airlock-net (logging as `name`) on `<rig>/<socket>` with `args`
/// and waits until it listens.
fn start_net(rig: &mut Rig, name: &str, socket: &str, args: &[String]) -> (DaemonHandle, PathBuf) {
    let socket = rig.dir().join(socket);
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
        "net.sock",
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
    let flags = fd_flags_on(daemon.pid(), &share.join("hostnull"));
    assert!(
        flags.iter().all(|f| f & libc::O_PATH as u32 != 0),
        "airlock-fs opened the host's device node: flags {flags:?}\n{held}"
    );
    // The regular file the guest holds open is open in the daemon too (so
    // the check above can see an open when there is one).
    let data = fd_flags_on(daemon.pid(), &share.join("data.txt"));
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

// ---------------------------------------------------------------------------
// A daemon killed and restarted under a running guest
// ---------------------------------------------------------------------------

const MAC: &str = "52:54:00:12:34:56";
const GUEST_IP: &str = "192.168.127.2";

/// busybox udhcpc on eth0, applying the offered MTU.
const UDHCPC: &str = "udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/udhcpc.log 2>&1 || { cat /tmp/udhcpc.log; echo 'udhcpc failed'; exit 1; }";

/// airlock-net SIGKILLed while a guest runs with `reconnect=1`, and a new
/// airlock-net started on the same socket: QEMU reattaches within seconds,
/// the guest keeps its address and its network works again — HTTP to the
/// host, DNS, a DHCP renewal — without a reboot. The connections of the
/// old daemon are gone (a new daemon has no flow table to resume).
#[test]
fn airlock_net_killed_and_restarted_under_a_running_guest() {
    let http = airlock_e2e::servers::HttpServer::start(0);
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let hold = HoldServer::start();
    let mut rig = Rig::new("hardening_net_restart");
    let args = vec![
        "--dns-upstream".to_string(),
        resolver.addr().to_string(),
        "--dns-record".to_string(),
        "restart.test=10.9.8.7".to_string(),
    ];
    let (first, socket) = start_net(&mut rig, "airlock-net", "net.sock", &args);
    let url = format!("http://host.airlock.internal:{}/hello", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
echo "before: addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}') $(curl -sS --max-time 20 {url})"
mkfifo /tmp/in
nc {host_alias} {hold_port} </tmp/in >/dev/null 2>/tmp/nc.err &
nc_pid=$!
exec 5>/tmp/in
echo one >&5
sleep 1
kill -0 $nc_pid && echo "before: a connection is open"
echo DAEMON-CAN-DIE
read go
set +e
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ $i -lt 60 ]; do
    i=$((i+1))
    body=$(curl -sS --max-time 2 {url} 2>/dev/null) && break
    sleep 1
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "after: tries=$i seconds=$(( ${{t1%.*}} - ${{t0%.*}} )) body=$body"
echo "after: addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}') link=$(cat /sys/class/net/eth0/operstate)"
nslookup restart.test >/tmp/ns 2>&1; echo "after: dns status=$? $(grep -c 10.9.8.7 /tmp/ns)"
udhcpc -i eth0 -q -n -t 5 -O mtu >/tmp/renew.log 2>&1; echo "after: renew status=$? addr=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}')"
kill -0 $nc_pid 2>/dev/null && echo "after: the old connection is still open before it is used"
echo two >&5
sleep 3
if kill -0 $nc_pid 2>/dev/null; then echo "after: the old connection still runs"; else wait $nc_pid; echo "after: the old connection ended: nc status=$? $(cat /tmp/nc.err)"; fi
"#,
        host_alias = "host.airlock.internal",
        hold_port = hold.port(),
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::net_device_args(&socket, MAC, true),
        timeout: Duration::from_secs(180),
        ..airlock_e2e::VmConfig::default()
    });
    let before = vm.wait_for("DAEMON-CAN-DIE", Duration::from_secs(120));
    assert!(before.contains("before: a connection is open"), "{before}");
    assert!(
        before.contains(&format!(
            "before: addr={GUEST_IP}/24 {}",
            airlock_e2e::servers::HELLO_BODY.trim_end()
        )),
        "{before}"
    );
    first.kill();
    let killed_at = Instant::now();
    let (second, _) = start_net(&mut rig, "airlock-net-2", "net.sock", &args);
    wait_log(&second, "frontend connected", 1, Duration::from_secs(30));
    eprintln!(
        "QEMU reattached to the new airlock-net {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    vm.send_line("go");
    let out = vm.wait();
    out.assert_success()
        .assert_contains(&format!("after: addr={GUEST_IP}/24 link=up\n"))
        .assert_contains("after: dns status=0 1\n")
        .assert_contains(&format!("after: renew status=0 addr={GUEST_IP}/24\n"));
    let after = out
        .output
        .lines()
        .find(|l| l.starts_with("after: tries="))
        .unwrap_or_else(|| panic!("no recovery line:\n{}", out.output));
    assert!(
        after.ends_with(airlock_e2e::servers::HELLO_BODY.trim_end()),
        "the guest's network did not come back: {after}\n{}",
        out.output
    );
    eprintln!("guest network after the restart: {after}");
    // The dead daemon's connections died with it; the guest learns when it
    // next sends on one (the new daemon answers with a RST), not before.
    out.assert_contains("after: the old connection is still open before it is used\n")
        .assert_contains("after: the old connection ended: nc status=");
    assert_eq!(hold.accepted(), 1);
    assert!(second.is_running());
    let log = second.log();
    assert!(!log.contains("session ended with an error"), "{log}");
}

/// A TCP server on 127.0.0.1 that accepts connections and holds them open
/// (discarding what arrives) until the peer closes or the server is dropped.
struct HoldServer {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HoldServer {
    fn start() -> HoldServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A deep accept queue: thousands of connections arrive at once.
        // SAFETY: listen(2) on a socket we own; integers only.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 65535) }, 0);
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (count, done, streams) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::clone(&held));
        let acceptor = thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(true);
                        streams.lock().unwrap().push(stream);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let done = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::SeqCst) {
                // Close a connection once its peer has (end of file or
                // reset); discard whatever it sends meanwhile.
                held.lock().unwrap().retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
                thread::sleep(Duration::from_millis(100));
            }
            let _ = acceptor.join();
        });
        HoldServer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// vhost-user-fs arguments with `reconnect=1` on the chardev.
fn fs_device_args_reconnect(socket: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "-chardev".into(),
        format!("socket,id=fsre,path={},reconnect=1", socket.display()).into(),
        "-device".into(),
        "vhost-user-fs-pci,chardev=fsre,tag=share,queue-size=1024".into(),
    ]
}

/// What QEMU 7.2 does when airlock-fs dies under a mounted share — pinned
/// so a change (a QEMU that reconnects, or a daemon that can resume) shows.
///
/// 1. `reconnect=1` cannot be used with vhost-user-fs: QEMU 7.2's
///    vhost-user-fs does not wait for the chardev to connect (net and blk
///    do), the reconnecting chardev connects asynchronously, and the device
///    fails to realize: QEMU exits at start-up with "Failed to set msg fds"
///    and "vhost_backend_init failed: Protocol error".
/// 2. Without it, QEMU does not notice the daemon's death and never dials
///    the new one. Every guest request on the share from then on waits
///    forever: the process sleeps (state S) and, once killed, stays in D
///    for good, since virtio-fs cannot take back a request it queued. The
///    rest of the guest runs on; the share is lost until the guest reboots
///    (and the guest cannot power off cleanly).
#[test]
fn airlock_fs_killed_under_a_mounted_share_hangs_the_share() {
    let mut rig = Rig::new("hardening_fs_restart");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("before.txt"), "before\n").unwrap();
    let (first, socket) = start_fs(&mut rig, &share, &[]);

    // 1. reconnect=1: QEMU does not start.
    let vm = rig.boot(airlock_e2e::VmConfig {
        script: "echo STARTED".into(),
        qemu_args: fs_device_args_reconnect(&socket),
        timeout: Duration::from_secs(60),
        ..airlock_e2e::VmConfig::default()
    });
    let (status, qemu_log) = vm.wait_for_failure(Duration::from_secs(30));
    assert!(
        !status.success()
            && qemu_log.contains("Failed to set msg fds")
            && qemu_log.contains("vhost_backend_init failed"),
        "QEMU 7.2 with a reconnecting vhost-user-fs chardev was expected to fail at \
         start-up; it exited with {status}. QEMU stderr:\n{qemu_log}"
    );
    wait_log(&first, "ready for a frontend", 2, Duration::from_secs(10));

    // 2. No reconnect: the daemon dies under a mounted share.
    let script = r#"
mount -t virtiofs share /mnt || exit 1
echo "before: $(cat /mnt/before.txt)"
echo DAEMON-CAN-DIE
read go
cat /mnt/before.txt >/tmp/cat.out 2>&1 &
reader=$!
echo x >/mnt/after.txt 2>/tmp/w.out &
writer=$!
sleep 8
echo "after 8 s: reader state $(awk '{print $3}' /proc/$reader/stat 2>/dev/null || echo gone) writer state $(awk '{print $3}' /proc/$writer/stat 2>/dev/null || echo gone)"
kill -9 $reader $writer
sleep 2
echo "after SIGKILL: reader state $(awk '{print $3}' /proc/$reader/stat 2>/dev/null || echo gone) writer state $(awk '{print $3}' /proc/$writer/stat 2>/dev/null || echo gone)"
echo "the rest of the guest runs: $(echo alive)"
"#;
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script: script.into(),
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        timeout: Duration::from_secs(150),
        ..airlock_e2e::VmConfig::default()
    });
    let before = vm.wait_for("DAEMON-CAN-DIE", Duration::from_secs(120));
    assert!(before.contains("before: before"), "{before}");
    first.kill();
    let (second, _) = start_fs_named(&mut rig, &share, "airlock-fs-2", &socket);
    vm.send_line("go");
    let hung = vm.wait_for("the rest of the guest runs", Duration::from_secs(60));
    // Waiting (interruptibly) for an answer that never comes; after
    // SIGKILL the request cannot be withdrawn: uninterruptible for good.
    assert!(
        hung.contains("after 8 s: reader state S writer state S\n")
            && hung.contains("after SIGKILL: reader state D writer state D\n"),
        "expected both share users waiting (S), then stuck in D after SIGKILL:\n{hung}"
    );
    assert!(hung.contains("the rest of the guest runs: alive"), "{hung}");
    // The guest could not power off cleanly with a dead share: pull the plug.
    vm.kill();
    drop(vm);
    assert!(
        !second.log().contains("frontend connected"),
        "QEMU dialled the new airlock-fs:\n{}",
        second.log()
    );
    assert!(!share.join("after.txt").exists());
    assert!(second.is_running());
}

/// Starts another airlock-fs named `name` on `socket`.
fn start_fs_named(
    rig: &mut Rig,
    share: &Path,
    name: &str,
    socket: &Path,
) -> (DaemonHandle, PathBuf) {
    let mut cmd = Command::new(Rig::bin("airlock-fs"));
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(share);
    let daemon = rig.spawn_daemon(name, cmd);
    rig.wait_for_socket(socket, Duration::from_secs(10));
    (daemon, socket.to_path_buf())
}

// ---------------------------------------------------------------------------
// Exhaustion
// ---------------------------------------------------------------------------

/// `GET path` on an airlock-net control socket; the JSON body and how long
/// the answer took.
fn api_get(socket: &Path, path: &str) -> std::io::Result<(serde_json::Value, Duration)> {
    let started = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: airlock\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other(format!("no body in {reply:?}")))?;
    let json = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok((json, started.elapsed()))
}

/// Polls another daemon's control API every 100 ms until stopped; the
/// slowest answer and any failure.
struct ApiWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<(usize, Duration, Vec<String>)>>,
}

impl ApiWatch {
    fn start(socket: PathBuf) -> ApiWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let (mut calls, mut slowest, mut failures) = (0, Duration::ZERO, Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match api_get(&socket, "/stats") {
                    Ok((_, took)) => slowest = slowest.max(took),
                    Err(e) => failures.push(e.to_string()),
                }
                calls += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (calls, slowest, failures)
        });
        ApiWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// (calls, slowest answer, failures).
    fn finish(mut self) -> (usize, Duration, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// A number from the guest's `key=value` words on the line starting with
/// `prefix`.
fn guest_number(output: &str, prefix: &str, key: &str) -> u64 {
    output
        .lines()
        .filter(|l| l.starts_with(prefix))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= on a {prefix:?} line in:\n{output}"))
}

/// How many connections and flows the guest opens in the CI-sized run;
/// `AIRLOCK_EXHAUSTION_FLOWS` overrides it (100000 for the full-size run).
fn exhaustion_flows() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// A guest opening many more TCP connections and UDP flows than
/// `--max-flows 256` allows: the first 256 go through, every other
/// connection is refused at once (RST, so ECONNREFUSED in the guest), UDP
/// flows past the limit are refused (ICMP, so an error on the guest's
/// socket), the refusals are logged a few times, not once each; the
/// daemon's fds and RSS stay bounded; once the guest lets go, new flows
/// work. Meanwhile a second airlock-net answers its API as fast as ever.
#[test]
fn airlock_net_flow_exhaustion_is_refused_and_bounded() {
    let max_flows: usize = std::env::var("AIRLOCK_EXHAUSTION_MAX_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let flows = exhaustion_flows();
    let big = flows > 20_000;
    let hold = HoldServer::start();
    let udp = airlock_e2e::servers::UdpEchoServer::start();
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let mut rig = Rig::new("hardening_net_flows");
    let api = rig.dir().join("api.sock");
    let other_api = rig.dir().join("other-api.sock");
    let common = ["--dns-upstream".to_string(), resolver.addr().to_string()];
    let mut args = common.to_vec();
    args.extend([
        "--max-flows".into(),
        max_flows.to_string(),
        "--udp-timeout".into(),
        "5".into(),
        "--api-socket".into(),
        api.display().to_string(),
    ]);
    let (daemon, socket) = start_net(&mut rig, "airlock-net", "net.sock", &args);
    let mut other_args = common.to_vec();
    other_args.extend(["--api-socket".into(), other_api.display().to_string()]);
    let (other, _) = start_net(&mut rig, "airlock-net-other", "other.sock", &other_args);
    wait_log(&daemon, "ready for a frontend", 1, Duration::from_secs(10));
    let pid = daemon.pid();
    let (base_fds, base_rss) = (fd_count(pid), airlock_e2e::rss_kib(pid));
    let (_, idle_latency) = api_get(&other_api, "/stats").unwrap();

    let host = "192.168.127.254";
    let script = format!(
        r#"set -e
{UDHCPC}
P={PROBE}
echo "1024 65535" >/proc/sys/net/ipv4/ip_local_port_range
echo 2000000 >/proc/sys/fs/file-max
$P tcp-flood {host}:{tcp_port} {flows} {flood_secs}
sleep 3
$P tcp-flood {host}:{tcp_port} 20 30
$P udp-flows {host}:{udp_port} {flows} 5000
sleep 8
$P udp-flows {host}:{udp_port} 20 5000
"#,
        tcp_port = hold.port(),
        udp_port = udp.addr().port(),
        flood_secs = 120 + flows / 100,
    );
    let watch = ApiWatch::start(other_api.clone());
    let started = Instant::now();
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::net_device_args(&socket, MAC, false),
        files: vec![probe_file()],
        memory_mib: if big { 2048 } else { 512 },
        timeout: Duration::from_secs(if big { 3600 } else { 300 }),
        ..airlock_e2e::VmConfig::default()
    });

    // Everything the guest could open is open.
    let flood = vm.wait_for("HOLDING", Duration::from_secs(if big { 3000 } else { 240 }));
    let flooded_after = started.elapsed();
    let established = guest_number(&flood, "tcp-flood", "established") as usize;
    let refused = guest_number(&flood, "tcp-flood", "refused") as usize;
    let pending = guest_number(&flood, "tcp-flood", "pending") as usize;
    let (held_fds, held_rss) = (fd_count(pid), airlock_e2e::rss_kib(pid));
    let (stats, _) = api_get(&api, "/stats").unwrap();
    eprintln!(
        "{flows} guest connections with --max-flows {max_flows}: {established} established, \
         {refused} refused, {pending} pending ({:.1} s); airlock-net fds {base_fds} -> \
         {held_fds}, RSS {base_rss} -> {held_rss} KiB; server accepted {}; tcp stats {}",
        flooded_after.as_secs_f64(),
        hold.accepted(),
        stats["flows"]["tcp"]
    );
    assert!(
        established <= max_flows && established + 8 >= max_flows,
        "{established} connections established with --max-flows {max_flows}:\n{flood}"
    );
    // The host server may still be accepting the last ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hold.accepted() < established && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hold.accepted(), established, "host connections");
    assert_eq!(
        refused + established,
        flows,
        "every connection past the limit must be refused at once:\n{flood}"
    );
    assert!(
        held_fds <= base_fds + max_flows + 16,
        "airlock-net holds {held_fds} fds (baseline {base_fds}, {max_flows} flows)"
    );
    // The documented worst case: two 256 KiB buffers per flow, plus the
    // guest's receive buffers the daemon has touched.
    let worst_kib = max_flows as u64 * 512 + 64 * 1024;
    assert!(
        held_rss <= base_rss + worst_kib,
        "airlock-net's RSS grew from {base_rss} to {held_rss} KiB (bound +{worst_kib})"
    );
    vm.send_line("release");

    // Closed connections free their flows: new ones go through.
    let again = vm.wait_for("HOLDING", Duration::from_secs(120));
    assert!(
        again.contains("tcp-flood established=20 refused=0 pending=0"),
        "new connections after the guest closed its own:\n{again}"
    );
    vm.send_line("release");
    let out = vm.wait();
    out.assert_success();
    let (calls, slowest, failures) = watch.finish();

    // UDP: as many flows as the limit allows get their echo; the others
    // are refused.
    let udp_first = out
        .output
        .lines()
        .find(|l| l.starts_with("udp-flows"))
        .unwrap()
        .to_string();
    let udp_last = out
        .output
        .lines()
        .rfind(|l| l.starts_with("udp-flows"))
        .unwrap()
        .to_string();
    eprintln!("UDP: {udp_first}; after the mappings expired: {udp_last}");
    let replies = guest_number(&udp_first, "udp-flows", "replies") as usize;
    // The probe sends in waves of 16384; mappings of an earlier wave may
    // expire (--udp-timeout 5) before the next, making room again.
    let waves = flows.div_ceil(16384);
    assert!(
        replies <= max_flows * waves && replies + 8 >= max_flows,
        "{replies} UDP flows answered with --max-flows {max_flows}: {udp_first}"
    );
    assert!(
        udp_first.ends_with(&format!(
            "silent=0 errors=[EHOSTUNREACH:{}]",
            flows - replies
        )),
        "UDP flows past the limit must be refused (ICMP), not left waiting: {udp_first}"
    );
    assert!(
        udp_last.contains("sent=20 replies=20 "),
        "UDP after the flood: {udp_last}"
    );

    // The log: a few rate-limited lines, not one per refusal.
    let log = daemon.log();
    let limit_lines = log
        .matches(&format!("flow limit ({max_flows}) reached"))
        .count();
    eprintln!(
        "{limit_lines} 'flow limit' log lines for {} refusals; the other daemon answered \
         {calls} API calls, slowest {slowest:?} (idle {idle_latency:?})",
        refused + flows - replies
    );
    // 10 per call site (TCP, UDP) and 5 s window.
    let windows = started.elapsed().as_secs() as usize / 5 + 1;
    assert!(
        (1..=20 * windows).contains(&limit_lines),
        "{limit_lines} flow-limit lines:\n{log}"
    );
    assert!(
        failures.is_empty(),
        "the other daemon's API failed: {failures:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the other daemon's API took {slowest:?}"
    );
    assert!(other.is_running() && daemon.is_running());
    wait_log(&daemon, "ready for a frontend", 2, Duration::from_secs(15));
    assert_fds(
        &daemon,
        base_fds,
        Duration::from_secs(10),
        "after the guest",
    );
}

/// How many files the guest creates and holds open in the CI-sized run;
/// `AIRLOCK_EXHAUSTION_FILES` overrides it.
fn exhaustion_files() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// airlock-fs' `--rlimit-nofile` in the exhaustion test: 1024, or
/// `AIRLOCK_EXHAUSTION_RLIMIT`.
fn exhaustion_rlimit() -> usize {
    std::env::var("AIRLOCK_EXHAUSTION_RLIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// A guest creating and holding open far more files than airlock-fs may
/// hold descriptors (`--rlimit-nofile 1024`; each inode the guest knows is
/// one descriptor, each open file another): the guest gets EMFILE for the
/// files past the limit, the daemon stays alive and within its limit,
/// logs a bounded amount, and once the guest closes the files and drops
/// its caches (FORGET) the descriptors are released and new files can be
/// made; after the guest is gone the daemon holds exactly what it held
/// before.
#[test]
fn airlock_fs_file_exhaustion_is_refused_and_recovers() {
    let files = exhaustion_files();
    let rlimit = exhaustion_rlimit();
    let mut rig = Rig::new("hardening_fs_files");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let rlimit_arg = rlimit.to_string();
    let (daemon, socket) = start_fs(&mut rig, &share, &["--rlimit-nofile", &rlimit_arg]);
    wait_log(&daemon, "ready for a frontend", 1, Duration::from_secs(10));
    let pid = daemon.pid();
    let (base_fds, base_rss) = (fd_count(pid), airlock_e2e::rss_kib(pid));
    let script = format!(
        r#"
P={PROBE}
echo 2000000 >/proc/sys/fs/file-max
mount -t virtiofs share /mnt || exit 1
mkdir /mnt/many /mnt/again
echo MOUNTED
read go
t0=$(cut -d' ' -f1 /proc/uptime)
$P hold-files /mnt/many {files}
t1=$(cut -d' ' -f1 /proc/uptime)
echo "created in $(( ${{t1%.*}} - ${{t0%.*}} )) s"
sync
echo 3 >/proc/sys/vm/drop_caches
echo DROPPED
read go
$P hold-files /mnt/again 100
umount /mnt
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: airlock_e2e::fs_device_args(&socket, "share", 1024),
        files: vec![probe_file()],
        memory_mib: if files > 20_000 { 2048 } else { 512 },
        timeout: Duration::from_secs(if files > 20_000 { 3600 } else { 300 }),
        ..airlock_e2e::VmConfig::default()
    });
    vm.wait_for("MOUNTED", Duration::from_secs(120));
    let mounted_fds = fd_count(pid);
    let log_before = daemon.log().lines().count();
    vm.send_line("go");
    let held = vm.wait_for("HOLDING", Duration::from_secs(3000));
    let (held_fds, held_rss) = (fd_count(pid), airlock_e2e::rss_kib(pid));
    let on_host = fs::read_dir(share.join("many")).unwrap().count();
    let opened = guest_number(&held, "hold-files", "opened") as usize;
    let failed = guest_number(&held, "hold-files", "failed") as usize;
    let summary = held.lines().find(|l| l.starts_with("hold-files")).unwrap();
    eprintln!(
        "{files} files against --rlimit-nofile {rlimit}: {summary}; airlock-fs fds {base_fds} \
         idle, {mounted_fds} mounted, {held_fds} while held; RSS {base_rss} -> {held_rss} KiB; \
         {on_host} files on the host"
    );
    assert!(daemon.is_running(), "{}", daemon.log());
    assert!(held_fds <= rlimit, "{held_fds} fds over the limit {rlimit}");
    if 2 * files + mounted_fds > rlimit {
        // Each created file costs the daemon two fds (the inode's O_PATH
        // and the open file), so it runs out at about half the limit.
        let room = (rlimit - mounted_fds) / 2;
        assert!(
            opened + 8 >= room && opened <= room,
            "{opened} files opened; the limit leaves room for {room}:\n{held}"
        );
        assert!(
            failed > 0 && summary.ends_with(&format!("errors=[EMFILE:{failed}]")),
            "the guest must get EMFILE past the limit: {summary}"
        );
        // A create refused for lack of fds leaves the file made on the host
        // (fuse-backend-rs creates it, then cannot look it up).
        assert_eq!(on_host, opened + failed, "files on the host");
    } else {
        assert_eq!((opened, failed), (files, 0), "{summary}");
    }
    let log_lines = daemon.log().lines().count() - log_before;
    assert!(
        log_lines <= 40,
        "{log_lines} log lines for {failed} refusals:\n{}",
        daemon.log()
    );
    vm.send_line("release");

    // The guest closes everything and forgets its inodes: the daemon's
    // descriptors go back to what a fresh mount holds.
    vm.wait_for("DROPPED", Duration::from_secs(600));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(pid) > mounted_fds && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let dropped_fds = fd_count(pid);
    eprintln!("after close and drop_caches: {dropped_fds} fds");
    assert!(
        dropped_fds <= mounted_fds,
        "{dropped_fds} fds after the guest forgot its files ({mounted_fds} when mounted)"
    );
    vm.send_line("go");
    let again = vm.wait_for("HOLDING", Duration::from_secs(120));
    assert!(
        again.contains("hold-files opened=100 failed=0 "),
        "new files after the guest let go:\n{again}"
    );
    vm.send_line("release");
    let out = vm.wait();
    out.assert_success();
    wait_log(&daemon, "ready for a frontend", 2, Duration::from_secs(15));
    assert_fds(
        &daemon,
        base_fds,
        Duration::from_secs(10),
        "after the guest",
    );
}

// ---------------------------------------------------------------------------
// QEMU killed mid-traffic
// ---------------------------------------------------------------------------

/// Waits until the daemon's fd count is back to `fds` and its RSS within
/// `slack_kib` of `rss`; returns the RSS seen.
fn assert_back_to_baseline(
    daemon: &DaemonHandle,
    fds: usize,
    rss: u64,
    slack_kib: u64,
    when: &str,
) -> u64 {
    assert_fds(daemon, fds, Duration::from_secs(15), when);
    let now = airlock_e2e::rss_kib(daemon.pid());
    assert!(
        now <= rss + slack_kib,
        "{when}: {}'s RSS is {now} KiB, {rss} KiB before the first guest",
        daemon.name()
    );
    now
}

/// One QEMU with both devices, killed with SIGKILL while the guest
/// downloads an endless stream through airlock-net and writes an endless
/// file through airlock-fs (tens of MiB each by then): both daemons drop the session, go back to the
/// fds they held and (within a few MiB) the memory they used before the
/// first guest, and serve a new QEMU, after which they are back there
/// again. (net.rs and fs.rs kill QEMU under each daemon alone.)
#[test]
fn qemu_killed_mid_net_and_fs_traffic_both_daemons_recover() {
    const RSS_SLACK_KIB: u64 = 8 * 1024;
    let http = airlock_e2e::servers::HttpServer::start(0);
    let resolver = airlock_e2e::servers::DnsResolver::start(&[]);
    let mut rig = Rig::new("hardening_qemu_killed");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let (net, net_socket) = start_net(
        &mut rig,
        "airlock-net",
        "net.sock",
        &["--dns-upstream".into(), resolver.addr().to_string()],
    );
    let (fsd, fs_socket) = start_fs(&mut rig, &share, &[]);
    wait_log(&net, "ready for a frontend", 1, Duration::from_secs(10));
    wait_log(&fsd, "ready for a frontend", 1, Duration::from_secs(10));
    let base: Vec<(usize, u64)> = [&net, &fsd]
        .iter()
        .map(|d| (fd_count(d.pid()), airlock_e2e::rss_kib(d.pid())))
        .collect();
    let devices = || {
        let mut args = airlock_e2e::net_device_args(&net_socket, MAC, false);
        args.extend(airlock_e2e::fs_device_args(&fs_socket, "share", 1024));
        args
    };
    let url = format!("http://host.airlock.internal:{}", http.port());
    let script = format!(
        r#"set -e
{UDHCPC}
mount -t virtiofs share /mnt
curl -sS {url}/stream >/dev/null &
dd if=/dev/zero of=/mnt/stream bs=1M count=100000 2>/dev/null &
echo TRAFFIC
wait
"#
    );
    let mut vm = rig.boot(airlock_e2e::VmConfig {
        script,
        qemu_args: devices(),
        ..airlock_e2e::VmConfig::default()
    });
    vm.wait_for("TRAFFIC", Duration::from_secs(120));
    http.wait_until("the stream's start", Duration::from_secs(30), |l| {
        l.streams_started == 1
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(share.join("stream")).map_or(0, |m| m.len()) < 64 << 20 {
        assert!(Instant::now() < deadline, "the guest never wrote 64 MiB");
        thread::sleep(Duration::from_millis(100));
    }
    let written = fs::metadata(share.join("stream")).map_or(0, |m| m.len());
    let peak: Vec<u64> = [&net, &fsd]
        .iter()
        .map(|d| airlock_e2e::rss_kib(d.pid()))
        .collect();
    vm.kill();
    drop(vm);

    let mut after_kill = Vec::new();
    for (d, (fds, rss)) in [&net, &fsd].into_iter().zip(&base) {
        wait_log(d, "ready for a frontend", 2, Duration::from_secs(20));
        after_kill.push(assert_back_to_baseline(
            d,
            *fds,
            *rss,
            RSS_SLACK_KIB,
            "after the kill",
        ));
    }
    let streamed = http
        .wait_until(
            "the stream's host connection closed",
            Duration::from_secs(15),
            |l| l.stream_ends.len() == 1,
        )
        .stream_ends[0]
        .bytes;
    assert!(
        streamed >= 1 << 20,
        "only {streamed} bytes streamed before the kill"
    );

    // A new QEMU is served by both.
    let out = rig
        .boot(airlock_e2e::VmConfig {
            script: format!(
                "set -e\n{UDHCPC}\nmount -t virtiofs share /mnt\ncurl -sS --max-time 30 {url}/hello >/mnt/hello\ncat /mnt/hello\nls -l /mnt/stream >/dev/null\numount /mnt\n"
            ),
            qemu_args: devices(),
            ..airlock_e2e::VmConfig::default()
        })
        .wait();
    out.assert_success()
        .assert_contains(airlock_e2e::servers::HELLO_BODY);
    assert_eq!(
        fs::read_to_string(share.join("hello")).unwrap(),
        airlock_e2e::servers::HELLO_BODY
    );
    let mut after_next = Vec::new();
    for (d, (fds, rss)) in [&net, &fsd].into_iter().zip(&base) {
        wait_log(d, "ready for a frontend", 3, Duration::from_secs(20));
        after_next.push(assert_back_to_baseline(
            d,
            *fds,
            *rss,
            RSS_SLACK_KIB,
            "after the next guest",
        ));
    }
    eprintln!(
        "{} MiB streamed and {} MiB written when QEMU was killed; RSS KiB (airlock-net, \
         airlock-fs): before {:?}, during traffic {peak:?}, after the kill {after_kill:?}, \
         after the next guest {after_next:?}; fds before {:?}",
        streamed >> 20,
        written >> 20,
        base.iter().map(|b| b.1).collect::<Vec<_>>(),
        base.iter().map(|b| b.0).collect::<Vec<_>>()
    );
}
