//! `kubectl drain`, the `pods/eviction` subresource and PodDisruptionBudgets
//! against a real `skiff server` with fake nodes. The deployment and
//! replicaset controllers run; the scheduler and the node lifecycle
//! controller (fake nodes renew no Lease) are off: the test binds pods and
//! plays kubelet (pod status, confirming graceful deletions) itself.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeMap;

use cluster::{wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};

const DISABLED: &[&str] = &["scheduler", "nodelifecycle"];
const NS: &str = "default";
const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn deployment(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "web", "image": "registry.local/web:1",
                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                },
            },
        },
    })
}

/// Live (not terminating) pods with `app=<app>`, by name, with their node.
async fn live_pods(c: &Cluster, app: &str) -> BTreeMap<String, String> {
    let list = c
        .pods(NS)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone().unwrap_or_default();
            Some((p.metadata.name?, node))
        })
        .collect()
}

/// Waits until `count` live, Ready pods of `app` run on `node`.
async fn wait_running(c: &Cluster, app: &str, node: &str, count: usize) {
    wait_for(
        &format!("{count} ready {app} pods on {node}"),
        TIMEOUT,
        || async {
            let list = c
                .pods(NS)
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            let ready = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .filter(|p| ready(p))
                .count();
            (ready == count).then_some(())
        },
    )
    .await;
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The row of `kubectl get pdb NAME` (no header).
async fn pdb_row(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.kubectl_ok(&["get", "pdb", name, "--no-headers"]).await;
    out.split_whitespace().map(str::to_string).collect()
}

/// Starts a cluster with two Ready fake nodes and a 3-replica Deployment
/// `web` whose pods run on `n1`.
async fn web_on_n1(replicas: i32) -> Cluster {
    let c = Cluster::start(DISABLED).await;
    c.add_node("n1", json!([])).await;
    c.add_node("n2", json!([])).await;
    let kubelet = c.kubelet(NS, "n1");
    c.apply(&[deployment("web", replicas)]).await;
    wait_running(&c, "web", "n1", replicas as usize).await;
    drop(kubelet);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_evicts_a_deployment_within_its_disruption_budget() {
    let c = web_on_n1(3).await;
    let created = c
        .kubectl_ok(&[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=2",
        ])
        .await;
    assert!(
        created.contains("poddisruptionbudget.policy/web created"),
        "{created}"
    );
    let header = c.kubectl_ok(&["get", "pdb"]).await;
    assert!(
        header.starts_with("NAME")
            && header.contains("MIN AVAILABLE")
            && header.contains("ALLOWED DISRUPTIONS"),
        "{header}"
    );
    // The new budget's status is there from the start: 3 ready, 2 wanted.
    assert_eq!(pdb_row(&c, "web").await[..4], ["web", "2", "N/A", "1"]);
    let before = live_pods(&c, "web").await;
    // Replacements land on n2; the kubelet also confirms graceful deletions.
    let _kubelet = c.kubelet(NS, "n2");
    let out = c
        .kubectl(&[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ])
        .await;
    let stdout = common::expect_success("kubectl drain n1", out);
    for name in before.keys() {
        assert!(
            stdout.contains(&format!("pod/{name} evicted")),
            "{name} not evicted:\n{stdout}"
        );
    }
    assert!(stdout.contains("node/n1 drained"), "{stdout}");
    // Cordoned, empty, and the Deployment whole again on n2.
    let node = Api::<Node>::all(c.client.clone())
        .get("n1")
        .await
        .expect("get n1");
    assert_eq!(node.spec.and_then(|s| s.unschedulable), Some(true));
    wait_running(&c, "web", "n2", 3).await;
    let now = live_pods(&c, "web").await;
    assert!(now.values().all(|n| n == "n2"), "{now:?}");
    assert!(
        before.keys().all(|k| !now.contains_key(k)),
        "{before:?} {now:?}"
    );
    // The budget's status follows the pods: the three new ones are healthy,
    // so one disruption is allowed again.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), NS);
    let status = wait_for("the budget to see 3 healthy pods", TIMEOUT, || async {
        let status = pdbs.get("web").await.ok()?.status?;
        (status.current_healthy == Some(3)).then_some(status)
    })
    .await;
    assert_eq!(
        (
            status.desired_healthy,
            status.expected_pods,
            status.disruptions_allowed
        ),
        (Some(2), Some(3), Some(1)),
        "{status:?}"
    );
    let condition = &status.conditions.expect("conditions")[0];
    assert_eq!(
        (
            condition.type_.as_str(),
            condition.status.as_str(),
            condition.reason.as_str()
        ),
        ("DisruptionAllowed", "True", "SufficientPods")
    );
    assert_eq!(pdb_row(&c, "web").await[..4], ["web", "2", "N/A", "1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_blocked_by_a_disruption_budget_reports_it() {
    let c = web_on_n1(2).await;
    c.kubectl_ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=2",
    ])
    .await;
    let before = live_pods(&c, "web").await;
    let _kubelet = c.kubelet(NS, "n2");
    let out = c
        .kubectl(&[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=8s",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "drain succeeded:\n{stderr}");
    assert!(stderr.contains(VIOLATION), "{stderr}");
    assert!(stderr.contains("global timeout reached: 8s"), "{stderr}");
    // Nothing was evicted; the budget shows why.
    assert_eq!(live_pods(&c, "web").await, before);
    assert_eq!(pdb_row(&c, "web").await[..4], ["web", "2", "N/A", "0"]);
    let pdb: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "pdb", "web", "-o", "json"]).await)
            .expect("pdb json");
    assert_eq!(pdb["status"]["currentHealthy"], 2, "{pdb}");
    assert_eq!(pdb["status"]["conditions"][0]["status"], "False", "{pdb}");
    assert_eq!(
        pdb["status"]["conditions"][0]["reason"], "InsufficientPods",
        "{pdb}"
    );
    // With room in the budget (kubectl scale), the same drain goes through.
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=3"])
        .await;
    wait_running(&c, "web", "n2", 1).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.client.clone(), NS);
    wait_for("the budget to allow a disruption", TIMEOUT, || async {
        let status = pdbs.get("web").await.ok()?.status?;
        (status.disruptions_allowed == Some(1)).then_some(())
    })
    .await;
    let out = c
        .kubectl(&[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ])
        .await;
    let stdout = common::expect_success("kubectl drain n1 (second)", out);
    assert!(stdout.contains("node/n1 drained"), "{stdout}");
}

