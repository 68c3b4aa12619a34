//! The gateway without a VM: frames built with `smoltcp::wire` go in, frames
//! come out of a `GuestTx` that records them, and the host side is real
//! sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::Gateway;
use crate::config::PublishSource;
use crate::config::{GatewayConfig, Ipv6Config};
use crate::flows::tcp::TcpLimits;
use crate::host::Target;
use crate::phy::{GuestSegmentation, GuestTx, TxPartial};
use crate::policy::Proto;
use crate::services::dhcp::DhcpConfig;
use crate::services::dns::{
    DnsSettings, LocalRecords, RecordData, RecordSource, ZoneSpec, ZoneTarget,
};
use crate::shared::{PolicySource, Shared};
use crate::stats::DropReason;
use crate::wire::{write_eth, ETH_HEADER, IPV4_HEADER};

pub const GW_MAC: EthernetAddress = EthernetAddress([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]);
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
pub const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);
pub const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);
pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 254);
pub const PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 1);
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0xfe);
pub const PROXY6: Ipv6Addr = Ipv6Addr::new(0xfd61, 0x6972, 0xc0a8, 0x7f00, 0, 0, 0, 0xfd);
/// The guest's SLAAC address: the modified EUI-64 of [`GUEST_MAC`].
pub const GUEST6: Ipv6Addr = Ipv6Addr::new(
    0xfd61, 0x6972, 0xc0a8, 0x7f00, 0x5054, 0x00ff, 0xfe12, 0x3456,
);

/// Records frames to the guest; `room` simulates guest receive buffers.
/// Without offloads by default; `offload` and `segmentation` play a guest
/// that took checksum and segmentation offload, `partial` records the
/// frames marked with a partial checksum (by index), larger TCP segments
/// among them.
#[derive(Default)]
pub struct Recorder {
    pub frames: Vec<Vec<u8>>,
    pub room: Option<usize>,
    pub offload: bool,
    pub segmentation: GuestSegmentation,
    pub partial: Vec<(usize, TxPartial)>,
}

impl GuestTx for Recorder {
    fn has_room(&self) -> bool {
        self.room.is_none_or(|r| self.frames.len() < r)
    }
    fn frame(&mut self, len: usize) -> &mut [u8] {
        self.frames.push(vec![0u8; len]);
        self.frames
            .last_mut()
            .map(|f| &mut f[..])
            .unwrap_or(&mut [])
    }
    fn csum_offload(&self) -> bool {
        self.offload
    }
    fn segmentation(&self) -> GuestSegmentation {
        self.segmentation
    }
    fn mark_partial(&mut self, partial: TxPartial) {
        assert!(
            self.offload,
            "a partial checksum for a guest without offload"
        );
        self.partial.push((self.frames.len() - 1, partial));
    }
}

pub fn config() -> GatewayConfig {
    GatewayConfig {
        gateway_mac: GW_MAC,
        gateway_ip: GW,
        prefix_len: 24,
        guest_ip: GUEST,
        host_ip: Some(HOST),
        proxy_ip: Ipv4Addr::new(192, 168, 127, 253),
        proxy: None,
        mtu: 65520,
        dhcp: DhcpConfig::default(),
        publish_source: PublishSource::Gateway,
        max_flows: 16,
        tcp: TcpLimits {
            buffer: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
        },
        udp_timeout: Duration::from_secs(60),
        ipv6: Some(Ipv6Config {
            prefix: PREFIX6,
            gateway: GW6,
            host: Some(HOST6),
            proxy: PROXY6,
            lease_time: Duration::from_secs(3600),
        }),
    }
}

fn ip_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8], &Ipv4Repr),
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ETH_HEADER + IPV4_HEADER + payload_len];
    write_eth(&mut buf, GUEST_MAC, GW_MAC, EthernetProtocol::Ipv4);
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]);
    repr.emit(&mut pkt, &ChecksumCapabilities::default());
    fill(pkt.payload_mut(), &repr);
    buf
}

pub fn tcp_frame(
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    data: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: if control == TcpControl::Syn {
            Some(7)
        } else {
            None
        },
        max_seg_size: if control == TcpControl::Syn {
            Some(65480)
        } else {
            None
        },
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: data,
    };
    ip_frame(GUEST, dst, IpProtocol::Tcp, repr.buffer_len(), |buf, ip| {
        repr.emit(
            &mut TcpPacket::new_unchecked(buf),
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            &ChecksumCapabilities::default(),
        )
    })
}

