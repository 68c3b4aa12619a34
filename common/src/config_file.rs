//! `--config FILE`: options from a TOML file, parsed by clap like the
//! command line.
//!
//! Each key is a long option name without the dashes, and the file is turned
//! into arguments placed before the real ones, so a value in the file goes
//! through exactly the validation the same option gets on the command line:
//!
//! ```toml
//! socket-path = "/run/vm1/net.sock"   # --socket-path=/run/vm1/net.sock
//! publish = ["8080:80", "2222:22"]    # --publish=8080:80 --publish=2222:22
//! readonly = true                     # --readonly (false: left out)
//! max-flows = 8192                    # --max-flows=8192
//! ```
//!
//! The command line wins: an option given there replaces the file's value
//! (a repeatable option's whole list), and so does an option that conflicts
//! with it (`--fd` on the command line drops the file's `socket-path`).
//! Unknown keys, values of the wrong shape and unreadable or malformed files
//! are errors naming the key and the file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use clap::builder::StyledStr;
use clap::error::{ContextKind, ContextValue};
use clap::{Arg, ArgAction, Command};

/// The long name of the option itself.
const CONFIG: &str = "config";

/// `--config FILE`, flattened into every daemon's arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Read options from a TOML file first. Keys are long option names
    /// without the dashes (socket-path = "/run/vm1/x.sock"), lists for
    /// repeatable options, true for switches; an option on the command line
    /// replaces the file's value.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read configuration file {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("configuration file {0} is not valid TOML")]
    Parse(PathBuf, #[source] toml::de::Error),
    #[error("unknown key `{key}` in {path}: {program} has no option --{key}{hint}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        program: String,
        hint: String,
    },
    #[error("key `{key}` in {path}: --{key} cannot be set in a configuration file")]
    NotAllowed { path: PathBuf, key: String },
    #[error("key `{key}` in {path} must be {expected}, not {found}")]
    BadValue {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// The process arguments with a configuration file's options put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// `argv[0]`, the file's arguments, then the real arguments.
    pub argv: Vec<OsString>,
    /// The file, if `--config` was given.
    pub file: Option<PathBuf>,
    /// Long names of the options the file set (and the command line did not).
    pub from_file: Vec<String>,
}

/// Parses the process arguments with `parse` (e.g. `Args::try_parse_from`)
/// after putting in the options of `--config FILE`. On a clap error this
/// prints it and exits, as `Parser::parse` does (a value that came from the
/// file gets a tip saying so); a configuration file that cannot be used is
/// returned as the error.
pub fn parse_args<T>(
    cmd: Command,
    parse: impl FnOnce(Vec<OsString>) -> Result<T, clap::Error>,
) -> Result<T, ConfigFileError> {
    let expanded = expand(cmd, std::env::args_os())?;
    let file = expanded.file.clone();
    let from_file = expanded.from_file.clone();
    match parse(expanded.argv) {
        Ok(t) => Ok(t),
        Err(e) => annotate(e, file.as_deref(), &from_file).exit(),
    }
}

/// Puts the options of the `--config FILE` named in `args` before the real
/// arguments. `cmd` is the program's clap command (it must have
/// [`ConfigArgs`] flattened in). Without `--config`, or with `--help` or
/// `--version`, the arguments come back unchanged.
pub fn expand<I, T>(mut cmd: Command, args: I) -> Result<Expanded, ConfigFileError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    cmd.build();
    let cli = scan(&cmd, args.get(1..).unwrap_or_default());
    let unchanged = Expanded {
        argv: args.clone(),
        file: None,
        from_file: Vec::new(),
    };
    if cli.help_or_version {
        return Ok(unchanged);
    }
    let Some(path) = cli.config else {
        return Ok(unchanged);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| ConfigFileError::Read(path.clone(), e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigFileError::Parse(path.clone(), e))?;

    let mut file_args: Vec<OsString> = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let arg = find_long(&cmd, key).ok_or_else(|| unknown_key(&cmd, &path, key))?;
        if arg.get_id() == CONFIG
            || matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
            || matches!(arg.get_action(), ArgAction::HelpShort | ArgAction::HelpLong)
        {
            return Err(ConfigFileError::NotAllowed {
                path,
                key: key.clone(),
            });
        }
        let values = file_values(arg, key, value, &path)?;
        if overridden(&cmd, arg, &cli.mentioned) {
            continue;
        }
        file_args.extend(values);
        from_file.push(key.clone());
    }

    let mut argv = Vec::with_capacity(args.len() + file_args.len());
    argv.extend(args.first().cloned());
    argv.extend(file_args);
    argv.extend(args.into_iter().skip(1));
    Ok(Expanded {
        argv,
        file: Some(path),
        from_file,
    })
}

