//! Deployments and ReplicaSets against a real `skiff server` (scheduler
//! disabled, no nodes): the test plays kubelet by marking pods Running and
//! Ready, and drives rollouts with the real kubectl — scaling, a rolling
//! update that advances only as new pods become ready within
//! maxSurge/maxUnavailable, `rollout status/history/undo/restart/pause/
//! resume`, proportional scaling mid-rollout, the progress deadline,
//! Recreate, revision history cleanup, and ReplicaSet adoption/release.

#[path = "deployment/cluster.rs"]
mod cluster;
mod common;
#[path = "deployment/rollout.rs"]
mod rollout;

use std::time::Duration;

use cluster::{is_ready, wait_for, Cluster};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// A Deployment `name` selecting `app=<name>`, one container `web` of `image`.
fn deployment(name: &str, replicas: i32, image: &str, strategy: Value, extra_spec: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    });
    if let (Some(spec), Some(extra)) = (d["spec"].as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    d
}

fn rolling(surge: i32, unavailable: i32) -> Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

fn image_of_set(rs: &ReplicaSet) -> String {
    rs.spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

fn hash_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
}

/// Creating, scaling and the pod ownership a Deployment sets up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_scale() {
    let c = Cluster::start().await;
    c.apply(&deployment(
        "web",
        3,
        "registry.local/web:1",
        rolling(1, 1),
        json!({}),
    ))
    .await;
    let (rs, pods) = wait_for("one replica set with 3 pods", || async {
        let sets = c.replica_sets("app=web").await;
        let pods = c.active_pods("app=web").await;
        match sets.as_slice() {
            [rs] if pods.len() == 3 => Ok((rs.clone(), pods)),
            _ => Err(format!("{} replica sets, {} pods", sets.len(), pods.len())),
        }
    })
    .await;
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let hash = hash_of(&rs.metadata).expect("the replica set carries pod-template-hash");
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(
        rs.spec
            .selector
            .match_labels
            .as_ref()
            .and_then(|m| m.get("pod-template-hash")),
        Some(&hash)
    );
    assert_eq!(
        annotation(&rs.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("1")
    );
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert!(
            name.starts_with(&format!("{rs_name}-")) && name.len() == rs_name.len() + 6,
            "pod name {name}"
        );
        let owner = &pod
            .metadata
            .owner_references
            .as_ref()
            .expect("owner reference")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", rs_name.as_str())
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(hash_of(&pod.metadata), Some(hash.clone()));
        c.mark_ready(&name).await;
    }
    wait_deployment(&c, "web", 3).await;
    let out = c
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    for (replicas, what) in [(5_i32, "scaled up to 5"), (2, "scaled down to 2")] {
        c.kubectl_ok(&["scale", "deployment/web", &format!("--replicas={replicas}")])
            .await;
        let pods = wait_for(what, || async {
            let pods = c.active_pods("app=web").await;
            let sets = c.replica_sets("app=web").await;
            if i32::try_from(pods.len()) == Ok(replicas) && sets.len() == 1 {
                Ok(pods)
            } else {
                Err(format!(
                    "{} pods in {} replica sets",
                    pods.len(),
                    sets.len()
                ))
            }
        })
        .await;
        for pod in pods.iter().filter(|p| !is_ready(p)) {
            c.mark_ready(pod.metadata.name.as_deref().unwrap_or_default())
                .await;
        }
        wait_deployment(&c, "web", replicas).await;
    }
    let rs = c.sets().get(&rs_name).await.expect("the replica set");
    let status = rs.status.expect("replica set status");
    assert_eq!(
        (
            status.replicas,
            status.ready_replicas,
            status.available_replicas
        ),
        (2, Some(2), Some(2))
    );
    assert_eq!(status.fully_labeled_replicas, Some(2));
    assert_eq!(status.observed_generation, rs.metadata.generation);
    assert_eq!(
        annotation(&rs.metadata, "deployment.kubernetes.io/desired-replicas").as_deref(),
        Some("2")
    );
    let events = c.kubectl_ok(&["get", "events", "-o", "json"]).await;
    let events: Value = serde_json::from_str(&events).expect("events as JSON");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["ScalingReplicaSet", "SuccessfulCreate", "SuccessfulDelete"] {
        assert!(
            reasons.contains(&reason),
            "no {reason} event among {reasons:?}"
        );
    }
}

