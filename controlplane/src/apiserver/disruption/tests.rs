use super::*;

fn pod(name: &str, ready: bool, terminating: bool) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
        ]},
    });
    if terminating {
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    p
}

fn pdb(spec: Value) -> Value {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": "web"}});
    json!({"metadata": {"name": "web", "generation": 3}, "spec": spec})
}

fn now() -> Timestamp {
    "2026-01-01T00:10:00Z".parse().expect("timestamp")
}

fn no_scale() -> Result<i64, String> {
    Err("scale asked for".into())
}

#[test]
fn min_available_count_allows_the_surplus_of_ready_pods() {
    let pods = [
        pod("a", true, false),
        pod("b", true, false),
        pod("c", true, false),
    ];
    let b = compute(&pdb(json!({"minAvailable": 2})), &pods, no_scale, now()).expect("budget");
    assert_eq!(
        (
            b.current_healthy,
            b.desired_healthy,
            b.expected_pods,
            b.disruptions_allowed
        ),
        (3, 2, 3, 1)
    );
}

#[test]
fn unready_and_terminating_pods_are_not_healthy() {
    let pods = [
        pod("a", true, false),
        pod("b", false, false),
        pod("c", true, true),
    ];
    let b = compute(&pdb(json!({"minAvailable": 1})), &pods, no_scale, now()).expect("budget");
    assert_eq!((b.current_healthy, b.disruptions_allowed), (1, 0));
}

#[test]
fn max_unavailable_and_percentages_use_the_controllers_scale() {
    let pods = [
        pod("a", true, false),
        pod("b", true, false),
        pod("c", true, false),
    ];
    let b = compute(
        &pdb(json!({"maxUnavailable": "34%"})),
        &pods,
        || Ok(3),
        now(),
    )
    .expect("budget");
    // 34% of 3 rounds up to 2 unavailable: 1 must stay healthy.
    assert_eq!((b.desired_healthy, b.disruptions_allowed), (1, 2));
    let b = compute(&pdb(json!({"minAvailable": "50%"})), &pods, || Ok(4), now()).expect("budget");
    assert_eq!((b.expected_pods, b.desired_healthy), (4, 2));
    let err = compute(&pdb(json!({"maxUnavailable": 1})), &pods, no_scale, now());
    assert_eq!(err, Err("scale asked for".to_string()));
}

#[test]
fn recent_approvals_count_as_gone_until_the_timeout() {
    let pods = [pod("a", true, false), pod("b", true, false)];
    let mut budget = pdb(json!({"minAvailable": 1}));
    budget["status"]["disruptedPods"] = json!({
        "a": "2026-01-01T00:09:00Z",
        "b": "2026-01-01T00:00:00Z",
        "gone": "2026-01-01T00:09:30Z",
    });
    let b = compute(&budget, &pods, no_scale, now()).expect("budget");
    assert_eq!(b.disrupted_pods.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!((b.current_healthy, b.disruptions_allowed), (1, 0));
}

#[test]
fn status_records_the_budget_and_its_condition() {
    let pods = [pod("a", true, false), pod("b", true, false)];
    let mut budget = pdb(json!({"minAvailable": 1}));
    let b = compute(&budget, &pods, no_scale, now()).expect("budget");
    set_status(&mut budget, &b, now());
    let status = &budget["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["disruptionsAllowed"], 1);
    assert_eq!(status["conditions"][0]["type"], "DisruptionAllowed");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "SufficientPods");
    let first = status["conditions"][0]["lastTransitionTime"].clone();
    let later: Timestamp = "2026-01-01T00:20:00Z".parse().expect("timestamp");
    set_status(&mut budget, &b, later);
    assert_eq!(
        budget["status"]["conditions"][0]["lastTransitionTime"],
        first
    );
    set_failed(&mut budget, "found no controllers for pod \"a\"", later);
    assert_eq!(budget["status"]["disruptionsAllowed"], 0);
    assert_eq!(budget["status"]["conditions"][0]["reason"], "SyncFailed");
    assert_eq!(
        budget["status"]["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:20:00Z"
    );
}

#[test]
fn an_empty_selector_selects_no_pod_for_eviction() {
    let p = pod("a", true, false);
    assert!(selects(&pdb(json!({})), &p));
    let mut empty = pdb(json!({}));
    empty["spec"]["selector"] = json!({});
    assert!(!selects(&empty, &p));
    empty["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    assert!(!selects(&empty, &p));
}