pub fn udp_frame(sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    ip_frame(GUEST, dst, IpProtocol::Udp, 8 + data.len(), |buf, ip| {
        repr.emit(
            &mut UdpPacket::new_unchecked(buf),
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            data.len(),
            |p| p.copy_from_slice(data),
            &ChecksumCapabilities::default(),
        )
    })
}

/// A TCP segment the gateway sent to the guest.
#[derive(Debug)]
pub struct Seg {
    pub src: SocketAddr,
    pub dst_port: u16,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub data: Vec<u8>,
}

pub fn parse_tcp(frame: &[u8]) -> Option<Seg> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    assert_eq!(
        eth.dst_addr(),
        GUEST_MAC,
        "frame not addressed to the guest"
    );
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    assert!(ip.verify_checksum());
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    let repr = TcpRepr::parse(
        &tcp,
        &ip.src_addr().into(),
        &ip.dst_addr().into(),
        &ChecksumCapabilities::default(),
    )
    .ok()?;
    Some(Seg {
        src: SocketAddr::from((ip.src_addr(), repr.src_port)),
        dst_port: repr.dst_port,
        control: repr.control,
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|a| a.0 as u32),
        data: repr.payload.to_vec(),
    })
}

/// The gateway's DNS at start: `host.airlock.internal` (A and AAAA), the
/// local zone `airlock.internal`, no resolvers.
pub fn dns_settings() -> DnsSettings {
    let mut records = LocalRecords::new();
    for data in [RecordData::A(HOST), RecordData::Aaaa(HOST6)] {
        records
            .add("host.airlock.internal", data, RecordSource::Builtin)
            .unwrap();
    }
    DnsSettings {
        source: "test".into(),
        zones: vec![ZoneSpec {
            name: "airlock.internal".into(),
            target: ZoneTarget::Local,
        }],
        records,
        ..DnsSettings::default()
    }
}

pub fn shared() -> Arc<Shared> {
    Shared::new(GUEST, PolicySource::default(), dns_settings(), None).unwrap()
}

pub fn gateway() -> (Gateway, Arc<Shared>) {
    let shared = shared();
    (Gateway::new(config(), shared.clone()).unwrap(), shared)
}

/// Drives host events and timers until `until` holds or 5 s pass.
pub fn pump(gw: &mut Gateway, tx: &mut Recorder, mut until: impl FnMut(&Recorder) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !until(tx) {
        assert!(
            Instant::now() < deadline,
            "condition not reached; frames: {:?}",
            tx.frames
                .iter()
                .filter_map(|f| parse_tcp(f))
                .collect::<Vec<_>>()
        );
        let mut fds = [
            libc::pollfd {
                fd: gw.host_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: gw.timer_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds and a bounded timeout.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        gw.host_events(tx).unwrap();
        gw.timers(tx);
    }
}

#[test]
fn arp_is_answered_for_gateway_aliases_and_off_link_only() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    for (target, answered) in [
        (GW, true),
        (HOST, true),
        (Ipv4Addr::new(10, 1, 2, 3), true),
        (Ipv4Addr::new(192, 168, 127, 77), false),
        (GUEST, false),
    ] {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: GUEST_MAC,
            source_protocol_addr: GUEST,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut f = vec![0u8; ETH_HEADER + repr.buffer_len()];
        write_eth(
            &mut f,
            GUEST_MAC,
            EthernetAddress::BROADCAST,
            EthernetProtocol::Arp,
        );
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_HEADER..]));
        tx.frames.clear();
        gw.guest_frame(&f, false, &mut tx);
        assert_eq!(tx.frames.len(), usize::from(answered), "ARP for {target}");
        if answered {
            let eth = EthernetFrame::new_checked(&tx.frames[0][..]).unwrap();
            let ArpRepr::EthernetIpv4 {
                source_hardware_addr,
                source_protocol_addr,
                ..
            } = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap()
            else {
                panic!()
            };
            assert_eq!(source_hardware_addr, GW_MAC);
            assert_eq!(source_protocol_addr, target);
        }
    }
}

