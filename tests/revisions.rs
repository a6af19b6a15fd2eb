//! ControllerRevisions of DaemonSets and StatefulSets, driven by the real
//! kubectl: every template change is recorded, `kubectl rollout history`
//! lists the revisions, `rollout undo --to-revision` brings an old template
//! back, and `revisionHistoryLimit` trims old revisions. The history tests
//! need no nodes: the controllers record revisions whether or not pods can
//! run. A StatefulSet rolling update with a partition keeps (and recreates)
//! the pods below it at the old revision, read back from its revision.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use cluster::{wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use kube::api::{Api, ListParams};
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

fn daemon_set(name: &str, image: &str, limit: Option<i32>) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": template(name, image),
    });
    if let Some(limit) = limit {
        spec["revisionHistoryLimit"] = json!(limit);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// The revisions of owner `owner_uid`: (revision number, image in data), sorted.
async fn revisions(c: &Cluster, owner_uid: &str) -> Vec<(i64, String, ControllerRevision)> {
    let api: Api<ControllerRevision> = Api::namespaced(c.client.clone(), NS);
    let mut out: Vec<_> = api
        .list(&ListParams::default())
        .await
        .expect("list controllerrevisions")
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.uid == owner_uid && o.controller == Some(true))
        })
        .map(|r| {
            let image = r.data.0["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (r.revision.unwrap_or(0), image, r)
        })
        .collect();
    out.sort_by_key(|(n, _, _)| *n);
    out
}

/// Waits until the owner's revisions are exactly `want` (number, image).
async fn wait_revisions(c: &Cluster, uid: &str, want: &[(i64, &str)]) -> Vec<ControllerRevision> {
    wait_for(&format!("revisions {want:?}"), TIMEOUT, || async {
        let have = revisions(c, uid).await;
        let pairs: Vec<(i64, &str)> = have.iter().map(|(n, i, _)| (*n, i.as_str())).collect();
        (pairs == want).then(|| have.into_iter().map(|(_, _, r)| r).collect())
    })
    .await
}