/// An admin client that does not retry 429s (kube's default client retries
/// them for minutes, which is what a refused eviction answers).
async fn no_retry_client(c: &Cluster) -> kube::Client {
    let yaml = c
        .kubectl_ok(&["config", "view", "--raw", "--flatten"])
        .await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

/// POSTs an Eviction for `pod`; the API's answer or its Status error.
async fn evict(client: &kube::Client, pod: &str, body: Value) -> Result<Value, kube::core::Status> {
    match Api::<Pod>::namespaced(client.clone(), NS)
        .create_subresource::<Value, Value>("eviction", pod, &PostParams::default(), &body)
        .await
    {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(s)) => Err(*s),
        Err(e) => panic!("evict {pod}: {e}"),
    }
}

fn eviction(pod: &str, api_version: &str, delete_options: Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": "Eviction",
        "metadata": {"name": pod, "namespace": NS},
        "deleteOptions": delete_options,
    })
}

async fn exists(c: &Cluster, pod: &str) -> bool {
    c.pods(NS).get_opt(pod).await.expect("get pod").is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_follows_upstream_rules() {
    let c = web_on_n1(3).await;
    let client = no_retry_client(&c).await;
    let pods: Vec<String> = live_pods(&c, "web").await.into_keys().collect();

    // Budget validation: one of the two, int or percent up to 100%.
    let both = c
        .try_apply(&[json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "bad", "namespace": NS},
            "spec": {"minAvailable": 1, "maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}})])
        .await;
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success()
            && stderr.contains("minAvailable and maxUnavailable cannot be both set"),
        "{stderr}"
    );
    let percent = c
        .try_apply(&[
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "bad", "namespace": NS},
            "spec": {"maxUnavailable": "150%", "selector": {"matchLabels": {"app": "web"}}}}),
        ])
        .await;
    let stderr = String::from_utf8_lossy(&percent.stderr);
    assert!(
        !percent.status.success() && stderr.contains("must not be greater than 100%"),
        "{stderr}"
    );

    // maxUnavailable 1 of the Deployment's 3: one eviction, then 429 with
    // upstream's message and a DisruptionBudget cause.
    c.kubectl_ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--max-unavailable=1",
    ])
    .await;
    let ok = evict(
        &client,
        &pods[0],
        eviction(&pods[0], "policy/v1", json!({})),
    )
    .await
    .expect("first eviction is allowed");
    assert_eq!(ok["status"], "Success", "{ok}");
    let refused = evict(
        &client,
        &pods[1],
        eviction(&pods[1], "policy/v1", json!({})),
    )
    .await
    .expect_err("second eviction is refused");
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(refused.message, VIOLATION);
    let cause = &refused.details.expect("details").causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    // The evicted pod is terminating (graceful: its node must confirm) and
    // evicting it again is fine: it no longer counts against the budget.
    let evicted = c.pods(NS).get(&pods[0]).await.expect("evicted pod");
    assert!(evicted.metadata.deletion_timestamp.is_some());
    evict(
        &client,
        &pods[0],
        eviction(&pods[0], "policy/v1beta1", json!({})),
    )
    .await
    .expect("evicting a terminating pod");

    // Delete options travel with the eviction: a failed UID precondition is a
    // 409, gracePeriodSeconds 0 removes the pod at once. A pod no budget
    // selects needs no room in one.
    let lone: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lone", "labels": {"app": "lone"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "registry.local/c:1"}]},
    }))
    .expect("pod");
    c.pods(NS)
        .create(&PostParams::default(), &lone)
        .await
        .expect("create lone");
    cluster::set_phase(&c.pods(NS), "lone", "Running").await;
    let conflict = evict(
        &client,
        "lone",
        eviction(
            "lone",
            "policy/v1",
            json!({"preconditions": {"uid": "not-the-uid"}}),
        ),
    )
    .await
    .expect_err("uid precondition");
    assert_eq!(conflict.code, 409, "{conflict:?}");
    evict(
        &client,
        "lone",
        eviction("lone", "policy/v1", json!({"gracePeriodSeconds": 0})),
    )
    .await
    .expect("evict lone");
    assert!(!exists(&c, "lone").await);

    // The name in the body must be the pod's.
    let mismatch = evict(
        &client,
        &pods[1],
        eviction(&pods[2], "policy/v1", json!({})),
    )
    .await
    .expect_err("name mismatch");
    assert_eq!(mismatch.code, 400);
    assert!(
        mismatch.message.contains("name in URL does not match"),
        "{}",
        mismatch.message
    );

    // Two budgets over one pod: upstream answers 500.
    c.kubectl_ok(&[
        "create",
        "pdb",
        "web-too",
        "--selector=app=web",
        "--min-available=0",
    ])
    .await;
    let two = evict(
        &client,
        &pods[1],
        eviction(&pods[1], "policy/v1", json!({})),
    )
    .await
    .expect_err("two budgets");
    assert_eq!(two.code, 500);
    assert!(
        two.message.contains("more than one PodDisruptionBudget"),
        "{}",
        two.message
    );
    assert!(exists(&c, &pods[1]).await);

    // Discovery advertises the subresource as kubectl drain expects it.
    let resources = c.kubectl_ok(&["get", "--raw", "/api/v1"]).await;
    let resources: Value = serde_json::from_str(&resources).expect("discovery json");
    let entry = resources["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "pods/eviction")
        .cloned()
        .expect("pods/eviction listed");
    assert_eq!(
        (&entry["group"], &entry["version"], &entry["kind"]),
        (&json!("policy"), &json!("v1"), &json!("Eviction"))
    );
    c.pods(NS)
        .delete(&pods[1], &DeleteParams::default().grace_period(0))
        .await
        .expect("plain delete still works");
}
