//! `airlock-seccomp-probe`: runs one process-level code path under a
//! daemon's seccomp allow-list in `kill` mode, so `tests/tests/seccomp.rs`
//! can check that the path survives the filter. These are the paths every
//! daemon can take whatever it serves, and that the end-to-end tests only
//! reach by accident: a panic (with a backtrace), threads started after
//! the filter, the allocator growing, shrinking and failing, a stop and
//! continue (restarted sleeps), syslog losing its socket.
//!
//! The probe sets itself up the way the daemons do — `airlock_common`'s
//! logging and panic hook, then `airlock_common::seccomp::apply` with the
//! list file given — and then takes the path:
//!
//! ```text
//! airlock-seccomp-probe LIST panic            # panics on the main thread
//! airlock-seccomp-probe LIST panic-thread     # a spawned thread panics
//! airlock-seccomp-probe LIST threads          # 32 threads, each allocating
//! airlock-seccomp-probe LIST alloc            # large blocks, realloc, trim
//! airlock-seccomp-probe LIST alloc-failure    # an allocation over RLIMIT_AS
//! airlock-seccomp-probe LIST stop             # timed waits across SIGSTOP/SIGCONT
//! airlock-seccomp-probe LIST syslog SOCKET    # one syslog line per stdin line
//! ```
//!
//! Each prints `READY` once the filter is installed and ends with status 0
//! (or, for the panics, Rust's 101; for `alloc-failure`, SIGABRT).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use airlock_common::logging::{LogArgs, LogLevel};
use airlock_common::seccomp::{self, SeccompMode};

/// The address-space limit of `alloc-failure`, and what it then asks for.
const ADDRESS_SPACE: u64 = 1 << 30;
const TOO_MUCH: usize = 2 << 30;
/// How long `stop` waits in each of its timed calls.
const STOP_WAIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (list, scenario, rest) = match words.as_slice() {
        [list, scenario, rest @ ..] => (*list, *scenario, rest),
        _ => return usage(),
    };
    let list = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("airlock-seccomp-probe: cannot read {list}: {e}");
            return ExitCode::from(2);
        }
    };
    let syslog = scenario == "syslog";
    if syslog {
        let [socket] = rest else {
            return usage();
        };
        if let Err(e) = private_dev_log(Path::new(socket)) {
            eprintln!("airlock-seccomp-probe: cannot point /dev/log at {socket}: {e}");
            return ExitCode::from(2);
        }
    }
    if scenario == "alloc-failure" {
        let limit = libc::rlimit {
            rlim_cur: ADDRESS_SPACE,
            rlim_max: ADDRESS_SPACE,
        };
        // SAFETY: `limit` is a valid rlimit that lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            eprintln!(
                "airlock-seccomp-probe: setrlimit: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(2);
        }
    }
    airlock_common::logging::init(
        &LogArgs {
            log_level: LogLevel::Info,
            syslog,
        },
        "airlock-seccomp-probe",
        &["airlock_seccomp_probe"],
    );
    airlock_common::panic::install();
    if let Err(e) = seccomp::apply(&list, SeccompMode::Kill) {
        eprintln!("airlock-seccomp-probe: {e}");
        return ExitCode::from(2);
    }
    println!("READY");
    let _ = std::io::stdout().flush();
    match scenario {
        "panic" => panic!("probe panic on the main thread"),
        "panic-thread" => {
            let joined = std::thread::Builder::new()
                .name("probe-worker".into())
                .spawn(|| panic!("probe panic on a worker thread"))
                .map(|t| t.join());
            match joined {
                Ok(Err(_)) => println!("JOINED a panicked thread"),
                Ok(Ok(())) => println!("the thread did not panic"),
                Err(e) => println!("cannot spawn: {e}"),
            }
        }
        "threads" => threads(),
        "alloc" => alloc(),
        "alloc-failure" => {
            let block: Vec<u8> = Vec::with_capacity(TOO_MUCH);
            println!("allocated {} bytes over the limit", block.capacity());
        }
        "stop" => stop(),
        "syslog" => {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line == "panic" {
                    panic!("probe panic while logging to syslog");
                }
                log::warn!("{line}");
                println!("LOGGED {line}");
                let _ = std::io::stdout().flush();
            }
        }
        _ => return usage(),
    }
    println!("DONE");
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: see the source of {}", file!());
    ExitCode::from(2)
}

