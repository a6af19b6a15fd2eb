//! Where a packet's rewritable fields are and how to rewrite them with
//! valid checksums. IPv6 extension headers (hop-by-hop, routing, fragment,
//! destination options, AH) are skipped to find TCP or UDP, at most
//! [`MAX_EXT_HEADERS`] of them; fragments after the first carry no ports
//! and are left alone in both families.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use skiff_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

pub(super) const ETH_HLEN: usize = 14;
pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
pub(super) const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub(super) const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub(super) const IP_DST_OFF: usize = ETH_HLEN + 16;
pub(super) const IP6_NEXT_OFF: usize = ETH_HLEN + 6;
pub(super) const IP6_SRC_OFF: usize = ETH_HLEN + 8;
pub(super) const IP6_DST_OFF: usize = ETH_HLEN + 24;
pub(super) const IP6_HLEN: usize = 40;

/// IPv6 extension headers skipped on the way to the transport header.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// At most this many extension headers are skipped (the verifier needs a
/// bound; real traffic rarely has more than two). A packet with more is left
/// alone.
pub(super) const MAX_EXT_HEADERS: usize = 6;

/// Where the packet's rewritable fields are.
pub(super) struct Packet {
    pub family: u8,
    pub l4: usize,
    pub proto: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

impl Packet {
    fn csum_off(&self) -> usize {
        self.l4 + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    fn l4_flags(&self) -> u64 {
        // A zero UDP checksum means "none" (IPv4) and must stay zero.
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }

    pub fn v4(&self) -> bool {
        self.family == FAMILY_V4
    }

    /// Offset of the source (`dst == false`) or destination address.
    fn addr_off(&self, dst: bool) -> usize {
        match (self.v4(), dst) {
            (true, false) => IP_SRC_OFF,
            (true, true) => IP_DST_OFF,
            (false, false) => IP6_SRC_OFF,
            (false, true) => IP6_DST_OFF,
        }
    }
}

/// The transport header of an IPv6 packet whose first next-header value is
/// `next`, the header after the fixed one starting at `off`: (protocol,
/// offset). `None` for a fragment other than the first, or when more than
/// [`MAX_EXT_HEADERS`] extension headers come first.
#[inline(always)]
pub(super) fn ipv6_l4(ctx: &TcContext, mut next: u8, mut off: usize) -> Option<(u8, usize)> {
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                // Length in 8-octet units, not counting the first 8.
                let len: u8 = ctx.load(off + 1).ok()?;
                next = ctx.load(off).ok()?;
                off += (len as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let frag: u16 = u16::from_be(ctx.load(off + 2).ok()?);
                // Fragment offset (upper 13 bits): only the first has ports.
                if frag & 0xfff8 != 0 {
                    return None;
                }
                next = ctx.load(off).ok()?;
                off += 8;
            }
            NEXTHDR_AUTH => {
                // Length in 4-octet units, minus 2.
                let len: u8 = ctx.load(off + 1).ok()?;
                next = ctx.load(off).ok()?;
                off += (len as usize + 2) * 4;
            }
            _ => return Some((next, off)),
        }
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH => None,
        _ => Some((next, off)),
    }
}

/// The packet's addresses and ports, if it is TCP or UDP over IPv4 or IPv6
/// (and not a later fragment).
#[inline(always)]
pub(super) fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let (family, proto, l4, saddr, daddr) = if ethertype == ETH_P_IP {
        let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
        let frag: u16 = u16::from_be(ctx.load(ETH_HLEN + 6).ok()?);
        // Only first fragments carry ports; later ones are left alone.
        if frag & 0x1fff != 0 {
            return None;
        }
        let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
        let l4 = ETH_HLEN + ((vihl & 0x0f) as usize) * 4;
        let saddr: u32 = ctx.load(IP_SRC_OFF).ok()?;
        let daddr: u32 = ctx.load(IP_DST_OFF).ok()?;
        (FAMILY_V4, proto, l4, [saddr, 0, 0, 0], [daddr, 0, 0, 0])
    } else if ethertype == ETH_P_IPV6 {
        let next: u8 = ctx.load(IP6_NEXT_OFF).ok()?;
        let (proto, l4) = ipv6_l4(ctx, next, ETH_HLEN + IP6_HLEN)?;
        let saddr: [u32; 4] = ctx.load(IP6_SRC_OFF).ok()?;
        let daddr: [u32; 4] = ctx.load(IP6_DST_OFF).ok()?;
        (FAMILY_V6, proto, l4, saddr, daddr)
    } else {
        return None;
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    Some(Packet {
        family,
        l4,
        proto,
        saddr,
        daddr,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
    })
}

/// Rewrites the source or destination address and fixes the checksums:
/// IPv4's header checksum and the L4 pseudo-header sum; IPv6 has no header
/// checksum, its pseudo header carries each of the four words.
#[inline(always)]
pub(super) fn set_addr(
    ctx: &TcContext,
    p: &Packet,
    dst: bool,
    old: &[u32; 4],
    new: &[u32; 4],
) -> Option<()> {
    let off = p.addr_off(dst);
    let flags = BPF_F_PSEUDO_HDR as u64 | p.l4_flags() | 4;
    if p.v4() {
        if old[0] == new[0] {
            return Some(());
        }
        ctx.store(off, &new[0], 0).ok()?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old[0] as u64, new[0] as u64, 4)
            .ok()?;
        return ctx
            .l4_csum_replace(p.csum_off(), old[0] as u64, new[0] as u64, flags)
            .ok();
    }
    if old == new {
        return Some(());
    }
    ctx.store(off, new, 0).ok()?;
    for i in 0..4 {
        if old[i] != new[i] {
            ctx.l4_csum_replace(p.csum_off(), old[i] as u64, new[i] as u64, flags)
                .ok()?;
        }
    }
    Some(())
}

/// Rewrites the source (`dst == false`) or destination port and fixes the
/// L4 checksum.
#[inline(always)]
pub(super) fn set_port(ctx: &TcContext, p: &Packet, dst: bool, old: u16, new: u16) -> Option<()> {
    if old == new {
        return Some(());
    }
    let off = p.l4 + if dst { 2 } else { 0 };
    ctx.store(off, &new, 0).ok()?;
    ctx.l4_csum_replace(p.csum_off(), old as u64, new as u64, p.l4_flags() | 2)
        .ok()
}
