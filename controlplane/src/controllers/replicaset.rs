//! The replicaset controller, as kube-controller-manager's: keeps
//! `spec.replicas` active pods that match each ReplicaSet's template,
//! adopts orphan pods its selector matches and releases owned pods whose
//! labels no longer match, and reports replicas / fullyLabeledReplicas /
//! readyReplicas / availableReplicas in its status.
//!
//! Pods are created in slow-start batches (1, 2, 4, ...) of at most
//! [`BURST_REPLICAS`] per sync and deleted in upstream's preference order
//! ([`ranking`]). [`expectations`] keep a sync from acting on a pod cache
//! that has not yet seen the previous sync's writes; [`triggers`] maps
//! watched changes to the ReplicaSets to sync. This module owns
//! ReplicaSet status and the pods it creates; it never touches Deployments.

mod expectations;
pub(crate) mod informer;
pub(crate) mod ownership;
pub(crate) mod ranking;
pub(crate) mod retry;
mod status;
mod triggers;

use std::cmp::Ordering;
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use futures::{stream, FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::{ParseExpressionError, Selector};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, Store};

use super::events::{reference, EventType, Recorder};
use super::pods::{CachedPod, LabelQuery, PodInformer, PodStore};
use super::Context;
use expectations::Expectations;
use informer::key_of;
use ownership::controller_of;
use status::Failure;

/// Most pods created or deleted in one sync, as upstream's `burstReplicas`.
pub const BURST_REPLICAS: usize = 500;
/// First slow-start batch of pod creations.
const SLOW_START_INITIAL_BATCH: usize = 1;
/// Resync interval when nothing else triggers a sync.
const RESYNC: Duration = Duration::from_secs(300);
/// Longest `generateName` prefix the API server accepts (63 minus the 5-character suffix).
const MAX_PREFIX: usize = 58;

/// Errors syncing one ReplicaSet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The selector cannot be parsed.
    #[error("replicaset {key}: invalid spec.selector ({source}); fix the selector")]
    Selector {
        /// `namespace/name`.
        key: String,
        /// The parse error.
        #[source]
        source: ParseExpressionError,
    },
    /// The template cannot make a pod.
    #[error("replicaset {key} cannot create pods: {reason}")]
    Template {
        /// `namespace/name`.
        key: String,
        /// What is missing.
        reason: &'static str,
    },
    /// An API call failed.
    #[error("replicaset {key}: cannot {action}: {source}")]
    Api {
        /// What was attempted.
        action: &'static str,
        /// `namespace/name`.
        key: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Adopting or releasing pods failed.
    #[error(transparent)]
    Claim(#[from] ownership::Error),
    /// The sync task panicked or was cancelled.
    #[error("sync of replicaset {key} did not finish: {message}")]
    Task {
        /// `namespace/name`.
        key: String,
        /// The join error.
        message: String,
    },
}

/// Shared state of the controller: caches, expectations, clients.
struct State {
    client: kube::Client,
    recorder: Recorder,
    sets: Store<ReplicaSet>,
    pods: PodStore,
    pod_informer: Arc<PodInformer>,
    expectations: Expectations,
    backoff: retry::Backoff,
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>, pod_informer: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let (sets, set_writer) = reflector::store::<ReplicaSet>();
    let state = Arc::new(State {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        sets: sets.clone(),
        pods: pod_informer.store(),
        pod_informer: pod_informer.clone(),
        expectations: Expectations::default(),
        backoff: retry::Backoff::default(),
    });
    let set_triggers = informer::changes(
        Api::<ReplicaSet>::all(client.clone()),
        set_writer,
        informer::keep_all,
    )
    .flat_map({
        let st = state.clone();
        move |change| stream::iter(st.on_set(change))
    });
    let pod_triggers = pod_informer.subscribe().flat_map({
        let st = state.clone();
        move |change| stream::iter(st.on_pod(change))
    });
    let queue = stream::select(set_triggers, pod_triggers).map(Ok::<_, Infallible>);
    controller::applier(
        sync,
        error_policy,
        state,
        sets,
        queue,
        controller::Config::default(),
    )
    .for_each(|result| async move {
        match result {
            Ok(_) | Err(controller::Error::ObjectNotFound(_)) => {}
            Err(e) => tracing::debug!("replicaset sync: {e}"),
        }
    })
    .await;
}

/// Starts one sync on its own task, so syncs of different ReplicaSets run in parallel.
fn sync(rs: Arc<ReplicaSet>, st: Arc<State>) -> BoxFuture<'static, Result<Action, Error>> {
    let key = key_of(rs.as_ref());
    let task = tokio::spawn(st.sync(rs));
    async move {
        task.await.unwrap_or_else(|e| {
            Err(Error::Task {
                key,
                message: e.to_string(),
            })
        })
    }
    .boxed()
}

