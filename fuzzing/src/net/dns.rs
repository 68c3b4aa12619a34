//! `dns`: guest DNS queries through what the gateway does with them.
//!
//! - over UDP (first input byte even): each message goes to
//!   [`answer_local`] and, as the gateway's `dns_query` does, to [`plan`]
//!   with the fuzz targets' DNS settings (local zone, wildcard, a CNAME to
//!   an outside name); a malformed one is answered with [`error_reply`];
//! - over TCP (odd): the rest of the input is a byte stream cut into reads
//!   of fuzzer-chosen sizes, fed to one [`DnsTcpSession`].
//!
//! Every query that goes upstream for a local CNAME's target is answered
//! twice through [`Chase::finish`]: with itself (as the echo upstream of
//! the `net_frame` target does) and with the next fuzzer-chosen bytes, so
//! the decompression of an upstream's records sees hostile input too.
//!
//! Replies are checked: they answer the query's id, have QR set, and over
//! TCP every reply is whole and correctly length-prefixed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use airlock_testkit::Input;

use airlock_netcore::services::dns::{
    answer_local, error_reply, parse_query, plan, Chase, DnsTcpSession, DnsView, Forward, LiveDns,
    LocalOutcome, LocalRecords, Plan, Rcode,
};

const MAX_MESSAGES: usize = 32;

fn records() -> LocalRecords {
    let mut r = LocalRecords::new();
    for (name, ip) in [
        ("host.airlock.internal", Ipv4Addr::new(192, 168, 127, 254)),
        ("http.airlock.internal", Ipv4Addr::new(192, 168, 127, 253)),
        ("gateway.airlock.internal", Ipv4Addr::new(192, 168, 127, 1)),
        ("vm.airlock.internal", Ipv4Addr::new(192, 168, 127, 1)),
    ] {
        let _ = r.insert(name, ip);
    }
    r
}

pub fn fuzz_dns(data: &[u8]) {
    let mut input = Input::new(data);
    let records = records();
    let view = LiveDns::new(super::dns_settings()).view();
    if input.u8() & 1 == 0 {
        for _ in 0..MAX_MESSAGES {
            if input.is_empty() {
                break;
            }
            let msg = input.chunk(usize::from(u16::MAX));
            udp_query(msg, &records);
            if let Ok(p) = plan(msg, &view, None) {
                checked_plan(msg, p, &mut input);
            }
        }
    } else {
        tcp_stream(&mut input, view);
    }
}

/// Checks a plan's reply, or answers its upstream query as [`fuzz_dns`]
/// says.
fn checked_plan(msg: &[u8], p: Plan, input: &mut Input) {
    match p {
        Plan::Answer(reply) | Plan::NxDomain(reply) | Plan::NoUpstream(reply) => {
            check_reply(msg, &reply)
        }
        Plan::Forward(f) => chase(&f, input),
    }
}

fn chase(f: &Forward, input: &mut Input) {
    let Some(c) = &f.chase else {
        return;
    };
    if let Some(reply) = c.finish(&f.query) {
        check_reply(c.original(), &reply);
    }
    let upstream = input.chunk(1024);
    if let Some(reply) = Chase::finish(c, upstream) {
        check_reply(c.original(), &reply);
    }
}

fn udp_query(msg: &[u8], records: &LocalRecords) {
    match answer_local(msg, records) {
        Ok(LocalOutcome::Answer(reply)) => check_reply(msg, &reply),
        Ok(LocalOutcome::Forward) => {
            // The gateway reads the question to choose between NXDOMAIN
            // (its own zone), forwarding, and SERVFAIL (no upstream).
            let _ = parse_query(msg);
            for rcode in [Rcode::NxDomain, Rcode::ServFail] {
                if let Some(reply) = error_reply(msg, rcode) {
                    check_reply(msg, &reply);
                }
            }
        }
        Err(e) => {
            if let Some(reply) = e.reply_rcode().and_then(|rc| error_reply(msg, rc)) {
                check_reply(msg, &reply);
            }
        }
    }
}

fn tcp_stream(input: &mut Input, view: Arc<DnsView>) {
    let mut session = DnsTcpSession::new(view);
    let mut to_guest = Vec::new();
    for _ in 0..MAX_MESSAGES * 4 {
        if input.is_empty() {
            break;
        }
        let read = input.chunk(4096);
        let Ok(actions) = session.from_guest(read) else {
            // A broken stream: the gateway closes the connection.
            break;
        };
        to_guest.extend_from_slice(&actions.to_guest);
        for f in &actions.forward {
            chase(f, input);
        }
    }
    let mut rest = &to_guest[..];
    while !rest.is_empty() {
        let [hi, lo, body @ ..] = rest else {
            panic!("half a length prefix to the guest");
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(
            len >= 12 && len <= body.len(),
            "bad DNS/TCP frame of {len} bytes"
        );
        rest = &body[len..];
    }
}

fn check_reply(query: &[u8], reply: &[u8]) {
    assert!(reply.len() >= 12, "reply shorter than a header");
    assert_eq!(reply[..2], query[..2], "reply id differs from the query's");
    assert!(reply[2] & 0x80 != 0, "reply without QR");
}
