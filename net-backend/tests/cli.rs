//! The airlock-net binary's startup errors: each printed once, as a chain
//! whose lines each say something new, with exit status 2 for what the
//! command line asked for and 1 for failures.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_airlock-net");

/// Runs airlock-net with `args` (and `--dns-upstream`, `--sandbox none`)
/// to its exit; returns (status, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["--dns-upstream", "127.0.0.1", "--sandbox", "none"])
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The error lines of `stderr`: `error: …` and `caused by: …`.
fn chain(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: ") || l.starts_with("caused by: "))
        .collect()
}

/// Each startup error is printed once, and no cause repeats what the line
/// above it said.
fn assert_printed_once(stderr: &str) {
    let lines = chain(stderr);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{stderr}"
    );
    for pair in lines.windows(2) {
        let above = pair[0]
            .trim_start_matches("error: ")
            .trim_start_matches("caused by: ");
        let below = pair[1].trim_start_matches("caused by: ");
        assert!(
            !above.contains(below),
            "a cause repeats the line above it:\n{stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_2_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let socket = socket.to_str().unwrap();
    let rules = dir.path().join("egress.rules");
    std::fs::write(&rules, "allow 10.0.0.0/8\ndeny 10.0.0.0/99\n").unwrap();
    let rules = rules.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "error: no socket to serve"),
        (
            &["--socket-path", socket, "--proxy-target", "localhost:3128"],
            "expected IP:PORT (e.g. 127.0.0.1:3128, [::1]:3128) or unix:PATH; names are not resolved",
        ),
        (
            &["--socket-path", socket, "--api-socket", socket],
            "--api-socket and --socket-path are both",
        ),
        (
            &["--socket-path", socket, "--egress-rules", rules],
            "error: invalid egress rule at ",
        ),
        (
            &["--socket-path", socket, "--egress-rules", "/nonexistent/rules"],
            "error: cannot read egress rules from /nonexistent/rules",
        ),
        (
            &["--socket-path", socket, "--deny", "127.0.0.0/8"],
            "can never match",
        ),
        (
            &["--socket-path", socket, "--subnet", "224.0.0.0/24"],
            "overlaps 224.0.0.0/4 (multicast)",
        ),
        (
            &["--socket-path", socket, "--audit-log", "/nonexistent/audit.log"],
            "error: cannot open audit log /nonexistent/audit.log",
        ),
        (&["--no-such-option"], "unexpected argument"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        if !args.contains(&"--no-such-option") {
            assert_printed_once(&stderr);
        }
    }
    // Nothing was left behind by the refused starts.
    assert!(!dir.path().join("net.sock").exists());
}

#[test]
fn a_socket_in_use_is_a_failure_exit_1_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let _live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (code, stderr) = run(&["--socket-path", socket.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("is in use by a running process"),
        "{stderr}"
    );
    assert_printed_once(&stderr);
}