/// What the real command line says, as far as the file is concerned.
#[derive(Default)]
struct CommandLine {
    /// Ids of the options it gives.
    mentioned: HashSet<String>,
    /// The last `--config` value.
    config: Option<PathBuf>,
    help_or_version: bool,
}

/// Walks the command line the way clap will: `--long[=value]`, clusters of
/// short options (`-dp 80:80`, `-p80:80`), option values, and `--` ending
/// the options.
fn scan(cmd: &Command, args: &[OsString]) -> CommandLine {
    let mut out = CommandLine::default();
    let mut i = 0;
    while i < args.len() {
        let Some(token) = args[i].to_str() else {
            i += 1;
            continue;
        };
        if token == "--" {
            break;
        }
        if let Some(long) = token.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(OsString::from(v))),
                None => (long, None),
            };
            if let Some(arg) = find_long(cmd, name) {
                let value = if takes_value(arg) && inline.is_none() {
                    next_value(args, &mut i)
                } else {
                    inline
                };
                note(&mut out, arg, value);
            }
        } else if let Some(shorts) = token.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (pos, c) in shorts.char_indices() {
                let Some(arg) = cmd.get_arguments().find(|a| a.get_short() == Some(c)) else {
                    break;
                };
                if takes_value(arg) {
                    let rest = &shorts[pos + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        next_value(args, &mut i)
                    } else {
                        Some(OsString::from(rest.strip_prefix('=').unwrap_or(rest)))
                    };
                    note(&mut out, arg, value);
                    break;
                }
                note(&mut out, arg, None);
            }
        }
        i += 1;
    }
    out
}

/// The value after an option, if the next argument is one: like clap, an
/// argument that looks like an option (`--x`, `-x`, but not `-`) is not.
fn next_value(args: &[OsString], i: &mut usize) -> Option<OsString> {
    let next = args.get(*i + 1)?;
    let looks_like_option = next
        .to_str()
        .is_some_and(|s| s.len() > 1 && s.starts_with('-'));
    if looks_like_option {
        return None;
    }
    *i += 1;
    Some(next.clone())
}

fn note(out: &mut CommandLine, arg: &Arg, value: Option<OsString>) {
    if matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    ) {
        out.help_or_version = true;
    }
    if arg.get_id() == CONFIG {
        out.config = value.map(PathBuf::from);
    }
    out.mentioned.insert(arg.get_id().to_string());
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
        && arg
            .get_num_args()
            .is_none_or(|n| n.min_values() > 0 || n.max_values() > 0)
}

/// The option whose long name (or long alias) is `name`.
fn find_long<'a>(cmd: &'a Command, name: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(name)
            || a.get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name))
    })
}

fn unknown_key(cmd: &Command, path: &Path, key: &str) -> ConfigFileError {
    let dashed = key.replace('_', "-");
    let hint = if dashed != key && find_long(cmd, &dashed).is_some() {
        format!(" (option names use dashes: `{dashed}`)")
    } else {
        String::new()
    };
    ConfigFileError::UnknownKey {
        path: path.to_owned(),
        key: key.to_owned(),
        program: cmd.get_name().to_owned(),
        hint,
    }
}

