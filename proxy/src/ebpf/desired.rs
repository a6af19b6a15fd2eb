//! What the eBPF maps must hold for one service port: its frontends (one per
//! address the port answers on, plus the NodePort) with their flags and
//! backend lists. Pure, so the translation is unit-tested without a kernel.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use skiff_common::{
    FrontendKey, ServiceName, FAMILY_V4, FAMILY_V6, FLAG_AFFINITY, FLAG_EXTERNAL, FLAG_LOCAL,
    FLAG_SOCKET, FLAG_SOURCE_RANGES, KIND_CLUSTER_IP, KIND_EXTERNAL_IP, KIND_LOAD_BALANCER,
    KIND_NODE_PORT,
};

use crate::model::{Endpoint, ServicePort, TrafficPolicy};

/// One backend as the maps store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    /// Address and port.
    pub addr: SocketAddr,
    /// Runs on this node (no SNAT on the tc path).
    pub local: bool,
}

/// One frontend entry and what it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// Map key.
    pub key: FrontendKey,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// ClientIP affinity timeout in seconds (0 without affinity).
    pub affinity_timeout: u32,
    /// Backends, sorted; empty means "reject".
    pub backends: Vec<BackendAddr>,
    /// loadBalancerSourceRanges (only with `FLAG_SOURCE_RANGES`).
    pub source_ranges: Vec<IpNetwork>,
    /// The service port and frontend kind, for status and metrics.
    pub service: ServiceName,
}

impl DesiredFrontend {
    /// Whether the tc path (and so a Maglev table) serves this frontend.
    pub fn external(&self) -> bool {
        self.flags & FLAG_EXTERNAL != 0
    }
}

