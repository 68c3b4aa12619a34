//! Starting inputs for the net targets, written in each target's input
//! encoding: what a real guest does (DHCP, ARP, DNS, TCP handshakes and
//! data to the echo servers, a kick of the TX queue with receive buffers
//! posted, API calls). `fuzzing/tests/` runs them and writes them to
//! `fuzz/seeds/<target>/` (`--ignored write_fuzz_seeds`).

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{checksum, IpProtocol};

use super::frame::{addr, op, port, tcp_flags, tcp_mode};

/// (target, seed name, bytes) for every net target.
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in net_frame() {
        out.push(("net_frame", name, bytes));
    }
    for (name, bytes) in dhcp() {
        out.push(("dhcp", name, bytes));
    }
    for (name, bytes) in dns() {
        out.push(("dns", name, bytes));
    }
    for (name, bytes) in net_chain() {
        out.push(("net_chain", name, bytes));
    }
    for (name, bytes) in api() {
        out.push(("api", name, bytes));
    }
    for (name, bytes) in ipv6_services() {
        out.push(("ipv6_services", name, bytes));
    }
    out
}

// ---- messages ------------------------------------------------------------------

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A DHCP client message as udhcpc lays it out (type, then options).
pub fn dhcp_message(msg_type: u8, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[28..34].copy_from_slice(&GUEST_MAC);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, msg_type]);
    for (code, data) in options {
        b.push(*code);
        b.push(data.len() as u8);
        b.extend_from_slice(data);
    }
    b.push(255);
    b.resize(b.len().max(300), 0);
    b
}

/// A DNS query: one question, RD set, optionally an OPT record.
pub fn dns_query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        m.push(0);
        m.extend_from_slice(&41u16.to_be_bytes());
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
    }
    m
}

/// An ARP request from the guest for `target`.
fn arp_request_frame(target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[192, 168, 127, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

// ---- net_frame -------------------------------------------------------------------

/// Builds a `net_frame` input step by step.
struct Steps(Vec<u8>);

impl Steps {
    fn new(setup: u8) -> Self {
        Steps(vec![setup])
    }

    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn long_chunk(&mut self, data: &[u8]) {
        self.u16(data.len() as u16);
        self.0.extend_from_slice(data);
    }

    fn udp(
        &mut self,
        src: Option<u8>,
        dst: u8,
        sport: u16,
        dport: u8,
        payload: &[u8],
    ) -> &mut Self {
        self.0.push(op::UDP);
        match src {
            None => self.0.push(0),
            Some(sel) => self.0.extend_from_slice(&[0xf0, sel]),
        }
        self.0.push(dst);
        self.u16(sport);
        self.0.push(dport);
        self.long_chunk(payload);
        self
    }

    /// A TCP segment; `dst`/`dport` are selectors, used unless the mode
    /// answers the last segment.
    fn tcp(&mut self, mode: u8, to: Option<(u8, u16, u8)>, flags: u8, payload: &[u8]) -> &mut Self {
        self.0.push(op::TCP);
        self.0.push(mode);
        if mode & tcp_mode::REPLY == 0 {
            let (dst, sport, dport) = to.unwrap_or((addr::GW, 40000, port::DNS));
            self.0.extend_from_slice(&[0, dst]);
            self.u16(sport);
            self.0.push(dport);
        }
        if mode & tcp_mode::SEQ_RELATIVE != 0 {
            self.0.push(0);
        } else {
            self.0.extend_from_slice(&1000u32.to_be_bytes());
        }
        if mode & tcp_mode::ACK_RELATIVE != 0 {
            self.0.push(0);
        } else {
            self.0.extend_from_slice(&0u32.to_be_bytes());
        }
        self.0.push(flags);
        self.u16(65535);
        self.u16(0);
        // MSS 1460, window scale 7 on SYNs.
        if flags & tcp_flags::SYN != 0 {
            self.0.extend_from_slice(&[8, 2, 4, 0x05, 0xb4, 3, 3, 7, 1]);
        } else {
            self.0.push(0);
        }
        self.long_chunk(payload);
        self
    }

    fn poll(&mut self, ms: u8) -> &mut Self {
        self.0.extend_from_slice(&[op::POLL, ms]);
        self
    }

    fn deliver(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[op::DELIVER, 255]);
        self
    }

    fn raw(&mut self, frame: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[op::RAW, 0]);
        self.long_chunk(frame);
        self
    }

    fn icmp_echo(&mut self, dst: u8, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[op::ICMP, 0, dst, 0, 0]);
        self.0.extend_from_slice(&0x0042_0001u32.to_be_bytes());
        self.long_chunk(data);
        self.0.push(0);
        self
    }

    /// Handshake, one request, the echo back, and a close, on a TCP flow
    /// to `dst`:`dport`.
    fn tcp_session(&mut self, dst: u8, dport: u8, request: &[u8]) -> &mut Self {
        let answer = tcp_mode::REPLY | tcp_mode::SEQ_RELATIVE | tcp_mode::ACK_RELATIVE;
        self.tcp(0, Some((dst, 40000, dport)), tcp_flags::SYN, &[])
            .poll(3)
            .deliver()
            .tcp(answer, None, tcp_flags::ACK, &[])
            .tcp(answer, None, tcp_flags::ACK | tcp_flags::PSH, request)
            .poll(3)
            .deliver()
            .poll(3)
            .deliver()
            .tcp(answer, None, tcp_flags::ACK, &[])
            .tcp(answer, None, tcp_flags::ACK | tcp_flags::FIN, &[])
            .poll(3)
            .deliver()
            .tcp(answer, None, tcp_flags::ACK, &[])
    }
}

