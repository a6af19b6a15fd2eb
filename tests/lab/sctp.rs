//! SCTP through a ClusterIP without SCTP sockets. The lab machines' kernel
//! has SCTP connection tracking, NAT and the `sctp` iptables match, but no
//! SCTP protocol (`socket(…, IPPROTO_SCTP)` fails with EPROTONOSUPPORT), so
//! a client sends a hand-made INIT chunk from a raw socket and the backend
//! pod reads what arrives with a raw socket: the packet's destination shows
//! whether the proxy's rules translated it.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

use super::Ns;

/// CRC32c (Castagnoli), the SCTP checksum (RFC 9260 appendix A).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc: u32 = !0;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk from `src_port` to `dst_port`.
pub fn init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    // Verification tag 0: required on a packet carrying INIT.
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.to_be_bytes()); // initial TSN
                                                      // The checksum goes on the wire in little-endian byte order (as Linux's
                                                      // sctp_compute_cksum stores it).
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

fn raw_socket(ns: &Ns) -> io::Result<OwnedFd> {
    ns.run(|| {
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Sctp,
        )
    })
    .map_err(io::Error::from)
}

/// Sends an INIT from `ns` to `to` (source port `src_port`).
pub fn send_init(ns: &Ns, to: SocketAddrV4, src_port: u16) -> io::Result<()> {
    let fd = raw_socket(ns)?;
    let packet = init_packet(src_port, to.port(), 0x5eed_0001);
    let dest = SockaddrIn::from(SocketAddrV4::new(*to.ip(), 0));
    sendto(fd.as_raw_fd(), &packet, &dest, MsgFlags::empty())?;
    Ok(())
}

/// What a backend saw of one SCTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// IP source.
    pub src: Ipv4Addr,
    /// IP destination.
    pub dst: Ipv4Addr,
    /// SCTP source port.
    pub src_port: u16,
    /// SCTP destination port.
    pub dst_port: u16,
}

/// A raw SCTP listener in a pod: every SCTP packet reaching the pod.
pub struct RawSctp {
    fd: OwnedFd,
}

impl RawSctp {
    /// Opens the listener in `ns`.
    pub fn open(ns: &Ns) -> RawSctp {
        let fd = raw_socket(ns).expect("raw SCTP socket");
        let timeout = TimeVal::new(0, 200_000);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).expect("SO_RCVTIMEO");
        RawSctp { fd }
    }

    /// The next packet within `wait` whose source port is `src_port`.
    pub fn next_from(&self, src_port: u16, wait: Duration) -> Option<Seen> {
        let deadline = std::time::Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while std::time::Instant::now() < deadline {
            let Ok(n) = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            // IPv4 raw sockets receive the IP header too.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 4 {
                continue;
            }
            let seen = Seen {
                src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
                dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
                src_port: u16::from_be_bytes([buf[ihl], buf[ihl + 1]]),
                dst_port: u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]),
            };
            if seen.src_port == src_port {
                return Some(seen);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
