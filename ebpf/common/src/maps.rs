//! Map layouts. Addresses are stored as four `u32` words in network byte order
//! (an IPv4 address in word 0, the others zero) so one key type serves both
//! families; ports are in network byte order as the kernel hands them over.

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// Address family tag for IPv4 keys.
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 keys.
pub const FAMILY_V6: u8 = 6;

/// Largest Maglev table the eBPF programs can index (a prime). Smaller primes
/// are configured per frontend through [`Frontend::maglev_size`].
pub const MAGLEV_MAX: usize = 16381;

/// Entries of a [`MaglevTable`]: the power of two above [`MAGLEV_MAX`], so the
/// programs bound an index with a mask the verifier understands.
pub const MAGLEV_TABLE_LEN: usize = 16384;

/// Frontend is served by the socket load balancer (ClusterIP, externalIPs and
/// LoadBalancer IPs reached from this node's pods and processes).
pub const FLAG_SOCKET: u16 = 1;
/// Frontend is served by the tc programs on node interfaces (NodePort,
/// externalIPs, LoadBalancer IPs reached from outside).
pub const FLAG_EXTERNAL: u16 = 1 << 1;
/// Clients are pinned to one backend for `affinity_timeout` seconds.
pub const FLAG_AFFINITY: u16 = 1 << 2;
/// Only sources in the frontend's `SOURCE_RANGES` entries may connect.
pub const FLAG_SOURCE_RANGES: u16 = 1 << 3;
/// externalTrafficPolicy Local: keep the client address (no SNAT).
pub const FLAG_LOCAL: u16 = 1 << 4;

/// Backend runs on this node (no SNAT needed to reach it).
pub const BACKEND_LOCAL: u8 = 1;

/// Names of the pinned maps, shared by the programs and the loader.
pub mod names {
    /// Frontends: [`super::FrontendKey`] → [`super::Frontend`].
    pub const FRONTENDS: &str = "SKIFF_FRONTENDS";
    /// Backend slots: [`super::SlotKey`] → backend id.
    pub const SLOTS: &str = "SKIFF_SLOTS";
    /// Backends: backend id → [`super::Backend`].
    pub const BACKENDS: &str = "SKIFF_BACKENDS";
    /// Maglev tables: frontend id → [`super::MaglevTable`].
    pub const MAGLEV: &str = "SKIFF_MAGLEV";
    /// Socket reverse NAT: [`super::RevNatKey`] → [`super::RevNatValue`].
    pub const REVNAT: &str = "SKIFF_REVNAT";
    /// Session affinity: [`super::AffinityKey`] → [`super::AffinityValue`].
    pub const AFFINITY: &str = "SKIFF_AFFINITY";
    /// tc connection table: [`super::CtKey`] → [`super::CtValue`].
    pub const CONNTRACK: &str = "SKIFF_CT";
    /// loadBalancerSourceRanges: LPM trie of [`super::SourceRangeKey`] → 1.
    pub const SOURCE_RANGES: &str = "SKIFF_SRC_RANGES";
    /// This node's addresses: [`super::NodeAddrKey`] → 1 (NodePort matches them).
    pub const NODE_ADDRS: &str = "SKIFF_NODE_ADDRS";
    /// Per-frontend counters (per CPU): frontend id → [`super::Counters`].
    pub const COUNTERS: &str = "SKIFF_COUNTERS";
    /// SNAT source per family (array: [`super::SNAT_V4`], [`super::SNAT_V6`]
    /// → address words) for flows to external/LoadBalancer IPs.
    pub const SNAT: &str = "SKIFF_SNAT";
    /// Which service port each frontend belongs to, for status and metrics
    /// (user space only): frontend id → [`super::ServiceName`].
    pub const SERVICE_NAMES: &str = "SKIFF_SVC_NAMES";
}

/// Index of the IPv4 SNAT source in the SNAT array.
pub const SNAT_V4: u32 = 0;
/// Index of the IPv6 SNAT source in the SNAT array.
pub const SNAT_V6: u32 = 1;

