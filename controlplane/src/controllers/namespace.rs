//! The namespace controller: empties a namespace being deleted, then lets
//! the API server remove it.
//!
//! `DELETE namespaces/x` only marks the namespace `Terminating` (the API
//! server keeps it while `spec.finalizers` holds `kubernetes`). This
//! controller deletes every namespaced object in it (each resource the
//! server serves, with background propagation), reports progress in the
//! namespace's conditions as upstream does (`NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, ...), and once nothing is left removes
//! `kubernetes` through `PUT namespaces/x/finalize`, upon which the server
//! deletes the namespace. Objects holding finalizers keep the namespace
//! until their finalizers are removed, as upstream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use super::Context;
use crate::apiserver::registry::{self, Resource, RESOURCES};

/// The finalizer this controller is responsible for.
const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content is still going is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How soon after an error a namespace is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Errors emptying or finalizing a namespace; the namespace is retried.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// Listing what is left in the namespace failed.
    #[error("cannot list {resource} in terminating namespace {namespace}: {source}")]
    List {
        /// Group-qualified resource.
        resource: String,
        /// Namespace.
        namespace: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Updating the namespace's conditions failed.
    #[error("cannot update the status of terminating namespace {namespace}: {source}")]
    Status {
        /// Namespace.
        namespace: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Removing the `kubernetes` finalizer failed.
    #[error("cannot finalize namespace {namespace} (PUT /api/v1/namespaces/{namespace}/finalize): {source}")]
    Finalize {
        /// Namespace.
        namespace: String,
        /// What the API said.
        source: kube::Error,
    },
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("namespace controller: {e}");
            }
        })
        .await;
}

fn error_policy(_ns: Arc<Namespace>, error: &NamespaceError, _ctx: Arc<Context>) -> Action {
    tracing::warn!("namespace controller: {error}; retrying in {RETRY:?}");
    Action::requeue(RETRY)
}

/// Namespaced resources, one per storage (a resource served in two versions is deleted once).
fn namespaced_resources() -> impl Iterator<Item = &'static Resource> {
    RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .filter(|r| registry::storage_resource(r.storage).is_some_and(|s| std::ptr::eq(s, *r)))
}

