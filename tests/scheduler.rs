//! The scheduler inside `skiff server`, seen from the API: fake Node objects
//! (Ready condition, allocatable, taints, labels) are written directly, pods
//! are created, and the tests check where they land, what events explain
//! them and that an unschedulable pod is retried when the cluster changes.
//!
//! Each test runs its own server with every controller but the scheduler
//! disabled (nothing else touches the fake nodes or pods), on a free
//! 127.0.0.1 port and a temporary data directory; the guard kills the server
//! by its PID, also when a test panics (and prints the server log then).

mod common;
mod scheduler_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::{json, Value};

use scheduler_support::*;

#[tokio::test]
async fn unschedulable_pod_is_explained_and_scheduled_once_a_node_fits() {
    let (server, client) = Server::start().await;
    FakeNode::new("small-1", "2").create(&client).await;
    FakeNode::new("small-2", "2").create(&client).await;

    create_pod(&client, "fits", "500m", json!({})).await;
    let node = bound_node(&client, "fits").await;
    assert!(node.starts_with("small-"), "bound to {node}");
    let message = eventually("the Scheduled event", || async {
        events(&client, "fits", "Scheduled")
            .await
            .first()?
            .message
            .clone()
    })
    .await;
    assert_eq!(
        message,
        format!("Successfully assigned default/fits to {node}")
    );

    create_pod(&client, "too-big", "4", json!({})).await;
    let message = failed_scheduling(&client, "too-big").await;
    assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
    let condition = eventually("PodScheduled=False on too-big", || {
        scheduled_condition(&client, "too-big")
    })
    .await;
    assert_eq!(
        condition,
        (
            "False".to_string(),
            "Unschedulable".to_string(),
            "0/2 nodes are available: 2 Insufficient cpu.".to_string()
        )
    );
    assert_eq!(node_of(&client, "too-big").await, None, "stays Pending");
    // The scheduler's status write is owned by the controller manager, as
    // `kubectl get -o yaml --show-managed-fields` shows it.
    let pod = pods(&client).get("too-big").await.expect("get too-big");
    let managers: Vec<(String, String)> = pod
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.subresource.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("skiff-controller-manager".to_string(), "status".to_string())),
        "managedFields of too-big: {managers:?}"
    );

    // kubectl describe shows the explanation as users read it.
    let describe = Command::new(common::tools::kubectl())
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["describe", "pod", "too-big"])
        .output()
        .expect("run kubectl describe");
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        describe.status.success(),
        "kubectl describe failed: {}",
        String::from_utf8_lossy(&describe.stderr)
    );
    assert!(
        text.contains("FailedScheduling"),
        "no FailedScheduling in:\n{text}"
    );
    assert!(
        text.contains("0/2 nodes are available: 2 Insufficient cpu."),
        "no reason in:\n{text}"
    );

    // A node big enough appears: the pod is retried without waiting for the periodic flush.
    FakeNode::new("big", "8").create(&client).await;
    assert_eq!(bound_node(&client, "too-big").await, "big");
    let condition = scheduled_condition(&client, "too-big").await;
    assert_eq!(condition.map(|c| c.0), Some("True".to_string()));
}

