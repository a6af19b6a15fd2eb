//! `POST pods/{name}/eviction`: a delete that respects PodDisruptionBudgets,
//! as upstream's EvictionREST. A pod that already left the budget's count
//! (Pending, terminal, being deleted) is deleted directly; otherwise the one
//! budget selecting it must allow a disruption, and the approval is recorded
//! in the budget's `status.disruptedPods` (a compare-and-swap on the budget,
//! so concurrent evictions — `kubectl drain` sends them in parallel — cannot
//! both spend the last allowed disruption) before the pod is deleted.
//!
//! Upstream reads the budget's status as the disruption controller last
//! wrote it; here the status is recomputed at eviction time (disruption.rs)
//! and written back, so it is current whenever an eviction looks at it
//! (disruption_status.rs keeps it current in between).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use serde_json::{json, Value};

use super::delete::{delete_one, options_from, DeleteOptions};
use super::disruption::{self, Budget};
use super::handlers::{read, respond, ResourceRequest, MAX_RETRIES};
use super::registry;
use super::server::ApiServer;
use super::status::{self, ApiError};
use super::strategy;
use crate::store::StoreError;

/// Upstream's message when a budget does not allow the eviction.
pub const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Serves `POST .../pods/{name}/eviction`.
pub(super) async fn evict(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    let eviction = decode(req)?;
    let empty = json!({});
    let delete_body = eviction
        .get("deleteOptions")
        .filter(|d| d.is_object())
        .unwrap_or(&empty);
    let dry_run = req.dry_run()
        || delete_body["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let mut query = req.query.clone();
    if dry_run {
        query.insert("dryRun".into(), "All".into());
    }
    let pod_req = ResourceRequest::new(
        req.resource,
        req.namespace.as_deref(),
        req.name.as_deref(),
        None,
        query,
        req.headers,
        Bytes::new(),
    );
    let opts = options_from(delete_body, &pod_req)?;
    let eviction = Eviction {
        server,
        pod_req: &pod_req,
        opts,
        dry_run,
    };
    for _ in 0..MAX_RETRIES {
        match eviction.attempt().await? {
            Outcome::Evicted => {
                return Ok(respond(StatusCode::CREATED, &status::success(None), &[]))
            }
            Outcome::Retry => continue,
        }
    }
    Err(ApiError::new(
        504,
        "Timeout",
        format!(
            "couldn't evict pod {:?} due to conflicts",
            pod_req.object_name()
        ),
    ))
}

/// Sets the status the budget has now, computed as an eviction would: on
/// create (so `kubectl get pdb` shows allowed disruptions from the start) and
/// by the refresher (disruption_status.rs) as its pods change.
pub(super) async fn compute_status(
    server: &ApiServer,
    namespace: Option<&str>,
    pdb: &mut Value,
) -> Result<(), ApiError> {
    let namespace = namespace.unwrap_or("default");
    let pods = selected_pods(server, namespace, pdb).await?;
    let scale = if disruption::needs_scale(pdb) {
        expected_scale(server, namespace, &pods).await
    } else {
        Ok(0)
    };
    let now = Timestamp::now();
    match disruption::compute(pdb, &pods, || scale, now) {
        Ok(budget) => disruption::set_status(pdb, &budget, now),
        Err(message) => disruption::set_failed(pdb, &message, now),
    }
    Ok(())
}

/// The pods of `namespace` the budget selects.
async fn selected_pods(
    server: &ApiServer,
    namespace: &str,
    pdb: &Value,
) -> Result<Vec<Value>, ApiError> {
    let pods = registry::find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not served"))?;
    let list = server
        .store
        .list(&pods.prefix(Some(namespace)), None, 0)
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|p| disruption::selects(pdb, p))
        .collect())
}

/// Decodes and checks the Eviction body (policy/v1, or policy/v1beta1 as
/// upstream also accepts).
fn decode(req: &ResourceRequest<'_>) -> Result<Value, ApiError> {
    let body = req.decode()?;
    let api_version = body["apiVersion"].as_str().unwrap_or("");
    if body["kind"] != "Eviction" || !matches!(api_version, "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "not a Eviction object: {}, Kind={}",
            if api_version.is_empty() {
                "<no apiVersion>"
            } else {
                api_version
            },
            body["kind"].as_str().unwrap_or("")
        )));
    }
    // v1beta1 has v1's shape; the typed decode checks fields, not the version.
    let mut as_v1 = body.clone();
    as_v1["apiVersion"] = json!("policy/v1");
    let typed: k8s_openapi::api::policy::v1::Eviction = serde_path_to_error::deserialize(as_v1)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Eviction in version {api_version:?} cannot be handled: {}: {}",
                e.path(),
                e.inner()
            ))
        })?;
    if typed.metadata.name.as_deref() != Some(req.object_name()) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    Ok(body)
}

