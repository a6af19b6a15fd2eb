//! Compact decoding of the watched kinds: [`Slim`] reads a Service,
//! EndpointSlice or Pod from the API's JSON keeping only the fields DNS
//! records depend on, and skips the rest (managedFields, annotations, status
//! conditions, container specs) without allocating for it.
//!
//! Why: every object of the initial list and every watch event was decoded
//! whole, then reduced. With 10k Services those short-lived allocations,
//! interleaved with the index's long-lived ones, left the allocator's heap
//! fragmented; a Pod's full form is kilobytes, of which DNS needs its IPs.
//! The decoded value is an ordinary k8s-openapi object with the unread
//! fields empty, so [`crate::records`] works on it unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::records::SERVICE_NAME_LABEL;

/// A watched object decoded with only what DNS uses (see the module docs).
#[derive(Clone, Debug)]
pub struct Slim<K>(pub K);

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for Slim<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Metadata<Ty = ObjectMeta>> k8s_openapi::Metadata for Slim<K> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        self.0.metadata()
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        self.0.metadata_mut()
    }
}

/// The metadata fields the watcher and the records need.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

impl Meta {
    /// The ObjectMeta, with `labels` kept only if `keep_labels`.
    fn into_meta(self, keep_labels: bool) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            resource_version: self.resource_version,
            labels: self.labels.filter(|_| keep_labels).map(|mut labels| {
                labels.retain(|k, _| k == SERVICE_NAME_LABEL);
                labels
            }),
            ..ObjectMeta::default()
        }
    }
}

/// A port of a Service or an EndpointSlice.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Port {
    name: Option<String>,
    port: Option<i32>,
    protocol: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SvcSpec {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    external_name: Option<String>,
    publish_not_ready_addresses: Option<bool>,
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceDoc {
    metadata: Meta,
    spec: Option<SvcSpec>,
}

impl<'de> Deserialize<'de> for Slim<Service> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let svc = ServiceDoc::deserialize(d)?;
        let spec = svc.spec.map(|s| ServiceSpec {
            type_: s.type_,
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            external_name: s.external_name,
            publish_not_ready_addresses: s.publish_not_ready_addresses,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        port: p.port.unwrap_or_default(),
                        protocol: p.protocol,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        });
        Ok(Slim(Service {
            metadata: svc.metadata.into_meta(false),
            spec,
            status: None,
        }))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ep {
    addresses: Vec<String>,
    conditions: Option<Conditions>,
    hostname: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SliceDoc {
    metadata: Meta,
    address_type: String,
    endpoints: Option<Vec<Ep>>,
    ports: Option<Vec<Port>>,
}

impl<'de> Deserialize<'de> for Slim<EndpointSlice> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let slice = SliceDoc::deserialize(d)?;
        let endpoints = slice.endpoints.map(|eps| {
            eps.into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions.map(|c| EndpointConditions {
                        ready: c.ready,
                        ..EndpointConditions::default()
                    }),
                    hostname: e.hostname,
                    ..Endpoint::default()
                })
                .collect()
        });
        let ports = slice.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| EndpointPort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..EndpointPort::default()
                })
                .collect()
        });
        Ok(Slim(EndpointSlice {
            metadata: slice.metadata.into_meta(true),
            address_type: slice.address_type,
            endpoints,
            ports,
        }))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    host_network: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ip {
    ip: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Status {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<Ip>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodDoc {
    metadata: Meta,
    spec: Option<Spec>,
    status: Option<Status>,
}

impl<'de> Deserialize<'de> for Slim<Pod> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pod = PodDoc::deserialize(d)?;
        Ok(Slim(Pod {
            metadata: pod.metadata.into_meta(false),
            spec: pod.spec.map(|s| PodSpec {
                host_network: s.host_network,
                ..PodSpec::default()
            }),
            status: pod.status.map(|s| PodStatus {
                pod_ip: s.pod_ip,
                pod_ips: s
                    .pod_ips
                    .map(|ips| ips.into_iter().map(|p| PodIP { ip: p.ip }).collect()),
                ..PodStatus::default()
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::records::{pod_records, service_records, Zone};

    /// A full Service as the API sends it decodes to the same records as
    /// the k8s-openapi type, with the unused fields (managedFields,
    /// annotations, status) left out.
    #[test]
    fn slim_objects_give_the_same_records_as_full_ones() {
        let zone = Zone::new("cluster.local", 5).unwrap();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "a", "resourceVersion": "42",
                "labels": {"app": "db"}, "annotations": {"note": "x".repeat(500)},
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}}}}]},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                "selector": {"app": "db"}},
            "status": {"loadBalancer": {}}
        });
        let full: Service = serde_json::from_value(svc.clone()).unwrap();
        let slim: Slim<Service> = serde_json::from_value(svc).unwrap();
        assert_eq!(slim.0.metadata.resource_version.as_deref(), Some("42"));
        assert!(slim.0.metadata.managed_fields.is_none());
        assert!(slim.0.metadata.annotations.is_none());
        let none: [&EndpointSlice; 0] = [];
        let records = service_records(&zone, &slim.0, none);
        assert_eq!(records.len(), 3, "A, PTR, SRV: {records:?}");
        assert_eq!(records, service_records(&zone, &full, none));

        let pod = json!({
            "metadata": {"name": "p", "namespace": "a", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
                "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]}
        });
        let full: Pod = serde_json::from_value(pod.clone()).unwrap();
        let slim: Slim<Pod> = serde_json::from_value(pod).unwrap();
        assert_eq!(pod_records(&zone, &slim.0).len(), 2);
        assert_eq!(pod_records(&zone, &slim.0), pod_records(&zone, &full));
    }

    #[test]
    fn slices_keep_only_the_service_label_and_what_records_use() {
        let slice = json!({
            "metadata": {"name": "db-1", "namespace": "a",
                "labels": {SERVICE_NAME_LABEL: "db", "endpointslice.kubernetes.io/managed-by": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "hostname": "db-0",
                "conditions": {"ready": false, "serving": true},
                "targetRef": {"kind": "Pod", "name": "db-0"}, "nodeName": "n1"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
        });
        let slim: Slim<EndpointSlice> = serde_json::from_value(slice).unwrap();
        let labels = slim.0.metadata.labels.clone().unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(crate::records::slice_service(&slim.0), Some("db"));
        let ep = &slim.0.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.hostname.as_deref(), Some("db-0"));
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(false));
        assert!(ep.target_ref.is_none());
        assert_eq!(slim.0.ports.as_ref().unwrap()[0].port, Some(5432));
    }
}
