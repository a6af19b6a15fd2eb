//! ClusterIPs for processes outside the node's cgroup subtree (a host daemon,
//! `ip netns exec <node> curl …`): socket LB never sees their connect(), so
//! their packets leave the node's stack addressed to the service. The node
//! routed them for the service address (its default route, usually), and
//! they are caught on the way out, on the egress of the node interface that
//! route chose: the first packet of such a flow picks a backend (the same
//! slots the socket path uses), both directions go into the connection
//! table, and every forward packet is DNATed and routed again for the
//! backend — a pod on this node's bridge or one behind another node. The
//! backend's replies come back to the node address and get the service
//! address back on the ingress of whichever node interface they arrive on.
//!
//! Only flows from one of the node's own addresses are taken: packets a node
//! forwards for others are not its to translate here.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
    EbpfContext,
};
use skiff_common::{CtKey, FrontendKey, NodeAddrKey, CT_FORWARD_ROUTE, FLAG_SOCKET};

use super::{apply, choose, record_flow, Packet};
use crate::maps::{self, SKIFF_NODE_ADDRS};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;

/// Balances the first packet of a flow this node opened to a ClusterIP
/// (`key` is its connection-table key); anything else passes untouched.
#[inline(always)]
pub fn new_flow(ctx: &TcContext, p: &Packet, key: &CtKey) -> i32 {
    let fkey = FrontendKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    let Some(fe) = maps::frontend(&fkey) else {
        return TC_ACT_OK;
    };
    let node = NodeAddrKey {
        addr: p.saddr,
        family: p.family,
        pad: [0; 3],
    };
    if fe.flags & FLAG_SOCKET == 0 || SKIFF_NODE_ADDRS.get_ptr(node).is_none() {
        return TC_ACT_OK;
    }
    let Some((id, b)) = (if fe.count == 0 { None } else { choose(&fe, p) }) else {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    };
    // The backend answers the node address the flow came from, so no SNAT.
    let Some(fwd) = record_flow(p, key, fe.id, (id, &b), false, p.saddr, CT_FORWARD_ROUTE) else {
        maps::count(fe.id, 0, 0, 0, 1);
        return TC_ACT_SHOT;
    };
    maps::count(fe.id, 1, 1, ctx.len() as u64, 0);
    match apply(ctx, p, &fwd) {
        Some(()) => route(ctx, p, &b.addr),
        None => TC_ACT_SHOT,
    }
}

/// Sends a packet just DNATed to `daddr` out of the interface the node's
/// routes choose for it, with the neighbour's address filled in by the
/// kernel. If there is no forwarding route (a backend on a node address,
/// say), the packet goes on as first routed.
#[inline(always)]
pub fn route(ctx: &TcContext, p: &Packet, daddr: &[u32; 4]) -> i32 {
    // SAFETY: a plain C struct, all zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = p.proto;
    // SAFETY: the context points at the program's __sk_buff.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if p.v4() {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = p.saddr[0];
        params.__bindgen_anon_4.ipv4_dst = daddr[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = p.saddr;
        params.__bindgen_anon_4.ipv6_dst = *daddr;
    }
    // A forwarding lookup as if the packet had come in on this interface
    // (an output lookup would be bound to it); the neighbour is resolved by
    // bpf_redirect_neigh.
    // SAFETY: params lives on the stack for the call, its size is given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != FIB_SUCCESS {
        return TC_ACT_OK;
    }
    // SAFETY: no parameters: the kernel looks up the next hop itself.
    let r = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) };
    if r < 0 {
        TC_ACT_SHOT
    } else {
        r as i32
    }
}