/// Waits until the Deployment reports `replicas` updated, available pods
/// for its current generation, and returns it.
async fn wait_deployment(c: &Cluster, name: &str, replicas: i32) -> Deployment {
    wait_for(
        &format!("deployment {name} complete with {replicas} replicas"),
        || async {
            let d = c.deployments().get(name).await.map_err(|e| e.to_string())?;
            let s = d.status.clone().unwrap_or_default();
            let counts = (
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
            );
            let want = Some(replicas);
            let done = counts == (want, want, want, want)
                && s.unavailable_replicas.unwrap_or(0) == 0
                && s.observed_generation == d.metadata.generation
                && s.conditions.iter().flatten().any(|c| {
                    c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
                });
            if done {
                Ok(d)
            } else {
                Err(format!(
                    "status {s:?}, generation {:?}",
                    d.metadata.generation
                ))
            }
        },
    )
    .await
}

/// A Recreate Deployment stops every old pod, waits until they are gone
/// (a finalizer keeps one terminating), then starts the new ones; old
/// ReplicaSets beyond revisionHistoryLimit are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_history_limit() {
    let c = Cluster::start().await;
    let _kubelet = c.kubelet();
    let recreate = json!({"type": "Recreate"});
    c.apply(&deployment(
        "db",
        3,
        "registry.local/db:1",
        recreate.clone(),
        json!({"revisionHistoryLimit": 1}),
    ))
    .await;
    wait_deployment(&c, "db", 3).await;
    let held = c
        .active_pods("app=db")
        .await
        .first()
        .and_then(|p| p.metadata.name.clone())
        .expect("a pod");
    let finalizer = json!({"metadata": {"finalizers": ["skiff.test/hold"]}});
    c.pods()
        .patch(&held, &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .expect("add a finalizer");

    c.kubectl_ok(&["set", "image", "deployment/db", "web=registry.local/db:2"])
        .await;
    wait_for("old pods stopped but one still terminating", || async {
        let active = c.active_pods("app=db").await;
        let held_pod = c.pods().get_opt(&held).await.map_err(|e| e.to_string())?;
        match held_pod {
            Some(p) if active.is_empty() && p.metadata.deletion_timestamp.is_some() => Ok(()),
            other => Err(format!(
                "{} active pods, held pod {:?}",
                active.len(),
                other.map(|p| p.metadata)
            )),
        }
    })
    .await;
    // The new ReplicaSet must not start while an old pod is still terminating.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sets = c.replica_sets("app=db").await;
    assert_eq!(
        sets.len(),
        1,
        "a new replica set was created before the old pods were gone"
    );
    assert!(
        c.active_pods("app=db").await.is_empty(),
        "new pods started before the old ones were gone"
    );

    let release = json!({"metadata": {"finalizers": null}});
    c.pods()
        .patch(&held, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("remove the finalizer");
    wait_deployment(&c, "db", 3).await;
    let sets = c.replica_sets("app=db").await;
    assert_eq!(sets.len(), 2);
    assert_eq!(image_of_set(&sets[1]), "registry.local/db:2");
    assert_eq!(sets[0].spec.replicas, Some(0));

    c.kubectl_ok(&["set", "image", "deployment/db", "web=registry.local/db:3"])
        .await;
    wait_deployment(&c, "db", 3).await;
    let images = wait_for("the oldest replica set cleaned up", || async {
        let sets = c.replica_sets("app=db").await;
        let images: Vec<String> = sets.iter().map(image_of_set).collect();
        if sets.len() == 2 {
            Ok(images)
        } else {
            Err(format!("replica sets of {images:?}"))
        }
    })
    .await;
    assert_eq!(images, ["registry.local/db:2", "registry.local/db:3"]);
}

/// A bare ReplicaSet adopts a matching orphan pod, releases a pod relabelled
/// out of its selector (and replaces it), counts a ready pod as available
/// only after minReadySeconds, and deletes unready pods first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_and_releases() {
    let c = Cluster::start().await;
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "solo"}},
        "spec": {"containers": [{"name": "web", "image": "registry.local/solo:1"}]},
    }))
    .expect("a pod");
    c.pods()
        .create(&PostParams::default(), &orphan)
        .await
        .expect("create the orphan pod");
    c.mark_ready("orphan").await;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "solo"},
        "spec": {
            "replicas": 2,
            "minReadySeconds": 3,
            "selector": {"matchLabels": {"app": "solo"}},
            "template": {
                "metadata": {"labels": {"app": "solo"}},
                "spec": {"containers": [{"name": "web", "image": "registry.local/solo:1"}]},
            },
        },
    }))
    .expect("a replica set");
    let rs = c
        .sets()
        .create(&PostParams::default(), &rs)
        .await
        .expect("create the replica set");
    let uid = rs.metadata.uid.clone().expect("uid");
    let owned_by_rs = |p: &Pod| {
        p.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.controller == Some(true))
    };
    let pods = wait_for("the orphan adopted and one pod created", || async {
        let pods = c.active_pods("app=solo").await;
        if pods.len() == 2 && pods.iter().all(owned_by_rs) {
            Ok(pods)
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .await;
    assert!(pods
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("orphan")));

    let relabel = json!({"metadata": {"labels": {"app": "elsewhere"}}});
    c.pods()
        .patch("orphan", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .expect("relabel the pod");
    wait_for("the relabelled pod released and replaced", || async {
        let released = c.pods().get("orphan").await.map_err(|e| e.to_string())?;
        let pods = c.active_pods("app=solo").await;
        if !owned_by_rs(&released) && pods.len() == 2 && pods.iter().all(owned_by_rs) {
            Ok(())
        } else {
            Err(format!(
                "orphan owners {:?}, {} pods",
                released.metadata.owner_references,
                pods.len()
            ))
        }
    })
    .await;

    // A ready pod counts as available only after minReadySeconds (3 s).
    let pods = c.active_pods("app=solo").await;
    let keep = pods[0].metadata.name.clone().unwrap_or_default();
    let marked = std::time::Instant::now();
    c.mark_ready(&keep).await;
    let available = wait_for("the ready pod counted", || async {
        let rs = c.sets().get("solo").await.map_err(|e| e.to_string())?;
        let status = rs.status.unwrap_or_default();
        match status.ready_replicas {
            Some(1) => Ok(status.available_replicas),
            other => Err(format!("readyReplicas {other:?}")),
        }
    })
    .await;
    if marked.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            available,
            Some(0),
            "available before minReadySeconds passed"
        );
    }
    wait_for("the ready pod available after minReadySeconds", || async {
        let rs = c.sets().get("solo").await.map_err(|e| e.to_string())?;
        match rs.status.and_then(|s| s.available_replicas) {
            Some(1) => Ok(()),
            other => Err(format!("availableReplicas {other:?}")),
        }
    })
    .await;

    // Scale down to one: of a ready and an unready pod, the unready one goes.
    let scale = json!({"spec": {"replicas": 1}});
    c.sets()
        .patch("solo", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scale the replica set");
    let left = wait_for("one pod left", || async {
        let pods = c.active_pods("app=solo").await;
        match pods.as_slice() {
            [p] => Ok(p.metadata.name.clone().unwrap_or_default()),
            _ => Err(format!("{} pods", pods.len())),
        }
    })
    .await;
    assert_eq!(left, keep, "the ready pod should have been kept");
    c.sets()
        .delete("solo", &DeleteParams::default())
        .await
        .expect("delete the replica set");
}
