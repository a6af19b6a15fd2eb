//! Backend selection rules shared by the eBPF programs and user space. These
//! run inside the programs, so they are branch-light and loop-free.

/// Slot of a connection's backend: uniform over `count` live backends given a
/// random 32-bit number. `count` must be non-zero.
#[inline(always)]
pub fn pick_slot(random: u32, count: u32) -> u32 {
    random % count
}

/// Whether a ClientIP affinity entry last used at `last_used` (seconds) still
/// holds at `now` (seconds) with a timeout of `timeout` seconds.
#[inline(always)]
pub fn affinity_fresh(last_used: u64, now: u64, timeout: u32) -> bool {
    now >= last_used && now - last_used <= timeout as u64
}

/// Folds address words into a 64-bit client identity for the affinity map.
#[inline(always)]
pub fn fold_addr(addr: &[u32; 4]) -> u64 {
    ((addr[0] as u64) << 32 | addr[1] as u64) ^ ((addr[2] as u64) << 32 | addr[3] as u64)
}

/// The murmur3 finaliser: spreads every input bit over the output.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow's client side and frontend, used to index the Maglev
/// table: every node computes the same value for the same flow, so a flow
/// lands on the same backend whichever node receives it.
#[inline(always)]
pub fn flow_hash(saddr: &[u32; 4], sport: u16, daddr: &[u32; 4], dport: u16, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9u32 ^ proto as u32;
    h = mix(h ^ saddr[0]);
    h = mix(h ^ saddr[1]);
    h = mix(h ^ saddr[2]);
    h = mix(h ^ saddr[3]);
    h = mix(h ^ daddr[0]);
    h = mix(h ^ daddr[1]);
    h = mix(h ^ daddr[2]);
    h = mix(h ^ daddr[3]);
    mix(h ^ ((sport as u32) << 16 | dport as u32))
}

/// Index into a Maglev table of `size` entries for a flow hash; `size` must be
/// non-zero.
#[inline(always)]
pub fn maglev_index(hash: u32, size: u32) -> u32 {
    hash % size
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Whether a packet of protocol `proto` (`tcp_flags`: its TCP flags byte, 0
/// for UDP) follows the forward connection-table entry it matches, whose
/// backend is (`backend_live`) or is no longer in the backend map; if not,
/// it is balanced as a new flow.
///
/// A TCP connection keeps its backend until it ends, even once the backend
/// left the Service: a terminating pod still serves what it accepted, and
/// any other backend would answer the connection's next packet with a reset
/// (kube-proxy leaves TCP conntrack entries alone for the same reason). A
/// SYN opens a new connection, though, possibly on a client port whose old
/// entry names a backend that is gone: that one is balanced again, as is a
/// UDP flow whose backend went away (kube-proxy flushes those entries).
#[inline(always)]
pub fn keeps_backend(proto: u8, tcp_flags: u8, backend_live: bool) -> bool {
    let opening = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    backend_live || (proto == crate::PROTO_TCP && !opening)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_slot_covers_every_backend_evenly() {
        let mut hits = [0u32; 3];
        let mut x = 1u32;
        for _ in 0..30_000 {
            // xorshift: a stand-in for bpf_get_prandom_u32.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            hits[pick_slot(x, 3) as usize] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "uneven spread {hits:?}");
        }
    }

    #[test]
    fn affinity_expires_after_timeout() {
        assert!(affinity_fresh(100, 100, 10));
        assert!(affinity_fresh(100, 110, 10));
        assert!(!affinity_fresh(100, 111, 10));
        // A clock that went backwards (entry from before a reboot) is stale.
        assert!(!affinity_fresh(100, 50, 10_800));
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let a = [u32::from_ne_bytes([192, 168, 1, 2]), 0, 0, 0];
        let d = [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0];
        let base = flow_hash(&a, 40000, &d, 30080, 6);
        assert_eq!(base, flow_hash(&a, 40000, &d, 30080, 6));
        assert_ne!(base, flow_hash(&a, 40001, &d, 30080, 6));
        assert_ne!(base, flow_hash(&a, 40000, &d, 30081, 6));
        assert_ne!(base, flow_hash(&a, 40000, &d, 30080, 17));
        assert_ne!(base, flow_hash(&d, 40000, &a, 30080, 6));
        let a2 = [u32::from_ne_bytes([192, 168, 1, 3]), 0, 0, 0];
        assert_ne!(base, flow_hash(&a2, 40000, &d, 30080, 6));
        assert_ne!(fold_addr(&a), fold_addr(&a2));
    }

    #[test]
    fn tcp_flows_keep_their_backend_until_a_new_syn() {
        use crate::{PROTO_TCP, PROTO_UDP};
        // Mid-connection packets (ACK, PSH, FIN, RST, SYN-ACK) never move,
        // whether or not their backend is still there.
        for flags in [TCP_ACK, 0x18, 0x11, 0x04, 0x14, TCP_SYN | TCP_ACK] {
            assert!(keeps_backend(PROTO_TCP, flags, true));
            assert!(keeps_backend(PROTO_TCP, flags, false));
        }
        // A SYN keeps a live backend and leaves a gone one.
        assert!(keeps_backend(PROTO_TCP, TCP_SYN, true));
        assert!(!keeps_backend(PROTO_TCP, TCP_SYN, false));
        // UDP follows its backend only while it exists.
        assert!(keeps_backend(PROTO_UDP, 0, true));
        assert!(!keeps_backend(PROTO_UDP, 0, false));
    }
}
