//! ObjectMeta validation (`ValidateObjectMeta`, `ValidateObjectMetaUpdate`):
//! name and namespace rules per kind, labels, annotations, finalizers.

use serde_json::Value;

use super::names::{dns1035_label, dns1123_label, dns1123_subdomain, label_value, qualified_name};
use super::{arr_at, at, str_at, Errors, FieldError};
use crate::apiserver::registry::Resource;

/// Upstream's `TotalAnnotationSizeLimitB`.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Validates `obj.metadata` for `resource`.
pub(super) fn object_meta(resource: &Resource, obj: &Value, errs: &mut Errors) {
    let empty = Value::Null;
    let meta = obj.get("metadata").unwrap_or(&empty);
    let name = str_at(meta, "name");
    if name.is_empty() {
        if str_at(meta, "generateName").is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        let check = match resource.kind {
            "Namespace" => dns1123_label,
            "Service" => dns1035_label,
            _ => dns1123_subdomain,
        };
        for msg in check(name) {
            errs.push(FieldError::invalid(
                "metadata.name",
                &Value::from(name),
                &msg,
            ));
        }
    }
    let namespace = str_at(meta, "namespace");
    if resource.namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for msg in dns1123_label(namespace) {
                errs.push(FieldError::invalid(
                    "metadata.namespace",
                    &Value::from(namespace),
                    &msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    labels(meta.get("labels"), "metadata.labels", errs);
    annotations(meta.get("annotations"), "metadata.annotations", errs);
    for finalizer in arr_at(meta, "finalizers").iter().filter_map(Value::as_str) {
        for msg in qualified_name(finalizer) {
            errs.push(FieldError::invalid(
                "metadata.finalizers",
                &Value::from(finalizer),
                &msg,
            ));
        }
    }
}

/// The metadata of an embedded template: only labels and annotations.
pub(super) fn template_meta(meta: Option<&Value>, path: &str, errs: &mut Errors) {
    if let Some(meta) = meta {
        labels(meta.get("labels"), &at(path, "labels"), errs);
        annotations(meta.get("annotations"), &at(path, "annotations"), errs);
    }
}

/// `ValidateLabels`: every key a qualified name, every value a label value.
pub(super) fn labels(labels: Option<&Value>, path: &str, errs: &mut Errors) {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return;
    };
    for (key, value) in labels {
        for msg in qualified_name(key) {
            errs.push(FieldError::invalid(path, &Value::from(key.as_str()), &msg));
        }
        let Some(value) = value.as_str() else {
            continue;
        };
        for msg in label_value(value) {
            errs.push(FieldError::invalid(path, &Value::from(value), &msg));
        }
    }
}

/// `ValidateAnnotations`: lower-cased keys are qualified names, and all of
/// them together stay under 256 KiB.
pub(super) fn annotations(annotations: Option<&Value>, path: &str, errs: &mut Errors) {
    let Some(annotations) = annotations.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    for (key, value) in annotations {
        for msg in qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(path, &Value::from(key.as_str()), &msg));
        }
        total += key.len() + value.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError::too_long(path, ANNOTATIONS_MAX_BYTES));
    }
}

/// `ValidateObjectMetaUpdate`: identity fields never change, and an object
/// being deleted gains no finalizers.
pub(super) fn object_meta_update(obj: &Value, old: &Value, errs: &mut Errors) {
    let empty = Value::Null;
    let meta = obj.get("metadata").unwrap_or(&empty);
    let old_meta = old.get("metadata").unwrap_or(&empty);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
    ] {
        let (new, was) = (
            meta.get(field).unwrap_or(&empty),
            old_meta.get(field).unwrap_or(&empty),
        );
        if new != was {
            errs.push(FieldError::invalid(
                format!("metadata.{field}"),
                new,
                "field is immutable",
            ));
        }
    }
    if old_meta
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        let old_finalizers = arr_at(old_meta, "finalizers");
        let added: Vec<String> = arr_at(meta, "finalizers")
            .iter()
            .filter(|f| !old_finalizers.contains(f))
            .map(super::render)
            .collect();
        if !added.is_empty() {
            let detail = format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                added.join(", ")
            );
            errs.push(FieldError::forbidden("metadata.finalizers", &detail));
        }
    }
}
