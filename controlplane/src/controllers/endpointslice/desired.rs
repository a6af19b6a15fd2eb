//! What a Service's endpoints should be, computed from the Service, the pods
//! its selector picks and the zones of their nodes: one `discovery/v1`
//! Endpoint per pod and address family, grouped by the resolved port set,
//! and the legacy `core/v1` Endpoints subsets. Pure functions, no I/O; the
//! packing of endpoints into slices lives in `pack.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, ObjectReference, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controllers::pods::{CachedPod, Labels};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`], as upstream's controller writes it.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Label marking the slices and Endpoints of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label naming the controller that manages a legacy Endpoints object.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
/// Our value of [`ENDPOINTS_MANAGED_BY_LABEL`], as upstream's controller writes it.
pub const ENDPOINTS_CONTROLLER_NAME: &str = "endpoint-controller";
/// Node label carrying its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Most addresses a legacy Endpoints object holds, as upstream.
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
/// Annotation set on an Endpoints object whose addresses were truncated.
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";

/// An EndpointSlice address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl AddressType {
    /// The `addressType` value of a slice.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::V4 => "IPv4",
            AddressType::V6 => "IPv6",
        }
    }

    /// Parses an `addressType`; FQDN slices are not ours.
    pub fn parse(s: &str) -> Option<AddressType> {
        match s {
            "IPv4" => Some(AddressType::V4),
            "IPv6" => Some(AddressType::V6),
            _ => None,
        }
    }

    fn of(ip: &str) -> Option<AddressType> {
        match ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(_) => Some(AddressType::V4),
            IpAddr::V6(_) => Some(AddressType::V6),
        }
    }
}

/// One port of a slice in a canonical, ordered form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// Service port name (`""` when unnamed).
    pub name: String,
    /// Resolved target port.
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The Service port's appProtocol.
    pub app_protocol: Option<String>,
}

impl PortKey {
    /// The slice form of this port.
    pub fn to_slice_port(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            port: Some(self.port),
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }

    /// The canonical form of a port read from a slice.
    pub fn from_slice_port(p: &EndpointPort) -> PortKey {
        PortKey {
            name: p.name.clone().unwrap_or_default(),
            port: p.port.unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            app_protocol: p.app_protocol.clone(),
        }
    }

    fn to_core_port(&self) -> CorePort {
        CorePort {
            name: Some(self.name.clone()).filter(|n| !n.is_empty()),
            port: self.port,
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// Endpoints sharing an address type and a port set go into the same slices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// Address family of the slice.
    pub address_type: AddressType,
    /// Sorted ports of the slice.
    pub ports: Vec<PortKey>,
}

/// The selector of a Service whose endpoints this controller manages; `None`
/// for Services without one (their endpoints belong to users) and for
/// ExternalName Services (they have no endpoints).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// True when every selector term is among `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    labels.contains_all(selector)
}

/// True for a headless Service (`clusterIP: None`).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The address families a Service's endpoints are published in: its
/// `ipFamilies`, else the family of its ClusterIP, else (headless, legacy)
/// both.
pub fn address_types(svc: &Service) -> Vec<AddressType> {
    let spec = svc.spec.as_ref();
    let families: BTreeSet<AddressType> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(AddressType::V4),
            "IPv6" => Some(AddressType::V6),
            _ => None,
        })
        .collect();
    if !families.is_empty() {
        return families.into_iter().collect();
    }
    match spec
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(AddressType::of)
    {
        Some(family) => vec![family],
        None => vec![AddressType::V4, AddressType::V6],
    }
}

/// The family a Service is primarily published in (its first `ipFamilies`
/// entry); the placeholder slice and legacy Endpoints use it.
pub fn primary_address_type(svc: &Service) -> AddressType {
    let spec = svc.spec.as_ref();
    let first = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .map(String::as_str);
    match first {
        Some("IPv6") => AddressType::V6,
        Some(_) => AddressType::V4,
        None => spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(AddressType::of)
            .unwrap_or(AddressType::V4),
    }
}

