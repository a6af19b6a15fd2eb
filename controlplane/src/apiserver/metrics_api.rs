//! `metrics.k8s.io/v1beta1` (what metrics-server serves upstream): PodMetrics
//! and NodeMetrics built on request from every node agent's `/stats/summary`
//! (see `skiff_nodeagent::metrics`), reached as for `pods/log` (see
//! [`super::podlog`]) with the caller's token. `kubectl top pods|nodes` and
//! autoscalers read these. Objects are not stored; a node whose agent does
//! not answer is left out, as are pods with a single reading so far.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::podlog::{agent_endpoint, fetch};
use super::registry;
use super::selector::LabelSelector;
use super::server::ApiServer;
use super::status::ApiError;

/// The API group.
pub const GROUP: &str = "metrics.k8s.io";
/// Its only version.
pub const VERSION: &str = "v1beta1";
/// How long an agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest summary read from an agent.
const MAX_SUMMARY: usize = 16 * 1024 * 1024;

fn group_body() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis` with this group added.
pub fn add_group(mut list: Value) -> Value {
    if let Some(groups) = list["groups"].as_array_mut() {
        groups.push(group_body());
    }
    list
}

fn resource_list() -> Value {
    let entry = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [entry("nodes", "NodeMetrics", false), entry("pods", "PodMetrics", true)],
    })
}

fn ok(v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// Serves `/apis/metrics.k8s.io/{rest…}`.
pub async fn serve(
    server: &Arc<ApiServer>,
    method: &Method,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let selector = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match rest {
        [] => {
            let mut g = group_body();
            g["kind"] = "APIGroup".into();
            g["apiVersion"] = "v1".into();
            Ok(ok(&g))
        }
        [VERSION] => Ok(ok(&resource_list())),
        [VERSION, "nodes"] => {
            let items = node_metrics(server, auth, None, &selector).await?;
            Ok(ok(&list("NodeMetricsList", items)))
        }
        [VERSION, "nodes", name] => node_metrics(server, auth, Some(name), &selector)
            .await?
            .pop()
            .map(|m| ok(&m))
            .ok_or_else(|| not_found("nodes", name)),
        [VERSION, "pods"] => {
            let items = pod_metrics(server, auth, None, None, &selector).await?;
            Ok(ok(&list("PodMetricsList", items)))
        }
        [VERSION, "namespaces", ns, "pods"] => {
            let items = pod_metrics(server, auth, Some(ns), None, &selector).await?;
            Ok(ok(&list("PodMetricsList", items)))
        }
        [VERSION, "namespaces", ns, "pods", name] => {
            pod_metrics(server, auth, Some(ns), Some(name), &selector)
                .await?
                .pop()
                .map(|m| ok(&m))
                .ok_or_else(|| not_found("pods", name))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn not_found(plural: &str, name: &str) -> ApiError {
    ApiError {
        details: Some(json!({"name": name, "group": GROUP, "kind": plural})),
        ..ApiError::new(
            404,
            "NotFound",
            format!("{plural}.{GROUP} \"{name}\" not found"),
        )
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// The store prefix of a core resource (in one namespace or all).
fn prefix(plural: &str, ns: Option<&str>) -> Result<String, ApiError> {
    let resource = registry::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no {plural} resource")))?;
    Ok(resource.key(ns, ""))
}

/// Stored objects under `prefix`.
async fn stored(server: &ApiServer, prefix: &str) -> Result<Vec<Value>, ApiError> {
    let page = server.store.list(prefix, None, 0).await?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Summaries of the nodes, by node name.
async fn summaries(nodes: &[Value], auth: &str) -> HashMap<String, Value> {
    let asks = nodes.iter().filter_map(|node| {
        let name = node["metadata"]["name"].as_str()?.to_string();
        let (addr, port) = agent_endpoint(node)?;
        Some(async move {
            let got = tokio::time::timeout(AGENT_TIMEOUT, async {
                let resp = fetch(&addr, port, "/stats/summary", auth).await.ok()?;
                let body = axum::body::to_bytes(resp.into_body(), MAX_SUMMARY)
                    .await
                    .ok()?;
                serde_json::from_slice::<Value>(&body).ok()
            })
            .await
            .ok()
            .flatten();
            if got.is_none() {
                tracing::debug!("no resource usage from the agent of node {name}");
            }
            got.map(|s| (name, s))
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `(usage, timestamp, window)` of a summary entry with a CPU rate.
fn usage(entry: &Value) -> Option<(Value, Value, Value)> {
    let cpu = &entry["cpu"];
    let nano_cores = cpu["usageNanoCores"].as_u64()?;
    let memory = entry["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Some((
        json!({"cpu": format!("{nano_cores}n"), "memory": format!("{}Ki", memory / 1024)}),
        cpu["time"].clone(),
        cpu["window"].clone(),
    ))
}

fn metadata(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let mut out = json!({"name": m["name"], "creationTimestamp": m["creationTimestamp"]});
    if m["namespace"].is_string() {
        out["namespace"] = m["namespace"].clone();
    }
    if m["labels"].is_object() {
        out["labels"] = m["labels"].clone();
    }
    out
}

async fn node_metrics(
    server: &ApiServer,
    auth: &str,
    name: Option<&str>,
    selector: &LabelSelector,
) -> Result<Vec<Value>, ApiError> {
    let nodes: Vec<Value> = stored(server, &prefix("nodes", None)?)
        .await?
        .into_iter()
        .filter(|n| name.is_none_or(|want| n["metadata"]["name"] == want))
        .filter(|n| selector.matches_object(n))
        .collect();
    let summaries = summaries(&nodes, auth).await;
    let mut items: Vec<Value> = nodes
        .iter()
        .filter_map(|node| {
            let summary = summaries.get(node["metadata"]["name"].as_str()?)?;
            let (usage, timestamp, window) = usage(&summary["node"])?;
            Some(json!({
                "kind": "NodeMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": metadata(node),
                "timestamp": timestamp,
                "window": window,
                "usage": usage,
            }))
        })
        .collect();
    items.sort_by_key(|m| m["metadata"]["name"].as_str().map(str::to_string));
    Ok(items)
}

async fn pod_metrics(
    server: &ApiServer,
    auth: &str,
    ns: Option<&str>,
    name: Option<&str>,
    selector: &LabelSelector,
) -> Result<Vec<Value>, ApiError> {
    let pods: Vec<Value> = stored(server, &prefix("pods", ns)?)
        .await?
        .into_iter()
        .filter(|p| name.is_none_or(|want| p["metadata"]["name"] == want))
        .filter(|p| selector.matches_object(p))
        .filter(|p| p["spec"]["nodeName"].is_string())
        .collect();
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    let node_names: Vec<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    let nodes: Vec<Value> = stored(server, &prefix("nodes", None)?)
        .await?
        .into_iter()
        .filter(|n| {
            n["metadata"]["name"]
                .as_str()
                .is_some_and(|n| node_names.contains(&n))
        })
        .collect();
    let summaries = summaries(&nodes, auth).await;
    // Pod UID → its summary entry.
    let by_uid: HashMap<&str, &Value> = summaries
        .values()
        .flat_map(|s| s["pods"].as_array().into_iter().flatten())
        .filter_map(|p| Some((p["podRef"]["uid"].as_str()?, p)))
        .collect();
    let mut items: Vec<Value> = pods
        .iter()
        .filter_map(|pod| {
            let entry = by_uid.get(pod["metadata"]["uid"].as_str()?)?;
            let (_, timestamp, window) = usage(entry)?;
            let containers: Vec<Value> = entry["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let (usage, _, _) = usage(c)?;
                    Some(json!({"name": c["name"], "usage": usage}))
                })
                .collect();
            Some(json!({
                "kind": "PodMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": metadata(pod),
                "timestamp": timestamp,
                "window": window,
                "containers": containers,
            }))
        })
        .collect();
    items.sort_by_key(|m| {
        (
            m["metadata"]["namespace"].as_str().map(str::to_string),
            m["metadata"]["name"].as_str().map(str::to_string),
        )
    });
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_the_group() {
        let list = add_group(json!({"kind": "APIGroupList", "groups": [{"name": "apps"}]}));
        assert_eq!(list["groups"][1]["name"], GROUP);
        assert_eq!(
            list["groups"][1]["preferredVersion"]["groupVersion"],
            "metrics.k8s.io/v1beta1"
        );
        let resources = resource_list();
        let kinds: Vec<&str> = resources["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["NodeMetrics", "PodMetrics"]);
    }

    #[test]
    fn usage_needs_a_cpu_rate_and_formats_quantities() {
        let entry = json!({
            "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 250_000_000u64, "window": "5s"},
            "memory": {"workingSetBytes": 2_097_152u64},
        });
        let (u, time, window) = usage(&entry).unwrap();
        assert_eq!(u, json!({"cpu": "250000000n", "memory": "2048Ki"}));
        assert_eq!(time, "2026-01-01T00:00:00Z");
        assert_eq!(window, "5s");
        assert!(usage(&json!({"cpu": {"usageCoreNanoSeconds": 5}})).is_none());
    }
}
