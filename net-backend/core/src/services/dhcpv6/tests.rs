//! The DHCPv6 server against dhcpcd 9.4's real Solicit (captured with
//! tcpdump: DUID-LLT client id, IA_NA 0x00123456, an option request for
//! DNS servers, search list and FQDN, rapid commit) and the exchanges that
//! follow from it.

use super::*;
use crate::gateway::tests::{config, GUEST6, GUEST_MAC, GW6};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// dhcpcd's Solicit (the UDP payload).
const DHCPCD_SOLICIT: &str = "011288ad0001000e0001000132a7f5e45254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000";

fn server() -> Dhcpv6Server {
    let cfg = config();
    let v6 = cfg.ipv6.clone().unwrap();
    let mut server = Dhcpv6Server::new(&cfg, &v6);
    server.set_search(&["airlock.internal".into()]);
    server
}

/// The reply's options, with sub-options of IA_NA flattened after it.
fn options(reply: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for (code, body) in walk(&reply[4..]).unwrap() {
        out.push((code, body.to_vec()));
        if code == opt::IA_NA || code == opt::IA_TA {
            let skip = if code == opt::IA_NA { 12 } else { 4 };
            for (sub, data) in walk(&body[skip..]).unwrap() {
                out.push((sub, data.to_vec()));
            }
        }
    }
    out
}

fn get(opts: &[(u16, Vec<u8>)], code: u16) -> Option<Vec<u8>> {
    opts.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, b)| b.clone())
}

#[test]
fn dhcpcd_rapid_commit_solicit_gets_the_slaac_address() {
    let mut s = server();
    let now = Instant::now();
    let reply = s
        .handle(&hex(DHCPCD_SOLICIT), GUEST_MAC, now)
        .unwrap()
        .unwrap();
    assert_eq!(reply.payload[0], msg::REPLY);
    assert_eq!(&reply.payload[1..4], &[0x12, 0x88, 0xad], "transaction id");
    assert_eq!(reply.leased, Some(GUEST6));
    let o = options(&reply.payload);
    assert_eq!(
        get(&o, opt::SERVERID).unwrap(),
        [0, 3, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]
    );
    assert_eq!(
        get(&o, opt::CLIENTID).unwrap(),
        hex("0001000132a7f5e4525400123456")
    );
    assert_eq!(get(&o, opt::RAPID_COMMIT).unwrap(), Vec::<u8>::new());
    let ia = get(&o, opt::IA_NA).unwrap();
    assert_eq!(&ia[..4], &[0, 0x12, 0x34, 0x56], "IAID");
    assert_eq!(u32::from_be_bytes(ia[4..8].try_into().unwrap()), 1800, "T1");
    assert_eq!(
        u32::from_be_bytes(ia[8..12].try_into().unwrap()),
        2880,
        "T2"
    );
    let addr = get(&o, opt::IAADDR).unwrap();
    assert_eq!(&addr[..16], &GUEST6.octets());
    assert_eq!(&addr[16..24], &[0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10]);
    assert_eq!(get(&o, opt::DNS_SERVERS).unwrap(), GW6.octets());
    assert_eq!(
        get(&o, opt::DOMAIN_LIST).unwrap(),
        b"\x07airlock\x08internal\x00"
    );
    let leases = s.leases(now);
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].ip, leases[0].mac),
        (IpAddr::V6(GUEST6), GUEST_MAC.0)
    );
}

