//! Turning the command line into a checked [`Config`].

use std::path::PathBuf;

use airlock_common::listen::ListenArgs;
use airlock_common::logging::{LogArgs, LogLevel};

use airlock_common::seccomp::SeccompMode;
use clap::ValueEnum;

use crate::args::{Args, Cache, InodeFileHandles, Sandbox};
use crate::idmap::{IdMap, IdMapError, Rule};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no directory to share: give --shared-dir DIR (or -o source=DIR)")]
    NoSharedDir,
    #[error("--shared-dir {0} and -o source={1} disagree")]
    TwoSharedDirs(PathBuf, PathBuf),
    #[error("shared directory {0} is not usable")]
    SharedDir(PathBuf, #[source] std::io::Error),
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("unknown -o option {0:?}")]
    UnknownLegacy(String),
    #[error("-o {key} needs a value ({key}=…)")]
    LegacyNeedsValue { key: String },
    #[error("invalid value {value:?} for -o {key}")]
    LegacyBadValue { key: String, value: String },
    #[error("-o {0} conflicts with --{1}")]
    Conflict(String, &'static str),
    #[error("-o {0}: remote {1} locks are not supported; locks stay local to the guest (drop the option, or use <lock posix='off' flock='off'/> in libvirt)")]
    Locks(String, &'static str),
    #[error("invalid --translate-{0} rules")]
    IdMap(&'static str, #[source] IdMapError),
    #[error("shared directory {0} cannot be listed and searched by this process (uid {1})")]
    Unreadable(PathBuf, u32, #[source] std::io::Error),
    #[error(
        "--thread-pool-size {0} is more than {MAX_THREAD_POOL}: a request queue holds at most \
         {MAX_THREAD_POOL} requests at once, so more threads would only idle"
    )]
    ThreadPool(usize),
}

/// Most `--thread-pool-size` threads: one per request the largest queue
/// can hold.
pub const MAX_THREAD_POOL: usize = crate::device::MAX_QUEUE_SIZE;

/// Whether this process, with its effective ids, may list and search
/// `dir` (read and execute permission), as serving it needs.
fn check_readable(dir: &std::path::Path) -> std::io::Result<()> {
    let path = airlock_common::sandbox::cstr(dir)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call;
    // faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::R_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    airlock_common::sandbox::check(rc)
}

/// Everything airlock-fs needs to run, validated.
#[derive(Debug)]
pub struct Config {
    pub listen: ListenArgs,
    pub shared_dir: PathBuf,
    pub cache: Cache,
    pub readonly: bool,
    pub allow_device_nodes: bool,
    pub xattr: bool,
    pub writeback: bool,
    pub allow_direct_io: bool,
    pub announce_submounts: bool,
    pub inode_file_handles: InodeFileHandles,
    pub uid_rules: Vec<Rule>,
    pub gid_rules: Vec<Rule>,
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    pub thread_pool_size: usize,
    pub rlimit_nofile: Option<u64>,
    pub audit_log: Option<PathBuf>,
    pub notify_socket: Option<PathBuf>,
    pub sandbox: Sandbox,
    pub seccomp: SeccompMode,
    pub exit_on_disconnect: bool,
    pub log: LogArgs,
}

/// What the legacy `-o` list set; `None` means "not mentioned".
#[derive(Debug, Default, PartialEq)]
struct Legacy {
    source: Option<PathBuf>,
    cache: Option<Cache>,
    xattr: Option<bool>,
    writeback: Option<bool>,
    announce_submounts: Option<bool>,
    allow_direct_io: Option<bool>,
    readonly: Option<bool>,
    log_level: Option<LogLevel>,
    sandbox: Option<Sandbox>,
    seccomp: Option<SeccompMode>,
}

/// Splits a `-o` value on commas; `,,` stands for a literal comma (how
/// libvirt escapes commas in paths).
fn split_legacy(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn parse_legacy(options: &[String]) -> Result<Legacy, ConfigError> {
    let mut l = Legacy::default();
    for item in options.iter().flat_map(|o| split_legacy(o)) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (item.clone(), None),
        };
        let need =
            |v: Option<String>| v.ok_or_else(|| ConfigError::LegacyNeedsValue { key: key.clone() });
        let bad = |v: &str| ConfigError::LegacyBadValue {
            key: key.clone(),
            value: v.to_owned(),
        };
        match key.as_str() {
            "source" => l.source = Some(PathBuf::from(need(value)?)),
            "cache" => {
                let v = need(value)?;
                l.cache = Some(match v.as_str() {
                    "none" | "never" => Cache::Never,
                    "metadata" => Cache::Metadata,
                    "auto" => Cache::Auto,
                    "always" => Cache::Always,
                    _ => return Err(bad(&v)),
                });
            }
            "xattr" => l.xattr = Some(true),
            "no_xattr" => l.xattr = Some(false),
            "writeback" => l.writeback = Some(true),
            "no_writeback" => l.writeback = Some(false),
            "announce_submounts" => l.announce_submounts = Some(true),
            "allow_direct_io" => l.allow_direct_io = Some(true),
            "no_allow_direct_io" => l.allow_direct_io = Some(false),
            "readonly" => l.readonly = Some(true),
            // Without remote locks the guest kernel handles locking locally,
            // which is what "no_" asks for.
            "no_flock" | "no_posix_lock" => {}
            "flock" => return Err(ConfigError::Locks(key, "flock")),
            "posix_lock" => return Err(ConfigError::Locks(key, "POSIX")),
            "sandbox" => {
                let v = need(value)?;
                l.sandbox = Some(Sandbox::from_str(&v, false).map_err(|_| bad(&v))?);
            }
            "seccomp" => {
                let v = need(value)?;
                l.seccomp = Some(SeccompMode::from_str(&v, false).map_err(|_| bad(&v))?);
            }
            "log_level" => {
                let v = need(value)?;
                l.log_level = Some(match v.as_str() {
                    "err" | "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => return Err(bad(&v)),
                });
            }
            "debug" => l.log_level = Some(LogLevel::Debug),
            _ => return Err(ConfigError::UnknownLegacy(item)),
        }
    }
    Ok(l)
}

