//! `ipv6_services`: what a guest sends to the gateway's IPv6 services,
//! straight into them: DHCPv6 messages into [`Dhcpv6Server::handle`] (the
//! function the gateway calls for every datagram to port 547), with the
//! clock and the sender's MAC moving between messages, and ICMPv6 messages
//! into the Neighbor Discovery parser ([`ndp::parse`]).
//!
//! Input: a byte picking the server configuration (with or without search
//! domains), then messages. A DHCPv6 message is raw bytes or a well-formed
//! header (a client message type, a transaction id) with a Client
//! Identifier (usually) and the fuzzer's options, so option parsing is
//! reached without the fuzzer having to find a client id first; an NDP
//! message is raw bytes with a source address and hop limit.
//!
//! Every DHCPv6 reply is checked: an ADVERTISE or REPLY with the request's
//! transaction id, whose options all lie within the message.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use airlock_netcore::services::dhcpv6::Dhcpv6Server;
use airlock_netcore::services::ndp;
use airlock_netcore::EthernetAddress;
use airlock_testkit::Input;

use super::gateway_config;

const MAX_MESSAGES: usize = 32;
/// Client message types (RFC 8415 §7.3): SOLICIT .. INFORMATION-REQUEST,
/// and RELAY-FORW, which the server refuses.
const CLIENT_TYPES: [u8; 9] = [1, 3, 4, 5, 6, 8, 9, 11, 12];

pub fn fuzz_ipv6_services(data: &[u8]) {
    run(data);
}

/// The target's body; returns how many DHCPv6 replies the server sent.
pub fn run(data: &[u8]) -> usize {
    let mut replies = 0;
    let mut input = Input::new(data);
    let cfg = gateway_config(65520);
    let Some(v6) = cfg.ipv6.clone() else {
        return 0;
    };
    let mut server = Dhcpv6Server::new(&cfg, &v6);
    if input.bool() {
        server.set_search(&["corp.example.internal".into(), "example.org.".into()]);
    }
    let mut now = Instant::now();
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        now += Duration::from_secs(u64::from(input.u16()));
        match input.u8() % 3 {
            0 => {
                let mac = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, input.u8()]);
                let msg = input.chunk(usize::from(u16::MAX)).to_vec();
                replies += dhcpv6(&mut server, &msg, mac, now);
            }
            1 => {
                let mac = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, input.u8()]);
                let msg = built(&mut input);
                replies += dhcpv6(&mut server, &msg, mac, now);
            }
            _ => {
                let src: [u8; 16] = input.bytes(16).try_into().unwrap_or([0; 16]);
                let hop_limit = input.u8();
                let msg = input.chunk(usize::from(u16::MAX));
                let _ = ndp::parse(msg, Ipv6Addr::from(src), hop_limit);
            }
        }
        let _ = server.leases(now);
    }
    replies
}

/// 1 if the server replied (and the reply checked out), else 0.
fn dhcpv6(server: &mut Dhcpv6Server, msg: &[u8], mac: EthernetAddress, now: Instant) -> usize {
    match server.handle(msg, mac, now) {
        Ok(Some(reply)) => {
            check_reply(msg, &reply.payload);
            1
        }
        _ => 0,
    }
}

/// A client message: type, transaction id, a client id (unless the input
/// says otherwise), then the fuzzer's options.
fn built(input: &mut Input) -> Vec<u8> {
    let mut m = vec![CLIENT_TYPES[usize::from(input.u8()) % CLIENT_TYPES.len()]];
    m.extend_from_slice(input.bytes(3));
    m.resize(4, 0);
    if input.u8() % 8 != 0 {
        let duid = input.chunk(40);
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&(duid.len() as u16).to_be_bytes());
        m.extend_from_slice(duid);
    }
    m.extend_from_slice(input.chunk(1500));
    m
}

fn check_reply(request: &[u8], reply: &[u8]) {
    assert!(reply.len() >= 4, "reply of {} bytes", reply.len());
    assert!(
        reply[0] == 2 || reply[0] == 7,
        "reply type {} is neither ADVERTISE nor REPLY",
        reply[0]
    );
    assert_eq!(reply[1..4], request[1..4], "transaction id not echoed");
    let mut area = &reply[4..];
    while !area.is_empty() {
        let [_, _, l0, l1, rest @ ..] = area else {
            panic!("option header runs past the end: {area:02x?}");
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        assert!(len <= rest.len(), "option runs past the end: {area:02x?}");
        area = &rest[len..];
    }
}
