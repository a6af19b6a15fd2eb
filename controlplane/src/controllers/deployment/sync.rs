//! One sync of one Deployment, as upstream's `syncDeployment`: claim its
//! ReplicaSets, then either report status only (being deleted), scale
//! (paused, or resized), or roll out by strategy ([`super::rollout`]). This
//! module holds the writes those steps share: creating the new ReplicaSet
//! and syncing revisions, scaling a ReplicaSet, trimming history, and
//! writing the Deployment's status.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use serde_json::json;

use super::conditions::{self, spec_replicas, status_replicas};
use super::{hash, replica_sets, revision, selector_of, surge, Error, State, RESYNC};
use crate::controllers::events::{reference, EventType};
use crate::controllers::replicaset::informer::key_of;
use crate::controllers::replicaset::ownership;

/// The state of one sync: the Deployment as last written, and when to look again.
pub(super) struct Sync {
    pub(super) st: Arc<State>,
    /// The Deployment; metadata and status follow this sync's own writes.
    pub(super) d: Deployment,
    pub(super) key: String,
    pub(super) now: Timestamp,
    /// Earliest recheck any step asked for.
    pub(super) recheck: Option<Duration>,
}

impl Sync {
    /// Syncs `d` once and says when to sync it again.
    pub(super) async fn run(st: Arc<State>, d: Arc<Deployment>) -> Result<Action, Error> {
        // Until the ReplicaSet cache is filled every Deployment would look new.
        let _ = st.sets.wait_until_ready().await;
        let key = key_of(d.as_ref());
        let mut sync = Sync {
            st: st.clone(),
            d: (*d).clone(),
            key: key.clone(),
            now: Timestamp::now(),
            recheck: None,
        };
        sync.sync().await?;
        st.backoff.reset(&key);
        Ok(Action::requeue(sync.recheck.unwrap_or(RESYNC)))
    }

    /// Asks for another sync within `after`.
    pub(super) fn recheck_within(&mut self, after: Duration) {
        self.recheck = Some(self.recheck.map_or(after, |r| r.min(after)));
    }

    pub(super) fn api_err(&self, action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let (action, key) = (action.into(), self.key.clone());
        move |source| Error::Api {
            action,
            key,
            source: Box::new(source),
        }
    }

    fn namespace(&self) -> String {
        self.d.metadata.namespace.clone().unwrap_or_default()
    }

    fn name(&self) -> String {
        self.d.metadata.name.clone().unwrap_or_default()
    }

