//! Subresources with their own shapes: `scale` (an autoscaling/v1 Scale view
//! of `.spec.replicas`) and `binding` (the scheduler's write of `.spec.nodeName`).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::handlers::{self, guaranteed_update, read, respond, ResourceRequest};
use super::patch::{self, PatchType};
use super::selector::LabelSelector;
use super::server::ApiServer;
use super::status::{self, ApiError};
use super::strategy::{self, Scope};
use crate::store::StoreError;

/// The Scale view of a scalable object.
fn scale_of(obj: &Value) -> Value {
    let selector = LabelSelector::from_json(&obj["spec"]["selector"])
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// GET, PUT and PATCH on `<resource>/<name>/scale`.
pub async fn scale(
    server: &Arc<ApiServer>,
    method: &Method,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    if method == Method::GET {
        let (obj, _) = read(server, req).await?;
        return Ok(respond(StatusCode::OK, &scale_of(&obj), &[]));
    }
    let new_scale = |current_scale: &Value| -> Result<Value, ApiError> {
        match method.as_str() {
            "PUT" => req.decode(),
            "PATCH" => {
                let ct = req.content_type();
                let ty = PatchType::from_content_type(ct)
                    .filter(|t| *t != PatchType::Apply)
                    .ok_or_else(|| {
                        ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!("unsupported patch type {ct}"),
                        )
                    })?;
                patch::apply("Scale", current_scale, ty, &req.body).map_err(|e| ApiError::from(&e))
            }
            m => Err(ApiError::method_not_allowed(m)),
        }
    };
    let (obj, _) = guaranteed_update(server, req, Scope::Main, |current| {
        let mut current_scale = scale_of(current);
        if let Some(m) = current_scale["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let wanted = new_scale(&current_scale)?;
        let replicas = match &wanted["spec"]["replicas"] {
            Value::Null => 0,
            v => v
                .as_i64()
                .filter(|r| *r >= 0 && *r <= i64::from(i32::MAX))
                .ok_or_else(|| {
                    ApiError::invalid(
                        req.resource,
                        req.object_name(),
                        &[super::validation::FieldError {
                            reason: "FieldValueInvalid",
                            field: "spec.replicas".into(),
                            message: format!(
                                "Invalid value: {v}: must be greater than or equal to 0"
                            ),
                        }],
                    )
                })?,
        };
        let mut next = current.clone();
        next["spec"]["replicas"] = json!(replicas);
        next["metadata"]["resourceVersion"] = wanted["metadata"]["resourceVersion"].clone();
        if next["metadata"]["resourceVersion"].is_null() {
            if let Some(m) = next["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        Ok(next)
    })
    .await?;
    Ok(respond(StatusCode::OK, &scale_of(&obj), &[]))
}

/// POST `pods/<name>/binding` (or `namespaces/<ns>/bindings` with the pod in the body).
pub async fn binding(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    let body = req.decode()?;
    let pod_name = match name {
        Some(n) => n.to_string(),
        None => body["metadata"]["name"].as_str().unwrap_or("").to_string(),
    };
    if body["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != pod_name)
    {
        return Err(ApiError::bad_request(
            "the name of the binding does not match the pod",
        ));
    }
    let node = body["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            req.resource,
            &pod_name,
            &[super::validation::FieldError {
                reason: "FieldValueRequired",
                field: "target.name".into(),
                message: "Required value".into(),
            }],
        ));
    }
    let pod_req = ResourceRequest::new(
        req.resource,
        req.namespace.as_deref(),
        Some(&pod_name),
        None,
        req.query.clone(),
        req.headers,
        axum::body::Bytes::new(),
    );
    let binding = Binding {
        pod: &pod_name,
        node: &node,
        uid: body["metadata"]["uid"].as_str().filter(|u| !u.is_empty()),
        annotations: body["metadata"]["annotations"].as_object(),
    };
    assign(server, &pod_req, &binding).await?;
    Ok(respond(StatusCode::CREATED, &status::success(None), &[]))
}

/// What a Binding asks of its pod.
struct Binding<'a> {
    pod: &'a str,
    node: &'a str,
    uid: Option<&'a str>,
    annotations: Option<&'a serde_json::Map<String, Value>>,
}

/// Sets the pod's node as upstream's BindingREST does, straight on the
/// stored object: a binding only touches `spec.nodeName`, the Binding's
/// annotations and the PodScheduled condition, so the generic update's
/// decode/default/validate round trip of the whole pod (most of a binding's
/// cost under a scheduler burst) has nothing to check. Like upstream's
/// binding, it records no managedFields entry. Lost races are retried.
async fn assign(
    server: &ApiServer,
    pod_req: &ResourceRequest<'_>,
    binding: &Binding<'_>,
) -> Result<(), ApiError> {
    let key = pod_req.key();
    let name = binding.pod;
    for _ in 0..handlers::MAX_RETRIES {
        let current = server
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, pod_req.resource, name))?
            .ok_or_else(|| ApiError::not_found(pod_req.resource, name))?;
        let mut pod: Value = serde_json::from_slice(&current.value).map_err(|e| {
            ApiError::internal(format!("stored object {} is corrupt: {e}", current.key))
        })?;
        bind(&mut pod, binding)?;
        if pod_req.dry_run() {
            return Ok(());
        }
        let bytes = axum::body::Bytes::from(
            serde_json::to_vec(&pod).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        match server.store.update(&key, bytes, current.mod_revision).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, pod_req.resource, name)),
        }
    }
    Err(ApiError::conflict(pod_req.resource, name))
}

/// Applies `binding` to the stored `pod`, refusing a bound, deleted or
/// replaced pod with 409 as upstream does.
fn bind(pod: &mut Value, binding: &Binding<'_>) -> Result<(), ApiError> {
    let name = binding.pod;
    let conflict = |message: String| ApiError::new(409, "Conflict", message);
    if let Some(uid) = binding.uid {
        if pod["metadata"]["uid"].as_str() != Some(uid) {
            return Err(conflict(format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": the UID in the binding ({uid}) does not match the pod"
            )));
        }
    }
    let bound = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if !bound.is_empty() {
        return Err(conflict(format!(
            "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""
        )));
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return Err(conflict(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    if !pod["spec"].is_object() {
        pod["spec"] = json!({});
    }
    pod["spec"]["nodeName"] = json!(binding.node);
    if let Some(annotations) = binding.annotations.filter(|a| !a.is_empty()) {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        for (k, v) in annotations {
            pod["metadata"]["annotations"][k] = v.clone();
        }
    }
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conditions = pod["status"]["conditions"].take();
    let mut conditions: Vec<Value> = match conditions {
        Value::Array(c) => c
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect(),
        _ => Vec::new(),
    };
    conditions.push(json!({
        "type": "PodScheduled",
        "status": "True",
        "lastTransitionTime": strategy::now_rfc3339(),
    }));
    pod["status"]["conditions"] = json!(conditions);
    Ok(())
}
