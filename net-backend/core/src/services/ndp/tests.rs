//! Neighbor Discovery against packets captured from real Linux stacks:
//! a Linux 6.1 host's Router Solicitation and Duplicate Address Detection
//! (with its RFC 7527 nonce), and radvd 2.19's Router Advertisement for
//! the same configuration as the gateway's (captured with tcpdump on a
//! veth pair between two network namespaces).

use super::*;
use crate::gateway::tests::{config, GUEST_MAC};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const LINUX_LL: &str = "fe80::5054:ff:fe12:3456";
/// Linux's Router Solicitation (with its source link-layer address).
const LINUX_RS: &str = "850071b5000000000101525400123456";
/// Linux's DAD probe for its SLAAC address: from ::, with a nonce option.
const LINUX_DAD: &str = "8700681000000000fd616972c0a87f00505400fffe1234560e01b8a97e266f1c";
/// A Neighbor Solicitation with a source link-layer address (radvd's host).
const LINUX_NS: &str = "8700c8fb00000000fe80000000000000505400fffe12345601015a94efe40cdd";
/// Linux's solicited Neighbor Advertisement.
const LINUX_NA: &str = "8800e05a40000000fe80000000000000505400fffe123456";
/// radvd's advertisement: M and O flags, lifetime 1800, prefix
/// fd61:6972:c0a8:7f00::/64 (L, A, 86400/14400), RDNSS ::1 and DNSSL
/// airlock.internal example.test (1800 s), MTU 65520, source link-layer
/// address 5a:94:ef:e4:0c:dd.
const RADVD_RA: &str = "86006fa040c007080000000000000000030440c0000151800000384000000000fd616972c0a87f0000000000000000001903000000000708fd616972c0a87f0000000000000000011f05000000000708076169726c6f636b08696e7465726e616c00076578616d706c65047465737400050100000000fff001015a94efe40cdd";

#[test]
fn real_solicitations_parse() {
    let ll: Ipv6Addr = LINUX_LL.parse().unwrap();
    assert_eq!(
        parse(&hex(LINUX_RS), ll, 255),
        Ok(NdpMessage::RouterSolicit)
    );
    assert_eq!(
        parse(&hex(LINUX_DAD), Ipv6Addr::UNSPECIFIED, 255),
        Ok(NdpMessage::NeighborSolicit {
            target: "fd61:6972:c0a8:7f00:5054:ff:fe12:3456".parse().unwrap(),
            source_ll: None,
        })
    );
    assert_eq!(
        parse(
            &hex(LINUX_NS),
            "fe80::5894:efff:fee4:cdd".parse().unwrap(),
            255
        ),
        Ok(NdpMessage::NeighborSolicit {
            target: ll,
            source_ll: Some(EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd])),
        })
    );
    assert_eq!(
        parse(&hex(LINUX_NA), ll, 255),
        Ok(NdpMessage::NeighborAdvert { target: ll })
    );
}

#[test]
fn invalid_messages_are_refused() {
    let ll: Ipv6Addr = LINUX_LL.parse().unwrap();
    // Forwarded (hop limit below 255), a nonzero code, a zero-length
    // option, an option past the end, a multicast target, DAD with a
    // source link-layer address, a truncated solicitation.
    assert_eq!(parse(&hex(LINUX_RS), ll, 254), Err(NdpError::HopLimit(254)));
    let mut coded = hex(LINUX_RS);
    coded[1] = 1;
    assert_eq!(parse(&coded, ll, 255), Err(NdpError::Code(1)));
    let mut zero = hex(LINUX_RS);
    zero[9] = 0;
    assert_eq!(parse(&zero, ll, 255), Err(NdpError::BadOption));
    let mut long = hex(LINUX_RS);
    long[9] = 2;
    assert_eq!(parse(&long, ll, 255), Err(NdpError::BadOption));
    let mut mcast = hex(LINUX_NS);
    mcast[8] = 0xff;
    assert!(matches!(
        parse(&mcast, ll, 255),
        Err(NdpError::MulticastTarget(_))
    ));
    assert_eq!(
        parse(&hex(LINUX_NS), Ipv6Addr::UNSPECIFIED, 255),
        Err(NdpError::DadWithSourceLl)
    );
    assert_eq!(
        parse(&hex(LINUX_NS)[..20], ll, 255),
        Err(NdpError::Truncated(20))
    );
    assert_eq!(parse(&[128, 0, 0, 0], ll, 64), Err(NdpError::NotNdp(128)));
    assert_eq!(parse(&[], ll, 255), Err(NdpError::Truncated(0)));
}

/// The options of an NDP message after `fixed` bytes, as (type, bytes).
fn option_set(m: &[u8], fixed: usize) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut at = fixed;
    while at < m.len() {
        let len = usize::from(m[at + 1]) * 8;
        v.push(m[at..at + len].to_vec());
        at += len;
    }
    v.sort();
    v
}

#[test]
fn advertisement_matches_radvd_for_the_same_configuration() {
    let cfg = config();
    let v6 = cfg.ipv6.clone().unwrap();
    let mut router = Router::new(&cfg, &v6, 1);
    assert!(router.set_search(&["airlock.internal".into(), "example.test".into()]));
    assert!(!router.set_search(&["airlock.internal".into(), "example.test".into()]));
    let ours = router.advertisement();
    let radvd = hex(RADVD_RA);
    // The header after the checksum: hop limit, flags, lifetimes.
    assert_eq!(ours[0], radvd[0]);
    assert_eq!(&ours[4..16], &radvd[4..16]);
    // The same options, byte for byte (radvd orders them differently).
    assert_eq!(option_set(&ours, 16), option_set(&radvd, 16));
    // Without search domains there is no DNSSL option.
    let plain = Router::new(&config(), &v6, 1).advertisement();
    assert!(option_set(&plain, 16).iter().all(|o| o[0] != 31));
    assert_eq!(plain.len(), radvd.len() - 40);
}

#[test]
fn neighbor_advert_is_what_linux_sends_with_the_router_flag() {
    let ll: Ipv6Addr = LINUX_LL.parse().unwrap();
    let na = neighbor_advert(ll, GUEST_MAC, true);
    // Linux's NA is solicited, without the override flag or an option;
    // ours adds router + override and the target link-layer address.
    let linux = hex(LINUX_NA);
    assert_eq!(na[0], linux[0]);
    assert_eq!(&na[8..24], &linux[8..24]);
    assert_eq!(na[4], 0x80 | 0x40 | 0x20);
    assert_eq!(&na[24..], &[2, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(
        solicited_node("fd61:6972:c0a8:7f00:5054:ff:fe12:3456".parse().unwrap()),
        "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
    );
}

#[test]
fn advertisements_are_rate_limited_and_periodic_within_200_to_600_s() {
    let cfg = config();
    let v6 = cfg.ipv6.clone().unwrap();
    let mut r = Router::new(&cfg, &v6, 42);
    let t0 = Instant::now();
    assert!(r.solicited(t0));
    assert!(!r.solicited(t0 + Duration::from_secs(2)));
    assert!(r.solicited(t0 + Duration::from_secs(3)));
    let first = r.next_periodic();
    assert!(!r.periodic_due(first - Duration::from_millis(1)));
    assert!(r.periodic_due(first));
    let gap = r.next_periodic() - first;
    assert!((200..=600).contains(&gap.as_secs()), "{gap:?}");
}
