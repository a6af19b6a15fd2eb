use super::*;
use serde_json::json;

fn node(ready: Option<&str>, taints: serde_json::Value) -> Node {
    let conditions = match ready {
        Some(status) => json!([{"type": "Ready", "status": status}]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }))
    .expect("valid node")
}

fn keys(taints: &[Taint]) -> Vec<(String, String)> {
    let mut v: Vec<_> = taints
        .iter()
        .map(|t| (t.key.clone(), t.effect.clone()))
        .collect();
    v.sort();
    v
}

fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).expect("valid time")
}

#[test]
fn probe_goes_silent_only_without_renewals() {
    let start = Instant::now();
    let grace = Duration::from_secs(3);
    let renew = |s: i64| Some(Timestamp::from_second(s).expect("time"));
    let mut probe = Probe::new(start, renew(1), None);
    probe.observe(start + Duration::from_secs(2), renew(2), None);
    assert!(!probe.silent(start + Duration::from_secs(4), grace));
    // The same renewTime again proves nothing.
    probe.observe(start + Duration::from_secs(4), renew(2), None);
    assert!(probe.silent(start + Duration::from_secs(6), grace));
    // A Ready heartbeat counts too.
    probe.observe(start + Duration::from_secs(6), renew(2), renew(6));
    assert!(!probe.silent(start + Duration::from_secs(7), grace));
}

#[test]
fn silent_node_conditions_become_unknown() {
    let mut status: NodeStatus = serde_json::from_value(json!({"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady"},
        {"type": "MemoryPressure", "status": "False"},
    ]}))
    .expect("status");
    assert!(mark_unknown(&mut status, now(), None));
    let conditions = status.conditions.clone().unwrap_or_default();
    assert_eq!(conditions.len(), 4);
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(
        ready.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let disk = conditions
        .iter()
        .find(|c| c.type_ == "DiskPressure")
        .expect("DiskPressure");
    assert_eq!(disk.reason.as_deref(), Some("NodeStatusNeverUpdated"));
    assert!(
        !mark_unknown(&mut status, now(), None),
        "already unknown: no change"
    );
}

#[test]
fn readiness_taints_follow_the_ready_condition() {
    let unknown = reconcile_taints(
        &node(Some("Unknown"), json!([])),
        NoExecutePolicy::Apply,
        now(),
    )
    .expect("change");
    assert_eq!(
        keys(&unknown),
        vec![
            (TAINT_UNREACHABLE.into(), "NoExecute".into()),
            (TAINT_UNREACHABLE.into(), "NoSchedule".into())
        ]
    );
    let no_execute = unknown
        .iter()
        .find(|t| t.effect == "NoExecute")
        .expect("NoExecute");
    assert_eq!(no_execute.time_added, Some(Time(now())));

    let not_ready = reconcile_taints(
        &node(Some("False"), json!(unknown)),
        NoExecutePolicy::Apply,
        now(),
    )
    .expect("swap");
    assert_eq!(
        keys(&not_ready),
        vec![
            (TAINT_NOT_READY.into(), "NoExecute".into()),
            (TAINT_NOT_READY.into(), "NoSchedule".into())
        ]
    );
    let healthy = reconcile_taints(
        &node(Some("True"), json!(not_ready)),
        NoExecutePolicy::Apply,
        now(),
    )
    .expect("clear");
    assert!(healthy.is_empty());
    assert_eq!(
        reconcile_taints(
            &node(Some("True"), json!([])),
            NoExecutePolicy::Apply,
            now()
        ),
        None
    );
}

#[test]
fn foreign_taints_are_kept_and_existing_ones_not_rewritten() {
    let taints = json!([
        {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
        {"key": TAINT_UNREACHABLE, "effect": "NoSchedule"},
        {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "2023-01-01T00:00:00Z"},
    ]);
    assert_eq!(
        reconcile_taints(
            &node(Some("Unknown"), taints.clone()),
            NoExecutePolicy::Apply,
            now()
        ),
        None
    );
    let healthy = reconcile_taints(&node(Some("True"), taints), NoExecutePolicy::Apply, now())
        .expect("clear");
    assert_eq!(
        keys(&healthy),
        vec![("dedicated".into(), "NoExecute".into())]
    );
}

#[test]
fn conditions_and_cordon_call_for_no_schedule_taints() {
    let mut n = node(Some("True"), json!([]));
    n.spec.as_mut().expect("spec").unschedulable = Some(true);
    n.status
        .as_mut()
        .expect("status")
        .conditions
        .as_mut()
        .expect("conditions")
        .push(NodeCondition {
            type_: "DiskPressure".into(),
            status: "True".into(),
            ..Default::default()
        });
    let taints = reconcile_taints(&n, NoExecutePolicy::Apply, now()).expect("taints");
    assert_eq!(
        keys(&taints),
        vec![
            (
                "node.kubernetes.io/disk-pressure".into(),
                "NoSchedule".into()
            ),
            (
                "node.kubernetes.io/unschedulable".into(),
                "NoSchedule".into()
            ),
        ]
    );
}

#[test]
fn disruption_holds_back_no_execute() {
    let fresh = reconcile_taints(
        &node(Some("Unknown"), json!([])),
        NoExecutePolicy::KeepExisting,
        now(),
    )
    .expect("taints");
    assert_eq!(
        keys(&fresh),
        vec![(TAINT_UNREACHABLE.into(), "NoSchedule".into())]
    );
    let tainted = json!([{"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "2023-01-01T00:00:00Z"}]);
    let swapped = reconcile_taints(
        &node(Some("False"), tainted.clone()),
        NoExecutePolicy::KeepExisting,
        now(),
    )
    .expect("swap");
    assert!(swapped
        .iter()
        .any(|t| t.key == TAINT_NOT_READY && t.effect == "NoExecute"));
    let removed = reconcile_taints(
        &node(Some("Unknown"), tainted),
        NoExecutePolicy::RemoveAll,
        now(),
    )
    .expect("removed");
    assert_eq!(
        keys(&removed),
        vec![(TAINT_UNREACHABLE.into(), "NoSchedule".into())]
    );
}

#[test]
fn zone_states_and_policies() {
    assert_eq!(zone_state(0, 1), ZoneState::FullDisruption);
    assert_eq!(zone_state(1, 1), ZoneState::Normal);
    assert_eq!(zone_state(2, 3), ZoneState::PartialDisruption);
    assert_eq!(zone_state(10, 3), ZoneState::Normal);
    let a = node(Some("True"), json!([]));
    let b = node(Some("Unknown"), json!([]));
    let states = zone_states([&a, &b]);
    assert_eq!(
        no_execute_policy(&states, &zone_of(&b)),
        NoExecutePolicy::Apply
    );
    let states = zone_states([&b]);
    assert_eq!(
        no_execute_policy(&states, &zone_of(&b)),
        NoExecutePolicy::RemoveAll
    );
    let mut other_zone = node(Some("True"), json!([]));
    other_zone.metadata.labels = Some([(ZONE_LABEL.to_string(), "z2".to_string())].into());
    let states = zone_states([&b, &other_zone]);
    // One zone fully down while another is healthy: evict from it as usual.
    assert_eq!(
        no_execute_policy(&states, &zone_of(&b)),
        NoExecutePolicy::Apply
    );
}