/// A service frontend: address, port and protocol a client dials.
/// NodePort frontends use the all-zero address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    /// Address words, network byte order.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// What a frontend resolves to. `gen` names the live backend-slot generation:
/// user space writes a new generation's slots, then replaces this value in one
/// map update, so a lookup sees either the old or the new set, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Stable id of this frontend (keys slots, Maglev table, counters).
    pub id: u32,
    /// Live slot generation.
    pub gen: u32,
    /// Number of backends in the live generation (0: reject).
    pub count: u32,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: u32,
    /// Maglev table size in use (a prime ≤ [`MAGLEV_MAX`]); 0 if none.
    pub maglev_size: u32,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Padding, zero.
    pub pad: u16,
}

/// One backend slot of a frontend's generation; `slot` counts from 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    /// Frontend id.
    pub frontend: u32,
    /// Generation the slot belongs to.
    pub gen: u32,
    /// Slot index, `0..count`.
    pub slot: u32,
}

/// A backend endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address words, network byte order.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// `BACKEND_*` bits.
    pub flags: u8,
}

/// A Maglev lookup table of backend ids; only the first `maglev_size` entries
/// of the frontend are used.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    /// Backend ids.
    pub entries: [u32; MAGLEV_TABLE_LEN],
}

/// Socket reverse NAT: which service address a socket's backend stands for,
/// so recvmsg/getpeername show the ClusterIP the application dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// Socket cookie.
    pub cookie: u64,
    /// Backend address words.
    pub addr: [u32; 4],
    /// Backend port, network byte order.
    pub port: u16,
    /// Address family.
    pub family: u8,
    /// Padding, zero.
    pub pad: [u8; 5],
}

/// The service address a [`RevNatKey`] maps back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    /// Service address words.
    pub addr: [u32; 4],
    /// Service port, network byte order.
    pub port: u16,
    /// Padding, zero.
    pub pad: u16,
}

/// [`AffinityKey::kind`] of a ClientIP affinity entry.
pub const AFFINITY_CLIENT: u32 = 0;
/// [`AffinityKey::kind`] of the backend an unconnected UDP socket is pinned
/// to for one frontend (so its datagrams form one flow, like a connection).
pub const AFFINITY_SOCKET: u32 = 1;

/// Affinity key: the client (netns cookie on the socket path, the source
/// address on the tc path, or a socket cookie for [`AFFINITY_SOCKET`]) and
/// the frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client identity: netns cookie, address words folded, or socket cookie.
    pub client: u64,
    /// Frontend id.
    pub frontend: u32,
    /// [`AFFINITY_CLIENT`] or [`AFFINITY_SOCKET`].
    pub kind: u32,
}

/// The backend a client is pinned to and when it was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// Backend id.
    pub backend: u32,
    /// Padding, zero.
    pub pad: u32,
    /// Last use, seconds of `bpf_ktime_get_ns`.
    pub last_used: u64,
}

/// Direction of a tc connection-table entry.
pub const CT_FORWARD: u8 = 0;
/// Reply direction: rewrite the source back to the frontend.
pub const CT_REPLY: u8 = 1;
/// Forward direction of a flow the node itself opened to a service address
/// (a process outside the node's cgroup, which socket LB does not see): the
/// node routed the packet for the service address, so after the DNAT it is
/// routed again for the backend.
pub const CT_FORWARD_ROUTE: u8 = 2;

/// A tc connection-table key: the packet's own addresses as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address words.
    pub saddr: [u32; 4],
    /// Destination address words.
    pub daddr: [u32; 4],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Address family.
    pub family: u8,
    /// Padding, zero.
    pub pad: u16,
}