/// Whether the command line gives `arg`, or an option that conflicts with it.
fn overridden(cmd: &Command, arg: &Arg, mentioned: &HashSet<String>) -> bool {
    let id = arg.get_id().as_str();
    mentioned.contains(id)
        || cmd
            .get_arg_conflicts_with(arg)
            .iter()
            .any(|other| mentioned.contains(other.get_id().as_str()))
        || cmd
            .get_arguments()
            .filter(|other| mentioned.contains(other.get_id().as_str()))
            .any(|other| {
                cmd.get_arg_conflicts_with(other)
                    .iter()
                    .any(|c| c.get_id() == id)
            })
}

/// The command-line arguments a key's value stands for.
fn file_values(
    arg: &Arg,
    key: &str,
    value: &toml::Value,
    path: &Path,
) -> Result<Vec<OsString>, ConfigFileError> {
    let bad = |expected: &'static str| ConfigFileError::BadValue {
        path: path.to_owned(),
        key: key.to_owned(),
        expected,
        found: describe(value),
    };
    let flag = OsString::from(format!("--{key}"));
    let with_value = |v: String| OsString::from(format!("--{key}={v}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            toml::Value::Boolean(true) => Ok(vec![flag]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(bad("true or false")),
        },
        ArgAction::Count => match value {
            toml::Value::Boolean(b) => Ok(if *b { vec![flag] } else { Vec::new() }),
            toml::Value::Integer(n) if *n >= 0 => Ok(vec![flag; *n as usize]),
            _ => Err(bad("true, false or a count")),
        },
        ArgAction::Append => {
            let items: &[toml::Value] = match value {
                toml::Value::Array(items) => items,
                single => std::slice::from_ref(single),
            };
            items
                .iter()
                .map(|item| scalar(item).map(with_value))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a string or number, or a list of them"))
        }
        _ => scalar(value)
            .map(|v| vec![with_value(v)])
            .ok_or_else(|| bad("a string or number (the option takes one value)")),
    }
}

/// A single value as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(_) => "a list".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
        toml::Value::String(s) => format!("string {s:?}"),
        other => format!("{} {}", other.type_str(), scalar(other).unwrap_or_default()),
    }
}

