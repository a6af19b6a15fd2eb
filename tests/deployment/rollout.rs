//! Rolling updates observed step by step, the kubectl rollout commands,
//! proportional scaling in the middle of a rollout, and the progress
//! deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::cluster::{is_ready, wait_for, Cluster, TIMEOUT};
use crate::{annotation, deployment, hash_of, image_of_set, rolling, wait_deployment};

/// Pods, ReplicaSets and the Deployment at one moment.
struct Snapshot {
    pods: Vec<Pod>,
    sets: Vec<ReplicaSet>,
    deployment: Deployment,
}

impl Snapshot {
    async fn take(c: &Cluster, app: &str) -> Snapshot {
        let selector = format!("app={app}");
        Snapshot {
            pods: c.active_pods(&selector).await,
            sets: c.replica_sets(&selector).await,
            deployment: c.deployments().get(app).await.expect("the deployment"),
        }
    }

    fn ready(&self) -> usize {
        self.pods.iter().filter(|p| is_ready(p)).count()
    }

    fn pods_of(&self, rs: &ReplicaSet) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| hash_of(&p.metadata) == hash_of(&rs.metadata))
            .collect()
    }

    fn set_with_image(&self, image: &str) -> Option<&ReplicaSet> {
        self.sets.iter().find(|rs| image_of_set(rs) == image)
    }

    /// Everything agrees: pods match each ReplicaSet's spec and status, and
    /// the Deployment's status matches the ReplicaSets for its generation.
    fn consistent(&self) -> bool {
        let sets_agree = self.sets.iter().all(|rs| {
            let pods = self.pods_of(rs);
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            let status = rs.status.clone().unwrap_or_default();
            usize::try_from(rs.spec.replicas.unwrap_or(0)).ok() == Some(pods.len())
                && usize::try_from(status.replicas).ok() == Some(pods.len())
                && status
                    .available_replicas
                    .and_then(|a| usize::try_from(a).ok())
                    .unwrap_or(0)
                    == ready
                && status.observed_generation == rs.metadata.generation
        });
        let d = &self.deployment;
        let s = d.status.clone().unwrap_or_default();
        let total: i32 = self
            .sets
            .iter()
            .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
            .sum();
        let available: i32 = self
            .sets
            .iter()
            .map(|rs| {
                rs.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
            })
            .sum();
        sets_agree
            && s.observed_generation == d.metadata.generation
            && s.replicas.unwrap_or(0) == total
            && s.available_replicas.unwrap_or(0) == available
    }

    /// What the test compares between polls and prints on failure.
    fn summary(&self) -> String {
        let sets: Vec<String> = self
            .sets
            .iter()
            .map(|rs| {
                let pods = self.pods_of(rs);
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                format!(
                    "{}({}): spec {:?}, pods {}, ready {ready}",
                    image_of_set(rs),
                    hash_of(&rs.metadata).unwrap_or_default(),
                    rs.spec.replicas,
                    pods.len()
                )
            })
            .collect();
        let s = self.deployment.status.clone().unwrap_or_default();
        format!(
            "[{}] deployment gen {:?} observed {:?} replicas {:?} updated {:?} available {:?}",
            sets.join("; "),
            self.deployment.metadata.generation,
            s.observed_generation,
            s.replicas,
            s.updated_replicas,
            s.available_replicas
        )
    }
}

