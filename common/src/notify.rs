//! systemd readiness notification (`sd_notify(3)`), without libsystemd.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;

/// The socket [`connect_early`] opened, for daemons that leave the host's
/// file system and network namespace before they are ready.
static EARLY: Mutex<Option<UnixDatagram>> = Mutex::new(None);

fn notify_addr() -> io::Result<Option<SocketAddr>> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(None);
    };
    let path = path.to_string_lossy().into_owned();
    Ok(Some(if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else {
        SocketAddr::from_pathname(&path)?
    }))
}

/// Connects to `$NOTIFY_SOCKET` now, so a later [`notify`] still reaches it
/// from inside a sandbox (after pivot_root, or in a new network namespace
/// where an abstract socket name means something else).
pub fn connect_early() -> io::Result<()> {
    let Some(addr) = notify_addr()? else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    sock.connect_addr(&addr)?;
    *EARLY.lock().unwrap_or_else(|e| e.into_inner()) = Some(sock);
    Ok(())
}

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET` if it is set.
/// Returns whether a notification was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    if let Some(sock) = EARLY.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        sock.send(state.as_bytes())?;
        return Ok(true);
    }
    let Some(addr) = notify_addr()? else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Tells the service manager the daemon is ready, logging (not failing) if
/// the notification socket cannot be reached.
pub fn ready() {
    match notify("READY=1") {
        Ok(true) => log::debug!("sent READY=1 to $NOTIFY_SOCKET"),
        Ok(false) => {}
        Err(e) => log::warn!("cannot notify the service manager ($NOTIFY_SOCKET): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        // The test owns this process's environment for NOTIFY_SOCKET only.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1").unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify("READY=1").unwrap());
    }
}
