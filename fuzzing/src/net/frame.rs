//! `net_frame`: a sequence of guest Ethernet frames into one [`Gateway`],
//! the way the TX virtqueue hands them over ([`Gateway::guest_frame`] with
//! a [`Backlog`] as the guest side), interleaved with host-socket and timer
//! rounds and the guest taking frames off the backlog.
//!
//! Input: one setup byte (MTU, backlog size, checksum offload), then steps.
//! Besides raw frames, steps build well-formed ARP, UDP, TCP, ICMP and other
//! IPv4 packets with correct checksums (a fuzzer would hardly find those),
//! and TCP segments can take their sequence and acknowledgement numbers
//! relative to the last segment the gateway sent, so handshakes and data
//! exchanges with the echo servers get past smoltcp's random ISN.
//!
//! Every frame the gateway emits is checked: a well-formed Ethernet frame no
//! larger than the MTU, and for IPv4 a valid header checksum, a total length
//! that fits, and valid L4 checksums — with checksum offload, TCP frames
//! carry the pseudo-header's sum instead and are marked partial at their
//! TCP header, and IPv4 UDP may go without a checksum.

use std::net::Ipv4Addr;

use airlock_testkit::Input;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, TcpSeqNumber, UdpPacket,
};

use super::{gateway_config, peers, shared, GUEST, GUEST_MAC, GW, GW_MAC, HOST, PROXY, PROXY_PORT};
use airlock_netcore::{Backlog, Gateway, GuestTx, TxPartial};

/// An Ethernet II header.
const ETH_HEADER: usize = 14;
/// An IPv4 header without options.
const IPV4_HEADER: usize = 20;

/// Writes an Ethernet header into the first 14 bytes of `buf`.
fn write_eth(buf: &mut [u8], src: EthernetAddress, dst: EthernetAddress, ty: EthernetProtocol) {
    EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype: ty,
    }
    .emit(&mut EthernetFrame::new_unchecked(buf));
}

/// Steps per input: enough for a handshake, data and teardown on a few
/// flows, few enough that one input stays fast.
const MAX_STEPS: usize = 96;
/// Longest wait for host sockets in one poll step.
const MAX_POLL_MS: u8 = 3;
/// Largest L4 payload a built packet gets (fits a 16-bit IPv4 total length
/// with a full-size TCP header).
const MAX_PAYLOAD: usize = 65_535 - IPV4_HEADER - 60;

/// The last TCP segment the gateway sent to the guest.
#[derive(Clone, Copy, Debug)]
struct LastSeg {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    /// Sequence space it used (payload, plus one each for SYN and FIN).
    len: u32,
}

struct Harness {
    gw: Gateway,
    backlog: Backlog,
    mtu: usize,
    offload: bool,
    last: Option<LastSeg>,
    received: Received,
}

pub fn fuzz_net_frame(data: &[u8]) {
    run(data);
}

/// Frames the guest received, by kind (for the harness's own tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    pub arp: usize,
    pub udp: usize,
    pub icmp: usize,
    pub tcp: usize,
    /// TCP payload bytes.
    pub tcp_data: usize,
}

/// Runs one input; returns what the guest received.
pub fn run(data: &[u8]) -> Received {
    let mut input = Input::new(data);
    let setup = input.u8();
    let mtu = if setup & 1 != 0 { 1500 } else { 65_520 };
    let backlog_bytes = if setup & 2 != 0 { 4096 } else { 1 << 20 };
    let offload = setup & 4 != 0;
    let mut backlog = Backlog::new(backlog_bytes);
    backlog.set_offload(offload);
    let gw = Gateway::new(gateway_config(mtu), shared()).expect("cannot create the gateway");
    let mut h = Harness {
        gw,
        backlog,
        mtu,
        offload,
        last: None,
        received: Received::default(),
    };
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        h.step(&mut input);
    }
    h.poll(0);
    h.deliver(usize::MAX);
    // What the control API would show, then the guest goes away.
    let _ = (h.gw.flows(), h.gw.leases());
    h.gw.shutdown();
    h.deliver(usize::MAX);
    h.received
}

