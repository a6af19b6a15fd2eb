//! The `pod-template-hash`: a stable hash of a Deployment's pod template
//! that names its ReplicaSet (`<deployment>-<hash>`) and labels the
//! ReplicaSet's selector, template and pods, so ReplicaSets of different
//! templates never select each other's pods. Computed as upstream's
//! `ComputeHash` (FNV-1a 32 over the template, then `collisionCount`,
//! encoded with the vowel-free alphabet); the serialized form hashed is the
//! template's JSON, so values differ from Go's but are just as stable.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label Deployments add to their ReplicaSets' selector, template and pods.
pub const HASH_LABEL: &str = "pod-template-hash";

fn fnv1a32(chunks: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in chunks.iter().flat_map(|c| c.iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Upstream's `rand.SafeEncodeString`: each character mapped into an
/// alphabet without vowels or look-alikes, so a hash never spells a word.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The hash of `template` (without any `pod-template-hash` label), salted
/// with `collision_count` when set.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // Serializing a typed struct cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(template).unwrap_or_default();
    let count = collision_count.map(|c| {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&c.to_le_bytes());
        bytes
    });
    let hash = match &count {
        Some(bytes) => fnv1a32(&[&json, bytes]),
        None => fnv1a32(&[&json]),
    };
    safe_encode(&hash.to_string())
}

/// Drops nulls, empty objects and empty arrays, so templates that differ
/// only in absent-versus-empty fields compare equal (Go's semantic equality).
fn normalize(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| normalize(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .map(|v| normalize(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other),
    }
}

fn without_hash(template: &PodTemplateSpec) -> Option<Value> {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    normalize(serde_json::to_value(&t).unwrap_or_default())
}

/// Upstream's `EqualIgnoreHash`: the templates are equal apart from the
/// `pod-template-hash` label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn stable_and_template_sensitive() {
        let a = pod_template_hash(&template("nginx:1"), None);
        assert_eq!(a, pod_template_hash(&template("nginx:1"), None));
        assert_ne!(a, pod_template_hash(&template("nginx:2"), None));
        assert_ne!(a, pod_template_hash(&template("nginx:1"), Some(1)));
        assert!(
            a.len() <= 10 && a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{a}"
        );
    }

    #[test]
    fn known_fnv_value() {
        // FNV-1a 32 of "a" is 0xe40c292c.
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(safe_encode("0123"), "4567");
    }

    #[test]
    fn equality_ignores_the_hash_label_and_empty_fields() {
        let mut labelled = template("nginx:1");
        if let Some(l) = labelled.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.insert(HASH_LABEL.into(), "abc".into());
        }
        assert!(equal_ignore_hash(&labelled, &template("nginx:1")));
        let mut empty_annotations = template("nginx:1");
        if let Some(m) = empty_annotations.metadata.as_mut() {
            m.annotations = Some(Default::default());
        }
        assert!(equal_ignore_hash(&empty_annotations, &template("nginx:1")));
        assert!(!equal_ignore_hash(
            &template("nginx:2"),
            &template("nginx:1")
        ));
    }
}
