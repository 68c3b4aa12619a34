//! `scripts/bench notify`: what airlock-fs' `--notify-socket` costs, and
//! the measurement behind choosing fanotify over inotify. No guest: the
//! harness plays the guest helper on the notify socket (HELLO, then an ACK
//! for every event), so the numbers are the host side's alone.
//!
//! - [`kernel`]: inotify watches vs fanotify marks (FID reporting) on the
//!   same tree: time to watch every directory, kernel memory, and the
//!   reader's CPU and event count for 10 000 appends;
//! - [`watcher`]: airlock-fs with `--notify-socket` on a share of 100 000
//!   files: the initial walk, idle CPU and memory, and a burst of 10 000
//!   changes (CPU until the helper has caught up, peak memory, events
//!   sent), next to airlock-fs without the option.

pub mod kernel;
pub mod watcher;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::results::{Failure, GroupRun};
use crate::vm::Guest;

/// Top directories of the tree.
pub const TOP_DIRS: usize = 100;
/// Leaf directories in each top directory.
pub const LEAF_DIRS_PER_TOP: usize = 100;
/// Files per leaf directory: 100 000 files in all.
pub const FILES_PER_LEAF: usize = 10;
/// Changes in a burst: one append to every 10th file.
pub const BURST: usize = 10_000;

/// Errors of the group.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rig could not be made.
    #[error(transparent)]
    Rig(#[from] crate::vm::Error),
    /// The tree could not be built.
    #[error("cannot build the {0} tree")]
    Tree(PathBuf, #[source] io::Error),
}

/// How to run the group.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions.
    pub reps: u32,
}

/// The tree every measurement uses, made by `sh` (a host program).
fn build_tree(dir: &Path) -> Result<(), Error> {
    let script = format!(
        "t=0; while [ $t -lt {TOP_DIRS} ]; do l=0; while [ $l -lt {LEAF_DIRS_PER_TOP} ]; do \
         d=d$t/s$l; mkdir -p $d; f=0; while [ $f -lt {FILES_PER_LEAF} ]; do : > $d/f$f; \
         f=$((f + 1)); done; l=$((l + 1)); done; t=$((t + 1)); done"
    );
    let status = Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .current_dir(dir)
        .status()
        .map_err(|e| Error::Tree(dir.to_owned(), e))?;
    if !status.success() {
        return Err(Error::Tree(
            dir.to_owned(),
            io::Error::other(format!("sh exited with {status}")),
        ));
    }
    Ok(())
}

/// The files a burst appends to (relative): file 0 of every leaf.
pub fn burst_files() -> Vec<String> {
    let mut files = Vec::with_capacity(BURST);
    for t in 0..TOP_DIRS {
        for l in 0..LEAF_DIRS_PER_TOP {
            files.push(format!("d{t}/s{l}/f0"));
        }
    }
    files
}

/// Appends a line to each of `files` under `dir`, from one `sh` process.
pub fn burst(dir: &Path, files: &[String]) -> io::Result<()> {
    let list = dir.join("..").join("burst.list");
    std::fs::write(&list, files.join("\n") + "\n")?;
    let status = Command::new("sh")
        .arg("-ec")
        .arg("while read -r f; do echo x >> \"$f\"; done < \"$1\"")
        .arg("sh")
        .arg(&list)
        .current_dir(dir)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("burst: sh exited with {status}")));
    }
    Ok(())
}

/// Runs the group.
pub fn run(options: &Options, out: &mut GroupRun) -> Result<(), Error> {
    let rig = Guest::new("bench-notify")?;
    let share = rig.dir().join("share");
    std::fs::create_dir(&share).map_err(|e| Error::Tree(share.clone(), e))?;
    build_tree(&share)?;
    let dirs = 1 + TOP_DIRS + TOP_DIRS * LEAF_DIRS_PER_TOP;
    let files = TOP_DIRS * LEAF_DIRS_PER_TOP * FILES_PER_LEAF;
    out.setup.push(format!(
        "A tree of {files} empty files in {dirs} directories ({TOP_DIRS} × {LEAF_DIRS_PER_TOP} \
         leaf directories of {FILES_PER_LEAF} files) on the file system of /tmp. A burst is \
         {BURST} appends (`echo x >> f`, one `sh` process), one to a file of every leaf \
         directory: no two changes share a directory, the hardest case for coalescing."
    ));
    out.setup.push(
        "Kernel memory is the change of SUnreclaim in /proc/meminfo across adding the watches \
         (system-wide: other activity on the machine shows in it)."
            .into(),
    );
    kernel::run(options, &share, out);
    if let Err(e) = watcher::run(options, rig, &share, out) {
        out.failures.push(Failure {
            table: watcher::TABLE.into(),
            peer: String::new(),
            what: airlock_common::report::chain(&e),
        });
    }
    Ok(())
}