#[test]
fn ping_to_gateway_and_host_alias_is_answered_locally() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    for dst in [GW, HOST] {
        let echo = Icmpv4Repr::EchoRequest {
            ident: 0x42,
            seq_no: 7,
            data: b"abcdef",
        };
        let f = ip_frame(GUEST, dst, IpProtocol::Icmp, echo.buffer_len(), |b, _| {
            echo.emit(
                &mut Icmpv4Packet::new_unchecked(b),
                &ChecksumCapabilities::default(),
            )
        });
        tx.frames.clear();
        gw.guest_frame(&f, false, &mut tx);
        assert_eq!(tx.frames.len(), 1);
        let eth = EthernetFrame::new_checked(&tx.frames[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.src_addr(), dst);
        let repr = Icmpv4Repr::parse(
            &Icmpv4Packet::new_checked(ip.payload()).unwrap(),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x42,
                seq_no: 7,
                data: b"abcdef"
            }
        );
    }
}

#[test]
fn tcp_to_host_alias_handshakes_only_after_host_connect_and_splices_both_ways() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();

    gw.guest_frame(
        &tcp_frame(40000, HOST, port, TcpControl::Syn, 1000, None, b""),
        false,
        &mut tx,
    );
    assert!(
        tx.frames.is_empty(),
        "SYN-ACK must wait for the host connect"
    );
    let (mut conn, _) = server.accept().unwrap();
    pump(&mut gw, &mut tx, |t| !t.frames.is_empty());
    let synack = parse_tcp(&tx.frames[0]).unwrap();
    assert_eq!(synack.control, TcpControl::Syn);
    assert_eq!(synack.src, SocketAddr::from((HOST, port)));
    assert_eq!(synack.dst_port, 40000);
    assert_eq!(synack.ack, Some(1001));
    let our_seq = synack.seq.wrapping_add(1);

    // Guest ACKs and sends data; it reaches the host server.
    tx.frames.clear();
    gw.guest_frame(
        &tcp_frame(
            40000,
            HOST,
            port,
            TcpControl::None,
            1001,
            Some(our_seq),
            b"GET / HTTP/1.0\r\n\r\n",
        ),
        false,
        &mut tx,
    );
    let mut buf = [0u8; 64];
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"GET / HTTP/1.0\r\n\r\n");

    // Host answers; the guest gets the bytes.
    conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
    pump(&mut gw, &mut tx, |t| {
        t.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| !s.data.is_empty())
    });
    let data: Vec<u8> = tx
        .frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .flat_map(|s| s.data)
        .collect();
    assert_eq!(data, b"HTTP/1.0 200 OK\r\n\r\nhello");
    assert_eq!(shared.stats.snapshot().flows.tcp.opened, 1);
}

#[test]
fn tcp_to_a_closed_port_gets_rst() {
    // Find a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(
        &tcp_frame(40001, HOST, port, TcpControl::Syn, 5, None, b""),
        false,
        &mut tx,
    );
    pump(&mut gw, &mut tx, |t| !t.frames.is_empty());
    let rst = parse_tcp(&tx.frames[0]).unwrap();
    assert_eq!(rst.control, TcpControl::Rst);
    assert_eq!(rst.ack, Some(6));
    assert_eq!(gw.flow_count(), 0);
    assert_eq!(shared.stats.snapshot().flows.tcp.refused, 1);
}

#[test]
fn udp_to_host_alias_round_trips_and_counts() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(&udp_frame(5000, HOST, port, b"ping"), false, &mut tx);
    let mut buf = [0u8; 16];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    server.send_to(b"pong", from).unwrap();
    pump(&mut gw, &mut tx, |t| !t.frames.is_empty());
    let eth = EthernetFrame::new_checked(&tx.frames[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (HOST, GUEST));
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (port, 5000));
    assert_eq!(udp.payload(), b"pong");
    assert_eq!(shared.stats.snapshot().flows.udp.opened, 1);
}

