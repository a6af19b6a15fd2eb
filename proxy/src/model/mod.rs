//! The service model every data plane shares: Services, EndpointSlices and
//! the local Node folded into a [`ServiceMap`] — one entry per service port,
//! with the endpoints this node must send traffic to already chosen by the
//! upstream kube-proxy rules (ready, else serving+terminating; Local traffic
//! policies restrict to this node; PreferClose / topology hints restrict to
//! this zone).
//!
//! Pure: no I/O here. [`build`] turns API objects into a map, [`diff`] turns
//! two maps into the [`Changes`] a data plane applies.

mod build;
mod diff;
mod topology;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

pub use ipnetwork::IpNetwork;

pub use build::{
    build, node_info, BuildInput, NODE_LOCAL_DNS_LINK, NODE_LOCAL_LABEL, SERVICE_NAME_LABEL,
    ZONE_LABEL,
};
pub use diff::{diff, Changes};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as upstream.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10800;

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Lower-case name as iptables and `/etc/protocols` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number (IPPROTO_*).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node (and the client source IP is kept).
    Local,
}

/// Identity of one service port: `namespace/name:portname/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// `ports[].name` (empty for a single unnamed port).
    pub port: String,
    /// Protocol of the port.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port,
            self.protocol.as_str()
        )
    }
}

/// What the proxy knows about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name`; endpoints with this `nodeName` are local.
    pub name: String,
    /// `topology.kubernetes.io/zone` label, for PreferClose / topology hints.
    pub zone: Option<String>,
    /// `status.addresses` that are IPs (InternalIP, ExternalIP).
    pub addresses: Vec<IpAddr>,
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Backend address.
    pub ip: IpAddr,
    /// Backend port (the EndpointSlice port matching the service port's name).
    pub port: u16,
    /// `conditions.ready` (absent means ready, as upstream).
    pub ready: bool,
    /// `conditions.serving` (absent means `ready`).
    pub serving: bool,
    /// `conditions.terminating` (absent means false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones`.
    pub zone_hints: Vec<String>,
    /// Whether the endpoint runs on this node.
    pub is_local: bool,
}

/// Everything a data plane needs to program one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Identity.
    pub name: ServicePortName,
    /// `spec.clusterIPs` (one per family).
    pub cluster_ips: Vec<IpAddr>,
    /// `ports[].port`.
    pub port: u16,
    /// `ports[].nodePort` (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` (empty: every source is allowed).
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// ClientIP session affinity timeout; `None` without affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// `spec.externalTrafficPolicy` (Cluster unless the service is externally reachable).
    pub external_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_policy: TrafficPolicy,
    /// `spec.trafficDistribution: PreferClose` (or the topology-mode annotation).
    pub prefer_close: bool,
    /// `spec.healthCheckNodePort` (LoadBalancer with externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
    /// Every endpoint of the port from all its slices, sorted, one per IP.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints for traffic to the ClusterIP (internal policy applied).
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints for NodePort / externalIP / LoadBalancer traffic (external policy applied).
    pub external_endpoints: Vec<Endpoint>,
    /// Ready endpoints on this node (what the health-check port reports).
    pub local_ready_endpoints: usize,
}

impl ServicePort {
    /// A plain ClusterIP port with Cluster traffic policies, no affinity and no
    /// external addresses, whose every endpoint serves both ClusterIP and
    /// external traffic (benchmarks and tests build maps from these).
    pub fn cluster_ip(
        name: ServicePortName,
        cluster_ips: Vec<IpAddr>,
        port: u16,
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            name,
            cluster_ips,
            port,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            affinity_timeout_secs: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
            prefer_close: false,
            health_check_node_port: None,
            local_ready_endpoints: endpoints.iter().filter(|e| e.is_local && e.ready).count(),
            cluster_endpoints: endpoints.clone(),
            external_endpoints: endpoints.clone(),
            endpoints,
        }
    }

    /// Whether traffic from outside the cluster can reach the port.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// ClusterIPs, externalIPs and LoadBalancer IPs: every address the port answers on
    /// (besides NodePorts on node addresses).
    pub fn service_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cluster_ips
            .iter()
            .chain(&self.external_ips)
            .chain(&self.load_balancer_ips)
            .copied()
    }

    /// Whether any endpoint at all may receive traffic (cluster or external).
    pub fn has_endpoints(&self) -> bool {
        !self.cluster_endpoints.is_empty() || !self.external_endpoints.is_empty()
    }
}

/// The desired state of the node's service load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMap {
    /// The node this map was built for.
    pub node: NodeInfo,
    /// Every proxied service port.
    pub ports: BTreeMap<ServicePortName, ServicePort>,
}

impl ServiceMap {
    /// Number of endpoints over all ports (for metrics and benchmarks).
    pub fn endpoint_count(&self) -> usize {
        self.ports.values().map(|p| p.endpoints.len()).sum()
    }
}

#[cfg(test)]
mod tests;
