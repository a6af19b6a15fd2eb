//! ICMP and ICMPv6 errors about translated flows (destination unreachable —
//! port unreachable, fragmentation needed —, packet too big, time exceeded)
//! get the addresses and ports their sender's peer knows: the error quotes
//! a packet as it looked after our rewrite, so the client would never match
//! it to its socket (a UDP client to a NodePort whose backend port is closed
//! never saw ECONNREFUSED; path MTU discovery broke for NATed flows).
//!
//! The quoted packet travelled the other way, so its reversed tuple is the
//! connection-table key of the direction the error travels in; the entry
//! found is applied to the quoted header mirrored (where a packet's
//! destination is rewritten, the quoted source is, and vice versa) and to
//! the outer addresses that belong to the flow. Checksums: the outer IPv4
//! header's, the quoted IPv4 header's, and the ICMP checksum (with the
//! pseudo header for ICMPv6). The quoted transport checksum is left as it
//! is: it often lies beyond the quoted bytes, and no receiver checks it.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use skiff_common::{CtKey, CtValue, CT_REPLY, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use super::packet::{
    ipv6_l4, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IP6_HLEN, IP6_NEXT_OFF, IP6_SRC_OFF, IP_CSUM_OFF,
    IP_SRC_OFF,
};
use crate::maps::SKIFF_CT;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
/// The quoted packet starts after the 8-byte ICMP header.
const ICMP_HLEN: usize = 8;

/// Where an ICMP error and the packet it quotes are.
struct Error {
    v4: bool,
    /// Offset of the ICMP checksum.
    csum: usize,
    /// Offsets of the outer source and destination addresses.
    outer: [usize; 2],
    /// Outer source and destination.
    osrc: [u32; 4],
    odst: [u32; 4],
    /// Offset of the quoted IP header.
    inner: usize,
    /// Offsets of the quoted source and destination addresses.
    iaddr: [usize; 2],
    /// Offset of the quoted transport header.
    il4: usize,
    isrc: [u32; 4],
    idst: [u32; 4],
    isport: u16,
    idport: u16,
}

/// Translates the packet if it is an ICMP error about a flow in the
/// connection table; any other packet passes untouched. Its own BPF
/// function, so its stack frame is not added to the TCP/UDP path's.
#[inline(never)]
pub fn translate(ctx: &TcContext) {
    if let Some((e, v)) = find(ctx) {
        let _ = rewrite(ctx, &e, &v);
    }
}

#[inline(always)]
fn addr(ctx: &TcContext, v4: bool, off: usize) -> Option<[u32; 4]> {
    if v4 {
        Some([ctx.load(off).ok()?, 0, 0, 0])
    } else {
        ctx.load(off).ok()
    }
}

#[inline(always)]
fn find(ctx: &TcContext) -> Option<(Error, CtValue)> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let v4 = ethertype == ETH_P_IP;
    let (icmp, outer) = if v4 {
        let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
        let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
        if frag & 0x1fff != 0 || proto != PROTO_ICMP {
            return None;
        }
        let ty: u8 = ctx.load(ETH_HLEN + ((vihl & 0x0f) as usize) * 4).ok()?;
        if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
            return None;
        }
        (
            ETH_HLEN + ((vihl & 0x0f) as usize) * 4,
            [IP_SRC_OFF, IP_SRC_OFF + 4],
        )
    } else if ethertype == ETH_P_IPV6 {
        let next: u8 = ctx.load(IP6_NEXT_OFF).ok()?;
        let (proto, l4) = ipv6_l4(ctx, next, ETH_HLEN + IP6_HLEN)?;
        if proto != PROTO_ICMPV6 {
            return None;
        }
        let ty: u8 = ctx.load(l4).ok()?;
        if ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG && ty != ICMPV6_TIME_EXCEED {
            return None;
        }
        (l4, [IP6_SRC_OFF, IP6_SRC_OFF + 16])
    } else {
        return None;
    };
    let inner = icmp + ICMP_HLEN;
    let (proto, il4, iaddr) = if v4 {
        let vihl: u8 = ctx.load(inner).ok()?;
        let proto: u8 = ctx.load(inner + 9).ok()?;
        (
            proto,
            inner + ((vihl & 0x0f) as usize) * 4,
            [inner + 12, inner + 16],
        )
    } else {
        let next: u8 = ctx.load(inner + 6).ok()?;
        let (proto, l4) = ipv6_l4(ctx, next, inner + IP6_HLEN)?;
        (proto, l4, [inner + 8, inner + 24])
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let e = Error {
        v4,
        csum: icmp + 2,
        outer,
        osrc: addr(ctx, v4, outer[0])?,
        odst: addr(ctx, v4, outer[1])?,
        inner,
        iaddr,
        il4,
        isrc: addr(ctx, v4, iaddr[0])?,
        idst: addr(ctx, v4, iaddr[1])?,
        isport: ctx.load(il4).ok()?,
        idport: ctx.load(il4 + 2).ok()?,
    };
    let key = CtKey {
        saddr: e.idst,
        daddr: e.isrc,
        sport: e.idport,
        dport: e.isport,
        proto,
        family: if v4 { FAMILY_V4 } else { FAMILY_V6 },
        pad: 0,
    };
    // SAFETY: LRU value copied out at once.
    let v = unsafe { *SKIFF_CT.get_ptr(key)? };
    Some((e, v))
}