#[tokio::test]
async fn selectors_affinity_taints_and_host_ports_steer_placement() {
    let (_server, client) = Server::start().await;
    FakeNode {
        labels: json!({"zone": "a"}),
        ..FakeNode::new("plain", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "b", "disk": "ssd", "cores": "16"}),
        ..FakeNode::new("ssd", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "b", "gpu": "true"}),
        taints: json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ..FakeNode::new("gpu", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "c"}),
        unschedulable: true,
        ..FakeNode::new("cordoned", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "c"}),
        ready: false,
        ..FakeNode::new("down", "4")
    }
    .create(&client)
    .await;

    let in_zone = |values: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": values}]}
        ]}}}})
    };
    create_pod(
        &client,
        "selector",
        "100m",
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    create_pod(&client, "affinity-in", "100m", in_zone(json!(["a", "c"]))).await;
    create_pod(
        &client,
        "affinity-gt-or",
        "100m",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}, {"key": "gpu", "operator": "DoesNotExist"}]}
        ]}}}}),
    )
    .await;
    create_pod(
        &client,
        "affinity-name",
        "100m",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["plain"]}]}
        ]}}}}),
    )
    .await;
    create_pod(
        &client,
        "tolerates-gpu",
        "100m",
        json!({"nodeSelector": {"gpu": "true"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    create_pod(
        &client,
        "wants-gpu",
        "100m",
        json!({"nodeSelector": {"gpu": "true"}}),
    )
    .await;

    assert_eq!(bound_node(&client, "selector").await, "ssd");
    assert_eq!(bound_node(&client, "affinity-in").await, "plain");
    assert_eq!(bound_node(&client, "affinity-gt-or").await, "ssd");
    assert_eq!(bound_node(&client, "affinity-name").await, "plain");
    assert_eq!(bound_node(&client, "tolerates-gpu").await, "gpu");
    assert_eq!(
        failed_scheduling(&client, "wants-gpu").await,
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, \
         1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
    );

    // Host ports: two pods cannot share 8080/TCP on one node; a third fits nowhere.
    let host_port = json!({"containers": [{
        "name": "app",
        "image": "registry.local/app:1",
        "ports": [{"containerPort": 80, "hostPort": 8080}],
    }]});
    create_pod(&client, "port-1", "100m", host_port.clone()).await;
    create_pod(&client, "port-2", "100m", host_port.clone()).await;
    let first = bound_node(&client, "port-1").await;
    let second = bound_node(&client, "port-2").await;
    assert_ne!(first, second, "two pods with hostPort 8080 on one node");
    create_pod(&client, "port-3", "100m", host_port).await;
    assert_eq!(
        failed_scheduling(&client, "port-3").await,
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, \
         1 node(s) were unschedulable, 2 node(s) didn't have free ports for the requested pod ports."
    );
}

#[tokio::test]
async fn pods_of_one_owner_spread_and_avoid_prefer_no_schedule() {
    let (_server, client) = Server::start().await;
    for name in ["n1", "n2", "n3"] {
        FakeNode::new(name, "4").create(&client).await;
    }
    FakeNode {
        taints: json!([{"key": "maintenance", "effect": "PreferNoSchedule"}]),
        ..FakeNode::new("soft", "4")
    }
    .create(&client)
    .await;
    let owner = json!({"ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9",
        "uid": "5f0c7a4e-2b1d-4c3e-9f8a-1a2b3c4d5e6f", "controller": true,
    }]});
    for i in 0..6 {
        create_pod_with_meta(
            &client,
            &format!("web-{i}"),
            "100m",
            owner.clone(),
            json!({}),
        )
        .await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(bound_node(&client, &format!("web-{i}")).await)
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [("n1", 2), ("n2", 2), ("n3", 2)]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    assert_eq!(per_node, expected);
}

#[tokio::test]
async fn pods_bound_elsewhere_count_and_their_deletion_frees_room() {
    let (_server, client) = Server::start().await;
    FakeNode {
        pods: "1",
        ..FakeNode::new("only", "4")
    }
    .create(&client)
    .await;

    // Bound by someone else: the scheduler leaves it alone but counts it.
    create_pod(&client, "manual", "100m", json!({"nodeName": "only"})).await;
    create_pod(&client, "waiting", "100m", json!({})).await;
    assert_eq!(
        failed_scheduling(&client, "waiting").await,
        "0/1 nodes are available: 1 Too many pods."
    );

    // Another scheduler's pod is not ours to bind or explain.
    create_pod(
        &client,
        "not-ours",
        "100m",
        json!({"schedulerName": "other-scheduler"}),
    )
    .await;

    pods(&client)
        .delete("manual", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the manual pod");
    assert_eq!(bound_node(&client, "waiting").await, "only");
    assert_eq!(node_of(&client, "not-ours").await, None);
    assert!(events(&client, "not-ours", "FailedScheduling")
        .await
        .is_empty());
    assert!(events(&client, "not-ours", "Scheduled").await.is_empty());
}

#[tokio::test]
async fn retried_unschedulable_pod_keeps_one_event_with_a_count() {
    let (_server, client) = Server::start().await;
    FakeNode::new("only", "2").create(&client).await;
    // The node and pod watches are separate streams: a pod that overtakes
    // the node would first be told there are no nodes. A pod that fits
    // proves the scheduler knows the node.
    create_pod(&client, "probe", "10m", json!({})).await;
    eventually("the probe pod bound", || node_of(&client, "probe")).await;
    create_pod(&client, "too-big", "4", json!({})).await;
    let message = failed_scheduling(&client, "too-big").await;
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");

    // Pods bound by someone else come and go: each departure is a cluster
    // change that makes the scheduler try the pending pod again.
    let mut churn = 0;
    let event = eventually("FailedScheduling counted three times", || {
        churn += 1;
        let client = client.clone();
        async move {
            let name = format!("churn-{churn}");
            create_pod(&client, &name, "10m", json!({"nodeName": "only"})).await;
            pods(&client)
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
                .expect("delete a churn pod");
            tokio::time::sleep(Duration::from_millis(400)).await;
            let events = events(&client, "too-big", "FailedScheduling").await;
            let event = events.first()?.clone();
            assert_eq!(events.len(), 1, "repeats become one Event: {events:?}");
            (event.count? >= 3).then_some(event)
        }
    })
    .await;
    assert_eq!(
        event.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    let (first, last) = (
        event.first_timestamp.expect("first"),
        event.last_timestamp.expect("last"),
    );
    assert!(
        last.0 > first.0,
        "lastTimestamp {last:?} follows firstTimestamp {first:?}"
    );
    assert_eq!(node_of(&client, "too-big").await, None, "stays Pending");
}
