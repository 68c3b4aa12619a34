//! The layering the workspace promises (README "Layout",
//! docs/architecture.md), checked so it stays a fact:
//!
//! - airlock-net's gateway (airlock-netcore) never links a virtqueue or
//!   vhost-user crate, and the `airlock` CLI links no daemon;
//! - the notify wire format (airlock-notify) is std only, and the guest
//!   helper (airlock-guest) links no daemon and no vhost-user crate;
//! - no file of airlock-net or its core imports a file that imports it
//!   back, directly or around a longer loop (a module's use of its own
//!   ancestors does not count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The crates `package` links in normal builds (not tests).
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "-p", package])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_gateway_never_links_a_virtqueue_and_the_cli_links_no_daemon() {
    let virtqueue = ["vhost", "vhost-user-backend", "virtio-queue", "vm-memory"];
    let core = normal_dependencies("airlock-netcore");
    assert!(core.contains("smoltcp"), "{core:?}");
    for c in virtqueue {
        assert!(!core.contains(c), "airlock-netcore links {c}");
    }
    let cli = normal_dependencies("airlock");
    assert!(cli.contains("airlock-api"), "{cli:?}");
    for c in virtqueue.iter().chain(&[
        "airlock-net",
        "airlock-netcore",
        "airlock-fs",
        "airlock-proxy",
        "smoltcp",
    ]) {
        assert!(!cli.contains(*c), "the airlock CLI links {c}");
    }
}

#[test]
fn the_notify_wire_format_is_std_only_and_the_guest_helper_links_no_daemon() {
    let wire = normal_dependencies("airlock-notify");
    assert_eq!(wire, BTreeSet::from(["airlock-notify".to_owned()]));
    let guest = normal_dependencies("airlock-guest");
    assert!(guest.contains("airlock-notify"), "{guest:?}");
    for c in [
        "airlock-fs",
        "airlock-common",
        "airlock-vhost",
        "vhost",
        "vm-memory",
        "fuse-backend-rs",
    ] {
        assert!(!guest.contains(c), "airlock-guest links {c}");
    }
}

/// Module path (`a::b`) → file, for every `.rs` under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The source without comments and without a trailing `mod tests`.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module a `crate::…`, `super::…` or `self::…` path in `module` names.
fn resolve(path: &[&str], module: &str, known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut rest = path;
    match *rest.first()? {
        "crate" => base.clear(),
        "self" => {}
        "super" => {
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            return longest(&base, rest, known);
        }
        _ => return None,
    }
    longest(&base, &rest[1..], known)
}

fn longest(base: &[&str], rest: &[&str], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    (0..=rest.len())
        .rev()
        .map(|i| [base, &rest[..i]].concat().join("::"))
        .find(|m| known.contains_key(m))
}

/// Loops of imports between the files of one crate.
fn import_cycles(src: &Path) -> Vec<Vec<PathBuf>> {
    let known = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &known {
        let text = code(&std::fs::read_to_string(file).unwrap());
        let deps = edges.entry(module.clone()).or_default();
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            let path: Vec<&str> = word.split("::").filter(|s| !s.is_empty()).collect();
            let Some(target) = resolve(&path, module, &known) else {
                continue;
            };
            let related = target.is_empty()
                || target == *module
                || module.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{module}::"));
            if !related {
                deps.insert(target);
            }
        }
    }
    // Every module from which `start` can be reached again.
    let mut cycles: Vec<Vec<PathBuf>> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for start in edges.keys() {
        if seen.contains(start) {
            continue;
        }
        let reach = |from: &str| {
            let mut found = BTreeSet::new();
            let mut todo = vec![from.to_owned()];
            while let Some(m) = todo.pop() {
                for d in edges.get(&m).into_iter().flatten() {
                    if found.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            found
        };
        let forward = reach(start);
        if !forward.contains(start) {
            continue;
        }
        let members: Vec<String> = forward
            .iter()
            .filter(|m| reach(m).contains(start))
            .cloned()
            .collect();
        seen.extend(members.iter().cloned());
        cycles.push(members.iter().map(|m| known[m].clone()).collect());
    }
    cycles
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut found = Vec::new();
    for crate_src in [
        "net-backend/src",
        "net-backend/core/src",
        "proxy/src",
        "fs-backend/src",
        "common/src",
        "common/vhost/src",
        "api/src",
        "cli/src",
        "notify/src",
        "guest/src",
        "testkit/src",
        "fuzzing/src",
        "bench/src",
        "tests/src",
        "man/src",
    ] {
        found.extend(import_cycles(&workspace().join(crate_src)));
    }
    assert!(found.is_empty(), "import loops: {found:#?}");
}

#[test]
fn the_cycle_check_finds_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\n").unwrap();
    std::fs::write(
        dir.path().join("b.rs"),
        "// use crate::a is only a comment here\npub struct B;\n",
    )
    .unwrap();
    assert!(import_cycles(dir.path()).is_empty());
    std::fs::write(dir.path().join("b.rs"), "use super::a;\npub struct B;\n").unwrap();
    assert_eq!(import_cycles(dir.path()).len(), 1);
}
