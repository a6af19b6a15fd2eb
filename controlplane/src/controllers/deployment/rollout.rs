//! The rollout strategies and scaling, as upstream's `rolling.go`,
//! `recreate.go` and `sync.go`:
//!
//! - RollingUpdate scales the new ReplicaSet up while the total stays within
//!   `spec.replicas + maxSurge`, and old ones down while available pods stay
//!   at least `spec.replicas - maxUnavailable` (unhealthy old pods first).
//! - Recreate scales every old ReplicaSet to zero, waits until their pods
//!   are gone, then creates and scales up the new one.
//! - A paused or resized Deployment is only scaled: its single active
//!   ReplicaSet to `spec.replicas`, or proportionally across several.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::conditions::{self, available_replicas, spec_replicas, status_replicas};
use super::sync::Sync;
use super::{replica_sets, selector_of, surge, Error};
use crate::controllers::replicaset::ownership;
use crate::controllers::workload;

/// How often a Recreate rollout looks whether the old pods are gone.
const OLD_PODS_POLL: Duration = Duration::from_secs(1);

impl Sync {
    /// Upstream's `sync`: scaling only (paused, or `spec.replicas` changed).
    pub(super) async fn sync_scale(&mut self, mut sets: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.new_and_old(&mut sets, false).await?;
        self.scale(new.as_ref(), &old).await?;
        if self.d.spec.paused.unwrap_or(false) {
            self.cleanup(&old).await?;
        }
        self.sync_status(&old, new.as_ref()).await
    }

    /// Upstream's `scale`.
    async fn scale(&mut self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Result<(), Error> {
        let desired = surge::desired(&self.d);
        if let Some(rs) = replica_sets::find_active_or_latest(new, old) {
            if spec_replicas(rs) != desired {
                self.scale_set_if_needed(rs, desired).await?;
            }
            return Ok(());
        }
        if new.is_some_and(|rs| replica_sets::is_saturated(&self.d, rs)) {
            for rs in old.iter().filter(|rs| replica_sets::is_active(rs)) {
                self.scale_set_if_needed(rs, 0).await?;
            }
            return Ok(());
        }
        if surge::is_rolling_update(&self.d) {
            let active: Vec<&ReplicaSet> = old
                .iter()
                .chain(new)
                .filter(|rs| replica_sets::is_active(rs))
                .collect();
            for (i, size) in replica_sets::proportional_plan(&self.d, &active) {
                self.scale_set(active[i], size).await?;
            }
        }
        Ok(())
    }

    /// Upstream's `rolloutRolling`.
    pub(super) async fn rollout_rolling(&mut self, mut sets: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.new_and_old(&mut sets, true).await?;
        let Some(new) = new else {
            return Ok(());
        };
        let all: Vec<&ReplicaSet> = old.iter().chain([&new]).collect();
        if self.reconcile_new(&all, &new).await? {
            return self.sync_rollout_status(&old, Some(&new)).await;
        }
        let active_old: Vec<ReplicaSet> = old
            .iter()
            .filter(|rs| replica_sets::is_active(rs))
            .cloned()
            .collect();
        if self.reconcile_old(&all, active_old, &new).await? {
            return self.sync_rollout_status(&old, Some(&new)).await;
        }
        if conditions::is_complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&old, Some(&new)).await
    }

    /// Upstream's `reconcileNewReplicaSet`: grows the new ReplicaSet as far
    /// as maxSurge allows (or shrinks it to `spec.replicas`).
    async fn reconcile_new(
        &mut self,
        all: &[&ReplicaSet],
        new: &ReplicaSet,
    ) -> Result<bool, Error> {
        let desired = surge::desired(&self.d);
        let current = spec_replicas(new);
        if current == desired {
            return Ok(false);
        }
        if current > desired {
            return Ok(self.scale_set_if_needed(new, desired).await?.0);
        }
        let total: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
        let size = surge::new_rs_new_replicas(&self.d, total, current);
        Ok(self.scale_set_if_needed(new, size).await?.0)
    }

    /// Upstream's `reconcileOldReplicaSets`: shrinks old ReplicaSets as far
    /// as maxUnavailable allows, counting the new ReplicaSet's unavailable
    /// pods against the budget.
    async fn reconcile_old(
        &mut self,
        all: &[&ReplicaSet],
        old: Vec<ReplicaSet>,
        new: &ReplicaSet,
    ) -> Result<bool, Error> {
        let old_pods: i32 = old.iter().map(spec_replicas).sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
        let min_available = surge::desired(&self.d) - surge::max_unavailable(&self.d);
        let new_unavailable = spec_replicas(new) - available_replicas(new);
        let max_scale_down = all_pods - min_available - new_unavailable;
        if max_scale_down <= 0 {
            return Ok(false);
        }
        let (old, cleaned) = self.cleanup_unhealthy(old, max_scale_down).await?;
        let all: Vec<&ReplicaSet> = old.iter().chain([new]).collect();
        let scaled = self.scale_down_old(&all, &old).await?;
        Ok(cleaned + scaled > 0)
    }

