//! `dhcp`: a sequence of guest DHCP messages into one
//! [`DhcpServer::handle`], the function the gateway calls for every UDP
//! datagram to port 67, with the clock moving between messages.
//!
//! Input: a byte picking the server configuration (the operator's, so a few
//! fixed variants: defaults, a domain and a long search list that needs RFC
//! 3396 splitting, options that cannot be encoded), then messages. A
//! message is either raw bytes or a well-formed BOOTREQUEST header with the
//! fuzzer's options after the magic cookie, so option parsing is reached
//! without the fuzzer having to find the 240-byte fixed part first.
//!
//! Every reply is checked: a BOOTREPLY with the request's `xid`, at least
//! 300 bytes, and an option area that parses and ends with END.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use airlock_testkit::Input;

use airlock_netcore::services::dhcp::{DhcpConfig, DhcpServer};

const MAX_MESSAGES: usize = 32;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

fn config(variant: u8) -> DhcpConfig {
    let mut c = DhcpConfig::default();
    match variant % 4 {
        0 => {}
        1 => {
            c.domain_name = Some("vm.example.internal".into());
            c.search_domains = vec![
                "a.example.internal".into(),
                "b.example.internal".into(),
                "example.org.".into(),
            ];
            c.dns_servers = vec![c.server_ip, Ipv4Addr::new(192, 168, 127, 254)];
        }
        2 => {
            c.mtu = 0;
            c.dns_servers.clear();
            c.lease_time = Duration::ZERO;
            c.domain_name = Some(String::new());
            c.search_domains = vec!["..".into(), "x".repeat(64)];
        }
        _ => {
            c.prefix_len = 33;
            c.lease_time = Duration::from_secs(u64::MAX / 2);
            c.domain_name = Some("d".repeat(255));
            c.search_domains = (0..40)
                .map(|i| format!("search{i}.some-long-label.example.internal"))
                .collect();
        }
    }
    c
}

pub fn fuzz_dhcp(data: &[u8]) {
    let mut input = Input::new(data);
    let mut server = DhcpServer::new(config(input.u8()));
    let start = Instant::now();
    let mut now = start;
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() {
            break;
        }
        now += Duration::from_secs(u64::from(input.u16()));
        let msg = if input.bool() {
            input.chunk(usize::from(u16::MAX)).to_vec()
        } else {
            built(&mut input)
        };
        if let Ok(Some(reply)) = server.handle(&msg, now) {
            check_reply(&msg, &reply.payload);
        }
        let _ = server.leases(now);
    }
}

/// A BOOTREQUEST with fixed fields from the input and its options.
fn built(input: &mut Input) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&input.u32().to_be_bytes()); // xid
    m[10..12].copy_from_slice(&input.u16().to_be_bytes()); // flags
    m[12..16].copy_from_slice(&input.u32().to_be_bytes()); // ciaddr
    let chaddr = input.bytes(6);
    m[28..28 + chaddr.len()].copy_from_slice(chaddr);
    // sname and file may carry options (overload, option 52).
    if input.bool() {
        let sname = input.chunk(64);
        m[44..44 + sname.len()].copy_from_slice(sname);
        let file = input.chunk(128);
        m[108..108 + file.len()].copy_from_slice(file);
    }
    m.extend_from_slice(&MAGIC_COOKIE);
    m.push(53); // message type: DISCOVER..INFORM, or anything
    m.push(1);
    m.push(input.u8() % 10);
    m.extend_from_slice(input.chunk(1200));
    m
}

fn check_reply(request: &[u8], reply: &[u8]) {
    assert!(reply.len() >= 300, "reply of {} bytes", reply.len());
    assert_eq!(reply[0], 2, "not a BOOTREPLY");
    assert_eq!(&reply[1..3], &[1, 6], "not Ethernet");
    assert_eq!(reply[4..8], request[4..8], "xid not echoed");
    assert_eq!(reply[236..240], MAGIC_COOKIE, "no magic cookie");
    let mut area = &reply[240..];
    loop {
        match area {
            [] => panic!("reply options end without END"),
            [255, ..] => break,
            [0, rest @ ..] => area = rest,
            [code, len, rest @ ..] if usize::from(*len) <= rest.len() => {
                assert!(*code != 53 || *len == 1, "bad message type option");
                area = &rest[usize::from(*len)..];
            }
            _ => panic!("reply option runs past the end: {area:02x?}"),
        }
    }
}
