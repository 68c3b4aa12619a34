//! The documentation matches the binaries: `docs/cli/<daemon>.txt` is the
//! daemon's `--help`, word for word. After changing an option, regenerate
//! with `AIRLOCK_UPDATE_DOCS=1 cargo test -p airlock-e2e --test docs`.

use std::path::PathBuf;
use std::process::Command;

use airlock_e2e::{workspace_root, Rig};

/// `bin --help`, then `bin <sub> --help` for each subcommand.
fn help(bin: &str, subcommands: &[&str]) -> String {
    let mut text = String::new();
    for sub in std::iter::once(None).chain(subcommands.iter().map(Some)) {
        let out = Command::new(Rig::bin(bin))
            .args(sub.iter().flat_map(|s| s.split_whitespace()))
            .arg("--help")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} {sub:?} --help failed");
        if let Some(sub) = sub {
            text.push_str(&format!("\n\n$ {bin} {sub} --help\n\n"));
        }
        text.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    text
}

fn check(bin: &str) {
    check_with(bin, &[]);
}

fn check_with(bin: &str, subcommands: &[&str]) {
    let help = help(bin, subcommands);
    let path: PathBuf = workspace_root().join("docs/cli").join(format!("{bin}.txt"));
    if std::env::var_os("AIRLOCK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &help).unwrap();
        return;
    }
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        doc == help,
        "{} is out of date with `{bin} --help`; regenerate it with \
         AIRLOCK_UPDATE_DOCS=1 cargo test -p airlock-e2e --test docs",
        path.display()
    );
}

#[test]
fn airlock_fs_help_is_documented() {
    check("airlock-fs");
}

#[test]
fn airlock_net_help_is_documented() {
    check("airlock-net");
}

#[test]
fn airlock_proxy_help_is_documented() {
    check("airlock-proxy");
}

#[test]
fn airlock_cli_help_is_documented() {
    check_with(
        "airlock",
        &[
            "publish",
            "unpublish",
            "ports",
            "stats",
            "flows",
            "leases",
            "dns",
            "dns add",
            "dns rm",
            "dns ls",
        ],
    );
}

#[test]
fn airlock_guest_help_is_documented() {
    check_with("airlock-guest", &["watch"]);
}