    pub(super) fn sets_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.st.client.clone(), &self.namespace())
    }

    fn deployments_api(&self) -> Api<Deployment> {
        Api::namespaced(self.st.client.clone(), &self.namespace())
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    async fn sync(&mut self) -> Result<(), Error> {
        let selector = selector_of(&self.d).map_err(|source| Error::Selector {
            key: self.key.clone(),
            source,
        })?;
        if self
            .d
            .spec
            .selector
            .match_labels
            .as_ref()
            .is_none_or(|m| m.is_empty())
            && self
                .d
                .spec
                .selector
                .match_expressions
                .as_ref()
                .is_none_or(|m| m.is_empty())
        {
            return self.selecting_all().await;
        }
        let sets = self.claim(&selector).await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_status_only(sets).await;
        }
        self.check_paused().await?;
        if self.d.spec.paused.unwrap_or(false) {
            return self.sync_scale(sets).await;
        }
        let mut sets = sets;
        if self.is_scaling_event(&mut sets).await? {
            return self.sync_scale(sets).await;
        }
        if surge::is_rolling_update(&self.d) {
            self.rollout_rolling(sets).await
        } else {
            self.rollout_recreate(sets).await
        }
    }

    /// An empty selector would select every pod in the namespace; upstream refuses.
    async fn selecting_all(&mut self) -> Result<(), Error> {
        let message = "This deployment is selecting all pods. A non-empty selector is required.";
        self.st
            .recorder
            .record(
                &reference(&self.d),
                EventType::Warning,
                "SelectingAll",
                message,
            )
            .await;
        let mut status = self.status();
        if status.observed_generation < self.d.metadata.generation {
            status.observed_generation = self.d.metadata.generation;
            self.write_status(status).await?;
        }
        Ok(())
    }

    /// The Deployment's ReplicaSets, adopting and releasing as its selector says.
    async fn claim(&mut self, selector: &Selector) -> Result<Vec<ReplicaSet>, Error> {
        let in_namespace: Vec<Arc<ReplicaSet>> = self
            .st
            .sets
            .state()
            .into_iter()
            .filter(|rs| rs.metadata.namespace == self.d.metadata.namespace)
            .collect();
        let claimed = ownership::Claimer::new(self.st.client.clone(), &self.d, selector)
            .claim(in_namespace)
            .await?;
        Ok(claimed.into_iter().map(|rs| (*rs).clone()).collect())
    }

    async fn check_paused(&mut self) -> Result<(), Error> {
        let mut status = self.status();
        if conditions::update_paused(&self.d, &mut status, self.now) {
            self.write_status(status).await?;
        }
        Ok(())
    }

    /// Upstream's `isScalingEvent`: an active ReplicaSet was sized for a
    /// different `spec.replicas` than the Deployment has now.
    async fn is_scaling_event(&mut self, sets: &mut Vec<ReplicaSet>) -> Result<bool, Error> {
        let (new, old) = self.new_and_old(sets, false).await?;
        let desired = surge::desired(&self.d);
        Ok(old
            .iter()
            .chain(new.as_ref())
            .filter(|rs| replica_sets::is_active(rs))
            .any(|rs| revision::desired_replicas(rs).is_some_and(|r| r != desired)))
    }

    async fn sync_status_only(&mut self, mut sets: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.new_and_old(&mut sets, false).await?;
        self.sync_status(&old, new.as_ref()).await
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`: splits `sets` into the
    /// new ReplicaSet and the old ones, bringing the new one's revision and
    /// annotations up to date, creating it if `create` and it does not exist.
    /// ReplicaSets it writes are replaced in `sets`.
    pub(super) async fn new_and_old(
        &mut self,
        sets: &mut Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let new_index = replica_sets::find_new(&self.d, sets);
        let old: Vec<ReplicaSet> = sets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_index)
            .map(|(_, rs)| rs.clone())
            .collect();
        let new_revision = revision::max_revision(&old) + 1;
        let desired = surge::desired(&self.d);
        let sizes = (desired, desired + surge::max_surge(&self.d));
        let annotations = self.d.metadata.annotations.clone().unwrap_or_default();
        if let Some(i) = new_index {
            let mut rs = sets[i].clone();
            let rs_annotations = rs.metadata.annotations.get_or_insert_with(Default::default);
            let changed = revision::set_new_replica_set_annotations(
                &annotations,
                rs_annotations,
                new_revision,
                true,
                sizes,
            );
            if changed || rs.spec.min_ready_seconds != self.d.spec.min_ready_seconds {
                rs.spec.min_ready_seconds = self.d.spec.min_ready_seconds;
                let updated = self.replace_set(&rs).await?;
                sets[i] = updated.clone();
                return Ok((Some(updated), old));
            }
            let rs_revision = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(revision::REVISION))
                .cloned();
            if let Some(r) = rs_revision {
                self.set_revision(&r).await?;
            }
            let mut status = self.status();
            if conditions::has_progress_deadline(&self.d)
                && conditions::get(&status, conditions::PROGRESSING).is_none()
            {
                let message = format!(
                    "Found new replica set \"{}\"",
                    rs.metadata.name.as_deref().unwrap_or_default()
                );
                let c = conditions::new_condition(
                    conditions::PROGRESSING,
                    "True",
                    conditions::FOUND_NEW_RS,
                    message,
                    self.now,
                );
                conditions::set(&mut status, c);
                self.write_status(status).await?;
            }
            return Ok((Some(rs), old));
        }
        if !create {
            return Ok((None, old));
        }
        let created = self
            .create_new(&old, new_revision, sizes, &annotations)
            .await?;
        sets.push(created.clone());
        Ok((Some(created), old))
    }

    async fn create_new(
        &mut self,
        old: &[ReplicaSet],
        new_revision: i64,
        sizes: (i32, i32),
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<ReplicaSet, Error> {
        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = hash::pod_template_hash(&self.d.spec.template, collision_count);
        let mut template = self.d.spec.template.clone();
        let labels = template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default);
        labels.insert(hash::HASH_LABEL.into(), hash.clone());
        let labels = labels.clone();
        let mut selector: LabelSelector = self.d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(hash::HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.name());
        let total: i32 = old.iter().map(spec_replicas).sum();
        let replicas = surge::new_rs_new_replicas(&self.d, total, 0);
        let mut rs_annotations = Default::default();
        revision::set_new_replica_set_annotations(
            annotations,
            &mut rs_annotations,
            new_revision,
            false,
            sizes,
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: Some(rs_annotations),
                owner_references: Some(vec![ownership::controller_ref(&self.d)]),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: self.d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        let (created, existed) = match self.sets_api().create(&PostParams::default(), &rs).await {
            Ok(created) => (created, false),
            Err(e) if ownership::is_conflict(&e) => (self.existing_new(&name).await?, true),
            Err(source) => {
                let message = format!("Failed to create new replica set \"{name}\": {source}");
                if conditions::has_progress_deadline(&self.d) {
                    let mut status = self.status();
                    let c = conditions::new_condition(
                        conditions::PROGRESSING,
                        "False",
                        conditions::FAILED_RS_CREATE,
                        message.clone(),
                        self.now,
                    );
                    conditions::set(&mut status, c);
                    // The create failure is the error worth reporting.
                    let _ = self.write_status(status).await;
                }
                let why = conditions::FAILED_RS_CREATE;
                self.st
                    .recorder
                    .record(&reference(&self.d), EventType::Warning, why, &message)
                    .await;
                return Err(Error::Api {
                    action: format!("create replica set {name}"),
                    key: self.key.clone(),
                    source: Box::new(source),
                });
            }
        };
        if !existed && replicas > 0 {
            let message = format!("Scaled up replica set {name} from 0 to {replicas}");
            self.st
                .recorder
                .record(
                    &reference(&self.d),
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &message,
                )
                .await;
        }
        self.set_revision(&new_revision.to_string()).await?;
        if !existed && conditions::has_progress_deadline(&self.d) {
            let mut status = self.status();
            let message = format!("Created new replica set \"{name}\"");
            let c = conditions::new_condition(
                conditions::PROGRESSING,
                "True",
                conditions::NEW_RS_CREATED,
                message,
                self.now,
            );
            conditions::set(&mut status, c);
            self.write_status(status).await?;
        }
        Ok(created)
    }

    /// The ReplicaSet that already has the new ReplicaSet's name: ours (the
    /// cache was behind) or a hash collision, which bumps `collisionCount`.
    async fn existing_new(&mut self, name: &str) -> Result<ReplicaSet, Error> {
        let existing = self
            .sets_api()
            .get(name)
            .await
            .map_err(self.api_err(format!("read replica set {name}")))?;
        let ours = ownership::controller_of(&existing.metadata)
            .is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
        let same = existing
            .spec
            .template
            .as_ref()
            .is_some_and(|t| hash::equal_ignore_hash(t, &self.d.spec.template));
        if ours && same {
            return Ok(existing);
        }
        let mut status = self.status();
        status.collision_count = Some(status.collision_count.unwrap_or(0).saturating_add(1));
        self.write_status(status).await?;
        Err(Error::Collision {
            key: self.key.clone(),
            name: name.to_string(),
        })
    }

    /// Sets the Deployment's revision annotation (a metadata write pinned to
    /// the version this sync read, so it never overwrites a newer spec).
    async fn set_revision(&mut self, value: &str) -> Result<(), Error> {
        if self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(revision::REVISION))
            .map(String::as_str)
            == Some(value)
        {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "resourceVersion": self.d.metadata.resource_version,
            "annotations": {revision::REVISION: value},
        }});
        let name = self.name();
        let updated = self
            .deployments_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.api_err("set the revision annotation"))?;
        self.d.metadata = updated.metadata;
        Ok(())
    }

    /// Writes the Deployment's status (pinned to the version this sync read).
    pub(super) async fn write_status(&mut self, status: DeploymentStatus) -> Result<(), Error> {
        let mut d = self.d.clone();
        d.status = Some(status);
        let name = self.name();
        let updated = self
            .deployments_api()
            .replace_status(&name, &PostParams::default(), &d)
            .await
            .map_err(self.api_err("update status"))?;
        self.d.metadata.resource_version = updated.metadata.resource_version;
        self.d.status = updated.status;
        Ok(())
    }

    /// Upstream's `syncDeploymentStatus`: counts and Available, if changed.
    pub(super) async fn sync_status(
        &mut self,
        old: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), Error> {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let status = conditions::calculate(&self.d, &all, new, self.now);
        if self.d.status.as_ref() != Some(&status) {
            self.write_status(status).await?;
        }
        Ok(())
    }

    /// Upstream's `syncRolloutStatus`: counts and every condition, if
    /// changed; otherwise schedules the progress-deadline check.
    pub(super) async fn sync_rollout_status(
        &mut self,
        old: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), Error> {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let status = conditions::rollout_status(&self.d, &all, new, self.now);
        if self.d.status.as_ref() == Some(&status) {
            if let Some(after) = conditions::recheck_after(&self.d, &status, self.now) {
                self.recheck_within(after);
            }
            return Ok(());
        }
        self.write_status(status).await
    }

    async fn replace_set(&self, rs: &ReplicaSet) -> Result<ReplicaSet, Error> {
        let name = rs.metadata.name.as_deref().unwrap_or_default();
        self.sets_api()
            .replace(name, &PostParams::default(), rs)
            .await
            .map_err(self.api_err(format!("update replica set {name}")))
    }

    /// Upstream's `scaleReplicaSet`: sets the size and the replicas
    /// annotations; returns whether the size changed and the stored object.
    pub(super) async fn scale_set(
        &self,
        rs: &ReplicaSet,
        size: i32,
    ) -> Result<(bool, ReplicaSet), Error> {
        let desired = surge::desired(&self.d);
        let max = desired + surge::max_surge(&self.d);
        let old_size = spec_replicas(rs);
        let resize = old_size != size;
        if !resize && !revision::replicas_annotations_need_update(rs, desired, max) {
            return Ok((false, rs.clone()));
        }
        let mut copy = rs.clone();
        copy.spec.replicas = Some(size);
        revision::set_replicas_annotations(
            copy.metadata
                .annotations
                .get_or_insert_with(Default::default),
            desired,
            max,
        );
        let updated = self.replace_set(&copy).await?;
        if resize {
            let direction = if size > old_size { "up" } else { "down" };
            let name = rs.metadata.name.as_deref().unwrap_or_default();
            let message =
                format!("Scaled {direction} replica set {name} from {old_size} to {size}");
            self.st
                .recorder
                .record(
                    &reference(&self.d),
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &message,
                )
                .await;
        }
        Ok((resize, updated))
    }

    /// Upstream's `scaleReplicaSetAndRecordEvent`: [`Self::scale_set`] unless the size is already right.
    pub(super) async fn scale_set_if_needed(
        &self,
        rs: &ReplicaSet,
        size: i32,
    ) -> Result<(bool, ReplicaSet), Error> {
        if spec_replicas(rs) == size {
            return Ok((false, rs.clone()));
        }
        self.scale_set(rs, size).await
    }

    /// Upstream's `cleanupDeployment`: deletes the oldest scaled-down
    /// ReplicaSets beyond `revisionHistoryLimit`.
    pub(super) async fn cleanup(&self, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = self.d.spec.revision_history_limit else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        cleanable.sort_by(|a, b| replica_sets::by_revision(a, b));
        for rs in cleanable.into_iter().take(excess) {
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
            if status_replicas(rs) != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation > observed
            {
                continue;
            }
            let name = rs.metadata.name.as_deref().unwrap_or_default();
            match self.sets_api().delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::debug!("deployment {}: deleted old replica set {name}", self.key),
                Err(e) if ownership::is_not_found(&e) => {}
                Err(source) => {
                    return Err(Error::Api {
                        action: format!("delete old replica set {name}"),
                        key: self.key.clone(),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(())
    }
}
