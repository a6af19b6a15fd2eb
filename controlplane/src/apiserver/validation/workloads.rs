//! Workload validation: Deployment, ReplicaSet, DaemonSet, StatefulSet and
//! Job specs (selector, template, strategies, counts), their update rules,
//! and the HorizontalPodAutoscaler spec (both served versions).

use serde_json::{Map, Value};

use super::meta::{labels, template_meta};
use super::names::{label_value, path_segment_name, qualified_name};
use super::pod::{pod_spec, Owner};
use super::{arr_at, at, idx, int_at, obj_at, same, str_at, Errors, FieldError};

const NON_NEGATIVE: &str = "must be greater than or equal to 0";
const MISMATCH: &str = "`selector` does not match template `labels`";

/// Validates the spec of a Deployment, ReplicaSet, DaemonSet, StatefulSet or Job.
pub(super) fn workload(kind: &str, spec: &Value, errs: &mut Errors) {
    let mut counts = vec!["minReadySeconds"];
    match kind {
        "Deployment" => counts.extend([
            "replicas",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ]),
        "ReplicaSet" => counts.push("replicas"),
        "DaemonSet" => counts.push("revisionHistoryLimit"),
        "StatefulSet" => counts.extend(["replicas", "revisionHistoryLimit"]),
        _ => {
            counts = vec![
                "parallelism",
                "completions",
                "backoffLimit",
                "activeDeadlineSeconds",
                "ttlSecondsAfterFinished",
            ]
        }
    }
    for field in counts {
        if let Some(n) = int_at(spec, field).filter(|n| *n < 0) {
            errs.push(FieldError::invalid(
                at("spec", field),
                &n.into(),
                NON_NEGATIVE,
            ));
        }
    }
    selector_and_template(kind, spec, errs);
    let restart = str_at(&spec["template"]["spec"], "restartPolicy");
    let restart_path = "spec.template.spec.restartPolicy";
    match kind {
        "Job" => {
            if restart != "OnFailure" && restart != "Never" {
                // A missing policy would have been defaulted to Always upstream.
                let shown = if restart.is_empty() {
                    "Always"
                } else {
                    restart
                };
                errs.push(FieldError::not_supported(
                    restart_path,
                    &shown.into(),
                    &["OnFailure", "Never"],
                ));
            }
            job(spec, errs);
        }
        _ if !restart.is_empty() && restart != "Always" => {
            errs.push(FieldError::not_supported(
                restart_path,
                &restart.into(),
                &["Always"],
            ));
        }
        _ => {}
    }
    match kind {
        "Deployment" => deployment(spec, errs),
        "DaemonSet" => daemon_set(spec, errs),
        "StatefulSet" => stateful_set(spec, errs),
        _ => {}
    }
    if matches!(kind, "Deployment" | "ReplicaSet")
        && spec["template"]["spec"]
            .get("activeDeadlineSeconds")
            .is_some()
    {
        let msg = "activeDeadlineSeconds in ReplicaSet is not Supported";
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            msg,
        ));
    }
}

fn selector_and_template(kind: &str, spec: &Value, errs: &mut Errors) {
    let template = &spec["template"];
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    match spec.get("selector").filter(|s| !s.is_null()) {
        // A Job's selector is generated from its uid unless manualSelector is set.
        None if kind == "Job" && !manual => {}
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(selector) => {
            let valid = label_selector(selector, "spec.selector", errs);
            let empty = obj_at(selector, "matchLabels").is_none_or(Map::is_empty)
                && arr_at(selector, "matchExpressions").is_empty();
            if empty && kind != "Job" {
                let of = match kind {
                    "DaemonSet" => "daemonset",
                    "StatefulSet" => "statefulset",
                    _ => "deployment",
                };
                let msg = format!("empty selector is invalid for {of}");
                errs.push(FieldError::invalid("spec.selector", selector, &msg));
            }
            let labels = template.pointer("/metadata/labels");
            if valid && !empty && !selector_matches(selector, labels) {
                let shown = labels.cloned().unwrap_or(Value::Null);
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    &shown,
                    MISMATCH,
                ));
            }
        }
    }
    template_meta(template.get("metadata"), "spec.template.metadata", errs);
    let owner = if kind == "Job" {
        Owner::JobTemplate
    } else {
        Owner::Template
    };
    pod_spec(&template["spec"], "spec.template.spec", owner, errs);
}

