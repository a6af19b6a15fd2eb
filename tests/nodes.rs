//! The node controllers inside `skiff server`, seen from the API: fake Node
//! objects and their Leases in `kube-node-lease` are written directly, the
//! test plays each node's kubelet (renewing its Lease, writing pod status)
//! and checks podCIDR assignment, NotReady/Unknown marking, taints and
//! NoExecute eviction.
//!
//! Each test runs its own server (`fake_cluster`) with only the controllers
//! it exercises and short timings (`--node-monitor-grace-period 3s`,
//! `--default-toleration-seconds 2`).

mod fake_cluster;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use fake_cluster::{eventually, Server};

const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The current time as the API writes it.
fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Creates a fake Node that reports Ready, with a Lease.
async fn create_node(client: &kube::Client, name: &str) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": now_time()}],
        },
    }))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    renew_lease(client, name).await;
}

/// Plays the kubelet's heartbeat: creates or renews the node's Lease.
async fn renew_lease(client: &kube::Client, name: &str) {
    let api = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({"spec": {"renewTime": now}});
    if api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .is_ok()
    {
        return;
    }
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}}))
    .expect("lease");
    api.create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("create lease {name}: {e}"));
}

/// Renews the Leases of the nodes in the set every 300 ms until dropped.
struct Heartbeats {
    alive: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    fn start(client: &kube::Client, nodes: &[&str]) -> Heartbeats {
        let alive = Arc::new(Mutex::new(
            nodes.iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
        ));
        let (client, set) = (client.clone(), alive.clone());
        let task = tokio::spawn(async move {
            loop {
                let names: Vec<String> =
                    set.lock().expect("heartbeat set").iter().cloned().collect();
                for name in names {
                    renew_lease(&client, &name).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Heartbeats { alive, task }
    }

    fn stop(&self, node: &str) {
        self.alive.lock().expect("heartbeat set").remove(node);
    }

    fn resume(&self, node: &str) {
        self.alive
            .lock()
            .expect("heartbeat set")
            .insert(node.to_string());
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn node(client: &kube::Client, name: &str) -> Node {
    Api::<Node>::all(client.clone())
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get node {name}: {e}"))
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref()?.pod_cidr.clone()
}

fn taints(node: &Node) -> BTreeSet<(String, String)> {
    let list: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    list.into_iter().map(|t| (t.key, t.effect)).collect()
}

fn ready_condition(node: &Node) -> Option<(String, Option<String>, Option<String>)> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits for every listed node to have a podCIDR; returns them in order.
async fn cidrs_of(client: &kube::Client, names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        let cidr = eventually(&format!("a podCIDR on {name}"), || async {
            let n = node(client, name).await;
            let listed = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default();
            match pod_cidr(&n) {
                Some(c) if listed == vec![c.clone()] => Ok(c),
                other => Err(format!("podCIDR {other:?}, podCIDRs {listed:?}")),
            }
        })
        .await;
        out.push(cidr);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_released_on_delete() {
    // A /22 cut into /24s: room for exactly four nodes.
    let (mut server, client) = Server::start(
        &["nodeipam"],
        &[
            "--cluster-cidr",
            "10.250.0.0/22",
            "--node-cidr-mask-size",
            "24",
        ],
    )
    .await;
    for name in ["n1", "n2", "n3"] {
        create_node(&client, name).await;
    }
    let first = cidrs_of(&client, &["n1", "n2", "n3"]).await;

    // The allocation is rebuilt from the nodes after a restart.
    let client = server.restart().await;
    create_node(&client, "n4").await;
    let all = [first.clone(), cidrs_of(&client, &["n4"]).await].concat();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "every node gets its own podCIDR: {all:?}"
    );
    for cidr in &all {
        assert!(
            cidr.starts_with("10.250.") && cidr.ends_with("/24"),
            "{cidr} inside 10.250.0.0/22"
        );
    }

    // Exhausted: the fifth node waits with a CIDRNotAvailable event.
    create_node(&client, "n5").await;
    let events = Api::<Event>::namespaced(client.clone(), "default");
    eventually("a CIDRNotAvailable event on n5", || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("CIDRNotAvailable")
                && e.involved_object.name.as_deref() == Some("n5")
        });
        if found {
            Ok(())
        } else {
            Err(format!("{} events", list.items.len()))
        }
    })
    .await;
    assert_eq!(pod_cidr(&node(&client, "n5").await), None);

    // Deleting a node releases its CIDR; the waiting node gets it.
    Api::<Node>::all(client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete n2");
    let n5 = cidrs_of(&client, &["n5"]).await;
    assert_eq!(n5[0], first[1], "n5 takes the CIDR n2 released");
}

/// Creates a pod bound to `node` and plays its kubelet: Running, Ready, with an IP.
async fn run_pod(client: &kube::Client, name: &str, node: &str, tolerations: Value, ip: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "evict"}},
        "spec": {"nodeName": node, "tolerations": tolerations,
            "containers": [{"name": "app", "image": "registry.local/app:1"}]},
    }))
    .expect("pod");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("write status of pod {name}: {e}"));
}

/// True when the pod is gone or being deleted.
async fn evicted(client: &kube::Client, name: &str) -> bool {
    match Api::<Pod>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .expect("get pod")
    {
        None => true,
        Some(pod) => pod.metadata.deletion_timestamp.is_some(),
    }
}

