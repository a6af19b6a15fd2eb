//! Kubernetes objects → DNS records, following the Kubernetes DNS-based
//! service discovery specification (schema 1.1.0).
//!
//! Pure functions: they see one Service (with its EndpointSlices) or one Pod
//! and return every record it contributes. They never touch the index or the
//! network, so the whole specification is unit-tested here.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where the records of one object are placed in the cluster zone.
#[derive(Clone, Debug)]
pub struct Zone {
    /// The cluster zone, lowercase and fully qualified (`cluster.local.`).
    pub origin: Name,
    /// TTL of every record served from the index.
    pub ttl: u32,
}

impl Zone {
    /// A zone from its text form (`cluster.local`); `None` when it is not a valid name.
    pub fn new(origin: &str, ttl: u32) -> Option<Zone> {
        let mut name = Name::from_ascii(origin).ok()?.to_lowercase();
        name.set_fqdn(true);
        Some(Zone { origin: name, ttl })
    }

    /// `<labels...>.<zone>`, or `None` when a label is not a valid DNS label.
    fn name(&self, labels: &[&str]) -> Option<Name> {
        let relative = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        relative
            .append_domain(&self.origin)
            .ok()
            .map(|n| n.to_lowercase())
    }

    fn record(&self, name: Name, data: RData) -> Record {
        Record::from_rdata(name, self.ttl, data)
    }

    fn address(&self, name: Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(name, RData::AAAA(AAAA(v6))),
        }
    }

    fn ptr(&self, ip: IpAddr, target: Name) -> Record {
        self.record(Name::from(ip).to_lowercase(), RData::PTR(PTR(target)))
    }
}

/// `10-1-2-3` for 10.1.2.3 and `fd00--1` for fd00::1: an IP as one DNS label.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip.eq_ignore_ascii_case("none"))
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.dedup();
    let mut seen = HashSet::new();
    ips.retain(|ip| seen.insert(*ip));
    ips
}

/// Every record a Service contributes, given the EndpointSlices labelled with
/// its name. Names that are not valid DNS names are left out.
pub fn service_records<'s>(
    zone: &Zone,
    svc: &Service,
    slices: impl IntoIterator<Item = &'s EndpointSlice>,
) -> Vec<Record> {
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    let Some(base) = zone.name(&[name, ns, "svc"]) else {
        return Vec::new();
    };
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return external_name(zone, base, spec.external_name.as_deref());
    }
    if is_headless(svc) {
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        return headless(zone, &base, slices, publish_not_ready);
    }
    let ips = cluster_ips(svc);
    if ips.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for ip in &ips {
        out.push(zone.address(base.clone(), *ip));
        out.push(zone.ptr(*ip, base.clone()));
    }
    for port in spec.ports.iter().flatten() {
        let (Some(port_name), Ok(number)) = (port.name.as_deref(), u16::try_from(port.port)) else {
            continue;
        };
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if let Some(srv_name) = srv_name(&base, port_name, proto) {
            let srv = SRV::new(0, 100, number, base.clone());
            out.push(zone.record(srv_name, RData::SRV(srv)));
        }
    }
    out
}

/// `_<port>._<proto>.<service name>`, lowercase.
fn srv_name(base: &Name, port: &str, proto: &str) -> Option<Name> {
    let port_label = format!("_{}", port.to_ascii_lowercase());
    let proto_label = format!("_{}", proto.to_ascii_lowercase());
    base.prepend_label(proto_label.as_str())
        .and_then(|n| n.prepend_label(port_label.as_str()))
        .ok()
}

fn external_name(zone: &Zone, base: Name, target: Option<&str>) -> Vec<Record> {
    let Some(target) = target.map(|t| t.trim_end_matches('.')) else {
        return Vec::new();
    };
    let Ok(mut target) = Name::from_ascii(target) else {
        return Vec::new();
    };
    target.set_fqdn(true);
    vec![zone.record(base, RData::CNAME(CNAME(target)))]
}

/// One address of a headless Service: its DNS label and IP.
struct Member {
    host: Name,
    ip: IpAddr,
}

fn headless<'s>(
    zone: &Zone,
    base: &Name,
    slices: impl IntoIterator<Item = &'s EndpointSlice>,
    publish_not_ready: bool,
) -> Vec<Record> {
    let mut members: Vec<Member> = Vec::new();
    let mut seen = HashSet::new();
    // SRV owner name → (port, proto), from the slices' ports (target ports).
    let mut ports: BTreeMap<Name, u16> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let mut any = false;
        for endpoint in slice.endpoints.iter().flatten() {
            // A nil `ready` means ready (discovery.k8s.io/v1 semantics).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for addr in &endpoint.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                if !seen.insert(ip) {
                    continue;
                }
                let label = endpoint
                    .hostname
                    .clone()
                    .unwrap_or_else(|| dashed(ip))
                    .to_ascii_lowercase();
                let Ok(host) = base.prepend_label(label.as_str()) else {
                    continue;
                };
                members.push(Member { host, ip });
                any = true;
            }
        }
        if !any {
            continue;
        }
        for port in slice.ports.iter().flatten() {
            let (Some(name), Some(Ok(number))) =
                (port.name.as_deref(), port.port.map(u16::try_from))
            else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            if let Some(owner) = srv_name(base, name, proto) {
                ports.insert(owner, number);
            }
        }
    }
    let mut out = Vec::new();
    for m in &members {
        out.push(zone.address(base.clone(), m.ip));
        out.push(zone.address(m.host.clone(), m.ip));
        out.push(zone.ptr(m.ip, m.host.clone()));
    }
    let mut targets: Vec<&Name> = members.iter().map(|m| &m.host).collect();
    targets.sort();
    targets.dedup();
    // Spread the weight evenly over the targets, as CoreDNS does.
    let weight = u16::try_from(100 / targets.len().max(1))
        .unwrap_or(1)
        .max(1);
    for (owner, port) in &ports {
        for target in &targets {
            let srv = SRV::new(0, weight, *port, (*target).clone());
            out.push(zone.record(owner.clone(), RData::SRV(srv)));
        }
    }
    out
}

/// The records of a Pod: `<dashed ip>.<namespace>.pod.<zone>` for each pod IP.
pub fn pod_records(zone: &Zone, pod: &Pod) -> Vec<Record> {
    let Some(ns) = pod.metadata.namespace.as_deref() else {
        return Vec::new();
    };
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    // Host-network pods share the node's IP: they get no pod record.
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if host_network {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
        .collect();
    let mut seen = HashSet::new();
    ips.retain(|ip| seen.insert(*ip));
    ips.into_iter()
        .filter_map(|ip| {
            let label = dashed(ip);
            let name = zone.name(&[&label, ns, "pod"])?;
            Some(zone.address(name, ip))
        })
        .collect()
}

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
