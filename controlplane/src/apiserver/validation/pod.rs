//! Pod spec validation (`ValidatePodSpec` and the container, volume, probe
//! and toleration checks under it) and the Pod update rule: a running pod's
//! spec is immutable apart from images, `activeDeadlineSeconds`, added
//! tolerations and removed scheduling gates.

use std::collections::HashSet;

use serde_json::Value;

use super::meta::labels;
use super::names::{
    dns1123_label, dns1123_subdomain, inclusive_range_error, label_value, port_name, port_num,
    qualified_name,
};
use super::{arr_at, at, idx, int_at, normalized, same, str_at, Errors, FieldError};

/// Where the pod spec lives; templates are a little more permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A Pod object.
    Pod,
    /// A workload's pod template.
    Template,
    /// A Job's pod template, whose `restartPolicy` the Job rules check.
    JobTemplate,
}

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
const NON_NEGATIVE: &str = "must be greater than or equal to 0";

/// Validates a pod spec found at `path`.
pub(super) fn pod_spec(spec: &Value, path: &str, owner: Owner, errs: &mut Errors) {
    let volumes = volumes(spec, &at(path, "volumes"), errs);
    if arr_at(spec, "containers").is_empty() {
        errs.push(FieldError::required(at(path, "containers"), ""));
    }
    let mut names = HashSet::new();
    for key in ["initContainers", "containers"] {
        let list_path = at(path, key);
        for (i, c) in arr_at(spec, key).iter().enumerate() {
            let ctx = ContainerCtx {
                volumes: &volumes,
                owner,
                init: key == "initContainers",
            };
            container(c, &idx(&list_path, i), &ctx, &mut names, errs);
        }
    }
    match str_at(spec, "restartPolicy") {
        "" if owner == Owner::JobTemplate => {}
        "" => errs.push(FieldError::required(at(path, "restartPolicy"), "")),
        p if RESTART_POLICIES.contains(&p) => {}
        p => errs.push(FieldError::not_supported(
            at(path, "restartPolicy"),
            &p.into(),
            RESTART_POLICIES,
        )),
    }
    match str_at(spec, "dnsPolicy") {
        "" => errs.push(FieldError::required(at(path, "dnsPolicy"), "")),
        "None" => {
            let config = spec.get("dnsConfig").filter(|c| c.is_object());
            match config {
                None => errs.push(FieldError::required(
                    at(path, "dnsConfig"),
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                )),
                Some(config) if arr_at(config, "nameservers").is_empty() => {
                    errs.push(FieldError::required(
                        at(path, "dnsConfig.nameservers"),
                        "must provide at least one DNS nameserver when `dnsPolicy` is None",
                    ))
                }
                Some(_) => {}
            }
        }
        p if DNS_POLICIES.contains(&p) => {}
        p => errs.push(FieldError::not_supported(
            at(path, "dnsPolicy"),
            &p.into(),
            DNS_POLICIES,
        )),
    }
    if let Some(deadline) = int_at(spec, "activeDeadlineSeconds") {
        if !(1..=i64::from(i32::MAX)).contains(&deadline) {
            let msg = inclusive_range_error(1, i32::MAX.into());
            errs.push(FieldError::invalid(
                at(path, "activeDeadlineSeconds"),
                &deadline.into(),
                &msg,
            ));
        }
    }
    labels(spec.get("nodeSelector"), &at(path, "nodeSelector"), errs);
    for field in ["hostname", "subdomain"] {
        let value = str_at(spec, field);
        if !value.is_empty() {
            for msg in dns1123_label(value) {
                errs.push(FieldError::invalid(at(path, field), &value.into(), &msg));
            }
        }
    }
    let account = str_at(spec, "serviceAccountName");
    if !account.is_empty() {
        for msg in dns1123_subdomain(account) {
            errs.push(FieldError::invalid(
                at(path, "serviceAccountName"),
                &account.into(),
                &msg,
            ));
        }
    }
    tolerations(arr_at(spec, "tolerations"), &at(path, "tolerations"), errs);
}

