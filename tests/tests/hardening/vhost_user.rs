//! Malformed vhost-user messages from a misbehaving frontend.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use airlock_e2e::frontend::{
    self, eventfd, mem_table, memfd, req, u64_payload, vring_addr, vring_state, Outcome,
    RawFrontend, Region, VRING_NOFD,
};

use super::*;

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
    daemon.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
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
        daemon.wait_for_log_lines("ready for a frontend", sessions, VERDICT_TIMEOUT);
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
    daemon.wait_for_log_lines("ready for a frontend", sessions + 1, VERDICT_TIMEOUT);
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

/// A client that connects and sends nothing, and one that sends half a
/// header, are dropped after the handshake timeout: the frontend queued
/// behind them is served (it used to wait for as long as they stayed).
fn silent_clients_then_a_frontend(daemon: &DaemonHandle, socket: &Path) {
    daemon.wait_for_log_lines("ready for a frontend", 1, Duration::from_secs(10));
    let silent = RawFrontend::connect(socket).unwrap();
    let mut half = RawFrontend::connect(socket).unwrap();
    half.send_bytes(
        &frontend::header(req::GET_FEATURES, frontend::VERSION_1, 0)[..6],
        &[],
    )
    .unwrap();
    let mut front = RawFrontend::connect(socket).unwrap();
    // Bounded by two handshake timeouts (10 s each), not asserted on.
    let reply = front
        .request(req::GET_FEATURES, &[], &[])
        .and_then(|()| front.read_reply(Duration::from_secs(60)))
        .unwrap();
    let features = reply.and_then(|r| r.value());
    assert!(
        features.is_some_and(|f| f & frontend::F_PROTOCOL_FEATURES != 0),
        "no answer behind the silent clients: {features:?}\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("no complete message within 10s (0 bytes received)")
            && log.contains("no complete message within 10s (6 bytes received)"),
        "{log}"
    );
    drop((silent, half, front));
    assert!(daemon.is_running());
}

#[test]
fn airlock_net_serves_the_frontend_behind_a_silent_client() {
    let mut rig = Rig::new("hardening_vu_net_silent");
    let (daemon, socket) = start_net(
        &mut rig,
        "airlock-net",
        "net.sock",
        &["--dns-upstream".into(), "127.0.0.1:9".into()],
    );
    silent_clients_then_a_frontend(&daemon, &socket);
}

#[test]
fn airlock_fs_serves_the_frontend_behind_a_silent_client() {
    let mut rig = Rig::new("hardening_vu_fs_silent");
    let share = rig.dir().join("share");
    fs::create_dir(&share).unwrap();
    let (daemon, socket) = start_fs(&mut rig, &share, &[]);
    silent_clients_then_a_frontend(&daemon, &socket);
}