/// Step kinds (the first byte of a step, modulo their count).
pub mod op {
    pub const RAW: u8 = 0;
    pub const ARP: u8 = 1;
    pub const UDP: u8 = 2;
    pub const TCP: u8 = 3;
    pub const ICMP: u8 = 4;
    pub const OTHER_IP: u8 = 5;
    pub const POLL: u8 = 6;
    pub const DELIVER: u8 = 7;
    pub const CONTROL: u8 = 8;
    pub const BURST: u8 = 9;
    pub const COUNT: u8 = 10;
}

/// Address selectors (modulo 16; 12 and up: an address from the input).
pub mod addr {
    pub const GUEST: u8 = 0;
    pub const GW: u8 = 1;
    pub const HOST: u8 = 2;
    pub const PROXY: u8 = 3;
    pub const BROADCAST: u8 = 4;
    pub const SUBNET_BROADCAST: u8 = 5;
    pub const IN_SUBNET: u8 = 6;
    /// TEST-NET-3: off-link, denied by the policy.
    pub const PUBLIC: u8 = 7;
    pub const LOOPBACK: u8 = 8;
    pub const UNSPECIFIED: u8 = 9;
    pub const MULTICAST: u8 = 10;
    /// The source of the last TCP segment to the guest.
    pub const LAST_PEER: u8 = 11;
}

/// Port selectors (modulo 8; 6 and up: a port from the input).
pub mod port {
    pub const DNS: u8 = 0;
    pub const DHCP: u8 = 1;
    pub const DHCP_CLIENT: u8 = 2;
    pub const PROXY: u8 = 3;
    /// The echo servers' port (allowed on the host alias).
    pub const ECHO: u8 = 4;
    pub const HTTP: u8 = 5;
}

/// Bits of a TCP step's mode byte.
pub mod tcp_mode {
    /// Answer the last segment: its addresses and ports, swapped.
    pub const REPLY: u8 = 1;
    /// Sequence number: the last segment's ack plus a signed byte.
    pub const SEQ_RELATIVE: u8 = 2;
    /// Ack number: the end of the last segment plus a signed byte.
    pub const ACK_RELATIVE: u8 = 4;
    pub const BAD_CHECKSUM: u8 = 8;
    /// Marked NEEDS_CSUM: the gateway takes the guest's word for it.
    pub const PARTIAL: u8 = 16;
}

/// TCP header flag bits, as on the wire.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

impl Harness {
    fn step(&mut self, input: &mut Input) {
        match input.u8() % op::COUNT {
            op::RAW => {
                let partial = input.bool();
                let frame = input.chunk(usize::from(u16::MAX)).to_vec();
                self.send(&frame, partial);
            }
            op::ARP => self.arp(input),
            op::UDP => self.udp(input),
            op::TCP => self.tcp(input),
            op::ICMP => self.icmp(input),
            op::OTHER_IP => self.other_ip(input),
            op::POLL => {
                let ms = input.u8() % (MAX_POLL_MS + 1);
                self.poll(i32::from(ms));
            }
            op::DELIVER => {
                let n = usize::from(input.u8());
                self.deliver(n);
            }
            // The control event (ports or policy changed).
            op::CONTROL => self.gw.control(&mut self.backlog),
            op::BURST => {
                // Several datagrams at once, as one TX kick with a full
                // queue delivers them.
                for _ in 0..(input.u8() % 8) {
                    self.udp(input);
                }
            }
            _ => unreachable!("steps are taken modulo op::COUNT"),
        }
        self.deliver(0);
    }

    fn send(&mut self, frame: &[u8], partial_csum: bool) {
        self.gw.guest_frame(frame, partial_csum, &mut self.backlog);
    }

    /// One round of the device's host-socket and timer events.
    fn poll(&mut self, wait_ms: i32) {
        let mut fds = [
            libc::pollfd {
                fd: self.gw.host_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.gw.timer_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two initialised pollfds that lives
        // across the call, and its length is passed with it.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        // An error here would stop the device's worker: the guest must not
        // be able to cause one.
        if let Err(e) = self.gw.host_events(&mut self.backlog) {
            panic!("host_events failed: {e}");
        }
        self.gw.timers(&mut self.backlog);
    }

    /// The guest takes up to `n` frames (as the RX flush does), then the
    /// gateway hears there is room, as the device's dispatch tells it.
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(frame) = self.backlog.front() else {
                break;
            };
            let partial = self.backlog.front_partial();
            match check_frame(frame, self.mtu, self.offload, partial) {
                Delivered::Arp => self.received.arp += 1,
                Delivered::Udp => self.received.udp += 1,
                Delivered::Icmp => self.received.icmp += 1,
                Delivered::Tcp(seg, data) => {
                    self.received.tcp += 1;
                    self.received.tcp_data += data;
                    self.last = Some(seg);
                }
                Delivered::Tcp6(data) => {
                    self.received.tcp += 1;
                    self.received.tcp_data += data;
                }
            }
            self.backlog.pop();
        }
        if self.gw.starved() && self.backlog.has_room() {
            self.gw.guest_room(&mut self.backlog);
        }
    }

