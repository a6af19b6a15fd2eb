//! Pod and pod-template defaults: `SetDefaults_PodSpec`, `_Container`,
//! `_Probe`, `_Volume` and friends, plus what upstream only does for real Pods
//! (`SetDefaults_Pod` and the ServiceAccount and Priority admission plugins).
//! The initial status (phase, QoS class) is the create strategy's.

use serde_json::{json, Map, Value};

use super::{child, existing, items, or_insert, or_zero, str_of};

/// What owns the pod spec being defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A Pod object: gets the pod-only defaults too.
    Pod,
    /// The template of a Deployment, ReplicaSet, DaemonSet or StatefulSet.
    Workload,
    /// A Job's template: `restartPolicy` is left as the user wrote it.
    Job,
}

/// Defaults a whole Pod object.
pub(super) fn pod(obj: &mut Map<String, Value>) {
    let Some(spec) = child(obj, "spec") else {
        return;
    };
    pod_spec(spec, Owner::Pod);
    for key in ["containers", "initContainers"] {
        for container in items(spec, key) {
            requests_from_limits(container);
        }
    }
    or_insert(spec, "enableServiceLinks", json!(true));
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        for key in ["containers", "initContainers"] {
            for port in items(spec, key).flat_map(|c| items(c, "ports")) {
                if let Some(container_port) = port.get("containerPort").cloned() {
                    or_zero(port, "hostPort", container_port);
                }
            }
        }
    }
    if str_of(spec, "priorityClassName").is_empty() {
        or_insert(spec, "priority", json!(0));
    }
    or_zero(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// Defaults a pod spec, wherever it is embedded.
pub(super) fn pod_spec(spec: &mut Map<String, Value>, owner: Owner) {
    or_zero(spec, "dnsPolicy", json!("ClusterFirst"));
    if owner != Owner::Job {
        or_zero(spec, "restartPolicy", json!("Always"));
    }
    or_insert(spec, "securityContext", json!({}));
    or_insert(spec, "terminationGracePeriodSeconds", json!(30));
    or_zero(spec, "schedulerName", json!("default-scheduler"));
    service_account(spec, owner);
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for container in items(spec, key) {
            self::container(container);
        }
    }
    for volume in items(spec, "volumes") {
        self::volume(volume);
    }
}

/// `serviceAccount` is the deprecated alias of `serviceAccountName`; the v1
/// conversion keeps them equal. Pods get `default` from admission.
fn service_account(spec: &mut Map<String, Value>, owner: Owner) {
    if str_of(spec, "serviceAccountName").is_empty() {
        let deprecated = str_of(spec, "serviceAccount").to_string();
        if !deprecated.is_empty() {
            spec.insert("serviceAccountName".into(), json!(deprecated));
        } else if owner == Owner::Pod {
            spec.insert("serviceAccountName".into(), json!("default"));
        }
    }
    let name = str_of(spec, "serviceAccountName").to_string();
    if !name.is_empty() {
        spec.insert("serviceAccount".into(), json!(name));
    }
}

fn container(c: &mut Map<String, Value>) {
    let policy = if image_tag(str_of(c, "image")) == "latest" {
        "Always"
    } else {
        "IfNotPresent"
    };
    or_zero(c, "imagePullPolicy", json!(policy));
    or_zero(c, "terminationMessagePath", json!("/dev/termination-log"));
    or_zero(c, "terminationMessagePolicy", json!("File"));
    for port in items(c, "ports") {
        or_zero(port, "protocol", json!("TCP"));
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = existing(c, key) {
            or_zero(probe, "timeoutSeconds", json!(1));
            or_zero(probe, "periodSeconds", json!(10));
            or_zero(probe, "successThreshold", json!(1));
            or_zero(probe, "failureThreshold", json!(3));
            handler(probe);
        }
    }
    if let Some(lifecycle) = existing(c, "lifecycle") {
        for key in ["postStart", "preStop"] {
            if let Some(h) = existing(lifecycle, key) {
                handler(h);
            }
        }
    }
    for env in items(c, "env") {
        if let Some(field_ref) = existing(env, "valueFrom").and_then(|v| existing(v, "fieldRef")) {
            or_zero(field_ref, "apiVersion", json!("v1"));
        }
    }
}

/// Defaults of the action a probe or lifecycle hook runs.
fn handler(h: &mut Map<String, Value>) {
    if let Some(http) = existing(h, "httpGet") {
        or_zero(http, "path", json!("/"));
        or_zero(http, "scheme", json!("HTTP"));
    }
    if let Some(grpc) = existing(h, "grpc") {
        or_insert(grpc, "service", json!(""));
    }
}

/// The tag of an image reference as upstream's `parsers.ParseImageName`
/// sees it: `latest` when there is neither tag nor digest.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag,
        None if digest => "",
        None => "latest",
    }
}

/// A Pod's containers request what they limit unless told otherwise.
fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(resources) = existing(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if let Some(requests) = child(resources, "requests") {
        for (name, quantity) in limits {
            requests.entry(name).or_insert(quantity);
        }
    }
}

fn volume(v: &mut Map<String, Value>) {
    let has_source = v.iter().any(|(k, val)| k != "name" && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for key in ["configMap", "secret"] {
        if let Some(source) = existing(v, key) {
            or_insert(source, "defaultMode", json!(420));
        }
    }
    if let Some(source) = existing(v, "downwardAPI") {
        or_insert(source, "defaultMode", json!(420));
        downward_items(source);
    }
    if let Some(source) = existing(v, "projected") {
        or_insert(source, "defaultMode", json!(420));
        for projection in items(source, "sources") {
            if let Some(token) = existing(projection, "serviceAccountToken") {
                or_insert(token, "expirationSeconds", json!(3600));
            }
            if let Some(downward) = existing(projection, "downwardAPI") {
                downward_items(downward);
            }
        }
    }
    if let Some(source) = existing(v, "hostPath") {
        or_insert(source, "type", json!(""));
    }
    let claim_spec = existing(v, "ephemeral")
        .and_then(|e| existing(e, "volumeClaimTemplate"))
        .and_then(|t| existing(t, "spec"));
    if let Some(claim_spec) = claim_spec {
        or_insert(claim_spec, "volumeMode", json!("Filesystem"));
    }
}

fn downward_items(source: &mut Map<String, Value>) {
    for item in items(source, "items") {
        if let Some(field_ref) = existing(item, "fieldRef") {
            or_zero(field_ref, "apiVersion", json!("v1"));
        }
    }
}