/// The pod's IP of `family`, from `status.podIPs` (or `status.podIP`).
pub fn pod_ip(pod: &CachedPod, family: AddressType) -> Option<String> {
    pod.ips
        .iter()
        .find(|ip| AddressType::of(ip) == Some(family))
        .map(|ip| ip.to_string())
}

/// The `Ready` condition is `True`.
pub fn pod_ready(pod: &CachedPod) -> bool {
    pod.is_ready()
}

fn terminating(pod: &CachedPod) -> bool {
    pod.deleted.is_some()
}

/// Upstream's ShouldPodBeInEndpoints: the pod has an IP and has not
/// finished; terminating pods only when `include_terminating`.
pub fn pod_in_endpoints(pod: &CachedPod, include_terminating: bool) -> bool {
    if pod.phase.is_terminal() {
        return false;
    }
    !pod.ips.is_empty() && (include_terminating || !terminating(pod))
}

/// True when nothing the endpoints of `a` and `b` are built from differs
/// (so a pod update that only touched, say, container statuses queues no work).
pub fn same_for_endpoints(a: &CachedPod, b: &CachedPod) -> bool {
    (&a.labels, a.deleted, &a.uid) == (&b.labels, b.deleted, &b.uid)
        && (&a.node_name, &a.hostname, &a.subdomain) == (&b.node_name, &b.hostname, &b.subdomain)
        && a.named_ports == b.named_ports
        && (&a.ips, a.phase, pod_ready(a)) == (&b.ips, b.phase, pod_ready(b))
}

/// The container port a Service port reaches on `pod`: its numeric
/// targetPort, the port itself when unset, or the container port named by
/// a string targetPort (with the same protocol, in containers and sidecar
/// init containers). `None` when the pod has no such named port.
pub fn resolve_target_port(port: &ServicePort, pod: &CachedPod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None | Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .named_ports
            .iter()
            .find(|p| *p.name == **name && &*p.protocol == protocol)
            .map(|p| p.port),
    }
}

/// The Service's ports as they reach `pod`, sorted; ports the pod cannot
/// resolve are left out for it.
pub fn pod_ports(svc: &Service, pod: &CachedPod) -> Vec<PortKey> {
    let mut ports: Vec<PortKey> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            Some(PortKey {
                name: sp.name.clone().unwrap_or_default(),
                port: resolve_target_port(sp, pod)?,
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    ports.sort();
    ports
}

/// A pod's hostname is published when it names the Service as its subdomain.
fn hostname(pod: &CachedPod, svc: &Service) -> Option<String> {
    let hostname = pod.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same_ns = Some(&*pod.namespace) == svc.metadata.namespace.as_deref();
    let subdomain = pod.subdomain.as_deref();
    (same_ns && subdomain.is_some() && subdomain == svc.metadata.name.as_deref())
        .then(|| hostname.to_string())
}

fn target_ref(pod: &CachedPod) -> ObjectReference {
    let some = |s: &str| Some(s.to_string());
    ObjectReference {
        kind: some("Pod"),
        name: some(&pod.name),
        namespace: some(&pod.namespace),
        uid: some(&pod.uid),
        ..Default::default()
    }
}

/// The slice endpoint of `pod` in `family`, or `None` when the pod has no
/// address of that family. `zone` is the zone of the pod's node.
pub fn endpoint(
    pod: &CachedPod,
    svc: &Service,
    family: AddressType,
    zone: Option<String>,
) -> Option<Endpoint> {
    let ip = pod_ip(pod, family)?;
    let serving = pod_ready(pod);
    let terminating = terminating(pod);
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // A terminating pod is never "ready" unless the Service asks to
    // publish everything; "serving" keeps telling whether it still could.
    let ready = publish_not_ready || (serving && !terminating);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname(pod, svc),
        node_name: pod.node_name.as_deref().map(str::to_string),
        target_ref: Some(target_ref(pod)),
        zone,
        ..Default::default()
    })
}