/// Checks volumes and returns their names for volumeMounts to refer to.
fn volumes<'a>(spec: &'a Value, path: &str, errs: &mut Errors) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, v) in arr_at(spec, "volumes").iter().enumerate() {
        let p = idx(path, i);
        match str_at(v, "name") {
            "" => errs.push(FieldError::required(at(&p, "name"), "")),
            name => {
                for msg in dns1123_label(name) {
                    errs.push(FieldError::invalid(at(&p, "name"), &name.into(), &msg));
                }
                if !names.insert(name) {
                    errs.push(FieldError::duplicate(at(&p, "name"), &name.into()));
                }
            }
        }
        let sources: Vec<&String> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, s)| *k != "name" && !s.is_null())
            .map(|(k, _)| k)
            .collect();
        match sources.as_slice() {
            [] => errs.push(FieldError::required(
                p.clone(),
                "must specify a volume type",
            )),
            [_] => {}
            [_, second, ..] => errs.push(FieldError::forbidden(
                at(&p, second),
                "may not specify more than 1 volume type",
            )),
        }
        for (source, required) in [
            ("configMap", "name"),
            ("secret", "secretName"),
            ("hostPath", "path"),
            ("persistentVolumeClaim", "claimName"),
        ] {
            let Some(src) = v.get(source).filter(|s| s.is_object()) else {
                continue;
            };
            if str_at(src, required).is_empty() {
                errs.push(FieldError::required(at(&at(&p, source), required), ""));
            }
            if let Some(mode) = int_at(src, "defaultMode") {
                if !(0..=0o777).contains(&mode) {
                    let msg = "must be a number between 0 and 0777 (octal), both inclusive";
                    errs.push(FieldError::invalid(
                        at(&at(&p, source), "defaultMode"),
                        &mode.into(),
                        msg,
                    ));
                }
            }
        }
    }
    names
}

struct ContainerCtx<'a> {
    volumes: &'a HashSet<&'a str>,
    owner: Owner,
    init: bool,
}

fn container<'a>(
    c: &'a Value,
    path: &str,
    ctx: &ContainerCtx<'_>,
    names: &mut HashSet<&'a str>,
    errs: &mut Errors,
) {
    match str_at(c, "name") {
        "" => errs.push(FieldError::required(at(path, "name"), "")),
        name => {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(at(path, "name"), &name.into(), &msg));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(at(path, "name"), &name.into()));
            }
        }
    }
    let image = str_at(c, "image");
    if image.is_empty() {
        errs.push(FieldError::required(at(path, "image"), ""));
    } else if ctx.owner == Owner::Pod && image.trim() != image {
        errs.push(FieldError::invalid(
            at(path, "image"),
            &image.into(),
            "must not have leading or trailing whitespace",
        ));
    }
    match str_at(c, "imagePullPolicy") {
        "" => errs.push(FieldError::required(at(path, "imagePullPolicy"), "")),
        p if PULL_POLICIES.contains(&p) => {}
        p => errs.push(FieldError::not_supported(
            at(path, "imagePullPolicy"),
            &p.into(),
            PULL_POLICIES,
        )),
    }
    let msg_policy = "must be 'File' or 'FallbackToLogsOnError'";
    match str_at(c, "terminationMessagePolicy") {
        "" => errs.push(FieldError::required(
            at(path, "terminationMessagePolicy"),
            msg_policy,
        )),
        "File" | "FallbackToLogsOnError" => {}
        p => errs.push(FieldError::invalid(
            at(path, "terminationMessagePolicy"),
            &p.into(),
            msg_policy,
        )),
    }
    container_ports(arr_at(c, "ports"), &at(path, "ports"), errs);
    for (i, env) in arr_at(c, "env").iter().enumerate() {
        if str_at(env, "name").is_empty() {
            errs.push(FieldError::required(
                at(&idx(&at(path, "env"), i), "name"),
                "",
            ));
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, mount) in arr_at(c, "volumeMounts").iter().enumerate() {
        let p = idx(&at(path, "volumeMounts"), i);
        let name = str_at(mount, "name");
        if name.is_empty() {
            errs.push(FieldError::required(at(&p, "name"), ""));
        } else if !ctx.volumes.contains(name) {
            errs.push(FieldError::not_found(at(&p, "name"), &name.into()));
        }
        match str_at(mount, "mountPath") {
            "" => errs.push(FieldError::required(at(&p, "mountPath"), "")),
            mount_path if !mount_paths.insert(mount_path) => errs.push(FieldError::invalid(
                at(&p, "mountPath"),
                &mount_path.into(),
                "must be unique",
            )),
            _ => {}
        }
    }
    let sidecar = str_at(c, "restartPolicy") == "Always";
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(probe) = c.get(kind).filter(|p| p.is_object()) else {
            continue;
        };
        let p = at(path, kind);
        if ctx.init && !sidecar {
            errs.push(FieldError::forbidden(
                p,
                "may not be set for init containers without restartPolicy=Always",
            ));
            continue;
        }
        self::probe(probe, &p, kind != "readinessProbe", errs);
    }
}