    fn arp(&mut self, input: &mut Input) {
        let operation = match input.u8() % 3 {
            0 => ArpOperation::Request,
            1 => ArpOperation::Reply,
            _ => ArpOperation::Unknown(input.u16()),
        };
        let source_protocol_addr = self.addr(input);
        let target_protocol_addr = self.addr(input);
        let repr = ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: GUEST_MAC,
            source_protocol_addr,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr,
        };
        let mut frame = vec![0u8; ETH_HEADER + repr.buffer_len()];
        write_eth(
            &mut frame,
            GUEST_MAC,
            EthernetAddress::BROADCAST,
            EthernetProtocol::Arp,
        );
        repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_HEADER..]));
        self.send(&frame, false);
    }

    fn udp(&mut self, input: &mut Input) {
        let src = self.src_addr(input);
        let dst = self.addr(input);
        let src_port = input.u16();
        let dst_port = self.port(input);
        let payload = input.chunk(MAX_PAYLOAD);
        let mut l4 = vec![0u8; 8 + payload.len()];
        {
            let mut p = UdpPacket::new_unchecked(&mut l4[..]);
            p.set_src_port(src_port);
            p.set_dst_port(dst_port);
            p.set_len((8 + payload.len()) as u16);
            p.payload_mut().copy_from_slice(payload);
            p.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        }
        let frame = ipv4_frame(src, dst, IpProtocol::Udp, &l4, &IpOptions::default());
        self.send(&frame, false);
    }

    fn tcp(&mut self, input: &mut Input) {
        let mode = input.u8();
        // The encoding does not depend on what happened: a relative field
        // is always one byte, a reply reads no addresses.
        let last = self.last.unwrap_or(LastSeg {
            src: GW,
            dst: GUEST,
            src_port: 53,
            dst_port: 40000,
            seq: 0,
            ack: 0,
            len: 0,
        });
        let (src, dst, src_port, dst_port) = if mode & tcp_mode::REPLY != 0 {
            (last.dst, last.src, last.dst_port, last.src_port)
        } else {
            let src = self.src_addr(input);
            let dst = self.addr(input);
            let src_port = input.u16();
            (src, dst, src_port, self.port(input))
        };
        let delta = |input: &mut Input| i32::from(input.u8() as i8) as u32;
        let seq = if mode & tcp_mode::SEQ_RELATIVE != 0 {
            last.ack.wrapping_add(delta(input))
        } else {
            input.u32()
        };
        let ack = if mode & tcp_mode::ACK_RELATIVE != 0 {
            last.seq.wrapping_add(last.len).wrapping_add(delta(input))
        } else {
            input.u32()
        };
        let flags = input.u8();
        let window = input.u16();
        let urgent = input.u16();
        let options = input.chunk(40);
        let options_len = options.len().div_ceil(4) * 4;
        let payload = input.chunk(MAX_PAYLOAD);
        let header_len = 20 + options_len;
        let mut l4 = vec![0u8; header_len + payload.len()];
        {
            let mut p = TcpPacket::new_unchecked(&mut l4[..]);
            p.set_src_port(src_port);
            p.set_dst_port(dst_port);
            p.set_seq_number(TcpSeqNumber(seq as i32));
            p.set_ack_number(TcpSeqNumber(ack as i32));
            p.set_header_len(header_len as u8);
            p.clear_flags();
            p.set_fin(flags & tcp_flags::FIN != 0);
            p.set_syn(flags & tcp_flags::SYN != 0);
            p.set_rst(flags & tcp_flags::RST != 0);
            p.set_psh(flags & tcp_flags::PSH != 0);
            p.set_ack(flags & tcp_flags::ACK != 0);
            p.set_urg(flags & 0x20 != 0);
            p.set_ece(flags & 0x40 != 0);
            p.set_cwr(flags & 0x80 != 0);
            p.set_window_len(window);
            p.set_urgent_at(urgent);
            p.options_mut()[..options.len()].copy_from_slice(options);
            p.payload_mut().copy_from_slice(payload);
            p.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
            if mode & tcp_mode::BAD_CHECKSUM != 0 {
                // A checksum that does not verify.
                let c = p.checksum();
                p.set_checksum(c ^ 1);
            }
        }
        let frame = ipv4_frame(src, dst, IpProtocol::Tcp, &l4, &IpOptions::default());
        self.send(&frame, mode & tcp_mode::PARTIAL != 0);
    }

    fn icmp(&mut self, input: &mut Input) {
        let src = self.src_addr(input);
        let dst = self.addr(input);
        // Mostly echo requests (type 8), the one type the gateway serves.
        let msg_type = match input.u8() {
            t if t < 0xc0 => 8,
            t => t & 0x3f,
        };
        let code = input.u8();
        let rest_of_header = input.u32();
        let payload = input.chunk(MAX_PAYLOAD);
        let mut l4 = vec![0u8; 8 + payload.len()];
        l4[0] = msg_type;
        l4[1] = code;
        l4[4..8].copy_from_slice(&rest_of_header.to_be_bytes());
        l4[8..].copy_from_slice(payload);
        Icmpv4Packet::new_unchecked(&mut l4[..]).fill_checksum();
        let frame = ipv4_frame(src, dst, IpProtocol::Icmp, &l4, &IpOptions::default());
        self.send(&frame, input.bool());
    }

    /// Any protocol number, with IPv4 options, fragmentation fields and
    /// trailing Ethernet padding; the header checksum stays valid.
    fn other_ip(&mut self, input: &mut Input) {
        let src = self.src_addr(input);
        let dst = self.addr(input);
        let proto = IpProtocol::from(input.u8());
        let opts = IpOptions {
            options: input.chunk(40).to_vec(),
            frag: input.u16(),
            ttl: input.u8(),
            padding: usize::from(input.u8() % 64),
        };
        let payload = input.chunk(MAX_PAYLOAD);
        let frame = ipv4_frame(src, dst, proto, payload, &opts);
        self.send(&frame, input.bool());
    }

    /// Mostly the guest's own address, sometimes anything.
    fn src_addr(&self, input: &mut Input) -> Ipv4Addr {
        match input.u8() {
            0..=0xef => GUEST,
            _ => self.addr(input),
        }
    }

    /// An address the gateway treats specially, or any address.
    fn addr(&self, input: &mut Input) -> Ipv4Addr {
        match input.u8() % 16 {
            addr::GUEST => GUEST,
            addr::GW => GW,
            addr::HOST => HOST,
            addr::PROXY => PROXY,
            addr::BROADCAST => Ipv4Addr::BROADCAST,
            addr::SUBNET_BROADCAST => Ipv4Addr::new(192, 168, 127, 255),
            addr::IN_SUBNET => Ipv4Addr::new(192, 168, 127, 77),
            addr::PUBLIC => Ipv4Addr::new(203, 0, 113, 7),
            addr::LOOPBACK => Ipv4Addr::LOCALHOST,
            addr::UNSPECIFIED => Ipv4Addr::UNSPECIFIED,
            addr::MULTICAST => Ipv4Addr::new(224, 0, 0, 251),
            addr::LAST_PEER => self.last.map_or(GW, |l| l.src),
            _ => Ipv4Addr::from(input.u32()),
        }
    }

    /// A port the gateway treats specially, or any port.
    fn port(&self, input: &mut Input) -> u16 {
        match input.u8() % 8 {
            port::DNS => 53,
            port::DHCP => 67,
            port::DHCP_CLIENT => 68,
            port::PROXY => PROXY_PORT,
            port::ECHO => peers().port,
            port::HTTP => 80,
            _ => input.u16(),
        }
    }
}

