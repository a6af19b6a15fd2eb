//! A queued pod as the queue keeps it: whole while it is about to be tried,
//! packed into its JSON while it waits.
//!
//! A decoded `Pod` costs ~8 KB for a one-container pod (k8s-openapi's
//! structs hold every optional field inline: `Container` alone is 2.3 KB),
//! its JSON without field ownership ~1.5 KB, packed (`crate::pack`) ~0.6 KB.
//! Pods that fit nowhere can wait by the thousands (10k pending pods before
//! any node joins), so a pod that becomes unschedulable or backs off is
//! packed (~10 µs; deflate cost twice that, most of it zeroing a fresh
//! compressor's tables) and unpacked only when it is popped for its next
//! attempt. Whether an update of a packed pod can
//! change where it fits is decided by a fingerprint of its spec and labels.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;

use crate::pack;

/// A queued pod, whole or packed.
#[derive(Debug)]
pub(super) enum Held {
    Whole(Arc<Pod>),
    Packed {
        /// The pod's JSON, packed.
        packed: Bytes,
        /// [`fingerprint`] of the packed pod.
        fingerprint: u64,
    },
}

impl Held {
    /// Packs a whole pod. A pod that cannot be encoded stays whole.
    pub(super) fn pack(&mut self) {
        let Held::Whole(pod) = self else {
            return;
        };
        match serde_json::to_vec(pod.as_ref()) {
            Ok(json) => {
                *self = Held::Packed {
                    fingerprint: fingerprint(pod),
                    packed: pack::pack(&json),
                }
            }
            Err(e) => tracing::warn!("scheduler: keeping a waiting pod decoded: {e}"),
        }
    }

    /// The pod, decoded (and kept whole) if it was packed.
    pub(super) fn unpack(&mut self) -> Result<Arc<Pod>, io::Error> {
        if let Held::Packed { packed, .. } = self {
            let json = pack::unpack(packed).map_err(io::Error::other)?;
            let pod: Pod = serde_json::from_slice(&json)?;
            *self = Held::Whole(Arc::new(pod));
        }
        match self {
            Held::Whole(pod) => Ok(pod.clone()),
            Held::Packed { .. } => unreachable!("unpacked above"),
        }
    }

    /// Replaces the held pod with a newer state, whole; true if the spec or
    /// labels differ, so that the pod may fit differently now.
    pub(super) fn replace(&mut self, pod: Arc<Pod>) -> bool {
        let changed = match self {
            Held::Whole(old) => old.spec != pod.spec || old.metadata.labels != pod.metadata.labels,
            Held::Packed { fingerprint: f, .. } => *f != fingerprint(&pod),
        };
        *self = Held::Whole(pod);
        changed
    }
}

/// A hash of what decides where a pod fits: its spec and labels.
fn fingerprint(pod: &Pod) -> u64 {
    let mut hasher = HashWriter(DefaultHasher::new());
    // Encoding into a hasher cannot fail for these types; a failure only
    // makes the next comparison report a change, which retries the pod.
    let _ = serde_json::to_writer(&mut hasher, &(&pod.spec, &pod.metadata.labels));
    hasher.0.finish()
}

/// Feeds serialized bytes to a hasher without buffering them.
struct HashWriter(DefaultHasher);

impl io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "100m"}}}],
                "nodeSelector": {"disk": "ssd"},
            },
            "status": {"phase": "Pending"},
        }))
        .expect("valid pod")
    }

    #[test]
    fn a_packed_pod_unpacks_to_the_same_pod() {
        let mut held = Held::Whole(Arc::new(pod()));
        held.pack();
        assert!(matches!(held, Held::Packed { .. }));
        assert_eq!(*held.unpack().expect("decodes"), pod());
        assert!(matches!(held, Held::Whole(_)));
    }

    #[test]
    fn updates_of_a_packed_pod_report_spec_and_label_changes_only() {
        for (what, change, relevant) in [
            (
                "status",
                (|p: &mut Pod| p.status = None) as fn(&mut Pod),
                false,
            ),
            (
                "annotations",
                |p| p.metadata.annotations = Some([("a".into(), "b".into())].into()),
                false,
            ),
            ("labels", |p| p.metadata.labels = None, true),
            (
                "spec",
                |p| p.spec.as_mut().expect("spec").node_selector = None,
                true,
            ),
        ] {
            for packed in [false, true] {
                let mut held = Held::Whole(Arc::new(pod()));
                if packed {
                    held.pack();
                }
                let mut newer = pod();
                change(&mut newer);
                assert_eq!(
                    held.replace(Arc::new(newer.clone())),
                    relevant,
                    "{what} changed (held packed: {packed})"
                );
                assert_eq!(*held.unpack().expect("decodes"), newer);
            }
        }
    }
}
