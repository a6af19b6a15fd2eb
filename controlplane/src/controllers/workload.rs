//! Pod helpers shared by the workload controllers that create pods from a
//! template (DaemonSet, StatefulSet, Job): template revision hashes, pod
//! readiness and availability as upstream's `podutil` judges them, the
//! controller ownerReference, and label selectors as list queries.
//!
//! Apart from [`history`] (their ControllerRevisions) nothing here talks to
//! the API server; the controllers own all other I/O.

pub mod history;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::core::{Selector, SelectorExt};
use kube::Resource;

/// Label carrying the template revision a pod was created from.
///
/// Its value is the hash of the template ([`template_hash`]) that also names
/// the template's ControllerRevision ([`history`]).
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Characters upstream's `rand.SafeEncodeString` maps hash digits to: no
/// vowels (no words) and no look-alikes such as 0/o or 1/l.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Errors turning a workload's label selector into a pod query.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    /// The selector has an operator or value list the API does not allow.
    #[error(
        "spec.selector is invalid ({0}); fix the selector so the controller can find its pods"
    )]
    Invalid(String),
    /// An empty selector would select every pod in the namespace.
    #[error("spec.selector is empty; it must select the pods of the template")]
    Empty,
}

/// A short, stable hash of a pod template, spelled like upstream's
/// `controller.ComputeHash`: FNV-1a (32 bit) over the template, its decimal
/// digits mapped onto [`SAFE_ALPHABET`].
pub fn template_hash(template: &PodTemplateSpec) -> String {
    salted_template_hash(template, 0)
}

/// [`template_hash`] salted with a workload's `status.collisionCount`, as
/// upstream's `HashControllerRevision` probe: a count of 0 leaves the hash
/// unsalted, so revisions named before any collision keep their names.
pub fn salted_template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    // Serialization of k8s-openapi types is deterministic: struct fields in
    // declaration order, maps as BTreeMaps.
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if collision_count != 0 {
        bytes.extend_from_slice(collision_count.to_string().as_bytes());
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// The pod's phase, `Pending` when it has none yet.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// True once the pod has succeeded or failed for good.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// True when the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// When the pod's Ready condition last became True, if it is True now.
pub fn ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// True when the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// True when the pod is Running and Ready.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

/// How long until a ready pod counts as available, as upstream's
/// `IsPodAvailable`: `Some(0)` when available now, `None` when not ready.
/// A Ready condition without a transition time counts as ready long ago.
pub fn until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let since = ready_since(pod)?;
    let min_ready = Duration::from_secs(u64::try_from(min_ready_seconds).unwrap_or(0));
    if min_ready.is_zero() {
        return Some(Duration::ZERO);
    }
    let Some(since) = since else {
        return Some(Duration::ZERO);
    };
    let ready_for = now.duration_since(since);
    let ready_for = Duration::try_from(ready_for).unwrap_or(Duration::ZERO);
    Some(min_ready.saturating_sub(ready_for))
}

/// True when the pod has been ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    until_available(pod, min_ready_seconds, now).is_some_and(|d| d.is_zero())
}

/// True when `uid` is the pod's controller.
pub fn is_controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// The controller ownerReference to `owner` (controller and
/// blockOwnerDeletion set, as upstream's `NewControllerRef`).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let mut reference = owner.controller_owner_ref(&())?;
    reference.block_owner_deletion = Some(true);
    Some(reference)
}

/// The selector as a `labelSelector` query, refusing one that selects everything.
pub fn selector_query(selector: &LabelSelector) -> Result<(String, Selector), SelectorError> {
    let parsed =
        Selector::try_from(selector.clone()).map_err(|e| SelectorError::Invalid(e.to_string()))?;
    if parsed.selects_all() {
        return Err(SelectorError::Empty);
    }
    Ok((parsed.to_string(), parsed))
}

/// True when `labels` match `selector`.
pub fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    selector.matches(labels.unwrap_or(&empty))
}

/// A new pod from `template`: its labels, annotations and spec, owned by
/// `owner`, in `namespace`. Callers set the name (or generateName) and any
/// identity of their own.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Sets one label on a pod.
pub fn set_label(pod: &mut Pod, key: &str, value: &str) {
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value.to_string());
}

/// The pod's value of [`REVISION_LABEL`], empty when it has none.
pub fn revision(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(phase: &str, ready_at: Option<jiff::Timestamp>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(t)),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn hash_is_stable_and_changes_with_the_template() {
        let a = PodTemplateSpec {
            spec: Some(PodSpec::default()),
            ..PodTemplateSpec::default()
        };
        let mut b = a.clone();
        b.metadata = Some(ObjectMeta {
            labels: Some([("x".into(), "y".into())].into()),
            ..ObjectMeta::default()
        });
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a), salted_template_hash(&a, 0));
        assert_ne!(template_hash(&a), salted_template_hash(&a, 1));
        assert_ne!(salted_template_hash(&a, 1), salted_template_hash(&a, 2));
        assert!(template_hash(&a)
            .bytes()
            .all(|c| SAFE_ALPHABET.contains(&c)));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = jiff::Timestamp::from_second(1_000).unwrap_or_default();
        let since = jiff::Timestamp::from_second(995).unwrap_or_default();
        let p = pod("Running", Some(since));
        assert!(is_running_and_ready(&p));
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 5, now));
        assert!(!is_available(&p, 10, now));
        assert_eq!(until_available(&p, 10, now), Some(Duration::from_secs(5)));
        assert_eq!(until_available(&pod("Running", None), 10, now), None);
    }

    #[test]
    fn selectors_refuse_everything() {
        assert!(matches!(
            selector_query(&LabelSelector::default()),
            Err(SelectorError::Empty)
        ));
        let sel = LabelSelector {
            match_labels: Some([("app".into(), "web".into())].into()),
            ..LabelSelector::default()
        };
        let (query, parsed) = selector_query(&sel).expect("valid selector");
        assert_eq!(query, "app=web");
        assert!(selects(
            &parsed,
            Some(&[("app".into(), "web".into())].into())
        ));
        assert!(!selects(&parsed, None));
    }
}
