//! Internet checksums for the packets the tc tests craft and check.

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
