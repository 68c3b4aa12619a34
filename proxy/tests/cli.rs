//! The command line: --help, startup errors and exit codes, Unix sockets,
//! SIGTERM.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use http::StatusCode;
use support::*;

#[test]
fn help_documents_every_option() {
    let (status, out, _) = run_to_exit(&["--help"], &[]);
    assert!(status.success());
    for option in [
        "--listen",
        "--upstream-http",
        "--upstream-https",
        "--upstream-credentials-file",
        "--no-proxy",
        "--ignore-proxy-env",
        "--allow",
        "--deny",
        "--audit-log",
        "--max-connections",
        "--idle-timeout",
        "--connect-timeout",
        "--max-header-bytes",
        "--log-level",
        "--syslog",
        "--help",
        "--version",
    ] {
        assert!(
            out.contains(option),
            "--help does not mention {option}:\n{out}"
        );
    }
    // The precedence and the credentials rules are spelled out.
    for text in [
        "$http_proxy, $all_proxy, $ALL_PROXY",
        "$https_proxy, $HTTPS_PROXY",
        "$no_proxy, $NO_PROXY",
        "$HTTP_PROXY is never read",
        "never logged",
        "chmod o-rwx",
        "[default: 127.0.0.1:3128]",
        "[default: 1024]",
        "[default: 60s]",
        "[default: 10s]",
        "PAC",
    ] {
        assert!(out.contains(text), "--help does not say {text:?}:\n{out}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_cause_chain() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--upstream-http", "socks5://p:1080"],
            "scheme socks5:// is not supported",
        ),
        (
            &["--upstream-https", "http://u:Secr3t@proxy:notaport"],
            "invalid port",
        ),
        (&["--listen", "localhost:3128"], "invalid --listen"),
        (&["--deny", "example.com:443"], "ports are not supported"),
        (&["--max-connections", "0"], "at least 1"),
        (
            &["--upstream-credentials-file", "/nonexistent/creds"],
            "No such file",
        ),
    ];
    for (args, expected) in cases {
        let (status, _, err) = run_to_exit(args, &[]);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        // Printed once (not again through the logger).
        assert_eq!(err.matches("error: ").count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in:\n{err}"
        );
        assert!(
            !err.contains("Secr3t"),
            "credentials in an error message: {err}"
        );
    }
    // Credentials from the environment are not echoed either.
    let (status, _, err) = run_to_exit(&[], &[("https_proxy", "http://user:Secr3t@proxy:0")]);
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("$https_proxy") && err.contains("***@proxy:0"),
        "{err}"
    );
    assert!(!err.contains("Secr3t"), "{err}");
    // clap's own usage errors are 2 as well.
    let (status, _, _) = run_to_exit(&["--no-such-option"], &[]);
    assert_eq!(status.code(), Some(2));
}

#[test]
fn world_readable_credentials_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path(), "alice:Secr3t\n", 0o644);
    let (status, _, err) = run_to_exit(
        &["--upstream-credentials-file", creds.to_str().unwrap()],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: cannot use --upstream-credentials-file"),
        "{err}"
    );
    assert!(err.contains("caused by: credentials file"), "{err}");
    assert!(
        err.contains("accessible to other users (mode 0644)"),
        "{err}"
    );
    assert!(!err.contains("Secr3t"), "{err}");
}

#[test]
fn port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run_to_exit(&["--ignore-proxy-env", "--listen", &addr], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("error: cannot listen on {addr}")),
        "{err}"
    );
    assert!(err.contains("caused by: Address already in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_is_private_and_serves() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Started as root, the proxy serves as nobody: the directory is that
    // user's, as a service's runtime directory is, so it may remove its
    // socket at exit.
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    }
    let sock = dir.path().join("proxy.sock");
    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let listen = format!("unix:{}", sock.display());
    let proxy = Proxy::start(&[
        "--ignore-proxy-env",
        "--listen",
        &listen,
        "--listen",
        "127.0.0.1:0",
    ]);
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let reply = send(&mut sender, get(&origin.url("/hello"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello from origin");

    // A second instance may not take over a live socket.
    let (status, _, err) = run_to_exit(&["--ignore-proxy-env", "--listen", &listen], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is in use by a running process"), "{err}");

    // SIGTERM: exit 0, socket removed.
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn a_file_in_the_way_of_the_socket_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious").unwrap();
    let (status, _, err) = run_to_exit(&["--listen", &format!("unix:{}", path.display())], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}