/// IPv4 header variations for [`ipv4_frame`].
#[derive(Default)]
struct IpOptions {
    /// Header options (padded to 4 bytes).
    options: Vec<u8>,
    /// Flags and fragment offset, as on the wire.
    frag: u16,
    /// 0 means the usual 64.
    ttl: u8,
    /// Bytes after the IP packet (Ethernet padding).
    padding: usize,
}

/// An Ethernet + IPv4 frame from the guest carrying `l4`, with a valid
/// header checksum.
fn ipv4_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4: &[u8],
    o: &IpOptions,
) -> Vec<u8> {
    let header_len = IPV4_HEADER + o.options.len().div_ceil(4) * 4;
    let total = (header_len + l4.len()).min(usize::from(u16::MAX));
    let mut frame = vec![0u8; ETH_HEADER + total + o.padding];
    write_eth(&mut frame, GUEST_MAC, GW_MAC, EthernetProtocol::Ipv4);
    let ip = &mut frame[ETH_HEADER..ETH_HEADER + total];
    ip[header_len..].copy_from_slice(&l4[..total - header_len]);
    ip[IPV4_HEADER..IPV4_HEADER + o.options.len()].copy_from_slice(&o.options);
    let mut p = Ipv4Packet::new_unchecked(ip);
    p.set_version(4);
    p.set_header_len(header_len as u8);
    p.set_total_len(total as u16);
    p.set_ident(0x1234);
    p.clear_flags();
    p.set_dont_frag(o.frag & 0x4000 != 0);
    p.set_more_frags(o.frag & 0x2000 != 0);
    p.set_frag_offset((o.frag & 0x1fff) << 3);
    p.set_hop_limit(if o.ttl == 0 { 64 } else { o.ttl });
    p.set_next_header(proto);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
    frame
}

