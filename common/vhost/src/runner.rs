//! The vhost-user daemon runner every Airlock device daemon uses.
//!
//! It serves one frontend (QEMU) at a time on the listening socket. Each
//! connection gets a fresh backend session, fresh vring workers and fresh
//! guest memory; when the frontend goes away (QEMU quit or was killed) all of
//! that is dropped — threads joined, guest memory unmapped, fds closed — and
//! the daemon waits for the next frontend on the same socket, unless
//! `--exit-on-disconnect` asked it to exit like virtiofsd does.
//!
//! A connection is only served once its first message has arrived whole
//! (QEMU sends one at once): a client that connects and sends nothing, or
//! part of a header, is dropped after [`HANDSHAKE_TIMEOUT`] instead of
//! holding back the next frontend for as long as it stays.

use std::error::Error;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use airlock_common::listen::BoundListener;

/// Guest memory as the daemons see it.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// The vring type every Airlock backend uses.
pub type Vring = VringRwLock<GuestMemory>;
/// A vring worker (epoll loop thread) of a session `S`.
pub type Worker<S> = VringEpollHandler<Arc<S>>;

/// One frontend connection's worth of device state.
pub trait Session: VhostUserBackend<Bitmap = (), Vring = Vring> + Sized + 'static {
    /// Called once the session's vring workers exist, before the frontend
    /// connects: a backend registers its own fds (host sockets, timers) here.
    fn attach(self: &Arc<Self>, _workers: &[Arc<Worker<Self>>]) -> io::Result<()> {
        Ok(())
    }

    /// Called after the frontend disconnected. Drop every reference to the
    /// workers and release what the guest held (flows, open files).
    fn detach(&self) {}
}

/// How long a new connection has to send its first complete message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// vhost-user message header: request, flags, payload size (u32 each).
const HEADER_LEN: usize = 12;
/// Largest first message waited for whole; a header announcing more is
/// handed to the message parser at once (which refuses it).
const MAX_FIRST_MESSAGE: usize = HEADER_LEN + 4096;
/// How often a partly received first message is looked at again.
const PEEK_INTERVAL: Duration = Duration::from_millis(10);

/// Exit events for the vring worker threads: `exit_event()` must hand each
/// worker one, or the workers can never be stopped.
pub fn exit_event() -> Option<(EventConsumer, EventNotifier)> {
    new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
}

