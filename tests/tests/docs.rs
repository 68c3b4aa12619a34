//! The documentation matches the binaries: `docs/cli/<daemon>.txt` is the
//! daemon's `--help`, word for word. After changing an option, regenerate
//! with `AIRLOCK_UPDATE_DOCS=1 cargo test -p airlock-e2e --test docs`.

use std::path::PathBuf;
use std::process::Command;

use airlock_e2e::{workspace_root, Rig};

fn check(bin: &str) {
    let out = Command::new(Rig::bin(bin))
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
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