fn pod_ready(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_tainted_and_its_pods_evicted() {
    let (_server, client) = Server::start(
        &["nodelifecycle"],
        &[
            "--node-monitor-grace-period",
            "3s",
            "--default-toleration-seconds",
            "2",
        ],
    )
    .await;
    for name in ["good", "bad"] {
        create_node(&client, name).await;
    }
    let heartbeats = Heartbeats::start(&client, &["good", "bad"]);
    // Defaults (2 s) are added by the API server to the pod without tolerations.
    run_pod(
        &client,
        "default-tolerations",
        "bad",
        json!([]),
        "10.244.9.1",
    )
    .await;
    let forever = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]);
    run_pod(&client, "tolerates-forever", "bad", forever, "10.244.9.2").await;
    let long = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]);
    run_pod(&client, "tolerates-long", "bad", long, "10.244.9.3").await;
    run_pod(&client, "on-good", "good", json!([]), "10.244.8.1").await;

    // Healthy nodes stay untouched beyond the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for name in ["good", "bad"] {
        let n = node(&client, name).await;
        assert_eq!(
            ready_condition(&n).map(|c| c.0).as_deref(),
            Some("True"),
            "{name} stays Ready"
        );
        assert!(
            taints(&n).is_empty(),
            "{name} has no taints: {:?}",
            taints(&n)
        );
    }

    heartbeats.stop("bad");
    let silent_since = Instant::now();
    let unreachable: BTreeSet<(String, String)> = [
        (UNREACHABLE.into(), "NoExecute".into()),
        (UNREACHABLE.into(), "NoSchedule".into()),
    ]
    .into();
    let bad = eventually(
        "bad to turn Unknown with the unreachable taints",
        || async {
            let n = node(&client, "bad").await;
            let ready = ready_condition(&n);
            match &ready {
                Some((status, _, _)) if status == "Unknown" && taints(&n) == unreachable => Ok(n),
                _ => Err(format!("Ready {ready:?}, taints {:?}", taints(&n))),
            }
        },
    )
    .await;
    // The last renewal may precede stop() by one heartbeat interval.
    assert!(
        silent_since.elapsed() >= Duration::from_secs(2),
        "not before the 3 s grace period (less the last heartbeat interval)"
    );
    let (_, reason, message) = ready_condition(&bad).expect("Ready condition");
    assert_eq!(reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );

    // Its pods stop being Ready; the one with default tolerations goes after 2 s.
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let marked = eventually("pods on bad to be marked not ready", || async {
        let p = pods
            .get("tolerates-forever")
            .await
            .map_err(|e| e.to_string())?;
        if pod_ready(&p).as_deref() == Some("False") {
            Ok(p)
        } else {
            Err(format!("{:?}", pod_ready(&p)))
        }
    })
    .await;
    // As upstream's MarkPodsNotReady: only Ready's status and transition
    // time change; its reason and the pod's other conditions stay.
    let conditions = marked.status.and_then(|s| s.conditions).unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t).cloned();
    let ready = condition("Ready").expect("a Ready condition");
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert!(ready.last_transition_time.is_some());
    assert_eq!(
        condition("PodScheduled").map(|c| c.status),
        Some("True".to_string())
    );
    eventually("the pod with default tolerations to be evicted", || async {
        if evicted(&client, "default-tolerations").await {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    assert!(
        !evicted(&client, "tolerates-forever").await,
        "a pod tolerating forever stays"
    );
    assert!(
        !evicted(&client, "tolerates-long").await,
        "a pod tolerating for an hour stays"
    );
    assert!(
        !evicted(&client, "on-good").await,
        "pods on healthy nodes stay"
    );
    let good = node(&client, "good").await;
    assert!(
        taints(&good).is_empty(),
        "good keeps no taints: {:?}",
        taints(&good)
    );

    // The kubelet comes back: Lease renewed, Ready posted; the taints go.
    heartbeats.resume("bad");
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": now_time()}]}});
    Api::<Node>::all(client.clone())
        .patch_status("bad", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("post Ready");
    eventually("bad's taints to go", || async {
        let t = taints(&node(&client, "bad").await);
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await;

    // A NoExecute taint of the user's evicts pods not tolerating it at once.
    let patch = json!({"spec": {"taints": [{"key": "skiff.test/drain", "value": "now", "effect": "NoExecute"}]}});
    Api::<Node>::all(client.clone())
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("taint good");
    eventually("the pod on good to be evicted", || async {
        if evicted(&client, "on-good").await {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    let t = taints(&node(&client, "good").await);
    assert_eq!(
        t,
        [("skiff.test/drain".to_string(), "NoExecute".to_string())].into(),
        "the user's taint is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_pods_are_recreated_on_a_healthy_node() {
    let (_server, client) = Server::start(
        &["nodelifecycle", "replicaset", "scheduler"],
        &[
            "--node-monitor-grace-period",
            "3s",
            "--default-toleration-seconds",
            "2",
        ],
    )
    .await;
    create_node(&client, "doomed").await;
    let heartbeats = Heartbeats::start(&client, &["doomed"]);
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}}},
    }))
    .expect("replicaset");
    Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let placement = || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map_err(|e| e.to_string())?;
        let live: Vec<Option<String>> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        Ok::<_, String>(live)
    };
    eventually("both replicas bound to doomed", || async {
        let live = placement().await?;
        let want = vec![Some("doomed".to_string()); 2];
        if live == want {
            Ok(())
        } else {
            Err(format!("{live:?}"))
        }
    })
    .await;

    // A second node joins, then the first one's kubelet goes silent.
    create_node(&client, "healthy").await;
    heartbeats.resume("healthy");
    heartbeats.stop("doomed");
    eventually("both replicas running on healthy", || async {
        let live = placement().await?;
        let want = vec![Some("healthy".to_string()); 2];
        if live == want {
            Ok(())
        } else {
            Err(format!("{live:?}"))
        }
    })
    .await;
    let old = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    let evicted: Vec<&Pod> = old
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .collect();
    assert_eq!(
        evicted.len(),
        2,
        "the pods on doomed are terminating, not lost"
    );
}
