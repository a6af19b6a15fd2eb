//! RBAC, networking, disruption-budget, priority-class and storage
//! validation, after upstream's pkg/apis/{rbac,networking,policy,scheduling,
//! storage,core}/validation for the fields users get wrong.

use serde_json::Value;

use super::workloads::{label_selector, positive_int_or_percent};
use super::{arr_at, int_at, same, str_at, Errors, FieldError};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// `rules` of a Role (namespaced) or ClusterRole: upstream's ValidatePolicyRule.
pub(super) fn role(obj: &Value, namespaced: bool, errs: &mut Errors) {
    for (i, rule) in arr_at(obj, "rules").iter().enumerate() {
        let path = format!("rules[{i}]");
        if arr_at(rule, "verbs").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if !arr_at(rule, "nonResourceURLs").is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !arr_at(rule, "apiGroups").is_empty() || !arr_at(rule, "resources").is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    &rule["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if arr_at(rule, "apiGroups").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if arr_at(rule, "resources").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A RoleBinding (namespaced) or ClusterRoleBinding: roleRef and subjects.
pub(super) fn binding(obj: &Value, namespaced: bool, errs: &mut Errors) {
    let role_ref = &obj["roleRef"];
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if str_at(role_ref, "apiGroup") != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &str_at(role_ref, "apiGroup").into(),
            &[RBAC_GROUP],
        ));
    }
    let kind = str_at(role_ref, "kind");
    if !kinds.contains(&kind) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &kind.into(),
            kinds,
        ));
    }
    if str_at(role_ref, "name").is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for (i, subject) in arr_at(obj, "subjects").iter().enumerate() {
        let path = format!("subjects[{i}]");
        if str_at(subject, "name").is_empty() {
            errs.push(FieldError::required(format!("{path}.name"), ""));
        }
        let kind = str_at(subject, "kind");
        match kind {
            "ServiceAccount" => {
                if !namespaced && str_at(subject, "namespace").is_empty() {
                    errs.push(FieldError::required(format!("{path}.namespace"), ""));
                }
            }
            "User" | "Group" => {}
            _ => errs.push(FieldError::not_supported(
                format!("{path}.kind"),
                &kind.into(),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// A binding's roleRef cannot change.
pub(super) fn binding_update(obj: &Value, old: &Value, errs: &mut Errors) {
    if !same(&obj["roleRef"], &old["roleRef"]) {
        errs.push(FieldError::invalid(
            "roleRef",
            &obj["roleRef"],
            "cannot change roleRef",
        ));
    }
}

/// An Ingress spec: a backend or rules, each HTTP path with a pathType and backend.
pub(super) fn ingress(spec: &Value, errs: &mut Errors) {
    let rules = arr_at(spec, "rules");
    if rules.is_empty() && !spec["defaultBackend"].is_object() {
        errs.push(FieldError::invalid(
            "spec",
            &Value::Array(Vec::new()),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if spec["defaultBackend"].is_object() {
        backend(&spec["defaultBackend"], "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.iter().enumerate() {
        let Some(http) = rule.get("http").filter(|h| h.is_object()) else {
            continue;
        };
        let paths = arr_at(http, "paths");
        let base = format!("spec.rules[{i}].http.paths");
        if paths.is_empty() {
            errs.push(FieldError::required(base.clone(), ""));
        }
        for (j, path) in paths.iter().enumerate() {
            let at = format!("{base}[{j}]");
            let path_type = str_at(path, "pathType");
            match path_type {
                "" => errs.push(FieldError::required(
                    format!("{at}.pathType"),
                    "pathType must be specified",
                )),
                "Exact" | "Prefix" | "ImplementationSpecific" => {}
                other => errs.push(FieldError::not_supported(
                    format!("{at}.pathType"),
                    &other.into(),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            let p = str_at(path, "path");
            if path_type != "ImplementationSpecific" && !p.starts_with('/') {
                errs.push(FieldError::invalid(
                    format!("{at}.path"),
                    &p.into(),
                    "must be an absolute path",
                ));
            }
            backend(&path["backend"], &format!("{at}.backend"), errs);
        }
    }
}

fn backend(backend: &Value, path: &str, errs: &mut Errors) {
    let service = &backend["service"];
    let resource = &backend["resource"];
    match (service.is_object(), resource.is_object()) {
        (true, true) => errs.push(FieldError::invalid(
            path.to_string(),
            &Value::String(String::new()),
            "cannot set both resource and service backends",
        )),
        (false, false) => errs.push(FieldError::invalid(
            path.to_string(),
            &Value::String(String::new()),
            "resource or service backend is required",
        )),
        (true, false) => {
            if str_at(service, "name").is_empty() {
                errs.push(FieldError::required(format!("{path}.service.name"), ""));
            }
            let port = &service["port"];
            if str_at(port, "name").is_empty() && int_at(port, "number").is_none() {
                errs.push(FieldError::required(
                    format!("{path}.service.port"),
                    "port name or number is required",
                ));
            }
        }
        (false, true) => {}
    }
}

/// An IngressClass needs its controller.
pub(super) fn ingress_class(spec: &Value, errs: &mut Errors) {
    if str_at(spec, "controller").is_empty() {
        errs.push(FieldError::required("spec.controller", ""));
    }
}

/// A NetworkPolicy's policyTypes.
pub(super) fn network_policy(spec: &Value, errs: &mut Errors) {
    for (i, t) in arr_at(spec, "policyTypes").iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            errs.push(FieldError::not_supported(
                format!("spec.policyTypes[{i}]"),
                &t.into(),
                &["Ingress", "Egress"],
            ));
        }
    }
}

/// A PodDisruptionBudget (upstream's ValidatePodDisruptionBudgetSpec): at
/// most one of minAvailable and maxUnavailable, each a non-negative int or a
/// percentage up to 100%, a valid selector, a known unhealthy-pod policy.
pub(super) fn pdb(spec: &Value, errs: &mut Errors) {
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        errs.push(FieldError::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for field in ["minAvailable", "maxUnavailable"] {
        let value = spec.get(field).filter(|v| !v.is_null());
        positive_int_or_percent(value, &format!("spec.{field}"), true, errs);
    }
    if spec["selector"].is_object() {
        label_selector(&spec["selector"], "spec.selector", errs);
    }
    let policy = &spec["unhealthyPodEvictionPolicy"];
    if !policy.is_null() && !matches!(policy.as_str(), Some("IfHealthyBudget" | "AlwaysAllow")) {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
}

/// User-defined priority classes stay at or below 1000000000.
pub(super) fn priority_class(obj: &Value, errs: &mut Errors) {
    const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let value = int_at(obj, "value").unwrap_or(0);
    if !name.starts_with("system-") && value > HIGHEST_USER_DEFINABLE {
        errs.push(FieldError::forbidden(
            "value",
            "maximum allowed value of a user defined priority is 1000000000",
        ));
    }
}

/// A PersistentVolumeClaim needs access modes and a storage request.
pub(super) fn pvc(spec: &Value, errs: &mut Errors) {
    if arr_at(spec, "accessModes").is_empty() {
        errs.push(FieldError::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    if spec["resources"]["requests"]["storage"].is_null() {
        errs.push(FieldError::required("spec.resources[storage]", ""));
    }
}

/// A StorageClass needs its provisioner.
pub(super) fn storage_class(obj: &Value, errs: &mut Errors) {
    if str_at(obj, "provisioner").is_empty() {
        errs.push(FieldError::required("provisioner", ""));
    }
}