/// A frame the guest received, by kind.
enum Delivered {
    Arp,
    Udp,
    Icmp,
    /// The segment, and its payload length.
    Tcp(LastSeg, usize),
    /// A TCP segment over IPv6, its payload length.
    Tcp6(usize),
}

/// Checks a frame the gateway sent to the guest.
fn check_frame(frame: &[u8], mtu: usize, offload: bool, partial: Option<TxPartial>) -> Delivered {
    let eth = match EthernetFrame::new_checked(frame) {
        Ok(eth) => eth,
        Err(e) => panic!("gateway sent a malformed Ethernet frame ({e}): {frame:02x?}"),
    };
    assert!(
        frame.len() <= ETH_HEADER + mtu,
        "gateway sent a {}-byte frame over the MTU of {mtu}",
        frame.len()
    );
    assert_eq!(eth.src_addr(), GW_MAC, "frame not from the gateway's MAC");
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let parsed = ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p));
            assert!(parsed.is_ok(), "gateway sent a malformed ARP frame");
            assert_eq!(partial, None, "an ARP frame marked partial");
            Delivered::Arp
        }
        EthernetProtocol::Ipv4 => check_ipv4(eth.payload(), offload, partial),
        EthernetProtocol::Ipv6 => check_ipv6(eth.payload(), offload, partial),
        other => panic!("gateway sent an Ethernet frame of type {other}"),
    }
}

/// A TCP segment's checksum as the guest's side finishes it: whole without
/// offload; with it, the pseudo-header's sum in a frame marked partial at
/// this TCP header (`l4`: its offset in the frame).
fn check_tcp_checksum(
    tcp: &TcpPacket<&[u8]>,
    (src, dst): (IpAddress, IpAddress),
    l4: usize,
    offload: bool,
    partial: Option<TxPartial>,
) {
    if !offload {
        assert_eq!(
            partial, None,
            "a partial checksum to a guest without offload"
        );
        assert!(
            tcp.verify_checksum(&src, &dst),
            "bad TCP checksum from the gateway"
        );
        return;
    }
    let Some(p) = partial else {
        panic!("a TCP frame to a guest with offload is not marked partial");
    };
    assert_eq!(
        usize::from(p.l4_offset),
        l4,
        "partial checksum not at the TCP header"
    );
    assert!(
        tcp.verify_partial_checksum(&src, &dst),
        "a frame marked partial does not carry the pseudo-header's sum"
    );
}

