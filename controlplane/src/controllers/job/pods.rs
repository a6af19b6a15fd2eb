//! A Job's pods: how the [`accounting`](super::accounting) sees an existing
//! pod (phase, readiness, finish time, completion index, restarts), and the
//! pod made for a Job from its template, with an Indexed Job's identity.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::ResourceExt;

use super::accounting::JobPod;
use crate::controllers::workload;

/// Annotation and label with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// When a finished pod finished: its last container's end, else its last
/// condition change, else its creation.
fn finished_at(pod: &Pod) -> Option<i64> {
    if !workload::is_terminal(pod) {
        return None;
    }
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let conditions = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .max();
    containers.or(conditions).or(pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second()))
}

/// The accounting view of one pod.
pub fn view(pod: &Pod) -> JobPod {
    let phase = workload::phase(pod);
    let status = pod.status.as_ref();
    let restarts = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    JobPod {
        name: pod.name_any(),
        succeeded: phase == "Succeeded",
        failed: phase == "Failed",
        terminating: workload::is_terminating(pod) && !workload::is_terminal(pod),
        ready: workload::is_ready(pod),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        finished_at: finished_at(pod),
        index: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX))
            .and_then(|i| i.parse().ok()),
        restarts,
    }
}

/// A pod from the Job's template; Indexed Jobs' pods carry their index
/// (annotation, label, `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`).
pub fn new_pod(job: &Job, index: Option<i32>) -> Option<Pod> {
    let spec = job.spec.as_ref()?;
    let owner = workload::controller_ref(job)?;
    let name = job.name_any();
    let mut pod =
        workload::pod_from_template(&spec.template, owner, &job.namespace().unwrap_or_default());
    pod.metadata.generate_name = Some(format!("{name}-"));
    if let Some(index) = index {
        let index = index.to_string();
        pod.metadata.generate_name = Some(format!("{name}-{index}-"));
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.clone());
        workload::set_label(&mut pod, COMPLETION_INDEX, &index);
        let pod_spec = pod.spec.get_or_insert_with(Default::default);
        pod_spec
            .hostname
            .get_or_insert_with(|| format!("{name}-{index}"));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = pod_spec
            .containers
            .iter_mut()
            .chain(pod_spec.init_containers.iter_mut().flatten());
        for container in containers {
            container.env.get_or_insert_with(Vec::new).push(env.clone());
        }
    }
    Some(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "u1"},
            "spec": {"template": {
                "metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "perl"}]},
            }},
        }))
        .expect("a job")
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let pod = new_pod(&job(), Some(2)).expect("a pod");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
        let spec = pod.spec.as_ref().expect("a spec");
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = spec.containers[0].env.as_ref().expect("env");
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        let owner = &pod.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("u1", Some(true), Some(true))
        );
        assert_eq!(view(&pod).index, Some(2));
        let plain = new_pod(&job(), None).expect("a pod");
        assert_eq!(plain.metadata.generate_name.as_deref(), Some("pi-"));
        assert!(plain
            .spec
            .as_ref()
            .and_then(|s| s.hostname.as_ref())
            .is_none());
    }

    #[test]
    fn finish_time_prefers_the_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {
                "phase": "Failed",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:05Z"}],
                "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:00:09Z"}}}],
            },
        }))
        .expect("a pod");
        let v = view(&pod);
        assert!(v.failed && !v.active());
        assert_eq!(v.restarts, 3);
        assert_eq!(v.finished_at.map(|t| t - v.created), Some(9));
    }
}