fn error_policy(rs: Arc<ReplicaSet>, error: &Error, st: Arc<State>) -> Action {
    let conflict = matches!(error, Error::Api { source, .. } if ownership::is_conflict(source));
    if conflict {
        tracing::debug!("{error}; retrying");
    } else {
        tracing::warn!("{error}; retrying");
    }
    Action::requeue(st.backoff.next(&key_of(rs.as_ref())))
}

/// The selector of a ReplicaSet.
fn selector_of(rs: &ReplicaSet) -> Result<Selector, ParseExpressionError> {
    rs.spec.selector.clone().try_into()
}

impl State {
    /// One sync, as upstream's `syncReplicaSet`.
    async fn sync(self: Arc<Self>, rs: Arc<ReplicaSet>) -> Result<Action, Error> {
        // Until the pod cache is filled every ReplicaSet would look empty.
        self.pod_informer.wait_until_ready().await;
        let key = key_of(rs.as_ref());
        let needs_sync = self.expectations.satisfied(&key);
        let selector = selector_of(&rs).map_err(|source| Error::Selector {
            key: key.clone(),
            source,
        })?;
        let uid = rs.metadata.uid.as_deref();
        let query = LabelQuery::from(&selector);
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let (active, inactive): (Vec<_>, Vec<_>) = self
            .pods
            .in_namespace(ns)
            .into_iter()
            .partition(|p| ranking::is_active(p));
        let terminating = inactive
            .iter()
            .filter(|p| p.deleted.is_some() && !ranking::is_terminal(p))
            .filter(|p| p.controller().is_some_and(|r| Some(&*r.uid) == uid))
            .filter(|p| ownership::query_selects(&query, &p.labels))
            .count();
        let owned = ownership::Claimer::new(self.client.clone(), rs.as_ref(), &selector)
            .claim(active)
            .await?;
        let now = Timestamp::now();
        let managed = if needs_sync && rs.metadata.deletion_timestamp.is_none() {
            self.manage_replicas(&rs, &key, &owned, now).await
        } else {
            Ok(())
        };
        let failure = managed
            .as_ref()
            .err()
            .map(|(kind, e)| (*kind, e.to_string()));
        let new_status = status::calculate(&rs, &owned, terminating, failure, now);
        self.update_status(&rs, &key, new_status).await?;
        managed.map_err(|(_, e)| e)?;
        self.backoff.reset(&key);
        Ok(next_sync(&rs, &owned, now))
    }

