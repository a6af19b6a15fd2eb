//! The pod-CIDR allocator of the node IPAM controller, as upstream's
//! `cidrset`: the cluster CIDR cut into equal subnets of the node mask size,
//! a bit per subnet, and a rotating cursor so a released subnet is not
//! handed out again straight away. Pure; IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Most subnets one cluster CIDR is cut into (upstream's limit: 16 bits).
pub const MAX_SUBNET_BITS: u8 = 16;

/// Errors of the allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The node mask is shorter than the cluster prefix or too long.
    #[error("node CIDR mask /{mask} does not fit cluster CIDR {cluster}: it must be between /{} and /{}", cluster.prefix(), max_prefix(cluster))]
    BadMask {
        /// The cluster CIDR.
        cluster: IpNetwork,
        /// The node mask size.
        mask: u8,
    },
    /// Too many subnets to track.
    #[error("cluster CIDR {cluster} cut into /{mask} subnets gives more than 2^{MAX_SUBNET_BITS} of them; use a longer --cluster-cidr prefix or a shorter --node-cidr-mask-size")]
    TooManySubnets {
        /// The cluster CIDR.
        cluster: IpNetwork,
        /// The node mask size.
        mask: u8,
    },
    /// Every subnet is taken.
    #[error("no /{mask} pod CIDR is left in cluster CIDR {cluster}; delete unused nodes or widen --cluster-cidr")]
    Exhausted {
        /// The cluster CIDR.
        cluster: IpNetwork,
        /// The node mask size.
        mask: u8,
    },
    /// A CIDR lies outside the cluster CIDR (or is of the other family).
    #[error("{cidr} is not inside cluster CIDR {cluster}")]
    OutOfRange {
        /// The CIDR given.
        cidr: IpNetwork,
        /// The cluster CIDR.
        cluster: IpNetwork,
    },
}