/// `ValidateLabelSelector`; true when the selector can be evaluated.
pub(super) fn label_selector(selector: &Value, path: &str, errs: &mut Errors) -> bool {
    labels(selector.get("matchLabels"), &at(path, "matchLabels"), errs);
    let mut valid = true;
    for (i, req) in arr_at(selector, "matchExpressions").iter().enumerate() {
        let p = idx(&at(path, "matchExpressions"), i);
        let values = arr_at(req, "values");
        match str_at(req, "operator") {
            "In" | "NotIn" if values.is_empty() => {
                let msg = "must be specified when `operator` is 'In' or 'NotIn'";
                errs.push(FieldError::required(at(&p, "values"), msg));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                let msg = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'";
                errs.push(FieldError::forbidden(at(&p, "values"), msg));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => {
                valid = false;
                errs.push(FieldError::invalid(
                    at(&p, "operator"),
                    &op.into(),
                    "not a valid selector operator",
                ));
            }
        }
        let key = str_at(req, "key");
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid(at(&p, "key"), &key.into(), &msg));
        }
        for (j, value) in values.iter().enumerate() {
            let value = value.as_str().unwrap_or("");
            for msg in label_value(value) {
                errs.push(FieldError::invalid(
                    idx(&at(&p, "values"), j),
                    &value.into(),
                    &msg,
                ));
            }
        }
    }
    valid
}

/// Whether a label selector selects a set of labels.
fn selector_matches(selector: &Value, labels: Option<&Value>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let match_labels = obj_at(selector, "matchLabels").into_iter().flatten();
    let labels_ok = match_labels
        .into_iter()
        .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
    labels_ok
        && arr_at(selector, "matchExpressions").iter().all(|req| {
            let value = label(str_at(req, "key"));
            let listed = |v: &str| arr_at(req, "values").iter().any(|x| x.as_str() == Some(v));
            match str_at(req, "operator") {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                _ => value.is_none(),
            }
        })
}

/// The value of an int-or-percent for the "both zero" rule.
fn int_or_percent(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// `ValidatePositiveIntOrPercent` plus the "at most 100%" check.
pub(super) fn positive_int_or_percent(
    v: Option<&Value>,
    path: &str,
    at_most_100: bool,
    errs: &mut Errors,
) {
    match v {
        Some(Value::String(s)) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if digits.is_none() {
                let msg = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";
                errs.push(FieldError::invalid(path, &s.as_str().into(), msg));
            } else if at_most_100 && int_or_percent(v) > 100 {
                errs.push(FieldError::invalid(
                    path,
                    &s.as_str().into(),
                    "must not be greater than 100%",
                ));
            }
        }
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => {
            errs.push(FieldError::invalid(
                path,
                &Value::Number(n.clone()),
                NON_NEGATIVE,
            ));
        }
        _ => {}
    }
}

