//! The arithmetic of a Job sync, as upstream's job controller does it:
//! success and failure criteria (completions, backoffLimit,
//! activeDeadlineSeconds), how many pods should be active, which excess pods
//! go, the exponential backoff before replacing failed pods, and Indexed
//! completion bookkeeping. Pure functions; the controller does the I/O.

use std::collections::BTreeSet;
use std::time::Duration;

/// Delay before the first replacement of a failed pod (upstream's
/// `DefaultJobPodFailureBackOff`); doubled per further failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Upper bound of that delay (six minutes, as documented upstream).
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// One pod of a Job, as the arithmetic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPod {
    /// Pod name.
    pub name: String,
    /// Phase Succeeded.
    pub succeeded: bool,
    /// Phase Failed.
    pub failed: bool,
    /// Being deleted (and not finished).
    pub terminating: bool,
    /// Ready condition True.
    pub ready: bool,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// When it finished (seconds since the epoch), if it did.
    pub finished_at: Option<i64>,
    /// Completion index of an Indexed Job's pod.
    pub index: Option<i32>,
    /// Container restarts (counted against backoffLimit under OnFailure).
    pub restarts: i32,
}

impl JobPod {
    /// Neither finished nor being deleted.
    pub fn active(&self) -> bool {
        !self.succeeded && !self.failed && !self.terminating
    }
}

/// The spec numbers a sync depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `spec.completions` (None: a work queue, done at the first success).
    pub completions: Option<i32>,
    /// `spec.parallelism`.
    pub parallelism: i32,
    /// `spec.backoffLimit`.
    pub backoff_limit: i32,
    /// `spec.activeDeadlineSeconds`.
    pub active_deadline: Option<i64>,
}

/// Why a Job failed: condition reason and message, as upstream spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message.
    pub message: &'static str,
}

/// Too many failed pods.
pub const BACKOFF_LIMIT_EXCEEDED: Failure = Failure {
    reason: "BackoffLimitExceeded",
    message: "Job has reached the specified backoff limit",
};
/// Running longer than activeDeadlineSeconds.
pub const DEADLINE_EXCEEDED: Failure = Failure {
    reason: "DeadlineExceeded",
    message: "Job was active longer than specified deadline",
};

/// The failure criterion met, if any: more failed pods than backoffLimit
/// (under `restartPolicy: OnFailure` also `restarts` of running pods
/// reaching it, as upstream's `pastBackoffLimitOnFailure`), or the deadline
/// passed since `started`.
pub fn failure(
    limits: &Limits,
    failed: i32,
    restarts: Option<i32>,
    started: Option<i64>,
    now: i64,
) -> Option<Failure> {
    let restarts_exceeded = restarts.is_some_and(|r| {
        if limits.backoff_limit == 0 {
            r > 0
        } else {
            r >= limits.backoff_limit
        }
    });
    if failed > limits.backoff_limit || restarts_exceeded {
        return Some(BACKOFF_LIMIT_EXCEEDED);
    }
    match (limits.active_deadline, started) {
        (Some(deadline), Some(start)) if now - start >= deadline => Some(DEADLINE_EXCEEDED),
        _ => None,
    }
}

/// Time left before the deadline, to look at the Job again then.
pub fn deadline_in(limits: &Limits, started: Option<i64>, now: i64) -> Option<Duration> {
    let left = started? + limits.active_deadline? - now;
    Some(Duration::from_secs(u64::try_from(left.max(0)).unwrap_or(0)))
}

/// The success criterion: `completions` successes, or for a work queue one
/// success with nothing left running.
pub fn succeeded(limits: &Limits, succeeded: i32, active: usize) -> bool {
    match limits.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active == 0,
    }
}

/// How many pods should be active (upstream's `wantActive`).
pub fn wanted_active(limits: &Limits, succeeded: i32, active: usize) -> usize {
    let want = match limits.completions {
        // A work queue: after the first success, let what runs finish.
        None if succeeded > 0 => i32::try_from(active).unwrap_or(i32::MAX),
        None => limits.parallelism,
        Some(c) => (c - succeeded).min(limits.parallelism),
    };
    usize::try_from(want.max(0)).unwrap_or(0)
}

/// Which of `active` pods to delete to keep `keep`: not-ready first, then newest.
pub fn excess(active: &[&JobPod], keep: usize) -> Vec<String> {
    let mut order: Vec<&&JobPod> = active.iter().collect();
    order.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(b.created.cmp(&a.created))
            .then(a.name.cmp(&b.name))
    });
    order
        .into_iter()
        .take(active.len().saturating_sub(keep))
        .map(|p| p.name.clone())
        .collect()
}