/// One eviction request.
struct Eviction<'a> {
    server: &'a Arc<ApiServer>,
    pod_req: &'a ResourceRequest<'a>,
    opts: DeleteOptions,
    dry_run: bool,
}

enum Outcome {
    Evicted,
    /// A compare-and-swap was lost: look again.
    Retry,
}

impl Eviction<'_> {
    /// One look at the pod and its budget; deletes the pod when allowed.
    async fn attempt(&self) -> Result<Outcome, ApiError> {
        let (pod, revision) = read(self.server, self.pod_req).await?;
        if can_ignore_budget(&pod) {
            // Pin the revision so a pod turning ready meanwhile is looked at again.
            let pin = !disruption::is_terminating(&pod) && !is_terminal(&pod);
            return self.delete(pin.then_some(revision), true).await;
        }
        let namespace = self.pod_req.namespace.as_deref().unwrap_or("default");
        let mut budgets = self.budgets_of(namespace, &pod).await?;
        let (mut pdb, pdb_revision) = match budgets.len() {
            0 => return self.delete(None, false).await,
            1 => budgets.remove(0),
            _ => return Err(more_than_one_budget()),
        };
        let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
        let pods = selected_pods(self.server, namespace, &pdb).await?;
        let scale = if disruption::needs_scale(&pdb) {
            expected_scale(self.server, namespace, &pods).await
        } else {
            Ok(0)
        };
        let now = Timestamp::now();
        let mut budget = match disruption::compute(&pdb, &pods, || scale, now) {
            Ok(b) => b,
            Err(message) => {
                disruption::set_failed(&mut pdb, &message, now);
                self.write_budget(namespace, &pdb, pdb_revision).await?;
                return Err(too_many_requests(&pdb_name, &pdb["status"]));
            }
        };
        let always_allow = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        if !disruption::is_ready(&pod)
            && (always_allow
                || (budget.current_healthy >= budget.desired_healthy && budget.desired_healthy > 0))
        {
            // An unready pod does not count as healthy: evicting it costs the
            // budget nothing, unless it turns ready first (hence the pin).
            return self.delete(Some(revision), false).await.map_err(|e| {
                if e.code == 409 && self.opts.precondition_rv.is_none() {
                    still_processing(&pdb_name)
                } else {
                    e
                }
            });
        }
        if budget.disruptions_allowed <= 0 {
            disruption::set_status(&mut pdb, &budget, now);
            // Best effort: the refusal stands whether or not the refresh is stored.
            let _ = self.write_budget(namespace, &pdb, pdb_revision).await;
            return Err(too_many_requests(&pdb_name, &pdb["status"]));
        }
        approve(&mut budget, self.pod_req.object_name(), now);
        disruption::set_status(&mut pdb, &budget, now);
        if !self.write_budget(namespace, &pdb, pdb_revision).await? {
            return Ok(Outcome::Retry);
        }
        self.delete(None, false).await
    }

    /// Deletes the pod with the request's options, pinned to `pin` unless the
    /// request pins a revision itself; a lost pin means another look when
    /// `retry_conflict`, else the 409.
    async fn delete(&self, pin: Option<i64>, retry_conflict: bool) -> Result<Outcome, ApiError> {
        let mut opts = self.opts.clone();
        let user_pinned = opts.precondition_rv.is_some();
        if !user_pinned {
            opts.precondition_rv = pin.map(|r| r.to_string());
        }
        match delete_one(self.server, self.pod_req, &opts).await {
            Ok(_) => Ok(Outcome::Evicted),
            Err(e) if e.code == 409 && !user_pinned && pin.is_some() && retry_conflict => {
                Ok(Outcome::Retry)
            }
            Err(e) => Err(e),
        }
    }

    /// The budgets in `namespace` selecting `pod`, with their revisions.
    async fn budgets_of(
        &self,
        namespace: &str,
        pod: &Value,
    ) -> Result<Vec<(Value, i64)>, ApiError> {
        let resource = pdb_resource()?;
        let list = self
            .server
            .store
            .list(&resource.prefix(Some(namespace)), None, 0)
            .await?;
        Ok(list
            .items
            .iter()
            .filter_map(|kv| {
                let obj: Value = serde_json::from_slice(&kv.value).ok()?;
                disruption::selects(&obj, pod).then_some((obj, kv.mod_revision))
            })
            .collect())
    }

    /// Stores the budget's new status if it is unchanged since `revision`;
    /// false when another writer got there first. Dry runs store nothing.
    async fn write_budget(
        &self,
        namespace: &str,
        pdb: &Value,
        revision: i64,
    ) -> Result<bool, ApiError> {
        if self.dry_run {
            return Ok(true);
        }
        let resource = pdb_resource()?;
        let name = pdb["metadata"]["name"].as_str().unwrap_or("");
        let key = resource.key(Some(namespace), name);
        match self
            .server
            .store
            .update(&key, strategy::to_bytes(pdb), revision)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(ApiError::from_store(e, resource, name)),
        }
    }
}