    /// Creates or deletes pods towards `spec.replicas`, as upstream's `manageReplicas`.
    async fn manage_replicas(
        &self,
        rs: &Arc<ReplicaSet>,
        key: &str,
        owned: &[Arc<CachedPod>],
        now: Timestamp,
    ) -> Result<(), (Failure, Error)> {
        let want = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0);
        match owned.len().cmp(&want) {
            Ordering::Equal => Ok(()),
            Ordering::Less => {
                let diff = (want - owned.len()).min(BURST_REPLICAS);
                let pod = pod_from_template(rs, key).map_err(|e| (Failure::Create, e))?;
                self.expectations.expect_creations(key, diff);
                let (created, error) = slow_start(diff, SLOW_START_INITIAL_BATCH, || {
                    self.create_pod(rs, key, &pod)
                })
                .await;
                // Creations never attempted or failed will not be observed.
                for _ in created..diff {
                    self.expectations.creation_observed(key);
                }
                error.map_or(Ok(()), |e| Err((Failure::Create, e)))
            }
            Ordering::Greater => {
                let diff = (owned.len() - want).min(BURST_REPLICAS);
                let related = self.related_pods(rs);
                let victims = ranking::pods_to_delete(owned.to_vec(), &related, diff, now);
                self.expectations
                    .expect_deletions(key, victims.iter().map(|p| p.key()));
                let results = join_all(victims.iter().map(|p| self.delete_pod(rs, p))).await;
                let mut first = None;
                for (pod, result) in victims.iter().zip(results) {
                    if let Err(source) = result {
                        self.expectations.deletion_observed(key, &pod.key());
                        if !ownership::is_not_found(&source) && first.is_none() {
                            first = Some(Error::Api {
                                action: "delete a pod",
                                key: key.to_string(),
                                source: Box::new(source),
                            });
                        }
                    }
                }
                first.map_or(Ok(()), |e| Err((Failure::Delete, e)))
            }
        }
    }

    async fn create_pod(&self, rs: &ReplicaSet, key: &str, pod: &Pod) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            rs.metadata.namespace.as_deref().unwrap_or_default(),
        );
        match api.create(&PostParams::default(), pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                let message = format!("Created pod: {name}");
                self.recorder
                    .record(
                        &reference(rs),
                        EventType::Normal,
                        "SuccessfulCreate",
                        &message,
                    )
                    .await;
                Ok(())
            }
            Err(source) => {
                let message = format!("Error creating: {source}");
                self.recorder
                    .record(&reference(rs), EventType::Warning, "FailedCreate", &message)
                    .await;
                Err(Error::Api {
                    action: "create a pod",
                    key: key.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }

    async fn delete_pod(&self, rs: &ReplicaSet, pod: &CachedPod) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let name = &*pod.name;
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("Deleted pod: {name}");
                self.recorder
                    .record(
                        &reference(rs),
                        EventType::Normal,
                        "SuccessfulDelete",
                        &message,
                    )
                    .await;
                Ok(())
            }
            Err(e) => {
                if !ownership::is_not_found(&e) {
                    let message = format!("Error deleting: {e}");
                    self.recorder
                        .record(&reference(rs), EventType::Warning, "FailedDelete", &message)
                        .await;
                }
                Err(e)
            }
        }
    }

    /// Active pods of this ReplicaSet and of its siblings (same controller),
    /// used to prefer deleting pods doubled up on a node.
    fn related_pods(&self, rs: &ReplicaSet) -> Vec<Arc<CachedPod>> {
        let Some(owner) = controller_of(&rs.metadata) else {
            return Vec::new();
        };
        let siblings: Vec<LabelQuery> = self
            .sets
            .state()
            .iter()
            .filter(|s| s.metadata.namespace == rs.metadata.namespace)
            .filter(|s| controller_of(&s.metadata).is_some_and(|r| r.uid == owner.uid))
            .filter_map(|s| selector_of(s).ok())
            .map(|s| LabelQuery::from(&s))
            .collect();
        let mut seen = HashSet::new();
        self.pods
            .in_namespace(rs.metadata.namespace.as_deref().unwrap_or_default())
            .into_iter()
            .filter(|p| {
                siblings
                    .iter()
                    .any(|s| ownership::query_selects(s, &p.labels))
            })
            .filter(|p| seen.insert(p.uid.clone()))
            .collect()
    }

    /// Writes `status` (with the observed generation) unless nothing changed;
    /// on a conflict re-reads the ReplicaSet and tries once more.
    async fn update_status(
        &self,
        rs: &ReplicaSet,
        key: &str,
        mut status: k8s_openapi::api::apps::v1::ReplicaSetStatus,
    ) -> Result<(), Error> {
        if !status::needs_update(rs, &status) {
            return Ok(());
        }
        status.observed_generation = rs.metadata.generation;
        let api: Api<ReplicaSet> = Api::namespaced(
            self.client.clone(),
            rs.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        let api_err = |action, source| Error::Api {
            action,
            key: key.to_string(),
            source: Box::new(source),
        };
        let mut current = rs.clone();
        current.status = Some(status.clone());
        if api
            .replace_status(name, &PostParams::default(), &current)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut current = api
            .get(name)
            .await
            .map_err(|e| api_err("re-read before a status update", e))?;
        current.status = Some(status);
        api.replace_status(name, &PostParams::default(), &current)
            .await
            .map_err(|e| api_err("update status", e))?;
        Ok(())
    }
}