/// With no room in the guest's receive queue, a UDP flow's datagrams stay
/// in the kernel (not read and dropped), and flow once there is room.
#[test]
fn udp_waits_in_the_kernel_while_the_guest_has_no_room() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, shared) = gateway();
    let mut tx = Recorder {
        room: Some(0),
        ..Recorder::default()
    };
    gw.guest_frame(&udp_frame(5001, HOST, port, b"hi"), false, &mut tx);
    let mut buf = [0u8; 16];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (_, from) = server.recv_from(&mut buf).unwrap();
    for i in 0..3u8 {
        server.send_to(&[b'a' + i], from).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        gw.host_events(&mut tx).unwrap();
    }
    assert!(tx.frames.is_empty());
    assert!(gw.starved());
    assert_eq!(shared.stats.drop_count(DropReason::GuestRxFull), 0);

    tx.room = None;
    gw.guest_room(&mut tx);
    pump(&mut gw, &mut tx, |t| t.frames.len() == 3);
    let payloads: Vec<Vec<u8>> = tx
        .frames
        .iter()
        .map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            UdpPacket::new_checked(ip.payload())
                .unwrap()
                .payload()
                .to_vec()
        })
        .collect();
    assert_eq!(payloads, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn garbage_frames_are_dropped_and_counted() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    for f in [&b""[..], &[0u8; 5][..], &[0xffu8; 60][..]] {
        gw.guest_frame(f, false, &mut tx);
    }
    let mut bad_ip = udp_frame(1, HOST, 2, b"x");
    bad_ip[ETH_HEADER + 10] ^= 0xff; // break the IPv4 header checksum
    gw.guest_frame(&bad_ip, false, &mut tx);
    assert!(tx.frames.is_empty());
    assert!(shared.stats.drop_count(DropReason::Malformed) >= 3);
}

#[test]
fn proxy_alias_without_target_refuses() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(
        &tcp_frame(
            40002,
            Ipv4Addr::new(192, 168, 127, 253),
            3128,
            TcpControl::Syn,
            9,
            None,
            b"",
        ),
        false,
        &mut tx,
    );
    assert_eq!(parse_tcp(&tx.frames[0]).unwrap().control, TcpControl::Rst);
    let _ = Target::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)));
}

pub fn gateway_with(f: impl FnOnce(&mut GatewayConfig)) -> (Gateway, Arc<Shared>) {
    let mut cfg = config();
    f(&mut cfg);
    let shared = shared();
    (Gateway::new(cfg, shared.clone()).unwrap(), shared)
}

/// A DNS query for `name` type A.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// UDP payloads the gateway sent to the guest from `src_port`.
pub fn udp_payloads(tx: &Recorder, src_port: u16) -> Vec<Vec<u8>> {
    tx.frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            (ip.next_header() == IpProtocol::Udp && udp.src_port() == src_port)
                .then(|| udp.payload().to_vec())
        })
        .collect()
}

pub fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

#[test]
fn dns_local_names_nxdomain_zone_and_forwarding() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = resolver.local_addr().unwrap();
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[upstream], None, "test");
    let mut tx = Recorder::default();

    // A local name is answered by the gateway itself.
    gw.guest_frame(
        &udp_frame(3333, GW, 53, &dns_query(1, "host.airlock.internal")),
        false,
        &mut tx,
    );
    let replies = udp_payloads(&tx, 53);
    assert_eq!(replies.len(), 1);
    assert_eq!(rcode(&replies[0]), 0);
    assert!(
        replies[0].ends_with(&HOST.octets()),
        "answer carries the host alias"
    );

    // An unknown name in our zone: NXDOMAIN, and nothing goes upstream.
    tx.frames.clear();
    gw.guest_frame(
        &udp_frame(3334, GW, 53, &dns_query(2, "nope.airlock.internal")),
        false,
        &mut tx,
    );
    assert_eq!(rcode(&udp_payloads(&tx, 53)[0]), 3);

    // Anything else goes to the upstream, and its answer comes back from
    // the gateway's address.
    tx.frames.clear();
    let q = dns_query(3, "example.test");
    gw.guest_frame(&udp_frame(3335, GW, 53, &q), false, &mut tx);
    let mut buf = [0u8; 512];
    resolver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (n, from) = resolver.recv_from(&mut buf).unwrap();
    // The first datagram upstream is this query: the NXDOMAIN one never left.
    assert_eq!(&buf[..n], &q[..], "query forwarded unchanged");
    let mut answer = q.clone();
    answer[2] |= 0x80; // QR
    resolver.send_to(&answer, from).unwrap();
    pump(&mut gw, &mut tx, |t| !udp_payloads(t, 53).is_empty());
    assert_eq!(udp_payloads(&tx, 53)[0], answer);
}

#[test]
fn dns_without_upstream_is_servfail_and_garbage_is_formerr() {
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    gw.guest_frame(
        &udp_frame(3336, GW, 53, &dns_query(4, "example.test")),
        false,
        &mut tx,
    );
    assert_eq!(rcode(&udp_payloads(&tx, 53)[0]), 2);
    tx.frames.clear();
    let mut bad = dns_query(5, "example.test");
    bad.truncate(15);
    gw.guest_frame(&udp_frame(3337, GW, 53, &bad), false, &mut tx);
    assert_eq!(rcode(&udp_payloads(&tx, 53)[0]), 1);
}

