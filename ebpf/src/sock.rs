//! Socket-level load balancing for ClusterIP (and externalIPs/LB IPs reached
//! from this node): connect/sendmsg rewrite the service address to a backend
//! chosen once per connection (or per datagram destination on unconnected UDP
//! sockets); recvmsg/getpeername show the service address again, so the
//! application never sees the backend.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use skiff_common::{
    select::{affinity_fresh, pick_slot},
    AffinityKey, AffinityValue, Backend, Frontend, FrontendKey, NodeAddrKey, RevNatKey,
    RevNatValue, AFFINITY_CLIENT, AFFINITY_SOCKET, FAMILY_V4, FAMILY_V6, FLAG_AFFINITY,
    FLAG_SOCKET,
};

use crate::maps::{self, SKIFF_AFFINITY, SKIFF_NODE_ADDRS, SKIFF_REVNAT};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// errno of a refused connection (kube-proxy REJECTs with port-unreachable,
/// which applications see as ECONNREFUSED).
const ECONNREFUSED: i32 = 111;

/// Rejects the socket call with ECONNREFUSED instead of the default EPERM.
#[inline(always)]
fn refuse(fe: &Frontend) -> i32 {
    maps::count(fe.id, 0, 0, 0, 1);
    // SAFETY: helper valid for connect/sendmsg programs; the negative errno
    // becomes the syscall's result when the program denies.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// The frontend a socket call addresses: a service address, else a NodePort
/// on one of this node's addresses (so pods and node processes reach
/// NodePorts without the tc path, hairpin included).
#[inline(always)]
fn lookup(key: &FrontendKey) -> Option<Frontend> {
    if let Some(fe) = maps::frontend(key) {
        return (fe.flags & FLAG_SOCKET != 0).then_some(fe);
    }
    let node = NodeAddrKey {
        addr: key.addr,
        family: key.family,
        pad: [0; 3],
    };
    SKIFF_NODE_ADDRS.get_ptr(node)?;
    let np = FrontendKey {
        addr: [0; 4],
        ..*key
    };
    maps::frontend(&np)
}

/// The backend an unconnected UDP socket already sends this frontend's
/// datagrams to, if it still exists.
#[inline(always)]
fn pinned(cookie: u64, fe: &Frontend) -> Option<(u32, Backend)> {
    let key = AffinityKey {
        client: cookie,
        frontend: fe.id,
        kind: AFFINITY_SOCKET,
    };
    // SAFETY: LRU value copied out at once.
    let id = unsafe { (*SKIFF_AFFINITY.get_ptr(key)?).backend };
    Some((id, maps::backend(id)?))
}

/// The address the socket call names, as a frontend key.
///
/// SAFETY: `sa` is the context pointer the kernel handed the program.
#[inline(always)]
unsafe fn dialled(sa: *const bpf_sock_addr, family: u8) -> FrontendKey {
    unsafe {
        let addr = if family == FAMILY_V4 {
            [(*sa).user_ip4, 0, 0, 0]
        } else {
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ]
        };
        FrontendKey {
            addr,
            port: (*sa).user_port as u16,
            proto: (*sa).protocol as u8,
            family,
        }
    }
}

/// Writes `addr`/`port` (network order) as the socket call's address.
///
/// SAFETY: as in `dialled`.
#[inline(always)]
unsafe fn rewrite(sa: *mut bpf_sock_addr, family: u8, addr: &[u32; 4], port: u16) {
    unsafe {
        if family == FAMILY_V4 {
            (*sa).user_ip4 = addr[0];
        } else {
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
        }
        (*sa).user_port = port as u32;
    }
}

