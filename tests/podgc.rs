//! The pod garbage collector inside `skiff server`, seen from the API: only
//! `podgc` runs (so nothing else touches the fake nodes and pods the test
//! writes); the test plays the kubelet by writing pod status itself.

mod fake_cluster;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use fake_cluster::{eventually, Server};

async fn create_node(client: &kube::Client, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
}

/// Creates a pod bound to `node` (with `finalizers`) and writes its phase.
async fn bound_pod(
    client: &kube::Client,
    name: &str,
    node: &str,
    phase: &str,
    finalizers: &[&str],
) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.local/app:1"}]},
    }))
    .expect("pod");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    // As a kubelet writes it: the phase and the pod's conditions.
    let status = json!({"status": {"phase": phase,
        "conditions": [{"type": "PodScheduled", "status": "True"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("write status of pod {name}: {e}"));
}

async fn set_phase(client: &kube::Client, name: &str, phase: &str) {
    let status = json!({"status": {"phase": phase}});
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("write status of pod {name}: {e}"));
}

async fn pod_names(client: &kube::Client) -> BTreeSet<String> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_pods_beyond_the_threshold_are_deleted_oldest_first() {
    let (_server, client) =
        Server::start(&["podgc"], &["--terminated-pod-gc-threshold", "2"]).await;
    create_node(&client, "n1").await;
    bound_pod(&client, "running", "n1", "Running", &[]).await;
    // creationTimestamp has seconds: space the pods so their age is distinct.
    for i in 0..4 {
        bound_pod(&client, &format!("done-{i}"), "n1", "Pending", &[]).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for (i, phase) in ["Succeeded", "Failed", "Succeeded", "Failed"]
        .iter()
        .enumerate()
    {
        set_phase(&client, &format!("done-{i}"), phase).await;
    }
    let want: BTreeSet<String> = ["running", "done-2", "done-3"].map(String::from).into();
    eventually("the two oldest terminated pods to be deleted", || async {
        let names = pod_names(&client).await;
        if names == want {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_of_a_vanished_node_are_marked_failed_and_deleted() {
    let (_server, client) = Server::start(&["podgc"], &["--pod-gc-orphan-quarantine", "1s"]).await;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    create_node(&client, "n1").await;
    create_node(&client, "n2").await;
    bound_pod(&client, "kept", "n1", "Running", &[]).await;
    bound_pod(&client, "on-n2", "n2", "Running", &[]).await;
    // A finalizer holds this one, so its last status can be read.
    bound_pod(&client, "orphan", "ghost", "Running", &["example.com/hold"]).await;

    let orphan = eventually(
        "the pod on a node that does not exist to be deleted",
        || async {
            let pod = pods.get("orphan").await.map_err(|e| e.to_string())?;
            if pod.metadata.deletion_timestamp.is_some() {
                Ok(pod)
            } else {
                Err(format!("{:?}", pod.status))
            }
        },
    )
    .await;
    let status = orphan.status.expect("a status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("a DisruptionTarget condition");
    assert_eq!(condition.status, "True");
    assert_eq!(condition.reason.as_deref(), Some("DeletionByPodGC"));
    assert_eq!(
        condition.message.as_deref(),
        Some("PodGC: node no longer exists")
    );
    // The kubelet's conditions stay beside it.
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    assert_eq!(scheduled.map(|c| c.status.as_str()), Some("True"));
    let remove = json!({"metadata": {"finalizers": null}});
    pods.patch("orphan", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .expect("remove the finalizer");

    // Pods on existing nodes stay until their node goes.
    assert!(pods.get_opt("on-n2").await.expect("get").is_some());
    Api::<Node>::all(client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete node n2");
    let want: BTreeSet<String> = ["kept".to_string()].into();
    eventually("only the pod on n1 to remain", || async {
        let names = pod_names(&client).await;
        if names == want {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let kept = pods.get("kept").await.expect("get kept");
    assert_eq!(
        kept.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );
}
