//! `airlock-guest-probe`: a helper the hardening tests copy into the guest
//! (see `VmConfig::files`) for what busybox cannot do from a shell script:
//! one system call with its exact errno, thousands of TCP connections or
//! UDP flows from one process, thousands of files held open.
//!
//! It runs on the guest's own glibc (the guest image carries the C library
//! of the programs it copies from the host). Every command prints one
//! summary line the test parses; `hold` commands then print `HOLDING` and
//! keep their descriptors until a line arrives on stdin (the test channel).
//!
//! ```text
//! airlock-guest-probe errno OP ARG...        # "errno OP ARG...: ok" or ": EXDEV"
//! airlock-guest-probe tcp-flood IP:PORT N SECONDS
//! airlock-guest-probe udp-flows IP:PORT N MILLISECONDS
//! airlock-guest-probe hold-files DIR N      # past the first refusal, also mkdir, mkfifo, ...
//! ```

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Consecutive failures after which `hold-files` stops trying.
const GIVE_UP_AFTER: usize = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["errno", op, rest @ ..] => errno_probe(op, rest),
        ["tcp-flood", addr, n, secs] => tcp_flood(addr, n, secs),
        ["udp-flows", addr, n, millis] => udp_flows(addr, n, millis),
        ["hold-files", dir, n] => hold_files(dir, n),
        _ => Err(format!("usage: see the source of {}", file!())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-guest-probe: {e}");
            ExitCode::from(2)
        }
    }
}

/// The symbolic name of an errno value, as the tests assert on it.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EDQUOT => "EDQUOT",
        _ => return format!("errno{errno}"),
    };
    name.to_string()
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn cstr(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} contains a NUL byte"))
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a valid number"))
}

/// Runs one system call and prints `errno OP ARG...: ok` or the errno's name.
fn errno_probe(op: &str, args: &[&str]) -> Result<(), String> {
    let c = |i: usize| -> Result<CString, String> {
        let arg = args
            .get(i)
            .ok_or_else(|| format!("{op} needs {} arguments", i + 1))?;
        cstr(arg)
    };
    let open = |flags: libc::c_int| -> Result<libc::c_int, String> {
        let path = c(0)?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nothing else.
            unsafe { libc::close(fd) };
            return Ok(0);
        }
        Ok(-1)
    };
    let dev = |major: usize, minor: usize| -> Result<libc::dev_t, String> {
        let get = |i: usize| -> Result<u32, String> {
            number(
                args.get(i)
                    .ok_or_else(|| format!("{op} needs a device number"))?,
            )
        };
        Ok(libc::makedev(get(major)?, get(minor)?))
    };
    let (a, b) = (c(0), c(1));
    let one = || a.clone();
    let two = || Ok::<_, String>((a.clone()?, b.clone()?));
    let rc = match op {
        "rename" => {
            let (a, b) = two()?;
            // SAFETY: both paths are NUL-terminated and outlive the call.
            unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }
        }
        "link" => {
            let (a, b) = two()?;
            // SAFETY: both paths are NUL-terminated and outlive the call.
            unsafe { libc::link(a.as_ptr(), b.as_ptr()) }
        }
        "symlink" => {
            let (a, b) = two()?;
            // SAFETY: both paths are NUL-terminated and outlive the call.
            unsafe { libc::symlink(a.as_ptr(), b.as_ptr()) }
        }
        "unlink" => {
            let a = one()?;
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::unlink(a.as_ptr()) }
        }
        "mkdir" => {
            let a = one()?;
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::mkdir(a.as_ptr(), 0o755) }
        }
        "mknod-chr" | "mknod-blk" => {
            let (a, dev) = (one()?, dev(1, 2)?);
            let kind = if op == "mknod-chr" {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::mknod(a.as_ptr(), kind | 0o666, dev) }
        }
        "mkfifo" => {
            let a = one()?;
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::mkfifo(a.as_ptr(), 0o644) }
        }
        "truncate" => {
            let a = one()?;
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::truncate(a.as_ptr(), 0) }
        }
        "open-read" => open(libc::O_RDONLY)?,
        "open-write" => open(libc::O_WRONLY)?,
        "open-nofollow" => open(libc::O_RDONLY | libc::O_NOFOLLOW)?,
        "create" => open(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?,
        _ => return Err(format!("unknown errno probe {op:?}")),
    };
    let result = if rc == 0 {
        "ok".to_string()
    } else {
        errno_name(last_errno())
    };
    println!("errno {op} {}: {result}", args.join(" "));
    Ok(())
}

