//! Taints and tolerations, as `k8s.io/api/core/v1` `Toleration.ToleratesTaint`
//! defines them: a toleration matches a taint when its effect is empty or
//! equal, its key is empty (with `Exists`: every taint) or equal, and with
//! `Equal` (the default operator) the values are equal.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Taint effect that keeps new pods off a node.
pub const NO_SCHEDULE: &str = "NoSchedule";
/// Taint effect that keeps new pods off and evicts running ones.
pub const NO_EXECUTE: &str = "NoExecute";
/// Taint effect the scheduler tries to avoid but may ignore.
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";

/// Taint key matching `spec.unschedulable` (a cordoned node).
pub const UNSCHEDULABLE_KEY: &str = "node.kubernetes.io/unschedulable";
/// Taint key matching a node whose Ready condition is not True.
pub const NOT_READY_KEY: &str = "node.kubernetes.io/not-ready";

/// True if `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// True if any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first NoSchedule or NoExecute taint none of `tolerations` tolerates.
pub fn first_untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == NO_SCHEDULE || t.effect == NO_EXECUTE)
        .find(|t| !tolerated(tolerations, t))
}

/// How many PreferNoSchedule taints are not tolerated by the tolerations
/// that apply to them (those with an empty or PreferNoSchedule effect).
pub fn untolerated_preferences(taints: &[Taint], tolerations: &[Toleration]) -> usize {
    taints
        .iter()
        .filter(|t| t.effect == PREFER_NO_SCHEDULE)
        .filter(|t| !tolerated(tolerations, t))
        .count()
}

/// True if the pod tolerates a NoSchedule taint with `key` and no value (the
/// form the node controllers put on cordoned and not-ready nodes).
pub fn tolerates_condition(tolerations: &[Toleration], key: &str) -> bool {
    let taint = Taint {
        key: key.to_string(),
        effect: NO_SCHEDULE.to_string(),
        ..Taint::default()
    };
    tolerated(tolerations, &taint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()).filter(|v: &String| !v.is_empty()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            toleration_seconds: None,
        }
    }

    #[test]
    fn equal_and_exists() {
        let t = taint("dedicated", "gpu", NO_SCHEDULE);
        assert!(tolerates(
            &tol("dedicated", "Equal", "gpu", NO_SCHEDULE),
            &t
        ));
        assert!(tolerates(&tol("dedicated", "", "gpu", ""), &t));
        assert!(!tolerates(
            &tol("dedicated", "Equal", "cpu", NO_SCHEDULE),
            &t
        ));
        assert!(tolerates(&tol("dedicated", "Exists", "", ""), &t));
        assert!(!tolerates(&tol("dedicated", "Exists", "", NO_EXECUTE), &t));
        assert!(!tolerates(&tol("other", "Exists", "", ""), &t));
        assert!(!tolerates(&tol("dedicated", "Bogus", "gpu", ""), &t));
    }

    #[test]
    fn empty_key_exists_tolerates_everything() {
        let all = [tol("", "Exists", "", "")];
        assert!(tolerated(&all, &taint("a", "b", NO_EXECUTE)));
        assert!(tolerated(&all, &taint("c", "", NO_SCHEDULE)));
    }

    #[test]
    fn untolerated_taints() {
        let taints = [
            taint("soft", "", PREFER_NO_SCHEDULE),
            taint("a", "1", NO_SCHEDULE),
            taint("b", "2", NO_EXECUTE),
        ];
        let found = first_untolerated(&taints, &[]).expect("untolerated");
        assert_eq!(found.key, "a");
        let found = first_untolerated(&taints, &[tol("a", "Equal", "1", NO_SCHEDULE)])
            .expect("untolerated");
        assert_eq!(found.key, "b");
        assert!(first_untolerated(
            &taints,
            &[tol("a", "Exists", "", ""), tol("b", "Exists", "", "")]
        )
        .is_none());
        assert_eq!(untolerated_preferences(&taints, &[]), 1);
        assert_eq!(
            untolerated_preferences(&taints, &[tol("soft", "Exists", "", PREFER_NO_SCHEDULE)]),
            0
        );
    }

    #[test]
    fn condition_taints() {
        assert!(tolerates_condition(
            &[tol(UNSCHEDULABLE_KEY, "Exists", "", NO_SCHEDULE)],
            UNSCHEDULABLE_KEY
        ));
        assert!(!tolerates_condition(
            &[tol(UNSCHEDULABLE_KEY, "Exists", "", NO_EXECUTE)],
            UNSCHEDULABLE_KEY
        ));
        assert!(!tolerates_condition(&[], NOT_READY_KEY));
    }
}