/// Every endpoint the Service should publish, grouped by address type and
/// port set. `zone_of` maps a node name to its zone label.
pub fn desired_endpoints<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a CachedPod>,
    zone_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<GroupKey, Vec<Endpoint>> {
    let families = address_types(svc);
    let mut groups: BTreeMap<GroupKey, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods.into_iter().filter(|p| pod_in_endpoints(p, true)) {
        let ports = pod_ports(svc, pod);
        let zone = pod.node_name.as_deref().and_then(&zone_of);
        for &family in &families {
            if let Some(ep) = endpoint(pod, svc, family, zone.clone()) {
                let key = GroupKey {
                    address_type: family,
                    ports: ports.clone(),
                };
                groups.entry(key).or_default().push(ep);
            }
        }
    }
    groups
}

/// Labels of the Service's slices: its own labels (minus the ones the
/// controller owns), the service name, the manager and the headless marker.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            ![SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.to_string(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_string(), CONTROLLER_NAME.to_string());
    labels
}

/// Labels of the Service's legacy Endpoints object.
pub fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| ![HEADLESS_LABEL, ENDPOINTS_MANAGED_BY_LABEL].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    }
    labels.insert(
        ENDPOINTS_MANAGED_BY_LABEL.to_string(),
        ENDPOINTS_CONTROLLER_NAME.to_string(),
    );
    labels
}

/// The legacy Endpoints subsets of the Service, repacked as upstream does:
/// addresses with the same port set share a subset, ready pods in
/// `addresses`, the others in `notReadyAddresses`, sorted. The second value
/// is true when addresses beyond [`MAX_ENDPOINTS_ADDRESSES`] were dropped.
pub fn endpoints_subsets<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a CachedPod>,
) -> (Vec<EndpointSubset>, bool) {
    let spec = svc.spec.as_ref();
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let has_ports = spec
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let family = primary_address_type(svc);
    type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut by_ports: BTreeMap<Vec<PortKey>, Addresses> = BTreeMap::new();
    for pod in pods
        .into_iter()
        .filter(|p| pod_in_endpoints(p, publish_not_ready))
    {
        let Some(ip) = pod_ip(pod, family) else {
            continue;
        };
        let ports = pod_ports(svc, pod);
        // A Service with ports publishes only pods that serve one of them; a
        // headless Service without ports publishes bare addresses.
        if ports.is_empty() && (has_ports || !is_headless(svc)) {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: hostname(pod, svc),
            node_name: pod.node_name.as_deref().map(str::to_string),
            target_ref: Some(target_ref(pod)),
        };
        let entry = by_ports.entry(ports).or_default();
        if publish_not_ready || pod_ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let mut budget = MAX_ENDPOINTS_ADDRESSES;
    let mut truncated = false;
    let mut take = |list: &mut Vec<EndpointAddress>| {
        list.sort_by(|a, b| address_order(a).cmp(&address_order(b)));
        if list.len() > budget {
            list.truncate(budget);
            truncated = true;
        }
        budget -= list.len();
    };
    let mut groups: Vec<(Vec<PortKey>, Addresses)> = by_ports.into_iter().collect();
    // Ready addresses keep their place before not-ready ones when truncating.
    for (_, (ready, _)) in groups.iter_mut() {
        take(ready);
    }
    for (_, (_, not_ready)) in groups.iter_mut() {
        take(not_ready);
    }
    let subsets = groups
        .into_iter()
        .filter(|(_, (ready, not_ready))| !ready.is_empty() || !not_ready.is_empty())
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: Some(ready).filter(|a| !a.is_empty()),
            not_ready_addresses: Some(not_ready).filter(|a| !a.is_empty()),
            ports: Some(ports.iter().map(PortKey::to_core_port).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()),
        })
        .collect();
    (subsets, truncated)
}

fn address_order(a: &EndpointAddress) -> (Option<IpAddr>, &str, Option<&str>) {
    let uid = a.target_ref.as_ref().and_then(|r| r.uid.as_deref());
    (a.ip.parse().ok(), a.ip.as_str(), uid)
}

#[cfg(test)]
mod tests;