fn container_ports(ports: &[Value], path: &str, errs: &mut Errors) {
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = idx(path, i);
        let name = str_at(port, "name");
        if !name.is_empty() {
            let msgs = port_name(name);
            for msg in &msgs {
                errs.push(FieldError::invalid(at(&p, "name"), &name.into(), msg));
            }
            if msgs.is_empty() && !names.insert(name) {
                errs.push(FieldError::duplicate(at(&p, "name"), &name.into()));
            }
        }
        match int_at(port, "containerPort") {
            None | Some(0) => errs.push(FieldError::required(at(&p, "containerPort"), "")),
            Some(n) => {
                for msg in port_num(n) {
                    errs.push(FieldError::invalid(
                        at(&p, "containerPort"),
                        &n.into(),
                        &msg,
                    ));
                }
            }
        }
        if let Some(host) = int_at(port, "hostPort").filter(|h| *h != 0) {
            for msg in port_num(host) {
                errs.push(FieldError::invalid(at(&p, "hostPort"), &host.into(), &msg));
            }
        }
        protocol(port, &at(&p, "protocol"), errs);
    }
}

/// A port's protocol: required (it is defaulted) and one of TCP/UDP/SCTP.
pub(super) fn protocol(port: &Value, path: &str, errs: &mut Errors) {
    match str_at(port, "protocol") {
        "" => errs.push(FieldError::required(path, "")),
        p if PROTOCOLS.contains(&p) => {}
        p => errs.push(FieldError::not_supported(path, &p.into(), PROTOCOLS)),
    }
}

/// `ValidatePortNumOrName` for an int-or-string port.
pub(super) fn port_num_or_name(port: Option<&Value>, path: &str, errs: &mut Errors) {
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(-1);
            for msg in port_num(n) {
                errs.push(FieldError::invalid(path, &n.into(), &msg));
            }
        }
        Some(Value::String(name)) => {
            for msg in port_name(name) {
                errs.push(FieldError::invalid(path, &name.as_str().into(), &msg));
            }
        }
        _ => {}
    }
}

fn probe(probe: &Value, path: &str, success_must_be_one: bool, errs: &mut Errors) {
    let handlers: Vec<&str> = ["exec", "httpGet", "tcpSocket", "grpc"]
        .into_iter()
        .filter(|h| probe.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    match handlers.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a handler type")),
        [_] => {}
        [_, second, ..] => errs.push(FieldError::forbidden(
            at(path, second),
            "may not specify more than 1 handler type",
        )),
    }
    for action in ["httpGet", "tcpSocket"] {
        if let Some(a) = probe.get(action).filter(|a| a.is_object()) {
            port_num_or_name(a.get("port"), &at(&at(path, action), "port"), errs);
        }
    }
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        if let Some(n) = int_at(probe, field).filter(|n| *n < 0) {
            errs.push(FieldError::invalid(
                at(path, field),
                &n.into(),
                NON_NEGATIVE,
            ));
        }
    }
    if success_must_be_one {
        if let Some(n) = int_at(probe, "successThreshold").filter(|n| *n != 1) {
            errs.push(FieldError::invalid(
                at(path, "successThreshold"),
                &n.into(),
                "must be 1",
            ));
        }
    }
}