/// Adds a tip naming the file when clap rejects an option the file set.
fn annotate(mut err: clap::Error, file: Option<&Path>, from_file: &[String]) -> clap::Error {
    let Some(file) = file else {
        return err;
    };
    let Some(ContextValue::String(invalid)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let key = from_file.iter().find(|key| {
        invalid
            .strip_prefix("--")
            .and_then(|rest| rest.strip_prefix(key.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=']))
    });
    if let Some(key) = key {
        let tip = format!("`{key}` is set in {}", file.display());
        let mut tips = match err.get(ContextKind::Suggested) {
            Some(ContextValue::StyledStrs(tips)) => tips.clone(),
            _ => Vec::new(),
        };
        tips.push(StyledStr::from(tip));
        err.insert(ContextKind::Suggested, ContextValue::StyledStrs(tips));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use std::io::Write;

    /// A daemon-like command line with every kind of option.
    #[derive(Parser, Debug)]
    #[command(name = "demo", version = "1")]
    struct Demo {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, conflicts_with = "fd")]
        socket_path: Option<PathBuf>,
        #[arg(long)]
        fd: Option<i32>,
        #[arg(long, default_value_t = 4096)]
        max_flows: usize,
        #[arg(long, short = 'p')]
        publish: Vec<String>,
        #[arg(long)]
        readonly: bool,
        #[arg(short = 'd')]
        debug: bool,
        #[arg(long, value_enum)]
        cache: Option<Mode>,
        #[arg(long)]
        allow: Vec<String>,
        #[arg(long)]
        deny: Vec<String>,
    }

    #[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
    enum Mode {
        Never,
        Auto,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn argv(config: &Path, rest: &[&str]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["demo".into(), "--config".into(), config.into()];
        v.extend(rest.iter().map(OsString::from));
        v
    }

    fn parse(config: &Path, rest: &[&str]) -> Result<Demo, String> {
        let e = expand(Demo::command(), argv(config, rest)).map_err(|e| e.to_string())?;
        let m = Demo::command()
            .try_get_matches_from(e.argv)
            .map_err(|e| e.to_string())?;
        Demo::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn file_sets_every_kind_of_option() {
        let f = file(
            r#"
socket-path = "/run/x.sock"
max-flows = 8192
publish = ["8080:80", "127.0.0.1:2222:22"]
readonly = true
cache = "never"
"#,
        );
        let d = parse(f.path(), &[]).unwrap();
        assert_eq!(d.socket_path, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(d.max_flows, 8192);
        assert_eq!(d.publish, ["8080:80", "127.0.0.1:2222:22"]);
        assert!(d.readonly);
        assert_eq!(d.cache, Some(Mode::Never));
        assert_eq!(d.config.config.as_deref(), Some(f.path()));
    }

    #[test]
    fn false_switch_and_single_value_for_a_list() {
        let f = file("readonly = false\npublish = \"9000:90\"\n");
        let d = parse(f.path(), &[]).unwrap();
        assert!(!d.readonly);
        assert_eq!(d.publish, ["9000:90"]);
    }

    #[test]
    fn command_line_wins() {
        let f =
            file("socket-path = \"/run/file.sock\"\nmax-flows = 1\npublish = [\"1:1\", \"2:2\"]\n");
        // The config option may come after the options it is overridden by.
        let e = expand(
            Demo::command(),
            [
                "demo",
                "--max-flows=7",
                "-p",
                "3:3",
                "--config",
                f.path().to_str().unwrap(),
                "--socket-path",
                "/run/cli.sock",
            ],
        )
        .unwrap();
        assert_eq!(e.from_file, Vec::<String>::new());
        let d = Demo::try_parse_from(e.argv).unwrap();
        assert_eq!(d.socket_path, Some(PathBuf::from("/run/cli.sock")));
        assert_eq!(d.max_flows, 7);
        // A repeatable option's whole list is replaced, not appended to.
        assert_eq!(d.publish, ["3:3"]);
    }

    #[test]
    fn short_clusters_on_the_command_line_override_too() {
        let f = file("publish = [\"1:1\"]\n");
        assert_eq!(parse(f.path(), &["-dp4:4"]).unwrap().publish, ["4:4"]);
        assert_eq!(
            parse(f.path(), &["-d", "-p", "5:5"]).unwrap().publish,
            ["5:5"]
        );
        // `-` is a value (stdout), not an option; `-d` after an option
        // missing its value is an option, as clap sees it.
        let e = expand(
            Demo::command(),
            argv(f.path(), &["--socket-path", "-", "-p", "6:6"]),
        );
        let d = Demo::try_parse_from(e.unwrap().argv).unwrap();
        assert_eq!(
            (d.socket_path, d.publish),
            (Some("-".into()), vec!["6:6".to_owned()])
        );
        let f = file("readonly = true\n");
        let e = expand(Demo::command(), argv(f.path(), &["--cache", "--readonly"])).unwrap();
        assert!(e.from_file.is_empty(), "{e:?}");
    }

    #[test]
    fn a_conflicting_command_line_option_drops_the_file_value() {
        // libvirt passes --fd; the file's socket-path must not collide with it.
        let f = file("socket-path = \"/run/x.sock\"\nmax-flows = 5\n");
        let d = parse(f.path(), &["--fd", "3"]).unwrap();
        assert_eq!((d.socket_path, d.fd, d.max_flows), (None, Some(3), 5));
        let f = file("fd = 3\n");
        let d = parse(f.path(), &["--socket-path", "/s"]).unwrap();
        assert_eq!((d.socket_path, d.fd), (Some(PathBuf::from("/s")), None));
    }

    #[test]
    fn file_order_is_kept_for_ordered_options() {
        let f = file("deny = [\"a\"]\nallow = [\"b\"]\n");
        let e = expand(Demo::command(), argv(f.path(), &[])).unwrap();
        assert_eq!(
            &e.argv[1..3],
            [OsString::from("--deny=a"), OsString::from("--allow=b")]
        );
        assert_eq!(e.from_file, ["deny", "allow"]);
    }

    #[test]
    fn values_starting_with_a_dash_stay_values() {
        let f = file("publish = [\"-1\"]\n");
        assert_eq!(parse(f.path(), &[]).unwrap().publish, ["-1"]);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("socket-path = \"/x\"\nno-such-option = 1\n");
        let err = parse(f.path(), &[]).unwrap_err();
        assert!(err.contains("unknown key `no-such-option`"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        let f = file("socket_path = \"/x\"\n");
        let err = parse(f.path(), &[]).unwrap_err();
        assert!(
            err.contains("option names use dashes: `socket-path`"),
            "{err}"
        );
        // Short-only options have no key.
        let f = file("d = true\n");
        assert!(parse(f.path(), &[])
            .unwrap_err()
            .contains("unknown key `d`"));
    }

    #[test]
    fn config_help_and_version_are_not_keys() {
        for key in ["config = \"/x.toml\"", "help = true", "version = true"] {
            let f = file(key);
            let err = parse(f.path(), &[]).unwrap_err();
            assert!(
                err.contains("cannot be set in a configuration file"),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        for (text, expected) in [
            ("readonly = \"yes\"", "key `readonly` in"),
            ("readonly = 1", "must be true or false, not integer 1"),
            ("max-flows = [1, 2]", "takes one value"),
            ("publish = [[\"a\"]]", "a list of them"),
            ("cache = { a = 1 }", "not a table"),
        ] {
            let f = file(text);
            let err = parse(f.path(), &[]).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn clap_validates_file_values_and_says_where_they_came_from() {
        let f = file("cache = \"sometimes\"\n");
        let e = expand(Demo::command(), argv(f.path(), &[])).unwrap();
        let err = Demo::try_parse_from(&e.argv).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let err = annotate(err, e.file.as_deref(), &e.from_file).to_string();
        assert!(err.contains("invalid value 'sometimes'"), "{err}");
        assert!(
            err.contains(&format!("`cache` is set in {}", f.path().display())),
            "{err}"
        );
        let f = file("max-flows = \"many\"\n");
        let e = expand(Demo::command(), argv(f.path(), &[])).unwrap();
        let err = Demo::try_parse_from(&e.argv).unwrap_err();
        let err = annotate(err, e.file.as_deref(), &e.from_file).to_string();
        assert!(err.contains("`max-flows` is set in"), "{err}");
    }

    #[test]
    fn missing_and_malformed_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = parse(&missing, &[]).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "cannot read configuration file {}",
                missing.display()
            )),
            "{err}"
        );
        let f = file("socket-path = \n");
        let e = expand(Demo::command(), argv(f.path(), &[])).unwrap_err();
        assert!(matches!(e, ConfigFileError::Parse(..)), "{e}");
        let chain = crate::report::chain(&e);
        assert!(chain.contains("is not valid TOML"), "{chain}");
        assert!(chain.contains("line 1"), "{chain}");
        // A directory is unreadable as a file.
        let err = parse(dir.path(), &[]).unwrap_err();
        assert!(err.starts_with("cannot read configuration file"), "{err}");
    }

    #[test]
    fn without_config_or_with_help_nothing_changes() {
        let args = ["demo", "--max-flows", "3"];
        let e = expand(Demo::command(), args).unwrap();
        assert_eq!(e.argv, args.map(OsString::from));
        assert_eq!(e.file, None);
        // --help must work even when the file is broken.
        let e = expand(
            Demo::command(),
            ["demo", "--config", "/nonexistent", "--help"],
        )
        .unwrap();
        assert_eq!(e.file, None);
        // A --config after `--` is not an option.
        let e = expand(Demo::command(), ["demo", "--", "--config", "/nonexistent"]).unwrap();
        assert_eq!(e.file, None);
    }

    #[test]
    fn config_equals_form() {
        let f = file("max-flows = 9\n");
        let e = expand(
            Demo::command(),
            [
                OsString::from("demo"),
                OsString::from(format!("--config={}", f.path().display())),
            ],
        )
        .unwrap();
        assert_eq!(Demo::try_parse_from(e.argv).unwrap().max_flows, 9);
    }
}
