//! `--seccomp kill|log|none`: a per-daemon system call allow-list.
//!
//! Each daemon keeps its list as data, `<crate>/seccomp.allow`: one system
//! call name per line, `#` comments saying why a group is there. The list is
//! compiled with seccompiler into a BPF filter and installed on every thread
//! (`SECCOMP_FILTER_FLAG_TSYNC`) once the daemon is set up; threads spawned
//! later inherit it. A call not on the list kills the process (`kill`) or is
//! allowed and logged by the kernel's audit (`log`, for finding what a new
//! code path needs: `dmesg | grep type=1326`).

use std::collections::BTreeSet;
use std::io::Cursor;

use seccompiler::{BpfMap, TargetArch};

/// `--seccomp`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// A call outside the allow-list kills the daemon (SIGSYS, core dump).
    #[default]
    Kill,
    /// A call outside the allow-list is allowed and logged by the kernel
    /// (audit type 1326 in dmesg or the audit log).
    Log,
    /// No filter.
    None,
}

/// The `--seccomp` option every daemon takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SeccompArgs {
    /// System call filter: "kill" ends the daemon on any system call outside
    /// its allow-list, "log" only logs such calls (kernel audit, see dmesg),
    /// "none" installs no filter [default: kill].
    #[arg(long, value_enum, value_name = "MODE", env = "AIRLOCK_SECCOMP")]
    pub seccomp: Option<SeccompMode>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp allow-list, line {line}: {message}")]
    List { line: usize, message: String },
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// The system call names of an allow-list, in order, checked for duplicates.
pub fn parse_list(text: &str) -> Result<Vec<String>, SeccompError> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| SeccompError::List {
            line: i + 1,
            message,
        };
        if !line
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad(format!("{line:?} is not a system call name")));
        }
        if !seen.insert(line.to_owned()) {
            return Err(bad(format!("{line} is listed twice")));
        }
        names.push(line.to_owned());
    }
    Ok(names)
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

/// Compiles `list` into the filter `mode` asks for; `None` for `--seccomp none`.
pub fn compile(list: &str, mode: SeccompMode) -> Result<Option<BpfMap>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Kill => "kill_process",
        SeccompMode::Log => "log",
        SeccompMode::None => return Ok(None),
    };
    let rules: Vec<serde_json::Value> = parse_list(list)?
        .into_iter()
        .map(|name| serde_json::json!({ "syscall": name }))
        .collect();
    let json = serde_json::json!({
        "main": {
            "mismatch_action": mismatch,
            "match_action": "allow",
            "filter": rules,
        }
    });
    let bytes = serde_json::to_vec(&json).map_err(|e| SeccompError::Compile(e.to_string()))?;
    seccompiler::compile_from_json(Cursor::new(bytes), arch())
        .map(Some)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

/// Whether `list` names only system calls of this architecture and makes
/// a filter (each daemon's allow-list is checked with this in its tests).
pub fn check_list(list: &str) -> Result<(), SeccompError> {
    compile(list, SeccompMode::Kill)?
        .map(|_| ())
        .ok_or_else(|| SeccompError::Compile("no filter".into()))
}

/// Installs the filter for `mode` from `list` on every thread of the process.
pub fn apply(list: &str, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(map) = compile(list, mode)? else {
        log::info!("seccomp: no filter (--seccomp none)");
        return Ok(());
    };
    let program = map
        .get("main")
        .ok_or_else(|| SeccompError::Compile("no main filter".into()))?;
    seccompiler::apply_filter_all_threads(program)
        .map_err(|e| SeccompError::Install(e.to_string()))?;
    log::info!(
        "seccomp: {} system calls allowed, others {}",
        parse_list(list)?.len(),
        if mode == SeccompMode::Kill {
            "kill the daemon"
        } else {
            "are logged"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_with_comments_and_refuse_junk() {
        let names = parse_list("# io\nread\nwrite # out\n\n  close\n").unwrap();
        assert_eq!(names, ["read", "write", "close"]);
        assert!(matches!(
            parse_list("read\nread\n"),
            Err(SeccompError::List { line: 2, .. })
        ));
        assert!(matches!(
            parse_list("read(2)\n"),
            Err(SeccompError::List { line: 1, .. })
        ));
    }

    #[test]
    fn unknown_names_fail_compilation() {
        assert!(compile("read\nnot_a_syscall\n", SeccompMode::Kill).is_err());
        assert!(compile("read\n", SeccompMode::Kill).unwrap().is_some());
        assert!(compile("read\n", SeccompMode::None).unwrap().is_none());
    }

    /// Installs a real filter in a forked child: an allowed call works, a
    /// call off the list kills the child with SIGSYS.
    #[test]
    fn kill_mode_kills_on_a_call_off_the_list() {
        let list = "exit_group\nexit\nwrite\ngetpid\n";
        let map = compile(list, SeccompMode::Kill).unwrap().unwrap();
        let program = map["main"].clone();
        // SAFETY: the child only makes raw system calls and exits; it touches
        // no lock another thread of the test harness could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match seccompiler::apply_filter(&program) {
                // SAFETY: plain system calls; getppid is not on the list.
                Ok(()) => unsafe {
                    libc::getpid();
                    libc::getppid();
                    3
                },
                Err(_) => 4,
            };
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `status` is valid for writes; `pid` is our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
