//! The real `airlock-net` follows its `--resolv-conf` the ways hosts change
//! it — rename over, rewrite in place, a symlink pointed elsewhere, the
//! symlink's target replaced — under its default confinement (seccomp
//! `kill`, and as root its read-only mount namespace). What it uses is read
//! back from the control API's `GET /dns`; no guest is needed for that
//! (tests/tests/net.rs has the guest's view).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_airlock-net");
/// How long a change may take to show before the test gives up (the
/// time it took is printed, not asserted).
const PATIENCE: Duration = Duration::from_secs(20);

struct Daemon {
    child: Child,
    dir: PathBuf,
    api: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let api = dir.join("api.sock");
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--socket-path")
            .arg(dir.join("net.sock"))
            .arg("--api-socket")
            .arg(&api)
            .args(["--log-level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_owned(),
            api,
        };
        let deadline = Instant::now() + PATIENCE;
        while UnixStream::connect(&d.api).is_err() {
            assert!(Instant::now() < deadline, "no API socket\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `GET /dns`.
    fn dns(&self) -> Value {
        let mut s = UnixStream::connect(&self.api).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"GET /dns HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Waits until the resolvers are `upstreams` (and the search list
    /// `search`); returns how long that took.
    fn wait_for(&self, upstreams: &[&str], search: &[&str]) -> Duration {
        let start = Instant::now();
        let want = (json!(upstreams), json!(search));
        loop {
            let d = self.dns();
            if (d["upstreams"].clone(), d["search"].clone()) == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "resolvers still {} / search {}, want {want:?}\n{}",
                d["upstreams"],
                d["search"],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} x{count}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "airlock-net died\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `path` by a rename over it, as NetworkManager and
/// systemd-resolved do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Points the symlink `link` at `target` atomically (`ln -sfn` + rename).
fn retarget(link: &Path, target: &str) {
    let tmp = link.with_extension("link");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[test]
fn every_way_of_changing_resolv_conf_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("etc")).unwrap();
    std::fs::create_dir_all(d.join("run/resolve")).unwrap();
    let conf = d.join("etc/resolv.conf");
    std::fs::write(&conf, "nameserver 10.0.0.1\nsearch a.test\n").unwrap();
    let mut net = Daemon::start(d, &["--resolv-conf", conf.to_str().unwrap()]);
    let info = net.dns();
    assert_eq!(info["source"], conf.to_str().unwrap());
    net.wait_for(&["10.0.0.1:53"], &["a.test"]);

    let mut seen = Vec::new();
    // Renamed over.
    replace(
        &conf,
        "nameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch b.test c.test\n",
    );
    seen.push((
        "rename",
        net.wait_for(&["10.0.0.2:53", "10.0.0.3:53"], &["b.test", "c.test"]),
    ));
    // Rewritten in place.
    std::fs::write(&conf, "domain d.test\nnameserver 10.0.0.4\n").unwrap();
    seen.push(("in place", net.wait_for(&["10.0.0.4:53"], &["d.test"])));
    // Replaced by a symlink, then the symlink pointed elsewhere.
    std::fs::write(d.join("run/resolve/one.conf"), "nameserver 10.0.0.5\n").unwrap();
    std::fs::write(
        d.join("run/resolve/two.conf"),
        "nameserver 127.0.0.53\nsearch e.test\n",
    )
    .unwrap();
    retarget(&conf, "../run/resolve/one.conf");
    seen.push(("symlink", net.wait_for(&["10.0.0.5:53"], &[])));
    retarget(&conf, "../run/resolve/two.conf");
    seen.push(("retarget", net.wait_for(&["127.0.0.53:53"], &["e.test"])));
    // The target replaced behind the symlink (systemd-resolved's stub).
    replace(
        &d.join("run/resolve/two.conf"),
        "nameserver 127.0.0.54\nsearch .\n",
    );
    seen.push(("target", net.wait_for(&["127.0.0.54:53"], &[])));
    for (how, took) in &seen {
        eprintln!("resolv.conf change ({how}) in use after {took:?}");
    }

    // Broken: the last good list stays, and it is said once.
    std::fs::write(d.join("run/resolve/two.conf"), "# no nameserver\n").unwrap();
    net.wait_log(
        "names no nameserver; keeping the current DNS resolvers (127.0.0.54:53)",
        1,
    );
    std::fs::write(d.join("run/resolve/two.conf"), "options edns0\n").unwrap();
    std::fs::remove_file(d.join("run/resolve/two.conf")).unwrap();
    net.wait_log("cannot read", 1);
    assert_eq!(net.dns()["upstreams"], json!(["127.0.0.54:53"]));
    replace(&d.join("run/resolve/two.conf"), "nameserver 10.0.0.7\n");
    net.wait_for(&["10.0.0.7:53"], &[]);
    net.wait_log("is usable again", 1);
    assert_eq!(
        net.log()
            .matches("keeping the current DNS resolvers")
            .count(),
        1,
        "said once while broken\n{}",
        net.log()
    );
    net.assert_running();
}

#[test]
fn sighup_reads_a_file_that_could_not_be_watched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Its directory does not exist yet: nothing to watch.
    let conf = d.join("later/resolv.conf");
    let mut net = Daemon::start(d, &["--resolv-conf", conf.to_str().unwrap()]);
    assert_eq!(net.dns()["upstreams"], json!([]));
    std::fs::create_dir(d.join("later")).unwrap();
    std::fs::write(&conf, "nameserver 10.0.0.8\nsearch f.test\n").unwrap();
    net.hup();
    net.wait_for(&["10.0.0.8:53"], &["f.test"]);
    net.assert_running();
}

#[test]
fn fixed_resolvers_and_search_list_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = d.join("resolv.conf");
    std::fs::write(&conf, "nameserver 10.0.0.1\nsearch a.test\n").unwrap();
    let path = conf.to_str().unwrap();
    let mut fixed = Daemon::start(
        d,
        &[
            "--resolv-conf",
            path,
            "--dns-upstream",
            "10.0.0.9",
            "--dns-search",
            "x.test,y.test",
        ],
    );
    fixed.wait_for(&["10.0.0.9:53"], &["x.test", "y.test"]);
    assert_eq!(fixed.dns()["source"], "--dns-upstream");
    replace(&conf, "nameserver 10.0.0.2\nsearch b.test\n");
    fixed.hup();
    // The SIGHUP's policy reload is logged after the DNS one would be.
    fixed.wait_log("egress policy reloaded", 1);
    fixed.wait_for(&["10.0.0.9:53"], &["x.test", "y.test"]);
    fixed.assert_running();
    drop(fixed);

    // Resolvers from the file, search list fixed ('' = none).
    let other = tempfile::tempdir().unwrap();
    let mut net = Daemon::start(other.path(), &["--resolv-conf", path, "--dns-search", ""]);
    net.wait_for(&["10.0.0.2:53"], &[]);
    replace(&conf, "nameserver 10.0.0.3\nsearch c.test\n");
    net.wait_for(&["10.0.0.3:53"], &[]);
    net.assert_running();
}