/// When to sync again: when the next ready pod becomes available under
/// `minReadySeconds`, else after the resync interval.
fn next_sync(rs: &ReplicaSet, owned: &[Arc<CachedPod>], now: Timestamp) -> Action {
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let next = owned
        .iter()
        .filter(|p| ranking::is_ready(p) && !ranking::is_available(p, min_ready, now))
        .filter_map(|p| ranking::available_at(p, min_ready))
        .min();
    match next {
        Some(at) => {
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
            Action::requeue(wait + Duration::from_secs(1))
        }
        None => Action::requeue(RESYNC),
    }
}

/// The pod a ReplicaSet creates from its template, as upstream's `GetPodFromTemplate`.
fn pod_from_template(rs: &ReplicaSet, key: &str) -> Result<Pod, Error> {
    let template = rs.spec.template.as_ref().ok_or(Error::Template {
        key: key.to_string(),
        reason: "spec.template is missing",
    })?;
    let meta = template.metadata.clone().unwrap_or_default();
    if meta.labels.as_ref().is_none_or(|l| l.is_empty()) {
        return Err(Error::Template {
            key: key.to_string(),
            reason: "the template has no labels",
        });
    }
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let mut prefix = format!("{name}-");
    if prefix.len() > MAX_PREFIX {
        let mut end = MAX_PREFIX;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix.truncate(end);
    }
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![ownership::controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// Runs `count` calls of `f` in batches of 1, 2, 4, ... (from `initial`),
/// stopping after the first batch with a failure, as upstream's
/// `slowStartBatch`: a template that cannot work fails one call, not
/// hundreds. Returns the number of successes and the first error.
async fn slow_start<F, Fut, E>(count: usize, initial: usize, f: F) -> (usize, Option<E>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = remaining.min(initial.max(1));
    while batch > 0 {
        let results = join_all((0..batch).map(|_| f())).await;
        let mut errors = results.into_iter().filter_map(Result::err);
        let first = errors.next();
        let failed = usize::from(first.is_some()) + errors.count();
        successes += batch - failed;
        if first.is_some() {
            return (successes, first);
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (successes, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::sync::Mutex;

    #[test]
    fn slow_start_doubles_batches_and_stops_on_failure() {
        let calls = AtomicUsize::new(0);
        let (ok, err) = futures::executor::block_on(slow_start(10, 1, || {
            calls.fetch_add(1, AtomicOrdering::SeqCst);
            async { Ok::<(), ()>(()) }
        }));
        assert_eq!(
            (ok, err, calls.load(AtomicOrdering::SeqCst)),
            (10, None, 10)
        );

        // Batches are 1, 2, 4, ...; the 5th call (in the batch of 4) fails.
        let batches = Mutex::new(Vec::new());
        let calls = AtomicUsize::new(0);
        let (ok, err) = futures::executor::block_on(slow_start(20, 1, || {
            let n = calls.fetch_add(1, AtomicOrdering::SeqCst);
            batches.lock().expect("lock").push(n);
            async move {
                if n == 4 {
                    Err("quota")
                } else {
                    Ok(())
                }
            }
        }));
        assert_eq!(err, Some("quota"));
        assert_eq!(
            ok, 6,
            "1 + 2 + (4 - 1) succeeded, nothing after the failing batch"
        );
        assert_eq!(calls.load(AtomicOrdering::SeqCst), 7);
    }

    #[test]
    fn pods_from_template() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some("x".repeat(70));
        rs.metadata.namespace = Some("ns".into());
        rs.metadata.uid = Some("u".into());
        rs.spec = ReplicaSetSpec {
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
                spec: None,
            }),
            ..Default::default()
        };
        let pod = pod_from_template(&rs, "ns/x").expect("a pod");
        assert_eq!(
            pod.metadata.generate_name.as_deref().map(str::len),
            Some(MAX_PREFIX)
        );
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(
            pod.metadata.labels,
            rs.spec
                .template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        );

        if let Some(t) = rs.spec.template.as_mut() {
            t.metadata = None;
        }
        assert!(matches!(
            pod_from_template(&rs, "ns/x"),
            Err(Error::Template { .. })
        ));
    }
}