/// Waits until the controllers are idle (a consistent state unchanged over
/// three polls), calling `check` on every state seen on the way.
async fn settle(c: &Cluster, app: &str, check: impl Fn(&Snapshot)) -> Snapshot {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = String::new();
    let mut same = 0;
    loop {
        let snap = Snapshot::take(c, app).await;
        check(&snap);
        let summary = snap.summary();
        same = if snap.consistent() && summary == last {
            same + 1
        } else {
            0
        };
        if same >= 2 {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "controllers did not settle within {TIMEOUT:?}: {summary}"
        );
        last = summary;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A rolling update of 4 replicas with maxSurge 1 / maxUnavailable 1 that
/// advances only as the test marks new pods ready, then undo, restart,
/// pause/resume with kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_and_rollout_commands() {
    let c = Cluster::start().await;
    c.apply(&deployment(
        "web",
        4,
        "registry.local/web:1",
        rolling(1, 1),
        json!({}),
    ))
    .await;
    for pod in settle(&c, "web", |_| {}).await.pods {
        c.mark_ready(pod.metadata.name.as_deref().unwrap_or_default())
            .await;
    }
    wait_deployment(&c, "web", 4).await;

    let patch = json!({
        "metadata": {"annotations": {"kubernetes.io/change-cause": "image 2"}},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.local/web:2"}]}}},
    });
    c.kubectl_ok(&["patch", "deployment/web", "-p", &patch.to_string()])
        .await;
    let bounds = |s: &Snapshot| {
        assert!(
            s.pods.len() <= 5,
            "more than replicas + maxSurge pods: {}",
            s.summary()
        );
        assert!(
            s.ready() >= 3,
            "fewer than replicas - maxUnavailable ready pods: {}",
            s.summary()
        );
    };
    let mut flips = 0;
    loop {
        let snap = settle(&c, "web", bounds).await;
        let new = snap
            .set_with_image("registry.local/web:2")
            .expect("the new replica set exists once settled");
        let status = snap.deployment.status.clone().unwrap_or_default();
        if status.updated_replicas == Some(4)
            && status.available_replicas == Some(4)
            && snap.pods.len() == 4
        {
            break;
        }
        let waiting: Vec<&Pod> = snap
            .pods_of(new)
            .into_iter()
            .filter(|p| !is_ready(p))
            .collect();
        let pod = waiting.first().unwrap_or_else(|| {
            panic!(
                "the rollout stalled with every new pod ready: {}",
                snap.summary()
            )
        });
        c.mark_ready(pod.metadata.name.as_deref().unwrap_or_default())
            .await;
        flips += 1;
        assert!(
            flips <= 4,
            "more than 4 new pods were needed: {}",
            snap.summary()
        );
    }
    assert_eq!(flips, 4, "each new pod is made ready once");
    let out = c
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    let history = c
        .kubectl_ok(&["rollout", "history", "deployment/web"])
        .await;
    let rows: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.iter().any(|r| r.first() == Some(&"1")), "{history}");
    assert!(
        rows.iter()
            .any(|r| r.first() == Some(&"2") && r[1..].join(" ") == "image 2"),
        "{history}"
    );
    let two = c
        .kubectl_ok(&["rollout", "history", "deployment/web", "--revision=2"])
        .await;
    assert!(two.contains("registry.local/web:2"), "{two}");

    let _kubelet = c.kubelet();
    let out = c.kubectl_ok(&["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    let d = wait_deployment(&c, "web", 4).await;
    let snap = settle(&c, "web", |_| {}).await;
    assert_eq!(
        snap.sets.len(),
        2,
        "undo reuses the old replica set: {}",
        snap.summary()
    );
    let back = snap
        .set_with_image("registry.local/web:1")
        .expect("the first replica set");
    assert_eq!(back.spec.replicas, Some(4), "{}", snap.summary());
    assert_eq!(
        annotation(&back.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("3")
    );
    assert_eq!(
        annotation(&back.metadata, "deployment.kubernetes.io/revision-history").as_deref(),
        Some("1")
    );
    assert_eq!(
        annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("3")
    );
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;

    c.kubectl_ok(&["rollout", "restart", "deployment/web"])
        .await;
    wait_deployment(&c, "web", 4).await;
    let snap = settle(&c, "web", |_| {}).await;
    assert_eq!(
        snap.sets.len(),
        3,
        "restart creates a replica set: {}",
        snap.summary()
    );
    let restarted = snap
        .sets
        .iter()
        .find(|rs| rs.spec.replicas == Some(4))
        .expect("the active replica set");
    let template_meta = restarted
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    assert!(annotation(&template_meta, "kubectl.kubernetes.io/restartedAt").is_some());
    assert_eq!(
        annotation(&restarted.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("4")
    );

    c.kubectl_ok(&["rollout", "pause", "deployment/web"]).await;
    c.kubectl_ok(&["set", "image", "deployment/web", "web=registry.local/web:3"])
        .await;
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=6"])
        .await;
    let paused = wait_for("the paused deployment scaled without a rollout", || async {
        let snap = Snapshot::take(&c, "web").await;
        let progressing = snap
            .deployment
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| {
                c.type_.as_deref() == Some("Progressing")
                    && c.reason.as_deref() == Some("DeploymentPaused")
            });
        let scaled = snap.sets.iter().any(|rs| rs.spec.replicas == Some(6)) && snap.pods.len() == 6;
        if progressing && scaled && snap.consistent() {
            Ok(snap)
        } else {
            Err(snap.summary())
        }
    })
    .await;
    assert!(
        paused.set_with_image("registry.local/web:3").is_none(),
        "a paused deployment rolled out: {}",
        paused.summary()
    );
    c.kubectl_ok(&["rollout", "resume", "deployment/web"]).await;
    let d = wait_deployment(&c, "web", 6).await;
    let snap = settle(&c, "web", |_| {}).await;
    let current = snap
        .set_with_image("registry.local/web:3")
        .expect("resume rolled out the new template");
    assert_eq!(current.spec.replicas, Some(6));
    let progressing = d
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_.as_deref() == Some("Progressing"));
    assert_eq!(
        progressing.and_then(|c| c.reason.clone()).as_deref(),
        Some("NewReplicaSetAvailable")
    );
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
}

/// Scaling a Deployment in the middle of a rollout splits the change over
/// its ReplicaSets by size; a rollout that stops progressing is marked
/// ProgressDeadlineExceeded and `kubectl rollout status` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proportional_scaling_and_progress_deadline() {
    let c = Cluster::start().await;
    let extra = json!({"progressDeadlineSeconds": 5});
    c.apply(&deployment(
        "big",
        10,
        "registry.local/big:1",
        rolling(3, 2),
        extra,
    ))
    .await;
    for pod in settle(&c, "big", |_| {}).await.pods {
        c.mark_ready(pod.metadata.name.as_deref().unwrap_or_default())
            .await;
    }
    wait_deployment(&c, "big", 10).await;

    // New pods never become ready: the rollout stops at 8 old + 5 new
    // (13 = 10 + maxSurge, with 8 = 10 - maxUnavailable available).
    c.kubectl_ok(&["set", "image", "deployment/big", "web=registry.local/big:2"])
        .await;
    let sizes = |s: &Snapshot| {
        let old = s
            .set_with_image("registry.local/big:1")
            .and_then(|rs| rs.spec.replicas);
        let new = s
            .set_with_image("registry.local/big:2")
            .and_then(|rs| rs.spec.replicas);
        (old, new)
    };
    let snap = settle(&c, "big", |_| {}).await;
    assert_eq!(sizes(&snap), (Some(8), Some(5)), "{}", snap.summary());

    // 15 replicas + 3 surge = 18: the 5 extra pods are split 8:5 -> +3 / +2.
    c.kubectl_ok(&["scale", "deployment/big", "--replicas=15"])
        .await;
    let snap = settle(&c, "big", |_| {}).await;
    assert_eq!(sizes(&snap), (Some(11), Some(7)), "{}", snap.summary());
    assert_eq!(snap.pods.len(), 18);

    wait_for("ProgressDeadlineExceeded", || async {
        let d = c
            .deployments()
            .get("big")
            .await
            .map_err(|e| e.to_string())?;
        let progressing = d
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_.as_deref() == Some("Progressing"))
            .cloned();
        match progressing {
            Some(p)
                if p.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    && p.status.as_deref() == Some("False") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = c
        .kubectl(&["rollout", "status", "deployment/big", "--timeout=30s"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
}
