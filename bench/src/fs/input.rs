//! The source tree the untar/find/rm benchmark unpacks: Debian's
//! `linux-libc-dev` (the kernel's user-space headers), fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` and re-packed as a plain
//! tar (no compression: the guest's CPU under TCG would dominate). Cached
//! in `target/bench-input`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package unpacked.
const PACKAGE: &str = "linux-libc-dev";

/// Errors preparing the tarball.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// Its stderr.
        output: String,
    },
}

/// The prepared input.
#[derive(Debug, Clone)]
pub struct Tarball {
    /// Directory holding `tree.tar` (shared read-only with the guest).
    pub dir: PathBuf,
    /// What it is, for the report.
    pub description: String,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output().map_err(|e| Error::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Returns the cached tarball, making it first if needed.
pub fn source_tarball(workspace: &Path) -> Result<Tarball, Error> {
    let dir = workspace.join("target").join("bench-input");
    let tar = dir.join("tree.tar");
    let about = dir.join("tree.txt");
    if tar.is_file() {
        if let Ok(description) = fs::read_to_string(&about) {
            return Ok(Tarball {
                dir,
                description: description.trim().to_string(),
            });
        }
    }
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io_err("create", &work))?;
    let mut apt = Command::new("apt-get");
    apt.current_dir(&work).args(["-q", "download"]);
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Otherwise apt warns that _apt cannot write into the directory.
        apt.args(["-o", "APT::Sandbox::User=root"]);
    }
    run(apt.arg(PACKAGE))?;
    let deb = fs::read_dir(&work)
        .map_err(io_err("list", &work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| Error::Command {
            command: format!("apt-get download {PACKAGE}"),
            output: "no .deb downloaded".to_string(),
        })?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let version = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version"))?;
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg("."))?;
    let files = run(Command::new("find").arg(&tree).args(["-type", "f"]))?
        .lines()
        .count();
    let size = fs::metadata(&tar).map_err(io_err("stat", &tar))?.len();
    let description = format!(
        "Debian's `{PACKAGE}` {} ({files} files, {:.1} MiB tar)",
        version.trim(),
        size as f64 / f64::from(1u32 << 20)
    );
    fs::write(&about, &description).map_err(io_err("write", &about))?;
    let _ = fs::remove_dir_all(&work);
    Ok(Tarball { dir, description })
}
