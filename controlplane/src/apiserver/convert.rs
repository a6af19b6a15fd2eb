//! Conversion between served versions of one stored kind. Only the
//! HorizontalPodAutoscaler has two: autoscaling/v2 (storage) and
//! autoscaling/v1, whose single `targetCPUUtilizationPercentage` is a
//! Resource `cpu` Utilization metric in v2.
//!
//! As upstream, v2-only data that v1 has no field for travels in annotations
//! on the v1 object (`autoscaling.alpha.kubernetes.io/conditions` and
//! `.../behavior`), so a v1 read-modify-write keeps it. Metrics other than the
//! CPU utilization target are not carried to v1. Inputs of unexpected shape
//! are converted as far as they go and never cause a panic.

use serde_json::{json, Map, Value};

const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Converts an autoscaling/v1 HorizontalPodAutoscaler to autoscaling/v2.
pub fn hpa_v1_to_v2(v1: Value) -> Value {
    let Value::Object(mut obj) = v1 else {
        return v1;
    };
    obj.insert("apiVersion".into(), json!("autoscaling/v2"));
    obj.insert("kind".into(), json!("HorizontalPodAutoscaler"));
    let conditions = take_annotation(&mut obj, CONDITIONS_ANNOTATION);
    let behavior = take_annotation(&mut obj, BEHAVIOR_ANNOTATION);
    if let Some(Value::Object(spec)) = obj.get_mut("spec") {
        let target = spec.remove("targetCPUUtilizationPercentage");
        if let Some(target) = target.filter(|t| !t.is_null()) {
            spec.insert(
                "metrics".into(),
                json!([{
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}
                }]),
            );
        }
        if let Some(behavior) = behavior.filter(Value::is_object) {
            spec.insert("behavior".into(), behavior);
        }
    }
    if let Some(Value::Object(status)) = obj.get_mut("status") {
        let current = status.remove("currentCPUUtilizationPercentage");
        if let Some(current) = current.filter(|c| !c.is_null()) {
            status.insert(
                "currentMetrics".into(),
                json!([{
                    "type": "Resource",
                    "resource": {"name": "cpu", "current": {"averageUtilization": current}}
                }]),
            );
        }
        if let Some(conditions) = conditions.filter(Value::is_array) {
            status.insert("conditions".into(), conditions);
        }
    }
    Value::Object(obj)
}

/// Converts an autoscaling/v2 HorizontalPodAutoscaler to autoscaling/v1.
pub fn hpa_v2_to_v1(v2: Value) -> Value {
    let Value::Object(mut obj) = v2 else {
        return v2;
    };
    obj.insert("apiVersion".into(), json!("autoscaling/v1"));
    obj.insert("kind".into(), json!("HorizontalPodAutoscaler"));
    let mut annotations = Vec::new();
    if let Some(Value::Object(spec)) = obj.get_mut("spec") {
        let metrics = spec.remove("metrics");
        let target = metrics
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|m| is_cpu_resource(m))
            .find_map(|m| {
                m.pointer("/resource/target/averageUtilization")
                    .filter(|u| !u.is_null())
            });
        if let Some(target) = target {
            spec.insert("targetCPUUtilizationPercentage".into(), target.clone());
        }
        if let Some(behavior) = spec.remove("behavior").filter(|b| !b.is_null()) {
            annotations.push((BEHAVIOR_ANNOTATION, behavior.to_string()));
        }
    }
    if let Some(Value::Object(status)) = obj.get_mut("status") {
        let metrics = status.remove("currentMetrics");
        let current = metrics
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|m| is_cpu_resource(m))
            .find_map(|m| {
                m.pointer("/resource/current/averageUtilization")
                    .filter(|u| !u.is_null())
            });
        if let Some(current) = current {
            status.insert("currentCPUUtilizationPercentage".into(), current.clone());
        }
        let conditions = status.remove("conditions");
        if let Some(conditions) = conditions.filter(|c| c.as_array().is_some_and(|c| !c.is_empty()))
        {
            annotations.push((CONDITIONS_ANNOTATION, conditions.to_string()));
        }
        // Both counts are plain (non-optional) integers in v1.
        for key in ["currentReplicas", "desiredReplicas"] {
            if status.get(key).is_none_or(Value::is_null) {
                status.insert(key.into(), json!(0));
            }
        }
    }
    if !annotations.is_empty() {
        if let Some(map) = annotations_mut(&mut obj) {
            for (key, value) in annotations {
                map.insert(key.into(), Value::String(value));
            }
        }
    }
    Value::Object(obj)
}

