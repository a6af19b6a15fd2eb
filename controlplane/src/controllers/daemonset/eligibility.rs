//! Which nodes a DaemonSet's pod belongs on, as upstream's
//! `NodeShouldRunDaemonPod`: the template's nodeName, nodeSelector and
//! required node affinity must match, and every NoSchedule/NoExecute taint
//! must be tolerated — with the tolerations every daemon pod gets
//! automatically (not-ready, unreachable, pressure, unschedulable). Node
//! readiness itself is judged through those taints, as upstream does.
//!
//! Also how a daemon pod is pinned to its node: a required node affinity on
//! `metadata.name` (so the scheduler binds it), and how to read that back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};

use crate::scheduler::affinity::term_matches;
use crate::scheduler::taints::{first_untolerated, NO_EXECUTE, NO_SCHEDULE};

/// The node field daemon pods are pinned by.
const NAME_FIELD: &str = "metadata.name";

/// Whether a daemon pod should be on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligibility {
    /// A pod should be created there.
    pub should_run: bool,
    /// A pod already there may stay (it tolerates every NoExecute taint).
    pub should_continue: bool,
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`: daemon pods survive node
/// conditions that evict or keep off other pods.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", NO_EXECUTE),
        ("node.kubernetes.io/unreachable", NO_EXECUTE),
        ("node.kubernetes.io/disk-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/memory-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/pid-pressure", NO_SCHEDULE),
        ("node.kubernetes.io/unschedulable", NO_SCHEDULE),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", NO_SCHEDULE));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.to_string()),
                operator: Some("Exists".to_string()),
                effect: Some(effect.to_string()),
                ..Toleration::default()
            });
        }
    }
}

/// Whether the pod `spec` (with daemon tolerations) belongs on `node`.
pub fn eligibility(node: &Node, spec: &PodSpec) -> Eligibility {
    let never = Eligibility {
        should_run: false,
        should_continue: false,
    };
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return never;
    }
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| term_matches(t, name, labels))
    });
    if !selector_ok || !affinity_ok {
        return never;
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if first_untolerated(taints, tolerations).is_none() {
        return Eligibility {
            should_run: true,
            should_continue: true,
        };
    }
    let no_execute: Vec<_> = taints
        .iter()
        .filter(|t| t.effect == NO_EXECUTE)
        .cloned()
        .collect();
    Eligibility {
        should_run: false,
        should_continue: first_untolerated(&no_execute, tolerations).is_none(),
    }
}

/// Upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`: the required node
/// affinity becomes exactly "the node named `node`".
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: NAME_FIELD.to_string(),
            operator: "In".to_string(),
            values: Some(vec![node.to_string()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is for: where it is bound, else where its
/// affinity pins it (upstream's `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(node.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find_map(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            match (r.key.as_str(), r.operator.as_str(), values) {
                (NAME_FIELD, "In", [node]) => Some(node.clone()),
                _ => None,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn daemon_spec() -> PodSpec {
        let mut spec = PodSpec::default();
        add_daemon_tolerations(&mut spec);
        spec
    }

    #[test]
    fn untainted_nodes_run_daemons() {
        let run = Eligibility {
            should_run: true,
            should_continue: true,
        };
        assert_eq!(eligibility(&node("a", &[], &[]), &daemon_spec()), run);
        // Daemons tolerate not-ready NoExecute and cordoned nodes.
        let n = node(
            "a",
            &[],
            &[
                ("node.kubernetes.io/not-ready", NO_EXECUTE),
                ("node.kubernetes.io/unschedulable", NO_SCHEDULE),
            ],
        );
        assert_eq!(eligibility(&n, &daemon_spec()), run);
    }

    #[test]
    fn taints_keep_daemons_off() {
        let n = node("a", &[], &[("dedicated", NO_SCHEDULE)]);
        assert_eq!(
            eligibility(&n, &daemon_spec()),
            Eligibility {
                should_run: false,
                should_continue: true
            }
        );
        let n = node("a", &[], &[("dedicated", NO_EXECUTE)]);
        assert_eq!(
            eligibility(&n, &daemon_spec()),
            Eligibility {
                should_run: false,
                should_continue: false
            }
        );
        // A NoSchedule not-ready taint is not tolerated, as upstream.
        let n = node("a", &[], &[("node.kubernetes.io/not-ready", NO_SCHEDULE)]);
        assert!(!eligibility(&n, &daemon_spec()).should_run);
    }

    #[test]
    fn selectors_and_affinity_choose_nodes() {
        let mut spec = daemon_spec();
        spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(eligibility(&node("a", &[("disk", "ssd")], &[]), &spec).should_run);
        assert!(!eligibility(&node("a", &[("disk", "hdd")], &[]), &spec).should_continue);
        let mut spec = daemon_spec();
        pin_to_node(&mut spec, "b");
        assert!(!eligibility(&node("a", &[], &[]), &spec).should_run);
        assert!(eligibility(&node("b", &[], &[]), &spec).should_run);
    }

    #[test]
    fn pinned_pods_name_their_node() {
        let mut spec = daemon_spec();
        pin_to_node(&mut spec, "n1");
        let mut pod = Pod {
            spec: Some(spec),
            ..Pod::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        if let Some(s) = pod.spec.as_mut() {
            s.node_name = Some("n2".into());
        }
        assert_eq!(target_node(&pod).as_deref(), Some("n2"));
        assert_eq!(target_node(&Pod::default()), None);
    }

    #[test]
    fn tolerations_are_added_once() {
        let mut spec = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        add_daemon_tolerations(&mut spec);
        add_daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.map(|t| t.len()), Some(7));
    }
}
