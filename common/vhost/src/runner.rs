//! The vhost-user daemon runner every Airlock device daemon uses.
//!
//! It serves one frontend (QEMU) at a time on the listening socket. Each
//! connection gets a fresh backend session, fresh vring workers and fresh
//! guest memory; when the frontend goes away (QEMU quit or was killed) all of
//! that is dropped — threads joined, guest memory unmapped, fds closed — and
//! the daemon waits for the next frontend on the same socket, unless
//! `--exit-on-disconnect` asked it to exit like virtiofsd does.

use std::error::Error;
use std::io;
use std::sync::Arc;

use vhost::vhost_user::{Error as VhostUserError, Listener};
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
            let _ = airlock_common::sandbox::remove_socket(&path);
        });
    }
    let mut vu_listener =
        Listener::from(listener.listener.try_clone().map_err(RunError::Listener)?);
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

        // Blocks until a frontend connects, then serves it on a thread.
        daemon
            .start(&mut vu_listener)
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