/// Completes a guest handshake with the gateway for `dst:port`; returns the
/// gateway's next sequence number.
pub fn handshake(gw: &mut Gateway, tx: &mut Recorder, sport: u16, dst: Ipv4Addr, port: u16) -> u32 {
    gw.guest_frame(
        &tcp_frame(sport, dst, port, TcpControl::Syn, 100, None, b""),
        false,
        tx,
    );
    pump(gw, tx, |t| {
        t.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| s.control == TcpControl::Syn)
    });
    let synack = tx
        .frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .find(|s| s.control == TcpControl::Syn)
        .unwrap();
    tx.frames.clear();
    let next = synack.seq.wrapping_add(1);
    gw.guest_frame(
        &tcp_frame(sport, dst, port, TcpControl::None, 101, Some(next), b""),
        false,
        tx,
    );
    next
}

pub fn guest_bytes(tx: &Recorder) -> Vec<u8> {
    tx.frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .flat_map(|s| s.data)
        .collect()
}

#[test]
fn dns_over_tcp_answers_local_and_relays_to_the_upstream() {
    let resolver = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = resolver.local_addr().unwrap();
    let (mut gw, shared) = gateway();
    shared.dns_set_upstreams(&[upstream], None, "test");
    let mut tx = Recorder::default();
    let ack = handshake(&mut gw, &mut tx, 41000, GW, 53);

    let local = dns_query(7, "host.airlock.internal");
    let remote = dns_query(8, "example.test");
    let mut stream = Vec::new();
    for q in [&local, &remote] {
        stream.extend_from_slice(&(q.len() as u16).to_be_bytes());
        stream.extend_from_slice(q);
    }
    gw.guest_frame(
        &tcp_frame(41000, GW, 53, TcpControl::Psh, 101, Some(ack), &stream),
        false,
        &mut tx,
    );
    // The local answer arrives without any upstream.
    pump(&mut gw, &mut tx, |t| guest_bytes(t).len() > 2);
    let got = guest_bytes(&tx);
    let len = u16::from_be_bytes([got[0], got[1]]) as usize;
    assert_eq!(&got[2..4], &7u16.to_be_bytes());
    assert_eq!(rcode(&got[2..2 + len]), 0);

    // The other query reaches the upstream over TCP, framed; its answer is relayed.
    let (mut up, _) = resolver.accept().unwrap();
    up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 2 + remote.len()];
    up.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[2..], &remote[..]);
    let mut answer = remote.clone();
    answer[2] |= 0x80;
    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&answer);
    up.write_all(&framed).unwrap();
    let before = guest_bytes(&tx).len();
    pump(&mut gw, &mut tx, |t| {
        guest_bytes(t).len() >= before + framed.len()
    });
    assert!(guest_bytes(&tx).ends_with(&framed));
}

#[test]
fn flow_limit_refuses_new_connections_with_rst() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, shared) = gateway_with(|c| c.max_flows = 2);
    let mut tx = Recorder::default();
    for sport in [42000, 42001] {
        gw.guest_frame(
            &tcp_frame(sport, HOST, port, TcpControl::Syn, 1, None, b""),
            false,
            &mut tx,
        );
    }
    assert_eq!(gw.flow_count(), 2);
    tx.frames.clear();
    gw.guest_frame(
        &tcp_frame(42002, HOST, port, TcpControl::Syn, 1, None, b""),
        false,
        &mut tx,
    );
    let rst = parse_tcp(&tx.frames[0]).unwrap();
    assert_eq!((rst.control, rst.dst_port), (TcpControl::Rst, 42002));
    assert_eq!(shared.stats.drop_count(DropReason::FlowLimit), 1);
    assert_eq!(gw.flow_count(), 2);
}

