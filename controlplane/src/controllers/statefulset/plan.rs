//! What one StatefulSet sync does, as a pure function of its pods (upstream's
//! `updateStatefulSet`): create missing ordinals, delete condemned ones
//! (beyond `replicas`) highest first, replace pods of an old revision from
//! the highest ordinal down to the partition — with OrderedReady waiting
//! for each step, Parallel not — and the status counts.

/// One pod of the set, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Ordinal from its name.
    pub ordinal: i32,
    /// Pod name.
    pub name: String,
    /// Its revision label.
    pub revision: String,
    /// Running with Ready True.
    pub running_ready: bool,
    /// Running, Ready for minReadySeconds.
    pub available: bool,
    /// Phase Failed or Succeeded: to be replaced.
    pub finished: bool,
    /// Being deleted.
    pub terminating: bool,
}

impl Replica {
    fn healthy(&self) -> bool {
        self.running_ready && !self.terminating
    }
}

/// The parts of the spec the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.ordinals.start`.
    pub start: i32,
    /// `podManagementPolicy: OrderedReady` (else Parallel).
    pub ordered: bool,
    /// The RollingUpdate partition; None for OnDelete.
    pub partition: Option<i32>,
    /// Revision of the current template.
    pub update_revision: String,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal.
    Create(i32),
    /// Delete this pod.
    Delete(String),
}

/// The changes of one sync, in order; OrderedReady yields at most one.
pub fn plan(spec: &SetSpec, pods: &[Replica]) -> Vec<Step> {
    let count = usize::try_from(spec.replicas).unwrap_or(0);
    let slots: Vec<Option<&Replica>> = (0..spec.replicas.max(0))
        .map(|i| pods.iter().find(|p| p.ordinal == spec.start + i))
        .collect();
    let in_range = |o: i32| o >= spec.start && o < spec.start + spec.replicas.max(0);
    let mut condemned: Vec<&Replica> = pods.iter().filter(|p| !in_range(p.ordinal)).collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    let first_unhealthy = slots
        .iter()
        .flatten()
        .find(|p| !p.healthy())
        .or_else(|| condemned.iter().rev().find(|p| !p.healthy()))
        .map(|p| p.name.clone());

    let mut steps = Vec::new();
    for (i, slot) in (0..).zip(slots.iter()) {
        match slot {
            None => {
                steps.push(Step::Create(spec.start + i));
                if spec.ordered {
                    return steps;
                }
            }
            Some(p) if p.finished && !p.terminating => {
                steps.push(Step::Delete(p.name.clone()));
                if spec.ordered {
                    return steps;
                }
            }
            Some(p) if spec.ordered && (p.terminating || !p.available) => return steps,
            Some(_) => {}
        }
    }
    for p in &condemned {
        if p.terminating {
            if spec.ordered {
                return steps;
            }
            continue;
        }
        if spec.ordered && !p.available && first_unhealthy.as_deref() != Some(p.name.as_str()) {
            return steps;
        }
        steps.push(Step::Delete(p.name.clone()));
        if spec.ordered {
            return steps;
        }
    }
    let Some(partition) = spec.partition else {
        return steps;
    };
    let from = usize::try_from(partition).unwrap_or(0);
    for slot in slots.iter().take(count).skip(from).rev() {
        let Some(p) = slot else {
            return steps;
        };
        if p.revision != spec.update_revision && !p.terminating {
            steps.push(Step::Delete(p.name.clone()));
            return steps;
        }
        if !p.healthy() {
            return steps;
        }
    }
    steps
}

/// The counts and revisions of a StatefulSetStatus.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Pods created and not being deleted.
    pub replicas: i32,
    /// Running and Ready.
    pub ready: i32,
    /// Ready for minReadySeconds.
    pub available: i32,
    /// At the current revision.
    pub current: i32,
    /// At the update revision.
    pub updated: i32,
    /// The revision pods were at before the latest update.
    pub current_revision: String,
    /// The revision of the current template.
    pub update_revision: String,
}

/// Upstream's status counts; the current revision becomes the update
/// revision once every pod is updated and ready (`completeRollingUpdate`).
pub fn counts(
    pods: &[Replica],
    current_revision: Option<&str>,
    update_revision: &str,
    rolling: bool,
) -> Counts {
    let mut c = Counts {
        current_revision: current_revision
            .filter(|r| !r.is_empty())
            .unwrap_or(update_revision)
            .to_string(),
        update_revision: update_revision.to_string(),
        ..Counts::default()
    };
    for p in pods {
        if !p.terminating {
            c.replicas += 1;
            if p.revision == c.current_revision {
                c.current += 1;
            }
            if p.revision == update_revision {
                c.updated += 1;
            }
        }
        if p.running_ready {
            c.ready += 1;
            if p.available {
                c.available += 1;
            }
        }
    }
    if rolling && c.updated == c.replicas && c.ready == c.replicas {
        c.current_revision = update_revision.to_string();
        c.current = c.updated;
    }
    c
}

