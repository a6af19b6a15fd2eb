//! The HorizontalPodAutoscaler controller (autoscaling/v2, CPU). Every
//! [`SYNC_PERIOD`] it reads each HPA's target through its `scale`
//! subresource, the CPU usage of the target's pods from `metrics.k8s.io`
//! PodMetrics (served from the node agents, see
//! `apiserver::metrics_api`) and their CPU requests, and sets the replicas
//! upstream's formula gives: `ceil(pods × utilization / target)`, left alone
//! within a 10 % tolerance, kept within min/max, and lowered only to the
//! highest recommendation of the last five minutes (upstream's default
//! scale-down stabilization). Other metric types are not evaluated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

use super::Context;
use crate::scheduler::quantity;

/// How often every HPA is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Usage within this fraction of the target changes nothing.
const TOLERANCE: f64 = 0.1;
/// Scale-down goes no lower than the highest recommendation in this window.
const DOWNSCALE_WINDOW: Duration = Duration::from_secs(300);
/// Target utilization when an HPA names no metric, as upstream.
const DEFAULT_UTILIZATION: i32 = 80;

/// Errors evaluating one HPA; it is evaluated again next period.
#[derive(Debug, thiserror::Error)]
pub enum HpaError {
    /// The scale target cannot be read (missing, or not scalable).
    #[error("cannot read the scale of {target}: {source}")]
    Scale {
        /// kind/name of the target.
        target: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The target's pods cannot be listed.
    #[error("cannot list the pods of {target}: {source}")]
    Pods {
        /// kind/name of the target.
        target: String,
        /// What the API said.
        source: kube::Error,
    },
    /// PodMetrics cannot be read.
    #[error(
        "cannot read pod metrics (metrics.k8s.io) in {namespace}; are the node agents up? {source}"
    )]
    Metrics {
        /// The namespace.
        namespace: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Writing the scale or the status failed.
    #[error("cannot update {what}: {source}")]
    Write {
        /// What was written.
        what: String,
        /// What the API said.
        source: kube::Error,
    },
}

/// The CPU utilization target (percent of requests) of an HPA.
fn cpu_target(spec: &HorizontalPodAutoscalerSpec) -> Option<i32> {
    let metrics = spec.metrics.as_deref().unwrap_or_default();
    if metrics.is_empty() {
        return Some(DEFAULT_UTILIZATION);
    }
    metrics.iter().find_map(|m| {
        let r = m.resource.as_ref().filter(|_| m.type_ == "Resource")?;
        (r.name == "cpu").then_some(())?;
        r.target.average_utilization
    })
}

/// Replicas and current utilization for pods with `(usage, request)` in
/// millicores, `current` replicas and a `target` utilization in percent.
pub fn recommend(current: i32, pods: &[(i64, i64)], target: i32) -> Option<(i32, i32)> {
    let usage: i64 = pods.iter().map(|p| p.0).sum();
    let requests: i64 = pods.iter().map(|p| p.1).sum();
    if pods.is_empty() || requests <= 0 || target <= 0 {
        return None;
    }
    let utilization = usage as f64 * 100.0 / requests as f64;
    let ratio = utilization / f64::from(target);
    let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * pods.len() as f64).ceil() as i32
    };
    Some((replicas, utilization.round() as i32))
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<HorizontalPodAutoscaler> = Api::all(ctx.client.clone());
    let mut history: HashMap<String, Vec<(Instant, i32)>> = HashMap::new();
    loop {
        tokio::time::sleep(SYNC_PERIOD).await;
        let hpas = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!("hpa: cannot list HorizontalPodAutoscalers: {e}");
                continue;
            }
        };
        let keys: Vec<String> = hpas
            .iter()
            .map(|h| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any()))
            .collect();
        history.retain(|k, _| keys.contains(k));
        for (hpa, key) in hpas.iter().zip(keys) {
            let recommendations = history.entry(key.clone()).or_default();
            if let Err(e) = sync(&ctx.client, hpa, recommendations).await {
                tracing::warn!("hpa {key}: {e}");
            }
        }
    }
}

/// Millicores of a quantity, 0 when unreadable.
fn millis(q: &str) -> i64 {
    quantity::milli_value(q).unwrap_or(0)
}