#[test]
fn flow_limit_refuses_new_udp_flows_with_icmp() {
    let (mut gw, shared) = gateway_with(|c| c.max_flows = 1);
    let mut tx = Recorder::default();
    gw.guest_frame(&udp_frame(5001, HOST, 9, b"first"), false, &mut tx);
    assert_eq!(gw.flow_count(), 1);
    assert!(tx.frames.is_empty(), "{:?}", tx.frames);
    gw.guest_frame(&udp_frame(5002, HOST, 9, b"second"), false, &mut tx);
    assert_eq!(gw.flow_count(), 1);
    let eth = EthernetFrame::new_checked(&tx.frames[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    // Administratively prohibited, quoting the refused datagram's ports.
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (smoltcp::wire::Icmpv4Message::DstUnreachable, 13)
    );
    let quoted = Ipv4Packet::new_checked(icmp.data()).unwrap();
    assert_eq!(&quoted.payload()[..2], &5002u16.to_be_bytes());
    assert_eq!(shared.stats.drop_count(DropReason::FlowLimit), 1);
}

#[test]
fn fin_and_rst_propagate_both_ways() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();

    // Guest FIN → host sees EOF, and can still send; host FIN → guest FIN.
    let ack = handshake(&mut gw, &mut tx, 43000, HOST, port);
    let (mut conn, _) = server.accept().unwrap();
    gw.guest_frame(
        &tcp_frame(43000, HOST, port, TcpControl::Fin, 101, Some(ack), b""),
        false,
        &mut tx,
    );
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "host sees the guest's FIN");
    conn.write_all(b"bye").unwrap();
    drop(conn);
    pump(&mut gw, &mut tx, |t| {
        t.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| s.control == TcpControl::Fin)
    });
    assert_eq!(guest_bytes(&tx), b"bye");
    // The guest acknowledges the FIN: the flow is finished and forgotten.
    let fin = tx
        .frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .find(|s| s.control == TcpControl::Fin)
        .unwrap();
    let fin_end = fin.seq.wrapping_add(fin.data.len() as u32 + 1);
    gw.guest_frame(
        &tcp_frame(43000, HOST, port, TcpControl::None, 102, Some(fin_end), b""),
        false,
        &mut tx,
    );
    assert_eq!(gw.flow_count(), 0, "closed flow retired");

    // Host RST → guest RST.
    tx.frames.clear();
    let _ = handshake(&mut gw, &mut tx, 43001, HOST, port);
    let (conn, _) = server.accept().unwrap();
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(conn);
    pump(&mut gw, &mut tx, |t| {
        t.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| s.control == TcpControl::Rst)
    });

    // Guest RST → host connection reset.
    tx.frames.clear();
    let ack = handshake(&mut gw, &mut tx, 43002, HOST, port);
    let (mut conn, _) = server.accept().unwrap();
    gw.guest_frame(
        &tcp_frame(43002, HOST, port, TcpControl::Rst, 101, Some(ack), b""),
        false,
        &mut tx,
    );
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let err = conn.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(gw.flow_count(), 0, "every flow is gone");
}