/// Lets this process hold `n` more descriptors than it has (the guest runs
/// the probe as root, so the hard limit can be raised too).
fn allow_descriptors(n: usize) -> Result<(), String> {
    let limit = (n + 256) as libc::rlim_t;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rl` is a valid rlimit that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(format!(
            "cannot raise RLIMIT_NOFILE to {limit}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Prints `HOLDING`, then waits for a line on stdin (or its end).
fn hold() {
    println!("HOLDING");
    let _ = io::stdout().flush();
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
}

fn summary(counts: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("[{}]", parts.join(","))
}

/// A socket (`SOCK_NONBLOCK | SOCK_CLOEXEC`) of `kind`, or its errno.
fn socket(kind: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// connect(2) on a non-blocking socket: 0, or the errno (EINPROGRESS
/// while the handshake runs).
fn connect(fd: RawFd, addr: SocketAddrV4) -> i32 {
    let sa = sockaddr(addr);
    // SAFETY: `sa` is a valid sockaddr_in and the length says so.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        0
    } else {
        last_errno()
    }
}

/// The pending error of a socket (SO_ERROR), 0 if none.
fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes; `len` holds err's size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        last_errno()
    } else {
        err
    }
}

fn parse_v4(addr: &str) -> Result<SocketAddrV4, String> {
    match addr.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => Ok(a),
        _ => Err(format!("{addr:?} is not an IPv4 address:port")),
    }
}

/// Connections or flows started before the probe waits for their answers:
/// a guest has at most ~64 000 source ports per destination, and a wave's
/// refused sockets give theirs back before the next wave starts.
const WAVE: usize = 16384;

/// TCP connections being opened, and what became of them.
#[derive(Default)]
struct TcpTally {
    established: Vec<OwnedFd>,
    pending: Vec<OwnedFd>,
    refused: usize,
    errors: BTreeMap<String, usize>,
    last_answer: Duration,
}

impl TcpTally {
    /// Waits until every pending connection is answered or `deadline`.
    fn settle(&mut self, started: Instant, deadline: Instant) -> Result<(), String> {
        while !self.pending.is_empty() && Instant::now() < deadline {
            let mut polls: Vec<libc::pollfd> = self
                .pending
                .iter()
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let timeout = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as libc::c_int;
            // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs.
            let rc =
                unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout) };
            if rc < 0 && last_errno() != libc::EINTR {
                return Err(format!("poll: {}", io::Error::last_os_error()));
            }
            if rc <= 0 {
                continue;
            }
            let pending = std::mem::take(&mut self.pending);
            for (fd, p) in pending.into_iter().zip(&polls) {
                if p.revents == 0 {
                    self.pending.push(fd);
                    continue;
                }
                self.last_answer = started.elapsed();
                match socket_error(fd.as_raw_fd()) {
                    0 => self.established.push(fd),
                    libc::ECONNREFUSED => self.refused += 1,
                    e => *self.errors.entry(errno_name(e)).or_default() += 1,
                }
            }
        }
        Ok(())
    }
}

/// Opens `n` TCP connections to `addr` (in waves of [`WAVE`], all at once
/// within a wave) and waits up to `secs` in all for each to be established
/// or refused. Prints `tcp-flood established=E refused=R pending=P
/// errors=[...] last_answer_ms=T`, holds the established ones until told,
/// then closes them all.
fn tcp_flood(addr: &str, n: &str, secs: &str) -> Result<(), String> {
    let addr = parse_v4(addr)?;
    let n: usize = number(n)?;
    let wait = Duration::from_secs(number(secs)?);
    allow_descriptors(n.min(WAVE * 2) + n / 8)?;
    let started = Instant::now();
    let deadline = started + wait;
    let mut tally = TcpTally::default();
    for i in 0..n {
        if i > 0 && i % WAVE == 0 {
            tally.settle(started, deadline)?;
        }
        let fd = match socket(libc::SOCK_STREAM) {
            Ok(fd) => fd,
            Err(e) => {
                *tally
                    .errors
                    .entry(format!("socket-{}", errno_name(e)))
                    .or_default() += 1;
                continue;
            }
        };
        match connect(fd.as_raw_fd(), addr) {
            0 => tally.established.push(fd),
            libc::EINPROGRESS => tally.pending.push(fd),
            libc::ECONNREFUSED => tally.refused += 1,
            e => *tally.errors.entry(errno_name(e)).or_default() += 1,
        }
    }
    tally.settle(started, deadline)?;
    println!(
        "tcp-flood established={} refused={} pending={} errors={} last_answer_ms={}",
        tally.established.len(),
        tally.refused,
        tally.pending.len(),
        summary(&tally.errors),
        tally.last_answer.as_millis()
    );
    hold();
    // Closing sends each peer a FIN (the pending ones are just dropped).
    let closed = tally.established.len() + tally.pending.len();
    drop(tally);
    println!("tcp-flood closed={closed}");
    Ok(())
}

/// Sends one datagram from each of `n` fresh sockets (one flow each) to
/// `addr`, in waves of [`WAVE`], and waits up to `millis` after each wave
/// for replies. Prints `udp-flows sent=S replies=R silent=Q errors=[...]`;
/// errors are what the sockets report (an ICMP unreachable shows as
/// ECONNREFUSED or EHOSTUNREACH).
fn udp_flows(addr: &str, n: &str, millis: &str) -> Result<(), String> {
    let addr = parse_v4(addr)?;
    let n: usize = number(n)?;
    let wait = Duration::from_millis(number(millis)?);
    allow_descriptors(n.min(WAVE))?;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut sent, mut replies, mut silent) = (0usize, 0usize, 0usize);
    let mut next = 0usize;
    while next < n {
        let wave = (n - next).min(WAVE);
        let mut sockets = Vec::with_capacity(wave);
        for i in next..next + wave {
            let socket = match UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                s.connect(addr)?;
                s.set_nonblocking(true)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    let name = errno_name(e.raw_os_error().unwrap_or(0));
                    *errors.entry(format!("socket-{name}")).or_default() += 1;
                    continue;
                }
            };
            match socket.send(format!("flow {i}").as_bytes()) {
                Ok(_) => sent += 1,
                Err(e) => {
                    let name = errno_name(e.raw_os_error().unwrap_or(0));
                    *errors.entry(format!("send-{name}")).or_default() += 1;
                }
            }
            sockets.push(socket);
        }
        next += wave;
        let (r, left) = udp_answers(sockets, wait, &mut errors)?;
        replies += r;
        silent += left;
    }
    println!(
        "udp-flows sent={sent} replies={replies} silent={silent} errors={}",
        summary(&errors)
    );
    Ok(())
}

