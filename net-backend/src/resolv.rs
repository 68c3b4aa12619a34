//! Following the host's resolv.conf (`--resolv-conf`, without
//! `--dns-upstream`): its nameservers become the gateway's upstream
//! resolvers, its `search`/`domain` line the search list DHCP hands out
//! (unless `--dns-search`), and both are read again when the file changes
//! and on SIGHUP.
//!
//! Hosts replace the file rather than write it: NetworkManager and
//! systemd-resolved rename a new file over the old one, resolvconf and
//! some VPN clients point a symlink somewhere else. So a thread watches,
//! with inotify, the directory of the path and of every symlink target on
//! the way to the real file, for the names on that way; after each change
//! the chain is followed again and the watches moved. Events are gathered
//! for [`SETTLE`] before the file is read, so a burst of them (a file
//! created, written and closed) is one reload. inotify works in the
//! daemon's private, read-only mount namespace: it watches the same
//! directories the host changes. Mounts the host makes after the daemon
//! started are not seen there, nor is a directory on the way that does not
//! exist yet (SIGHUP reads the file then).
//!
//! A file that cannot be read, or names no nameserver, leaves the last
//! good resolvers in place, and says so once until it is good again.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_netcore::services::dns::ResolvConf;
use airlock_netcore::Shared;

/// How long events are gathered before the file is read.
pub const SETTLE: Duration = Duration::from_millis(100);
/// Symlinks followed from the configured path.
const MAX_LINKS: usize = 16;
/// What a directory watch reports: entries appearing, disappearing,
/// written, and the directory itself going away.
const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// Reads the file and hands what it says to the DNS service.
pub struct Reloader {
    path: PathBuf,
    /// Whether the search list follows the file (no `--dns-search`).
    search: bool,
    shared: Arc<Shared>,
    /// The last reload failed (and said so).
    failing: Mutex<bool>,
}

impl Reloader {
    /// Follows `path` for `shared`'s DNS service, which start-up filled
    /// from it: no resolvers there means the file was unusable then, and
    /// start-up's log said so ("dns upstream none").
    pub fn new(path: PathBuf, search: bool, shared: Arc<Shared>) -> Reloader {
        let failing = shared.dns.view().upstreams().is_empty();
        Reloader {
            path,
            search,
            shared,
            failing: Mutex::new(failing),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. Unreadable, or without a nameserver: the
    /// current resolvers stay (logged once until a reload succeeds).
    pub fn reload(&self) {
        let source = self.path.display().to_string();
        let parsed = std::fs::read_to_string(&self.path).map(|t| ResolvConf::parse(&t, scope_id));
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let problem = match &parsed {
            Err(e) => Some(format!("cannot read {source}: {e}")),
            Ok(r) if r.nameservers.is_empty() => Some(format!("{source} names no nameserver")),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            if !*failing {
                let current: Vec<String> = self
                    .shared
                    .dns
                    .view()
                    .upstreams()
                    .iter()
                    .map(|u| u.addr.to_string())
                    .collect();
                log::warn!(
                    "{problem}; keeping the current DNS resolvers ({})",
                    if current.is_empty() {
                        "none".to_owned()
                    } else {
                        current.join(", ")
                    }
                );
                *failing = true;
            } else {
                log::debug!("{problem} (still unusable)");
            }
            return;
        }
        if std::mem::take(&mut *failing) {
            log::info!("{source} is usable again");
        }
        if let Ok(r) = parsed {
            let search = self.search.then_some(r.search);
            self.shared
                .dns_set_upstreams(&r.nameservers, search, &source);
        }
    }
}

/// The interface index of a named IPv6 zone (`fe80::1%eth0`).
pub fn scope_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The directories to watch and the names in each that lead to the file:
/// the configured path, then each symlink's target in turn.
fn chain(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut out: Vec<(PathBuf, OsString)> = Vec::new();
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
            break;
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_owned()
        };
        let entry = (dir.clone(), name.to_owned());
        if out.contains(&entry) {
            break; // a symlink loop
        }
        out.push(entry);
        match std::fs::read_link(&current) {
            Ok(target) => current = dir.join(target),
            Err(_) => break,
        }
    }
    out
}

/// One inotify instance and the directories it watches.
struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor → its directory and the names that matter there.
    watches: HashMap<i32, (PathBuf, Vec<OsString>)>,
}

