//! Helpers of the EndpointSlice controller tests: a server running only that
//! controller, objects created through the API, the test playing the kubelet
//! through `pods/status`, and waits on the slices and legacy Endpoints.

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::fake_cluster::{eventually, Server};

pub const MANAGED_BY: &str =
    "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io";

/// A server running only the endpointslice controller, and a client of it.
pub async fn start() -> (Server, kube::Client) {
    Server::start(&["endpointslice"], &[]).await
}

pub async fn create_namespace(client: &kube::Client, ns: &str) {
    let obj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .expect("create namespace");
}

pub async fn create_service(client: &kube::Client, ns: &str, name: &str, spec: Value) -> Service {
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"tier": "test"}}, "spec": spec}),
    )
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("create service {name}: {e}"))
}

/// Creates a pod bound to `node`; `meta` and `spec` are merged in.
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    node: &str,
    meta: Value,
    spec: Value,
) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.local/app:1",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    });
    for (key, extra) in [("metadata", meta), ("spec", spec)] {
        if let (Some(obj), Some(extra)) = (pod[key].as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
    }
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"))
}

/// Plays the kubelet: the pod runs with `ip`, Ready or not.
pub async fn set_pod_status(client: &kube::Client, ns: &str, name: &str, ip: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": status}]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("write status of pod {name}: {e}"));
}

pub async fn slices(client: &kube::Client, ns: &str, service: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={service},{MANAGED_BY}"
    ));
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("list endpointslices")
        .items
}

pub fn all_endpoints(slices: &[EndpointSlice]) -> Vec<Endpoint> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.clone().unwrap_or_default())
        .collect()
}

/// (ready, serving, terminating) of an endpoint.
pub fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.clone().unwrap_or_default();
    (
        c.ready.unwrap_or(false),
        c.serving.unwrap_or(false),
        c.terminating.unwrap_or(false),
    )
}

/// Waits until the service's slices hold exactly one endpoint for `ip` with
/// `want` conditions, and returns it.
pub async fn endpoint_with(
    client: &kube::Client,
    ns: &str,
    service: &str,
    ip: &str,
    want: (bool, bool, bool),
) -> Endpoint {
    eventually(
        &format!("endpoint {ip} of {ns}/{service} with (ready, serving, terminating) = {want:?}"),
        || async {
            let eps = all_endpoints(&slices(client, ns, service).await);
            let found: Vec<&Endpoint> = eps
                .iter()
                .filter(|e| e.addresses.iter().any(|a| a == ip))
                .collect();
            match found.as_slice() {
                [ep] if conditions(ep) == want => Ok((*ep).clone()),
                _ => Err(format!(
                    "{:?}",
                    found.iter().map(|e| conditions(e)).collect::<Vec<_>>()
                )),
            }
        },
    )
    .await
}

/// (ready addresses, not-ready addresses) of the legacy Endpoints.
pub async fn legacy(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<(Vec<String>, Vec<String>)> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get endpoints")?;
    let subsets = ep.subsets.unwrap_or_default();
    let ips =
        |f: fn(&k8s_openapi::api::core::v1::EndpointSubset) -> &Option<Vec<_>>| -> Vec<String> {
            subsets
                .iter()
                .flat_map(|s| {
                    f(s).iter()
                        .flatten()
                        .map(|a: &k8s_openapi::api::core::v1::EndpointAddress| a.ip.clone())
                })
                .collect()
        };
    Some((ips(|s| &s.addresses), ips(|s| &s.not_ready_addresses)))
}

pub async fn legacy_is(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ready: &[&str],
    not_ready: &[&str],
) {
    let want = (
        ready.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        not_ready.iter().map(|s| s.to_string()).collect(),
    );
    eventually(&format!("Endpoints {ns}/{name} = {want:?}"), || async {
        match legacy(client, ns, name).await {
            Some(got) if got == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// The slice's `endpoints.kubernetes.io/last-change-trigger-time`.
pub fn trigger_time(slice: &EndpointSlice) -> Option<String> {
    slice
        .metadata
        .annotations
        .as_ref()?
        .get("endpoints.kubernetes.io/last-change-trigger-time")
        .cloned()
}
