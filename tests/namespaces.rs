//! Namespace lifecycle against a real `skiff server` and the real kubectl:
//! `kubectl delete namespace` marks it Terminating, the namespace
//! controller deletes everything in it (including what other controllers
//! made from it), and kubectl returns once the namespace itself is gone.
//! Content with finalizers keeps a namespace Terminating, with upstream's
//! conditions saying why, until the finalizers are removed. The scheduler
//! is disabled (there are no nodes); every other controller runs.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use cluster::{wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};

const DISABLED: &[&str] = &["scheduler"];

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn config_map(ns: &str, name: &str, finalizers: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "finalizers": finalizers},
        "data": {"key": "value"},
    })
}

/// How many objects of kind `K` are in `ns`.
async fn count<K>(c: &Cluster, ns: &str) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(c.client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or_else(|e| panic!("list in {ns}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_namespace_removes_everything_in_it() {
    let c = Cluster::start(DISABLED).await;
    let ns = "team-a";
    c.apply(&[
        namespace(ns),
        config_map(ns, "settings", &[]),
        config_map("default", "keep", &[]),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": ns}, "stringData": {"t": "x"}}),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "single", "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }),
    ])
    .await;
    // The deployment and replicaset controllers fill the namespace further.
    wait_for("the Deployment's pods", TIMEOUT, || async {
        (count::<Pod>(&c, ns).await >= 3).then_some(())
    })
    .await;
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let cluster_ip = services
        .get("web")
        .await
        .expect("the service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");

    let out = c
        .kubectl_ok(&["delete", "namespace", ns, "--timeout=60s"])
        .await;
    assert!(
        out.contains(&format!("namespace \"{ns}\" deleted")),
        "{out}"
    );
    // kubectl waits until the namespace is gone.
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    assert!(namespaces
        .get_opt(ns)
        .await
        .expect("get the namespace")
        .is_none());
    let out = c.kubectl(&["get", "namespace", ns]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    let left = [
        ("pods", count::<Pod>(&c, ns).await),
        ("services", count::<Service>(&c, ns).await),
        ("configmaps", count::<ConfigMap>(&c, ns).await),
        ("secrets", count::<Secret>(&c, ns).await),
        ("serviceaccounts", count::<ServiceAccount>(&c, ns).await),
        ("deployments", count::<Deployment>(&c, ns).await),
        ("replicasets", count::<ReplicaSet>(&c, ns).await),
        ("endpointslices", count::<EndpointSlice>(&c, ns).await),
        ("events", count::<Event>(&c, ns).await),
    ];
    assert!(
        left.iter().all(|(_, n)| *n == 0),
        "objects left in a deleted namespace: {left:?}"
    );
    // Other namespaces are untouched, and the Service's address was released.
    let config_maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    assert!(config_maps.get_opt("keep").await.expect("get").is_some());
    c.apply(&[json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "reuse", "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80}]},
    })])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finalizers_hold_a_terminating_namespace() {
    let c = Cluster::start(DISABLED).await;
    let ns = "team-b";
    c.apply(&[
        namespace(ns),
        config_map(ns, "held", &["example.com/hold"]),
        config_map(ns, "plain", &[]),
    ])
    .await;
    c.kubectl_ok(&["delete", "namespace", ns, "--wait=false"])
        .await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let condition = |n: &Namespace, type_: &str| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_).cloned())
    };
    let held = wait_for(
        "conditions naming what holds the namespace",
        TIMEOUT,
        || async {
            let n = namespaces
                .get(ns)
                .await
                .expect("the namespace stays while content remains");
            let remaining = condition(&n, "NamespaceContentRemaining")?;
            (remaining.status == "True" && count::<ConfigMap>(&c, ns).await == 1).then_some(n)
        },
    )
    .await;
    assert_eq!(
        held.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Terminating")
    );
    let remaining = condition(&held, "NamespaceContentRemaining").expect("condition");
    assert_eq!(remaining.reason.as_deref(), Some("SomeResourcesRemain"));
    assert_eq!(
        remaining.message.as_deref(),
        Some("Some resources are remaining: configmaps has 1 resource instances")
    );
    let finalizers = condition(&held, "NamespaceFinalizersRemaining").expect("condition");
    assert_eq!(finalizers.status, "True");
    assert_eq!(
        finalizers.message.as_deref(),
        Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    );
    // Nothing new may be created in a terminating namespace.
    let out = c.try_apply(&[config_map(ns, "late", &[])]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("being terminated"),
        "{stderr}"
    );

    c.kubectl_ok(&[
        "-n",
        ns,
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    c.kubectl_ok(&[
        "wait",
        "--for=delete",
        &format!("namespace/{ns}"),
        "--timeout=60s",
    ])
    .await;
    assert!(namespaces.get_opt(ns).await.expect("get").is_none());
}
