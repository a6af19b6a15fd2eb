//! Rolling-update arithmetic, as upstream's deployment util: resolving
//! `maxSurge` / `maxUnavailable` (ints or percentages of `spec.replicas`;
//! surge rounds up, unavailable rounds down, and if both come out zero
//! unavailable becomes 1), how far the new ReplicaSet may scale up, and the
//! share of a scale-up or scale-down each ReplicaSet takes during
//! proportional scaling.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Errors resolving rolling-update parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A string value that is not an integer percentage.
    #[error("invalid value {0:?} for maxSurge/maxUnavailable: use an integer or a percentage like \"25%\"")]
    NotAPercentage(String),
}

/// Upstream's `GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total`.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, Error> {
    match value {
        IntOrString::Int(v) => Ok(*v),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::NotAPercentage(s.clone()))?;
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            Ok(i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX }))
        }
    }
}

/// Upstream's `ResolveFenceposts`: absolute (maxSurge, maxUnavailable) for `desired` replicas.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), Error> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    // Both zero can only come from rounding down a percentage; a surge of 0
    // needs an unavailable pod to make progress.
    Ok(if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    })
}

/// `spec.replicas` of a Deployment (defaulted to 1).
pub fn desired(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

/// The strategy is RollingUpdate (also when unset, the API default).
pub fn is_rolling_update(d: &Deployment) -> bool {
    d.spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = ru.and_then(|r| r.max_surge.as_ref());
    let unavailable = ru.and_then(|r| r.max_unavailable.as_ref());
    // Validation rejects bad values; a stored bad value acts like zero, as upstream.
    resolve_fenceposts(surge, unavailable, desired(d)).unwrap_or((0, 0))
}

/// Upstream's `MaxSurge`: 0 unless RollingUpdate.
pub fn max_surge(d: &Deployment) -> i32 {
    if is_rolling_update(d) {
        fenceposts(d).0
    } else {
        0
    }
}

/// Upstream's `MaxUnavailable`: 0 unless RollingUpdate with replicas, at most `spec.replicas`.
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || desired(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(desired(d))
}

/// Upstream's `NewRSNewReplicas`: the size the new ReplicaSet may have now,
/// given the sum of `spec.replicas` over all ReplicaSets (`total_pods`).
pub fn new_rs_new_replicas(d: &Deployment, total_pods: i32, new_rs_replicas: i32) -> i32 {
    if !is_rolling_update(d) {
        return desired(d);
    }
    let max_total = desired(d) + max_surge(d);
    if total_pods >= max_total {
        return new_rs_replicas;
    }
    let scale_up = (max_total - total_pods).min(desired(d) - new_rs_replicas);
    new_rs_replicas + scale_up
}

/// Upstream's `getReplicaSetFraction`: the part of a proportional resize a
/// ReplicaSet of `rs_replicas` takes. `annotated_max` is its
/// `max-replicas` annotation (the Deployment size plus surge it was sized
/// for), `fallback` the Deployment's `status.replicas` when it has none.
fn fraction(rs_replicas: i32, annotated_max: Option<i32>, fallback: i32, d: &Deployment) -> i32 {
    if desired(d) == 0 {
        return -rs_replicas;
    }
    let target = f64::from(desired(d) + max_surge(d));
    let annotated = f64::from(annotated_max.unwrap_or(fallback));
    if annotated == 0.0 {
        return 0;
    }
    // Sizes are i32 and the ratio stays within a few times that.
    #[allow(clippy::cast_possible_truncation)]
    let size = (f64::from(rs_replicas) * target / annotated).round() as i32;
    size - rs_replicas
}

/// Upstream's `GetProportion`: how many replicas a ReplicaSet gains (or
/// loses) of `to_add`, given `added` already handed out.
pub fn proportion(
    rs_replicas: i32,
    annotated_max: Option<i32>,
    d: &Deployment,
    to_add: i32,
    added: i32,
) -> i32 {
    if rs_replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fallback = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let share = fraction(rs_replicas, annotated_max, fallback, d);
    let allowed = to_add - added;
    if to_add > 0 {
        share.min(allowed)
    } else {
        share.max(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn percentages_round_like_upstream() {
        assert_eq!(scaled_value(&s("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&s("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, false), Ok(4));
        assert!(scaled_value(&s("5"), 10, true).is_err());
        assert!(scaled_value(&s("x%"), 10, true).is_err());
        // The API defaults (25%/25%) for 3 replicas: surge 1, unavailable 0.
        assert_eq!(
            resolve_fenceposts(Some(&s("25%")), Some(&s("25%")), 3),
            Ok((1, 0))
        );
        // Both round to zero: unavailable becomes 1.
        assert_eq!(
            resolve_fenceposts(Some(&s("0%")), Some(&s("25%")), 3),
            Ok((0, 1))
        );
        assert_eq!(resolve_fenceposts(None, None, 3), Ok((0, 1)));
    }

    #[test]
    fn max_unavailable_is_capped_and_strategy_aware() {
        assert_eq!(
            max_unavailable(&deployment(2, IntOrString::Int(1), IntOrString::Int(5))),
            2
        );
        let mut recreate = deployment(3, IntOrString::Int(1), IntOrString::Int(1));
        recreate.spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
        assert_eq!(new_rs_new_replicas(&recreate, 3, 0), 3);
    }

    #[test]
    fn new_replica_set_growth_respects_surge() {
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        assert_eq!(new_rs_new_replicas(&d, 3, 0), 1, "3 old + 1 surge");
        assert_eq!(new_rs_new_replicas(&d, 4, 1), 1, "at the surge limit");
        assert_eq!(new_rs_new_replicas(&d, 2, 1), 3, "room for 2 more");
        assert_eq!(
            new_rs_new_replicas(&d, 0, 0),
            3,
            "never above spec.replicas"
        );
    }

    #[test]
    fn proportions() {
        // 10 replicas + 3 surge (25% of 10, rounded up) scaled to 20 + 5.
        let d = deployment(20, s("25%"), s("25%"));
        // An RS of 8 sized for 13: 8 * 25 / 13 = 15.38 -> 15, i.e. +7.
        assert_eq!(proportion(8, Some(13), &d, 12, 0), 7);
        // Capped by what is left to hand out.
        assert_eq!(proportion(8, Some(13), &d, 12, 10), 2);
        assert_eq!(proportion(0, Some(13), &d, 12, 0), 0);
        let mut zero = d.clone();
        zero.spec.replicas = Some(0);
        assert_eq!(proportion(4, Some(13), &zero, -10, 0), -4);
        // Scaling down never removes more than asked.
        let small = deployment(5, IntOrString::Int(1), IntOrString::Int(0));
        assert_eq!(proportion(8, Some(11), &small, -5, -4), -1);
    }
}