#[test]
fn a_host_that_does_not_read_closes_the_guests_window() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut gw, _) = gateway();
    let mut tx = Recorder::default();
    let ack = handshake(&mut gw, &mut tx, 44000, HOST, port);
    let (conn, _) = server.accept().unwrap();
    // Send far more than the host socket + our 64 KiB buffer can hold.
    let chunk = vec![7u8; 32 * 1024];
    let mut seq = 101u32;
    let mut last_window = u16::MAX;
    for _ in 0..400 {
        tx.frames.clear();
        gw.guest_frame(
            &tcp_frame(44000, HOST, port, TcpControl::Psh, seq, Some(ack), &chunk),
            false,
            &mut tx,
        );
        seq = seq.wrapping_add(chunk.len() as u32);
        // The window the gateway advertised in its latest segment.
        let Some(last) = tx.frames.last() else {
            continue;
        };
        let eth = EthernetFrame::new_checked(&last[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        last_window = TcpPacket::new_checked(ip.payload()).unwrap().window_len();
        if last_window == 0 {
            break;
        }
    }
    assert_eq!(last_window, 0, "the guest must be told to stop");
    drop(conn);
}

fn shared_with(policy: PolicySource, audit: Option<&std::path::Path>) -> Arc<Shared> {
    let audit = audit.map(|p| airlock_common::audit::AuditLog::open(p).unwrap());
    Shared::new(GUEST, policy, dns_settings(), audit).unwrap()
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn egress_policy_denies_with_rst_audit_and_counters() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let policy = PolicySource {
        cli_rules: vec![crate::policy::Rule::parse(
            crate::policy::Action::Deny,
            &format!("{HOST}:{port}/tcp"),
        )
        .unwrap()],
        default: None,
        file: None,
    };
    let shared = shared_with(policy, Some(&audit));
    let mut gw = Gateway::new(config(), shared.clone()).unwrap();
    let mut tx = Recorder::default();
    gw.guest_frame(
        &tcp_frame(45000, HOST, port, TcpControl::Syn, 1, None, b""),
        false,
        &mut tx,
    );
    assert_eq!(parse_tcp(&tx.frames[0]).unwrap().control, TcpControl::Rst);
    // The guest retrying is refused again but audited once.
    gw.guest_frame(
        &tcp_frame(45000, HOST, port, TcpControl::Syn, 1, None, b""),
        false,
        &mut tx,
    );
    assert_eq!(gw.flow_count(), 0);
    assert_eq!(shared.stats.drop_count(DropReason::Policy), 2);
    let recs = audit_lines(&audit);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["event"], "flow-deny");
    assert_eq!(recs[0]["remote"], format!("{HOST}:{port}"));
    assert_eq!(
        recs[0]["decision"],
        format!("deny (rule 1: deny {HOST}:{port}/tcp)")
    );
    // UDP to a denied destination: ICMP administratively prohibited.
    let policy = PolicySource {
        cli_rules: vec![],
        default: Some(crate::policy::Action::Deny),
        file: None,
    };
    let mut gw = Gateway::new(config(), shared_with(policy, None)).unwrap();
    tx.frames.clear();
    gw.guest_frame(&udp_frame(5001, HOST, 9, b"x"), false, &mut tx);
    let eth = EthernetFrame::new_checked(&tx.frames[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (smoltcp::wire::Icmpv4Message::DstUnreachable, 13)
    );
}

#[test]
fn published_tcp_port_carries_a_host_client_into_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let shared = shared_with(PolicySource::default(), Some(&audit));
    let host_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = airlock_api::parse_publish(&format!("{host_port}:80"), GUEST).unwrap();
    shared.publish(&spec).unwrap();
    let (mut gw, mut tx) = (
        Gateway::new(config(), shared.clone()).unwrap(),
        Recorder::default(),
    );
    // The guest has to be known (its MAC) before clients are carried in.
    announce(&mut gw, &mut tx);
    tx.frames.clear();

    let mut client = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
    pump(&mut gw, &mut tx, |t| !t.frames.is_empty());
    let syn = parse_tcp(&tx.frames[0]).unwrap();
    assert_eq!(
        (syn.control, syn.dst_port, syn.ack),
        (TcpControl::Syn, 80, None)
    );
    assert_eq!(
        syn.src.ip(),
        std::net::IpAddr::V4(GW),
        "default source is the gateway"
    );
    let src_port = syn.src.port();
    // The guest accepts: SYN-ACK from 192.168.127.2:80.
    let synack = reply_frame(
        80,
        src_port,
        TcpControl::Syn,
        5000,
        syn.seq.wrapping_add(1),
        b"",
    );
    tx.frames.clear();
    gw.guest_frame(&synack, false, &mut tx);
    client.write_all(b"ping from host").unwrap();
    pump(&mut gw, &mut tx, |t| {
        t.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| !s.data.is_empty())
    });
    let data: Vec<u8> = tx
        .frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .flat_map(|s| s.data)
        .collect();
    assert_eq!(data, b"ping from host");
    // The guest answers and then resets; the client gets the bytes, then a reset.
    let our_next = syn.seq.wrapping_add(1);
    gw.guest_frame(
        &reply_frame(80, src_port, TcpControl::Psh, 5001, our_next + 14, b"pong"),
        false,
        &mut tx,
    );
    let mut buf = [0u8; 4];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    gw.guest_frame(
        &reply_frame(80, src_port, TcpControl::Rst, 5005, our_next + 14, b""),
        false,
        &mut tx,
    );
    let mut rest = [0u8; 8];
    let err = client.read(&mut rest);
    assert!(
        matches!(err, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    let recs = audit_lines(&audit);
    assert_eq!(recs[0]["event"], "publish");
    assert!(recs.iter().any(|r| r["event"] == "flow-open"
        && r["direction"] == "inbound"
        && r["guest"] == "192.168.127.2:80"));
}

/// A TCP segment from the guest's port `sport` to the gateway's `dport`.
fn reply_frame(
    sport: u16,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: u32,
    data: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: 65535,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(65480),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: data,
    };
    ip_frame(GUEST, GW, IpProtocol::Tcp, repr.buffer_len(), |buf, ip| {
        repr.emit(
            &mut TcpPacket::new_unchecked(buf),
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            &ChecksumCapabilities::default(),
        )
    })
}