/// Threads started after the filter, each with its own malloc arena.
fn threads() {
    let handles: Vec<_> = (0..32)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("probe-{i}"))
                .spawn(move || {
                    let v: Vec<u64> = (0..100_000).map(|x| x * i).collect();
                    v.iter().sum::<u64>()
                })
        })
        .collect();
    let mut total = 0u64;
    for handle in handles {
        match handle.map(|h| h.join()) {
            Ok(Ok(sum)) => total = total.wrapping_add(sum),
            Ok(Err(_)) => println!("a thread panicked"),
            Err(e) => println!("cannot spawn: {e}"),
        }
    }
    println!("threads summed {total}");
}

/// The allocator's system calls: large blocks (mmap/munmap), growing one
/// in place or by moving it (mremap), many small ones (brk), giving memory
/// back (malloc_trim: madvise).
fn alloc() {
    let mut big = vec![1u8; 64 << 20];
    big.resize(256 << 20, 2);
    big.truncate(1 << 20);
    big.shrink_to_fit();
    let small: Vec<Box<[u8; 64]>> = (0..200_000).map(|_| Box::new([3u8; 64])).collect();
    let sum: u64 = small.iter().map(|b| u64::from(b[0])).sum::<u64>() + u64::from(big[0]);
    drop(small);
    drop(big);
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    println!("alloc summed {sum}");
}

/// Timed waits of every kind a daemon's threads sit in — sleep
/// (clock_nanosleep), a condition variable with a timeout (futex), poll
/// and epoll with timeouts — while the test stops and continues the
/// process: the kernel restarts some of them with restart_syscall.
fn stop() {
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let waiter = pair.clone();
    let threads = [
        std::thread::spawn(move || {
            let (lock, cv) = &*waiter;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = cv.wait_timeout(guard, STOP_WAIT);
        }),
        std::thread::spawn(|| {
            let ms = STOP_WAIT.as_millis() as libc::c_int;
            // SAFETY: poll with no descriptors only sleeps.
            unsafe { libc::poll(std::ptr::null_mut(), 0, ms) };
        }),
        std::thread::spawn(|| {
            let ms = STOP_WAIT.as_millis() as libc::c_int;
            // SAFETY: epoll_create1 returns a new descriptor or -1; epoll_wait
            // writes at most one event into `event`; the descriptor is closed.
            unsafe {
                let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                let mut event = libc::epoll_event { events: 0, u64: 0 };
                libc::epoll_wait(fd, &mut event, 1, ms);
                libc::close(fd);
            }
        }),
    ];
    println!("WAITING");
    let _ = std::io::stdout().flush();
    std::thread::sleep(STOP_WAIT);
    for t in threads {
        let _ = t.join();
    }
    println!("woke");
}

/// Gives this process its own /dev in which `log` is a symbolic link to
/// `socket`: glibc's syslog always writes to /dev/log, and the test plays
/// the syslog daemon on `socket`.
fn private_dev_log(socket: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let dev = CString::new("/dev").map_err(std::io::Error::other)?;
    let root = CString::new("/").map_err(std::io::Error::other)?;
    let tmpfs = CString::new("tmpfs").map_err(std::io::Error::other)?;
    // SAFETY: unshare and mount with NUL-terminated strings that outlive
    // the calls (null where the call allows it). The new mount namespace
    // is this process's alone, private from the host's.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            tmpfs.as_ptr(),
            dev.as_ptr(),
            tmpfs.as_ptr(),
            0,
            std::ptr::null(),
        ))?;
    }
    std::os::unix::fs::symlink(socket, "/dev/log")
}
