//! ConfigMap, Secret and Event validation: data keys, the 1 MiB size limit,
//! per-type Secret keys, `immutable`, and an Event's involved object.

use serde_json::Value;

use super::names::config_map_key;
use super::{key, obj_at, same, str_at, Errors, FieldError};

/// Upstream's `MaxConfigMapSize` and `MaxSecretSize`.
const MAX_SIZE: usize = 1024 * 1024;

/// Validates a ConfigMap's `data` and `binaryData`.
pub(super) fn config_map(obj: &Value, errs: &mut Errors) {
    let data = obj_at(obj, "data");
    let binary = obj_at(obj, "binaryData");
    let mut total = 0;
    for (k, value) in data.into_iter().flatten() {
        keys(k, "data", errs);
        if binary.is_some_and(|b| b.contains_key(k)) {
            errs.push(FieldError::invalid(
                key("data", k),
                &k.as_str().into(),
                "duplicate of key present in binaryData",
            ));
        }
        total += value.as_str().map_or(0, str::len);
    }
    for (k, value) in binary.into_iter().flatten() {
        keys(k, "binaryData", errs);
        total += value.as_str().map_or(0, decoded_len);
    }
    if total > MAX_SIZE {
        errs.push(FieldError::too_long("", MAX_SIZE));
    }
}

fn keys(k: &str, path: &str, errs: &mut Errors) {
    for msg in config_map_key(k) {
        errs.push(FieldError::invalid(key(path, k), &k.into(), &msg));
    }
}

/// Bytes a base64 string decodes to.
fn decoded_len(s: &str) -> usize {
    let padding = s.bytes().rev().take_while(|&b| b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(padding) + (s.len() % 4).saturating_sub(1)
}

/// Validates a Secret's keys, size and the keys its `type` requires.
pub(super) fn secret(obj: &Value, errs: &mut Errors) {
    let data = obj_at(obj, "data");
    let mut total = 0;
    for (k, value) in data.into_iter().flatten() {
        keys(k, "data", errs);
        total += value.as_str().map_or(0, decoded_len);
    }
    if total > MAX_SIZE {
        errs.push(FieldError::too_long("data", MAX_SIZE));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let mut require = |k: &str| {
        if !has(k) {
            errs.push(FieldError::required(key("data", k), ""));
        }
    };
    match str_at(obj, "type") {
        "kubernetes.io/service-account-token" => {
            let annotation = obj
                .pointer("/metadata/annotations")
                .map_or("", |a| str_at(a, "kubernetes.io/service-account.name"));
            if annotation.is_empty() {
                errs.push(FieldError::required(
                    key("metadata.annotations", "kubernetes.io/service-account.name"),
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" => require(".dockercfg"),
        "kubernetes.io/dockerconfigjson" => require(".dockerconfigjson"),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            require("username");
            require("password");
        }
        "kubernetes.io/ssh-auth" => require("ssh-privatekey"),
        "kubernetes.io/tls" => {
            require("tls.crt");
            require("tls.key");
        }
        _ => {}
    }
}

/// Validates a core/v1 Event: it must name what it is about, in its namespace.
pub(super) fn event(obj: &Value, errs: &mut Errors) {
    let Some(involved) = obj.get("involvedObject").filter(|o| o.is_object()) else {
        errs.push(FieldError::required("involvedObject", ""));
        return;
    };
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let involved_namespace = str_at(involved, "namespace");
    let matches = if involved_namespace.is_empty() {
        namespace.is_empty() || namespace == "default"
    } else {
        namespace == involved_namespace
    };
    if !matches {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &involved_namespace.into(),
            "does not match event.namespace",
        ));
    }
}

/// Update rules of ConfigMaps and Secrets: `immutable: true` freezes the
/// data and itself; a Secret's type never changes.
pub(super) fn data_update(kind: &str, obj: &Value, old: &Value, errs: &mut Errors) {
    if kind == "Secret" {
        let now = str_at(obj, "type");
        if now != str_at(old, "type") {
            errs.push(FieldError::invalid(
                "type",
                &now.into(),
                "field is immutable",
            ));
        }
    }
    let frozen = |v: &Value| v.get("immutable").and_then(Value::as_bool) == Some(true);
    if !frozen(old) {
        return;
    }
    let msg = "field is immutable when `immutable` is set";
    if !frozen(obj) {
        errs.push(FieldError::forbidden("immutable", msg));
    }
    let null = Value::Null;
    for field in ["data", "binaryData"] {
        if !same(
            obj.get(field).unwrap_or(&null),
            old.get(field).unwrap_or(&null),
        ) {
            errs.push(FieldError::forbidden(field, msg));
        }
    }
}