    /// Upstream's `cleanupUnhealthyReplicas`: first removes old pods that
    /// are not available, which costs no availability.
    async fn cleanup_unhealthy(
        &mut self,
        mut old: Vec<ReplicaSet>,
        max: i32,
    ) -> Result<(Vec<ReplicaSet>, i32), Error> {
        old.sort_by(replica_sets::by_age);
        let mut total = 0;
        for rs in &mut old {
            if total >= max {
                break;
            }
            let (replicas, available) = (spec_replicas(rs), available_replicas(rs));
            if replicas == 0 || replicas == available {
                continue;
            }
            if available > replicas {
                return Err(Error::StaleStatus {
                    key: self.key.clone(),
                    name: rs.metadata.name.clone().unwrap_or_default(),
                    replicas,
                    available,
                });
            }
            let down = (max - total).min(replicas - available);
            let (_, updated) = self.scale_set_if_needed(rs, replicas - down).await?;
            *rs = updated;
            total += down;
        }
        Ok((old, total))
    }

    /// Upstream's `scaleDownOldReplicaSetsForRollingUpdate`: removes
    /// available old pods down to `spec.replicas - maxUnavailable` available.
    async fn scale_down_old(
        &mut self,
        all: &[&ReplicaSet],
        old: &[ReplicaSet],
    ) -> Result<i32, Error> {
        let min_available = surge::desired(&self.d) - surge::max_unavailable(&self.d);
        let available: i32 = all.iter().map(|rs| available_replicas(rs)).sum();
        if available <= min_available {
            return Ok(0);
        }
        let budget = available - min_available;
        let mut old: Vec<&ReplicaSet> = old.iter().collect();
        old.sort_by(|a, b| replica_sets::by_age(a, b));
        let mut total = 0;
        for rs in old {
            if total >= budget {
                break;
            }
            let replicas = spec_replicas(rs);
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(budget - total);
            self.scale_set_if_needed(rs, replicas - down).await?;
            total += down;
        }
        Ok(total)
    }

    /// Upstream's `rolloutRecreate`.
    pub(super) async fn rollout_recreate(
        &mut self,
        mut sets: Vec<ReplicaSet>,
    ) -> Result<(), Error> {
        // The new ReplicaSet is not created before the old pods are gone.
        let (new, old) = self.new_and_old(&mut sets, false).await?;
        let mut scaled = false;
        for rs in old.iter().filter(|rs| replica_sets::is_active(rs)) {
            scaled |= self.scale_set_if_needed(rs, 0).await?.0;
        }
        if scaled {
            return self.sync_rollout_status(&old, new.as_ref()).await;
        }
        if self.old_pods_running(new.as_ref(), &old).await? {
            self.recheck_within(OLD_PODS_POLL);
            return self.sync_rollout_status(&old, new.as_ref()).await;
        }
        let (new, old) = match new {
            Some(new) => (new, old),
            None => match self.new_and_old(&mut sets, true).await? {
                (Some(new), old) => (new, old),
                (None, _) => return Ok(()),
            },
        };
        let (_, new) = self
            .scale_set_if_needed(&new, surge::desired(&self.d))
            .await?;
        if conditions::is_complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(&old, Some(&new)).await
    }

    /// Upstream's `oldPodsRunning`: an old ReplicaSet still reports pods, or
    /// a pod of an old ReplicaSet is not yet gone (terminating pods count).
    /// Pods are listed from the server: only Recreate rollouts need them.
    async fn old_pods_running(
        &self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<bool, Error> {
        if old.iter().map(status_replicas).sum::<i32>() > 0 {
            return Ok(true);
        }
        if old.is_empty() {
            return Ok(false);
        }
        let selector = selector_of(&self.d).map_err(|source| Error::Selector {
            key: self.key.clone(),
            source,
        })?;
        let ns = self.d.metadata.namespace.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.st.client.clone(), &ns);
        let list = pods
            .list(&ListParams::default().labels(&selector.to_string()))
            .await
            .map_err(self.api_err("list pods of old replica sets"))?;
        let new_uid = new.and_then(|rs| rs.metadata.uid.as_deref());
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        Ok(list.items.iter().any(|pod| {
            ownership::controller_of(&pod.metadata).is_some_and(|r| {
                Some(r.uid.as_str()) != new_uid && old_uids.contains(&r.uid.as_str())
            }) && !workload::is_terminal(pod)
        }))
    }
}