/// Chooses the backend for a new connection to a service: the client's
/// affinity entry if one is fresh, else a random live slot.
#[inline(always)]
fn choose(ctx: &SockAddrContext, fe: &skiff_common::Frontend) -> Option<(u32, Backend)> {
    let now = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    let akey = AffinityKey {
        // SAFETY: helper valid for sock_addr programs.
        client: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        frontend: fe.id,
        kind: AFFINITY_CLIENT,
    };
    if fe.flags & FLAG_AFFINITY != 0 {
        if let Some(a) = SKIFF_AFFINITY.get_ptr(akey) {
            // SAFETY: LRU value copied out at once.
            let a = unsafe { *a };
            if affinity_fresh(a.last_used, now, fe.affinity_timeout) {
                if let Some(b) = maps::backend(a.backend) {
                    let _ = SKIFF_AFFINITY.insert(
                        akey,
                        AffinityValue {
                            backend: a.backend,
                            pad: 0,
                            last_used: now,
                        },
                        0,
                    );
                    return Some((a.backend, b));
                }
            }
        }
    }
    // SAFETY: helper has no preconditions.
    let id = maps::slot(fe, pick_slot(unsafe { bpf_get_prandom_u32() }, fe.count))?;
    let b = maps::backend(id)?;
    if fe.flags & FLAG_AFFINITY != 0 {
        let _ = SKIFF_AFFINITY.insert(
            akey,
            AffinityValue {
                backend: id,
                pad: 0,
                last_used: now,
            },
            0,
        );
    }
    Some((id, b))
}

/// connect()/sendmsg(): translate a service address to a backend. An
/// unconnected UDP socket (`datagram`) keeps one backend per frontend while
/// that backend exists, so its datagrams behave as one flow.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: u8, datagram: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context.
    let key = unsafe { dialled(sa, family) };
    let Some(fe) = lookup(&key) else {
        return ALLOW;
    };
    if fe.count == 0 {
        // A service without endpoints refuses at once, like kube-proxy's REJECT.
        return refuse(&fe);
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let chosen = match datagram.then(|| pinned(cookie, &fe)).flatten() {
        Some(c) => Some(c),
        None => choose(ctx, &fe),
    };
    let Some((id, b)) = chosen else {
        return refuse(&fe);
    };
    if datagram {
        let pin = AffinityKey {
            client: cookie,
            frontend: fe.id,
            kind: AFFINITY_SOCKET,
        };
        let v = AffinityValue {
            backend: id,
            pad: 0,
            last_used: 0,
        };
        let _ = SKIFF_AFFINITY.insert(pin, v, 0);
    }
    // SAFETY: as above.
    unsafe { rewrite(sa, family, &b.addr, b.port) };
    let rkey = RevNatKey {
        cookie,
        addr: b.addr,
        port: b.port,
        family,
        pad: [0; 5],
    };
    let _ = SKIFF_REVNAT.insert(
        rkey,
        RevNatValue {
            addr: key.addr,
            port: key.port,
            pad: 0,
        },
        0,
    );
    maps::count(fe.id, 1, 0, 0, 0);
    ALLOW
}

/// recvmsg()/getpeername(): show the service address instead of the backend.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context.
    let seen = unsafe { dialled(sa, family) };
    let rkey = RevNatKey {
        // SAFETY: helper valid for sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: seen.addr,
        port: seen.port,
        family,
        pad: [0; 5],
    };
    if let Some(v) = SKIFF_REVNAT.get_ptr(rkey) {
        // SAFETY: LRU value copied out at once; `sa` as above.
        unsafe {
            let v = *v;
            rewrite(sa, family, &v.addr, v.port);
        }
    }
    ALLOW
}

/// ClusterIP connect() over IPv4.
#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V4, false)
}

/// ClusterIP connect() over IPv6.
#[cgroup_sock_addr(connect6)]
pub fn skiff_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V6, false)
}

/// Unconnected UDP sendmsg() to a ClusterIP over IPv4.
#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V4, true)
}

/// Unconnected UDP sendmsg() to a ClusterIP over IPv6.
#[cgroup_sock_addr(sendmsg6)]
pub fn skiff_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, FAMILY_V6, true)
}

/// UDP recvmsg() source address back to the ClusterIP (IPv4).
#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

/// UDP recvmsg() source address back to the ClusterIP (IPv6).
#[cgroup_sock_addr(recvmsg6)]
pub fn skiff_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}

/// getpeername() shows the ClusterIP (IPv4).
#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

/// getpeername() shows the ClusterIP (IPv6).
#[cgroup_sock_addr(getpeername6)]
pub fn skiff_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}
