//! From API objects to a [`ServiceMap`]: Services (skipping headless and
//! ExternalName ones, as kube-proxy does, and those labelled
//! [`NODE_LOCAL_LABEL`], which every node answers itself), their EndpointSlices (joined by the
//! `kubernetes.io/service-name` label and the port name), and the local Node.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort as ApiServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::topology::{self, Policies};
use super::{
    Endpoint, NodeInfo, Protocol, ServiceMap, ServicePort, ServicePortName, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT_SECS,
};

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Node label with the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Label of a Service every node answers locally (the `kube-dns` ClusterIP,
/// held by the agent's node-local DNS): `"true"` means nothing to proxy.
pub const NODE_LOCAL_LABEL: &str = "skiff.dev/node-local-dns";
/// The node link holding the node-local DNS addresses (169.254.20.10 and the
/// kube-dns ClusterIP): not a node interface for NodePorts or tc programs.
pub const NODE_LOCAL_DNS_LINK: &str = "skiff-dns";
/// Pre-trafficDistribution way to ask for topology-aware routing.
const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";

/// The objects a map is built from.
pub struct BuildInput<'a> {
    /// All Services.
    pub services: Vec<&'a Service>,
    /// All EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// The node the proxy runs on.
    pub node: &'a NodeInfo,
}

/// What the model needs from this node's Node object.
pub fn node_info(node: &Node) -> NodeInfo {
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect();
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        zone,
        addresses,
    }
}

/// Builds the service map for `input.node`.
pub fn build(input: &BuildInput<'_>) -> ServiceMap {
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &input.slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        slices_by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(slice);
    }
    let mut ports = BTreeMap::new();
    for svc in &input.services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let slices = slices_by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in service_ports(svc, slices, input.node) {
            ports.insert(port.name.clone(), port);
        }
    }
    ServiceMap {
        node: input.node.clone(),
        ports,
    }
}

fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn parse_policy(p: Option<&str>) -> TrafficPolicy {
    match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

fn parse_ips<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    items.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// The proxied ports of one Service (none for headless or ExternalName services).
fn service_ports(svc: &Service, slices: &[&EndpointSlice], node: &NodeInfo) -> Vec<ServicePort> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let labels = svc.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(NODE_LOCAL_LABEL))
        .map(String::as_str)
        == Some("true")
    {
        return Vec::new();
    }
    let mut cluster_ips = parse_ips(spec.cluster_ips.iter().flatten());
    if cluster_ips.is_empty() {
        cluster_ips = parse_ips(spec.cluster_ip.iter());
    }
    // "None" (headless) does not parse: nothing to proxy.
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let external_ips = parse_ips(spec.external_ips.iter().flatten());
    let load_balancer_ips = parse_ips(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_ref()),
    );
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let load_balancer_source_ranges = if is_lb {
        spec.load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| r.trim().parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let affinity_timeout_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS)
    });
    let topology_auto = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TOPOLOGY_MODE_ANNOTATION))
        .is_some_and(|m| m == "Auto");
    let prefer_close = topology_auto
        || matches!(
            spec.traffic_distribution.as_deref(),
            Some("PreferClose" | "PreferSameZone")
        );
    let internal_policy = parse_policy(spec.internal_traffic_policy.as_deref());
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let (Some(protocol), Ok(port)) =
            (parse_protocol(p.protocol.as_deref()), u16::try_from(p.port))
        else {
            continue;
        };
        let node_port = p
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0);
        let accessible =
            node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
        let external_policy = if accessible {
            parse_policy(spec.external_traffic_policy.as_deref())
        } else {
            TrafficPolicy::Cluster
        };
        let health_check_node_port = spec
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0 && is_lb && external_policy == TrafficPolicy::Local);
        let endpoints = port_endpoints(p, protocol, slices, node);
        let chosen = topology::choose(
            &endpoints,
            &Policies {
                internal: internal_policy,
                external: external_policy,
                prefer_close,
            },
            node,
        );
        out.push(ServicePort {
            name: ServicePortName {
                namespace: namespace.clone(),
                name: name.clone(),
                port: p.name.clone().unwrap_or_default(),
                protocol,
            },
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            affinity_timeout_secs,
            external_policy,
            internal_policy,
            prefer_close,
            health_check_node_port,
            endpoints,
            cluster_endpoints: chosen.cluster,
            external_endpoints: chosen.external,
            local_ready_endpoints: chosen.local_ready,
        });
    }
    out
}

/// Endpoints of the slices' port with the same name and protocol as `port`,
/// sorted and deduplicated by address (the most available copy wins).
fn port_endpoints(
    port: &ApiServicePort,
    protocol: Protocol,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
) -> Vec<Endpoint> {
    let want_name = port.name.as_deref().unwrap_or_default();
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target_port) = slice.ports.iter().flatten().find_map(|sp| {
            let same_name = sp.name.as_deref().unwrap_or_default() == want_name;
            let same_proto = parse_protocol(sp.protocol.as_deref()) == Some(protocol);
            (same_name && same_proto)
                .then_some(sp.port)
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let zone_hints: Vec<String> = ep
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect();
            // One address per endpoint is what the API allows; take the first that parses.
            let Some(ip) = ep.addresses.iter().find_map(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            out.push(Endpoint {
                ip,
                port: target_port,
                ready,
                serving,
                terminating,
                is_local: ep.node_name.as_deref() == Some(node.name.as_str())
                    && !node.name.is_empty(),
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                zone_hints,
            });
        }
    }
    // Most available first within one address, so dedup keeps it.
    out.sort_by(|a, b| {
        (a.ip, a.port, !a.ready, !a.serving).cmp(&(b.ip, b.port, !b.ready, !b.serving))
    });
    out.dedup_by(|later, first| later.ip == first.ip && later.port == first.port);
    out
}
