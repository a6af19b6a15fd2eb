//! Node selection by a pod: `spec.nodeSelector` and node affinity, as
//! upstream's `component-helpers/scheduling/corev1/nodeaffinity` matches
//! them. Required terms are ORed, the expressions and fields inside a term
//! ANDed; an empty term matches nothing; a malformed requirement (unknown
//! operator, `Gt` with a non-number) does not match. `matchFields` supports
//! `metadata.name` with `In` and `NotIn`, as upstream.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use super::cache::NodeFacts;

/// True if the node satisfies the pod's `nodeSelector` and required node affinity.
pub fn required_matches(spec: &PodSpec, node_name: &str, node: &NodeFacts) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    if !selector_ok {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node_name, &node.labels)),
    }
}

/// Sum of the weights of the pod's preferred node-affinity terms the node matches.
pub fn preferred_weight(spec: &PodSpec, node_name: &str, node: &NodeFacts) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, node_name, &node.labels))
        .map(|p| i64::from(p.weight))
        .sum()
}

/// True if the pod has preferred node-affinity terms (so scoring them is worth it).
pub fn has_preferences(spec: &PodSpec) -> bool {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|p| !p.is_empty())
}

/// One node selector term: all expressions and all fields match; an empty
/// term matches nothing.
pub fn term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| label_requirement_matches(r, labels))
        && fields
            .iter()
            .all(|r| field_requirement_matches(r, node_name))
}

fn label_requirement_matches(
    r: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let label = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => label.is_some_and(|v| values.contains(v)),
        "NotIn" => label.is_none_or(|v| !values.contains(v)),
        "Exists" => label.is_some(),
        "DoesNotExist" => label.is_none(),
        "Gt" | "Lt" => {
            let [bound] = values else {
                return false;
            };
            let (Ok(bound), Some(Ok(actual))) =
                (bound.parse::<i64>(), label.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if r.operator == "Gt" {
                actual > bound
            } else {
                actual < bound
            }
        }
        _ => false,
    }
}

fn field_requirement_matches(r: &NodeSelectorRequirement, node_name: &str) -> bool {
    if r.key != "metadata.name" {
        return false;
    }
    let values = r.values.as_deref().unwrap_or_default();
    let named = values.iter().any(|v| v == node_name);
    match r.operator.as_str() {
        "In" => named,
        "NotIn" => !named,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..NodeFacts::default()
        }
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = serde_json::json!([]);
        serde_json::from_value(v).expect("valid spec")
    }

    fn required(terms: serde_json::Value) -> PodSpec {
        spec(serde_json::json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
    }

    #[test]
    fn node_selector_needs_every_label() {
        let s = spec(serde_json::json!({"nodeSelector": {"disk": "ssd", "zone": "a"}}));
        assert!(required_matches(
            &s,
            "n",
            &facts(&[("disk", "ssd"), ("zone", "a"), ("x", "y")])
        ));
        assert!(!required_matches(&s, "n", &facts(&[("disk", "ssd")])));
        assert!(!required_matches(
            &s,
            "n",
            &facts(&[("disk", "hdd"), ("zone", "a")])
        ));
    }

    #[test]
    fn operators() {
        let node = facts(&[("zone", "a"), ("cores", "8")]);
        let one = |key: &str, op: &str, values: &[&str]| {
            required(
                serde_json::json!([{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]),
            )
        };
        assert!(required_matches(
            &one("zone", "In", &["a", "b"]),
            "n",
            &node
        ));
        assert!(!required_matches(&one("zone", "In", &["b"]), "n", &node));
        assert!(required_matches(&one("zone", "NotIn", &["b"]), "n", &node));
        assert!(required_matches(
            &one("missing", "NotIn", &["b"]),
            "n",
            &node
        ));
        assert!(!required_matches(&one("zone", "NotIn", &["a"]), "n", &node));
        assert!(required_matches(&one("zone", "Exists", &[]), "n", &node));
        assert!(!required_matches(
            &one("zone", "DoesNotExist", &[]),
            "n",
            &node
        ));
        assert!(required_matches(
            &one("missing", "DoesNotExist", &[]),
            "n",
            &node
        ));
        assert!(required_matches(&one("cores", "Gt", &["4"]), "n", &node));
        assert!(!required_matches(&one("cores", "Gt", &["8"]), "n", &node));
        assert!(required_matches(&one("cores", "Lt", &["16"]), "n", &node));
        assert!(!required_matches(&one("zone", "Lt", &["16"]), "n", &node));
        assert!(!required_matches(
            &one("cores", "Gt", &["4", "5"]),
            "n",
            &node
        ));
        assert!(!required_matches(&one("missing", "Gt", &["4"]), "n", &node));
        assert!(!required_matches(&one("zone", "Like", &["a"]), "n", &node));
    }

    #[test]
    fn terms_or_expressions_and() {
        let node = facts(&[("zone", "a"), ("disk", "ssd")]);
        let s = required(serde_json::json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "disk", "operator": "In", "values": ["hdd"]}]},
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
        ]));
        assert!(!required_matches(&s, "n", &node));
        let s = required(serde_json::json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchExpressions": [{"key": "disk", "operator": "Exists"}]},
        ]));
        assert!(required_matches(&s, "n", &node));
        assert!(!required_matches(
            &required(serde_json::json!([{}])),
            "n",
            &node
        ));
        assert!(!required_matches(
            &required(serde_json::json!([])),
            "n",
            &node
        ));
    }

    #[test]
    fn match_fields_by_name() {
        let node = facts(&[]);
        let s = required(
            serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
        );
        assert!(required_matches(&s, "n1", &node));
        assert!(!required_matches(&s, "n2", &node));
        let s = required(
            serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]),
        );
        assert!(required_matches(&s, "n2", &node));
        let s = required(
            serde_json::json!([{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["n1"]}]}]),
        );
        assert!(!required_matches(&s, "n1", &node));
    }

    #[test]
    fn preferred_weights_add_up() {
        let s = spec(
            serde_json::json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
            ]}}}),
        );
        assert!(has_preferences(&s));
        assert_eq!(
            preferred_weight(&s, "n", &facts(&[("zone", "a"), ("disk", "x")])),
            15
        );
        assert_eq!(preferred_weight(&s, "n", &facts(&[("zone", "b")])), 0);
    }
}
