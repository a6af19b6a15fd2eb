//! Hash collisions, handled as upstream does: when the name a Deployment
//! wants for its new ReplicaSet (`<name>-<pod-template-hash>`), or a
//! DaemonSet / StatefulSet for its ControllerRevision (`<name>-<hash>`), is
//! already taken by an object of another template, the controller bumps
//! `status.collisionCount`, whose value salts the hash, and uses the new
//! name; the foreign object is left alone. The test provokes a collision by
//! learning the name a workload gets, deleting the workload, creating a
//! foreign object under that name and applying the same workload again.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use cluster::{wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

const DISABLED: &[&str] = &["scheduler", "nodelifecycle"];
const NS: &str = "default";

fn template(app: &str, image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": image}]},
    })
}

fn workload(kind: &str, name: &str) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": template(name, "busybox:1"),
    });
    if kind != "DaemonSet" {
        spec["replicas"] = json!(1);
    }
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// The objects of `items` that `uid` controls.
fn controlled<K: ResourceExt>(items: Vec<K>, uid: &str) -> Vec<K> {
    items
        .into_iter()
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect()
}

/// The one object of `api` controlled by `uid`, once there is exactly one.
async fn owned_by<K>(api: &Api<K>, uid: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(&format!("one object owned by {uid}"), TIMEOUT, || async {
        let items = api.list(&ListParams::default()).await.ok()?.items;
        let mut mine = controlled(items, uid);
        (mine.len() == 1).then(|| mine.remove(0))
    })
    .await
}

/// Deletes `kind/name` and waits until the garbage collector removed `api/dependent`.
async fn delete_and_wait<K>(c: &Cluster, kind: &str, name: &str, api: &Api<K>, dependent: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    c.kubectl_ok(&["delete", kind, name, "-n", NS, "--wait=false"])
        .await;
    wait_for(&format!("{dependent} to be collected"), TIMEOUT, || async {
        matches!(api.get_opt(dependent).await, Ok(None)).then_some(())
    })
    .await;
}

fn label<'a, K: ResourceExt>(o: &'a K, key: &str) -> &'a str {
    o.labels().get(key).map_or("", String::as_str)
}

fn image_in_revision(r: &ControllerRevision) -> &str {
    r.data.0["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
}

/// A DaemonSet or StatefulSet whose revision name is taken by a foreign
/// ControllerRevision: collisionCount 1, a new revision name, pods labelled
/// with it, the foreign revision untouched.
async fn revision_collision(c: &Cluster, kind: &str, resource: &str, name: &str) {
    let revisions: Api<ControllerRevision> = Api::namespaced(c.client.clone(), NS);
    c.apply(&[workload(kind, name)]).await;
    let uid = uid_of(c, resource, name).await;
    let taken = owned_by(&revisions, &uid).await.name_any();
    delete_and_wait(c, resource, name, &revisions, &taken).await;

    let foreign: ControllerRevision = serde_json::from_value(json!({
        "metadata": {"name": taken, "namespace": NS, "labels": {"app": "someone-else"}},
        "data": {"spec": {"template": template("someone-else", "busybox:9")}},
        "revision": 1,
    }))
    .expect("a controllerrevision");
    revisions
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign revision");

    c.apply(&[workload(kind, name)]).await;
    let uid = uid_of(c, resource, name).await;
    let ours = owned_by(&revisions, &uid).await;
    assert_ne!(ours.name_any(), taken, "the taken name is not reused");
    assert_eq!(image_in_revision(&ours), "busybox:1");
    let hash = ours
        .name_any()
        .strip_prefix(&format!("{name}-"))
        .expect("revision named <owner>-<hash>")
        .to_string();
    assert_eq!(label(&ours, "controller-revision-hash"), hash);
    wait_for("status.collisionCount 1", TIMEOUT, || async {
        (collision_count(c, resource, name).await == Some(1)).then_some(())
    })
    .await;
    let theirs = revisions.get(&taken).await.expect("foreign revision kept");
    assert!(theirs.owner_references().is_empty(), "not adopted");
    assert_eq!(image_in_revision(&theirs), "busybox:9");

    // The pods carry the new revision: the hash for DaemonSets, the revision
    // name for StatefulSets, as upstream labels them.
    let want = if kind == "DaemonSet" {
        hash
    } else {
        ours.name_any()
    };
    let pods: Api<Pod> = c.pods(NS);
    let pod = owned_by(&pods, &uid).await;
    assert_eq!(label(&pod, "controller-revision-hash"), want);
}

async fn uid_of(c: &Cluster, resource: &str, name: &str) -> String {
    let uid = match resource {
        "daemonset" => {
            let api: Api<DaemonSet> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.map(|o| o.uid())
        }
        "statefulset" => {
            let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.map(|o| o.uid())
        }
        _ => {
            let api: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.map(|o| o.uid())
        }
    };
    uid.expect("get the workload").expect("a uid")
}

async fn collision_count(c: &Cluster, resource: &str, name: &str) -> Option<i32> {
    match resource {
        "daemonset" => {
            let api: Api<DaemonSet> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.ok()?.status?.collision_count
        }
        "statefulset" => {
            let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.ok()?.status?.collision_count
        }
        _ => {
            let api: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
            api.get(name).await.ok()?.status?.collision_count
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_set_revision_name_collision_bumps_collision_count() {
    let c = Cluster::start(DISABLED).await;
    c.add_node("n1", json!([])).await;
    revision_collision(&c, "DaemonSet", "daemonset", "clash").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stateful_set_revision_name_collision_bumps_collision_count() {
    let c = Cluster::start(DISABLED).await;
    revision_collision(&c, "StatefulSet", "statefulset", "clash").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_replica_set_name_collision_bumps_collision_count() {
    let c = Cluster::start(DISABLED).await;
    let sets: Api<ReplicaSet> = Api::namespaced(c.client.clone(), NS);
    c.apply(&[workload("Deployment", "clash")]).await;
    let uid = uid_of(&c, "deployment", "clash").await;
    let taken = owned_by(&sets, &uid).await.name_any();
    delete_and_wait(&c, "deployment", "clash", &sets, &taken).await;

    // Same name, another template (and labels the Deployment does not select,
    // so it is not an orphan to adopt).
    let foreign: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": taken, "namespace": NS, "labels": {"app": "someone-else"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "someone-else"}},
            "template": template("someone-else", "busybox:9"),
        },
    }))
    .expect("a replicaset");
    sets.create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign replica set");

    c.apply(&[workload("Deployment", "clash")]).await;
    let uid = uid_of(&c, "deployment", "clash").await;
    let ours = owned_by(&sets, &uid).await;
    assert_ne!(ours.name_any(), taken, "the taken name is not reused");
    let hash = label(&ours, "pod-template-hash").to_string();
    assert_eq!(ours.name_any(), format!("clash-{hash}"));
    wait_for("status.collisionCount 1", TIMEOUT, || async {
        (collision_count(&c, "deployment", "clash").await == Some(1)).then_some(())
    })
    .await;
    let theirs = sets.get(&taken).await.expect("foreign replica set kept");
    assert!(theirs.owner_references().is_empty(), "not adopted");
    let pod = owned_by(&c.pods(NS), &ours.uid().expect("uid")).await;
    assert_eq!(label(&pod, "pod-template-hash"), hash);
    let out = c
        .kubectl_ok(&[
            "get",
            "deployment",
            "clash",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.collisionCount}",
        ])
        .await;
    assert_eq!(out.trim(), "1");
}
