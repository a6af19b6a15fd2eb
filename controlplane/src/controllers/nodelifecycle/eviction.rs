//! NoExecute eviction decisions (upstream's taint eviction controller): a
//! pod on a node with NoExecute taints it does not tolerate goes at once; a
//! pod that tolerates them all for a limited `tolerationSeconds` goes when
//! the shortest of those runs out; a pod that tolerates them forever stays.
//! Pure.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Taint, Toleration};

/// The NoExecute effect.
pub const NO_EXECUTE: &str = "NoExecute";

/// What to do with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The pod tolerates the node's NoExecute taints forever (or there are none).
    Never,
    /// Delete the pod now.
    Now,
    /// Delete the pod at this time.
    At(Timestamp),
}

/// Upstream's `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Decides the fate of a pod with `tolerations`, created at `pod_created`,
/// on a node whose NoExecute taints (with the time each one was added) are
/// `taints`, at `now`.
pub fn decide(
    taints: &[(Taint, Timestamp)],
    tolerations: &[Toleration],
    pod_created: Option<Timestamp>,
    now: Timestamp,
) -> Eviction {
    let mut shortest: Option<i64> = None;
    let mut tainted_since: Option<Timestamp> = None;
    for (taint, added) in taints.iter().filter(|(t, _)| t.effect == NO_EXECUTE) {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Eviction::Now;
        }
        for seconds in matching.iter().filter_map(|t| t.toleration_seconds) {
            shortest = Some(shortest.map_or(seconds, |s| s.min(seconds)));
        }
        tainted_since = Some(tainted_since.map_or(*added, |t| t.max(*added)));
    }
    let (Some(seconds), Some(since)) = (shortest, tainted_since) else {
        return Eviction::Never;
    };
    if seconds <= 0 {
        return Eviction::Now;
    }
    // A pod that arrived after the taint gets its full toleration.
    let start = pod_created.map_or(since, |created| created.max(since));
    let deadline = start
        .saturating_add(SignedDuration::from_secs(seconds))
        .unwrap_or(Timestamp::MAX);
    if deadline <= now {
        Eviction::Now
    } else {
        Eviction::At(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn toleration(
        key: Option<&str>,
        op: &str,
        effect: Option<&str>,
        seconds: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            effect: effect.map(Into::into),
            toleration_seconds: seconds,
            value: None,
        }
    }

    const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    #[test]
    fn matching_rules_follow_upstream() {
        let t = Taint {
            value: Some("x".into()),
            ..taint("dedicated", NO_EXECUTE)
        };
        assert!(tolerates(
            &toleration(Some("dedicated"), "Exists", None, None),
            &t
        ));
        assert!(
            tolerates(&toleration(None, "Exists", None, None), &t),
            "empty key + Exists tolerates all"
        );
        assert!(!tolerates(
            &toleration(Some("dedicated"), "Exists", Some("NoSchedule"), None),
            &t
        ));
        let mut eq = toleration(Some("dedicated"), "Equal", None, None);
        assert!(!tolerates(&eq, &t));
        eq.value = Some("x".into());
        assert!(tolerates(&eq, &t));
    }

    #[test]
    fn untolerated_taint_evicts_now() {
        let taints = [(taint("dedicated", NO_EXECUTE), at(0))];
        let tols = [toleration(
            Some(UNREACHABLE),
            "Exists",
            Some(NO_EXECUTE),
            Some(300),
        )];
        assert_eq!(decide(&taints, &tols, None, at(1)), Eviction::Now);
    }

    #[test]
    fn toleration_seconds_delay_eviction_from_the_taint() {
        let taints = [(taint(UNREACHABLE, NO_EXECUTE), at(10))];
        let tols = [
            toleration(Some(UNREACHABLE), "Exists", Some(NO_EXECUTE), Some(300)),
            toleration(None, "Exists", Some(NO_EXECUTE), Some(30)),
        ];
        assert_eq!(
            decide(&taints, &tols, Some(at(0)), at(11)),
            Eviction::At(at(40))
        );
        assert_eq!(decide(&taints, &tols, Some(at(0)), at(40)), Eviction::Now);
        // A pod created after the taint counts from its creation.
        assert_eq!(
            decide(&taints, &tols, Some(at(20)), at(21)),
            Eviction::At(at(50))
        );
    }

    #[test]
    fn forever_and_no_taints_never_evict() {
        let taints = [(taint(UNREACHABLE, NO_EXECUTE), at(0))];
        let tols = [toleration(Some(UNREACHABLE), "Exists", None, None)];
        assert_eq!(decide(&taints, &tols, None, at(1000)), Eviction::Never);
        assert_eq!(decide(&[], &[], None, at(0)), Eviction::Never);
        let no_schedule = [(taint(UNREACHABLE, "NoSchedule"), at(0))];
        assert_eq!(decide(&no_schedule, &[], None, at(0)), Eviction::Never);
    }

    #[test]
    fn zero_seconds_evicts_now() {
        let taints = [(taint(UNREACHABLE, NO_EXECUTE), at(0))];
        let tols = [toleration(Some(UNREACHABLE), "Exists", None, Some(0))];
        assert_eq!(decide(&taints, &tols, None, at(0)), Eviction::Now);
    }
}