fn backends(eps: &[Endpoint], family_v4: bool) -> Vec<BackendAddr> {
    let mut v: Vec<BackendAddr> = eps
        .iter()
        .filter(|e| e.ip.is_ipv4() == family_v4)
        .map(|e| BackendAddr {
            addr: SocketAddr::new(e.ip, e.port),
            local: e.is_local,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The frontends of `port`. ClusterIPs are served by the socket programs;
/// externalIPs and LoadBalancer IPs by both (pods dial them too); the NodePort
/// by the tc programs on node addresses. Ports of protocols the programs do
/// not handle (SCTP) yield nothing.
pub fn frontends(port: &ServicePort) -> Vec<DesiredFrontend> {
    let proto = port.name.protocol.number();
    if proto != skiff_common::PROTO_TCP && proto != skiff_common::PROTO_UDP {
        return Vec::new();
    }
    let (affinity_flag, affinity_timeout) = match port.affinity_timeout_secs {
        Some(t) => (FLAG_AFFINITY, t),
        None => (0, 0),
    };
    let local = if port.external_policy == TrafficPolicy::Local {
        FLAG_LOCAL
    } else {
        0
    };
    let name =
        |kind| ServiceName::new(&port.name.namespace, &port.name.name, &port.name.port, kind);
    let mut out = Vec::new();
    let mut add = |ip: IpAddr, kind: u8, flags: u16, eps: &[Endpoint], ranges: &[IpNetwork]| {
        let ranges: Vec<IpNetwork> = ranges
            .iter()
            .filter(|r| r.is_ipv4() == ip.is_ipv4())
            .copied()
            .collect();
        let key = FrontendKey::from_socket(SocketAddr::new(ip, port.port), proto);
        out.push(DesiredFrontend {
            key,
            flags: flags
                | affinity_flag
                | if ranges.is_empty() {
                    0
                } else {
                    FLAG_SOURCE_RANGES
                },
            affinity_timeout,
            backends: backends(eps, ip.is_ipv4()),
            source_ranges: ranges,
            service: name(kind),
        });
    };
    for ip in &port.cluster_ips {
        add(
            *ip,
            KIND_CLUSTER_IP,
            FLAG_SOCKET,
            &port.cluster_endpoints,
            &[],
        );
    }
    for ip in &port.external_ips {
        add(
            *ip,
            KIND_EXTERNAL_IP,
            FLAG_SOCKET | FLAG_EXTERNAL | local,
            &port.external_endpoints,
            &[],
        );
    }
    for ip in &port.load_balancer_ips {
        add(
            *ip,
            KIND_LOAD_BALANCER,
            FLAG_SOCKET | FLAG_EXTERNAL | local,
            &port.external_endpoints,
            &port.load_balancer_source_ranges,
        );
    }
    if let Some(np) = port.node_port {
        let mut families: Vec<bool> = port.cluster_ips.iter().map(|ip| ip.is_ipv4()).collect();
        families.dedup();
        for v4 in families {
            let family = if v4 { FAMILY_V4 } else { FAMILY_V6 };
            out.push(DesiredFrontend {
                key: FrontendKey::node_port(family, np, proto),
                flags: FLAG_EXTERNAL | local | affinity_flag,
                affinity_timeout,
                backends: backends(&port.external_endpoints, v4),
                source_ranges: Vec::new(),
                service: name(KIND_NODE_PORT),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
            zone_hints: Vec::new(),
            is_local: local,
        }
    }

    fn port() -> ServicePort {
        let eps = vec![ep("10.244.1.5", true), ep("10.244.2.5", false)];
        ServicePort {
            name: ServicePortName {
                namespace: "default".into(),
                name: "web".into(),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            port: 80,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            affinity_timeout_secs: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
            prefer_close: false,
            health_check_node_port: None,
            endpoints: eps.clone(),
            cluster_endpoints: eps.clone(),
            external_endpoints: eps,
            local_ready_endpoints: 1,
        }
    }

    #[test]
    fn cluster_ip_is_a_socket_frontend_with_every_cluster_endpoint() {
        let f = frontends(&port());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, FrontendKey::v4([10, 96, 0, 20], 80, 6));
        assert_eq!(f[0].flags, FLAG_SOCKET);
        assert_eq!(f[0].backends.len(), 2);
        assert!(!f[0].external());
        assert_eq!(f[0].service.to_string(), "default/web:http");
        assert_eq!(f[0].service.kind_str(), "ClusterIP");
    }

    #[test]
    fn node_port_with_local_policy_and_affinity() {
        let mut p = port();
        p.node_port = Some(30080);
        p.external_policy = TrafficPolicy::Local;
        p.external_endpoints.retain(|e| e.is_local);
        p.affinity_timeout_secs = Some(60);
        let f = frontends(&p);
        assert_eq!(f.len(), 2);
        let np = &f[1];
        assert_eq!(np.key, FrontendKey::node_port(FAMILY_V4, 30080, 6));
        assert_eq!(np.flags, FLAG_EXTERNAL | FLAG_LOCAL | FLAG_AFFINITY);
        assert_eq!(np.affinity_timeout, 60);
        assert_eq!(np.backends.len(), 1);
        assert!(np.backends[0].local);
        assert_eq!(np.service.kind_str(), "NodePort");
        // The ClusterIP keeps every endpoint and the affinity.
        assert_eq!(f[0].backends.len(), 2);
        assert_eq!(f[0].flags, FLAG_SOCKET | FLAG_AFFINITY);
    }

    #[test]
    fn load_balancer_ip_carries_source_ranges_of_its_family() {
        let mut p = port();
        p.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
        p.load_balancer_source_ranges = vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let f = frontends(&p);
        let lb = f
            .iter()
            .find(|f| f.key.addr[0].to_ne_bytes() == [192, 0, 2, 10])
            .unwrap();
        assert_eq!(lb.flags, FLAG_SOCKET | FLAG_EXTERNAL | FLAG_SOURCE_RANGES);
        assert_eq!(lb.service.kind_str(), "LoadBalancer");
        assert_eq!(
            lb.source_ranges,
            vec!["198.51.100.0/24".parse::<IpNetwork>().unwrap()]
        );
    }

    #[test]
    fn no_endpoints_means_an_empty_backend_list_and_sctp_is_skipped() {
        let mut p = port();
        p.cluster_endpoints.clear();
        assert!(frontends(&p)[0].backends.is_empty());
        p.name.protocol = Protocol::Sctp;
        assert!(frontends(&p).is_empty());
    }
}
