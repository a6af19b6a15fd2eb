//! The pod status the agent reports: phase, conditions, container statuses
//! (state with reasons, lastState, restartCount, ready, started, imageID),
//! podIP(s), hostIP(s) and startTime, computed from the worker's view.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::container::Record;
use crate::sandbox::SandboxInfo;

/// One container name's history as the worker tracks it.
#[derive(Debug, Default)]
pub struct Slot {
    /// The latest start.
    pub current: Option<Record>,
    /// The start before it (lastState, `logs --previous`).
    pub previous: Option<Record>,
    /// Starts so far minus one.
    pub restart_count: u32,
    /// Why it is not running, when it is not: (reason, message).
    pub waiting: Option<(String, String)>,
    /// CrashLoopBackOff delay of the next restart.
    pub backoff: std::time::Duration,
    /// Not before this instant.
    pub next_start: Option<Instant>,
}

impl Slot {
    /// Whether the latest start exited (and with which code).
    pub fn exit_code(&self) -> Option<i32> {
        self.current.as_ref()?.exit.as_ref().map(|e| e.exit_code)
    }
    /// Running now.
    pub fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|r| r.exit.is_none())
    }
}

fn terminated(rec: &Record) -> Option<Value> {
    let e = rec.exit.as_ref()?;
    let reason = match (&rec.kill_reason, e.exit_code) {
        (_, 0) => "Completed".to_string(),
        (Some(r), _) if r == "OOMKilled" => r.clone(),
        _ => "Error".to_string(),
    };
    Some(json!({"terminated": {
        "exitCode": e.exit_code,
        "signal": e.signal,
        "reason": reason,
        "startedAt": rec.meta.started_at,
        "finishedAt": e.finished_at,
        "containerID": format!("runc://{}", rec.meta.runc_id),
    }}))
}

/// The status entry of one container.
pub fn container_status(
    c: &Container,
    slot: Option<&Slot>,
    init: bool,
    pod_initializing: bool,
) -> Value {
    let empty = Slot::default();
    let slot = slot.unwrap_or(&empty);
    let mut ready = false;
    let mut started = false;
    let state = match (&slot.current, &slot.waiting) {
        (_, Some((reason, message))) => json!({"waiting": {"reason": reason, "message": message}}),
        (Some(rec), None) => match terminated(rec) {
            Some(t) => t,
            None => {
                started = rec.probes.started.load(Ordering::SeqCst) || init;
                ready = !init && started && rec.probes.ready.load(Ordering::SeqCst);
                json!({"running": {"startedAt": rec.meta.started_at}})
            }
        },
        (None, None) => {
            let reason = if pod_initializing && !init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            json!({"waiting": {"reason": reason}})
        }
    };
    let last_state = match (&slot.current, &slot.waiting) {
        // In back-off the latest run is the last state.
        (Some(rec), Some(_)) => terminated(rec),
        _ => slot.previous.as_ref().and_then(terminated),
    }
    .unwrap_or_else(|| json!({}));
    let mut v = json!({
        "name": c.name,
        "image": c.image.clone().unwrap_or_default(),
        "imageID": slot.current.as_ref().map(|r| r.meta.image_id.clone()).unwrap_or_default(),
        "ready": ready,
        "started": started,
        "restartCount": slot.restart_count,
        "state": state,
        "lastState": last_state,
    });
    if let Some(rec) = &slot.current {
        v["containerID"] = json!(format!("runc://{}", rec.meta.runc_id));
    }
    v
}

/// Inputs of [`pod_status`].
pub struct View<'a> {
    pub pod: &'a Pod,
    pub sandbox: Option<&'a SandboxInfo>,
    pub slots: &'a BTreeMap<String, Slot>,
    pub init_slots: &'a BTreeMap<String, Slot>,
    pub host_ip: String,
    pub start_time: &'a str,
    /// Init containers all succeeded.
    pub initialized: bool,
    /// An init container failed for good (restartPolicy Never).
    pub init_failed: bool,
}

/// The phase from the containers' states and the restart policy.
pub fn phase(v: &View<'_>) -> &'static str {
    let spec = v.pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if v.init_failed {
        return "Failed";
    }
    if v.sandbox.is_none() || !v.initialized {
        return "Pending";
    }
    let slots: Vec<Option<&Slot>> = spec
        .containers
        .iter()
        .map(|c| v.slots.get(&c.name))
        .collect();
    if slots.iter().any(|s| s.is_none_or(|s| s.current.is_none())) {
        return "Pending";
    }
    if slots.iter().flatten().any(|s| s.running()) {
        return "Running";
    }
    let codes: Vec<i32> = slots
        .iter()
        .flatten()
        .filter_map(|s| s.exit_code())
        .collect();
    match policy {
        "Always" => "Running",
        "OnFailure" if codes.iter().all(|c| *c == 0) => "Succeeded",
        "OnFailure" => "Running",
        _ if codes.iter().all(|c| *c == 0) => "Succeeded",
        _ => "Failed",
    }
}

/// The full `status` for a merge patch; `times` keeps each condition's
/// lastTransitionTime stable while its status does not change.
pub fn pod_status(v: &View<'_>, times: &mut BTreeMap<String, (bool, String)>) -> Value {
    let spec = v.pod.spec.clone().unwrap_or_default();
    let phase = phase(v);
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| container_status(c, v.slots.get(&c.name), false, !v.initialized))
        .collect();
    let init_statuses: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, v.init_slots.get(&c.name), true, false))
        .collect();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let all_ready = !terminal && statuses.iter().all(|s| s["ready"] == true);
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut cond = |t: &str, ok: bool, reason: Option<&str>| {
        let entry = times
            .entry(t.to_string())
            .or_insert_with(|| (ok, now.clone()));
        if entry.0 != ok {
            *entry = (ok, now.clone());
        }
        let mut c = json!({"type": t, "status": if ok { "True" } else { "False" },
                           "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let Some(r) = reason.filter(|_| !ok) {
            c["reason"] = json!(r);
        }
        c
    };
    let conditions = vec![
        cond("PodReadyToStartContainers", v.sandbox.is_some(), None),
        cond(
            "Initialized",
            v.initialized,
            Some("ContainersNotInitialized"),
        ),
        cond(
            "Ready",
            all_ready,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        cond(
            "ContainersReady",
            all_ready,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ),
        cond("PodScheduled", true, None),
    ];
    let ips: Vec<Value> = v
        .sandbox
        .map(|s| {
            s.ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string()}))
                .collect()
        })
        .unwrap_or_default();
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": v.start_time,
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(first) = ips.first() {
        status["podIP"] = first["ip"].clone();
        status["podIPs"] = json!(ips);
    }
    status
}