/// What to do with a packet matching a [`CtKey`]: forward entries rewrite the
/// destination (DNAT, and the source when SNAT is on); reply entries rewrite
/// the source back to the frontend (and the destination back to the client
/// when the forward direction was SNATed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// New destination address (forward) or new source address (reply).
    pub addr: [u32; 4],
    /// Forward with SNAT: new source address. Reply with SNAT: new destination.
    pub nat_addr: [u32; 4],
    /// New destination port (forward) or new source port (reply).
    pub port: u16,
    /// Forward with SNAT: new source port. Reply with SNAT: new destination port.
    pub nat_port: u16,
    /// Backend id (forward entries).
    pub backend: u32,
    /// Frontend id.
    pub frontend: u32,
    /// [`CT_FORWARD`], [`CT_FORWARD_ROUTE`] or [`CT_REPLY`].
    pub dir: u8,
    /// 1 if the source (forward) or destination (reply) is rewritten too.
    pub snat: u8,
    /// Padding, zero.
    pub pad: u16,
}

/// LPM trie key for loadBalancerSourceRanges: `prefix_len` counts the 32
/// frontend-id bits plus the range's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKey {
    /// Frontend id, big endian so it forms the leading 32 bits of the prefix.
    pub frontend: u32,
    /// Source address words.
    pub addr: [u32; 4],
}

/// A node-local address NodePort frontends answer on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddrKey {
    /// Address words.
    pub addr: [u32; 4],
    /// Address family.
    pub family: u8,
    /// Padding, zero.
    pub pad: [u8; 3],
}

/// Per-frontend counters (a per-CPU array value; user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections (socket path) or new flows (tc path) balanced.
    pub connections: u64,
    /// Packets rewritten by the tc path.
    pub packets: u64,
    /// Bytes of those packets (as the kernel counts them: L2 header on).
    pub bytes: u64,
    /// Connections refused: no backend, or source range mismatch.
    pub dropped: u64,
}