/// Checks an IPv6 packet to the guest: lengths, and L4 checksums (UDP and
/// ICMPv6 always whole; TCP see [`check_tcp_checksum`]).
fn check_ipv6(packet: &[u8], offload: bool, partial: Option<TxPartial>) -> Delivered {
    let ip = match Ipv6Packet::new_checked(packet) {
        Ok(ip) => ip,
        Err(e) => panic!("gateway sent a malformed IPv6 packet ({e}): {packet:02x?}"),
    };
    assert_eq!(ip.version(), 6);
    assert_eq!(
        usize::from(ip.payload_len()) + 40,
        packet.len(),
        "IPv6 payload length disagrees with the frame"
    );
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.next_header() != IpProtocol::Tcp {
        assert_eq!(partial, None, "a frame other than TCP marked partial");
    }
    match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = match TcpPacket::new_checked(ip.payload()) {
                Ok(t) => t,
                Err(e) => panic!("gateway sent a malformed TCP segment: {e}"),
            };
            check_tcp_checksum(
                &tcp,
                (src.into(), dst.into()),
                ETH_HEADER + 40,
                offload,
                partial,
            );
            Delivered::Tcp6(tcp.payload().len())
        }
        IpProtocol::Udp => {
            let udp = match UdpPacket::new_checked(ip.payload()) {
                Ok(u) => u,
                Err(e) => panic!("gateway sent a malformed UDP datagram: {e}"),
            };
            assert_eq!(usize::from(udp.len()), ip.payload().len());
            assert!(
                udp.verify_checksum(&src.into(), &dst.into()),
                "bad UDP checksum from the gateway (IPv6 always needs one)"
            );
            Delivered::Udp
        }
        IpProtocol::Icmpv6 => {
            let icmp = match Icmpv6Packet::new_checked(ip.payload()) {
                Ok(i) => i,
                Err(e) => panic!("gateway sent a malformed ICMPv6 message: {e}"),
            };
            assert!(
                icmp.verify_checksum(&src, &dst),
                "bad ICMPv6 checksum from the gateway"
            );
            Delivered::Icmp
        }
        other => panic!("gateway sent an IPv6 packet of protocol {other}"),
    }
}

fn check_ipv4(packet: &[u8], offload: bool, partial: Option<TxPartial>) -> Delivered {
    let ip = match Ipv4Packet::new_checked(packet) {
        Ok(ip) => ip,
        Err(e) => panic!("gateway sent a malformed IPv4 packet ({e}): {packet:02x?}"),
    };
    assert!(
        ip.verify_checksum(),
        "bad IPv4 header checksum from the gateway"
    );
    assert_eq!(
        usize::from(ip.total_len()),
        packet.len(),
        "IPv4 total length disagrees with the frame"
    );
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    if ip.next_header() != IpProtocol::Tcp {
        assert_eq!(partial, None, "a frame other than TCP marked partial");
    }
    match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = match TcpPacket::new_checked(ip.payload()) {
                Ok(t) => t,
                Err(e) => panic!("gateway sent a malformed TCP segment: {e}"),
            };
            let l4 = ETH_HEADER + usize::from(ip.header_len());
            check_tcp_checksum(&tcp, (src, dst), l4, offload, partial);
            let data = tcp.payload().len();
            let seg = LastSeg {
                src: ip.src_addr(),
                dst: ip.dst_addr(),
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack_number().0 as u32,
                len: data as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin()),
            };
            Delivered::Tcp(seg, data)
        }
        IpProtocol::Udp => {
            let udp = match UdpPacket::new_checked(ip.payload()) {
                Ok(u) => u,
                Err(e) => panic!("gateway sent a malformed UDP datagram: {e}"),
            };
            assert_eq!(
                usize::from(udp.len()),
                ip.payload().len(),
                "UDP length disagrees with the IP packet"
            );
            assert!(
                (offload && udp.checksum() == 0) || udp.verify_checksum(&src, &dst),
                "bad UDP checksum from the gateway (zero, none, only with offload)"
            );
            Delivered::Udp
        }
        IpProtocol::Icmp => {
            let icmp = match Icmpv4Packet::new_checked(ip.payload()) {
                Ok(i) => i,
                Err(e) => panic!("gateway sent a malformed ICMP message: {e}"),
            };
            assert!(icmp.verify_checksum(), "bad ICMP checksum from the gateway");
            Delivered::Icmp
        }
        other => panic!("gateway sent an IPv4 packet of protocol {other}"),
    }
}
