//! tc (clsact) programs on node interfaces for NodePort, externalIPs and
//! LoadBalancer IPs, IPv4 and IPv6. Ingress: a packet of a known flow is
//! rewritten as its connection-table entry says; the first packet of a new
//! flow to a frontend picks a backend (affinity entry, else Maglev), records
//! both directions and is DNATed (and SNATed to the node for remote backends
//! unless externalTrafficPolicy is Local). Egress: replies of local backends
//! get the frontend address back, and flows the node itself opens to a
//! ClusterIP outside the socket load balancer's reach are balanced (`host`).
//!
//! Addresses are handled as four words in both families (IPv4 in word 0), so
//! one code path serves both; only parsing and checksum fixing differ
//! (`packet`). ICMP errors about translated flows are translated back
//! (`icmp`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use skiff_common::{
    select::{affinity_fresh, flow_hash, fold_addr, maglev_index, pick_slot},
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, Frontend, FrontendKey, NodeAddrKey,
    SourceRangeKey, AFFINITY_CLIENT, BACKEND_LOCAL, CT_FORWARD, CT_FORWARD_ROUTE, CT_REPLY,
    FLAG_AFFINITY, FLAG_EXTERNAL, FLAG_LOCAL, FLAG_SOURCE_RANGES, MAGLEV_TABLE_LEN, SNAT_V4,
    SNAT_V6,
};

mod host;
mod icmp;
mod packet;

use packet::{parse, set_addr, set_port, Packet};

use skiff_common::select::keeps_backend;

use crate::maps::{
    self, SKIFF_AFFINITY, SKIFF_CT, SKIFF_MAGLEV, SKIFF_NODE_ADDRS, SKIFF_SNAT, SKIFF_SRC_RANGES,
};

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
    let fwd = v.dir != CT_REPLY;
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

/// Records both directions of a new flow (`key`: its forward key) from `p`
/// to backend `b` (id `id`) of frontend `fe_id`: first the reply entry —
/// when `snat`, the flow leaves from `snat_addr` on a free NAT port — then
/// the forward entry of kind `dir`, which is returned. None when the table
/// takes neither: the caller drops the packet.
#[inline(always)]
fn record_flow(
    p: &Packet,
    key: &CtKey,
    fe_id: u32,
    (id, b): (u32, &Backend),
    snat: bool,
    snat_addr: [u32; 4],
    dir: u8,
) -> Option<CtValue> {
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
        frontend: fe_id,
        dir: CT_REPLY,
        snat: snat as u8,
        pad: 0,
    };
    let salt = flow_hash(&p.saddr, p.sport, &b.addr, b.port, p.proto);
    let nat_port = insert_reply(&mut reply_key, &reply, snat, salt)?;
    let fwd = CtValue {
        addr: b.addr,
        nat_addr: snat_addr,
        port: b.port,
        nat_port,
        backend: id,
        frontend: fe_id,
        dir,
        snat: snat as u8,
        pad: 0,
    };
    SKIFF_CT.insert(key, fwd, 0).ok()?;
    Some(fwd)
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
    let Some(fwd) = record_flow(p, key, fe.id, (id, &b), snat, snat_addr, CT_FORWARD) else {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    };
    maps::count(fe.id, 1, 1, ctx.len() as u64, 0);
    match apply(ctx, p, &fwd) {
        Some(()) => TC_ACT_OK,
        None => TC_ACT_SHOT,
    }
}

/// What [`handle`] returns for a packet that is not TCP or UDP.
const NOT_TCP_UDP: i32 = -1;

/// The TCP flags byte of the packet (0 for UDP).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, p: &Packet) -> u8 {
    if p.proto != skiff_common::PROTO_TCP {
        return 0;
    }
    ctx.load(p.l4 + 13).unwrap_or(0)
}

/// A TCP or UDP packet through the connection table or to a frontend.
/// Its own BPF function: with the ICMP path inlined beside it, the
/// program's stack frame would pass the 512-byte limit.
#[inline(never)]
fn handle(ctx: &TcContext, ingress: bool) -> i32 {
    let Some(p) = parse(ctx) else {
        return NOT_TCP_UDP;
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
        // A TCP connection keeps its backend until it ends, even one that
        // left the Service; a SYN or UDP flow whose backend went away is
        // balanced again (see `keeps_backend`).
        let live = maps::backend(v.backend).is_some();
        if v.dir == CT_REPLY || keeps_backend(p.proto, tcp_flags(ctx, &p), live) {
            maps::count(v.frontend, 0, 1, ctx.len() as u64, 0);
            return match apply(ctx, &p, &v) {
                Some(()) if v.dir == CT_FORWARD_ROUTE => host::route(ctx, &p, &v.addr),
                Some(()) => TC_ACT_OK,
                None => TC_ACT_SHOT,
            };
        }
    }
    if !ingress {
        return host::new_flow(ctx, &p, &key);
    }
    new_flow(ctx, &p, &key)
}

/// NodePort / external IP load balancing on a node interface's ingress.
#[classifier]
pub fn skiff_tc_ingress(ctx: TcContext) -> i32 {
    classify(&ctx, true)
}

/// Reverse NAT of local backends' replies, and balancing of the ClusterIP
/// flows the node itself opens, on a node interface's egress.
#[classifier]
pub fn skiff_tc_egress(ctx: TcContext) -> i32 {
    classify(&ctx, false)
}

#[inline(always)]
fn classify(ctx: &TcContext, ingress: bool) -> i32 {
    match handle(ctx, ingress) {
        NOT_TCP_UDP => {
            icmp::translate(ctx);
            TC_ACT_OK
        }
        verdict => verdict,
    }
}
