//! Ethernet/IPv4/UDP/ARP frames the harness sends as the guest, and the
//! little parsing it needs of what comes back. Everything parsed comes from
//! the daemon and is bounds-checked.

/// The harness guest's MAC.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The guest's address (airlock-net's default lease).
pub const GUEST_IP: [u8; 4] = [192, 168, 127, 2];
/// The gateway.
pub const GATEWAY_IP: [u8; 4] = [192, 168, 127, 1];
/// `host.airlock.internal`: the host's 127.0.0.1.
pub const HOST_IP: [u8; 4] = [192, 168, 127, 254];

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Ethernet + IPv4 + UDP headers.
pub const UDP_HEADERS: usize = ETH_LEN + IP_LEN + UDP_LEN;

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], ethertype: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&GUEST_MAC);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

/// A UDP datagram from the guest's `src_port` to `dst:dst_port` with
/// `payload` bytes, sent to the gateway's MAC. UDP checksum 0 (none, as
/// IPv4 allows).
pub fn udp(
    gateway_mac: [u8; 6],
    src_port: u16,
    dst: [u8; 4],
    dst_port: u16,
    payload: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(UDP_HEADERS + payload);
    ethernet(gateway_mac, 0x0800, &mut f);
    let total = (IP_LEN + UDP_LEN + payload) as u16;
    let mut ip = [0u8; IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&GUEST_IP);
    ip[16..20].copy_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&((UDP_LEN + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(UDP_HEADERS + payload, 0x5a);
    f
}

/// A broadcast ARP request for `target` from the guest.
pub fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    ethernet([0xff; 6], 0x0806, &mut f);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// The sender MAC of an ARP reply from `ip`, if `frame` is one.
pub fn arp_reply_from(frame: &[u8], ip: [u8; 4]) -> Option<[u8; 6]> {
    if frame.get(12..14)? != [0x08, 0x06] || frame.get(20..22)? != [0, 2] {
        return None;
    }
    if frame.get(28..32)? != ip {
        return None;
    }
    frame.get(22..28)?.try_into().ok()
}

/// `(destination port, payload length)` if `head` starts an IPv4/UDP frame
/// to the guest.
pub fn udp_to_guest(head: &[u8]) -> Option<(u16, usize)> {
    if head.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = head.get(ETH_LEN..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 17 || ip.get(16..20)? != GUEST_IP {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some((port, len.checked_sub(UDP_LEN)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frames_parse_back() {
        let f = udp([1; 6], 40000, GUEST_IP, 5000, 100);
        assert_eq!(f.len(), UDP_HEADERS + 100);
        assert_eq!(checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(udp_to_guest(&f), Some((5000, 100)));
        assert_eq!(udp_to_guest(&f[..20]), None);
        let to_host = udp([1; 6], 40000, HOST_IP, 5000, 1);
        assert_eq!(udp_to_guest(&to_host), None);
    }

    #[test]
    fn arp_reply_is_recognised() {
        let mut reply = arp_request(GATEWAY_IP);
        reply[20..22].copy_from_slice(&[0, 2]);
        reply[22..28].copy_from_slice(&[9; 6]);
        reply[28..32].copy_from_slice(&GATEWAY_IP);
        assert_eq!(arp_reply_from(&reply, GATEWAY_IP), Some([9; 6]));
        assert_eq!(arp_reply_from(&reply, HOST_IP), None);
        assert_eq!(arp_reply_from(&reply[..30], GATEWAY_IP), None);
    }
}
