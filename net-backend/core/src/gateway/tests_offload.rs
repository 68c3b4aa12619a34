//! Segmentation offload without a VM: TCP segments larger than the guest's
//! MSS cross the link whole, both ways, over IPv4 and IPv6; offload claims
//! that do not fit their frame are dropped and counted.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    checksum, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::tests::{
    gateway, pump, udp_frame, Recorder, GUEST, GUEST6, GUEST_MAC, GW_MAC, HOST, HOST6,
};
use super::Gateway;
use crate::phy::{FrameOffload, GuestSegmentation, Segmentation};
use crate::stats::DropReason;
use crate::wire::{write_eth, ETH_HEADER};

/// The MSS the guest announces (an Ethernet MTU of 1500 over IPv4).
const MSS: u16 = 1460;

/// One TCP segment from the guest to `dst:dport`, over IPv4 or IPv6 as
/// `dst` is. `partial`: the checksum is left partial (the pseudo-header's
/// sum), as a guest using checksum offload sends it.
#[allow(clippy::too_many_arguments)]
fn segment(
    sport: u16,
    dst: IpAddr,
    dport: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    data: &[u8],
    partial: bool,
) -> Vec<u8> {
    let src = match dst {
        IpAddr::V4(_) => IpAddr::V4(GUEST),
        IpAddr::V6(_) => IpAddr::V6(GUEST6),
    };
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(MSS),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: data,
    };
    let tcp_len = repr.buffer_len();
    let (ethertype, ip_len) = match dst {
        IpAddr::V4(_) => (EthernetProtocol::Ipv4, 20),
        IpAddr::V6(_) => (EthernetProtocol::Ipv6, 40),
    };
    let mut buf = vec![0u8; ETH_HEADER + ip_len + tcp_len];
    write_eth(&mut buf, GUEST_MAC, GW_MAC, ethertype);
    let ip = &mut buf[ETH_HEADER..];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_len,
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut *ip),
            &ChecksumCapabilities::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut *ip)),
        _ => unreachable!("one family"),
    }
    let mut caps = ChecksumCapabilities::default();
    if partial {
        caps.tcp = Checksum::None;
    }
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    let mut tcp = TcpPacket::new_unchecked(&mut ip[ip_len..]);
    repr.emit(&mut tcp, &s, &d, &caps);
    if partial {
        tcp.set_checksum(checksum::pseudo_header(
            &s,
            &d,
            IpProtocol::Tcp,
            tcp_len as u32,
        ));
    }
    buf
}

/// A TCP segment the gateway sent: its frame index, control, sequence and
/// acknowledgement numbers and payload. The checksum must be complete for
/// a guest without checksum offload, and partial (the pseudo-header's
/// sum, the frame marked so) for one with it.
struct Out {
    index: usize,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    data: Vec<u8>,
}

fn tcp_out(tx: &Recorder) -> Vec<Out> {
    let mut out = Vec::new();
    for (index, frame) in tx.frames.iter().enumerate() {
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let (src, dst, body): (IpAddress, IpAddress, &[u8]) = match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                if ip.next_header() != IpProtocol::Tcp {
                    continue;
                }
                assert!(ip.verify_checksum());
                (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
                if ip.next_header() != IpProtocol::Tcp {
                    continue;
                }
                (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
            }
            _ => continue,
        };
        let tcp = TcpPacket::new_checked(body).unwrap();
        let marked = tx.partial.iter().any(|(i, _)| *i == index);
        assert_eq!(marked, tx.offload, "every TCP frame is marked with offload");
        if tx.offload {
            assert!(
                tcp.verify_partial_checksum(&src, &dst),
                "a frame marked partial carries the pseudo-header's sum"
            );
        } else {
            assert!(tcp.verify_checksum(&src, &dst));
        }
        let caps = {
            let mut c = ChecksumCapabilities::default();
            c.tcp = Checksum::None;
            c
        };
        let r = TcpRepr::parse(&tcp, &src, &dst, &caps).unwrap();
        out.push(Out {
            index,
            control: r.control,
            seq: r.seq_number.0 as u32,
            ack: r.ack_number.map(|a| a.0 as u32),
            data: r.payload.to_vec(),
        });
    }
    out
}

