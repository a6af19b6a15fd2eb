//! Deleting stale conntrack entries over netlink (ctnetlink), in-process.
//!
//! UDP has no connection teardown, so a conntrack entry that DNATs a client's
//! flow to a backend outlives the backend: every datagram of that flow keeps
//! going to the dead address (the classic "DNS blackholed after a CoreDNS
//! rollout"). After a sync the iptables backend dumps the UDP entries of its
//! namespace and deletes the ones whose service address now leads elsewhere.
//!
//! The messages are small and fixed, so they are encoded by hand: a netlink
//! header, an `nfgenmsg`, and nested `CTA_TUPLE_*` attributes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use skiff_cni::Netns;

/// Errors talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The namespace could not be entered.
    #[error("entering the proxy's network namespace for conntrack: {0}")]
    Netns(#[from] skiff_cni::netns::NetnsError),
    /// Socket I/O failed.
    #[error("ctnetlink socket: {0}; is nf_conntrack loaded and is the proxy root?")]
    Io(#[from] std::io::Error),
    /// The kernel answered with an error.
    #[error("ctnetlink request failed with errno {0}")]
    Kernel(i32),
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ENOENT: i32 = 2;
/// Upper bound of datagrams read for one dump (each holds many entries).
const MAX_DUMP_READS: usize = 1_000_000;

/// One direction of a connection: addresses, ports and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// A conntrack entry: what the client sent, and what the reply looks like
/// (after DNAT the reply's source is the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction.
    pub reply: Tuple,
}

/// A ctnetlink socket in one namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    /// Opens a socket in `netns` (it stays bound to that namespace).
    pub fn open(netns: &Netns) -> Result<Conntrack, ConntrackError> {
        let socket = netns.run(|| -> std::io::Result<Socket> {
            let mut s = Socket::new(NETLINK_NETFILTER)?;
            s.bind_auto()?;
            s.connect(&SocketAddr::new(0, 0))?;
            Ok(s)
        })??;
        Ok(Conntrack { socket, seq: 1 })
    }

    fn header(&mut self, buf: &mut Vec<u8>, msg: u16, flags: u16, family: u8) {
        self.seq = self.seq.wrapping_add(1);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `finish`
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, res_id 0 (big endian).
        buf.extend_from_slice(&[family, 0, 0, 0]);
    }

    /// Every entry of `proto` in both families.
    pub fn dump(&mut self, proto: u8) -> Result<Vec<Flow>, ConntrackError> {
        let mut flows = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let mut req = Vec::with_capacity(20);
            self.header(
                &mut req,
                IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
            );
            finish(&mut req);
            self.socket.send(&req, 0)?;
            let mut done = false;
            for _ in 0..MAX_DUMP_READS {
                let mut buf = Vec::with_capacity(64 * 1024);
                self.socket.recv(&mut buf, 0)?;
                for (kind, payload) in messages(&buf) {
                    match kind {
                        NLMSG_DONE => done = true,
                        NLMSG_ERROR => {
                            let code = error_code(payload);
                            if code != 0 {
                                return Err(ConntrackError::Kernel(code));
                            }
                        }
                        _ => {
                            if let Some(f) = parse_flow(payload) {
                                if f.orig.proto == proto {
                                    flows.push(f);
                                }
                            }
                        }
                    }
                }
                if done {
                    break;
                }
            }
        }
        Ok(flows)
    }

    /// Deletes the entry of `flow`; true if it existed.
    pub fn delete(&mut self, flow: &Flow) -> Result<bool, ConntrackError> {
        let family = if flow.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        let mut req = Vec::with_capacity(80);
        self.header(
            &mut req,
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            family,
        );
        encode_tuple(&mut req, CTA_TUPLE_ORIG, &flow.orig);
        finish(&mut req);
        self.socket.send(&req, 0)?;
        let mut buf = Vec::with_capacity(4096);
        self.socket.recv(&mut buf, 0)?;
        for (kind, payload) in messages(&buf) {
            if kind == NLMSG_ERROR {
                return match error_code(payload) {
                    0 => Ok(true),
                    ENOENT => Ok(false),
                    code => Err(ConntrackError::Kernel(code)),
                };
            }
        }
        Ok(true)
    }

    /// Deletes every `proto` entry for which `stale` holds; returns how many.
    pub fn delete_matching(
        &mut self,
        proto: u8,
        stale: impl Fn(&Flow) -> bool,
    ) -> Result<usize, ConntrackError> {
        let mut deleted = 0;
        for flow in self.dump(proto)? {
            if stale(&flow) && self.delete(&flow)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn finish(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = (4 + data.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn encode_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) {
    nested(buf, kind, |b| {
        nested(b, CTA_TUPLE_IP, |b| match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(b, CTA_IP_V4_SRC, &s.octets());
                attr(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                attr(b, CTA_IP_V6_SRC, &v6(s).octets());
                attr(b, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        nested(b, CTA_TUPLE_PROTO, |b| {
            attr(b, CTA_PROTO_NUM, &[t.proto]);
            attr(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            attr(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        });
    });
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v) => v,
        IpAddr::V4(v) => v.to_ipv6_mapped(),
    }
}

/// Splits a datagram into (message type, payload after the netlink header).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        out.push((kind, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Iterates the attributes in `buf` as (type without flags, payload).
fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        if len < 4 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        out.push((kind, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn parse_tuple(buf: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, 0, 0, 0);
    for (kind, data) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, d) in attrs(data) {
                    let ip = match d.len() {
                        4 => Some(IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3]))),
                        16 => <[u8; 16]>::try_from(d)
                            .ok()
                            .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
                        _ => None,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, d) in attrs(data) {
                    match (k, d) {
                        (CTA_PROTO_NUM, [p, ..]) => proto = *p,
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        sport,
        dport,
        proto,
    })
}

/// Parses a CT_NEW message payload (nfgenmsg + attributes).
fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let (mut orig, mut reply) = (None, None);
    for (kind, data) in attrs(payload.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(data),
            CTA_TUPLE_REPLY => reply = parse_tuple(data),
            _ => {}
        }
    }
    Some(Flow {
        orig: orig?,
        reply: reply?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_tuple_parses_back() {
        let t = Tuple {
            src: "10.244.0.5".parse().unwrap(),
            dst: "10.96.0.10".parse().unwrap(),
            sport: 40000,
            dport: 53,
            proto: 17,
        };
        let mut buf = Vec::new();
        encode_tuple(&mut buf, CTA_TUPLE_ORIG, &t);
        let parsed = attrs(&buf);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(parsed[0].1), Some(t));
        let t6 = Tuple {
            src: "fd00::5".parse().unwrap(),
            dst: "fd00::a".parse().unwrap(),
            ..t
        };
        let mut buf = Vec::new();
        encode_tuple(&mut buf, CTA_TUPLE_REPLY, &t6);
        assert_eq!(parse_tuple(attrs(&buf)[0].1), Some(t6));
    }
}