/// How long to wait before creating pods again after failures: 10s doubled
/// per failure since the last success, counted from the last failure.
pub fn backoff_remaining(pods: &[JobPod], now: i64) -> Option<Duration> {
    let last_success = pods
        .iter()
        .filter(|p| p.succeeded)
        .filter_map(|p| p.finished_at)
        .max();
    let failures: Vec<i64> = pods
        .iter()
        .filter(|p| p.failed)
        .filter_map(|p| p.finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last = *failures.iter().max()?;
    let exponent = u32::try_from(failures.len().saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let elapsed = Duration::from_secs(u64::try_from((now - last).max(0)).unwrap_or(0));
    delay.checked_sub(elapsed).filter(|d| !d.is_zero())
}

/// Parses `status.completedIndexes` ("1,3-5").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as upstream's `completedIndexes` ("1,3-5").
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Indexes an Indexed Job should start pods for now: the lowest ones that
/// neither succeeded nor run, at most `room`.
pub fn indexes_to_start(
    completions: i32,
    done: &BTreeSet<i32>,
    running: &BTreeSet<i32>,
    room: usize,
) -> Vec<i32> {
    (0..completions.max(0))
        .filter(|i| !done.contains(i) && !running.contains(i))
        .take(room)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(completions: Option<i32>, parallelism: i32) -> Limits {
        Limits {
            completions,
            parallelism,
            backoff_limit: 1,
            active_deadline: None,
        }
    }

    fn pod(name: &str, created: i64) -> JobPod {
        JobPod {
            name: name.into(),
            succeeded: false,
            failed: false,
            terminating: false,
            ready: false,
            created,
            finished_at: None,
            index: None,
            restarts: 0,
        }
    }

    #[test]
    fn active_pods_never_exceed_remaining_completions() {
        let l = limits(Some(3), 2);
        assert_eq!(wanted_active(&l, 0, 0), 2);
        assert_eq!(wanted_active(&l, 1, 2), 2);
        assert_eq!(wanted_active(&l, 2, 1), 1);
        assert_eq!(wanted_active(&l, 3, 0), 0);
        let queue = limits(None, 3);
        assert_eq!(wanted_active(&queue, 0, 0), 3);
        assert_eq!(wanted_active(&queue, 1, 2), 2);
    }

    #[test]
    fn success_and_failure_criteria() {
        let l = limits(Some(3), 2);
        assert!(!succeeded(&l, 2, 1));
        assert!(succeeded(&l, 3, 0));
        assert!(!succeeded(&limits(None, 2), 1, 1));
        assert!(succeeded(&limits(None, 2), 1, 0));
        assert_eq!(failure(&l, 1, None, Some(0), 0), None);
        assert_eq!(
            failure(&l, 2, None, Some(0), 0),
            Some(BACKOFF_LIMIT_EXCEEDED)
        );
        assert_eq!(failure(&l, 0, Some(0), Some(0), 0), None);
        assert_eq!(
            failure(&l, 0, Some(1), Some(0), 0),
            Some(BACKOFF_LIMIT_EXCEEDED)
        );
        let d = Limits {
            active_deadline: Some(30),
            ..l
        };
        assert_eq!(failure(&d, 0, None, Some(100), 129), None);
        assert_eq!(
            failure(&d, 0, None, Some(100), 130),
            Some(DEADLINE_EXCEEDED)
        );
        assert_eq!(
            deadline_in(&d, Some(100), 110),
            Some(Duration::from_secs(20))
        );
        assert_eq!(deadline_in(&l, Some(100), 110), None);
    }

    #[test]
    fn excess_pods_not_ready_and_newest_first() {
        let mut a = pod("a", 1);
        a.ready = true;
        let b = pod("b", 2);
        let c = pod("c", 3);
        assert_eq!(
            excess(&[&a, &b, &c], 1),
            vec!["c".to_string(), "b".to_string()]
        );
        assert!(excess(&[&a], 1).is_empty());
    }

    #[test]
    fn backoff_doubles_per_failure_since_the_last_success() {
        let mut f1 = pod("f1", 0);
        f1.failed = true;
        f1.finished_at = Some(100);
        assert_eq!(
            backoff_remaining(std::slice::from_ref(&f1), 104),
            Some(Duration::from_secs(6))
        );
        assert_eq!(backoff_remaining(std::slice::from_ref(&f1), 110), None);
        let mut f2 = f1.clone();
        f2.finished_at = Some(110);
        assert_eq!(
            backoff_remaining(&[f1.clone(), f2.clone()], 115),
            Some(Duration::from_secs(15))
        );
        let mut s = pod("s", 0);
        s.succeeded = true;
        s.finished_at = Some(105);
        assert_eq!(
            backoff_remaining(&[f1, f2, s], 115),
            Some(Duration::from_secs(5))
        );
        assert_eq!(backoff_remaining(&[], 0), None);
    }

    #[test]
    fn completed_indexes_round_trip() {
        let set = parse_indexes("0,2-4, 7");
        assert_eq!(set, [0, 2, 3, 4, 7].into());
        assert_eq!(format_indexes(&set), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(
            indexes_to_start(5, &[0, 1].into(), &[2].into(), 2),
            vec![3, 4]
        );
    }
}
