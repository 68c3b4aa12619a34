//! The fuzz targets' kept inputs, replayed on stable: every file in
//! `fuzz/regressions/<target>/` (inputs that once crashed) and
//! `fuzz/seeds/<target>/` goes through the same function the cargo-fuzz
//! target calls, so CI covers them without nightly.

use std::path::PathBuf;

use airlock_fuzzing::net::{self as fuzzing, seeds};
use airlock_fuzzing::replay;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Replays the target's files and its built-in seeds.
fn run(target: &str, body: fn(&[u8])) {
    let files = replay(&fuzz_dir(), target, body);
    assert!(
        files > 0,
        "no inputs for {target} in fuzz/seeds or fuzz/regressions"
    );
    for (t, _, bytes) in seeds::all() {
        if t == target {
            body(&bytes);
        }
    }
}

#[test]
fn net_frame() {
    run("net_frame", fuzzing::fuzz_net_frame);
}

#[test]
fn dhcp() {
    run("dhcp", fuzzing::fuzz_dhcp);
}

#[test]
fn dns() {
    run("dns", fuzzing::fuzz_dns);
}

#[test]
fn net_chain() {
    run("net_chain", fuzzing::fuzz_net_chain);
}

#[test]
fn api() {
    run("api", fuzzing::fuzz_api);
}

/// The seeds get past the surface: the guest gets answers from the echo
/// servers behind the host and proxy aliases, from DNS and from DHCP.
#[test]
fn net_frame_seeds_reach_the_services() {
    let seed = |name: &str| {
        seeds::all()
            .into_iter()
            .find(|(t, n, _)| *t == "net_frame" && *n == name)
            .map(|(_, _, b)| b)
            .unwrap_or_else(|| panic!("no net_frame seed {name}"))
    };
    for name in [
        "tcp-proxy-alias",
        "tcp-host-alias",
        "dns-tcp",
        "checksum-offload",
    ] {
        let got = fuzzing::run_net_frame(&seed(name));
        assert!(got.tcp_data > 0, "{name}: no data came back: {got:?}");
    }
    for name in ["udp-echo", "checksum-offload"] {
        let got = fuzzing::run_net_frame(&seed(name));
        assert!(got.udp >= 1, "{name}: {got:?}");
    }
    let got = fuzzing::run_net_frame(&seed("dns-udp"));
    assert!(got.udp >= 3, "dns-udp: {got:?}");
    let got = fuzzing::run_net_frame(&seed("dhcp"));
    assert_eq!(got.udp, 2, "dhcp: {got:?}");
    let got = fuzzing::run_net_frame(&seed("arp"));
    assert_eq!(got.arp, 2, "arp: {got:?}");
}

#[test]
fn ipv6_services() {
    run("ipv6_services", fuzzing::fuzz_ipv6_services);
}

/// The DHCPv6 seeds get past the parser: the server answers each message.
#[test]
fn ipv6_services_seeds_get_answers() {
    let replies = |name: &str| {
        let (_, _, bytes) = seeds::all()
            .into_iter()
            .find(|(t, n, _)| *t == "ipv6_services" && *n == name)
            .unwrap_or_else(|| panic!("no ipv6_services seed {name}"));
        fuzzing::run_ipv6_services(&bytes)
    };
    assert_eq!(replies("solicit-rapid-commit"), 1);
    assert_eq!(replies("solicit-then-request"), 2);
    assert_eq!(replies("information-request"), 1);
}

/// The descriptor-chain seeds carry a frame through TX and get the
/// gateway's answer into the posted receive buffers.
#[test]
fn net_chain_seeds_get_an_answer_into_the_rx_queue() {
    for (target, name, bytes) in seeds::all() {
        if target == "net_chain" {
            let written = fuzzing::run_net_chain(&bytes);
            // virtio-net header + Ethernet + ARP.
            assert!(written >= 12 + 42, "{name}: {written} bytes to the guest");
        }
    }
}

/// Writes the built-in seeds to `fuzz/seeds/` (run after changing them:
/// `cargo test -p airlock-fuzzing --test net -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds::all() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
