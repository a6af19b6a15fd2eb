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
use super::status::ApiError;
use super::strategy::{self, Scope};

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
                patch::apply("Scale", current_scale, ty, &req.body)
                    .map_err(|e| handlers::patch_error(&e))
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
    guaranteed_update(server, &pod_req, Scope::Whole, |current| {
        let bound = current["spec"]["nodeName"].as_str().unwrap_or("");
        if !bound.is_empty() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{pod_name}\": pod {pod_name} is already assigned to node \"{bound}\""),
            ));
        }
        if current["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::new(409, "Conflict", format!("pod {pod_name} is being deleted, cannot be assigned to a host")));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        let conditions = next["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": strategy::now_rfc3339()}));
        next["status"]["conditions"] = json!(conditions);
        Ok(next)
    })
    .await
    .map_err(|e| if e.code == 404 { ApiError::not_found(req.resource, &pod_name) } else { e })?;
    Ok(respond(StatusCode::CREATED, &handlers::success(), &[]))
}
