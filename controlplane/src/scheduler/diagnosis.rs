//! Why a pod fits nowhere, in upstream's words: the FailedScheduling event
//! and the `PodScheduled=False` condition carry
//! `0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient cpu.`
//! — each reason with the number of nodes it applied to, the parts sorted
//! as strings, exactly as `framework.FitError.Error()` builds it.

use std::collections::HashMap;

use super::filters::Reason;

/// Message upstream gives when the cluster has no nodes at all.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// Failure reasons gathered over the nodes a pod was tried on.
#[derive(Debug, Default, Clone)]
pub struct Diagnosis {
    counts: HashMap<Reason, usize>,
}

impl Diagnosis {
    /// Counts one failing node's reasons.
    pub fn record(&mut self, reasons: &[Reason]) {
        for reason in reasons {
            *self.counts.entry(reason.clone()).or_insert(0) += 1;
        }
    }

    /// The FitError message for a cluster of `total_nodes` nodes.
    pub fn message(&self, total_nodes: usize) -> String {
        if total_nodes == 0 {
            return NO_NODES.to_string();
        }
        let mut parts: Vec<String> = self
            .counts
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        parts.sort();
        let mut message = format!("0/{total_nodes} nodes are available");
        if !parts.is_empty() {
            message.push_str(": ");
            message.push_str(&parts.join(", "));
        }
        message.push('.');
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_wording_and_order() {
        let mut d = Diagnosis::default();
        d.record(&[Reason::Insufficient("cpu".into())]);
        d.record(&[Reason::UntoleratedTaint {
            key: "key".into(),
            value: "value".into(),
        }]);
        d.record(&[Reason::Insufficient("cpu".into())]);
        assert_eq!(
            d.message(3),
            "0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient cpu."
        );
    }

    #[test]
    fn several_reasons_per_node_count_separately() {
        let mut d = Diagnosis::default();
        d.record(&[
            Reason::Insufficient("cpu".into()),
            Reason::Insufficient("memory".into()),
        ]);
        d.record(&[Reason::Insufficient("cpu".into())]);
        d.record(&[Reason::NodeAffinity]);
        assert_eq!(
            d.message(3),
            "0/3 nodes are available: 1 Insufficient memory, 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu."
        );
    }

    #[test]
    fn no_nodes() {
        assert_eq!(Diagnosis::default().message(0), NO_NODES);
        assert_eq!(Diagnosis::default().message(2), "0/2 nodes are available.");
    }
}