/// Waits up to `wait` for each socket's reply or error; returns the number
/// of replies and of sockets that heard nothing.
fn udp_answers(
    mut open: Vec<UdpSocket>,
    wait: Duration,
    errors: &mut BTreeMap<String, usize>,
) -> Result<(usize, usize), String> {
    let deadline = Instant::now() + wait;
    let mut replies = 0usize;
    let mut buf = [0u8; 2048];
    while !open.is_empty() && Instant::now() < deadline {
        let mut polls: Vec<libc::pollfd> = open
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(1000) as libc::c_int;
        // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs.
        let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout) };
        if rc < 0 && last_errno() != libc::EINTR {
            return Err(format!("poll: {}", io::Error::last_os_error()));
        }
        if rc <= 0 {
            continue;
        }
        let mut still = Vec::with_capacity(open.len());
        for (s, p) in open.into_iter().zip(&polls) {
            if p.revents == 0 {
                still.push(s);
                continue;
            }
            match s.recv(&mut buf) {
                Ok(_) => replies += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => still.push(s),
                Err(e) => {
                    let name = errno_name(e.raw_os_error().unwrap_or(0));
                    *errors.entry(name).or_default() += 1;
                }
            }
        }
        open = still;
    }
    Ok((replies, open.len()))
}

