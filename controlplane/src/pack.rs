//! Objects kept compressed in memory and on disk: the redb store's values
//! (file, index and watch history) and the scheduler's waiting pods.
//!
//! Objects are small JSON documents (a pod is ~2.6 KB) that repeat the same
//! field names, defaults and managed-fields entries, so on their own they
//! compress poorly (~1.7× with LZ4) but against a preset dictionary of
//! typical objects well (a pod ~3.4×, an Event ~3×). Block LZ4 decompresses
//! a pod in about a microsecond and packing one costs ~10 µs with no
//! per-call state to set up, so readers unpack on every read instead of
//! keeping a second, plain copy.
//!
//! A packed value is the plain length (u32, little endian) followed by one
//! LZ4 block compressed against [`DICTIONARY`]. The store's records say they
//! hold packed values with their own format version (`RECORD_PACKED` in
//! `store::redb`). **The dictionary is part of the file format**: changing
//! one byte of it makes every record already written undecodable. A new
//! dictionary needs a new record version, with this one kept for reading.

use bytes::Bytes;

/// Typical stored objects as this server writes them (compact JSON, sorted
/// keys, managed fields): a namespace, service account, PodDisruptionBudget,
/// Service, Deployment, ReplicaSet, Node, node Lease, EndpointSlice, the
/// common Events and two pods, the most frequent kind last, nearest the data.
/// LZ4 reaches back 64 KiB, so it is kept well below that.
const DICTIONARY: &[u8] = include_bytes!("pack/dictionary.jsonl");

/// Largest plain value unpacked: the API server refuses bodies over 3 MiB,
/// so a larger length can only come from a damaged record, and must not
/// make the server allocate gigabytes.
const MAX_PLAIN: usize = 64 * 1024 * 1024;

/// Compresses a plain value (into an allocation of exactly its size).
pub(crate) fn pack(plain: &[u8]) -> Bytes {
    Bytes::from(lz4_flex::block::compress_prepend_size_with_dict(
        plain, DICTIONARY,
    ))
}

/// The plain value of a packed one; the error says what is wrong with it.
pub(crate) fn unpack(packed: &[u8]) -> Result<Bytes, String> {
    let (&length, block) = packed
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("packed value has only {} bytes", packed.len()))?;
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_PLAIN {
        return Err(format!("packed value claims {length} bytes"));
    }
    let mut plain = vec![0; length];
    let written = lz4_flex::block::decompress_into_with_dict(block, &mut plain, DICTIONARY)
        .map_err(|e| format!("packed value cannot be decompressed: {e}"))?;
    if written != length {
        return Err(format!(
            "packed value holds {written} bytes instead of {length}"
        ));
    }
    Ok(Bytes::from(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod like the API benchmark's: nothing of it is in the dictionary
    /// verbatim (other names, labels, container, uid and times).
    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{"bench.skiff.dev/index":"7"},"creationTimestamp":"2026-11-24T13:18:33Z","generation":1,"labels":{"app":"bench","shard":"s7","tier":"web"},"managedFields":[{"apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:annotations":{"f:bench.skiff.dev/index":{}},"f:labels":{"f:app":{},"f:shard":{},"f:tier":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{".":{},"f:env":{"k:{\"name\":\"SHARD\"}":{".":{},"f:name":{},"f:value":{}}},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},"f:resources":{"f:limits":{"f:memory":{}},"f:requests":{"f:cpu":{},"f:memory":{}}},"f:terminationMessagePath":{},"f:terminationMessagePolicy":{}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:preemptionPolicy":{},"f:priority":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:serviceAccount":{},"f:serviceAccountName":{},"f:terminationGracePeriodSeconds":{}}},"manager":"kubectl-create","operation":"Update","time":"2026-11-24T13:18:33Z"},{"apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:status":{"f:conditions":{"k:{\"type\":\"PodScheduled\"}":{".":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}}}}},"manager":"skiff-controller-manager","operation":"Update","subresource":"status","time":"2026-11-24T13:18:33Z"}],"name":"bench-00007","namespace":"default","uid":"37c51477-657e-4bdf-bb23-df3ea7b68465"},"spec":{"containers":[{"env":[{"name":"SHARD","value":"s7"}],"image":"nginx:1.27","imagePullPolicy":"IfNotPresent","name":"web","ports":[{"containerPort":80,"name":"http","protocol":"TCP"}],"resources":{"limits":{"memory":"128Mi"},"requests":{"cpu":"50m","memory":"64Mi"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File"}],"dnsPolicy":"ClusterFirst","enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority","priority":0,"restartPolicy":"Always","schedulerName":"default-scheduler","securityContext":{},"serviceAccount":"default","serviceAccountName":"default","terminationGracePeriodSeconds":30,"tolerations":[{"effect":"NoExecute","key":"node.kubernetes.io/not-ready","operator":"Exists","tolerationSeconds":300},{"effect":"NoExecute","key":"node.kubernetes.io/unreachable","operator":"Exists","tolerationSeconds":300}]},"status":{"conditions":[{"lastTransitionTime":"2026-11-24T13:18:33Z","message":"no nodes available to schedule pods","reason":"Unschedulable","status":"False","type":"PodScheduled"}],"phase":"Pending","qosClass":"Burstable"}}"#;

    #[test]
    fn values_round_trip_and_typical_objects_shrink() {
        for plain in [&b""[..], b"x", b"{}", POD.as_bytes()] {
            let packed = pack(plain);
            assert_eq!(unpack(&packed).as_deref(), Ok(plain));
        }
        let packed = pack(POD.as_bytes());
        assert!(
            packed.len() * 3 < POD.len(),
            "a pod packs to {} of {} bytes",
            packed.len(),
            POD.len()
        );
    }

    #[test]
    fn values_larger_than_the_dictionary_window_round_trip() {
        let big: String = (0..20_000).map(|i| format!("{{\"n\":{i}}},")).collect();
        assert!(big.len() > 64 * 1024);
        assert_eq!(unpack(&pack(big.as_bytes())).as_deref(), Ok(big.as_bytes()));
    }

    /// Written with this dictionary; if this fails, the dictionary (or the
    /// format) changed and existing databases could no longer be read.
    #[test]
    fn a_value_packed_by_an_earlier_build_still_unpacks() {
        let plain = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web","namespace":"default"}}"#;
        let packed = pack(plain);
        assert_eq!(
            hex(&packed),
            GOLDEN,
            "packing changed; if the dictionary changed, bump the record version"
        );
        assert_eq!(unpack(&unhex(GOLDEN)).as_deref(), Ok(&plain[..]));
    }

    const GOLDEN: &str =
        "560000000b110a08b4151143e93b3b4d6170ba15018e08045615000d0008790a60756c74227d7d";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let packed = pack(POD.as_bytes()).to_vec();
        assert!(unpack(&packed[..3]).is_err());
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&huge).is_err());
        let mut short = packed.clone();
        short[..4].copy_from_slice(&10u32.to_le_bytes());
        assert!(unpack(&short).is_err());
        // Every truncation and a deterministic spread of flipped bytes: each
        // either fails cleanly or yields some value, and never panics.
        for cut in 4..packed.len() {
            let _ = unpack(&packed[..cut]);
        }
        for i in 4..packed.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = packed.clone();
                damaged[i] ^= flip;
                let _ = unpack(&damaged);
            }
        }
    }
}