/// Rewrites the outer source (`which == 0`) or destination address.
#[inline(always)]
fn set_outer(
    ctx: &TcContext,
    e: &Error,
    which: usize,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Option<()> {
    let off = e.outer[which & 1];
    if e.v4 {
        if old[0] == new[0] {
            return Some(());
        }
        ctx.store(off, &new[0], 0).ok()?;
        // ICMPv4 has no pseudo header: only the IP header sum changes.
        return ctx
            .l3_csum_replace(IP_CSUM_OFF, old[0] as u64, new[0] as u64, 4)
            .ok();
    }
    ctx.store(off, new, 0).ok()?;
    for i in 0..4 {
        if old[i] != new[i] {
            ctx.l4_csum_replace(
                e.csum,
                old[i] as u64,
                new[i] as u64,
                BPF_F_PSEUDO_HDR as u64 | 4,
            )
            .ok()?;
        }
    }
    Some(())
}

/// Rewrites the quoted source (`which == 0`) or destination address and
/// port.
#[inline(always)]
fn set_inner(
    ctx: &TcContext,
    e: &Error,
    which: usize,
    (old, old_port): (&[u32; 4], u16),
    (new, new_port): (&[u32; 4], u16),
) -> Option<()> {
    let off = e.iaddr[which & 1];
    if e.v4 {
        if old[0] != new[0] {
            // The quoted header's own checksum changes by as much as the
            // address, so the ICMP checksum over both stays as it is.
            ctx.store(off, &new[0], 0).ok()?;
            ctx.l3_csum_replace(e.inner + 10, old[0] as u64, new[0] as u64, 4)
                .ok()?;
        }
    } else if old != new {
        ctx.store(off, new, 0).ok()?;
        for i in 0..4 {
            if old[i] != new[i] {
                ctx.l4_csum_replace(e.csum, old[i] as u64, new[i] as u64, 4)
                    .ok()?;
            }
        }
    }
    if old_port != new_port {
        ctx.store(e.il4 + 2 * (which & 1), &new_port, 0).ok()?;
        ctx.l4_csum_replace(e.csum, old_port as u64, new_port as u64, 2)
            .ok()?;
    }
    Some(())
}

#[inline(always)]
fn rewrite(ctx: &TcContext, e: &Error, v: &CtValue) -> Option<()> {
    let snat = v.snat != 0;
    let quoted_src = (&e.isrc, e.isport);
    let quoted_dst = (&e.idst, e.idport);
    if v.dir == CT_REPLY {
        // From the backend's side about a packet the client sent: the
        // quoted destination was the backend, the quoted source the SNAT
        // address; the error goes to the client.
        set_inner(ctx, e, 1, quoted_dst, (&v.addr, v.port))?;
        if snat {
            set_inner(ctx, e, 0, quoted_src, (&v.nat_addr, v.nat_port))?;
            if e.odst == e.isrc {
                set_outer(ctx, e, 1, &e.odst, &v.nat_addr)?;
            }
        }
        if e.osrc == e.idst {
            set_outer(ctx, e, 0, &e.osrc, &v.addr)?;
        }
    } else {
        // From the client's side about a reply it got: the quoted source
        // was the frontend; the error goes to the backend.
        set_inner(ctx, e, 0, quoted_src, (&v.addr, v.port))?;
        if snat {
            set_inner(ctx, e, 1, quoted_dst, (&v.nat_addr, v.nat_port))?;
            if e.osrc == e.idst {
                set_outer(ctx, e, 0, &e.osrc, &v.nat_addr)?;
            }
        }
        if e.odst == e.isrc {
            set_outer(ctx, e, 1, &e.odst, &v.addr)?;
        }
    }
    Some(())
}