/// With the file server out of descriptors: closes one held file (the
/// server then has one descriptor free, and a create needs two: it makes
/// the file with the first and fails to look it up), then tries `gK`
/// (create) and each other way of making a name a few times — `dK`
/// (mkdir), `pK` (mkfifo), `sK` (symlink), `lK` (a hard link to `f1`) —
/// and prints `hold-files others made=NAME,... refused=NAME:ERRNO,...`, so
/// the test can check that the host has exactly the names made. What is
/// made stays open or in place.
fn make_others(dir: &str, files: &mut Vec<OwnedFd>) -> Result<(), String> {
    let c = |name: &str| {
        CString::new(Path::new(dir).join(name).as_os_str().as_bytes())
            .map_err(|_| format!("{dir:?} contains a NUL byte"))
    };
    // f0 goes; f1 is what the hard links point to.
    files.remove(0);
    let first = c("f1")?;
    let target = CString::new("f1").unwrap_or_default();
    let (mut made, mut refused) = (Vec::new(), Vec::new());
    for k in 0..4 {
        for kind in ["g", "d", "p", "s", "l"] {
            let name = format!("{kind}{k}");
            let path = c(&name)?;
            // SAFETY: every path is NUL-terminated and outlives its call.
            let rc = unsafe {
                match kind {
                    "g" => libc::open(
                        path.as_ptr(),
                        libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644,
                    ),
                    "d" => libc::mkdir(path.as_ptr(), 0o755),
                    "p" => libc::mknod(path.as_ptr(), libc::S_IFIFO | 0o644, 0),
                    "s" => libc::symlink(target.as_ptr(), path.as_ptr()),
                    _ => libc::link(first.as_ptr(), path.as_ptr()),
                }
            };
            if rc < 0 {
                refused.push(format!("{name}:{}", errno_name(last_errno())));
                continue;
            }
            if kind == "g" {
                // SAFETY: `rc` was just opened and nothing else owns it.
                files.push(unsafe { OwnedFd::from_raw_fd(rc) });
            }
            made.push(name);
        }
    }
    println!(
        "hold-files others made={} refused={}",
        made.join(","),
        refused.join(",")
    );
    Ok(())
}

/// Creates `DIR/f0` … and keeps every file open. Prints `hold-files
/// opened=K failed=F first_failure=I errors=[...]` (it stops after
/// [`GIVE_UP_AFTER`] failures in a row), holds them until told, closes them.
fn hold_files(dir: &str, n: &str) -> Result<(), String> {
    let n: usize = number(n)?;
    allow_descriptors(n)?;
    let mut files: Vec<OwnedFd> = Vec::with_capacity(n);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_failure: Option<usize> = None;
    let mut failed = 0usize;
    let mut in_a_row = 0usize;
    for i in 0..n {
        let path = Path::new(dir).join(format!("f{i}"));
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{dir:?} contains a NUL byte"))?;
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and nothing else owns it.
            files.push(unsafe { OwnedFd::from_raw_fd(fd) });
            in_a_row = 0;
            continue;
        }
        *errors.entry(errno_name(last_errno())).or_default() += 1;
        first_failure.get_or_insert(i);
        failed += 1;
        in_a_row += 1;
        if in_a_row >= GIVE_UP_AFTER {
            break;
        }
    }
    println!(
        "hold-files opened={} failed={failed} first_failure={} errors={}",
        files.len(),
        first_failure.map_or("none".to_string(), |i| i.to_string()),
        summary(&errors)
    );
    if failed > 0 && files.len() > 1 {
        make_others(dir, &mut files)?;
    }
    hold();
    let closed = files.len();
    drop(files);
    println!("hold-files closed={closed}");
    Ok(())
}
