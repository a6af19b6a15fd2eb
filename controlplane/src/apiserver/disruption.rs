//! PodDisruptionBudget arithmetic, as upstream's disruption controller does
//! it: which pods a budget covers, how many are healthy, how many it wants
//! healthy, and so how many disruptions it allows now; and the `status` that
//! records it (currentHealthy, desiredHealthy, expectedPods,
//! disruptionsAllowed, disruptedPods, observedGeneration and the
//! `DisruptionAllowed` condition).
//!
//! Pure functions on JSON objects: the eviction handler (eviction.rs) reads
//! the pods and controllers and writes the result; nothing here does I/O.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Map, Value};

use super::selector::LabelSelector;

/// How long a pod an eviction approved is counted as gone although it still
/// exists (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// The condition type upstream maintains on a budget.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

/// A budget's view of its pods at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Ready pods not being deleted and not just approved for eviction.
    pub current_healthy: i64,
    /// Pods the budget wants healthy.
    pub desired_healthy: i64,
    /// Pods the budget expects to exist (its controllers' scale, or the pods).
    pub expected_pods: i64,
    /// `current_healthy - desired_healthy`, never below 0.
    pub disruptions_allowed: i64,
    /// Pods approved for eviction that still exist, by name, with the approval time.
    pub disrupted_pods: Map<String, Value>,
}

/// True when the budget's selector selects the pod. As upstream's eviction
/// handler, a budget without a selector or with an empty one selects nothing.
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    let selector = &pdb["spec"]["selector"];
    let empty = selector.as_object().is_none_or(|s| {
        s.values()
            .all(|v| v.is_null() || v.as_object().is_some_and(Map::is_empty))
            && s.get("matchExpressions")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
    });
    if empty {
        return false;
    }
    LabelSelector::from_json(selector).is_ok_and(|s| s.matches_object(pod))
}

/// `IsPodReady`: the pod's Ready condition is True.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// True when the pod is being deleted.
pub fn is_terminating(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_string()
}

/// True when the spec needs the controllers' scale (a percentage, or maxUnavailable).
pub fn needs_scale(pdb: &Value) -> bool {
    let spec = &pdb["spec"];
    !spec["maxUnavailable"].is_null() || spec["minAvailable"].is_string()
}

/// `GetScaledValueFromIntOrPercent(value, total, roundUp=true)`.
pub fn scaled(value: &Value, total: i64) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("invalid value for IntOrString: {n}")),
        Value::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            // Round up: 50% of 3 is 2.
            Ok((percent * total + 99) / 100)
        }
        other => Err(format!("invalid value for IntOrString: {other}")),
    }
}

/// Computes the budget from the pods it selects (`pods`, already filtered),
/// the approvals recorded in its status, and `scale`, the sum of its pods'
/// controllers' replicas (asked only when the spec needs it; an error makes
/// the whole computation fail, as upstream's sync does).
pub fn compute(
    pdb: &Value,
    pods: &[Value],
    scale: impl FnOnce() -> Result<i64, String>,
    now: Timestamp,
) -> Result<Budget, String> {
    let spec = &pdb["spec"];
    let (expected_pods, desired_healthy) = if !spec["maxUnavailable"].is_null() {
        let expected = scale()?;
        let max_unavailable = scaled(&spec["maxUnavailable"], expected)?;
        (expected, (expected - max_unavailable).max(0))
    } else if spec["minAvailable"].is_string() {
        let expected = scale()?;
        (expected, scaled(&spec["minAvailable"], expected)?)
    } else if !spec["minAvailable"].is_null() {
        (pods.len() as i64, scaled(&spec["minAvailable"], 0)?)
    } else {
        (0, 0)
    };
    let disrupted_pods = still_disrupted(pdb, pods, now);
    let current_healthy = pods
        .iter()
        .filter(|p| !is_terminating(p) && is_ready(p))
        .filter(|p| !disrupted_pods.contains_key(name(p)))
        .count() as i64;
    let allowed = current_healthy - desired_healthy;
    let disruptions_allowed = if expected_pods <= 0 || allowed <= 0 {
        0
    } else {
        allowed
    };
    Ok(Budget {
        current_healthy,
        desired_healthy,
        expected_pods,
        disruptions_allowed,
        disrupted_pods,
    })
}

/// The recorded approvals that still hold: the pod exists, is not being
/// deleted yet and was approved less than [`DELETION_TIMEOUT`] ago.
fn still_disrupted(pdb: &Value, pods: &[Value], now: Timestamp) -> Map<String, Value> {
    let Some(recorded) = pdb["status"]["disruptedPods"].as_object() else {
        return Map::new();
    };
    let timeout = jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default();
    recorded
        .iter()
        .filter(|(pod_name, at)| {
            let pending = pods
                .iter()
                .any(|p| name(p) == pod_name.as_str() && !is_terminating(p));
            let fresh = at
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| t + timeout > now);
            pending && fresh
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Writes `budget` as the status of `pdb` (observedGeneration = generation).
pub fn set_status(pdb: &mut Value, budget: &Budget, now: Timestamp) {
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
    let old_conditions = pdb["status"]["conditions"].clone();
    let mut status = json!({
        "observedGeneration": generation,
        "currentHealthy": budget.current_healthy,
        "desiredHealthy": budget.desired_healthy,
        "expectedPods": budget.expected_pods,
        "disruptionsAllowed": budget.disruptions_allowed,
    });
    if !budget.disrupted_pods.is_empty() {
        status["disruptedPods"] = Value::Object(budget.disrupted_pods.clone());
    }
    let (state, reason) = if budget.disruptions_allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    status["conditions"] = json!([condition(
        &old_conditions,
        state,
        reason,
        "",
        generation,
        now
    )]);
    pdb["status"] = status;
}

/// Records a failed computation as upstream's fail-safe does: no disruption
/// allowed, condition False with reason `SyncFailed`.
pub fn set_failed(pdb: &mut Value, message: &str, now: Timestamp) {
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
    let old_conditions = pdb["status"]["conditions"].clone();
    let mut status = pdb["status"].as_object().cloned().unwrap_or_default();
    status.insert("observedGeneration".into(), json!(generation));
    status.insert("disruptionsAllowed".into(), json!(0));
    status.insert(
        "conditions".into(),
        json!([condition(
            &old_conditions,
            "False",
            "SyncFailed",
            message,
            generation,
            now
        )]),
    );
    for field in ["currentHealthy", "desiredHealthy", "expectedPods"] {
        status.entry(field).or_insert(json!(0));
    }
    pdb["status"] = Value::Object(status);
}

/// The `DisruptionAllowed` condition; its lastTransitionTime moves only when
/// the status does (`meta.SetStatusCondition`).
fn condition(
    old: &Value,
    state: &str,
    reason: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) -> Value {
    let previous = old
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == DISRUPTION_ALLOWED);
    let transition = match previous {
        Some(c) if c["status"] == state && c["lastTransitionTime"].is_string() => {
            c["lastTransitionTime"].clone()
        }
        _ => json!(rfc3339(now)),
    };
    json!({
        "type": DISRUPTION_ALLOWED,
        "status": state,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    })
}

/// Seconds-precision RFC 3339, as the API writes timestamps.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
#[path = "disruption/tests.rs"]
mod tests;