/// A host server on the loopback of `alias`'s family, and the guest's view
/// of it; `None` without IPv6 on this host.
fn server(alias: IpAddr) -> Option<(TcpListener, u16)> {
    let bind = match alias {
        IpAddr::V4(_) => "127.0.0.1:0",
        IpAddr::V6(_) => "[::1]:0",
    };
    let l = TcpListener::bind(bind).ok()?;
    let port = l.local_addr().ok()?.port();
    Some((l, port))
}

/// The guest's handshake with the host server behind `alias:port`, MSS
/// 1460; returns the gateway's next sequence number and the host's end.
fn handshake(
    gw: &mut Gateway,
    tx: &mut Recorder,
    listener: &TcpListener,
    alias: IpAddr,
    port: u16,
) -> (u32, TcpStream) {
    let syn = segment(40000, alias, port, TcpControl::Syn, 100, None, b"", false);
    gw.guest_frame(&syn, false, tx);
    let (conn, _) = listener.accept().unwrap();
    pump(gw, tx, |t| {
        tcp_out(t).iter().any(|s| s.control == TcpControl::Syn)
    });
    let synack = tcp_out(tx)
        .into_iter()
        .find(|s| s.control == TcpControl::Syn)
        .unwrap();
    assert_eq!(synack.ack, Some(101));
    let next = synack.seq.wrapping_add(1);
    let ack = segment(
        40000,
        alias,
        port,
        TcpControl::None,
        101,
        Some(next),
        b"",
        false,
    );
    gw.guest_frame(&ack, false, tx);
    tx.frames.clear();
    tx.partial.clear();
    (next, conn)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A guest with TSO sends one 48 000-byte segment (32 MSS-sized ones' worth)
/// with a partial checksum: the gateway takes it whole, the host gets every
/// byte and the guest an acknowledgement of all of it.
fn a_larger_segment_from_the_guest_arrives_whole(alias: IpAddr) {
    let Some((listener, port)) = server(alias) else {
        eprintln!("no loopback for {alias}: skipped");
        return;
    };
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let (next, mut conn) = handshake(&mut gw, &mut tx, &listener, alias, port);
    let data = pattern(48_000);
    let big = segment(
        40000,
        alias,
        port,
        TcpControl::Psh,
        101,
        Some(next),
        &data,
        true,
    );
    let offload = FrameOffload {
        partial_csum: true,
        segmentation: Some(Segmentation {
            ipv6: alias.is_ipv6(),
            size: MSS - if alias.is_ipv6() { 20 } else { 0 },
        }),
    };
    gw.guest_frame_offload(&big, offload, &mut tx);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; data.len()];
    conn.read_exact(&mut got).unwrap();
    assert!(got == data, "the host got other bytes");
    let end = 101 + data.len() as u32;
    pump(&mut gw, &mut tx, |t| {
        tcp_out(t).iter().any(|s| s.ack == Some(end))
    });
    let snap = shared.stats.snapshot();
    assert!(snap.drops.contains(&("bad_offload".to_owned(), 0)));
}

#[test]
fn a_larger_segment_from_the_guest_arrives_whole_v4() {
    a_larger_segment_from_the_guest_arrives_whole(HOST.into());
}

#[test]
fn a_larger_segment_from_the_guest_arrives_whole_v6() {
    a_larger_segment_from_the_guest_arrives_whole(HOST6.into());
}

/// The host sends 60 000 bytes. A guest taking larger segments gets frames
/// of more than one MSS, each marked with the MSS as its size and the TCP
/// header's place; every other frame stays within the MSS, marked with a
/// partial checksum only. A guest not taking them (for this IP version)
/// gets MSS-sized segments only.
fn segments_to_the_guest(alias: IpAddr, segmentation: GuestSegmentation) -> usize {
    let (listener, port) = server(alias).expect("loopback");
    let (mut gw, _) = gateway();
    let mut tx = Recorder {
        offload: true,
        segmentation,
        ..Recorder::default()
    };
    let (_, mut conn) = handshake(&mut gw, &mut tx, &listener, alias, port);
    let data = pattern(60_000);
    conn.write_all(&data).unwrap();
    pump(&mut gw, &mut tx, |t| {
        tcp_out(t).iter().map(|s| s.data.len()).sum::<usize>() >= data.len()
    });
    let segs = tcp_out(&tx);
    let mut stream: Vec<(u32, Vec<u8>)> = segs.iter().map(|s| (s.seq, s.data.clone())).collect();
    stream.sort_by_key(|s| s.0);
    let bytes: Vec<u8> = stream.into_iter().flat_map(|s| s.1).collect();
    assert!(bytes == data, "the guest got other bytes");
    let l4 = ETH_HEADER + if alias.is_ipv6() { 40 } else { 20 };
    let mut larger = 0;
    for s in &segs {
        let (_, mark) = tx
            .partial
            .iter()
            .find(|(i, _)| *i == s.index)
            .expect("every TCP frame is marked partial");
        assert_eq!(usize::from(mark.l4_offset), l4);
        assert_eq!(usize::from(mark.headers), l4 + 20);
        if s.data.len() > usize::from(MSS) {
            larger += 1;
            let m = mark
                .segmentation
                .expect("a segment larger than the MSS is marked for cutting");
            assert_eq!(m.ipv6, alias.is_ipv6());
            assert_eq!(m.size, MSS, "no TCP options: the MSS");
            assert!(
                s.data.len() <= 65520 - 20 - (l4 - ETH_HEADER),
                "a segment fits the link's MTU"
            );
        } else {
            assert_eq!(mark.segmentation, None, "only larger segments are cut");
        }
    }
    larger
}

#[test]
fn segments_to_the_guest_are_as_large_as_it_takes_v4() {
    let both = GuestSegmentation {
        ipv4: true,
        ipv6: true,
    };
    assert!(segments_to_the_guest(HOST.into(), both) > 0);
    let v6_only = GuestSegmentation {
        ipv4: false,
        ipv6: true,
    };
    assert_eq!(segments_to_the_guest(HOST.into(), v6_only), 0);
}

#[test]
fn segments_to_the_guest_are_as_large_as_it_takes_v6() {
    if server(HOST6.into()).is_none() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let both = GuestSegmentation {
        ipv4: true,
        ipv6: true,
    };
    assert!(segments_to_the_guest(HOST6.into(), both) > 0);
    let v4_only = GuestSegmentation {
        ipv4: true,
        ipv6: false,
    };
    assert_eq!(segments_to_the_guest(HOST6.into(), v4_only), 0);
}

/// Claims of a larger TCP segment on a frame that is not one: UDP, the
/// other IP version, a size of 0. Each is dropped and counted, and opens
/// nothing.
#[test]
fn offload_claims_that_do_not_fit_the_frame_are_dropped() {
    let (mut gw, shared) = gateway();
    let mut tx = Recorder::default();
    let seg = |ipv6, size| FrameOffload {
        partial_csum: true,
        segmentation: Some(Segmentation { ipv6, size }),
    };
    let port = 9; // nobody is connected to: nothing may open anyway
    let syn4 = segment(
        40000,
        HOST.into(),
        port,
        TcpControl::Syn,
        1,
        None,
        b"",
        true,
    );
    let syn6 = segment(
        40000,
        HOST6.into(),
        port,
        TcpControl::Syn,
        1,
        None,
        b"",
        true,
    );
    let cases: [(&[u8], FrameOffload); 4] = [
        (&udp_frame(40000, HOST, port, &[0; 3000]), seg(false, 1460)),
        (&syn4, seg(true, 1440)),
        (&syn6, seg(false, 1460)),
        (&syn4, seg(false, 0)),
    ];
    for (i, (frame, offload)) in cases.iter().enumerate() {
        gw.guest_frame_offload(frame, *offload, &mut tx);
        let snap = shared.stats.snapshot();
        assert!(
            snap.drops
                .contains(&("bad_offload".to_owned(), i as u64 + 1)),
            "case {i}: {:?}",
            snap.drops
        );
    }
    assert!(tx.frames.is_empty(), "nothing answered");
    assert_eq!(gw.flow_count(), 0);
    assert_eq!(shared.stats.drop_count(DropReason::BadOffload), 4);
    // The same frames without the claim are handled (the SYN opens a flow
    // or is refused: either way it is not dropped as an offload).
    gw.guest_frame_offload(&syn4, FrameOffload::csum(true), &mut tx);
    assert_eq!(shared.stats.drop_count(DropReason::BadOffload), 4);
}
