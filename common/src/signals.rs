//! Signal handling: SIGTERM/SIGINT end the daemon promptly with status 0;
//! SIGHUP calls the daemon's reload hook if it has one.
//!
//! The signals are blocked in every thread (call [`install`] before any
//! thread is spawned) and taken synchronously by one thread with
//! `sigwait(2)`, so no code runs in signal-handler context.

use std::io;
use std::sync::Mutex;

type Hook = Box<dyn FnOnce() + Send>;
type Reload = Box<dyn Fn() + Send>;

static AT_EXIT: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
static ON_HUP: Mutex<Option<Reload>> = Mutex::new(None);

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; a zeroed sigset_t
    // is valid storage for it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and every thread spawned
/// after) and starts the thread that waits for them.
pub fn install() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is valid for writes.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGHUP {
                match ON_HUP.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    Some(reload) => reload(),
                    None => log::info!("SIGHUP ignored: nothing to reload"),
                }
                continue;
            }
            let name = if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            log::info!("{name} received, exiting");
            exit(0);
        })?;
    Ok(())
}

/// Registers work to do before the process exits on a signal (or through
/// [`exit`]), such as removing the socket file the daemon created.
pub fn at_exit(hook: impl FnOnce() + Send + 'static) {
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(hook));
}

/// Sets what SIGHUP does (reload configuration).
pub fn on_hup(reload: impl Fn() + Send + 'static) {
    *ON_HUP.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(reload));
}

/// Runs the [`at_exit`] hooks and exits the process with `code`.
pub fn exit(code: i32) -> ! {
    let hooks = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks.into_iter().rev() {
        hook();
    }
    std::process::exit(code)
}
