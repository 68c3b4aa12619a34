//! `airlock-guest watch`: the session with airlock-fs over the port.
//!
//! The helper says HELLO with a random nonce and drops everything it
//! reads until the WELCOME echoing it (the port may hold a backlog or
//! half a frame left by a previous helper). Then each batch of events
//! read is applied ([`apply`](crate::apply)) and acknowledged with the
//! last sequence number, which lets airlock-fs send more. When the host
//! side goes away (the port reports hang-up: airlock-fs stopped, QEMU's
//! chardev disconnected) the helper waits for it and says HELLO again.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_notify::{Decoder, Flags, Message, VERSION};

use crate::apply;
use crate::args::WatchArgs;
use crate::mount::{MountError, MountSpec, Share};
use crate::port;

/// How often HELLO is repeated while unanswered, and how often a missing
/// port, share or host side is looked for again.
const RETRY: Duration = Duration::from_secs(1);
/// While the host side is away, the port reports hang-up at once: this
/// long between looks.
const HANGUP_PAUSE: Duration = Duration::from_millis(250);
/// Bytes read from the port at once.
const READ_BUFFER: usize = 16 * 1024;

/// What to watch, checked.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub mount: MountSpec,
    pub port: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("/proc is not mounted (the helper reaches files through /proc/self/fd)")]
    NoProc,
    #[error("--port must not be empty")]
    EmptyPort,
    #[error("give the share as --mount DIR or --tag TAG")]
    NoMount,
    #[error("cannot list {0}")]
    Sys(PathBuf, #[source] io::Error),
    #[error("port {0} is already open (another airlock-guest runs?)")]
    Busy(PathBuf, #[source] io::Error),
    #[error("cannot open port {0}")]
    Open(PathBuf, #[source] io::Error),
}

impl TryFrom<WatchArgs> for WatchConfig {
    type Error = WatchError;

    fn try_from(a: WatchArgs) -> Result<Self, Self::Error> {
        if a.port.is_empty() {
            return Err(WatchError::EmptyPort);
        }
        let mount = match (a.mount, a.tag) {
            (Some(dir), _) => MountSpec::Dir(dir),
            (None, Some(tag)) => MountSpec::Tag(tag),
            (None, None) => return Err(WatchError::NoMount),
        };
        Ok(WatchConfig {
            mount,
            port: a.port,
        })
    }
}

/// Runs until killed (or a fatal error).
pub fn run(config: &WatchConfig) -> Result<(), WatchError> {
    if !Path::new("/proc/self/fd").is_dir() {
        return Err(WatchError::NoProc);
    }
    let sys = Path::new(port::SYS_PORTS);
    let mut waiting_logged = false;
    loop {
        let dev = match port::find(sys, &config.port).map_err(|e| WatchError::Sys(sys.into(), e))? {
            Some(dev) => dev,
            None => {
                if !waiting_logged {
                    log::info!("waiting for virtio-serial port {:?}", config.port);
                    waiting_logged = true;
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        let file = port::open(&dev).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => WatchError::Busy(dev.clone(), e),
            _ => WatchError::Open(dev.clone(), e),
        })?;
        log::info!("using port {:?} ({})", config.port, dev.display());
        let mut session = Session::new(file, config.mount.clone());
        match session.run() {
            Ok(()) => {}
            Err(e) => log::warn!("port {}: {e}; opening it again", dev.display()),
        }
        waiting_logged = false;
        std::thread::sleep(RETRY);
    }
}

/// One open port.
struct Session {
    port: File,
    mount: MountSpec,
    share: Option<Share>,
    /// The share could not be opened; logged once until it can.
    share_error_logged: bool,
    nonce: u64,
    decoder: Decoder,
    welcomed: bool,
    last_hello: Option<Instant>,
    /// Last sequence number applied, and last acknowledged.
    applied: u64,
    acked: u64,
    /// The host side is away (hang-up).
    away: bool,
}

fn random_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 8 {
        // No entropy yet (early boot): the time and pid tell two helpers
        // apart well enough, which is all a nonce does here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        return t ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_ne_bytes(bytes)
}

impl Session {
    fn new(port: File, mount: MountSpec) -> Session {
        let nonce = random_nonce();
        Session {
            port,
            mount,
            share: None,
            share_error_logged: false,
            nonce,
            decoder: Decoder::awaiting_welcome(nonce),
            welcomed: false,
            last_hello: None,
            applied: 0,
            acked: 0,
            away: false,
        }
    }

    /// Until the port fails.
    fn run(&mut self) -> io::Result<()> {
        loop {
            if !self.welcomed && !self.away && self.last_hello.is_none_or(|t| t.elapsed() >= RETRY)
            {
                self.hello()?;
            }
            let mut fds = [libc::pollfd {
                fd: self.port.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if self.acked < self.applied {
                fds[0].events |= libc::POLLOUT;
            }
            // SAFETY: `fds` is a valid array of one pollfd.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, RETRY.as_millis() as i32) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let revents = fds[0].revents;
            if revents & libc::POLLIN != 0 {
                self.read()?;
            } else if revents & libc::POLLHUP != 0 {
                self.host_away();
                std::thread::sleep(HANGUP_PAUSE);
                continue;
            }
            if self.away && revents & libc::POLLHUP == 0 {
                log::info!("host side of the port is back");
                self.away = false;
            }
            self.ack()?;
        }
    }

    fn host_away(&mut self) {
        if !self.away {
            log::info!("host side of the port is away; waiting for it");
            self.away = true;
        }
        // A new host side knows nothing of this session.
        self.welcomed = false;
        self.last_hello = None;
        self.nonce = random_nonce();
        self.decoder = Decoder::awaiting_welcome(self.nonce);
    }

    fn hello(&mut self) -> io::Result<()> {
        let mut frame = Vec::new();
        Message::Hello {
            version: VERSION,
            nonce: self.nonce,
        }
        .encode(&mut frame)
        .map_err(io::Error::other)?;
        self.last_hello = Some(Instant::now());
        match self.port.write(&frame) {
            // A HELLO is 15 bytes: the kernel takes it whole or not at all.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn ack(&mut self) -> io::Result<()> {
        if !self.welcomed || self.acked >= self.applied {
            return Ok(());
        }
        let mut frame = Vec::new();
        Message::Ack { seq: self.applied }
            .encode(&mut frame)
            .map_err(io::Error::other)?;
        match self.port.write(&frame) {
            Ok(_) => {
                self.acked = self.applied;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads what is there, applies the events in it.
    fn read(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut batch: Vec<(Flags, Vec<u8>)> = Vec::new();
        loop {
            match self.port.read(&mut buf) {
                // No data and no host side.
                Ok(0) => {
                    self.host_away();
                    break;
                }
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let messages: Vec<_> = self.decoder.by_ref().collect();
            for message in messages {
                match message {
                    Ok(Message::Welcome { nonce, version }) if nonce == self.nonce => {
                        self.apply(&mut batch);
                        log::info!("connected to airlock-fs (protocol version {version})");
                        self.welcomed = true;
                        self.applied = 0;
                        self.acked = 0;
                    }
                    Ok(Message::Event { seq, flags, path }) if self.welcomed => {
                        self.applied = self.applied.max(seq);
                        batch.push((flags, path));
                    }
                    Ok(other) => log::debug!("ignored {other:?}"),
                    Err(e) => log::warn!("from airlock-fs: {e}"),
                }
            }
        }
        self.apply(&mut batch);
        Ok(())
    }

    fn apply(&mut self, batch: &mut Vec<(Flags, Vec<u8>)>) {
        if batch.is_empty() {
            return;
        }
        if let Some(share) = self.current_share() {
            let out = apply::apply(share, batch);
            log::debug!(
                "batch of {}: {} applied, {} gone, {} failed",
                batch.len(),
                out.applied,
                out.missing,
                out.failed
            );
        }
        batch.clear();
    }

    /// The share, opened again if it was remounted; `None` (logged once)
    /// while it is not mounted: the changes are then dropped, as nothing
    /// in the guest can be watching them.
    fn current_share(&mut self) -> Option<&Share> {
        if self.share.as_ref().is_some_and(|s| !s.is_current()) {
            log::info!("the share was remounted; opening it again");
            self.share = None;
        }
        if self.share.is_none() {
            match Share::open(&self.mount) {
                Ok(share) => {
                    log::info!("replaying host changes under {}", share.path().display());
                    self.share = Some(share);
                    self.share_error_logged = false;
                }
                Err(e) => {
                    if !self.share_error_logged {
                        log::warn!("{}; changes are dropped until it is", describe(&e));
                        self.share_error_logged = true;
                    }
                }
            }
        }
        self.share.as_ref()
    }
}

fn describe(e: &MountError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