#[test]
fn solicit_advertise_request_renew_release() {
    let mut s = server();
    let now = Instant::now();
    // Without rapid commit: an Advertise, preference 255, nothing leased.
    let solicit = hex(&DHCPCD_SOLICIT[..DHCPCD_SOLICIT.len() - 8]);
    let adv = s.handle(&solicit, GUEST_MAC, now).unwrap().unwrap();
    assert_eq!(adv.payload[0], msg::ADVERTISE);
    assert_eq!(get(&options(&adv.payload), opt::PREFERENCE).unwrap(), [255]);
    assert!(s.leases(now).is_empty());
    // A Request naming us, built from the Advertise's server id.
    let server_id = get(&options(&adv.payload), opt::SERVERID).unwrap();
    let mut request = solicit.clone();
    request[0] = msg::REQUEST;
    put(&mut request, opt::SERVERID, &server_id);
    let rep = s.handle(&request, GUEST_MAC, now).unwrap().unwrap();
    assert_eq!((rep.payload[0], rep.leased), (msg::REPLY, Some(GUEST6)));
    assert_eq!(s.leases(now).len(), 1);
    // A Request for another server is not ours to answer.
    let mut other = solicit.clone();
    other[0] = msg::REQUEST;
    put(&mut other, opt::SERVERID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
    assert_eq!(s.handle(&other, GUEST_MAC, now).unwrap(), None);
    // Renew keeps it; Release drops it, with a Success status.
    request[0] = msg::RENEW;
    assert_eq!(
        s.handle(&request, GUEST_MAC, now).unwrap().unwrap().leased,
        Some(GUEST6)
    );
    request[0] = msg::RELEASE;
    let rel = s.handle(&request, GUEST_MAC, now).unwrap().unwrap();
    assert_eq!(
        get(&options(&rel.payload), opt::STATUS_CODE).unwrap()[..2],
        [0, 0]
    );
    assert!(s.leases(now).is_empty());
    // Leases expire.
    request[0] = msg::REQUEST;
    s.handle(&request, GUEST_MAC, now).unwrap();
    assert!(s.leases(now + Duration::from_secs(3601)).is_empty());
}

#[test]
fn confirm_information_request_and_unserved_ias() {
    let mut s = server();
    let now = Instant::now();
    // Confirm of an address on the link, and of one elsewhere.
    let confirm = |a: Ipv6Addr| {
        let mut m = vec![msg::CONFIRM, 1, 2, 3];
        put(
            &mut m,
            opt::CLIENTID,
            &[0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
        );
        let mut ia = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut addr = a.octets().to_vec();
        addr.extend_from_slice(&[0; 8]);
        put(&mut ia, opt::IAADDR, &addr);
        put(&mut m, opt::IA_NA, &ia);
        m
    };
    let ok = s.handle(&confirm(GUEST6), GUEST_MAC, now).unwrap().unwrap();
    assert_eq!(
        get(&options(&ok.payload), opt::STATUS_CODE).unwrap()[..2],
        [0, 0]
    );
    let off = s
        .handle(&confirm("2001:db8::1".parse().unwrap()), GUEST_MAC, now)
        .unwrap()
        .unwrap();
    assert_eq!(
        get(&options(&off.payload), opt::STATUS_CODE).unwrap()[..2],
        [0, 4],
        "NotOnLink"
    );
    // Stateless: DNS, search list and a refresh time, no address.
    let mut info = vec![msg::INFORMATION_REQUEST, 9, 9, 9];
    put(
        &mut info,
        opt::CLIENTID,
        &[0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
    );
    let r = s.handle(&info, GUEST_MAC, now).unwrap().unwrap();
    let o = options(&r.payload);
    assert_eq!(r.leased, None);
    assert_eq!(get(&o, opt::DNS_SERVERS).unwrap(), GW6.octets());
    assert!(get(&o, opt::INFORMATION_REFRESH_TIME).is_some());
    assert!(get(&o, opt::IA_NA).is_none());
    // Temporary addresses and prefix delegation are not served.
    let mut ta = hex(DHCPCD_SOLICIT);
    put(&mut ta, opt::IA_TA, &[0, 0, 0, 7]);
    put(&mut ta, opt::IA_PD, &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = s.handle(&ta, GUEST_MAC, now).unwrap().unwrap();
    let o = options(&r.payload);
    assert_eq!(
        get(&o, opt::STATUS_CODE).unwrap()[..2],
        [0, 2],
        "NoAddrsAvail for IA_TA"
    );
    assert!(get(&o, opt::IA_PD).is_some());
}

#[test]
fn malformed_and_relayed_messages_are_errors() {
    let mut s = server();
    let now = Instant::now();
    let solicit = hex(DHCPCD_SOLICIT);
    for cut in [0, 1, 3, 6, 10] {
        assert!(
            s.handle(&solicit[..cut], GUEST_MAC, now).is_err(),
            "cut at {cut}"
        );
    }
    let mut overflow = solicit.clone();
    overflow[7] = 0xff; // client id length past the end
    assert_eq!(
        s.handle(&overflow, GUEST_MAC, now),
        Err(Dhcpv6Error::OptionOverflow {
            code: opt::CLIENTID
        })
    );
    assert_eq!(
        s.handle(&[12, 0, 0, 0], GUEST_MAC, now),
        Err(Dhcpv6Error::Relayed)
    );
    assert_eq!(
        s.handle(&[msg::SOLICIT, 1, 2, 3], GUEST_MAC, now),
        Err(Dhcpv6Error::MissingClientId(msg::SOLICIT))
    );
    assert_eq!(
        s.handle(&[msg::REPLY, 1, 2, 3], GUEST_MAC, now),
        Err(Dhcpv6Error::UnexpectedMessageType(msg::REPLY))
    );
    // Random bytes never panic.
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        let mut m = solicit.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % m.len();
            m[at] = (x >> 32) as u8;
        }
        let _ = s.handle(&m, GUEST_MAC, now);
    }
}
