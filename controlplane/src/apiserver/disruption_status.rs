//! Keeps PodDisruptionBudget status current between evictions — the job of
//! upstream's disruption controller — from inside the API server: it follows
//! the store's pod and budget changes and recomputes (disruption.rs, with the
//! same lookups as eviction.rs) each budget a change may affect, so
//! `kubectl get pdb` shows allowed disruptions as pods come and go.
//!
//! Cheap when unused: a pod change is only decoded when its namespace has a
//! budget. Its own status writes do not wake it (only spec changes of a budget
//! do); a full pass every [`RESYNC`] catches controller scale changes, which
//! it does not follow.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::disruption;
use super::eviction::compute_status;
use super::registry;
use super::server::ApiServer;
use super::strategy;
use crate::store::{Event, EventKind, StoreError};

/// How long changes gather before the affected budgets are recomputed.
const BATCH: Duration = Duration::from_millis(300);
/// How often every budget is recomputed regardless.
const RESYNC: Duration = Duration::from_secs(30);
/// Pause before following the store again after an error.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the refresher; it runs as long as the process.
pub fn spawn(server: Arc<ApiServer>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&server).await {
                tracing::debug!("disruption budget status: following the store again after: {e}");
            }
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// Budgets by namespace: name → selector.
type Budgets = HashMap<String, HashMap<String, Value>>;

fn pdb_prefix() -> String {
    registry::find("policy", "v1", "poddisruptionbudgets")
        .map(|r| r.prefix(None))
        .unwrap_or_else(|| "/registry/poddisruptionbudgets/".into())
}

fn pod_prefix() -> String {
    registry::find("", "v1", "pods")
        .map(|r| r.prefix(None))
        .unwrap_or_else(|| "/registry/pods/".into())
}

/// `(namespace, name)` of a namespaced key under `prefix`.
fn key_parts<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

/// Follows the store until it fails (e.g. the watch fell behind).
async fn follow(server: &ApiServer) -> Result<(), StoreError> {
    let pdbs_at = pdb_prefix();
    let pods_at = pod_prefix();
    let revision = server.store.current_revision().await?;
    let mut budgets = Budgets::new();
    let mut dirty = BTreeSet::new();
    for kv in server.store.list(&pdbs_at, None, 0).await?.items {
        if let (Some((ns, name)), Ok(obj)) = (
            key_parts(&pdbs_at, &kv.key),
            serde_json::from_slice::<Value>(&kv.value),
        ) {
            budgets
                .entry(ns.to_string())
                .or_default()
                .insert(name.to_string(), obj["spec"].clone());
            dirty.insert((ns.to_string(), name.to_string()));
        }
    }
    let mut pdb_events = server.store.watch(&pdbs_at, revision).await?;
    let mut pod_events = server.store.watch(&pods_at, revision).await?;
    let mut batch = tokio::time::interval(BATCH);
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            event = pdb_events.next() => {
                let event = event.ok_or_else(|| StoreError::Backend("budget watch ended".into()))??;
                budget_changed(&pdbs_at, &event, &mut budgets, &mut dirty);
            }
            event = pod_events.next() => {
                let event = event.ok_or_else(|| StoreError::Backend("pod watch ended".into()))??;
                pod_changed(&pods_at, &event, &budgets, &mut dirty);
            }
            _ = batch.tick() => {
                for (ns, name) in std::mem::take(&mut dirty) {
                    if !refresh(server, &ns, &name).await {
                        dirty.insert((ns, name));
                    }
                }
            }
            _ = resync.tick() => {
                for (ns, names) in &budgets {
                    dirty.extend(names.keys().map(|n| (ns.clone(), n.clone())));
                }
            }
        }
    }
}

/// Tracks budgets; a new budget or a spec change needs a recomputation, a
/// status write (ours or an eviction's) does not.
fn budget_changed(
    prefix: &str,
    event: &Event,
    budgets: &mut Budgets,
    dirty: &mut BTreeSet<(String, String)>,
) {
    let Some((ns, name)) = key_parts(prefix, &event.kv.key) else {
        return;
    };
    if event.kind == EventKind::Delete {
        if let Some(names) = budgets.get_mut(ns) {
            names.remove(name);
            if names.is_empty() {
                budgets.remove(ns);
            }
        }
        return;
    }
    let Ok(obj) = serde_json::from_slice::<Value>(&event.kv.value) else {
        return;
    };
    let spec = obj["spec"].clone();
    let names = budgets.entry(ns.to_string()).or_default();
    if names.get(name) != Some(&spec) {
        dirty.insert((ns.to_string(), name.to_string()));
    }
    names.insert(name.to_string(), spec);
}

