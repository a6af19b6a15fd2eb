//! Packets the tc tests craft and check, and their Internet checksums.

use std::net::Ipv4Addr;

/// An Ethernet + IPv4 packet with correct checksums carrying `payload`: TCP
/// with `flags`, or UDP when `flags` is `None`.
pub fn ipv4_packet(
    flags: Option<u8>,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
    payload: &[u8],
) -> Vec<u8> {
    let src: Ipv4Addr = src.parse().expect("IPv4 source");
    let dst: Ipv4Addr = dst.parse().expect("IPv4 destination");
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    let proto = match flags {
        Some(f) => {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, f, 0xff, 0xff, 0, 0, 0, 0]);
            6
        }
        None => {
            l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            17
        }
    };
    l4.extend_from_slice(payload);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let c = l4_csum4(&ip, &l4);
    let off = if proto == 6 { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

/// (src, sport, dst, dport) of an Ethernet + IPv4 packet, after checking
/// both checksums.
pub fn ipv4_addrs(p: &[u8]) -> (String, u16, String, u16) {
    let ip = &p[14..34];
    assert_eq!(csum(ip), 0, "IPv4 header checksum broken");
    let l4 = &p[34..];
    assert_eq!(l4_csum4(ip, l4), 0, "L4 checksum broken");
    let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]).to_string();
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    (a(12), port(0), a(16), port(2))
}

/// The Internet checksum of `data` (0 when `data` holds a valid checksum).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP checksum of `l4` under the IPv4 header `ip`.
pub fn l4_csum4(ip: &[u8], l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    csum(&pseudo)
}

/// The checksum of `l4` (protocol `proto`) over the IPv6 pseudo header of
/// `src` → `dst` (RFC 8200 §8.1).
pub fn csum6(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = src.to_vec();
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    pseudo.extend_from_slice(l4);
    csum(&pseudo)
}

/// The TCP/UDP checksum of `l4` under the IPv6 header `ip` (no extension
/// headers).
pub fn l4_csum6(ip: &[u8], l4: &[u8]) -> u16 {
    csum6(&ip[8..24], &ip[24..40], ip[6], l4)
}