/// maxSurge/maxUnavailable of a Deployment or DaemonSet rolling update.
fn rolling_update(ru: &Value, path: &str, errs: &mut Errors) {
    let (unavailable, surge) = (ru.get("maxUnavailable"), ru.get("maxSurge"));
    positive_int_or_percent(unavailable, &at(path, "maxUnavailable"), true, errs);
    positive_int_or_percent(surge, &at(path, "maxSurge"), false, errs);
    if int_or_percent(unavailable) == 0 && int_or_percent(surge) == 0 {
        let shown = unavailable.cloned().unwrap_or(Value::Null);
        errs.push(FieldError::invalid(
            at(path, "maxUnavailable"),
            &shown,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn deployment(spec: &Value, errs: &mut Errors) {
    let strategy = &spec["strategy"];
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match (str_at(strategy, "type"), rolling) {
        ("Recreate", Some(_)) => {
            let msg = "may not be specified when strategy `type` is 'Recreate'";
            errs.push(FieldError::forbidden("spec.strategy.rollingUpdate", msg));
        }
        ("Recreate", None) => {}
        ("RollingUpdate", None) => {
            let msg = "this should be defaulted and never be nil";
            errs.push(FieldError::required("spec.strategy.rollingUpdate", msg));
        }
        ("RollingUpdate", Some(ru)) => rolling_update(ru, "spec.strategy.rollingUpdate", errs),
        _ => errs.push(FieldError::not_supported(
            "spec.strategy",
            strategy,
            &["Recreate", "RollingUpdate"],
        )),
    }
    let (deadline, min_ready) = (
        int_at(spec, "progressDeadlineSeconds"),
        int_at(spec, "minReadySeconds"),
    );
    if let Some(deadline) = deadline.filter(|d| *d <= min_ready.unwrap_or(0)) {
        let msg = "must be greater than minReadySeconds";
        errs.push(FieldError::invalid(
            "spec.progressDeadlineSeconds",
            &deadline.into(),
            msg,
        ));
    }
}

fn daemon_set(spec: &Value, errs: &mut Errors) {
    let strategy = &spec["updateStrategy"];
    match str_at(strategy, "type") {
        "OnDelete" => {}
        "RollingUpdate" => match strategy.get("rollingUpdate").filter(|r| !r.is_null()) {
            None => errs.push(FieldError::required(
                "spec.updateStrategy.rollingUpdate",
                "",
            )),
            Some(ru) => rolling_update(ru, "spec.updateStrategy.rollingUpdate", errs),
        },
        _ => errs.push(FieldError::not_supported(
            "spec.updateStrategy",
            strategy,
            &["RollingUpdate", "OnDelete"],
        )),
    }
}

fn stateful_set(spec: &Value, errs: &mut Errors) {
    match str_at(spec, "podManagementPolicy") {
        "" => errs.push(FieldError::required("spec.podManagementPolicy", "")),
        "OrderedReady" | "Parallel" => {}
        p => {
            let msg = "must be 'OrderedReady' or 'Parallel'";
            errs.push(FieldError::invalid(
                "spec.podManagementPolicy",
                &p.into(),
                msg,
            ));
        }
    }
    let strategy = &spec["updateStrategy"];
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match str_at(strategy, "type") {
        "" => errs.push(FieldError::required("spec.updateStrategy", "")),
        "RollingUpdate" => {
            let path = "spec.updateStrategy.rollingUpdate.partition";
            if let Some(p) = rolling
                .and_then(|r| int_at(r, "partition"))
                .filter(|p| *p < 0)
            {
                errs.push(FieldError::invalid(path, &p.into(), NON_NEGATIVE));
            }
        }
        "OnDelete" => {
            if let Some(ru) = rolling {
                let msg = "only allowed for updateStrategy 'RollingUpdate'";
                errs.push(FieldError::invalid(
                    "spec.updateStrategy.rollingUpdate",
                    ru,
                    msg,
                ));
            }
        }
        _ => {
            let msg = "must be 'RollingUpdate' or 'OnDelete'";
            errs.push(FieldError::invalid("spec.updateStrategy", strategy, msg));
        }
    }
}

fn job(spec: &Value, errs: &mut Errors) {
    match str_at(spec, "completionMode") {
        "" | "NonIndexed" => {}
        "Indexed" => {
            if int_at(spec, "completions").is_none() {
                errs.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
        }
        m => errs.push(FieldError::not_supported(
            "spec.completionMode",
            &m.into(),
            &["NonIndexed", "Indexed"],
        )),
    }
}

/// Update rules: selectors are immutable, a StatefulSet spec only changes in
/// a few fields, a Job's template and completion settings are fixed.
pub(super) fn workload_update(kind: &str, spec: &Value, old: &Value, errs: &mut Errors) {
    let null = Value::Null;
    let field = |v: &'_ Value, name: &str| v.get(name).cloned().unwrap_or(Value::Null);
    match kind {
        "StatefulSet" => {
            let mutable = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let strip = |v: &Value| match v {
                Value::Object(m) => Value::Object(
                    m.iter()
                        .filter(|(k, _)| !mutable.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            };
            if !same(&strip(spec), &strip(old)) {
                let msg = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";
                errs.push(FieldError::forbidden("spec", msg));
            }
        }
        "Job" => {
            let mut fixed = vec!["selector", "template", "completionMode"];
            if str_at(spec, "completionMode") != "Indexed" {
                fixed.push("completions");
            }
            for name in fixed {
                let now = field(spec, name);
                if !same(&now, old.get(name).unwrap_or(&null)) {
                    errs.push(FieldError::invalid(
                        at("spec", name),
                        &now,
                        "field is immutable",
                    ));
                }
            }
        }
        _ => {
            let now = field(spec, "selector");
            if !same(&now, old.get("selector").unwrap_or(&null)) {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    &now,
                    "field is immutable",
                ));
            }
        }
    }
}

/// Validates a HorizontalPodAutoscaler spec, autoscaling/v2 or v1.
pub(super) fn hpa(spec: &Value, errs: &mut Errors) {
    let min = int_at(spec, "minReplicas");
    if let Some(m) = min.filter(|m| *m < 1) {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            &m.into(),
            "must be greater than or equal to 1",
        ));
    }
    let max = int_at(spec, "maxReplicas").unwrap_or(0);
    if max < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            &max.into(),
            "must be greater than 0",
        ));
    }
    if min.is_some_and(|m| max < m) {
        let msg = "must be greater than or equal to `minReplicas`";
        errs.push(FieldError::invalid("spec.maxReplicas", &max.into(), msg));
    }
    let target = &spec["scaleTargetRef"];
    for field in ["kind", "name"] {
        let path = at("spec.scaleTargetRef", field);
        match str_at(target, field) {
            "" => errs.push(FieldError::required(path, "")),
            value => {
                for msg in path_segment_name(value) {
                    errs.push(FieldError::invalid(path.clone(), &value.into(), &msg));
                }
            }
        }
    }
    if let Some(t) = int_at(spec, "targetCPUUtilizationPercentage").filter(|t| *t < 1) {
        errs.push(FieldError::invalid(
            "spec.targetCPUUtilizationPercentage",
            &t.into(),
            "must be greater than 0",
        ));
    }
    for (i, metric) in arr_at(spec, "metrics").iter().enumerate() {
        let p = idx("spec.metrics", i);
        match str_at(metric, "type") {
            "" => errs.push(FieldError::required(
                at(&p, "type"),
                "must specify a metric source type",
            )),
            "Object" | "Pods" | "Resource" | "ContainerResource" | "External" => {}
            t => {
                let msg = "must be either 'Object', 'Pods', 'Resource', 'ContainerResource', or 'External'";
                errs.push(FieldError::invalid(at(&p, "type"), &t.into(), msg));
            }
        }
        if let Some(resource) = metric.get("resource").filter(|r| r.is_object()) {
            let rp = at(&p, "resource");
            if str_at(resource, "name").is_empty() {
                errs.push(FieldError::required(
                    at(&rp, "name"),
                    "must specify a resource name",
                ));
            }
            let utilization = resource
                .pointer("/target/averageUtilization")
                .and_then(Value::as_i64);
            if let Some(u) = utilization.filter(|u| *u < 1) {
                let path = at(&rp, "target.averageUtilization");
                errs.push(FieldError::invalid(
                    path,
                    &u.into(),
                    "must be greater than 0",
                ));
            }
        }
    }
}
