//! The gateway's own event sources, multiplexed into two fds the vring
//! worker watches: an epoll set of host sockets (tokens name the flow and
//! which of its sockets fired) and a timerfd armed for the earliest deadline
//! of any flow.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Names a flow slot across reuse: a slot index plus a generation, so an
/// event or timer for a closed flow never reaches the slot's next tenant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlowId {
    pub slot: u32,
    pub generation: u32,
}

/// Which socket of a flow an event is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The flow's main host socket.
    Host,
    /// A second socket (the upstream resolver of a DNS-over-TCP flow).
    Upstream,
    /// A listener (published port) rather than a flow.
    Listener,
}

impl Source {
    fn bits(self) -> u64 {
        match self {
            Source::Host => 0,
            Source::Upstream => 1,
            Source::Listener => 2,
        }
    }

    fn from_bits(b: u64) -> Option<Source> {
        match b {
            0 => Some(Source::Host),
            1 => Some(Source::Upstream),
            2 => Some(Source::Listener),
            _ => None,
        }
    }
}

/// Epoll token layout: generation (32 bits) | slot (24 bits) | source (8 bits).
pub(crate) fn token(id: FlowId, src: Source) -> u64 {
    (u64::from(id.generation) << 32) | (u64::from(id.slot & 0x00ff_ffff) << 8) | src.bits()
}

pub(crate) fn untoken(t: u64) -> Option<(FlowId, Source)> {
    let src = Source::from_bits(t & 0xff)?;
    Some((
        FlowId {
            slot: ((t >> 8) & 0x00ff_ffff) as u32,
            generation: (t >> 32) as u32,
        },
        src,
    ))
}

/// Largest slot index a token can carry.
pub(crate) const MAX_SLOTS: usize = 0x00ff_ffff;

pub(crate) struct Poller {
    epoll: Epoll,
    timer: OwnedFd,
    heap: BinaryHeap<Reverse<(Instant, FlowId)>>,
    armed: Option<Instant>,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: timerfd_create has no memory preconditions; the result is
        // checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            epoll: Epoll::new()?,
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            timer: unsafe { OwnedFd::from_raw_fd(fd) },
            heap: BinaryHeap::new(),
            armed: None,
        })
    }

    pub(crate) fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub(crate) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    pub(crate) fn add(
        &self,
        fd: RawFd,
        events: EventSet,
        id: FlowId,
        src: Source,
    ) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, token(id, src)),
        )
    }

    pub(crate) fn modify(
        &self,
        fd: RawFd,
        events: EventSet,
        id: FlowId,
        src: Source,
    ) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, token(id, src)),
        )
    }

    pub(crate) fn remove(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Ready host sockets, without blocking: one batch of at most 128. The
    /// set is level-triggered, so sockets left ready (not read yet) show up
    /// again on the next call; reading more batches here would return the
    /// same sockets forever.
    pub(crate) fn ready(&self, out: &mut Vec<(FlowId, Source, EventSet)>) -> io::Result<()> {
        let mut events = [EpollEvent::default(); 128];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        for ev in &events[..n] {
            if let Some((id, src)) = untoken(ev.data()) {
                out.push((id, src, EventSet::from_bits_truncate(ev.events)));
            }
        }
        Ok(())
    }

    /// Asks to be woken for `id` at `when`. Older requests for the same flow
    /// stay queued; callers check the flow's current deadline when woken.
    pub(crate) fn schedule(&mut self, when: Instant, id: FlowId) {
        self.heap.push(Reverse((when, id)));
        if self.armed.is_none_or(|a| when < a) {
            self.arm(when);
        }
    }

    /// Pops every request due at `now`.
    pub(crate) fn due(&mut self, now: Instant, out: &mut Vec<FlowId>) {
        self.drain_timerfd();
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if when > now {
                break;
            }
            self.heap.pop();
            out.push(id);
        }
        self.armed = None;
        if let Some(Reverse((when, _))) = self.heap.peek().copied() {
            self.arm(when);
        }
    }

    /// Drops queued requests for flows that no longer want them, when stale
    /// entries outnumber live ones (keeps the heap bounded).
    pub(crate) fn compact(&mut self, live: usize, keep: impl Fn(&FlowId, Instant) -> bool) {
        if self.heap.len() > 64 + 4 * live {
            let old = std::mem::take(&mut self.heap);
            self.heap = old
                .into_iter()
                .filter(|Reverse((when, id))| keep(id, *when))
                .collect();
        }
    }

    #[cfg(test)]
    pub fn pending_timers(&self) -> usize {
        self.heap.len()
    }

    fn drain_timerfd(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte buffer from our own
        // non-blocking timerfd; the result is ignored (EAGAIN is normal).
        unsafe { libc::read(self.timer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    fn arm(&mut self, when: Instant) {
        // Relative arming: the delay from now until `when`.
        let now = Instant::now();
        let delay = when
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: delay.as_secs() as libc::time_t,
                tv_nsec: delay.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.armed = Some(when);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (slot, generation) in [(0, 0), (1, 7), (MAX_SLOTS as u32, u32::MAX)] {
            let id = FlowId { slot, generation };
            for src in [Source::Host, Source::Upstream, Source::Listener] {
                assert_eq!(untoken(token(id, src)), Some((id, src)));
            }
        }
        assert_eq!(untoken(0xff), None);
    }

    #[test]
    fn timers_fire_in_order_and_rearm() {
        let mut p = Poller::new().unwrap();
        let t0 = Instant::now();
        let a = FlowId {
            slot: 1,
            generation: 0,
        };
        let b = FlowId {
            slot: 2,
            generation: 0,
        };
        p.schedule(t0 + Duration::from_millis(30), b);
        p.schedule(t0 + Duration::from_millis(10), a);
        let mut due = Vec::new();
        p.due(t0, &mut due);
        assert!(due.is_empty());
        // The timerfd becomes readable once the first deadline passes.
        let mut fds = [libc::pollfd {
            fd: p.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, bounded timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1);
        p.due(t0 + Duration::from_millis(15), &mut due);
        assert_eq!(due, vec![a]);
        p.due(t0 + Duration::from_millis(40), &mut due);
        assert_eq!(due, vec![a, b]);
        assert_eq!(p.pending_timers(), 0);
    }
}

#[cfg(test)]
mod ready_tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn more_ready_sockets_than_one_batch_come_back_in_rounds() {
        let p = Poller::new().unwrap();
        // 300 readable sockets that nobody reads.
        let pairs: Vec<_> = (0..300)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (i, (a, b)) in pairs.iter().enumerate() {
            use std::io::Write;
            (&*b).write_all(b"x").unwrap();
            p.add(
                a.as_raw_fd(),
                EventSet::IN,
                FlowId {
                    slot: i as u32,
                    generation: 0,
                },
                Source::Host,
            )
            .unwrap();
        }
        let mut out = Vec::new();
        p.ready(&mut out).unwrap();
        assert_eq!(out.len(), 128, "one bounded batch per call");
        out.clear();
        p.ready(&mut out).unwrap();
        assert_eq!(out.len(), 128, "level-triggered: still ready next time");
    }
}
