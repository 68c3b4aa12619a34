//! The notify thread: reads fanotify, keeps the [`Tree`] of watched
//! directories in step, queues the host's changes ([`Pending`]) and sends
//! them to the guest helper over the `--notify-socket` connection
//! ([`Channel`]). One thread and one `poll` loop; it shares nothing with
//! the threads serving the guest's requests, so neither a burst of host
//! changes nor a slow or absent guest helper holds up file serving.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_common::ratelimited;
use airlock_notify::{check_path, Flags, PathError, MAX_PATH};

use super::channel::Channel;
use super::dirs::{self, DirKey};
use super::fanotify::{self, DirEntry, Event, Fanotify};
use super::queue::{Pending, DEFAULT_LIMIT};
use super::tree::{NodeId, Tree};
use super::NotifyError;

/// Bytes read from fanotify at once.
const EVENT_BUFFER: usize = 64 * 1024;
/// Reads from fanotify (or the connection) per loop turn, so neither side
/// starves the other.
const READS_PER_TURN: usize = 16;
/// Bytes read from the guest at once.
const INPUT_BUFFER: usize = 4096;
/// Longest poll timeout while changes wait.
const MAX_WAIT_MS: u128 = 60_000;

/// Starts watching the share at `root` (its path as the daemon sees it,
/// inside the sandbox) and serving guest helpers on `listener`. Call it
/// after capabilities are dropped (see [`fanotify`]) and before seccomp.
pub fn start(listener: UnixListener, root: &Path, socket: &Path) -> Result<(), NotifyError> {
    let root_fd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| NotifyError::OpenShare(root.to_owned(), e))?
        .into();
    let fan = Fanotify::new(root_fd.as_fd()).map_err(NotifyError::Fanotify)?;
    let mut key = Vec::new();
    dirs::key_of(root_fd.as_fd(), &mut key).map_err(NotifyError::Fanotify)?;
    listener
        .set_nonblocking(true)
        .map_err(NotifyError::Socket)?;
    let watcher = Watcher {
        tree: Tree::new(key.into()),
        fan,
        root_fd,
        pending: Pending::new(DEFAULT_LIMIT),
        listener,
        socket: socket.to_owned(),
        conn: None,
        channel: Channel::new(),
        pid: std::process::id() as i32,
        key_buf: Vec::new(),
        path_buf: Vec::new(),
        marks_failed: false,
        own_events: 0,
        sent: 0,
    };
    std::thread::Builder::new()
        .name("fs-notify".into())
        .spawn(move || watcher.run())
        .map_err(NotifyError::Thread)?;
    Ok(())
}

struct Watcher {
    fan: Fanotify,
    /// The share's root, held open: every directory is opened beneath it.
    root_fd: OwnedFd,
    tree: Tree,
    pending: Pending,
    listener: UnixListener,
    socket: PathBuf,
    conn: Option<UnixStream>,
    channel: Channel,
    /// This process' pid: events fanotify reports with it were caused by
    /// the guest through airlock-fs.
    pid: i32,
    key_buf: Vec<u8>,
    path_buf: Vec<u8>,
    /// A mark failed (mark limit reached); logged once.
    marks_failed: bool,
    /// Events the guest itself caused, not sent back (never echo).
    own_events: u64,
    sent: u64,
}

fn flags_of(mask: u64) -> Flags {
    let mut flags = Flags::empty();
    if mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0 {
        flags |= Flags::CREATED;
    }
    if mask & (libc::FAN_DELETE | libc::FAN_MOVED_FROM) != 0 {
        flags |= Flags::REMOVED;
    }
    if mask & (libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE) != 0 {
        flags |= Flags::CHANGED;
    }
    if mask & libc::FAN_ATTRIB != 0 {
        flags |= Flags::ATTRIB;
    }
    flags
}

/// Directory-entry events: the set of subdirectories may have changed.
const DIRENT_EVENTS: u64 =
    libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;