/// An Ethernet + IPv6 frame from the guest carrying `l4` as `next`, its
/// ICMPv6, UDP or TCP checksum (at `csum_at` in `l4`) filled in.
fn ip6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next: IpProtocol,
    mut l4: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    if let Some(at) = csum_at {
        l4[at..at + 2].fill(0);
        let sum = !checksum::combine(&[
            checksum::pseudo_header_v6(&src, &dst, next, l4.len() as u32),
            checksum::data(&l4),
        ]);
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let mut f = vec![0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[u8::from(next), hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(data);
    ip6_frame(src, dst, 64, IpProtocol::Udp, l4, Some(6))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// What a Linux guest sends on an IPv6 link (captured from Linux 6.1 and
/// dhcpcd 9.4): DAD, a Router Solicitation, a Neighbor Solicitation for
/// the gateway, a DHCPv6 Solicit; then echo, DNS (AAAA) and TCP to the
/// gateway and the v6 host alias, and things a router must refuse: a
/// fragment, a spoofed source, hop limit 1.
fn ipv6_steps() -> Steps {
    use super::{GUEST6, GW6, HOST6};
    let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456"
        .parse()
        .unwrap_or(Ipv6Addr::UNSPECIFIED);
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let sn_guest: Ipv6Addr = "ff02::1:ff12:3456".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let sn_gw: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let all_dhcp: Ipv6Addr = "ff02::1:2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let dad = hex("8700681000000000fd616972c0a87f00505400fffe1234560e01b8a97e266f1c");
    let rs = hex("850071b5000000000101525400123456");
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&GW6.octets());
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&GUEST_MAC);
    let solicit = hex("011288ad0001000e0001000132a7f5e45254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000");
    let mut echo = vec![128, 0, 0, 0, 0, 7, 0, 1];
    echo.extend_from_slice(b"ping6");
    let aaaa = dns_query(7, "host.airlock.internal", 28, Some(1232));
    let mut syn = 40010u16.to_be_bytes().to_vec();
    syn.extend_from_slice(&super::peers().port.to_be_bytes());
    syn.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let mut steps = Steps::new(0);
    steps
        .raw(&ip6_frame(
            Ipv6Addr::UNSPECIFIED,
            sn_guest,
            255,
            IpProtocol::Icmpv6,
            dad,
            Some(2),
        ))
        .raw(&ip6_frame(
            ll,
            all_routers,
            255,
            IpProtocol::Icmpv6,
            rs,
            Some(2),
        ))
        .raw(&ip6_frame(ll, sn_gw, 255, IpProtocol::Icmpv6, ns, Some(2)))
        .raw(&udp6(ll, all_dhcp, 546, 547, &solicit))
        .deliver()
        .raw(&ip6_frame(
            GUEST6,
            GW6,
            64,
            IpProtocol::Icmpv6,
            echo.clone(),
            Some(2),
        ))
        .raw(&udp6(GUEST6, GW6, 5353, 53, &aaaa))
        .raw(&ip6_frame(
            GUEST6,
            HOST6,
            64,
            IpProtocol::Tcp,
            syn,
            Some(16),
        ))
        .poll(3)
        .deliver()
        .raw(&ip6_frame(
            GUEST6,
            GW6,
            64,
            IpProtocol::Ipv6Frag,
            vec![17, 0, 0, 1, 0, 0, 0, 9],
            None,
        ))
        .raw(&ip6_frame(
            GW6,
            HOST6,
            64,
            IpProtocol::Icmpv6,
            echo.clone(),
            Some(2),
        ))
        .raw(&ip6_frame(
            GUEST6,
            "2001:db8::1".parse().unwrap_or(GW6),
            1,
            IpProtocol::Icmpv6,
            echo,
            Some(2),
        ))
        .deliver();
    steps
}

fn net_frame() -> Vec<(&'static str, Vec<u8>)> {
    let discover = dhcp_message(1, &[(57, &576u16.to_be_bytes()), (55, &[1, 3, 6, 15, 26])]);
    let request = dhcp_message(
        3,
        &[
            (50, &[192, 168, 127, 2]),
            (54, &[192, 168, 127, 1]),
            (12, b"guest"),
        ],
    );
    let mut dhcp = Steps::new(0);
    dhcp.udp(
        Some(addr::UNSPECIFIED),
        addr::BROADCAST,
        68,
        port::DHCP,
        &discover,
    )
    .deliver()
    .udp(
        Some(addr::UNSPECIFIED),
        addr::BROADCAST,
        68,
        port::DHCP,
        &request,
    )
    .deliver();

    let mut arp = Steps::new(0);
    arp.raw(&arp_request_frame(Ipv4Addr::new(192, 168, 127, 1)))
        .raw(&arp_request_frame(Ipv4Addr::new(8, 8, 8, 8)))
        .raw(&arp_request_frame(Ipv4Addr::new(192, 168, 127, 2)))
        .deliver();

    let mut dns = Steps::new(0);
    dns.udp(
        None,
        addr::GW,
        5353,
        port::DNS,
        &dns_query(1, "host.airlock.internal", 1, None),
    )
    .udp(
        None,
        addr::GW,
        5353,
        port::DNS,
        &dns_query(2, "nothing.airlock.internal", 1, Some(1232)),
    )
    .udp(
        None,
        addr::GW,
        5354,
        port::DNS,
        &dns_query(3, "example.com", 28, None),
    )
    .poll(3)
    .deliver();

    let mut udp_echo = Steps::new(0);
    udp_echo
        .udp(None, addr::HOST, 41000, port::ECHO, b"hello over udp")
        .udp(None, addr::PUBLIC, 41001, port::ECHO, b"denied")
        .poll(3)
        .deliver();

    let mut proxy = Steps::new(0);
    proxy.tcp_session(
        addr::PROXY,
        port::PROXY,
        b"GET http://example.com/ HTTP/1.1\r\n\r\n",
    );
    let mut host = Steps::new(1);
    host.tcp_session(addr::HOST, port::ECHO, b"echo me");
    // A guest with checksum offload (setup bit 4): TCP frames to it carry
    // partial checksums, IPv4 UDP none.
    let mut offload = Steps::new(1 | 4);
    offload
        .tcp_session(addr::HOST, port::ECHO, b"echo me, partially summed")
        .udp(None, addr::HOST, 41002, port::ECHO, b"no checksum")
        .poll(3)
        .deliver();
    let mut dns_tcp = Steps::new(0);
    let mut framed = Vec::new();
    for q in [
        dns_query(7, "host.airlock.internal", 1, None),
        dns_query(8, "example.org", 1, None),
    ] {
        framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
        framed.extend_from_slice(&q);
    }
    dns_tcp.tcp_session(addr::GW, port::DNS, &framed);
    let mut refused = Steps::new(0);
    refused
        .tcp(
            0,
            Some((addr::PUBLIC, 40001, port::HTTP)),
            tcp_flags::SYN,
            &[],
        )
        .tcp(0, Some((addr::GW, 40002, port::HTTP)), tcp_flags::SYN, &[])
        .tcp(
            0,
            Some((addr::HOST, 40003, port::HTTP)),
            tcp_flags::ACK,
            b"stray",
        )
        .deliver();

    let mut ping = Steps::new(0);
    ping.icmp_echo(addr::GW, b"ping data")
        .icmp_echo(addr::HOST, b"")
        .icmp_echo(addr::PUBLIC, b"denied")
        .deliver();

    vec![
        ("dhcp", dhcp.0),
        ("arp", arp.0),
        ("dns-udp", dns.0),
        ("udp-echo", udp_echo.0),
        ("tcp-proxy-alias", proxy.0),
        ("tcp-host-alias", host.0),
        ("checksum-offload", offload.0),
        ("dns-tcp", dns_tcp.0),
        ("tcp-refused", refused.0),
        ("ping", ping.0),
        ("ipv6", ipv6_steps().0),
    ]
}

// ---- dhcp --------------------------------------------------------------------------

fn dhcp() -> Vec<(&'static str, Vec<u8>)> {
    let raw = |config: u8, msgs: &[Vec<u8>]| {
        let mut b = vec![config];
        for m in msgs {
            b.extend_from_slice(&[0, 1, 1]); // one second later, raw
            b.extend_from_slice(&(m.len() as u16).to_be_bytes());
            b.extend_from_slice(m);
        }
        b
    };
    let cid: &[u8] = &[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let discover = dhcp_message(
        1,
        &[
            (61, cid),
            (57, &576u16.to_be_bytes()),
            (55, &[1, 3, 6, 12, 15, 28, 42]),
        ],
    );
    let request = dhcp_message(
        3,
        &[
            (61, cid),
            (50, &[192, 168, 127, 2]),
            (54, &[192, 168, 127, 1]),
            (12, b"vm"),
        ],
    );
    let wrong = dhcp_message(3, &[(50, &[10, 0, 0, 9])]);
    let release = dhcp_message(7, &[(54, &[192, 168, 127, 1])]);
    let inform = dhcp_message(8, &[(57, &1500u16.to_be_bytes())]);
    let mut overloaded = dhcp_message(1, &[(52, &[3])]);
    overloaded[44..48].copy_from_slice(&[12, 2, b'h', b'n']);
    overloaded[108..112].copy_from_slice(&[57, 2, 2, 64]);
    let lifecycle = [discover, request, wrong, release, inform, overloaded];
    let mut built = vec![1u8];
    // Built: 10 s later, xid, flags (broadcast), ciaddr, chaddr, no
    // sname/file, REQUEST, options: requested address.
    built.extend_from_slice(&[0, 10, 0]);
    built.extend_from_slice(&7u32.to_be_bytes());
    built.extend_from_slice(&0x8000u16.to_be_bytes());
    built.extend_from_slice(&[0; 4]);
    built.extend_from_slice(&GUEST_MAC);
    built.extend_from_slice(&[0, 3]);
    let opts = [50u8, 4, 192, 168, 127, 2, 255];
    built.extend_from_slice(&(opts.len() as u16).to_be_bytes());
    built.extend_from_slice(&opts);
    vec![
        ("lifecycle-default", raw(0, &lifecycle)),
        ("lifecycle-search-list", raw(1, &lifecycle)),
        ("lifecycle-odd-config", raw(2, &lifecycle)),
        ("lifecycle-long-search-list", raw(3, &lifecycle)),
        ("built-request", built),
    ]
}

// ---- dns ---------------------------------------------------------------------------

fn dns() -> Vec<(&'static str, Vec<u8>)> {
    let queries = [
        dns_query(1, "host.airlock.internal", 1, None),
        dns_query(2, "HTTP.Airlock.Internal.", 255, Some(4096)),
        dns_query(3, "254.127.168.192.in-addr.arpa", 12, None),
        dns_query(4, "host.airlock.internal", 28, Some(512)),
        dns_query(5, "example.com", 1, None),
        {
            // EDNS version 1: BADVERS for a local name.
            let mut q = dns_query(6, "vm.airlock.internal", 1, Some(1232));
            let n = q.len();
            q[n - 5] = 1;
            q
        },
        {
            // A compression pointer in the question (not allowed to loop).
            let mut q = dns_query(7, "a", 1, None);
            q.truncate(12);
            q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            q
        },
    ];
    let mut udp = vec![0u8];
    for q in &queries {
        udp.extend_from_slice(&(q.len() as u16).to_be_bytes());
        udp.extend_from_slice(q);
    }
    let mut stream = Vec::new();
    for q in &queries[..5] {
        stream.extend_from_slice(&(q.len() as u16).to_be_bytes());
        stream.extend_from_slice(q);
    }
    let mut tcp = vec![1u8];
    for read in stream.chunks(37) {
        tcp.extend_from_slice(&(read.len() as u16).to_be_bytes());
        tcp.extend_from_slice(read);
    }
    // A local CNAME to an outside name, then the upstream's answer for the
    // target, compressed as servers write it: www.example.test CNAME
    // lb.example.test, lb.example.test A 10.1.1.1, a SOA for example.test.
    let chase = dns_query(8, "outside.airlock.internal", 1, Some(1232));
    let mut answer = Vec::new();
    for v in [8u16, 0x8180, 1, 2, 1, 0] {
        answer.extend_from_slice(&v.to_be_bytes());
    }
    answer.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
    answer.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c\x00\x05\x02lb\xc0\x10");
    answer.extend_from_slice(b"\xc0\x2e\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x01\x01\x01");
    answer.extend_from_slice(
        b"\xc0\x10\x00\x06\x00\x01\x00\x00\x00\x3c\x00\x21\x02ns\xc0\x10\x05admin\xc0\x10",
    );
    answer.extend_from_slice(&[0; 20]);
    let mut cname = vec![0u8];
    for m in [&chase, &answer] {
        cname.extend_from_slice(&(m.len() as u16).to_be_bytes());
        cname.extend_from_slice(m);
    }
    vec![
        ("udp-queries", udp),
        ("tcp-stream", tcp),
        ("udp-cname-chase", cname),
    ]
}

// ---- net_chain ---------------------------------------------------------------------

/// `queues::from_input` descriptor encodings used below.
const DESC_LOW_LEN16: u8 = 8; // LOW_BUFFERS + u16 offset, u16 length
const DESC_HIGH_LEN16: u8 = 9; // HIGH_BUFFERS + u16 offset, u16 length

fn desc(out: &mut Vec<u8>, mode: u8, offset: u16, len: u16, flags: u16, next: u16) {
    out.push(mode);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&next.to_be_bytes());
}

/// Queue sizes 16, TX descriptor 0 → one ARP request frame (with its
/// virtio-net header), RX descriptors 0..4 → 2 KiB writable buffers.
fn net_chain_input(features: u8, indirect: bool, steps: &[u8]) -> Vec<u8> {
    let frame = arp_request_frame(Ipv4Addr::new(192, 168, 127, 1));
    let packet_len = 12 + frame.len() as u16;
    let mut b = vec![features, 4, 4]; // sizes 1 << 4
    b.push(4);
    for i in 0..4u16 {
        desc(&mut b, DESC_HIGH_LEN16, i * 2048, 2048, 2, 0);
    }
    let mut low = vec![0u8; 12];
    low.extend_from_slice(&frame);
    if indirect {
        // TX descriptor 0 points at a two-entry indirect table after the
        // packet: header, then frame.
        let table_at = 0x100u16;
        b.push(1);
        desc(&mut b, DESC_LOW_LEN16, table_at, 32, 4, 0);
        low.resize(usize::from(table_at), 0);
        for (addr, len, flags, next) in [
            (0x8000u64, 12u32, 1u16, 1u16),
            (0x8000 + 12, u32::from(packet_len) - 12, 0, 0),
        ] {
            low.extend_from_slice(&addr.to_le_bytes());
            low.extend_from_slice(&len.to_le_bytes());
            low.extend_from_slice(&flags.to_le_bytes());
            low.extend_from_slice(&next.to_le_bytes());
        }
    } else {
        b.push(1);
        desc(&mut b, DESC_LOW_LEN16, 0, packet_len, 0, 0);
    }
    b.extend_from_slice(&(low.len() as u16).to_be_bytes());
    b.extend_from_slice(&low);
    b.extend_from_slice(&[0, 0]); // nothing in the high area
    b.extend_from_slice(steps);
    b
}

fn net_chain() -> Vec<(&'static str, Vec<u8>)> {
    // Guest turns (step byte 7): post RX buffers 0..3, queue TX chain 0;
    // then TX and RX events.
    let post_rx = [7, 0, 0, 3, 0, 1, 2, 3];
    let kick_tx = [7, 1, 0, 0, 0];
    let mut steps = Vec::new();
    steps.extend_from_slice(&post_rx);
    steps.extend_from_slice(&kick_tx);
    steps.extend_from_slice(&[0, 2, 3, 4, 5]);
    let mut tx_first = Vec::new();
    tx_first.extend_from_slice(&kick_tx);
    tx_first.extend_from_slice(&[0]);
    tx_first.extend_from_slice(&post_rx);
    tx_first.extend_from_slice(&[2]);
    vec![
        (
            "arp-mergeable-event-idx",
            net_chain_input(1 | 4, false, &steps),
        ),
        ("arp-plain", net_chain_input(0, false, &steps)),
        ("arp-indirect", net_chain_input(1, true, &steps)),
        (
            "arp-before-buffers",
            net_chain_input(1 | 2, false, &tx_first),
        ),
    ]
}

// ---- api ---------------------------------------------------------------------------

fn http(method: &str, path: &str, body: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: airlock\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn api() -> Vec<(&'static str, Vec<u8>)> {
    let expose = r#"{"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"}"#;
    let expose_udp = r#"{"local":":5353","remote":":53","protocol":"udp"}"#;
    let unexpose = r#"{"local":"127.0.0.1:8080","protocol":"tcp"}"#;
    let session = [
        http("POST", "/services/forwarder/expose", expose, ""),
        http(
            "POST",
            "/services/forwarder/expose",
            expose_udp,
            "Expect: 100-continue\r\n",
        ),
        http("GET", "/services/forwarder/all", "", ""),
        http("POST", "/services/forwarder/unexpose", unexpose, ""),
        http("HEAD", "/stats", "", ""),
        http("GET", "/flows", "", ""),
        http("GET", "/leases?x=1", "", "Connection: close\r\n"),
    ]
    .concat();
    let bad = [
        http(
            "POST",
            "/services/forwarder/expose",
            r#"{"local":"[::1]:80","remote":"10.0.0.1:80","extra":1}"#,
            "",
        ),
        http("DELETE", "/stats", "", ""),
        "GET /nope HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
    ]
    .concat();
    let dns = [
        http("POST", "/dns/add", r#"{"name":"db.test","value":"10.0.0.5"}"#, ""),
        http("POST", "/dns/add", r#"{"name":"*.apps.test","type":"AAAA","value":"fd00::9"}"#, ""),
        http("POST", "/dns/add", r#"{"name":"www.test","value":"db.test"}"#, ""),
        http("GET", "/dns", "", ""),
        http(
            "POST",
            "/services/dns/add",
            r#"{"Name":"dynamic.internal.","Records":[{"Name":"test","IP":"192.168.127.254"}],"DefaultIP":"10.0.0.1"}"#,
            "",
        ),
        http("GET", "/services/dns/all", "", ""),
        http("POST", "/dns/remove", r#"{"name":"db.test","value":"10.0.0.5"}"#, ""),
        http("POST", "/dns/remove", r#"{"name":"host.airlock.internal"}"#, ""),
    ]
    .concat();
    let mut dns_session = vec![0, 1];
    dns_session.extend_from_slice(dns.as_bytes());
    let mut one_byte_reads = vec![1, 1];
    one_byte_reads.extend_from_slice(session.as_bytes());
    let mut whole = vec![0, 1];
    whole.extend_from_slice(session.as_bytes());
    let mut errors = vec![0, 0];
    errors.extend_from_slice(bad.as_bytes());
    vec![
        ("session-byte-by-byte", one_byte_reads),
        ("session", whole),
        ("errors", errors),
        ("dns", dns_session),
    ]
}

// ---- ipv6_services --------------------------------------------------------------------

/// `ipv6_services` inputs: a captured dhcpcd Solicit (Rapid Commit) then a
/// Request for what it was offered, an Information-request, and the Router
/// and Neighbor Solicitations a Linux guest sends.
fn ipv6_services() -> Vec<(&'static str, Vec<u8>)> {
    let solicit = hex("011288ad0001000e0001000132a7f5e45254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000");
    let ll = "fe80::5054:ff:fe12:3456"
        .parse::<Ipv6Addr>()
        .unwrap_or(Ipv6Addr::UNSPECIFIED);
    let rs = hex("850071b5000000000101525400123456");
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&super::GW6.octets());
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&GUEST_MAC);
    // A raw DHCPv6 message from the guest's MAC, a second later.
    let raw = |msg: &[u8]| {
        let mut b = vec![0, 1, 0, 0x56];
        b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        b.extend_from_slice(msg);
        b
    };
    let ndp = |msg: &[u8]| {
        let mut b = vec![0, 1, 2];
        b.extend_from_slice(&ll.octets());
        b.push(255);
        b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        b.extend_from_slice(msg);
        b
    };
    // Solicit without Rapid Commit (option 14 dropped), then the Request.
    let plain_solicit = solicit[..solicit.len() - 4].to_vec();
    let mut request = plain_solicit.clone();
    request[0] = 3;
    request.extend_from_slice(&[0, 2, 0, 10, 0, 3, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
    let info = hex("0b0000010001000a000300015254001234560006000400170018");
    let mut both = vec![1];
    both.extend(raw(&plain_solicit));
    both.extend(raw(&request));
    let mut first = vec![1];
    first.extend(raw(&solicit));
    let mut information = vec![0];
    information.extend(raw(&info));
    let mut discovery = vec![0];
    discovery.extend(ndp(&rs));
    discovery.extend(ndp(&ns));
    vec![
        ("solicit-rapid-commit", first),
        ("solicit-then-request", both),
        ("information-request", information),
        ("router-and-neighbor-solicitation", discovery),
    ]
}
