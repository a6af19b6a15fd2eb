//! Revision bookkeeping in annotations, as upstream: each ReplicaSet of a
//! Deployment carries `deployment.kubernetes.io/revision` (the Deployment
//! carries its new ReplicaSet's), reused ReplicaSets (`rollout undo`) keep
//! their earlier revisions in `revision-history`, and `desired-replicas` /
//! `max-replicas` record the Deployment size a ReplicaSet was scaled for
//! (proportional scaling reads them). The Deployment's other annotations,
//! such as `kubernetes.io/change-cause`, are copied to its new ReplicaSet,
//! which is where `kubectl rollout history` reads them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;

/// The revision of a ReplicaSet, and of its Deployment's current template.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a ReplicaSet that was rolled back to.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last sized this ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last sized this ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Longest `revision-history` value kept, as upstream.
const MAX_HISTORY_CHARS: usize = 2000;

/// Deployment annotations never copied to ReplicaSets.
const SKIPPED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

type Annotations = BTreeMap<String, String>;

/// The revision number of a ReplicaSet (0 when missing or unparsable).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The highest revision among `sets`.
pub fn max_revision<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    sets.into_iter().map(revision_of).max().unwrap_or(0)
}

fn int_annotation(annotations: Option<&Annotations>, key: &str) -> Option<i32> {
    annotations?.get(key)?.parse().ok()
}

/// The `desired-replicas` annotation.
pub fn desired_replicas(rs: &ReplicaSet) -> Option<i32> {
    int_annotation(rs.metadata.annotations.as_ref(), DESIRED_REPLICAS)
}

/// The `max-replicas` annotation.
pub fn max_replicas(rs: &ReplicaSet) -> Option<i32> {
    int_annotation(rs.metadata.annotations.as_ref(), MAX_REPLICAS)
}

/// True when the replicas annotations differ from `desired` / `max`.
pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let a = rs.metadata.annotations.as_ref();
    a.and_then(|a| a.get(DESIRED_REPLICAS)) != Some(&desired.to_string())
        || a.and_then(|a| a.get(MAX_REPLICAS)) != Some(&max.to_string())
}

/// Sets the replicas annotations; returns whether anything changed.
pub fn set_replicas_annotations(annotations: &mut Annotations, desired: i32, max: i32) -> bool {
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

/// Copies the Deployment's annotations (all but [`SKIPPED`]) onto a
/// ReplicaSet; returns whether anything changed.
fn copy_deployment_annotations(deployment: &Annotations, rs: &mut Annotations) -> bool {
    let mut changed = false;
    for (k, v) in deployment {
        if SKIPPED.contains(&k.as_str()) || rs.get(k) == Some(v) {
            continue;
        }
        rs.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: copies the Deployment's
/// annotations, raises the revision to `new_revision` (recording the old
/// one in the history when a ReplicaSet is reused) and, for a ReplicaSet
/// about to be created, sets the replicas annotations. Returns whether
/// anything changed.
pub fn set_new_replica_set_annotations(
    deployment: &Annotations,
    rs: &mut Annotations,
    new_revision: i64,
    exists: bool,
    replicas: (i32, i32),
) -> bool {
    let mut changed = copy_deployment_annotations(deployment, rs);
    let old = rs.get(REVISION).cloned();
    let old_revision = match old.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(r)) => r,
        // Someone wrote garbage; leave the revision alone, as upstream.
        Some(Err(_)) => return false,
    };
    if old_revision < new_revision {
        rs.insert(REVISION.to_string(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = rs.get(REVISION_HISTORY).cloned().unwrap_or_default();
            let mut entries: Vec<&str> = history.split(',').filter(|e| !e.is_empty()).collect();
            entries.push(&old);
            while entries
                .iter()
                .map(|e| e.len() + 1)
                .sum::<usize>()
                .saturating_sub(1)
                > MAX_HISTORY_CHARS
            {
                entries.remove(0);
            }
            let joined = entries.join(",");
            rs.insert(REVISION_HISTORY.to_string(), joined);
        }
    }
    if !exists && set_replicas_annotations(rs, replicas.0, replicas.1) {
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn new_replica_set_gets_revision_and_change_cause() {
        let d = map(&[
            ("kubernetes.io/change-cause", "set image"),
            (REVISION, "7"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ]);
        let mut rs = Annotations::new();
        assert!(set_new_replica_set_annotations(
            &d,
            &mut rs,
            2,
            false,
            (3, 4)
        ));
        assert_eq!(
            rs,
            map(&[
                ("kubernetes.io/change-cause", "set image"),
                (REVISION, "2"),
                (DESIRED_REPLICAS, "3"),
                (MAX_REPLICAS, "4")
            ])
        );
        assert!(
            !set_new_replica_set_annotations(&d, &mut rs, 2, true, (3, 4)),
            "idempotent"
        );
    }

    #[test]
    fn reused_replica_set_keeps_its_history() {
        let mut rs = map(&[(REVISION, "1")]);
        assert!(set_new_replica_set_annotations(
            &Annotations::new(),
            &mut rs,
            3,
            true,
            (1, 1)
        ));
        assert_eq!(rs.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(rs.get(REVISION_HISTORY).map(String::as_str), Some("1"));
        assert!(set_new_replica_set_annotations(
            &Annotations::new(),
            &mut rs,
            5,
            true,
            (1, 1)
        ));
        assert_eq!(rs.get(REVISION_HISTORY).map(String::as_str), Some("1,3"));
        assert!(
            !set_new_replica_set_annotations(&Annotations::new(), &mut rs, 4, true, (1, 1)),
            "never lowered"
        );
        let mut garbage = map(&[(REVISION, "x")]);
        assert!(!set_new_replica_set_annotations(
            &Annotations::new(),
            &mut garbage,
            4,
            true,
            (1, 1)
        ));
    }

    #[test]
    fn revisions_of_sets() {
        let rs = |r: &str| {
            let mut rs = ReplicaSet::default();
            rs.metadata.annotations = Some(map(&[(REVISION, r), (DESIRED_REPLICAS, "4")]));
            rs
        };
        let sets = [rs("1"), rs("12"), rs("nope")];
        assert_eq!(max_revision(&sets), 12);
        assert_eq!(desired_replicas(&sets[0]), Some(4));
        assert!(replicas_annotations_need_update(&sets[0], 4, 5));
    }
}