fn max_prefix(net: &IpNetwork) -> u8 {
    match net {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The first and last address of `net` as integers.
fn bounds(net: &IpNetwork) -> (u128, u128) {
    let bits = u32::from(max_prefix(net));
    let host_bits = bits - u32::from(net.prefix());
    let size_minus_one = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let first = to_u128(net.ip()) & !size_minus_one;
    (first, first | size_minus_one)
}

/// The subnets of one cluster CIDR and which are taken.
#[derive(Debug, Clone)]
pub struct CidrSet {
    cluster: IpNetwork,
    mask: u8,
    base: u128,
    /// Host bits of one subnet (the shift from index to address offset).
    subnet_shift: u32,
    used: Vec<bool>,
    allocated: usize,
    next: usize,
}

impl CidrSet {
    /// Cuts `cluster` into `/mask` subnets.
    pub fn new(cluster: IpNetwork, mask: u8) -> Result<CidrSet, CidrError> {
        let bits = max_prefix(&cluster);
        if mask < cluster.prefix() || mask > bits {
            return Err(CidrError::BadMask { cluster, mask });
        }
        if mask - cluster.prefix() > MAX_SUBNET_BITS {
            return Err(CidrError::TooManySubnets { cluster, mask });
        }
        let count = 1usize << (mask - cluster.prefix());
        Ok(CidrSet {
            cluster,
            mask,
            base: bounds(&cluster).0,
            subnet_shift: u32::from(bits - mask),
            used: vec![false; count],
            allocated: 0,
            next: 0,
        })
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> IpNetwork {
        self.cluster
    }

    /// Subnets handed out or occupied.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    fn subnet(&self, index: usize) -> IpNetwork {
        let offset = (index as u128).checked_shl(self.subnet_shift).unwrap_or(0);
        let start = self.base + offset;
        let ip = match self.cluster {
            IpNetwork::V4(_) => {
                IpAddr::V4(Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX)))
            }
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(start)),
        };
        // The mask is validated in new(); the address is the network start.
        IpNetwork::new(ip, self.mask).unwrap_or(self.cluster)
    }

    /// Takes the next free subnet after the last one handed out.
    pub fn allocate(&mut self) -> Result<IpNetwork, CidrError> {
        let count = self.used.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            if !self.used[index] {
                self.used[index] = true;
                self.allocated += 1;
                self.next = (index + 1) % count;
                return Ok(self.subnet(index));
            }
        }
        Err(CidrError::Exhausted {
            cluster: self.cluster,
            mask: self.mask,
        })
    }

    /// The subnet indices `cidr` overlaps.
    fn indices(&self, cidr: &IpNetwork) -> Result<std::ops::RangeInclusive<usize>, CidrError> {
        let out_of_range = || CidrError::OutOfRange {
            cidr: *cidr,
            cluster: self.cluster,
        };
        if cidr.is_ipv4() != self.cluster.is_ipv4() {
            return Err(out_of_range());
        }
        let (first, last) = bounds(cidr);
        let (cluster_first, cluster_last) = bounds(&self.cluster);
        if last < cluster_first || first > cluster_last {
            return Err(out_of_range());
        }
        let index = |addr: u128| {
            usize::try_from((addr - self.base) >> self.subnet_shift).unwrap_or(usize::MAX)
        };
        Ok(index(first.max(cluster_first))..=index(last.min(cluster_last)))
    }

    /// Marks every subnet `cidr` overlaps as taken (a podCIDR found on a node).
    pub fn occupy(&mut self, cidr: &IpNetwork) -> Result<(), CidrError> {
        for i in self.indices(cidr)? {
            if let Some(slot) = self.used.get_mut(i) {
                if !*slot {
                    *slot = true;
                    self.allocated += 1;
                }
            }
        }
        Ok(())
    }

    /// Frees every subnet `cidr` overlaps.
    pub fn release(&mut self, cidr: &IpNetwork) -> Result<(), CidrError> {
        for i in self.indices(cidr)? {
            if let Some(slot) = self.used.get_mut(i) {
                if *slot {
                    *slot = false;
                    self.allocated -= 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("valid CIDR")
    }

    #[test]
    fn hands_out_distinct_subnets_in_order() {
        let mut set = CidrSet::new(net("10.244.0.0/16"), 24).expect("set");
        assert_eq!(set.allocate(), Ok(net("10.244.0.0/24")));
        assert_eq!(set.allocate(), Ok(net("10.244.1.0/24")));
        assert_eq!(set.allocated(), 2);
    }

    #[test]
    fn exhausts_and_recovers_after_release() {
        let mut set = CidrSet::new(net("10.0.0.0/30"), 31).expect("set");
        let a = set.allocate().expect("first");
        let b = set.allocate().expect("second");
        assert_ne!(a, b);
        assert!(matches!(set.allocate(), Err(CidrError::Exhausted { .. })));
        set.release(&a).expect("release");
        assert_eq!(set.allocate(), Ok(a));
    }

    #[test]
    fn released_subnets_are_not_reused_at_once() {
        let mut set = CidrSet::new(net("10.244.0.0/16"), 24).expect("set");
        let a = set.allocate().expect("a");
        set.release(&a).expect("release");
        assert_eq!(set.allocate(), Ok(net("10.244.1.0/24")));
    }

    #[test]
    fn occupied_subnets_are_skipped() {
        let mut set = CidrSet::new(net("10.244.0.0/16"), 24).expect("set");
        set.occupy(&net("10.244.0.0/24")).expect("occupy");
        set.occupy(&net("10.244.0.0/24")).expect("occupy twice");
        set.occupy(&net("10.244.2.0/23"))
            .expect("occupy a bigger one");
        assert_eq!(set.allocated(), 3);
        assert_eq!(set.allocate(), Ok(net("10.244.1.0/24")));
        assert_eq!(set.allocate(), Ok(net("10.244.4.0/24")));
    }

    #[test]
    fn out_of_range_and_bad_masks_are_rejected() {
        let mut set = CidrSet::new(net("10.244.0.0/16"), 24).expect("set");
        assert!(matches!(
            set.occupy(&net("192.168.0.0/24")),
            Err(CidrError::OutOfRange { .. })
        ));
        assert!(matches!(
            set.occupy(&net("fd00::/64")),
            Err(CidrError::OutOfRange { .. })
        ));
        assert!(matches!(
            CidrSet::new(net("10.244.0.0/16"), 8),
            Err(CidrError::BadMask { .. })
        ));
        assert!(matches!(
            CidrSet::new(net("10.0.0.0/8"), 30),
            Err(CidrError::TooManySubnets { .. })
        ));
    }

    #[test]
    fn ipv6_subnets() {
        let mut set = CidrSet::new(net("fd00:10:244::/56"), 64).expect("set");
        assert_eq!(set.allocate(), Ok(net("fd00:10:244::/64")));
        assert_eq!(set.allocate(), Ok(net("fd00:10:244:1::/64")));
    }

    #[test]
    fn unaligned_cluster_cidr_is_aligned() {
        let mut set = CidrSet::new(net("10.244.7.9/16"), 24).expect("set");
        assert_eq!(set.allocate(), Ok(net("10.244.0.0/24")));
    }
}
