//! Changes waiting to be sent: one entry per path, its flags merged, sent
//! once it is [`COALESCE`] old — an editor's save (create, write, rename
//! over) becomes one entry per name. At most `limit` paths wait: the next
//! distinct path turns every waiting one into a single RESCAN of their
//! deepest common directory, so memory stays bounded whatever the host
//! does and however slow (or absent) the guest helper is.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use airlock_notify::Flags;

/// How long a change waits for more changes to the same path.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Default for the number of distinct paths that may wait.
pub const DEFAULT_LIMIT: usize = 1024;

/// Most RESCANs that may wait; more are merged into their common directory.
const MAX_RESCANS: usize = 16;

#[derive(Debug)]
struct Entry {
    path: Box<[u8]>,
    flags: Flags,
    since: Instant,
    /// False once folded into a RESCAN (left in place, skipped when popped).
    live: bool,
}

/// The waiting changes, oldest first.
#[derive(Debug)]
pub struct Pending {
    entries: VecDeque<Entry>,
    /// Path → position counter of its live entry.
    index: HashMap<Box<[u8]>, u64>,
    /// Position counter of `entries[0]`.
    base: u64,
    /// Directories with a RESCAN waiting.
    rescans: Vec<Box<[u8]>>,
    limit: usize,
    /// RESCANs made because the limit was reached.
    overflows: u64,
}

/// Whether `path` is `dir` or below it (`dir` empty: the root).
fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// The directory holding `path` (empty for the root's entries).
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => &path[..at],
        None => b"",
    }
}

/// The deepest directory both `a` and `b` are under.
fn common_dir<'a>(a: &'a [u8], b: &[u8]) -> &'a [u8] {
    let mut end = 0;
    let mut i = 0;
    while i < a.len() && i < b.len() && a[i] == b[i] {
        i += 1;
        if (i == a.len() || a[i] == b'/') && (i == b.len() || b[i] == b'/') {
            end = i;
        }
    }
    &a[..end]
}

impl Pending {
    /// An empty queue holding at most `limit` distinct paths.
    pub fn new(limit: usize) -> Pending {
        Pending {
            entries: VecDeque::new(),
            index: HashMap::new(),
            base: 0,
            rescans: Vec::new(),
            limit: limit.max(1),
            overflows: 0,
        }
    }

