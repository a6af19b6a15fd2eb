//! What happens to an object between the request body and the store, as
//! upstream's REST strategies: decoding (JSON, YAML or protobuf, strict field
//! validation), version conversion, defaulting, system metadata (uid,
//! timestamps, generation), status handling per subresource, validation.

use serde_json::{json, Map, Value};

use super::registry::{self, Resource};
use super::status::ApiError;
use super::{convert, defaults, protobuf, service_strategy, validation};

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: everything but `.status` (for kinds with a status subresource).
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
    /// The namespace `/finalize` subresource: only `spec.finalizers`.
    Finalize,
    /// A system write of spec and status together (pod binding); update-only
    /// validation rules such as pod spec immutability do not apply.
    Whole,
}

/// `fieldValidation` query values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown or duplicate fields fail the request (400).
    Strict,
    /// Unknown fields are dropped with a warning header (the default).
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query value; anything unknown is a 400 as upstream.
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}; expected one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Decodes a request body as JSON, YAML or Kubernetes protobuf (by content type).
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let value: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?
    } else if content_type.contains("protobuf") {
        protobuf::decode_object(body).map_err(|e| {
            if e.is_unsupported() {
                ApiError::new(415, "UnsupportedMediaType", e.to_string())
            } else {
                ApiError::bad_request(format!(
                    "the body of the request could not be decoded as protobuf: {e}"
                ))
            }
        })?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(value)
}

/// RFC 3339 time in seconds, as Kubernetes writes metadata timestamps.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// True for kinds whose writes bump `metadata.generation` on spec changes.
fn tracks_generation(resource: &Resource) -> bool {
    matches!(
        resource.kind,
        "Pod"
            | "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "HorizontalPodAutoscaler"
            | "Service"
            | "PodDisruptionBudget"
    )
}

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Checks apiVersion/kind against the URL's resource and fills them if absent.
fn check_type(resource: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let want = resource.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(want),
        Some(v) if v == want => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(resource.kind),
        Some(k) if k == resource.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )))
        }
    }
    Ok(())
}

/// Converts a request object of `resource`'s version to the storage version.
pub fn to_storage(resource: &Resource, obj: Value) -> Value {
    if resource.kind == "HorizontalPodAutoscaler" && resource.version == "v1" {
        convert::hpa_v1_to_v2(obj)
    } else {
        obj
    }
}

/// Converts a stored object to the version `resource` serves.
pub fn from_storage(resource: &Resource, obj: Value) -> Value {
    if served_as_stored(resource) {
        obj
    } else {
        convert::hpa_v2_to_v1(obj)
    }
}

/// Whether `resource` is served exactly as stored (no version conversion).
pub fn served_as_stored(resource: &Resource) -> bool {
    !(resource.kind == "HorizontalPodAutoscaler" && resource.version == "v1")
}

/// Decodes through the typed struct, applying the field validation policy.
/// Returns the canonical object and warnings.
fn canonicalize(
    resource: &Resource,
    obj: Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let canonical = (resource.codec)(obj.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {}",
            resource.kind, resource.version, resource.kind, e
        ))
    })?;
    let unknown = if fv == FieldValidation::Ignore {
        vec![]
    } else {
        validation::unknown_fields(&obj, &canonical)
    };
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match fv {
            FieldValidation::Strict => {
                let list = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect::<Vec<_>>();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")))
            }
            FieldValidation::Ignore => {}
        }
    }
    Ok((canonical, warnings))
}