fn is_cpu_resource(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
}

/// `metadata.annotations`, created when missing; `None` if either has the wrong type.
fn annotations_mut(obj: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    let annotations = meta
        .as_object_mut()?
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    annotations.as_object_mut()
}

/// Removes an annotation and parses its JSON value; drops the annotations
/// map if that leaves it empty.
fn take_annotation(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    let annotations = meta.get_mut("annotations")?.as_object_mut()?;
    let raw = annotations.remove(key)?;
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    serde_json::from_str(raw.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::find;

    fn v1_hpa() -> Value {
        json!({
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "targetCPUUtilizationPercentage": 70
            },
            "status": {
                "currentReplicas": 3,
                "desiredReplicas": 4,
                "currentCPUUtilizationPercentage": 91,
                "lastScaleTime": "2025-01-02T03:04:05Z"
            }
        })
    }

    #[test]
    fn v1_target_becomes_a_cpu_utilization_metric() {
        let v2 = hpa_v1_to_v2(v1_hpa());
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70}}}])
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(v2["spec"]["minReplicas"], 2);
        assert_eq!(
            v2["status"]["currentMetrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 91}}}])
        );
        assert!(v2["status"]
            .get("currentCPUUtilizationPercentage")
            .is_none());
    }

    #[test]
    fn converted_objects_decode_as_their_version() {
        let v2_res = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        let v1_res = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = hpa_v1_to_v2(v1_hpa());
        assert_eq!((v2_res.codec)(v2.clone()).unwrap(), v2);
        let v1 = hpa_v2_to_v1(v2);
        assert_eq!((v1_res.codec)(v1.clone()).unwrap(), v1);
    }

    #[test]
    fn v1_round_trips_through_v2() {
        assert_eq!(hpa_v2_to_v1(hpa_v1_to_v2(v1_hpa())), v1_hpa());
        let bare = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"}, "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "x"}}});
        assert_eq!(hpa_v2_to_v1(hpa_v1_to_v2(bare.clone())), bare);
    }

    #[test]
    fn v2_round_trips_through_v1_with_conditions_and_behavior() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 2,
                "desiredReplicas": 2,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": 40}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale",
                    "lastTransitionTime": "2025-01-02T03:04:05Z"}]
            }
        });
        let v1 = hpa_v2_to_v1(v2.clone());
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 40);
        assert!(v1["spec"].get("behavior").is_none());
        assert!(v1["metadata"]["annotations"][CONDITIONS_ANNOTATION].is_string());
        assert_eq!(hpa_v1_to_v2(v1), v2);
    }

    #[test]
    fn only_cpu_utilization_reaches_v1() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "q"}, "spec": {"maxReplicas": 4, "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 60}}},
                {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "30"}}}
            ]}, "status": {}});
        let v1 = hpa_v2_to_v1(v2);
        assert_eq!(v1["spec"], json!({"maxReplicas": 4}));
        assert_eq!(
            v1["status"],
            json!({"currentReplicas": 0, "desiredReplicas": 0})
        );
    }

    #[test]
    fn malformed_input_does_not_panic() {
        for junk in [
            json!(null),
            json!(7),
            json!({"spec": 1, "status": "x", "metadata": []}),
            json!({"metadata": {"annotations": {CONDITIONS_ANNOTATION: "{not json", BEHAVIOR_ANNOTATION: 5}},
                   "spec": {"metrics": {"a": 1}, "targetCPUUtilizationPercentage": "x"},
                   "status": {"currentMetrics": [null, 1, {"type": "Resource"}], "conditions": 3}}),
            json!({"metadata": null, "spec": {"behavior": {"a": 1}}}),
        ] {
            let _ = hpa_v1_to_v2(junk.clone());
            let _ = hpa_v2_to_v1(junk);
        }
    }
}
