//! tc (clsact) programs on node interfaces for NodePort, externalIPs and
//! LoadBalancer IPs, IPv4 and IPv6. Ingress: a packet of a known flow is
//! rewritten as its connection-table entry says; the first packet of a new
//! flow to a frontend picks a backend (affinity entry, else Maglev), records
//! both directions and is DNATed (and SNATed to the node for remote backends
//! unless externalTrafficPolicy is Local). Egress: replies of local backends
//! get the frontend address back.
//!
//! Addresses are handled as four words in both families (IPv4 in word 0), so
//! one code path serves both; only parsing and checksum fixing differ. IPv6
//! packets whose next header is not TCP or UDP directly (extension headers,
//! fragments) are left alone.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_common::{
    select::{affinity_fresh, flow_hash, fold_addr, maglev_index, pick_slot},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Frontend, FrontendKey, NodeAddrKey,
    SourceRangeKey, AFFINITY_CLIENT, BACKEND_LOCAL, CT_FORWARD, CT_REPLY, FAMILY_V4, FAMILY_V6,
    FLAG_AFFINITY, FLAG_EXTERNAL, FLAG_LOCAL, FLAG_SOURCE_RANGES, MAGLEV_TABLE_LEN, PROTO_TCP,
    PROTO_UDP, SNAT_V4, SNAT_V6,
};

