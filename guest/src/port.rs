//! The virtio-serial port: found by name under `/sys/class/virtio-ports`
//! (each `vportNpM/name` holds QEMU's `virtserialport,name=…`), opened as
//! `/dev/vportNpM`. Minimal guests have no udev to make the
//! `/dev/virtio-ports/NAME` links, so the helper looks for itself.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the kernel lists virtio-serial ports.
pub const SYS_PORTS: &str = "/sys/class/virtio-ports";

/// The device of the port named `name` listed under `sys` (normally
/// [`SYS_PORTS`]), as `/dev/<entry>`; `None` while there is none (the
/// module not loaded yet, or no such port).
pub fn find(sys: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(sys) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(text) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if text.trim_end_matches('\n') == name {
            found.push(Path::new("/dev").join(entry.file_name()));
        }
    }
    // Deterministic if a name is (wrongly) given to two ports.
    found.sort();
    Ok(found.into_iter().next())
}

/// Opens the port for reading and writing, non-blocking. The kernel lets
/// one process at a time have a port open (`EBUSY` otherwise).
pub fn open(dev: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_its_name() {
        let sys = tempfile::tempdir().unwrap();
        for (dir, name) in [
            ("vport0p0", "org.qemu.guest_agent.0\n"),
            ("vport1p2", "org.airlock.notify\n"),
            ("vport1p1", ""),
        ] {
            std::fs::create_dir(sys.path().join(dir)).unwrap();
            std::fs::write(sys.path().join(dir).join("name"), name).unwrap();
        }
        std::fs::create_dir(sys.path().join("vport9p9")).unwrap();
        assert_eq!(
            find(sys.path(), "org.airlock.notify").unwrap(),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find(sys.path(), "org.airlock.notify.x").unwrap(), None);
        assert_eq!(
            find(&sys.path().join("absent"), "org.airlock.notify").unwrap(),
            None
        );
    }
}