/// The ordinal of a pod named `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(ordinal: i32, rev: &str) -> Replica {
        Replica {
            ordinal,
            name: format!("web-{ordinal}"),
            revision: rev.into(),
            running_ready: true,
            available: true,
            finished: false,
            terminating: false,
        }
    }

    fn pending(ordinal: i32, rev: &str) -> Replica {
        Replica {
            running_ready: false,
            available: false,
            ..ready(ordinal, rev)
        }
    }

    fn spec(replicas: i32, ordered: bool) -> SetSpec {
        SetSpec {
            replicas,
            start: 0,
            ordered,
            partition: Some(0),
            update_revision: "r1".into(),
        }
    }

    #[test]
    fn ordered_creation_waits_for_ready() {
        assert_eq!(plan(&spec(3, true), &[]), vec![Step::Create(0)]);
        assert!(plan(&spec(3, true), &[pending(0, "r1")]).is_empty());
        assert_eq!(
            plan(&spec(3, true), &[ready(0, "r1")]),
            vec![Step::Create(1)]
        );
        assert_eq!(
            plan(&spec(3, true), &[ready(0, "r1"), ready(1, "r1")]),
            vec![Step::Create(2)]
        );
    }

    #[test]
    fn parallel_creates_everything() {
        assert_eq!(
            plan(&spec(3, false), &[]),
            vec![Step::Create(0), Step::Create(1), Step::Create(2)]
        );
    }

    #[test]
    fn scale_down_is_reverse_and_one_at_a_time() {
        let pods = vec![ready(0, "r1"), ready(1, "r1"), ready(2, "r1")];
        assert_eq!(
            plan(&spec(1, true), &pods),
            vec![Step::Delete("web-2".into())]
        );
        let mut terminating = ready(2, "r1");
        terminating.terminating = true;
        assert!(plan(
            &spec(1, true),
            &[ready(0, "r1"), ready(1, "r1"), terminating]
        )
        .is_empty());
        assert_eq!(
            plan(&spec(1, true), &[ready(0, "r1"), ready(1, "r1")]),
            vec![Step::Delete("web-1".into())]
        );
        // Parallel deletes all condemned at once.
        assert_eq!(
            plan(&spec(1, false), &pods),
            vec![Step::Delete("web-2".into()), Step::Delete("web-1".into())]
        );
        // An unhealthy replica blocks scale down when ordered.
        assert!(plan(&spec(1, true), &[pending(0, "r1"), ready(1, "r1")]).is_empty());
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let old = vec![ready(0, "r0"), ready(1, "r0"), ready(2, "r0")];
        assert_eq!(
            plan(&spec(3, true), &old),
            vec![Step::Delete("web-2".into())]
        );
        // The recreated pod must be healthy before the next one goes.
        let next = vec![ready(0, "r0"), ready(1, "r0"), pending(2, "r1")];
        assert!(plan(&spec(3, true), &next).is_empty());
        let next = vec![ready(0, "r0"), ready(1, "r0"), ready(2, "r1")];
        assert_eq!(
            plan(&spec(3, true), &next),
            vec![Step::Delete("web-1".into())]
        );
        let mut partitioned = spec(3, true);
        partitioned.partition = Some(2);
        assert!(plan(&partitioned, &next).is_empty());
        partitioned.partition = None;
        assert!(plan(&partitioned, &old).is_empty());
    }

    #[test]
    fn failed_pods_are_replaced() {
        let mut failed = ready(0, "r1");
        failed.finished = true;
        assert_eq!(
            plan(&spec(1, true), &[failed]),
            vec![Step::Delete("web-0".into())]
        );
    }

    #[test]
    fn status_completes_the_rollout() {
        let c = counts(&[ready(0, "r0"), ready(1, "r1")], Some("r0"), "r1", true);
        assert_eq!((c.replicas, c.ready, c.current, c.updated), (2, 2, 1, 1));
        assert_eq!(c.current_revision, "r0");
        let c = counts(&[ready(0, "r1"), ready(1, "r1")], Some("r0"), "r1", true);
        assert_eq!((c.current, c.current_revision.as_str()), (2, "r1"));
        let c = counts(&[], None, "r1", true);
        assert_eq!(c.current_revision, "r1");
    }

    #[test]
    fn ordinals_parse_from_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }
}
