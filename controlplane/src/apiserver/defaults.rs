//! Server-side defaulting: the values upstream's `SetDefaults_*` functions
//! (k8s.io/kubernetes/pkg/apis/*/v1/defaults.go and the generated
//! zz_generated.defaults.go) and the registry strategies fill in, so that
//! what `kubectl get -o yaml` shows and what controllers read matches a real
//! cluster.
//!
//! Everything here works on `serde_json::Value` and is total: fields of an
//! unexpected JSON type are left alone for the codec or validation to report,
//! and nothing the user set is overwritten (the one upstream exception, the
//! `kubernetes.io/metadata.name` namespace label, is authoritative there too).

mod pod;
#[cfg(test)]
mod tests;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::registry::Resource;

/// Fills in upstream defaults for `resource` in `obj`, in place.
pub fn apply(resource: &Resource, obj: &mut Value) {
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    match resource.kind {
        "Pod" => pod::pod(obj),
        "Service" => service(obj),
        "Namespace" => namespace(obj),
        "Secret" => secret(obj),
        "Node" => node(obj),
        "Endpoints" => endpoints(obj),
        "EndpointSlice" => endpoint_slice(obj),
        "Deployment" => deployment(obj),
        "ReplicaSet" => replica_set(obj),
        "DaemonSet" => daemon_set(obj),
        "StatefulSet" => stateful_set(obj),
        "Job" => job(obj),
        "HorizontalPodAutoscaler" => hpa(obj, resource.version),
        _ => {}
    }
}

/// The object under `key`, created as `{}` when absent or null; `None` when
/// the field holds another JSON type.
fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// The object under `key` only when the user set one.
fn existing<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// The objects of the array under `key`; other elements and types are skipped.
fn items<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    map.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Sets a pointer-typed field (Go `*T`): only when absent or null.
fn or_insert(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Sets a value-typed field (Go `string`/`int32`): also when it holds the
/// zero value, which Go cannot tell apart from unset.
fn or_zero(map: &mut Map<String, Value>, key: &str, value: Value) {
    let zero = match map.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(_) => false,
    };
    if zero {
        map.insert(key.to_string(), value);
    }
}

fn str_of<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or("")
}

