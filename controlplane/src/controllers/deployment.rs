//! The deployment controller, as kube-controller-manager's: each Deployment
//! owns one ReplicaSet per pod template (named `<deployment>-<hash>`, see
//! [`hash`]) and moves pods from the old ReplicaSets to the new one with the
//! RollingUpdate strategy (bounded by maxSurge / maxUnavailable and pod
//! availability) or Recreate (old pods gone before new ones start). It keeps
//! revisions in annotations ([`revision`]) so `kubectl rollout history` and
//! `rollout undo` work, scales proportionally across ReplicaSets when a
//! Deployment is resized mid-rollout, honours `spec.paused`, trims old
//! ReplicaSets beyond `revisionHistoryLimit`, and reports status and the
//! Available / Progressing conditions ([`conditions`]).
//!
//! It writes ReplicaSets and Deployment status only; pods are the
//! replicaset controller's.

mod conditions;
mod hash;
mod replica_sets;
mod revision;
mod rollout;
mod surge;
mod sync;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::core::{ParseExpressionError, Selector};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};

use super::events::Recorder;
use super::replicaset::informer::{self, key_of, Change};
use super::replicaset::{ownership, retry};
use super::Context;

/// Resync interval when nothing else triggers a sync.
const RESYNC: Duration = Duration::from_secs(300);

/// Errors syncing one Deployment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The selector cannot be parsed.
    #[error("deployment {key}: invalid spec.selector ({source}); fix the selector")]
    Selector {
        /// `namespace/name`.
        key: String,
        /// The parse error.
        #[source]
        source: ParseExpressionError,
    },
    /// An API call failed.
    #[error("deployment {key}: cannot {action}: {source}")]
    Api {
        /// What was attempted.
        action: String,
        /// `namespace/name`.
        key: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Adopting or releasing ReplicaSets failed.
    #[error(transparent)]
    Claim(#[from] ownership::Error),
    /// The new ReplicaSet's name is taken by a different template.
    #[error("deployment {key}: replica set {name} exists with another template (hash collision); bumped status.collisionCount, retrying")]
    Collision {
        /// `namespace/name`.
        key: String,
        /// The ReplicaSet name.
        name: String,
    },
    /// A ReplicaSet's status is behind its spec; the next sync sees it settled.
    #[error("deployment {key}: replica set {name} reports more available pods ({available}) than it should have ({replicas}); waiting for its status")]
    StaleStatus {
        /// `namespace/name`.
        key: String,
        /// The ReplicaSet name.
        name: String,
        /// `spec.replicas`.
        replicas: i32,
        /// `status.availableReplicas`.
        available: i32,
    },
    /// The sync task panicked or was cancelled.
    #[error("sync of deployment {key} did not finish: {message}")]
    Task {
        /// `namespace/name`.
        key: String,
        /// The join error.
        message: String,
    },
}

/// Shared state of the controller.
struct State {
    client: kube::Client,
    recorder: Recorder,
    deployments: Store<Deployment>,
    sets: Store<ReplicaSet>,
    backoff: retry::Backoff,
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (deployments, deployment_writer) = reflector::store::<Deployment>();
    let (sets, set_writer) = reflector::store::<ReplicaSet>();
    let state = Arc::new(State {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        deployments: deployments.clone(),
        sets,
        backoff: retry::Backoff::default(),
    });
    let deployment_triggers = informer::changes(
        Api::<Deployment>::all(client.clone()),
        deployment_writer,
        informer::keep_all,
    )
    .filter_map(|change| async move {
        match change {
            Change::Applied { new, .. } => Some(ObjectRef::from_obj(new.as_ref())),
            Change::Deleted(_) => None,
        }
    });
    let set_triggers = informer::changes(
        Api::<ReplicaSet>::all(client),
        set_writer,
        informer::keep_all,
    )
    .flat_map({
        let st = state.clone();
        move |change| stream::iter(st.on_set(change))
    });
    let queue = stream::select(deployment_triggers, set_triggers).map(Ok::<_, Infallible>);
    controller::applier(
        start_sync,
        error_policy,
        state,
        deployments,
        queue,
        controller::Config::default(),
    )
    .for_each(|result| async move {
        match result {
            Ok(_) | Err(controller::Error::ObjectNotFound(_)) => {}
            Err(e) => tracing::debug!("deployment sync: {e}"),
        }
    })
    .await;
}

/// Starts one sync on its own task, so Deployments sync in parallel.
fn start_sync(d: Arc<Deployment>, st: Arc<State>) -> BoxFuture<'static, Result<Action, Error>> {
    let key = key_of(d.as_ref());
    let task = tokio::spawn(sync::Sync::run(st, d));
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

fn error_policy(d: Arc<Deployment>, error: &Error, st: Arc<State>) -> Action {
    let conflict = matches!(error, Error::Api { source, .. } if ownership::is_conflict(source));
    if conflict || matches!(error, Error::StaleStatus { .. }) {
        tracing::debug!("{error}; retrying");
    } else {
        tracing::warn!("{error}; retrying");
    }
    Action::requeue(st.backoff.next(&key_of(d.as_ref())))
}

/// The selector of a Deployment.
fn selector_of(d: &Deployment) -> Result<Selector, ParseExpressionError> {
    d.spec.selector.clone().try_into()
}

impl State {
    /// The Deployment a controller reference points at, if it is in the cache.
    fn resolve(&self, namespace: &str, r: &OwnerReference) -> Option<Arc<Deployment>> {
        let d = self
            .deployments
            .get(&ObjectRef::new(&r.name).within(namespace))?;
        ownership::refers_to::<Deployment>(r, d.metadata.uid.as_deref()).then_some(d)
    }

    /// Deployments whose selector matches an orphan ReplicaSet.
    fn selecting(&self, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
        self.deployments
            .state()
            .iter()
            .filter(|d| d.metadata.namespace == rs.metadata.namespace)
            .filter(|d| selector_of(d).is_ok_and(|s| ownership::selects(&s, &rs.metadata)))
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect()
    }

    fn owner(&self, rs: &ReplicaSet) -> Option<ObjectRef<Deployment>> {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        let r = ownership::controller_of(&rs.metadata)?;
        self.resolve(ns, r).map(|d| ObjectRef::from_obj(d.as_ref()))
    }

    fn on_set(&self, change: Change<ReplicaSet>) -> Vec<ObjectRef<Deployment>> {
        match change {
            Change::Applied { old: None, new } => match ownership::controller_of(&new.metadata) {
                Some(_) => self.owner(&new).into_iter().collect(),
                None if new.metadata.deletion_timestamp.is_some() => Vec::new(),
                None => self.selecting(&new),
            },
            Change::Applied {
                old: Some(old),
                new,
            } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return Vec::new();
                }
                let (old_ref, new_ref) = (
                    ownership::controller_of(&old.metadata),
                    ownership::controller_of(&new.metadata),
                );
                let mut out = Vec::new();
                if old_ref != new_ref {
                    out.extend(self.owner(&old));
                }
                match new_ref {
                    Some(_) => out.extend(self.owner(&new)),
                    None if old.metadata.labels != new.metadata.labels || old_ref.is_some() => {
                        out.extend(self.selecting(&new));
                    }
                    None => {}
                }
                out
            }
            Change::Deleted(rs) => self.owner(&rs).into_iter().collect(),
        }
    }
}