/// Marks the budgets that select the pod before or after the change.
fn pod_changed(
    prefix: &str,
    event: &Event,
    budgets: &Budgets,
    dirty: &mut BTreeSet<(String, String)>,
) {
    let Some((ns, _)) = key_parts(prefix, &event.kv.key) else {
        return;
    };
    let Some(names) = budgets.get(ns) else {
        return;
    };
    let decode = |v: &[u8]| serde_json::from_slice::<Value>(v).ok();
    let versions: Vec<Value> = std::iter::once(decode(&event.kv.value))
        .chain(std::iter::once(
            event.prev.as_ref().and_then(|p| decode(&p.value)),
        ))
        .flatten()
        .collect();
    for (name, spec) in names {
        let pdb = serde_json::json!({"spec": spec});
        if versions.iter().any(|pod| disruption::selects(&pdb, pod)) {
            dirty.insert((ns.to_string(), name.clone()));
        }
    }
}

/// Recomputes one budget's status and stores it when it changed; false when
/// another write got there first (try again).
async fn refresh(server: &ApiServer, ns: &str, name: &str) -> bool {
    let Some(resource) = registry::find("policy", "v1", "poddisruptionbudgets") else {
        return true;
    };
    let key = resource.key(Some(ns), name);
    let Ok(Some(kv)) = server.store.get(&key).await else {
        return true;
    };
    let Ok(mut pdb) = serde_json::from_slice::<Value>(&kv.value) else {
        return true;
    };
    let before = pdb["status"].clone();
    if compute_status(server, Some(ns), &mut pdb).await.is_err() || pdb["status"] == before {
        return true;
    }
    match server
        .store
        .update(&key, strategy::to_bytes(&pdb), kv.mod_revision)
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => true,
        Err(StoreError::Conflict { .. }) => false,
        Err(e) => {
            tracing::debug!("disruption budget {ns}/{name}: status not stored: {e}");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;

    fn event(kind: EventKind, key: &str, value: Value, prev: Option<Value>) -> Event {
        let kv = |v: Value| KeyValue {
            key: key.into(),
            value: serde_json::to_vec(&v).unwrap_or_default().into(),
            create_revision: 1,
            mod_revision: 2,
        };
        Event {
            kind,
            kv: kv(value),
            prev: prev.map(kv),
        }
    }

    #[test]
    fn only_spec_changes_and_selected_pods_wake_a_budget() {
        let pdbs = "/registry/poddisruptionbudgets/";
        let pods = "/registry/pods/";
        let spec =
            serde_json::json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}});
        let mut budgets = Budgets::new();
        let mut dirty = BTreeSet::new();
        let created = event(
            EventKind::Put,
            "/registry/poddisruptionbudgets/team/web",
            serde_json::json!({"spec": spec}),
            None,
        );
        budget_changed(pdbs, &created, &mut budgets, &mut dirty);
        assert!(dirty.contains(&("team".to_string(), "web".to_string())));
        dirty.clear();
        // A status write (same spec) is not a reason to recompute.
        let status = event(
            EventKind::Put,
            "/registry/poddisruptionbudgets/team/web",
            serde_json::json!({"spec": spec, "status": {"disruptionsAllowed": 1}}),
            None,
        );
        budget_changed(pdbs, &status, &mut budgets, &mut dirty);
        assert!(dirty.is_empty());
        // Pods: selected (now or before) in the budget's namespace only.
        let web = serde_json::json!({"metadata": {"labels": {"app": "web"}}});
        let other = serde_json::json!({"metadata": {"labels": {"app": "db"}}});
        pod_changed(
            pods,
            &event(
                EventKind::Put,
                "/registry/pods/team/db-1",
                other.clone(),
                None,
            ),
            &budgets,
            &mut dirty,
        );
        pod_changed(
            pods,
            &event(
                EventKind::Put,
                "/registry/pods/default/web-1",
                web.clone(),
                None,
            ),
            &budgets,
            &mut dirty,
        );
        assert!(dirty.is_empty());
        pod_changed(
            pods,
            &event(
                EventKind::Put,
                "/registry/pods/team/web-1",
                other,
                Some(web),
            ),
            &budgets,
            &mut dirty,
        );
        assert_eq!(dirty.len(), 1);
        let deleted = event(
            EventKind::Delete,
            "/registry/poddisruptionbudgets/team/web",
            serde_json::json!({"spec": spec}),
            None,
        );
        budget_changed(pdbs, &deleted, &mut budgets, &mut dirty);
        assert!(budgets.is_empty());
    }
}
