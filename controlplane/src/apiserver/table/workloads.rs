//! Columns and cells of pods and the workload kinds that run them:
//! deployments, replica sets, daemon sets, stateful sets, jobs and
//! horizontal pod autoscalers. The pod STATUS logic is kubectl's.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::columns::{AGE, NAME};
use super::{
    age, at, container_cells, format_label_selector, format_labels, human_duration, int, list,
    name, scalar, selector_string, text, timestamp, Cells, Column,
};

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
const IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide(
    "Selector",
    "string",
    "Label query over pods that should match the replica count.",
);

pub(super) const POD: &[Column] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster."),
    wide("Node", "string", "NodeName indicates in which node this pod is scheduled."),
    wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node."),
    wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
];

/// Latest of two optional times.
fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn last_terminated(status: &Value) -> Option<Timestamp> {
    let terminated = at(status, &["lastState", "terminated"]);
    if terminated.is_object() {
        timestamp(&terminated["finishedAt"])
    } else {
        None
    }
}

fn condition_true(pod: &Value, ty: &str) -> bool {
    list(pod, &["status", "conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == ty && text(c, &["status"]) == "True")
}

/// `Terminated` without a reason reads as its signal or exit code.
fn terminated_reason(terminated: &Value, prefix: &str) -> String {
    match text(terminated, &["reason"]) {
        "" => match int(terminated, &["signal"]) {
            0 => format!("{prefix}ExitCode:{}", int(terminated, &["exitCode"])),
            signal => format!("{prefix}Signal:{signal}"),
        },
        reason => format!("{prefix}{reason}"),
    }
}

/// NAME READY STATUS RESTARTS AGE IP NODE NOMINATED-NODE READINESS-GATES.
pub(super) fn pod(pod: &Value, now: Timestamp) -> Cells {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let init_containers = list(spec, &["initContainers"]);
    let restartable = |name: &str| {
        init_containers
            .iter()
            .any(|c| text(c, &["name"]) == name && text(c, &["restartPolicy"]) == "Always")
    };
    let total = list(spec, &["containers"]).len()
        + init_containers
            .iter()
            .filter(|c| text(c, &["restartPolicy"]) == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;

    let phase = match text(status, &["phase"]) {
        "" => "Pending",
        p => p,
    };
    let mut reason = match text(status, &["reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    if list(status, &["conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let mut initializing = false;
    for (i, cs) in list(status, &["initContainerStatuses"]).iter().enumerate() {
        let cname = text(cs, &["name"]);
        restarts += int(cs, &["restartCount"]);
        last_restart = later(last_restart, last_terminated(cs));
        if restartable(cname) {
            sidecar_restarts += int(cs, &["restartCount"]);
            last_sidecar_restart = later(last_sidecar_restart, last_terminated(cs));
        }
        let terminated = at(cs, &["state", "terminated"]);
        let waiting_reason = text(cs, &["state", "waiting", "reason"]);
        if terminated.is_object() && int(terminated, &["exitCode"]) == 0 {
            continue;
        }
        if restartable(cname) && cs["started"].as_bool() == Some(true) {
            if cs["ready"].as_bool() == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = if terminated.is_object() {
            terminated_reason(terminated, "Init:")
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_containers.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for cs in list(status, &["containerStatuses"]).iter().rev() {
            restarts += int(cs, &["restartCount"]);
            last_restart = later(last_restart, last_terminated(cs));
            let waiting_reason = text(cs, &["state", "waiting", "reason"]);
            let terminated = at(cs, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if terminated.is_object() {
                reason = terminated_reason(terminated, "");
            } else if cs["ready"].as_bool() == Some(true)
                && at(cs, &["state", "running"]).is_object()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    if at(pod, &["metadata", "deletionTimestamp"]).is_string() {
        if text(status, &["reason"]) == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => {
            format!("{restarts} ({} ago)", human_duration(now.duration_since(t)))
        }
        _ => restarts.to_string(),
    };

    let or_none = |s: &str| -> Value {
        if s.is_empty() {
            "<none>".into()
        } else {
            s.into()
        }
    };
    let pod_ip = list(status, &["podIPs"])
        .first()
        .map(|ip| text(ip, &["ip"]))
        .unwrap_or_else(|| text(status, &["podIP"]));
    let gates = list(spec, &["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = list(status, &["conditions"]);
        let passing = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| text(c, &["type"]) == text(g, &["conditionType"]))
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{passing}/{}", gates.len())
    };

    vec![
        name(pod),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now),
        or_none(pod_ip),
        or_none(text(spec, &["nodeName"])),
        or_none(text(status, &["nominatedNodeName"])),
        readiness_gates.into(),
    ]
}

/// The `Completed` row condition upstream sets on finished pods.
pub(super) fn pod_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match text(pod, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

/// `spec.replicas`, which the API defaults to 1.
fn desired_replicas(obj: &Value) -> i64 {
    at(obj, &["spec", "replicas"]).as_i64().unwrap_or(1)
}

fn template_containers(obj: &Value) -> &[Value] {
    list(obj, &["spec", "template", "spec", "containers"])
}

pub(super) const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(super) fn deployment(d: &Value, now: Timestamp) -> Cells {
    let (containers, images) = container_cells(template_containers(d));
    let selector = selector_string(&d["spec"]["selector"]).unwrap_or_else(|| "<invalid>".into());
    vec![
        name(d),
        format!(
            "{}/{}",
            int(d, &["status", "readyReplicas"]),
            desired_replicas(d)
        )
        .into(),
        int(d, &["status", "updatedReplicas"]).into(),
        int(d, &["status", "availableReplicas"]).into(),
        age(d, now),
        containers,
        images,
        selector.into(),
    ]
}

pub(super) const REPLICA_SET: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired pods.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of non-terminating pods.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(super) fn replica_set(rs: &Value, now: Timestamp) -> Cells {
    let (containers, images) = container_cells(template_containers(rs));
    vec![
        name(rs),
        desired_replicas(rs).into(),
        int(rs, &["status", "replicas"]).into(),
        int(rs, &["status", "readyReplicas"]).into(),
        age(rs, now),
        containers,
        images,
        format_label_selector(&rs["spec"]["selector"]).into(),
    ]
}

pub(super) const DAEMON_SET: &[Column] = &[
    NAME,
    col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
    col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
    col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod."),
    col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
    col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

pub(super) fn daemon_set(ds: &Value, now: Timestamp) -> Cells {
    let (containers, images) = container_cells(template_containers(ds));
    let status = |field: &str| -> Value { int(ds, &["status", field]).into() };
    vec![
        name(ds),
        status("desiredNumberScheduled"),
        status("currentNumberScheduled"),
        status("numberReady"),
        status("updatedNumberScheduled"),
        status("numberAvailable"),
        format_labels(at(ds, &["spec", "template", "spec", "nodeSelector"])).into(),
        age(ds, now),
        containers,
        images,
        format_label_selector(&ds["spec"]["selector"]).into(),
    ]
}

pub(super) const STATEFUL_SET: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];

pub(super) fn stateful_set(sts: &Value, now: Timestamp) -> Cells {
    let (containers, images) = container_cells(template_containers(sts));
    vec![
        name(sts),
        format!(
            "{}/{}",
            int(sts, &["status", "readyReplicas"]),
            desired_replicas(sts)
        )
        .into(),
        age(sts, now),
        containers,
        images,
    ]
}

pub(super) const JOB: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

/// Status of the first condition of type `ty`, as upstream's `hasJobCondition`.
fn job_condition(job: &Value, ty: &str) -> bool {
    list(job, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == ty)
        .is_some_and(|c| text(c, &["status"]) == "True")
}

pub(super) fn job(job: &Value, now: Timestamp) -> Cells {
    let succeeded = int(job, &["status", "succeeded"]);
    let completions = match at(job, &["spec", "completions"]).as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int(job, &["spec", "parallelism"]) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = timestamp(at(job, &["status", "startTime"]));
    let end = timestamp(at(job, &["status", "completionTime"]));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.duration_since(s)),
        (Some(s), Some(e)) => human_duration(e.duration_since(s)),
    };
    let status = if job_condition(job, "Complete") {
        "Complete"
    } else if job_condition(job, "Failed") {
        "Failed"
    } else if at(job, &["metadata", "deletionTimestamp"]).is_string() {
        "Terminating"
    } else if job_condition(job, "Suspended") {
        "Suspended"
    } else if job_condition(job, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (containers, images) = container_cells(template_containers(job));
    vec![
        name(job),
        status.into(),
        completions.into(),
        duration.into(),
        age(job, now),
        containers,
        images,
        format_label_selector(&job["spec"]["selector"]).into(),
    ]
}

pub(super) const HPA: &[Column] = &[
    NAME,
    col("Reference", "string", "scaleTargetRef points to the target resource to scale."),
    col("Targets", "string", "metrics contains the specifications for which to use to calculate the desired replica count."),
    col("MinPods", "string", "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down."),
    col("MaxPods", "string", "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up."),
    col("Replicas", "string", "currentReplicas is current number of replicas of pods managed by this autoscaler."),
    AGE,
];

fn hpa_cells(hpa: &Value, targets: String, now: Timestamp) -> Cells {
    let reference = format!(
        "{}/{}",
        text(hpa, &["spec", "scaleTargetRef", "kind"]),
        text(hpa, &["spec", "scaleTargetRef", "name"])
    );
    let min_pods = match at(hpa, &["spec", "minReplicas"]).as_i64() {
        Some(n) => n.to_string(),
        None => "<unset>".into(),
    };
    vec![
        name(hpa),
        reference.into(),
        targets.into(),
        min_pods.into(),
        int(hpa, &["spec", "maxReplicas"]).into(),
        int(hpa, &["status", "currentReplicas"]).into(),
        age(hpa, now),
    ]
}

/// autoscaling/v1: the single CPU utilization target.
pub(super) fn hpa_v1(hpa: &Value, now: Timestamp) -> Cells {
    let targets = match at(hpa, &["spec", "targetCPUUtilizationPercentage"]).as_i64() {
        Some(target) => {
            let current = match at(hpa, &["status", "currentCPUUtilizationPercentage"]).as_i64() {
                Some(c) => format!("{c}%"),
                None => "<unknown>".into(),
            };
            format!("cpu: {current}/{target}%")
        }
        None => "<none>".into(),
    };
    hpa_cells(hpa, targets, now)
}

/// autoscaling/v2: every metric as upstream's `formatHPAMetrics`.
pub(super) fn hpa_v2(hpa: &Value, now: Timestamp) -> Cells {
    hpa_cells(hpa, format_hpa_metrics(hpa), now)
}

fn format_hpa_metrics(hpa: &Value) -> String {
    const MAX: usize = 2;
    let specs = list(hpa, &["spec", "metrics"]);
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = list(hpa, &["status", "currentMetrics"]);
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i).unwrap_or(&Value::Null);
            format_metric(spec, status)
        })
        .collect();
    let joined = shown[..shown.len().min(MAX)].join(", ");
    if shown.len() > MAX {
        format!("{joined} + {} more...", shown.len() - MAX)
    } else {
        joined
    }
}

fn format_metric(spec: &Value, status: &Value) -> String {
    let current = |source: &str, field: &str| -> String {
        match &status[source]["current"][field] {
            Value::Null => "<unknown>".into(),
            v => scalar(v),
        }
    };
    let percent = |v: &Value| v.as_i64().map(|p| format!("{p}%"));
    match text(spec, &["type"]) {
        ty @ ("External" | "Object") => {
            let source = if ty == "External" {
                "external"
            } else {
                "object"
            };
            let target = &spec[source]["target"];
            if target["averageValue"].is_null() {
                format!("{}/{}", current(source, "value"), scalar(&target["value"]))
            } else {
                format!(
                    "{}/{} (avg)",
                    current(source, "averageValue"),
                    scalar(&target["averageValue"])
                )
            }
        }
        "Pods" => format!(
            "{}/{}",
            current("pods", "averageValue"),
            scalar(&spec["pods"]["target"]["averageValue"])
        ),
        ty @ ("Resource" | "ContainerResource") => {
            let source = if ty == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let resource = text(spec, &[source, "name"]);
            let target = &spec[source]["target"];
            if target["averageValue"].is_null() {
                let cur = percent(&status[source]["current"]["averageUtilization"])
                    .unwrap_or_else(|| "<unknown>".into());
                let tgt = percent(&target["averageUtilization"]).unwrap_or_else(|| "<auto>".into());
                format!("{resource}: {cur}/{tgt}")
            } else {
                format!(
                    "{resource}: {}/{}",
                    current(source, "averageValue"),
                    scalar(&target["averageValue"])
                )
            }
        }
        _ => "<unknown type>".into(),
    }
}