fn pdb_resource() -> Result<&'static registry::Resource, ApiError> {
    registry::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))
}

/// Spends one allowed disruption on `pod`.
fn approve(budget: &mut Budget, pod: &str, now: Timestamp) {
    budget.disruptions_allowed -= 1;
    budget
        .disrupted_pods
        .insert(pod.to_string(), json!(disruption::rfc3339(now)));
}

/// Upstream's `canIgnorePDB`: the pod no longer counts (terminal, Pending,
/// or already being deleted).
fn can_ignore_budget(pod: &Value) -> bool {
    is_terminal(pod)
        || matches!(pod["status"]["phase"].as_str(), None | Some("Pending"))
        || disruption::is_terminating(pod)
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// 429 with the budget's numbers, as `checkAndDecrement` answers.
fn too_many_requests(pdb: &str, status: &Value) -> ApiError {
    let cause = format!(
        "The disruption budget {pdb} needs {} healthy pods and has {} currently",
        status["desiredHealthy"].as_i64().unwrap_or(0),
        status["currentHealthy"].as_i64().unwrap_or(0)
    );
    ApiError {
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]})),
        ..ApiError::new(429, "TooManyRequests", VIOLATION)
    }
}

/// 429 when an unready pod turned ready while it was being evicted.
fn still_processing(pdb: &str) -> ApiError {
    let cause = format!("The disruption budget {pdb} is still being processed by the server.");
    ApiError {
        details: Some(json!({
            "causes": [{"reason": "DisruptionBudget", "message": cause}],
            "retryAfterSeconds": 10,
        })),
        ..ApiError::new(429, "TooManyRequests", VIOLATION)
    }
}

/// Upstream answers a Status with code 500 and no reason.
fn more_than_one_budget() -> ApiError {
    ApiError::new(
        500,
        "",
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
    )
}

/// The sum of the replicas of the pods' controllers (upstream's
/// `getExpectedScale`): ReplicaSets (their Deployment's replicas when a
/// Deployment owns them) and StatefulSets.
async fn expected_scale(
    server: &ApiServer,
    namespace: &str,
    pods: &[Value],
) -> Result<i64, String> {
    let mut controllers: HashMap<String, i64> = HashMap::new();
    let mut looked_up: BTreeMap<(String, String), Option<(String, i64)>> = BTreeMap::new();
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let owner = controller_ref(pod)
            .ok_or_else(|| format!("found no controller ref for pod {name:?}"))?;
        let key = (
            owner["kind"].as_str().unwrap_or("").to_string(),
            owner["name"].as_str().unwrap_or("").to_string(),
        );
        if !looked_up.contains_key(&key) {
            let found = scale_of(server, namespace, &key.0, &key.1, &owner["uid"]).await;
            looked_up.insert(key.clone(), found);
        }
        let (uid, replicas) = looked_up[&key]
            .clone()
            .ok_or_else(|| format!("found no controllers for pod {name:?}"))?;
        controllers.insert(uid, replicas);
    }
    Ok(controllers.values().sum())
}

/// The controller (uid, replicas) a pod's controller reference leads to.
async fn scale_of(
    server: &ApiServer,
    namespace: &str,
    kind: &str,
    name: &str,
    uid: &Value,
) -> Option<(String, i64)> {
    let plural = match kind {
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        _ => return None,
    };
    let owner = get(server, plural, namespace, name).await?;
    if &owner["metadata"]["uid"] != uid {
        return None;
    }
    if kind == "ReplicaSet" {
        if let Some(deploy_ref) = controller_ref(&owner).filter(|r| r["kind"] == "Deployment") {
            let deploy_name = deploy_ref["name"].as_str().unwrap_or("");
            let deployment = get(server, "deployments", namespace, deploy_name).await?;
            if deployment["metadata"]["uid"] != deploy_ref["uid"] {
                return None;
            }
            return Some(uid_and_replicas(&deployment));
        }
    }
    Some(uid_and_replicas(&owner))
}

fn uid_and_replicas(obj: &Value) -> (String, i64) {
    (
        obj["metadata"]["uid"].as_str().unwrap_or("").to_string(),
        obj["spec"]["replicas"].as_i64().unwrap_or(1),
    )
}

async fn get(server: &ApiServer, plural: &str, namespace: &str, name: &str) -> Option<Value> {
    let resource = registry::find("apps", "v1", plural)?;
    let kv = server
        .store
        .get(&resource.key(Some(namespace), name))
        .await
        .ok()??;
    serde_json::from_slice(&kv.value).ok()
}

fn controller_ref(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}