/// The REVISION column of `kubectl rollout history`.
async fn history_column(c: &Cluster, target: &str) -> Vec<i64> {
    let out = c
        .kubectl_ok(&["rollout", "history", target, "-n", NS])
        .await;
    out.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn image_of(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_set_history_and_undo_through_kubectl() {
    let c = Cluster::start(DISABLED).await;
    c.apply(&[daemon_set("agent", "busybox:1", None)]).await;
    let api: Api<DaemonSet> = Api::namespaced(c.client.clone(), NS);
    let ds = api.get("agent").await.expect("get the daemonset");
    let uid = ds.uid().expect("uid");
    let first = wait_revisions(&c, &uid, &[(1, "busybox:1")]).await;
    let first = &first[0];
    let labels = first.labels();
    assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
    let hash = labels
        .get("controller-revision-hash")
        .expect("hash label")
        .clone();
    assert_eq!(first.name_any(), format!("agent-{hash}"));
    assert_eq!(
        first.data.0["spec"]["template"]["$patch"], "replace",
        "data is a replacing template patch"
    );

    c.kubectl_ok(&["set", "image", "ds/agent", "main=busybox:2", "-n", NS])
        .await;
    wait_revisions(&c, &uid, &[(1, "busybox:1"), (2, "busybox:2")]).await;
    c.kubectl_ok(&["set", "image", "ds/agent", "main=busybox:3", "-n", NS])
        .await;
    wait_revisions(
        &c,
        &uid,
        &[(1, "busybox:1"), (2, "busybox:2"), (3, "busybox:3")],
    )
    .await;
    assert_eq!(history_column(&c, "ds/agent").await, vec![1, 2, 3]);
    let detail = c
        .kubectl_ok(&["rollout", "history", "ds/agent", "--revision=2", "-n", NS])
        .await;
    assert!(detail.contains("busybox:2"), "revision 2 detail: {detail}");

    c.kubectl_ok(&["rollout", "undo", "ds/agent", "--to-revision=1", "-n", NS])
        .await;
    let ds = api.get("agent").await.expect("get the daemonset");
    assert_eq!(image_of(&ds.spec.template), "busybox:1");
    // The first template is the newest revision again, under its old name.
    let after = wait_revisions(
        &c,
        &uid,
        &[(2, "busybox:2"), (3, "busybox:3"), (4, "busybox:1")],
    )
    .await;
    assert_eq!(after[2].name_any(), format!("agent-{hash}"));
    assert_eq!(history_column(&c, "ds/agent").await, vec![2, 3, 4]);

    // Plain undo goes back to the previous revision.
    c.kubectl_ok(&["rollout", "undo", "ds/agent", "-n", NS])
        .await;
    let ds = api.get("agent").await.expect("get the daemonset");
    assert_eq!(image_of(&ds.spec.template), "busybox:3");

    // revisionHistoryLimit keeps that many old revisions besides the current one.
    c.apply(&[daemon_set("limited", "busybox:1", Some(1))])
        .await;
    let uid = api.get("limited").await.expect("get").uid().expect("uid");
    wait_revisions(&c, &uid, &[(1, "busybox:1")]).await;
    for image in ["busybox:2", "busybox:3"] {
        c.kubectl_ok(&[
            "set",
            "image",
            "ds/limited",
            &format!("main={image}"),
            "-n",
            NS,
        ])
        .await;
    }
    wait_revisions(&c, &uid, &[(2, "busybox:2"), (3, "busybox:3")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stateful_set_history_and_undo_through_kubectl() {
    let c = Cluster::start(DISABLED).await;
    c.apply(&[json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {
            "replicas": 0,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": template("db", "busybox:1"),
        },
    })])
    .await;
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), NS);
    let uid = api.get("db").await.expect("get").uid().expect("uid");
    wait_revisions(&c, &uid, &[(1, "busybox:1")]).await;
    for image in ["busybox:2", "busybox:3"] {
        c.kubectl_ok(&["set", "image", "sts/db", &format!("main={image}"), "-n", NS])
            .await;
    }
    let all = wait_revisions(
        &c,
        &uid,
        &[(1, "busybox:1"), (2, "busybox:2"), (3, "busybox:3")],
    )
    .await;
    let newest = all[2].name_any();
    wait_for(
        "updateRevision names the newest revision",
        TIMEOUT,
        || async {
            let s = api.get("db").await.expect("get").status?;
            (s.update_revision.as_deref() == Some(newest.as_str())).then_some(())
        },
    )
    .await;
    assert_eq!(history_column(&c, "sts/db").await, vec![1, 2, 3]);

    c.kubectl_ok(&["rollout", "undo", "sts/db", "--to-revision=1", "-n", NS])
        .await;
    let set = api.get("db").await.expect("get");
    assert_eq!(image_of(&set.spec.template), "busybox:1");
    wait_revisions(
        &c,
        &uid,
        &[(2, "busybox:2"), (3, "busybox:3"), (4, "busybox:1")],
    )
    .await;
    assert_eq!(history_column(&c, "sts/db").await, vec![2, 3, 4]);
}

/// Image and revision label of each pod of set `name`, by pod name, once
/// every pod named in `want` exists, is not terminating and matches it.
async fn wait_members(c: &Cluster, name: &str, want: &[(&str, &str, &str)]) {
    wait_for(&format!("members {want:?}"), TIMEOUT, || async {
        let list = c
            .pods(NS)
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .ok()?;
        let mut have: Vec<(String, String, String)> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let image = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                let revision = p
                    .labels()
                    .get("controller-revision-hash")
                    .cloned()
                    .unwrap_or_default();
                (p.name_any(), image, revision)
            })
            .collect();
        have.sort();
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(n, i, r)| (n.to_string(), i.to_string(), r.to_string()))
            .collect();
        (have == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stateful_set_partition_keeps_and_recreates_old_revision_pods() {
    let c = Cluster::start(DISABLED).await;
    c.add_node("n1", json!([])).await;
    let _kubelet = c.kubelet(NS, "n1");
    c.apply(&[json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "part", "namespace": NS},
        "spec": {
            "replicas": 3,
            "serviceName": "part",
            "selector": {"matchLabels": {"app": "part"}},
            "template": template("part", "busybox:1"),
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        },
    })])
    .await;
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), NS);
    let old = wait_for("three ready replicas", TIMEOUT, || async {
        let s = api.get("part").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(s.update_revision?)
    })
    .await;

    c.kubectl_ok(&["set", "image", "sts/part", "main=busybox:2", "-n", NS])
        .await;
    let new = wait_for("a new update revision", TIMEOUT, || async {
        let s = api.get("part").await.ok()?.status?;
        s.update_revision.filter(|r| *r != old)
    })
    .await;
    // Only ordinals at or above the partition move to the new revision.
    wait_members(
        &c,
        "part",
        &[
            ("part-0", "busybox:1", &old),
            ("part-1", "busybox:1", &old),
            ("part-2", "busybox:2", &new),
        ],
    )
    .await;
    wait_for(
        "status counts of a partitioned rollout",
        TIMEOUT,
        || async {
            let s = api.get("part").await.ok()?.status?;
            (s.current_revision.as_deref() == Some(old.as_str())
                && s.updated_replicas == Some(1)
                && s.current_replicas == Some(2)
                && s.ready_replicas == Some(3))
            .then_some(())
        },
    )
    .await;

    // A pod below the partition that goes is recreated from the old revision.
    c.kubectl_ok(&["delete", "pod", "part-0", "-n", NS, "--wait=false"])
        .await;
    wait_for("part-0 to be replaced", TIMEOUT, || async {
        let pod = c.pods(NS).get_opt("part-0").await.ok()??;
        (pod.metadata.deletion_timestamp.is_none()
            && pod.labels().get("controller-revision-hash") == Some(&old)
            && pod.status.as_ref()?.phase.as_deref() == Some("Running"))
        .then_some(())
    })
    .await;
    wait_members(
        &c,
        "part",
        &[
            ("part-0", "busybox:1", &old),
            ("part-1", "busybox:1", &old),
            ("part-2", "busybox:2", &new),
        ],
    )
    .await;

    // Partition 0 finishes the rollout; the current revision follows.
    c.kubectl_ok(&[
        "patch",
        "sts/part",
        "-n",
        NS,
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ])
    .await;
    wait_members(
        &c,
        "part",
        &[
            ("part-0", "busybox:2", &new),
            ("part-1", "busybox:2", &new),
            ("part-2", "busybox:2", &new),
        ],
    )
    .await;
    let out = c
        .kubectl_ok(&["rollout", "status", "sts/part", "-n", NS, "--timeout=40s"])
        .await;
    assert!(out.contains("complete"), "{out}");
    let s = api.get("part").await.expect("get").status.expect("status");
    assert_eq!(s.current_revision.as_deref(), Some(new.as_str()));
}