fn tolerations(tolerations: &[Value], path: &str, errs: &mut Errors) {
    for (i, t) in tolerations.iter().enumerate() {
        let p = idx(path, i);
        let (key, operator, value, effect) = (
            str_at(t, "key"),
            str_at(t, "operator"),
            str_at(t, "value"),
            str_at(t, "effect"),
        );
        for msg in if key.is_empty() {
            Vec::new()
        } else {
            qualified_name(key)
        } {
            errs.push(FieldError::invalid(at(&p, "key"), &key.into(), &msg));
        }
        if key.is_empty() && operator != "Exists" {
            let msg = "operator must be Exists when `key` is empty, which means \"match all values and all keys\"";
            errs.push(FieldError::invalid(
                at(&p, "operator"),
                &operator.into(),
                msg,
            ));
        }
        if t.get("tolerationSeconds").is_some_and(|s| !s.is_null()) && effect != "NoExecute" {
            let msg = "effect must be 'NoExecute' when `tolerationSeconds` is set";
            errs.push(FieldError::invalid(at(&p, "effect"), &effect.into(), msg));
        }
        match operator {
            "" | "Equal" => {
                for msg in label_value(value) {
                    errs.push(FieldError::invalid(at(&p, "operator"), &value.into(), &msg));
                }
            }
            "Exists" if !value.is_empty() => {
                let msg = "value must be empty when `operator` is 'Exists'";
                errs.push(FieldError::invalid(at(&p, "operator"), t, msg));
            }
            "Exists" => {}
            op => errs.push(FieldError::not_supported(
                at(&p, "operator"),
                &op.into(),
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
            errs.push(FieldError::not_supported(
                at(&p, "effect"),
                &effect.into(),
                TAINT_EFFECTS,
            ));
        }
    }
}

const UPDATABLE_POD_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`'s spec rule: everything but the updatable fields
/// must equal the stored spec.
pub(super) fn pod_update(spec: &Value, old: &Value, errs: &mut Errors) {
    let mut munged = spec.clone();
    let Some(m) = munged.as_object_mut() else {
        return;
    };
    let mut take_old = |field: &str| match old.get(field) {
        Some(v) => m.insert(field.to_string(), v.clone()),
        None => m.remove(field),
    };
    match (
        int_at(spec, "activeDeadlineSeconds"),
        int_at(old, "activeDeadlineSeconds"),
    ) {
        (Some(new), _) if !(0..=i64::from(i32::MAX)).contains(&new) => {
            let msg = inclusive_range_error(0, i32::MAX.into());
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &new.into(),
                &msg,
            ));
        }
        (Some(new), Some(was)) if was < new => {
            let msg = "must be less than or equal to previous value";
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &new.into(),
                msg,
            ));
        }
        (None, Some(_)) => {
            let msg = "must not update from a positive integer to nil value";
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                msg,
            ));
        }
        _ => {}
    }
    take_old("activeDeadlineSeconds");
    let new_tolerations = arr_at(spec, "tolerations");
    let kept = arr_at(old, "tolerations").iter().all(|was| {
        new_tolerations.iter().any(|t| {
            let strip = |v: &Value| {
                let mut v = normalized(v);
                if let Some(o) = v.as_object_mut() {
                    o.remove("tolerationSeconds");
                }
                v
            };
            strip(t) == strip(was)
        })
    });
    if !kept {
        let msg = "existing toleration can not be modified except its tolerationSeconds";
        errs.push(FieldError::forbidden("spec.tolerations", msg));
    }
    take_old("tolerations");
    let grace = int_at(spec, "terminationGracePeriodSeconds");
    if grace == Some(1) && int_at(old, "terminationGracePeriodSeconds").is_some_and(|g| g < 0) {
        take_old("terminationGracePeriodSeconds");
    }
    let old_gates = arr_at(old, "schedulingGates");
    match arr_at(spec, "schedulingGates")
        .iter()
        .find(|g| !old_gates.contains(g))
    {
        Some(gate) => {
            let msg = format!(
                "only deletion is allowed, but found new scheduling gate '{}'",
                str_at(gate, "name")
            );
            errs.push(FieldError::forbidden("spec.schedulingGates", &msg));
        }
        None => {
            take_old("schedulingGates");
        }
    }
    for key in ["containers", "initContainers"] {
        let olds = arr_at(old, key);
        if let Some(list) = m
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .filter(|l| l.len() == olds.len())
        {
            for (c, was) in list.iter_mut().zip(olds) {
                if let (Some(c), Some(image)) = (c.as_object_mut(), was.get("image")) {
                    c.insert("image".into(), image.clone());
                }
            }
        }
    }
    if !same(&munged, old) {
        let mut lines = Vec::new();
        diff(&normalized(old), &normalized(&munged), "spec", &mut lines);
        let msg = format!(
            "pod updates may not change fields other than {UPDATABLE_POD_FIELDS}\n{}",
            lines.join("\n")
        );
        errs.push(FieldError::forbidden("spec", &msg));
    }
}

/// Leaf-level differences, as `- path: old` / `+ path: new` lines.
fn diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    const MAX_LINES: usize = 20;
    if out.len() >= MAX_LINES || old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff(
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    &at(path, k),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &idx(path, i), out);
            }
        }
        _ => {
            if !old.is_null() {
                out.push(format!("- {path}: {old}"));
            }
            if !new.is_null() {
                out.push(format!("+ {path}: {new}"));
            }
        }
    }
}
