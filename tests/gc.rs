//! The garbage collector against a real `skiff server`, driven by the real
//! kubectl: `kubectl delete --cascade=background|foreground|orphan` on a
//! ReplicaSet whose pods the test creates with ownerReferences itself (the
//! replicaset, deployment and scheduler controllers are disabled, so nothing
//! else creates, adopts or binds pods), and dependents of owners that do not
//! exist.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use std::time::Duration;

use cluster::{wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const DISABLED: &[&str] = &["scheduler", "replicaset", "deployment"];
const NS: &str = "default";

fn replica_sets(c: &Cluster) -> Api<ReplicaSet> {
    Api::namespaced(c.client.clone(), NS)
}

/// A ReplicaSet `name` and `count` pods `<name>-<i>` it controls; pods
/// listed in `held` carry a finalizer that keeps them until the test lets go.
async fn replica_set_with_pods(c: &Cluster, name: &str, count: usize, held: &[usize]) -> String {
    c.apply(&[json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": count,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    })])
    .await;
    let rs = replica_sets(c)
        .get(name)
        .await
        .expect("get the replica set");
    let uid = rs.metadata.uid.expect("a uid");
    for i in 0..count {
        let finalizers: Vec<&str> = if held.contains(&i) {
            vec!["example.com/hold"]
        } else {
            vec![]
        };
        create_pod(
            c,
            &format!("{name}-{i}"),
            name,
            json!([owner("ReplicaSet", name, &uid)]),
            &finalizers,
        )
        .await;
    }
    uid
}

fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true})
}

async fn create_pod(c: &Cluster, name: &str, app: &str, owners: Value, finalizers: &[&str]) {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}, "ownerReferences": owners, "finalizers": finalizers},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }))
    .expect("a pod");
    c.pods(NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
}

fn owner_uids(pod: &Pod) -> Vec<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

async fn pod_names(c: &Cluster, app: &str) -> Vec<String> {
    let list = c
        .pods(NS)
        .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

async fn release(c: &Cluster, pod: &str) {
    let patch = json!({"metadata": {"finalizers": null}});
    c.pods(NS)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("remove the finalizer of {pod}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn background_cascade_deletes_the_pods() {
    let c = Cluster::start(DISABLED).await;
    replica_set_with_pods(&c, "web", 3, &[]).await;
    c.kubectl_ok(&["delete", "replicaset", "web", "--cascade=background"])
        .await;
    // Background: the owner goes at once, the collector follows.
    assert!(replica_sets(&c)
        .get_opt("web")
        .await
        .expect("get")
        .is_none());
    wait_for(
        "the pods of a deleted ReplicaSet to be collected",
        TIMEOUT,
        || async { pod_names(&c, "web").await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foreground_cascade_deletes_pods_before_the_owner() {
    let c = Cluster::start(DISABLED).await;
    replica_set_with_pods(&c, "web", 3, &[0]).await;
    c.kubectl_ok(&[
        "delete",
        "replicaset",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ])
    .await;
    wait_for(
        "the unheld pods to go while web-0 is held",
        TIMEOUT,
        || async { (pod_names(&c, "web").await == ["web-0"]).then_some(()) },
    )
    .await;
    let pod = c
        .pods(NS)
        .get("web-0")
        .await
        .expect("web-0 stays while held");
    assert!(
        pod.metadata.deletion_timestamp.is_some(),
        "web-0 should be being deleted"
    );
    // The held pod blocks its owner.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rs = replica_sets(&c)
        .get("web")
        .await
        .expect("the ReplicaSet waits for web-0");
    assert!(rs.metadata.deletion_timestamp.is_some());
    assert!(
        rs.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "foregroundDeletion"),
        "{:?}",
        rs.metadata.finalizers
    );
    release(&c, "web-0").await;
    wait_for(
        "the ReplicaSet to go after its last pod",
        TIMEOUT,
        || async {
            replica_sets(&c)
                .get_opt("web")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(pod_names(&c, "web").await.is_empty());

    // Without a held pod, kubectl returns once everything is gone.
    replica_set_with_pods(&c, "api", 2, &[]).await;
    c.kubectl_ok(&[
        "delete",
        "replicaset",
        "api",
        "--cascade=foreground",
        "--timeout=60s",
    ])
    .await;
    assert!(replica_sets(&c)
        .get_opt("api")
        .await
        .expect("get")
        .is_none());
    assert!(
        pod_names(&c, "api").await.is_empty(),
        "foreground deletion ends after the dependents"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_cascade_keeps_the_pods() {
    let c = Cluster::start(DISABLED).await;
    let uid = replica_set_with_pods(&c, "web", 3, &[]).await;
    c.kubectl_ok(&[
        "delete",
        "replicaset",
        "web",
        "--cascade=orphan",
        "--timeout=60s",
    ])
    .await;
    assert!(replica_sets(&c)
        .get_opt("web")
        .await
        .expect("get")
        .is_none());
    // Given time, the collector must not take the orphans.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod_names(&c, "web").await, ["web-0", "web-1", "web-2"]);
    for name in ["web-0", "web-1", "web-2"] {
        let pod = c.pods(NS).get(name).await.expect("get pod");
        assert!(
            !owner_uids(&pod).contains(&uid),
            "{name} still references its deleted owner"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dangling_owner_references_are_collected() {
    let c = Cluster::start(DISABLED).await;
    let live = replica_set_with_pods(&c, "web", 1, &[]).await;
    let ghost = owner(
        "ReplicaSet",
        "ghost",
        "00000000-0000-0000-0000-00000000dead",
    );
    create_pod(&c, "stray", "stray", json!([ghost]), &[]).await;
    create_pod(
        &c,
        "shared",
        "shared",
        json!([owner("ReplicaSet", "web", &live), ghost]),
        &[],
    )
    .await;
    wait_for(
        "a pod whose only owner never existed to be collected",
        TIMEOUT,
        || async { pod_names(&c, "stray").await.is_empty().then_some(()) },
    )
    .await;
    let shared = wait_for(
        "the dangling reference of a pod with a live owner to be dropped",
        TIMEOUT,
        || async {
            let pod = c
                .pods(NS)
                .get("shared")
                .await
                .expect("a pod with a live owner stays");
            (owner_uids(&pod) == [live.clone()]).then_some(pod)
        },
    )
    .await;
    assert!(shared.metadata.deletion_timestamp.is_none());
    assert_eq!(pod_names(&c, "web").await, ["web-0"]);
}