fn api_for(client: &kube::Client, namespace: &str, r: &Resource) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: r.group.to_string(),
        version: r.version.to_string(),
        api_version: r.api_version(),
        kind: r.kind.to_string(),
        plural: r.plural.to_string(),
    };
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// What is left in a namespace after a deletion pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Group-qualified resource (`pods`, `deployments.apps`) → objects left.
    pub resources: BTreeMap<String, usize>,
    /// Finalizer → objects left holding it.
    pub finalizers: BTreeMap<String, usize>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, NamespaceError> {
    let Some(name) = ns.metadata.name.clone() else {
        return Ok(Action::await_change());
    };
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !ours {
        return Ok(Action::await_change());
    }
    let mut failures = Vec::new();
    for r in namespaced_resources() {
        let api = api_for(&ctx.client, &name, r);
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => failures.push(format!("failed to delete {}: {e}", r.qualified())),
        }
    }
    let mut remaining = Remaining::default();
    for r in namespaced_resources() {
        let api = api_for(&ctx.client, &name, r);
        let list =
            api.list(&ListParams::default())
                .await
                .map_err(|source| NamespaceError::List {
                    resource: r.qualified(),
                    namespace: name.clone(),
                    source,
                })?;
        if !list.items.is_empty() {
            remaining.resources.insert(r.qualified(), list.items.len());
        }
        for item in &list.items {
            for f in item.metadata.finalizers.iter().flatten() {
                *remaining.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
    }
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let wanted = merge_conditions(
        &current,
        deletion_conditions(&failures, &remaining),
        jiff::Timestamp::now(),
    );
    if wanted != current {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        let patch = json!({"status": {"conditions": wanted}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| NamespaceError::Status {
                namespace: name.clone(),
                source,
            })?;
    }
    if !failures.is_empty() || !remaining.resources.is_empty() {
        return Ok(Action::requeue(RECHECK));
    }
    finalize(&ctx.client, &name).await?;
    tracing::info!("namespace controller: namespace {name} is empty; finalized");
    Ok(Action::await_change())
}

/// Removes `kubernetes` from `spec.finalizers` through the finalize subresource.
async fn finalize(client: &kube::Client, name: &str) -> Result<(), NamespaceError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let err = |source| NamespaceError::Finalize {
        namespace: name.to_string(),
        source,
    };
    let Some(mut ns) = api.get_opt(name).await.map_err(err)? else {
        return Ok(());
    };
    if let Some(finalizers) = ns.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        finalizers.retain(|f| f != FINALIZER);
    }
    match api
        .replace_subresource("finalize", name, &PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// One condition as (type, status, reason, message).
type Wanted = (&'static str, &'static str, &'static str, String);

/// Upstream's namespace deletion conditions for the outcome of one pass.
pub fn deletion_conditions(failures: &[String], remaining: &Remaining) -> Vec<Wanted> {
    let content_failure = if failures.is_empty() {
        (
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_string(),
        )
    } else {
        ("True", "ContentDeletionFailed", failures.join(", "))
    };
    let content_remaining = if remaining.resources.is_empty() {
        (
            "False",
            "ContentRemoved",
            "All content successfully removed".to_string(),
        )
    } else {
        let counts: Vec<String> = remaining
            .resources
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        (
            "True",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", counts.join(", ")),
        )
    };
    let finalizers_remaining = if remaining.finalizers.is_empty() {
        (
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_string(),
        )
    } else {
        let counts: Vec<String> = remaining
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        (
            "True",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                counts.join(", ")
            ),
        )
    };
    vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered".to_string(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ),
        (
            "NamespaceDeletionContentFailure",
            content_failure.0,
            content_failure.1,
            content_failure.2,
        ),
        (
            "NamespaceContentRemaining",
            content_remaining.0,
            content_remaining.1,
            content_remaining.2,
        ),
        (
            "NamespaceFinalizersRemaining",
            finalizers_remaining.0,
            finalizers_remaining.1,
            finalizers_remaining.2,
        ),
    ]
}

/// The conditions to store: `wanted`, keeping each unchanged condition as
/// it is (with its transition time), plus conditions of other types.
pub fn merge_conditions(
    current: &[NamespaceCondition],
    wanted: Vec<Wanted>,
    now: jiff::Timestamp,
) -> Vec<NamespaceCondition> {
    let mut out: Vec<NamespaceCondition> = current
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.0 == c.type_))
        .cloned()
        .collect();
    for (type_, status, reason, message) in wanted {
        let same = current.iter().find(|c| {
            c.type_ == type_
                && c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message.as_str())
        });
        out.push(match same {
            Some(c) => c.clone(),
            None => NamespaceCondition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: Some(reason.to_string()),
                message: Some(message),
                last_transition_time: Some(Time(now)),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_report_what_remains() {
        let mut remaining = Remaining::default();
        remaining.resources.insert("pods".into(), 2);
        remaining.resources.insert("deployments.apps".into(), 1);
        remaining.finalizers.insert("example.com/hold".into(), 1);
        let c = deletion_conditions(&[], &remaining);
        let by_type = |t: &str| {
            c.iter()
                .find(|w| w.0 == t)
                .cloned()
                .expect("condition present")
        };
        let content = by_type("NamespaceContentRemaining");
        assert_eq!((content.1, content.2), ("True", "SomeResourcesRemain"));
        assert_eq!(
            content.3,
            "Some resources are remaining: deployments.apps has 1 resource instances, pods has 2 resource instances"
        );
        let fin = by_type("NamespaceFinalizersRemaining");
        assert_eq!(fin.3, "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances");
        let empty = deletion_conditions(&[], &Remaining::default());
        assert!(empty.iter().all(|w| w.1 == "False"));
        let failed = deletion_conditions(
            &["failed to delete pods: boom".into()],
            &Remaining::default(),
        );
        assert!(failed
            .iter()
            .any(|w| w.0 == "NamespaceDeletionContentFailure" && w.1 == "True"));
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let t0 = jiff::Timestamp::from_second(100).unwrap_or_default();
        let t1 = jiff::Timestamp::from_second(200).unwrap_or_default();
        let first = merge_conditions(&[], deletion_conditions(&[], &Remaining::default()), t0);
        assert_eq!(first.len(), 5);
        let again = merge_conditions(&first, deletion_conditions(&[], &Remaining::default()), t1);
        assert_eq!(first, again);
        let mut remaining = Remaining::default();
        remaining.resources.insert("pods".into(), 1);
        let changed = merge_conditions(&first, deletion_conditions(&[], &remaining), t1);
        let content = changed
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .expect("present");
        assert_eq!(content.last_transition_time, Some(Time(t1)));
        let discovery = changed
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionDiscoveryFailure")
            .expect("present");
        assert_eq!(discovery.last_transition_time, Some(Time(t0)));
    }
}