/// `(usage, request)` in millicores of every running pod that has both.
async fn pod_usage(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    target: &str,
) -> Result<Vec<(i64, i64)>, HpaError> {
    let lp = ListParams::default().labels(selector);
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(|source| HpaError::Pods {
            target: target.to_string(),
            source,
        })?;
    let gvk = GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "pods");
    let metrics = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .list(&lp)
        .await
        .map_err(|source| HpaError::Metrics {
            namespace: ns.to_string(),
            source,
        })?;
    let usage: HashMap<String, i64> = metrics
        .items
        .iter()
        .map(|m| {
            let cpu = m.data["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["usage"]["cpu"].as_str())
                .map(millis)
                .sum();
            (m.name_any(), cpu)
        })
        .collect();
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let requests: i64 = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
                .map(|q| millis(&q.0))
                .sum();
            Some((*usage.get(&p.name_any())?, requests))
        })
        .collect())
}

/// Evaluates one HPA and scales its target.
async fn sync(
    client: &kube::Client,
    hpa: &HorizontalPodAutoscaler,
    history: &mut Vec<(Instant, i32)>,
) -> Result<(), HpaError> {
    let ns = hpa.namespace().unwrap_or_default();
    let spec = &hpa.spec;
    let target_ref = &spec.scale_target_ref;
    let target = format!("{}/{}", target_ref.kind, target_ref.name);
    let gv = target_ref.api_version.as_deref().unwrap_or("apps/v1");
    let (group, version) = gv.split_once('/').unwrap_or(("", gv));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &target_ref.kind));
    let targets = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    let scale = targets
        .get_scale(&target_ref.name)
        .await
        .map_err(|source| HpaError::Scale {
            target: target.clone(),
            source,
        })?;
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    // Scaled to zero by hand: autoscaling is off until someone scales it up.
    if current == 0 {
        return Ok(());
    }
    let min = spec.min_replicas.unwrap_or(1).max(1);
    let max = spec.max_replicas.max(min);
    let pods = pod_usage(client, &ns, &selector, &target).await?;
    let Some(target_pct) = cpu_target(spec) else {
        return Ok(());
    };
    let Some((raw, utilization)) = recommend(current, &pods, target_pct) else {
        return Ok(());
    };
    let now = Instant::now();
    history.retain(|(t, _)| now.duration_since(*t) < DOWNSCALE_WINDOW);
    history.push((now, raw.clamp(min, max)));
    let stabilized = history.iter().map(|(_, r)| *r).max().unwrap_or(raw);
    let desired = if raw < current {
        stabilized.min(current)
    } else {
        raw
    }
    .clamp(min, max);
    let name = hpa.name_any();
    let mut status = json!({
        "currentReplicas": current,
        "desiredReplicas": desired,
        "currentMetrics": [{
            "type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": utilization}},
        }],
    });
    let old = serde_json::to_value(&hpa.status).unwrap_or_default();
    let unchanged = ["currentReplicas", "desiredReplicas", "currentMetrics"]
        .iter()
        .all(|k| old[k] == status[k]);
    if desired == current && unchanged {
        return Ok(());
    }
    if desired != current {
        tracing::info!(
            "hpa {ns}/{name}: {target} {current} -> {desired} replicas (cpu {utilization}% of requests, target {target_pct}%)"
        );
        targets
            .patch_scale(
                &target_ref.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": desired}})),
            )
            .await
            .map_err(|source| HpaError::Write {
                what: format!("the scale of {target}"),
                source,
            })?;
        status["lastScaleTime"] = jiff::Timestamp::now().to_string().into();
    }
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(|source| HpaError::Write {
            what: format!("the status of hpa {ns}/{name}"),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_by_the_utilization_ratio_outside_the_tolerance() {
        // Two pods at 90 % of 100m against a 50 % target: ceil(2 × 1.8) = 4.
        assert_eq!(recommend(2, &[(90, 100), (90, 100)], 50), Some((4, 90)));
        // 53 % against 50 %: within 10 %, unchanged.
        assert_eq!(recommend(3, &[(53, 100)], 50), Some((3, 53)));
        // Idle pods: down to ceil(3 × 0.1) = 1.
        assert_eq!(recommend(3, &[(5, 100); 3], 50), Some((1, 5)));
        // No requests or no metrics: no recommendation.
        assert_eq!(recommend(2, &[(90, 0)], 50), None);
        assert_eq!(recommend(2, &[], 50), None);
    }

    #[test]
    fn reads_the_cpu_target_and_upstreams_default() {
        let spec: HorizontalPodAutoscalerSpec = serde_json::from_value(json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        }))
        .unwrap();
        assert_eq!(cpu_target(&spec), Some(50));
        let bare: HorizontalPodAutoscalerSpec = serde_json::from_value(json!({
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
        }))
        .unwrap();
        assert_eq!(cpu_target(&bare), Some(DEFAULT_UTILIZATION));
        assert_eq!(millis("250000000n"), 250);
        assert_eq!(millis("1"), 1000);
    }
}
