//! DaemonSet, StatefulSet and Job controllers against a real `skiff server`
//! with fake nodes. The scheduler and the node lifecycle controller (fake
//! nodes renew no Lease) are disabled: the test binds pods itself through
//! `pods/binding` and plays kubelet by writing pod status and confirming
//! graceful deletions.

#[path = "workloads/cluster.rs"]
mod cluster;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{pinned_node, wait_for, Cluster, TIMEOUT};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{json, Value};

const DISABLED: &[&str] = &["scheduler", "nodelifecycle"];
const NS: &str = "default";

/// Pods matching `selector`, by name.
async fn pods(c: &Cluster, selector: &str) -> BTreeMap<String, Pod> {
    let list = c
        .pods(NS)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect()
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn label<'a>(p: &'a Pod, key: &str) -> &'a str {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map_or("", String::as_str)
}

/// Live daemon pods by the node they are for.
async fn daemon_pods(c: &Cluster) -> BTreeMap<String, Vec<Pod>> {
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods(c, "app=agent")
        .await
        .into_values()
        .filter(|p| !terminating(p))
    {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .or_else(|| pinned_node(&pod))
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    by_node
}

fn daemon_set(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_set_follows_nodes_and_rolls_out() {
    let c = Cluster::start(DISABLED).await;
    c.add_node("n1", json!([])).await;
    c.add_node("n2", json!([])).await;
    c.apply(&[daemon_set("busybox:1")]).await;
    let nodes = |names: &'static [&'static str]| {
        move |m: BTreeMap<String, Vec<Pod>>| {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            (keys == names && m.values().all(|p| p.len() == 1)).then_some(m)
        }
    };
    wait_for("one pod per node", TIMEOUT, || async {
        nodes(&["n1", "n2"])(daemon_pods(&c).await)
    })
    .await;
    let ds_api: Api<DaemonSet> = Api::namespaced(c.client.clone(), NS);
    let kubelet = c.kubelet(NS, "n1");
    wait_for("both daemon pods ready", TIMEOUT, || async {
        let s = ds_api.get("agent").await.expect("get").status?;
        (s.desired_number_scheduled == 2 && s.number_ready == 2).then_some(())
    })
    .await;
    for pod in daemon_pods(&c).await.values().flatten() {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pinned_node(pod),
            "bound where pinned"
        );
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")));
    }

    // A new node gets a pod; a tainted one does not; a deleted one loses its pod.
    c.add_node("n3", json!([])).await;
    c.add_node(
        "n4",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    wait_for("a pod on the new node", TIMEOUT, || async {
        nodes(&["n1", "n2", "n3"])(daemon_pods(&c).await)
    })
    .await;
    let node_api: Api<Node> = Api::all(c.client.clone());
    node_api
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete node n1");
    wait_for("the deleted node's pod to go", TIMEOUT, || async {
        nodes(&["n2", "n3"])(daemon_pods(&c).await)
    })
    .await;
    wait_for("status after the node changes", TIMEOUT, || async {
        let s = ds_api.get("agent").await.expect("get").status?;
        (s.desired_number_scheduled == 2 && s.number_ready == 2 && s.number_available == Some(2))
            .then_some(())
    })
    .await;

    // A rolling update replaces one pod at a time (maxUnavailable 1).
    drop(kubelet);
    c.kubectl_ok(&["set", "image", "daemonset/agent", "main=busybox:2"])
        .await;
    let replaced = wait_for("one old pod to be replaced", TIMEOUT, || async {
        let all = pods(&c, "app=agent").await;
        let going: Vec<String> = all
            .values()
            .filter(|p| terminating(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (going.len() == 1).then_some(going)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = pods(&c, "app=agent").await;
    let old_live = all
        .values()
        .filter(|p| !terminating(p) && !replaced.contains(p.metadata.name.as_ref().expect("name")))
        .count();
    assert_eq!(
        old_live,
        1,
        "only one pod may be unavailable at a time: {:?}",
        all.keys()
    );
    let _kubelet = c.kubelet(NS, "n2");
    let out = c
        .kubectl_ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let by_node = daemon_pods(&c).await;
    assert_eq!(by_node.keys().collect::<Vec<_>>(), ["n2", "n3"]);
    for pod in by_node.values().flatten() {
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        assert_eq!(image.as_deref(), Some("busybox:2"));
    }
}

fn stateful_set(name: &str, replicas: i32, policy: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    })
}

/// Names of the pods of set `name`, and which of them are terminating.
async fn members(c: &Cluster, name: &str) -> (Vec<String>, Vec<String>) {
    let all = pods(c, &format!("app={name}")).await;
    let going = all
        .values()
        .filter(|p| terminating(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (all.into_keys().collect(), going)
}

#[tokio::test(flavor = "multi_thread")]
async fn stateful_set_orders_creation_and_scale_down() {
    let c = Cluster::start(DISABLED).await;
    c.add_node("n1", json!([])).await;
    c.apply(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
               "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        stateful_set("web", 3, "OrderedReady"),
    ])
    .await;
    for i in 0..3 {
        let name = format!("web-{i}");
        let pod = wait_for(&format!("{name} to be created"), TIMEOUT, || async {
            pods(&c, "app=web").await.remove(&name)
        })
        .await;
        let spec = pod.spec.clone().unwrap_or_default();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some(name.as_str()), Some("web"))
        );
        assert_eq!(label(&pod, "statefulset.kubernetes.io/pod-name"), name);
        assert!(!label(&pod, "controller-revision-hash").is_empty());
        // The next ordinal waits until this one is Running and Ready.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (names, _) = members(&c, "web").await;
        assert_eq!(
            names.len(),
            i + 1,
            "pod {} created before {name} was ready: {names:?}",
            i + 1
        );
        c.bind(NS, &name, "n1").await;
        c.set_phase(NS, &name, "Running").await;
    }
    let sts: Api<StatefulSet> = Api::namespaced(c.client.clone(), NS);
    wait_for("three ready replicas", TIMEOUT, || async {
        let s = sts.get("web").await.expect("get").status?;
        (s.ready_replicas == Some(3) && s.replicas == 3).then_some(())
    })
    .await;

    // Scale down: highest ordinal first, each after the previous is gone.
    c.kubectl_ok(&["scale", "statefulset", "web", "--replicas=1"])
        .await;
    for (going, staying) in [("web-2", "web-1"), ("web-1", "web-0")] {
        wait_for(&format!("{going} to terminate"), TIMEOUT, || async {
            let (_, t) = members(&c, "web").await;
            (t == [going]).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (names, t) = members(&c, "web").await;
        assert_eq!(
            t,
            [going],
            "{staying} must wait until {going} is gone: {names:?}"
        );
        c.finish_deletion(NS, going).await;
    }
    wait_for("one replica left", TIMEOUT, || async {
        let s = sts.get("web").await.expect("get").status?;
        (s.replicas == 1 && s.ready_replicas == Some(1) && members(&c, "web").await.0 == ["web-0"])
            .then_some(())
    })
    .await;
    let out = c
        .kubectl_ok(&["rollout", "status", "statefulset/web", "--timeout=30s"])
        .await;
    assert!(
        out.contains("roll out complete") || out.contains("rolling update complete"),
        "{out}"
    );

    // Parallel creates every member at once, ready or not.
    c.apply(&[stateful_set("par", 3, "Parallel")]).await;
    wait_for("all Parallel members", TIMEOUT, || async {
        (members(&c, "par").await.0 == ["par-0", "par-1", "par-2"]).then_some(())
    })
    .await;
}

fn job(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}});
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// A Job's pods that are neither finished nor terminating, by name.
async fn active(c: &Cluster, job: &str) -> Vec<String> {
    let all = pods(c, &format!("batch.kubernetes.io/job-name={job}")).await;
    all.into_iter()
        .filter(|(_, p)| !terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .map(|(n, _)| n)
        .collect()
}

async fn job_condition(c: &Cluster, name: &str, type_: &str) -> Option<(Job, Option<String>)> {
    let api: Api<Job> = Api::namespaced(c.client.clone(), NS);
    let job = api.get(name).await.expect("get the job");
    let reason = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")?
        .reason
        .clone();
    Some((job, reason))
}

#[tokio::test(flavor = "multi_thread")]
async fn job_completes_with_bounded_parallelism() {
    let c = Cluster::start(DISABLED).await;
    c.apply(&[job("work", json!({"completions": 3, "parallelism": 2}))])
        .await;
    // completions 3, parallelism 2: two run, then two, then the last one alone.
    for (round, expected) in [2, 2, 1].into_iter().enumerate() {
        let running = wait_for(
            &format!("{expected} active pods in round {round}"),
            TIMEOUT,
            || async {
                let a = active(&c, "work").await;
                (a.len() == expected).then_some(a)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            active(&c, "work").await.len(),
            expected,
            "parallelism and remaining completions bound active pods"
        );
        c.set_phase(NS, &running[0], "Succeeded").await;
    }
    let (job, reason) = wait_for("the Complete condition", TIMEOUT, || async {
        job_condition(&c, "work", "Complete").await
    })
    .await;
    assert_eq!(reason.as_deref(), Some("CompletionsReached"));
    let status = job.status.unwrap_or_default();
    assert_eq!((status.succeeded, status.active), (Some(3), Some(0)));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    assert_eq!(
        pods(&c, "batch.kubernetes.io/job-name=work").await.len(),
        3,
        "no pod beyond the completions"
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "--timeout=30s",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn job_fails_past_its_backoff_limit() {
    let c = Cluster::start(DISABLED).await;
    c.apply(&[job("flaky", json!({"backoffLimit": 1}))]).await;
    for attempt in 0..2 {
        let pod = wait_for(&format!("attempt {attempt}"), TIMEOUT, || async {
            active(&c, "flaky").await.into_iter().next()
        })
        .await;
        c.set_phase(NS, &pod, "Failed").await;
    }
    let (job, reason) = wait_for("the Failed condition", TIMEOUT, || async {
        job_condition(&c, "flaky", "Failed").await
    })
    .await;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let status = job.status.unwrap_or_default();
    assert_eq!((status.failed, status.active), (Some(2), Some(0)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        active(&c, "flaky").await.is_empty(),
        "a failed Job starts no more pods"
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "--timeout=30s",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn job_fails_at_its_active_deadline() {
    let c = Cluster::start(DISABLED).await;
    c.apply(&[job(
        "slow",
        json!({"activeDeadlineSeconds": 2, "parallelism": 2, "completions": 4}),
    )])
    .await;
    let running = wait_for("two running pods", TIMEOUT, || async {
        let a = active(&c, "slow").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    for pod in &running {
        c.set_phase(NS, pod, "Running").await;
    }
    let (_, reason) = wait_for("the Failed condition", TIMEOUT, || async {
        job_condition(&c, "slow", "Failed").await
    })
    .await;
    assert_eq!(reason.as_deref(), Some("DeadlineExceeded"));
    assert!(
        active(&c, "slow").await.is_empty(),
        "the running pods are deleted at the deadline"
    );
}