impl Watcher {
    fn run(mut self) {
        let started = Instant::now();
        let root = self.tree.root();
        match dirs::open_dir_beneath(self.root_fd.as_fd(), b"") {
            Ok(fd) => self.walk(root, fd),
            Err(e) => log::error!("notify: cannot list the share: {e}"),
        }
        log::info!(
            "notify: watching {} directories ({} ms, {}); guest helpers connect through {}",
            self.tree.len(),
            started.elapsed().as_millis(),
            if self.fan.whole_renames() {
                "FAN_RENAME"
            } else {
                "FAN_MOVED_FROM/TO"
            },
            self.socket.display()
        );
        let mut events = vec![0u8; EVENT_BUFFER];
        loop {
            if let Err(e) = self.turn(&mut events) {
                // Only poll itself failing ends up here; it never should.
                log::error!("notify: stopped: {e}");
                return;
            }
        }
    }

    /// One round of the poll loop.
    fn turn(&mut self, events: &mut [u8]) -> io::Result<()> {
        let timeout = match self.pending.next_ready() {
            Some(at) if self.channel.can_send() => {
                let wait = at.saturating_duration_since(Instant::now());
                // Rounded up: waking a little early would spin.
                wait.as_nanos().div_ceil(1_000_000).min(MAX_WAIT_MS) as i32
            }
            _ => -1,
        };
        let mut fds = [
            poll_fd(self.fan.as_raw_fd(), libc::POLLIN),
            poll_fd(self.listener.as_raw_fd(), libc::POLLIN),
            poll_fd(-1, 0),
        ];
        if let Some(conn) = &self.conn {
            let mut want = libc::POLLIN;
            if !self.channel.output().is_empty() {
                want |= libc::POLLOUT;
            }
            fds[2] = poll_fd(conn.as_raw_fd(), want);
        }
        // SAFETY: `fds` is a valid array of pollfd of the length passed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            self.read_events(events);
        }
        if fds[1].revents != 0 {
            self.accept();
        }
        if fds[2].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_guest();
        }
        self.flush();
        Ok(())
    }

    fn accept(&mut self) {
        match self.listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    log::warn!("notify: cannot use the new connection: {e}");
                    return;
                }
                log::info!(
                    "notify: {} on {}",
                    if self.conn.is_some() {
                        "new connection replaces the previous one"
                    } else {
                        "connected"
                    },
                    self.socket.display()
                );
                // A new QEMU is a new guest: what was waiting for the old
                // one means nothing to it.
                self.conn = Some(stream);
                self.channel = Channel::new();
                self.pending.clear();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => ratelimited!(log::Level::Warn, "notify: accept failed: {e}"),
        }
    }

    fn disconnect(&mut self, why: &str) {
        log::info!(
            "notify: connection closed ({why}); so far {} changes sent, {} events caused by the \
             guest itself not sent back",
            self.sent,
            self.own_events
        );
        self.conn = None;
        self.channel = Channel::new();
    }

    fn read_guest(&mut self) {
        let mut buf = [0u8; INPUT_BUFFER];
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            match conn.read(&mut buf) {
                Ok(0) => return self.disconnect("end of stream"),
                Ok(n) => {
                    let got = self.channel.receive(&buf[..n]);
                    if got.lost_events {
                        log::info!("notify: the previous guest helper left events unapplied: rescanning the share");
                        self.pending.add(b"", Flags::RESCAN, Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.disconnect(&e.to_string()),
            }
        }
    }

    /// Moves ready changes into the channel and writes what it can.
    fn flush(&mut self) {
        let now = Instant::now();
        while self.channel.can_send() {
            let Some((path, flags)) = self.pending.pop_ready(now) else {
                break;
            };
            match check_path(&path) {
                Ok(()) => self.channel.send(flags, &path),
                Err(PathError::TooLong(_)) => {
                    // The longest ancestor an event can carry.
                    let mut end = MAX_PATH.min(path.len());
                    while end > 0 && path[end] != b'/' {
                        end -= 1;
                    }
                    self.channel.send(Flags::RESCAN, &path[..end]);
                }
                Err(e) => log::warn!("notify: change not sent: {e}"),
            }
            self.sent += 1;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while !self.channel.output().is_empty() {
            match conn.write(self.channel.output()) {
                Ok(0) => return self.disconnect("write returned 0"),
                Ok(n) => self.channel.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.disconnect(&e.to_string()),
            }
        }
    }

    fn read_events(&mut self, buf: &mut [u8]) {
        let mut overflow = false;
        for _ in 0..READS_PER_TURN {
            let n = match self.fan.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    ratelimited!(
                        log::Level::Error,
                        "notify: cannot read fanotify events: {e}"
                    );
                    break;
                }
            };
            let events = match fanotify::parse(&buf[..n]) {
                Ok(events) => events,
                Err(e) => {
                    log::error!("notify: {e}; rescanning");
                    overflow = true;
                    continue;
                }
            };
            let now = Instant::now();
            for event in &events {
                if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                    overflow = true;
                } else {
                    self.handle(event, now);
                }
            }
        }
        if overflow {
            self.resync();
        }
    }

    /// The fanotify queue overflowed: events were lost. The tree is built
    /// again from the file system and the guest rescans everything.
    fn resync(&mut self) {
        log::warn!("notify: fanotify queue overflowed; rebuilding the directory tree");
        let root_key: DirKey = match self.tree.key(self.tree.root()) {
            Some(key) => key.into(),
            None => return,
        };
        self.tree = Tree::new(root_key);
        let root = self.tree.root();
        match dirs::open_dir_beneath(self.root_fd.as_fd(), b"") {
            Ok(fd) => self.walk(root, fd),
            Err(e) => log::error!("notify: cannot list the share: {e}"),
        }
        self.pending.add(b"", Flags::RESCAN, Instant::now());
    }

    /// The directory an event's record names, if it is one of ours.
    fn dir_of(&mut self, entry: &DirEntry<'_>) -> Option<NodeId> {
        dirs::pack_key(
            &entry.dir.fsid,
            entry.dir.handle_type,
            entry.dir.handle,
            &mut self.key_buf,
        );
        self.tree.lookup(&self.key_buf)
    }

    /// Queues a change of `name` in `dir` (`.`: `dir` itself).
    fn queue(&mut self, dir: NodeId, name: &[u8], flags: Flags, now: Instant) {
        if flags.is_empty() || !self.tree.path(dir, &mut self.path_buf) {
            return;
        }
        if name != b"." {
            if !self.path_buf.is_empty() {
                self.path_buf.push(b'/');
            }
            self.path_buf.extend_from_slice(name);
        }
        self.pending.add(&self.path_buf, flags, now);
    }

    fn handle(&mut self, event: &Event<'_>, now: Instant) {
        let own = event.pid != 0 && event.pid == self.pid;
        if own {
            self.own_events += 1;
        }
        let on_dir = event.mask & libc::FAN_ONDIR != 0;
        if event.mask & libc::FAN_RENAME != 0 {
            let old = event
                .old
                .and_then(|e| Some((self.dir_of(&e)?, e.name.to_vec())));
            let new = event
                .new
                .and_then(|e| Some((self.dir_of(&e)?, e.name.to_vec())));
            if on_dir {
                // The destination first: a directory moved within the
                // share is re-linked there before its old name is checked.
                if let Some((dir, name)) = &new {
                    self.reconcile(*dir, name);
                }
                if let Some((dir, name)) = &old {
                    self.reconcile(*dir, name);
                }
            }
            if !own {
                if let Some((dir, name)) = &old {
                    self.queue(*dir, name, Flags::REMOVED, now);
                }
                if let Some((dir, name)) = &new {
                    self.queue(*dir, name, Flags::CREATED, now);
                }
            }
            return;
        }
        let Some(entry) = event.entry else {
            return;
        };
        let Some(dir) = self.dir_of(&entry) else {
            // A directory that left the share (or was never ours).
            return;
        };
        if entry.name == b"." {
            if event.mask & libc::FAN_DELETE_SELF != 0 && dir != self.tree.root() {
                self.tree.remove(dir);
                return;
            }
            if !own && event.mask & libc::FAN_ATTRIB != 0 {
                self.queue(dir, b".", Flags::ATTRIB, now);
            }
            return;
        }
        if on_dir && event.mask & DIRENT_EVENTS != 0 {
            self.reconcile(dir, entry.name);
        }
        if !own {
            self.queue(dir, entry.name, flags_of(event.mask), now);
        }
    }

    /// Makes the tree agree with the file system about `name` in `dir`:
    /// a directory there is known (re-linked if it moved, walked if new),
    /// anything else there is not.
    fn reconcile(&mut self, dir: NodeId, name: &[u8]) {
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return;
        }
        if !self.tree.path(dir, &mut self.path_buf) {
            return;
        }
        let Ok(dir_fd) = dirs::open_dir_beneath(self.root_fd.as_fd(), &self.path_buf) else {
            // The directory moved or went: events on the way will tell.
            return;
        };
        if dirs::key_of(dir_fd.as_fd(), &mut self.key_buf).is_err()
            || self.tree.key(dir).is_none_or(|k| k != &self.key_buf[..])
        {
            return;
        }
        match dirs::open_dir_beneath(dir_fd.as_fd(), name) {
            Ok(fd) => {
                if dirs::key_of(fd.as_fd(), &mut self.key_buf).is_err() {
                    return;
                }
                let known = self.tree.lookup(&self.key_buf);
                match known {
                    Some(id) if self.tree.child(dir, name) == Some(id) => {}
                    Some(id) => {
                        self.tree.relink(id, dir, name);
                    }
                    None => {
                        let key = self.key_buf.clone();
                        self.mark(&fd);
                        if let Some(id) = self.tree.insert(dir, name, &key) {
                            self.walk(id, fd);
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                ) =>
            {
                if let Some(gone) = self.tree.child(dir, name) {
                    let keys = self.tree.remove(gone);
                    self.forget(&keys);
                }
            }
            Err(e) => log::debug!("notify: cannot look at a new directory: {e}"),
        }
    }

    /// Removes the marks of directories that left the tree but may still
    /// exist (moved out of the share). Deleted ones lost theirs already.
    fn forget(&self, keys: &[DirKey]) {
        for key in keys {
            if let Ok(fd) = dirs::open_by_key(self.root_fd.as_fd(), key) {
                let _ = self.fan.unmark(fd.as_fd());
            }
        }
    }

    fn mark(&mut self, fd: &OwnedFd) {
        if let Err(e) = self.fan.mark(fd.as_fd()) {
            if !self.marks_failed {
                self.marks_failed = true;
                log::warn!(
                    "notify: cannot watch every directory of the share ({e}); changes in the \
                     unwatched ones are not sent (raise fs.fanotify.max_user_marks)"
                );
            }
        }
    }

    /// Marks and adds the subdirectories of directory `id` (open as `fd`,
    /// marked already), depth first, one open descriptor per level.
    fn walk(&mut self, id: NodeId, fd: OwnedFd) {
        struct Level {
            id: NodeId,
            fd: OwnedFd,
            names: Vec<Box<[u8]>>,
        }
        let names = dirs::subdirectories(fd.as_fd()).unwrap_or_default();
        let mut stack = vec![Level { id, fd, names }];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            let Ok(child) = dirs::open_dir_beneath(top.fd.as_fd(), &name) else {
                continue;
            };
            let parent = top.id;
            if dirs::key_of(child.as_fd(), &mut self.key_buf).is_err() {
                continue;
            }
            if let Some(known) = self.tree.lookup(&self.key_buf) {
                // Already known (moved here, or reached twice): re-link only.
                self.tree.relink(known, parent, &name);
                continue;
            }
            let key = self.key_buf.clone();
            // Marked before listed: nothing created in between is missed.
            self.mark(&child);
            let Some(child_id) = self.tree.insert(parent, &name, &key) else {
                continue;
            };
            let names = dirs::subdirectories(child.as_fd()).unwrap_or_default();
            stack.push(Level {
                id: child_id,
                fd: child,
                names,
            });
        }
    }
}

fn poll_fd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