impl Watcher {
    fn new() -> io::Result<Watcher> {
        // SAFETY: inotify_init1 takes flags only; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watcher {
            // SAFETY: `fd` is a new descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            watches: HashMap::new(),
        })
    }

    /// Watches the directories of `path`'s chain (and only those).
    fn follow(&mut self, path: &Path) {
        let mut wanted: HashMap<i32, (PathBuf, Vec<OsString>)> = HashMap::new();
        for (dir, name) in chain(path) {
            let Ok(c) = airlock_common::sandbox::cstr(&dir) else {
                continue;
            };
            // SAFETY: the descriptor is our inotify instance and `c` is a
            // NUL-terminated path that outlives the call.
            let wd =
                unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
            if wd < 0 {
                log::debug!(
                    "resolv.conf watch: cannot watch {}: {}",
                    dir.display(),
                    io::Error::last_os_error()
                );
                continue;
            }
            wanted
                .entry(wd)
                .or_insert_with(|| (dir, Vec::new()))
                .1
                .push(name);
        }
        for wd in self.watches.keys() {
            if !wanted.contains_key(wd) {
                // SAFETY: our inotify instance and one of its watches; a
                // watch already gone (its directory removed) fails harmlessly.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *wd) };
            }
        }
        self.watches = wanted;
    }

    /// Waits for events; returns whether one concerned the file.
    fn wait(&self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        // SAFETY: the buffer is valid for writes of its length.
        let len = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if len < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(self.relevant(buf.get(..len as usize).unwrap_or_default()))
    }

    /// Whether any event in `events` (raw `inotify_event`s) is about a name
    /// on the chain, a watched directory going away, or lost events.
    fn relevant(&self, mut events: &[u8]) -> bool {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut any = false;
        while events.len() >= HEADER {
            let int = |at: usize| {
                let b = events.get(at..at + 4).unwrap_or(&[0; 4]);
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            };
            let wd = int(0) as i32;
            let mask = int(4);
            let name_len = int(12) as usize;
            let raw = events.get(HEADER..HEADER + name_len).unwrap_or_default();
            let name = raw.split(|&b| b == 0).next().unwrap_or_default();
            let gone =
                libc::IN_Q_OVERFLOW | libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
            if mask & gone != 0 {
                any = true;
            } else if let Some((_, names)) = self.watches.get(&wd) {
                any |= names.iter().any(|n| n.as_bytes() == name);
            }
            events = events.get(HEADER + name_len..).unwrap_or_default();
        }
        any
    }
}

/// Follows `reloader`'s file from now on: once the watches are in place
/// it is read again (the configuration read it before them, and a change
/// in between is no event), and a thread reloads it whenever it changes.
pub fn watch(reloader: Arc<Reloader>) -> io::Result<()> {
    let mut watcher = Watcher::new()?;
    watcher.follow(reloader.path());
    reloader.reload();
    std::thread::Builder::new()
        .name("resolv-watch".into())
        .spawn(move || loop {
            match watcher.wait() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    log::error!("resolv.conf watch stopped: {e}; SIGHUP still reloads it");
                    return;
                }
            }
            settle(&watcher);
            // Watch the new chain before reading: a change after this is
            // another event.
            watcher.follow(reloader.path());
            reloader.reload();
        })?;
    Ok(())
}

/// Reads events until none came for [`SETTLE`].
fn settle(watcher: &Watcher) {
    let mut pfd = libc::pollfd {
        fd: watcher.fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, SETTLE.as_millis() as i32) };
        if n <= 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: the buffer is valid for writes of its length.
        if unsafe { libc::read(watcher.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolvers(shared: &Shared) -> (Vec<String>, Vec<String>) {
        let view = shared.dns.view();
        let ups = view
            .upstreams()
            .iter()
            .map(|u| u.addr.to_string())
            .collect();
        (ups, view.search().to_vec())
    }

    /// The daemon reads resolv.conf for its configuration before the watch
    /// exists; a file replaced in between must still be followed.
    #[test]
    fn a_change_before_the_watch_is_seen_when_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.0.0.1\nsearch a.test\n").unwrap();
        let shared = crate::config::testing::shared();
        let reloader = Arc::new(Reloader::new(path.clone(), true, shared.clone()));
        // What start-up's configuration read found.
        reloader.reload();
        assert_eq!(
            resolvers(&shared),
            (vec!["10.0.0.1:53".to_owned()], vec!["a.test".to_owned()])
        );
        // Replaced the way NetworkManager does, before the watch.
        let new = dir.path().join("resolv.conf.new");
        std::fs::write(&new, "nameserver 10.0.0.2\nsearch b.test\n").unwrap();
        std::fs::rename(&new, &path).unwrap();
        watch(reloader).unwrap();
        // No event will come for that rename: watch itself read the file.
        assert_eq!(
            resolvers(&shared),
            (vec!["10.0.0.2:53".to_owned()], vec!["b.test".to_owned()])
        );
    }

    #[test]
    fn the_chain_follows_symlinks_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("run")).unwrap();
        std::fs::write(d.join("run/real.conf"), "nameserver 10.0.0.1\n").unwrap();
        std::os::unix::fs::symlink("run/real.conf", d.join("link2")).unwrap();
        std::fs::create_dir(d.join("etc")).unwrap();
        std::os::unix::fs::symlink(d.join("link2"), d.join("etc/resolv.conf")).unwrap();
        let c = chain(&d.join("etc/resolv.conf"));
        let names: Vec<(PathBuf, String)> = c
            .into_iter()
            .map(|(p, n)| (p, n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            names,
            [
                (d.join("etc"), "resolv.conf".to_owned()),
                (d.to_owned(), "link2".to_owned()),
                (d.join("run"), "real.conf".to_owned()),
            ]
        );
        // A loop ends.
        std::os::unix::fs::symlink("b", d.join("a")).unwrap();
        std::os::unix::fs::symlink("a", d.join("b")).unwrap();
        assert_eq!(chain(&d.join("a")).len(), 2);
    }
}
