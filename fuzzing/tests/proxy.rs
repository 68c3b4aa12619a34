//! The `proxy_request` fuzz target's kept inputs, replayed on stable: every
//! file in `fuzz/regressions/proxy_request/` (inputs that once crashed) and
//! `fuzz/seeds/proxy_request/` goes through the same function the
//! cargo-fuzz target calls, so CI covers them without nightly.

use std::path::PathBuf;

use airlock_fuzzing::proxy as fuzzing;
use airlock_fuzzing::replay;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn proxy_request() {
    let files = replay(&fuzz_dir(), "proxy_request", fuzzing::fuzz_proxy_request);
    assert!(files > 0, "no inputs in fuzz/seeds or fuzz/regressions");
    for (_, bytes) in fuzzing::seeds() {
        fuzzing::fuzz_proxy_request(&bytes);
    }
}

/// The connection seeds go all the way: through the policy to 403, and
/// through the fake upstream to a tunnel and to forwarded answers.
#[test]
fn seeds_reach_the_policy_and_the_upstream() {
    let seed = |name: &str| {
        let (_, bytes) = fuzzing::seeds()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no seed {name}"));
        let out = fuzzing::run_connection(&bytes[1..]);
        String::from_utf8_lossy(&out).into_owned()
    };
    let statuses = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("HTTP/"))
            .map(|l| l.to_owned())
            .collect::<Vec<_>>()
    };
    let denied = seed("denied");
    assert_eq!(statuses(&denied).len(), 3, "{denied}");
    assert!(
        statuses(&denied).iter().all(|s| s.contains(" 403 ")),
        "{denied}"
    );
    let tunnel = seed("connect-ipv6");
    assert!(tunnel.starts_with("HTTP/1.1 200 "), "{tunnel}");
    let forwarded = seed("post-keep-alive");
    assert!(forwarded.starts_with("HTTP/1.1 200 OK"), "{forwarded}");
    assert!(forwarded.contains("via: 1.1 airlock-proxy"), "{forwarded}");
}

/// Writes the built-in seeds to `fuzz/seeds/proxy_request/` (run after
/// changing them: `cargo test -p airlock-fuzzing --test proxy -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = fuzz_dir().join("seeds/proxy_request");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in fuzzing::seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