/// Combines a `--flag` with its `-o` spelling: either may turn it on, but
/// `-o no_x` against `--x` is a contradiction.
fn merge_flag(flag: bool, legacy: Option<bool>, name: &'static str) -> Result<bool, ConfigError> {
    match legacy {
        Some(false) if flag => Err(ConfigError::Conflict(
            format!("no_{}", name.replace('-', "_")),
            name,
        )),
        Some(v) => Ok(v || flag),
        None => Ok(flag),
    }
}

/// Combines a `--name VALUE` with its `-o name=VALUE` spelling: both may be
/// given only if they agree.
fn pick<T: PartialEq>(
    flag: Option<T>,
    legacy: Option<T>,
    name: &'static str,
) -> Result<Option<T>, ConfigError> {
    match (flag, legacy) {
        (Some(f), Some(l)) if f != l => Err(ConfigError::Conflict(name.into(), name)),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let legacy = parse_legacy(&a.options)?;
        let shared_dir = match (a.shared_dir, legacy.source) {
            (Some(d), Some(s)) if d != s => return Err(ConfigError::TwoSharedDirs(d, s)),
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => return Err(ConfigError::NoSharedDir),
        };
        let shared_dir = std::fs::canonicalize(&shared_dir)
            .map_err(|e| ConfigError::SharedDir(shared_dir.clone(), e))?;
        if !shared_dir.is_dir() {
            return Err(ConfigError::NotADirectory(shared_dir));
        }
        if let Err(e) = check_readable(&shared_dir) {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            return Err(ConfigError::Unreadable(shared_dir, uid, e));
        }
        if let Some(n) = a.thread_pool_size.filter(|&n| n > MAX_THREAD_POOL) {
            return Err(ConfigError::ThreadPool(n));
        }
        let cache = pick(a.cache, legacy.cache, "cache")?.unwrap_or(Cache::Auto);
        let uid_map = IdMap::new(&a.translate_uid).map_err(|e| ConfigError::IdMap("uid", e))?;
        let gid_map = IdMap::new(&a.translate_gid).map_err(|e| ConfigError::IdMap("gid", e))?;
        let mut log = a.log;
        if let Some(level) = legacy.log_level {
            log.log_level = level;
        }
        if a.debug {
            log.log_level = LogLevel::Debug;
        }
        Ok(Config {
            listen: a.listen,
            shared_dir,
            cache,
            readonly: merge_flag(a.readonly, legacy.readonly, "readonly")?,
            allow_device_nodes: a.allow_device_nodes,
            xattr: merge_flag(a.xattr, legacy.xattr, "xattr")?,
            writeback: merge_flag(a.writeback, legacy.writeback, "writeback")?,
            allow_direct_io: merge_flag(
                a.allow_direct_io,
                legacy.allow_direct_io,
                "allow-direct-io",
            )?,
            announce_submounts: merge_flag(
                a.announce_submounts,
                legacy.announce_submounts,
                "announce-submounts",
            )?,
            inode_file_handles: a.inode_file_handles.unwrap_or(InodeFileHandles::Never),
            uid_rules: a.translate_uid,
            gid_rules: a.translate_gid,
            uid_map,
            gid_map,
            thread_pool_size: a.thread_pool_size.unwrap_or(0),
            rlimit_nofile: a.rlimit_nofile,
            audit_log: a.audit_log,
            notify_socket: a.notify_socket,
            sandbox: pick(a.sandbox, legacy.sandbox, "sandbox")?.unwrap_or(
                if airlock_common::sandbox::is_root() {
                    Sandbox::Namespace
                } else {
                    Sandbox::None
                },
            ),
            seccomp: pick(a.seccomp.seccomp, legacy.seccomp, "seccomp")?.unwrap_or_default(),
            exit_on_disconnect: a.lifecycle.exit_on_disconnect,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["airlock-fs"];
        full.extend_from_slice(args);
        Config::try_from(Args::try_parse_from(full).unwrap())
    }

    #[test]
    fn split_honours_doubled_commas() {
        assert_eq!(
            split_legacy("source=/a,,b,,,cache=none,xattr"),
            vec!["source=/a,b,", "cache=none", "xattr"]
        );
        assert_eq!(split_legacy("source=/x,,"), vec!["source=/x,"]);
        assert!(split_legacy("").is_empty());
    }

    #[test]
    fn legacy_options_map_to_settings() {
        let l = parse_legacy(&[
            "source=/srv,cache=none,xattr,no_flock,no_posix_lock,log_level=debug".into(),
            "writeback,sandbox=none".into(),
        ])
        .unwrap();
        assert_eq!(l.source, Some(PathBuf::from("/srv")));
        assert_eq!(l.cache, Some(Cache::Never));
        assert_eq!(l.xattr, Some(true));
        assert_eq!(l.writeback, Some(true));
        assert_eq!(l.log_level, Some(LogLevel::Debug));
    }

    #[test]
    fn legacy_errors_are_specific() {
        assert!(matches!(
            parse_legacy(&["bogus".into()]),
            Err(ConfigError::UnknownLegacy(k)) if k == "bogus"
        ));
        assert!(matches!(
            parse_legacy(&["cache".into()]),
            Err(ConfigError::LegacyNeedsValue { .. })
        ));
        assert!(matches!(
            parse_legacy(&["cache=sometimes".into()]),
            Err(ConfigError::LegacyBadValue { .. })
        ));
        assert!(matches!(
            parse_legacy(&["flock".into()]),
            Err(ConfigError::Locks(..))
        ));
        assert!(matches!(
            parse_legacy(&["sandbox=jail".into()]),
            Err(ConfigError::LegacyBadValue { .. })
        ));
        let l = parse_legacy(&["sandbox=chroot,seccomp=log".into()]).unwrap();
        assert_eq!(l.sandbox, Some(Sandbox::Chroot));
        assert_eq!(l.seccomp, Some(SeccompMode::Log));
    }

    #[test]
    fn config_from_separate_options() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = parse(&[
            "--socket-path",
            "/tmp/x.sock",
            "--shared-dir",
            d,
            "--cache",
            "always",
            "--readonly",
            "--translate-uid",
            "map:0:1000:1",
            "--thread-pool-size",
            "2",
        ])
        .unwrap();
        assert_eq!(c.shared_dir, std::fs::canonicalize(d).unwrap());
        assert_eq!(c.cache, Cache::Always);
        assert!(c.readonly && !c.xattr);
        assert_eq!(c.thread_pool_size, 2);
        assert_eq!(c.uid_map.to_host(0), crate::idmap::ToHost::Id(1000));
        assert_eq!(c.log.log_level, LogLevel::Info);
    }

    #[test]
    fn config_from_legacy_form_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let src = format!("source={}", dir.path().display());
        let c = parse(&["--fd=3", "-o", &src, "-d"]).unwrap();
        assert_eq!(c.cache, Cache::Auto);
        assert_eq!(c.thread_pool_size, 0);
        assert_eq!(c.inode_file_handles, InodeFileHandles::Never);
        assert_eq!(c.log.log_level, LogLevel::Debug);
    }

    #[test]
    fn config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert!(matches!(parse(&[]), Err(ConfigError::NoSharedDir)));
        assert!(matches!(
            parse(&["--shared-dir", "/no/such/dir/airlock"]),
            Err(ConfigError::SharedDir(..))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            parse(&["--shared-dir", file.to_str().unwrap()]),
            Err(ConfigError::NotADirectory(_))
        ));
        assert!(matches!(
            parse(&["--shared-dir", d, "-o", "source=/elsewhere"]),
            Err(ConfigError::TwoSharedDirs(..))
        ));
        assert!(matches!(
            parse(&["--shared-dir", d, "--thread-pool-size", "20000"]),
            Err(ConfigError::ThreadPool(20000))
        ));
        assert_eq!(
            parse(&["--shared-dir", d, "--thread-pool-size", "1024"])
                .unwrap()
                .thread_pool_size,
            1024
        );
        assert!(matches!(
            parse(&["--shared-dir", d, "--xattr", "-o", "no_xattr"]),
            Err(ConfigError::Conflict(..))
        ));
        assert!(matches!(
            parse(&["--shared-dir", d, "--cache", "never", "-o", "cache=always"]),
            Err(ConfigError::Conflict(..))
        ));
        assert!(matches!(
            parse(&[
                "--shared-dir",
                d,
                "--translate-uid",
                "map:0:1:5",
                "--translate-uid",
                "map:2:100:1"
            ]),
            Err(ConfigError::IdMap("uid", _))
        ));
    }
}