fn service(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    or_zero(spec, "sessionAffinity", json!("None"));
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !timeout {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    or_zero(spec, "type", json!("ClusterIP"));
    for port in items(spec, "ports") {
        or_zero(port, "protocol", json!("TCP"));
        if let Some(p) = port.get("port").filter(|p| p.is_number()).cloned() {
            or_zero(port, "targetPort", p);
        }
    }
    let ty = str_of(spec, "type").to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible =
        ty == "NodePort" || ty == "LoadBalancer" || (ty == "ClusterIP" && has_external_ips);
    if externally_accessible {
        or_zero(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        or_insert(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        or_insert(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if ty == "ExternalName" {
        return;
    }
    // The registry keeps clusterIP and clusterIPs[0] in sync (normalizeClusterIPs).
    let cluster_ip = str_of(spec, "clusterIP").to_string();
    let first_of_ips = spec
        .get("clusterIPs")
        .and_then(|ips| ips.get(0))
        .and_then(Value::as_str)
        .map(str::to_string);
    match first_of_ips {
        None if !cluster_ip.is_empty() => {
            or_insert(spec, "clusterIPs", json!([cluster_ip]));
        }
        Some(first) if cluster_ip.is_empty() => {
            spec.insert("clusterIP".into(), json!(first));
        }
        _ => {}
    }
    or_insert(spec, "ipFamilyPolicy", json!("SingleStack"));
    let cluster_ip = str_of(spec, "clusterIP");
    if let Ok(ip) = cluster_ip.parse::<std::net::IpAddr>() {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        or_insert(spec, "ipFamilies", json!([family]));
    }
}

fn namespace(obj: &mut Map<String, Value>) {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !name.is_empty() {
        if let Some(labels) = child(obj, "metadata").and_then(|m| child(m, "labels")) {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    if let Some(spec) = child(obj, "spec") {
        or_insert(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = child(obj, "status") {
        or_zero(status, "phase", json!("Active"));
    }
}

fn secret(obj: &mut Map<String, Value>) {
    or_zero(obj, "type", json!("Opaque"));
    // stringData is write-only: v1 conversion merges it into data, where it
    // wins over a key of the same name.
    let Some(Value::Object(string_data)) = obj.remove("stringData") else {
        return;
    };
    if let Some(data) = child(obj, "data") {
        for (key, value) in string_data {
            if let Value::String(s) = value {
                let encoded = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
                data.insert(key, Value::String(encoded));
            }
        }
    }
}

fn node(obj: &mut Map<String, Value>) {
    let Some(status) = existing(obj, "status") else {
        return;
    };
    if let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned() {
        or_insert(status, "allocatable", capacity);
    }
}

fn endpoints(obj: &mut Map<String, Value>) {
    for subset in items(obj, "subsets") {
        for port in items(subset, "ports") {
            or_zero(port, "protocol", json!("TCP"));
        }
    }
}

fn endpoint_slice(obj: &mut Map<String, Value>) {
    for port in items(obj, "ports") {
        or_insert(port, "name", json!(""));
        or_insert(port, "protocol", json!("TCP"));
    }
}

/// Defaults the pod template under `spec.template`, creating it like Go's
/// non-pointer struct would be.
fn template(spec: &mut Map<String, Value>) {
    if let Some(tpl) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod::pod_spec(tpl, pod::Owner::Workload);
    }
}

fn deployment(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    or_insert(spec, "replicas", json!(1));
    if let Some(strategy) = child(spec, "strategy") {
        or_zero(strategy, "type", json!("RollingUpdate"));
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(ru) = child(strategy, "rollingUpdate") {
                or_insert(ru, "maxUnavailable", json!("25%"));
                or_insert(ru, "maxSurge", json!("25%"));
            }
        }
    }
    or_insert(spec, "revisionHistoryLimit", json!(10));
    or_insert(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

fn replica_set(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    or_insert(spec, "replicas", json!(1));
    template(spec);
}

fn daemon_set(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    if let Some(strategy) = child(spec, "updateStrategy") {
        or_zero(strategy, "type", json!("RollingUpdate"));
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(ru) = child(strategy, "rollingUpdate") {
                or_insert(ru, "maxUnavailable", json!(1));
                or_insert(ru, "maxSurge", json!(0));
            }
        }
    }
    or_insert(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

fn stateful_set(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    or_zero(spec, "podManagementPolicy", json!("OrderedReady"));
    if let Some(strategy) = child(spec, "updateStrategy") {
        if str_of(strategy, "type").is_empty() {
            strategy.insert("type".into(), json!("RollingUpdate"));
            or_insert(strategy, "rollingUpdate", json!({}));
        }
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(ru) = existing(strategy, "rollingUpdate") {
                or_insert(ru, "partition", json!(0));
            }
        }
    }
    if let Some(policy) = child(spec, "persistentVolumeClaimRetentionPolicy") {
        or_zero(policy, "whenDeleted", json!("Retain"));
        or_zero(policy, "whenScaled", json!("Retain"));
    }
    or_insert(spec, "replicas", json!(1));
    or_insert(spec, "revisionHistoryLimit", json!(10));
    for claim in items(spec, "volumeClaimTemplates") {
        if let Some(claim_spec) = child(claim, "spec") {
            or_insert(claim_spec, "volumeMode", json!("Filesystem"));
        }
        if let Some(status) = child(claim, "status") {
            or_zero(status, "phase", json!("Pending"));
        }
    }
    template(spec);
}

fn job(obj: &mut Map<String, Value>) {
    let meta = obj.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let uid = meta.and_then(|m| m.get("uid")).and_then(Value::as_str);
    let (name, uid) = (
        name.unwrap_or("").to_string(),
        uid.unwrap_or("").to_string(),
    );
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    let unset = |spec: &Map<String, Value>, key: &str| spec.get(key).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    or_insert(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i32::MAX
    };
    or_insert(spec, "backoffLimit", json!(backoff));
    or_insert(spec, "completionMode", json!("NonIndexed"));
    or_insert(spec, "suspend", json!(false));
    let replacement = if unset(spec, "podFailurePolicy") {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    or_insert(spec, "podReplacementPolicy", json!(replacement));
    if let Some(tpl) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod::pod_spec(tpl, pod::Owner::Job);
    }
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    let template_labels_set = spec
        .get("template")
        .and_then(|t| t.pointer("/metadata/labels"))
        .is_some_and(Value::is_object);
    if !manual && !uid.is_empty() {
        generate_job_selector(spec, &name, &uid);
    }
    // Upstream aliases the template's label map when the Job has no labels,
    // so the Job ends up carrying the generated labels as well.
    let job_labels_empty = obj
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if template_labels_set && job_labels_empty {
        let labels = obj
            .get("spec")
            .and_then(|s| s.pointer("/template/metadata/labels"))
            .cloned();
        if let (Some(labels), Some(meta)) = (labels, child(obj, "metadata")) {
            meta.insert("labels".into(), labels);
        }
    }
}

/// The Job registry strategy's generateSelector: pods are selected by the
/// Job's uid, and carry its name for humans.
fn generate_job_selector(spec: &mut Map<String, Value>, name: &str, uid: &str) {
    let labels = child(spec, "template")
        .and_then(|t| child(t, "metadata"))
        .and_then(|m| child(m, "labels"));
    if let Some(labels) = labels {
        for key in ["job-name", "batch.kubernetes.io/job-name"] {
            or_insert(labels, key, json!(name));
        }
        for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
            or_insert(labels, key, json!(uid));
        }
    }
    if let Some(match_labels) = child(spec, "selector").and_then(|s| child(s, "matchLabels")) {
        or_insert(
            match_labels,
            "batch.kubernetes.io/controller-uid",
            json!(uid),
        );
    }
}

fn hpa(obj: &mut Map<String, Value>, version: &str) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    or_insert(spec, "minReplicas", json!(1));
    let no_metrics = match spec.get("metrics") {
        None | Some(Value::Null) => true,
        Some(Value::Array(metrics)) => metrics.is_empty(),
        Some(_) => false,
    };
    if version == "v2" && no_metrics {
        spec.insert(
            "metrics".into(),
            json!([{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
            }]),
        );
    }
}