use crate::maps::{
    self, SKIFF_AFFINITY, SKIFF_CT, SKIFF_MAGLEV, SKIFF_NODE_ADDRS, SKIFF_SNAT, SKIFF_SRC_RANGES,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const IP6_NEXT_OFF: usize = ETH_HLEN + 6;
const IP6_SRC_OFF: usize = ETH_HLEN + 8;
const IP6_DST_OFF: usize = ETH_HLEN + 24;
const IP6_HLEN: usize = 40;

/// Where the packet's rewritable fields are.
struct Packet {
    family: u8,
    l4: usize,
    proto: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
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

    fn v4(&self) -> bool {
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

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
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
        let proto: u8 = ctx.load(IP6_NEXT_OFF).ok()?;
        let saddr: [u32; 4] = ctx.load(IP6_SRC_OFF).ok()?;
        let daddr: [u32; 4] = ctx.load(IP6_DST_OFF).ok()?;
        (FAMILY_V6, proto, ETH_HLEN + IP6_HLEN, saddr, daddr)
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
fn set_addr(ctx: &TcContext, p: &Packet, dst: bool, old: &[u32; 4], new: &[u32; 4]) -> Option<()> {
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
fn set_port(ctx: &TcContext, p: &Packet, dst: bool, old: u16, new: u16) -> Option<()> {
    if old == new {
        return Some(());
    }
    let off = p.l4 + if dst { 2 } else { 0 };
    ctx.store(off, &new, 0).ok()?;
    ctx.l4_csum_replace(p.csum_off(), old as u64, new as u64, p.l4_flags() | 2)
        .ok()
}

/// The frontend a new flow is addressed to — its destination address
/// (externalIP / LoadBalancer IP), else a NodePort on a node address — and
/// the node address SNATed flows leave from: the NodePort's own address, or
/// the configured SNAT source for external addresses (which the node does
/// not own, so replies from other nodes would not find their way back).
#[inline(always)]
fn lookup_frontend(p: &Packet) -> Option<(Frontend, [u32; 4])> {
    let mut key = FrontendKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    if let Some(fe) = maps::frontend(&key) {
        if fe.flags & FLAG_EXTERNAL != 0 {
            let index = if p.v4() { SNAT_V4 } else { SNAT_V6 };
            let snat = match SKIFF_SNAT.get(index) {
                Some(a) if *a != [0; 4] => *a,
                _ => p.daddr,
            };
            return Some((fe, snat));
        }
    }
    let node = NodeAddrKey {
        addr: p.daddr,
        family: p.family,
        pad: [0; 3],
    };
    SKIFF_NODE_ADDRS.get_ptr(node)?;
    key.addr = [0; 4];
    let fe = maps::frontend(&key)?;
    (fe.flags & FLAG_EXTERNAL != 0).then_some((fe, p.daddr))
}

/// Whether the flow's source is inside the frontend's source ranges.
#[inline(always)]
fn source_allowed(fe: &Frontend, p: &Packet) -> bool {
    if fe.flags & FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    let bits = if p.v4() { 32 } else { 128 };
    let key = Key::new(
        32 + bits,
        SourceRangeKey {
            frontend: fe.id.to_be(),
            addr: p.saddr,
        },
    );
    SKIFF_SRC_RANGES.get(&key).is_some()
}

/// Picks the backend of a new flow.
#[inline(always)]
fn choose(fe: &Frontend, p: &Packet) -> Option<(u32, Backend)> {
    let client = p.saddr;
    let now = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    let akey = AffinityKey {
        client: fold_addr(&client),
        frontend: fe.id,
        kind: AFFINITY_CLIENT,
    };
    if fe.flags & FLAG_AFFINITY != 0 {
        if let Some(a) = SKIFF_AFFINITY.get_ptr(akey) {
            // SAFETY: LRU value copied out at once.
            let a = unsafe { *a };
            if affinity_fresh(a.last_used, now, fe.affinity_timeout) {
                if let Some(b) = maps::backend(a.backend) {
                    return Some((a.backend, b));
                }
            }
        }
    }
    let mut id = None;
    if fe.maglev_size != 0 {
        if let Some(t) = SKIFF_MAGLEV.get_ptr(fe.id) {
            let h = flow_hash(&client, p.sport, &p.daddr, p.dport, p.proto);
            // User space keeps maglev_size ≤ MAGLEV_MAX; the mask is what
            // proves the bound to the verifier.
            let i = maglev_index(h, fe.maglev_size) as usize & (MAGLEV_TABLE_LEN - 1);
            // SAFETY: not preallocated, valid for this RCU section.
            id = Some(unsafe { (*t).entries[i] });
        }
    }
    let id = match id {
        Some(id) => id,
        // SAFETY: helper has no preconditions.
        None => maps::slot(fe, pick_slot(unsafe { bpf_get_prandom_u32() }, fe.count))?,
    };
    let b = maps::backend(id)?;
    if fe.flags & FLAG_AFFINITY != 0 {
        let v = AffinityValue {
            backend: id,
            pad: 0,
            last_used: now,
        };
        let _ = SKIFF_AFFINITY.insert(akey, v, 0);
    }
    Some((id, b))
}

/// Applies a connection-table entry to the packet.
#[inline(always)]
fn apply(ctx: &TcContext, p: &Packet, v: &CtValue) -> Option<()> {
    // Forward entries rewrite the destination (and the source with SNAT),
    // reply entries the source (and the destination with SNAT).
    let fwd = v.dir == CT_FORWARD;
    let (addr, port) = if fwd {
        (&p.daddr, p.dport)
    } else {
        (&p.saddr, p.sport)
    };
    set_addr(ctx, p, fwd, addr, &v.addr)?;
    set_port(ctx, p, fwd, port, v.port)?;
    if v.snat != 0 {
        let (addr, port) = if fwd {
            (&p.saddr, p.sport)
        } else {
            (&p.daddr, p.dport)
        };
        set_addr(ctx, p, !fwd, addr, &v.nat_addr)?;
        set_port(ctx, p, !fwd, port, v.nat_port)?;
    }
    Some(())
}

/// SNAT source ports tried when the client's own port is already taken
/// towards the backend (another client used the same port): above the usual
/// ephemeral range (32768–60999), so they miss the node's own connections.
const NAT_PORT_BASE: u32 = 61000;
/// Size of the SNAT port range.
const NAT_PORT_SPAN: u32 = 4536;
/// Ports tried in that range before the flow is dropped.
const NAT_PORT_TRIES: u32 = 8;

/// Records the reply direction of a new flow under `key` and returns the
/// source port the flow leaves with. Without SNAT the key is the client's
/// own tuple (an older entry is stale and replaced); with SNAT the node
/// address is shared by every client, so the client's port is kept only if
/// no other flow to this backend holds it, else a free one is searched.
#[inline(always)]
fn insert_reply(key: &mut CtKey, reply: &CtValue, snat: bool, salt: u32) -> Option<u16> {
    if !snat {
        SKIFF_CT.insert(*key, reply, 0).ok()?;
        return Some(key.dport);
    }
    if SKIFF_CT.insert(*key, reply, BPF_NOEXIST as u64).is_ok() {
        return Some(key.dport);
    }
    for i in 0..NAT_PORT_TRIES {
        let port = NAT_PORT_BASE + salt.wrapping_add(i.wrapping_mul(0x9e37_79b1)) % NAT_PORT_SPAN;
        key.dport = (port as u16).to_be();
        if SKIFF_CT.insert(*key, reply, BPF_NOEXIST as u64).is_ok() {
            return Some(key.dport);
        }
    }
    None
}

/// Records both directions of a new flow and DNATs its first packet.
#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Packet, key: &CtKey) -> i32 {
    let Some((fe, snat_addr)) = lookup_frontend(p) else {
        return TC_ACT_OK;
    };
    if !source_allowed(&fe, p) || fe.count == 0 {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    }
    let Some((id, b)) = choose(&fe, p) else {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    };
    let snat = fe.flags & FLAG_LOCAL == 0 && b.flags & BACKEND_LOCAL == 0;
    let mut reply_key = CtKey {
        saddr: b.addr,
        daddr: if snat { snat_addr } else { p.saddr },
        sport: b.port,
        dport: p.sport,
        proto: p.proto,
        family: p.family,
        pad: 0,
    };
    let reply = CtValue {
        addr: p.daddr,
        nat_addr: p.saddr,
        port: p.dport,
        nat_port: p.sport,
        backend: id,
        frontend: fe.id,
        dir: CT_REPLY,
        snat: snat as u8,
        pad: 0,
    };
    let salt = flow_hash(&p.saddr, p.sport, &b.addr, b.port, p.proto);
    let Some(nat_port) = insert_reply(&mut reply_key, &reply, snat, salt) else {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    };
    let fwd = CtValue {
        addr: b.addr,
        nat_addr: snat_addr,
        port: b.port,
        nat_port,
        backend: id,
        frontend: fe.id,
        dir: CT_FORWARD,
        snat: snat as u8,
        pad: 0,
    };
    if SKIFF_CT.insert(key, fwd, 0).is_err() {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    }
    maps::count(fe.id, 1, 1, ctx.len() as u64, 0);
    match apply(ctx, p, &fwd) {
        Some(()) => TC_ACT_OK,
        None => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn handle(ctx: &TcContext, ingress: bool) -> i32 {
    let Some(p) = parse(ctx) else {
        return TC_ACT_OK;
    };
    let key = CtKey {
        saddr: p.saddr,
        daddr: p.daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: p.family,
        pad: 0,
    };
    if let Some(v) = SKIFF_CT.get_ptr(key) {
        // SAFETY: LRU value copied out at once.
        let v = unsafe { *v };
        // A flow whose backend went away is balanced again.
        if v.dir == CT_REPLY || maps::backend(v.backend).is_some() {
            maps::count(v.frontend, 0, 1, ctx.len() as u64, 0);
            return match apply(ctx, &p, &v) {
                Some(()) => TC_ACT_OK,
                None => TC_ACT_SHOT,
            };
        }
    }
    if !ingress {
        return TC_ACT_OK;
    }
    new_flow(ctx, &p, &key)
}

/// NodePort / external IP load balancing on a node interface's ingress.
#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, true)
}

/// Reverse NAT of local backends' replies on a node interface's egress.
#[classifier]
pub fn skiff_tc_egress(ctx: TcContext) -> i32 {
    handle(&ctx, false)
}
