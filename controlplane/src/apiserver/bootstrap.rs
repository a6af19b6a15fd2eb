//! Objects every cluster has from the start: the namespaces `default`,
//! `kube-system`, `kube-public` and `kube-node-lease`, a `default`
//! ServiceAccount per namespace, the `kubernetes` Service with the
//! endpoints of this API server, and the `kube-system/kube-dns` Service that
//! every node's agent answers itself (node-local DNS).

use serde_json::{json, Value};

use super::ipam::ServiceIpam;
use super::registry;
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy::{self, FieldValidation};
use crate::store::StoreError;

/// Namespaces that exist from the start.
pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates `obj` of `plural` (core or grouped) unless it exists.
async fn ensure(
    server: &ApiServer,
    group: &str,
    version: &str,
    plural: &str,
    obj: Value,
) -> Result<(), ApiError> {
    let resource = registry::find(group, version, plural)
        .ok_or_else(|| ApiError::internal(format!("no resource {plural}")))?;
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let key = resource.key(ns.as_deref(), &name);
    if server.store.get(&key).await?.is_some() {
        return Ok(());
    }
    let (mut obj, _) =
        strategy::prepare_create(resource, ns.as_deref(), obj, FieldValidation::Strict)?;
    let allocation = if resource.kind == "Service" {
        server
            .ipam
            .allocate(&mut obj)
            .map_err(|e| ApiError::invalid(resource, &name, &e))?
    } else {
        Default::default()
    };
    match server.store.create(&key, strategy::to_bytes(&obj)).await {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists(_)) => {
            server.ipam.release(&allocation);
            Ok(())
        }
        Err(e) => {
            server.ipam.release(&allocation);
            Err(e.into())
        }
    }
}

/// Ensures the default namespaces, service accounts and `kubernetes` Service.
pub async fn ensure_defaults(server: &ApiServer) -> Result<(), ApiError> {
    for ns in DEFAULT_NAMESPACES {
        ensure(
            server,
            "",
            "v1",
            "namespaces",
            json!({"metadata": {"name": ns}}),
        )
        .await?;
        namespace_created(server, ns).await;
    }
    let host = server
        .server_address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or("127.0.0.1")
        .to_string();
    let port: u16 = server.config.listen.port();
    if let Some(ip) = ServiceIpam::kubernetes_ip(&server.config.service_cidr) {
        let svc = json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip.to_string(), "type": "ClusterIP",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}
        });
        ensure(server, "", "v1", "services", svc).await?;
    }
    let endpoints = json!({
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
    });
    ensure(server, "", "v1", "endpoints", endpoints).await?;
    let slice = json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "skiff-apiserver"}},
        "addressType": if host.contains(':') { "IPv6" } else { "IPv4" },
        "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
    });
    ensure(server, "discovery.k8s.io", "v1", "endpointslices", slice).await?;
    ensure_kube_dns(server).await;
    Ok(())
}

/// The `kube-dns` Service clients expect, on the tenth address of the service
/// range. It has no selector: each agent holds its ClusterIP on the node and
/// answers there, and the label keeps the service proxy off it. A cluster
/// whose address is already taken by another Service goes on without it.
async fn ensure_kube_dns(server: &ApiServer) {
    let Some(ip) = ServiceIpam::dns_ip(&server.config.service_cidr) else {
        return;
    };
    let svc = json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS",
                                "kubernetes.io/cluster-service": "true",
                                // skiff_proxy::model::NODE_LOCAL_LABEL
                                "skiff.dev/node-local-dns": "true"}},
        "spec": {"clusterIP": ip.to_string(), "type": "ClusterIP",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    });
    if let Err(e) = ensure(server, "", "v1", "services", svc).await {
        tracing::warn!(
            "cannot create the kube-system/kube-dns Service on {ip}: {}",
            e.message
        );
    }
}

/// Gives a new namespace its `default` ServiceAccount.
pub async fn namespace_created(server: &ApiServer, ns: &str) {
    let sa = json!({"metadata": {"name": "default", "namespace": ns}});
    if let Err(e) = ensure(server, "", "v1", "serviceaccounts", sa).await {
        tracing::warn!(
            "cannot create the default ServiceAccount in {ns}: {}",
            e.message
        );
    }
}