    /// Paths waiting (RESCANs included).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// RESCANs the limit has forced so far.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Drops everything (a new guest).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.rescans.clear();
    }

    /// Records that `path` changed as `flags` say.
    pub fn add(&mut self, path: &[u8], flags: Flags, now: Instant) {
        if self.rescans.iter().any(|dir| is_under(path, dir)) {
            return;
        }
        if flags.contains(Flags::RESCAN) {
            self.add_rescan(path, now);
            return;
        }
        if let Some(&pos) = self.index.get(path) {
            if let Some(e) = self.entries.get_mut((pos - self.base) as usize) {
                e.flags |= flags;
            }
            return;
        }
        if self.index.len() >= self.limit {
            self.overflows += 1;
            let dir = self.index.keys().fold(parent(path).to_vec(), |acc, p| {
                common_dir(&acc, parent(p)).to_vec()
            });
            self.add_rescan(&dir, now);
            return;
        }
        self.push(path, flags, now);
    }

    fn push(&mut self, path: &[u8], flags: Flags, now: Instant) {
        let pos = self.base + self.entries.len() as u64;
        self.entries.push_back(Entry {
            path: path.into(),
            flags,
            since: now,
            live: true,
        });
        self.index.insert(path.into(), pos);
    }

    /// Replaces every waiting entry at or under `dir` by one RESCAN of it.
    fn add_rescan(&mut self, dir: &[u8], now: Instant) {
        let base = self.base;
        let entries = &mut self.entries;
        self.index.retain(|path, pos| {
            if is_under(path, dir) {
                if let Some(e) = entries.get_mut((*pos - base) as usize) {
                    e.live = false;
                }
                false
            } else {
                true
            }
        });
        self.rescans.retain(|r| !is_under(r, dir));
        self.compact();
        if self.rescans.len() >= MAX_RESCANS {
            let merged = self
                .rescans
                .iter()
                .fold(dir.to_vec(), |acc, r| common_dir(&acc, r).to_vec());
            self.add_rescan(&merged, now);
            return;
        }
        self.rescans.push(dir.into());
        self.push(dir, Flags::RESCAN, now);
    }

    /// Drops the entries folded into RESCANs once they outnumber the live
    /// ones: nothing may pile up while no helper takes entries.
    fn compact(&mut self) {
        if self.entries.len() <= 2 * self.index.len() + 64 {
            return;
        }
        self.entries.retain(|e| e.live);
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(pos) = self.index.get_mut(&e.path) {
                *pos = self.base + i as u64;
            }
        }
    }

    /// When the oldest entry becomes ready, if any waits.
    pub fn next_ready(&mut self) -> Option<Instant> {
        self.skip_dead();
        self.entries.front().map(|e| e.since + COALESCE)
    }

    fn skip_dead(&mut self) {
        while self.entries.front().is_some_and(|e| !e.live) {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// The oldest entry if it has waited [`COALESCE`].
    pub fn pop_ready(&mut self, now: Instant) -> Option<(Box<[u8]>, Flags)> {
        self.skip_dead();
        let front = self.entries.front()?;
        if now < front.since + COALESCE {
            return None;
        }
        let e = self.entries.pop_front()?;
        self.base += 1;
        self.index.remove(&e.path);
        if e.flags.contains(Flags::RESCAN) {
            self.rescans.retain(|r| r[..] != e.path[..]);
        }
        Some((e.path, e.flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Pending, now: Instant) -> Vec<(String, Flags)> {
        std::iter::from_fn(|| q.pop_ready(now))
            .map(|(p, f)| (String::from_utf8(p.into()).unwrap(), f))
            .collect()
    }

    #[test]
    fn changes_to_one_path_merge_and_wait_their_window() {
        let t0 = Instant::now();
        let mut q = Pending::new(8);
        q.add(b"a/f", Flags::CREATED, t0);
        q.add(b"b", Flags::ATTRIB, t0 + Duration::from_millis(10));
        q.add(b"a/f", Flags::CHANGED, t0 + Duration::from_millis(20));
        assert_eq!(q.next_ready(), Some(t0 + COALESCE));
        assert!(q
            .pop_ready(t0 + COALESCE - Duration::from_millis(1))
            .is_none());
        assert_eq!(
            drain(&mut q, t0 + COALESCE),
            vec![("a/f".into(), Flags::CREATED | Flags::CHANGED)]
        );
        assert_eq!(
            drain(&mut q, t0 + Duration::from_secs(1)),
            vec![("b".into(), Flags::ATTRIB)]
        );
        assert!(q.is_empty());
        // After it was sent, a new change is a new entry.
        q.add(b"a/f", Flags::CHANGED, t0 + Duration::from_secs(2));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_full_queue_becomes_one_rescan_of_the_common_directory() {
        let t0 = Instant::now();
        let mut q = Pending::new(3);
        q.add(b"src/a/x", Flags::CHANGED, t0);
        q.add(b"src/a/y", Flags::CHANGED, t0);
        q.add(b"src/b/z", Flags::CHANGED, t0);
        q.add(b"src/c", Flags::CREATED, t0);
        assert_eq!(q.overflows(), 1);
        // Later changes under the rescanned directory are covered.
        q.add(b"src/a/x", Flags::ATTRIB, t0);
        q.add(b"top", Flags::CHANGED, t0);
        assert_eq!(
            drain(&mut q, t0 + COALESCE),
            vec![
                ("src".into(), Flags::RESCAN),
                ("top".into(), Flags::CHANGED)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn memory_stays_bounded_in_a_burst() {
        let t0 = Instant::now();
        let mut q = Pending::new(100);
        for i in 0..10_000 {
            let path = format!("d{}/f{i}", i % 37);
            q.add(path.as_bytes(), Flags::CHANGED, t0);
            assert!(q.len() <= 100 + MAX_RESCANS);
        }
        let out = drain(&mut q, t0 + COALESCE);
        assert_eq!(out, vec![("".into(), Flags::RESCAN)]);
    }

    #[test]
    fn folded_entries_do_not_pile_up_while_nothing_is_taken() {
        let t0 = Instant::now();
        let mut q = Pending::new(10);
        // Each round overflows one level higher than the last (a/a/…/b/x*),
        // so each fold takes the previous RESCAN and ten entries with it.
        for depth in (1..200).rev() {
            let dir = vec!["a"; depth].join("/");
            for i in 0..12 {
                q.add(format!("{dir}/b/x{i}").as_bytes(), Flags::CHANGED, t0);
            }
            assert!(
                q.entries.len() <= 2 * q.len() + 64 + 12,
                "{}",
                q.entries.len()
            );
        }
        // Order and contents survive compaction.
        let out = drain(&mut q, t0 + COALESCE);
        assert!(!out.is_empty() && out.len() <= 10 + MAX_RESCANS);
        assert!(q.is_empty() && q.entries.is_empty());
    }

    #[test]
    fn rescans_absorb_what_they_cover_and_stay_few() {
        let t0 = Instant::now();
        let mut q = Pending::new(1000);
        q.add(b"a/b/c", Flags::CHANGED, t0);
        q.add(b"a/bc", Flags::CHANGED, t0);
        q.add(b"a/b", Flags::RESCAN, t0);
        q.add(b"a/b/d", Flags::CHANGED, t0);
        assert_eq!(
            drain(&mut q, t0 + COALESCE),
            vec![
                ("a/bc".into(), Flags::CHANGED),
                ("a/b".into(), Flags::RESCAN)
            ]
        );
        for i in 0..40 {
            q.add(format!("r/{i}").as_bytes(), Flags::RESCAN, t0);
            assert!(q.len() <= MAX_RESCANS);
        }
        assert_eq!(
            drain(&mut q, t0 + COALESCE),
            vec![("r".into(), Flags::RESCAN)]
        );
    }

    #[test]
    fn common_directory_respects_component_boundaries() {
        assert_eq!(common_dir(b"src/ab", b"src/ac"), b"src");
        assert_eq!(common_dir(b"src", b"src/x"), b"src");
        assert_eq!(common_dir(b"abc", b"abd"), b"");
        assert_eq!(common_dir(b"", b"x"), b"");
        assert!(is_under(b"a/b", b"a") && !is_under(b"ab", b"a") && is_under(b"x", b""));
    }
}