#[test]
fn published_tcp_port_without_guest_listener_resets_the_client_promptly() {
    let shared = shared();
    let host_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    shared
        .publish(&airlock_api::parse_publish(&format!("{host_port}:81"), GUEST).unwrap())
        .unwrap();
    let (mut gw, mut tx) = (
        Gateway::new(config(), shared.clone()).unwrap(),
        Recorder::default(),
    );
    announce(&mut gw, &mut tx);
    tx.frames.clear();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
    pump(&mut gw, &mut tx, |t| !t.frames.is_empty());
    let syn = parse_tcp(&tx.frames[0]).unwrap();
    // The guest's stack answers a SYN to a closed port with RST/ACK.
    gw.guest_frame(
        &reply_frame(
            81,
            syn.src.port(),
            TcpControl::Rst,
            0,
            syn.seq.wrapping_add(1),
            b"",
        ),
        false,
        &mut tx,
    );
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let r = client.read(&mut buf);
    assert!(
        matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert_eq!(gw.flow_count(), 0);
}

#[test]
fn published_udp_port_round_trips_to_the_right_client() {
    let shared = shared();
    let host_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    shared
        .publish(&airlock_api::parse_publish(&format!("{host_port}:5353/udp"), GUEST).unwrap())
        .unwrap();
    let (mut gw, mut tx) = (
        Gateway::new(config(), shared.clone()).unwrap(),
        Recorder::default(),
    );
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"from a", ("127.0.0.1", host_port)).unwrap();
    b.send_to(b"from b", ("127.0.0.1", host_port)).unwrap();
    pump(&mut gw, &mut tx, |t| t.frames.len() >= 2);
    // Each client got its own source port on the guest side.
    let mut seen = Vec::new();
    for f in &tx.frames {
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((ip.dst_addr(), udp.dst_port()), (GUEST, 5353));
        seen.push((udp.src_port(), udp.payload().to_vec()));
    }
    assert_ne!(seen[0].0, seen[1].0);
    // The guest answers each; the answers reach the right client.
    for (port, data) in &seen {
        let reply = [b"re: ".as_slice(), data].concat();
        gw.guest_frame(&udp_frame(5353, GW, *port, &reply), false, &mut tx);
    }
    let mut buf = [0u8; 32];
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = a.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"re: from a");
    let n = b.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"re: from b");
}

#[test]
fn policy_reload_closes_flows_it_now_denies() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "allow 0.0.0.0/0\n").unwrap();
    let shared = shared_with(
        PolicySource {
            cli_rules: vec![],
            default: None,
            file: Some(rules.clone()),
        },
        None,
    );
    let (mut gw, mut tx) = (
        Gateway::new(config(), shared.clone()).unwrap(),
        Recorder::default(),
    );
    let _ack = handshake(&mut gw, &mut tx, 46000, HOST, port);
    let (mut conn, _) = server.accept().unwrap();
    assert_eq!(gw.flow_count(), 1);
    std::fs::write(&rules, "deny 192.168.127.254\n").unwrap();
    shared.reload_policy().unwrap();
    tx.frames.clear();
    gw.control(&mut tx);
    assert_eq!(gw.flow_count(), 0);
    assert!(
        tx.frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .any(|s| s.control == TcpControl::Rst),
        "guest reset"
    );
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    assert!(conn.read(&mut buf).is_err(), "host side reset");
    // A broken file keeps the old policy.
    std::fs::write(&rules, "nonsense\n").unwrap();
    assert!(shared.reload_policy().is_err());
    assert!(!shared
        .policy()
        .decide(Proto::Tcp, HOST.into(), Some(1))
        .allowed());
}

/// The guest ARPs for the gateway (which teaches the gateway its MAC).
fn announce(gw: &mut Gateway, tx: &mut Recorder) {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GW,
    };
    let mut f = vec![0u8; ETH_HEADER + repr.buffer_len()];
    write_eth(
        &mut f,
        GUEST_MAC,
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
    );
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_HEADER..]));
    gw.guest_frame(&f, false, tx);
    tx.frames.clear();
}