/// `--exit-on-disconnect`, shared by the vhost-user daemons.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LifecycleArgs {
    /// Exit (status 0) when the frontend disconnects, as virtiofsd does,
    /// instead of waiting for the next frontend on the same socket.
    #[arg(long)]
    pub exit_on_disconnect: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot prepare the listening socket")]
    Listener(#[source] io::Error),
    #[error("cannot create the device session")]
    Session(#[source] Box<dyn Error + Send + Sync>),
    #[error("cannot attach the device to its vring workers")]
    Attach(#[source] io::Error),
    #[error("vhost-user daemon failed: {0}")]
    Daemon(String),
}

/// How a session ended.
fn describe_end(res: &vhost_user_backend::Result<()>) -> Option<String> {
    use vhost_user_backend::Error as E;
    match res {
        Ok(()) => None,
        Err(E::HandleRequest(VhostUserError::Disconnected))
        | Err(E::HandleRequest(VhostUserError::PartialMessage))
        | Err(E::HandleRequest(VhostUserError::SocketBroken(_))) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Serves frontends on `listener` until a signal ends the process (or, with
/// `exit_on_disconnect`, until the first frontend goes away).
///
/// `new_session` builds the device state for each connection.
pub fn run<S, F, E>(
    listener: BoundListener,
    name: &str,
    exit_on_disconnect: bool,
    mut new_session: F,
) -> Result<(), RunError>
where
    S: Session,
    F: FnMut() -> Result<S, E>,
    E: Error + Send + Sync + 'static,
{
    if let Some(path) = listener.created_path().map(|p| p.to_owned()) {
        airlock_common::signals::at_exit(move || {
            if let Err(e) = airlock_common::sandbox::remove_socket(&path) {
                log::warn!("cannot remove socket {}: {e}", path.display());
            }
        });
    }
    log::info!("listening for a vhost-user frontend on {}", listener.source);
    airlock_common::notify::ready();

    loop {
        let session = Arc::new(new_session().map_err(|e| RunError::Session(Box::new(e)))?);
        let mut daemon = VhostUserDaemon::new(
            name.to_owned(),
            session.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| RunError::Daemon(e.to_string()))?;
        session
            .attach(&daemon.get_epoll_handlers())
            .map_err(RunError::Attach)?;
        log::info!("ready for a frontend on {}", listener.source);

        // Blocks until a frontend connects and speaks, then serves it on a
        // thread.
        let stream = accept_frontend(&listener)?;
        daemon
            .start_stream(stream)
            .map_err(|e| RunError::Daemon(e.to_string()))?;
        log::info!("frontend connected");
        let ended = daemon.wait();
        session.detach();
        // Dropping the daemon stops and joins the vring workers and unmaps
        // the guest's memory.
        drop(daemon);
        drop(session);
        match describe_end(&ended) {
            None => log::info!("frontend disconnected"),
            Some(e) => log::warn!("frontend session ended with an error: {e}"),
        }
        if exit_on_disconnect {
            log::info!("exiting after disconnect (--exit-on-disconnect)");
            return Ok(());
        }
    }
}

/// The next connection that sends a complete first message (or closes its
/// side, which the message parser then reports). Others are dropped after
/// [`HANDSHAKE_TIMEOUT`] with a rate-limited log line.
fn accept_frontend(listener: &BoundListener) -> Result<UnixStream, RunError> {
    loop {
        let stream = match listener.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            // An inherited socket may be non-blocking: wait for a client.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pollfd = libc::pollfd {
                    fd: listener.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pollfd` is one valid entry for the duration of the call.
                unsafe { libc::poll(&mut pollfd, 1, -1) };
                continue;
            }
            Err(e) => return Err(RunError::Listener(e)),
        };
        match first_message(&stream, HANDSHAKE_TIMEOUT) {
            Ok(()) => return Ok(stream),
            Err(why) => airlock_common::ratelimited!(
                log::Level::Warn,
                "dropping a vhost-user connection on {}: {why}",
                listener.source
            ),
        }
    }
}

/// Waits until `stream` holds a whole first message (header and payload,
/// up to [`MAX_FIRST_MESSAGE`]) or its peer shut its side, without
/// consuming anything; `Err` says why it gave up.
fn first_message(stream: &UnixStream, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_FIRST_MESSAGE];
    loop {
        // SAFETY: `buf` is valid for writes of its length; MSG_PEEK leaves
        // the bytes (and any file descriptors) queued for the parser.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let received = match n {
            0 => return Ok(()), // closed: the parser says so
            n if n > 0 => n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("cannot read from it: {e}"));
                }
                0
            }
        };
        if received >= HEADER_LEN {
            let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            // A size beyond any message's is the parser's to refuse, now.
            if size > MAX_FIRST_MESSAGE - HEADER_LEN || received >= HEADER_LEN + size {
                return Ok(());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "no complete message within {}s ({received} bytes received)",
                timeout.as_secs()
            ));
        }
        // Wait for more, or for the peer to shut its side.
        let mut pollfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        let wait = if received == 0 {
            deadline - now
        } else {
            PEEK_INTERVAL.min(deadline - now)
        };
        let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pollfd` is one valid entry for the duration of the call.
        unsafe { libc::poll(&mut pollfd, 1, millis) };
        if pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_first_message_is_waited_for_whole() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let short = Duration::from_millis(200);
        let err = first_message(&server, short).unwrap_err();
        assert!(err.contains("0 bytes received"), "{err}");
        // Half a header, then the rest: a header announcing 8 bytes.
        client.write_all(&[1, 0, 0, 0, 1, 0]).unwrap();
        let err = first_message(&server, short).unwrap_err();
        assert!(err.contains("6 bytes received"), "{err}");
        client.write_all(&[0, 0, 8, 0, 0, 0]).unwrap();
        assert!(first_message(&server, short).is_err(), "payload missing");
        client.write_all(&[0; 8]).unwrap();
        assert_eq!(first_message(&server, short), Ok(()));
        // Nothing was consumed.
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 32];
        let n = std::io::Read::read(&mut &server, &mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 8);
        // A header announcing more than any message holds: the parser's.
        let (mut client, server) = UnixStream::pair().unwrap();
        client
            .write_all(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0])
            .unwrap();
        assert_eq!(first_message(&server, Duration::from_secs(30)), Ok(()));
        // A client that shuts its side early is handed to the parser.
        let (client, server) = UnixStream::pair().unwrap();
        (&client).write_all(&[1, 2, 3]).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(first_message(&server, Duration::from_secs(30)), Ok(()));
    }
}