fn random_suffix() -> String {
    use rand::Rng;
    // Upstream's alphabet avoids vowels and look-alike characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The status an object starts with, as upstream's PrepareForCreate.
fn initial_status(resource: &Resource, obj: &Value) -> Option<Value> {
    match resource.kind {
        "Pod" => Some(json!({"phase": "Pending", "qosClass": qos_class(obj)})),
        "Service" => Some(json!({"loadBalancer": {}})),
        "Namespace" => Some(json!({"phase": "Active"})),
        "Node" => None,
        _ if resource.has(registry::Subresource::Status) => Some(json!({})),
        _ => None,
    }
}

/// Pod QoS class from container requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c["resources"]["requests"].as_object();
        let lim = c["resources"]["limits"].as_object();
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            let r = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed && !containers.is_empty()) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Prepares a new object for storage. `namespace` is the URL's namespace.
pub fn prepare_create(
    resource: &Resource,
    namespace: Option<&str>,
    mut obj: Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    check_type(resource, &mut obj)?;
    {
        let m = meta(&mut obj);
        if resource.namespaced {
            let ns = namespace.unwrap_or_default();
            match m.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(ns));
                }
                Some(n) if n == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
            }
        } else {
            m.remove("namespace");
        }
        let name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            if let Some(prefix) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                // As upstream: the prefix is cut to 58 characters so the name fits 63.
                let prefix: String = prefix.chars().take(58).collect();
                let generated = format!("{prefix}{}", random_suffix());
                m.insert("name".into(), json!(generated));
            }
        }
        for key in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            m.remove(key);
        }
    }
    let obj = to_storage(resource, obj);
    let storage = registry::storage_resource(resource.storage).unwrap_or(resource);
    let (mut obj, warnings) = canonicalize(storage, obj, fv)?;
    defaults::apply(storage, &mut obj);
    if let Some(status) = initial_status(storage, &obj) {
        obj["status"] = status;
    }
    let m = meta(&mut obj);
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    if tracks_generation(storage) {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if storage.kind == "Job" {
        generate_job_selector(&mut obj);
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let errors = validation::validate(storage, &obj, None);
    if !errors.is_empty() {
        return Err(ApiError::invalid(resource, &name, &errors));
    }
    Ok((obj, warnings))
}

/// Prepares an update of `old` (stored form) to `new` (request form) in `scope`.
pub fn prepare_update(
    resource: &Resource,
    scope: Scope,
    old: &Value,
    mut new: Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    check_type(resource, &mut new)?;
    let name = old["metadata"]["name"].as_str().unwrap_or("").to_string();
    let new_name = new["metadata"]["name"].as_str().unwrap_or("");
    if !new_name.is_empty() && new_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        )));
    }
    let new = to_storage(resource, new);
    let storage = registry::storage_resource(resource.storage).unwrap_or(resource);
    let (mut new, warnings) = canonicalize(storage, new, fv)?;
    if storage.kind == "Service" {
        service_strategy::keep_allocations(old, &mut new);
        service_strategy::drop_type_dependent_fields(old, &mut new);
    }
    defaults::apply(storage, &mut new);
    let has_status = storage.has(registry::Subresource::Status);
    match scope {
        Scope::Status => {
            // Only status changes; metadata and spec stay as stored.
            let status = new.get("status").cloned();
            let mut merged = old.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    if let Some(o) = merged.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            new = merged;
        }
        Scope::Finalize => {
            let finalizers = new["spec"].get("finalizers").cloned();
            let mut merged = old.clone();
            if !merged["spec"].is_object() {
                merged["spec"] = json!({});
            }
            match finalizers {
                Some(f) => merged["spec"]["finalizers"] = f,
                None => {
                    if let Some(o) = merged["spec"].as_object_mut() {
                        o.remove("finalizers");
                    }
                }
            }
            new = merged;
        }
        Scope::Main if has_status => match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        },
        Scope::Main | Scope::Whole => {}
    }
    // System metadata is the server's, whatever the client sent.
    let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
    let m = meta(&mut new);
    for key in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
        "generation",
    ] {
        match old_meta.get(key) {
            Some(v) => m.insert(key.into(), v.clone()),
            None => m.remove(key),
        };
    }
    m.remove("resourceVersion");
    m.remove("selfLink");
    if tracks_generation(storage) && scope == Scope::Main && spec_changed(old, &new) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        meta(&mut new).insert("generation".into(), json!(g));
    }
    let old_for_validation = if scope == Scope::Whole {
        None
    } else {
        Some(old)
    };
    let errors = validation::validate(storage, &new, old_for_validation);
    if !errors.is_empty() {
        return Err(ApiError::invalid(resource, &name, &errors));
    }
    Ok((new, warnings))
}

/// As upstream's Job strategy: unless `spec.manualSelector` is true, the
/// selector is the job's controller-uid and the template carries the
/// matching labels (so a Job's pods never match another Job).
fn generate_job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == json!(true) {
        return;
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    if !job["spec"]["template"]["metadata"].is_object() {
        job["spec"]["template"]["metadata"] = json!({});
    }
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
    ] {
        labels[k] = json!(v);
    }
}

/// Adds upstream's DefaultTolerationSeconds tolerations to a pod: NoExecute
/// for `node.kubernetes.io/not-ready` and `unreachable`, unless the pod
/// already tolerates them, so the node lifecycle controller evicts pods from
/// a lost node after `seconds`.
pub fn add_default_tolerations(pod: &mut Value, seconds: i64) {
    if !pod["spec"].is_object() {
        return;
    }
    let mut list = pod["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect_ok = matches!(t["effect"].as_str(), None | Some("") | Some("NoExecute"));
            let key_ok = t["key"].as_str() == Some(key)
                || (t["key"].as_str().unwrap_or("").is_empty() && t["operator"] == "Exists");
            effect_ok && key_ok
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    pod["spec"]["tolerations"] = json!(list);
}

/// True when anything but metadata and status differs.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// The stored object with its resourceVersion, as the client sees it.
pub fn with_resource_version(mut obj: Value, revision: i64) -> Value {
    meta(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
    obj
}

/// Bytes to store: the object without its resourceVersion (the store's revision is authoritative).
pub fn to_bytes(obj: &Value) -> bytes::Bytes {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    bytes::Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes() {
        let be = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&be), "BestEffort");
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn status_scope_changes_only_status() {
        let deploy = registry::find("apps", "v1", "deployments").unwrap();
        let old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "n", "uid": "u", "generation": 3, "labels": {"a": "b"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 0}});
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        new["status"]["replicas"] = json!(1);
        new["metadata"]["labels"] = json!({"x": "y"});
        let (out, _) = prepare_update(
            deploy,
            Scope::Status,
            &old,
            new.clone(),
            FieldValidation::Strict,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], json!(1));
        assert_eq!(out["status"]["replicas"], json!(1));
        let (out, _) =
            prepare_update(deploy, Scope::Main, &old, new, FieldValidation::Strict).unwrap();
        assert_eq!(out["spec"]["replicas"], json!(5));
        assert_eq!(out["status"]["replicas"], json!(0));
        assert_eq!(out["metadata"]["generation"], json!(4));
        assert_eq!(out["metadata"]["uid"], json!("u"));
    }
}