/// Address words of an IPv4 address given as octets (as `sin_addr` holds it).
pub const fn v4_words(octets: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Address words of an IPv6 address given as octets (as `sin6_addr` holds it).
pub const fn v6_words(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

impl FrontendKey {
    /// The key for an IPv4 frontend; `port` in host order.
    pub const fn v4(octets: [u8; 4], port: u16, proto: u8) -> Self {
        FrontendKey {
            addr: v4_words(octets),
            port: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    /// The key for an IPv6 frontend; `port` in host order.
    pub const fn v6(octets: [u8; 16], port: u16, proto: u8) -> Self {
        FrontendKey {
            addr: v6_words(octets),
            port: port.to_be(),
            proto,
            family: FAMILY_V6,
        }
    }

    /// The NodePort key (any node address) for `family`; `port` in host order.
    pub const fn node_port(family: u8, port: u16, proto: u8) -> Self {
        FrontendKey {
            addr: [0; 4],
            port: port.to_be(),
            proto,
            family,
        }
    }
}

#[cfg(any(test, feature = "user"))]
mod std_conv {
    //! Conversions from `std::net` addresses for the loader.
    use super::*;
    use std::net::{IpAddr, SocketAddr};

    /// Address words and family of an IP address.
    pub fn ip_words(ip: IpAddr) -> ([u32; 4], u8) {
        match ip {
            IpAddr::V4(v4) => (v4_words(v4.octets()), FAMILY_V4),
            IpAddr::V6(v6) => (v6_words(v6.octets()), FAMILY_V6),
        }
    }

    /// The IP address stored in address words of `family`.
    pub fn words_ip(addr: [u32; 4], family: u8) -> IpAddr {
        let b = |w: u32| w.to_ne_bytes();
        if family == FAMILY_V6 {
            let mut o = [0u8; 16];
            for (i, w) in addr.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&b(*w));
            }
            IpAddr::from(o)
        } else {
            IpAddr::from(b(addr[0]))
        }
    }

    impl FrontendKey {
        /// The key for a frontend socket address.
        pub fn from_socket(sa: SocketAddr, proto: u8) -> Self {
            let (addr, family) = ip_words(sa.ip());
            FrontendKey {
                addr,
                port: sa.port().to_be(),
                proto,
                family,
            }
        }
    }

    impl Backend {
        /// A backend at `sa`.
        pub fn from_socket(sa: SocketAddr, local: bool) -> Self {
            let (addr, family) = ip_words(sa.ip());
            Backend {
                addr,
                port: sa.port().to_be(),
                family,
                flags: if local { BACKEND_LOCAL } else { 0 },
            }
        }

        /// The backend's socket address.
        pub fn socket(&self) -> SocketAddr {
            SocketAddr::new(words_ip(self.addr, self.family), u16::from_be(self.port))
        }
    }
}
#[cfg(any(test, feature = "user"))]
pub use std_conv::{ip_words, words_ip};

#[cfg(feature = "user")]
mod pod {
    //! aya needs every map key/value to be plain old data.
    #![allow(unsafe_code)]
    use super::*;
    // SAFETY: all types are #[repr(C)], Copy, made only of integers, with
    // explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for NodeAddrKey {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for crate::ServiceName {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The eBPF programs and the loader agree on layouts only if there is no
    /// implicit padding: the kernel hashes every byte of a key.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FrontendKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<Frontend>(), 5 * 4 + 2 + 2);
        assert_eq!(size_of::<SlotKey>(), 12);
        assert_eq!(size_of::<Backend>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<RevNatKey>(), 8 + 16 + 2 + 1 + 5);
        assert_eq!(size_of::<RevNatValue>(), 20);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<CtKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<CtValue>(), 16 + 16 + 2 + 2 + 4 + 4 + 1 + 1 + 2);
        assert_eq!(size_of::<SourceRangeKey>(), 20);
        assert_eq!(size_of::<NodeAddrKey>(), 20);
        assert_eq!(size_of::<Counters>(), 4 * 8);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_TABLE_LEN);
        assert!(MAGLEV_TABLE_LEN.is_power_of_two() && MAGLEV_TABLE_LEN > MAGLEV_MAX);
    }

    /// Keys must hold the bytes the kernel shows the programs: `user_ip4`
    /// and `user_port` are the sockaddr's network-order bytes.
    #[test]
    fn frontend_key_holds_sockaddr_bytes() {
        let key = FrontendKey::v4([10, 96, 0, 10], 53, PROTO_UDP);
        assert_eq!(key.addr[0].to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 53]);
        assert_eq!(key.family, FAMILY_V4);
        let sa: std::net::SocketAddr = "10.96.0.10:53".parse().unwrap();
        assert_eq!(FrontendKey::from_socket(sa, PROTO_UDP), key);
        let v6: std::net::SocketAddr = "[fd00:10:96::a]:443".parse().unwrap();
        let k6 = FrontendKey::from_socket(v6, PROTO_TCP);
        assert_eq!(k6.family, FAMILY_V6);
        assert_eq!(k6.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0x10]);
        assert_eq!(k6.addr[3].to_ne_bytes(), [0, 0, 0, 0x0a]);
        assert_eq!(words_ip(k6.addr, k6.family), v6.ip());
        // Same address and port over another protocol is another frontend.
        assert_ne!(FrontendKey::v4([10, 96, 0, 10], 53, PROTO_TCP), key);
    }

    #[test]
    fn backend_round_trips_its_socket_address() {
        for s in ["10.244.1.7:8080", "[fd00:244::7]:8080"] {
            let sa: std::net::SocketAddr = s.parse().unwrap();
            let b = Backend::from_socket(sa, true);
            assert_eq!(b.socket(), sa);
            assert_eq!(b.flags & BACKEND_LOCAL, BACKEND_LOCAL);
        }
        let nodeport = FrontendKey::node_port(FAMILY_V4, 30080, PROTO_TCP);
        assert_eq!(nodeport.addr, [0; 4]);
        assert_eq!(u16::from_be(nodeport.port), 30080);
    }
}
