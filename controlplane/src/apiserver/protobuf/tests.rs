//! Decoder tests on hand-built protobuf bytes, laid out as gogo-protobuf
//! (client-go) writes them: every Go value field present, zero or not.

use serde_json::json;

use super::decode::go_duration;
use super::schema::Schema;
use super::{decode_object, ProtobufError, MAGIC};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes, message).
fn len(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn s(tag: u32, text: &str) -> Vec<u8> {
    len(tag, text.as_bytes())
}

/// A varint field; negative values sign-extended to 64 bits as protobuf does.
fn int(tag: u32, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A map<string, string> entry.
fn entry(tag: u32, key: &str, value: &[u8]) -> Vec<u8> {
    len(tag, &cat(&[s(1, key), len(2, value)]))
}

/// `k8s\0` + runtime.Unknown{typeMeta, raw}.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = cat(&[s(1, api_version), s(2, kind)]);
    let unknown = cat(&[len(1, &type_meta), len(2, raw), s(3, ""), s(4, "")]);
    [MAGIC, &unknown].concat()
}

/// ObjectMeta as gogo writes it: all string fields, generation 0, an empty
/// creationTimestamp.
fn object_meta(name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![
        s(1, name),
        s(2, ""),
        s(3, ""),
        s(4, ""),
        s(5, ""),
        s(6, ""),
        int(7, 0),
        len(8, &[]),
    ];
    parts.extend_from_slice(extra);
    cat(&parts)
}

#[test]
fn embedded_schema_loads() {
    let schema = Schema::get();
    let pod = schema.kind("v1", "Pod").expect("v1 Pod");
    assert_eq!(schema.messages[pod].name, "api.core.v1.Pod");
    let deploy = schema
        .kind("apps/v1", "Deployment")
        .expect("apps/v1 Deployment");
    assert_eq!(schema.messages[deploy].name, "api.apps.v1.Deployment");
    // Kinds without a Resource impl: by package, then meta/v1.
    let scale = schema.kind("autoscaling/v1", "Scale").expect("Scale");
    assert_eq!(schema.messages[scale].name, "api.autoscaling.v1.Scale");
    let opts = schema.kind("v1", "DeleteOptions").expect("DeleteOptions");
    assert_eq!(
        schema.messages[opts].name,
        "apimachinery.pkg.apis.meta.v1.DeleteOptions"
    );
    assert!(schema.kind("v1", "NoSuchKind").is_none());
}

#[test]
fn configmap_with_labels_and_data_maps() {
    let meta = object_meta(
        "settings",
        &[entry(11, "app", b"web"), entry(11, "tier", b"front")],
    );
    let raw = cat(&[
        len(1, &meta),
        entry(2, "mode", b"fast"),
        entry(2, "empty", b""),
    ]);
    let obj = decode_object(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"app": "web", "tier": "front"}},
            "data": {"mode": "fast", "empty": ""},
        })
    );
}

#[test]
fn secret_bytes_are_base64() {
    let raw = cat(&[
        len(1, &object_meta("creds", &[])),
        entry(2, "password", b"hunter2"),
        entry(2, "bin", &[0, 255, 1]),
        s(3, "Opaque"),
    ]);
    let obj = decode_object(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(
        obj["data"],
        json!({"password": "aHVudGVyMg==", "bin": "AP8B"})
    );
    assert_eq!(obj["type"], "Opaque");
    // The Go bool `immutable` is a pointer: absent stays absent...
    assert!(obj.get("immutable").is_none());
    // ...and an explicit false is kept.
    let raw = cat(&[len(1, &object_meta("creds", &[])), int(5, 0)]);
    let obj = decode_object(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(obj["immutable"], json!(false));
}

#[test]
fn service_ports_with_int_or_string_target_ports() {
    let int_target = cat(&[int(1, 0), int(2, 3000), s(3, "")]);
    let named_target = cat(&[int(1, 1), int(2, 0), s(3, "metrics")]);
    let port = |name: &str, port: i64, target: &[u8]| {
        // name, protocol, port, targetPort, nodePort (0 = unset), appProtocol absent.
        len(
            1,
            &cat(&[
                s(1, name),
                s(2, "TCP"),
                int(3, port),
                len(4, target),
                int(5, 0),
            ]),
        )
    };
    let spec = cat(&[
        port("http", 80, &int_target),
        port("metrics", 9090, &named_target),
        entry(2, "app", b"api"),
        s(3, ""),
        s(4, "ClusterIP"),
        int(13, 0),
    ]);
    let raw = cat(&[len(1, &object_meta("api", &[])), len(2, &spec), len(3, &[])]);
    let obj = decode_object(&envelope("v1", "Service", &raw)).unwrap();
    assert_eq!(
        obj["spec"],
        json!({
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 3000},
                {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": "metrics"},
            ],
            "selector": {"app": "api"},
            "type": "ClusterIP",
        })
    );
    assert_eq!(obj["status"], json!({}));
}

#[test]
fn deployment_nested_repeated_messages_and_pointer_zero() {
    let container = cat(&[
        s(1, "app"),
        s(2, "localhost/my-app:latest"),
        s(3, "sleep"),
        s(3, "3600"),
        len(8, &[]),
        int(16, 0),
    ]);
    let template = cat(&[
        len(1, &object_meta("", &[entry(11, "app", b"api")])),
        len(2, &len(2, &container)),
    ]);
    let spec = cat(&[
        int(1, 0),
        len(2, &entry(1, "app", b"api")),
        len(3, &template),
        len(4, &[]),
        int(5, 0),
    ]);
    let raw = cat(&[len(1, &object_meta("api", &[])), len(2, &spec)]);
    let obj = decode_object(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    // replicas is *int32 in Go: an explicit 0 survives; minReadySeconds (a
    // value field) at 0 is Go's "unset" and disappears.
    assert_eq!(obj["spec"]["replicas"], json!(0));
    assert!(obj["spec"].get("minReadySeconds").is_none());
    assert_eq!(
        obj["spec"]["selector"],
        json!({"matchLabels": {"app": "api"}})
    );
    assert_eq!(obj["spec"]["strategy"], json!({}));
    assert_eq!(
        obj["spec"]["template"],
        json!({
            "metadata": {"labels": {"app": "api"}},
            "spec": {"containers": [{
                "name": "app",
                "image": "localhost/my-app:latest",
                "command": ["sleep", "3600"],
                "resources": {},
            }]},
        })
    );
}

#[test]
fn times_and_negative_ints() {
    // deletionTimestamp 2024-01-02T03:04:05Z, deletionGracePeriodSeconds -1.
    let meta = object_meta(
        "gone",
        &[
            len(9, &cat(&[int(1, 1_704_164_645), int(2, 0)])),
            int(10, -1),
        ],
    );
    let obj = decode_object(&envelope("v1", "Pod", &len(1, &meta))).unwrap();
    assert_eq!(obj["metadata"]["deletionTimestamp"], "2024-01-02T03:04:05Z");
    assert_eq!(obj["metadata"]["deletionGracePeriodSeconds"], json!(-1));
    assert!(obj["metadata"].get("creationTimestamp").is_none());
    // events.k8s.io Event.eventTime is a MicroTime.
    let micro = cat(&[int(1, 1_704_164_645), int(2, 123_456_789)]);
    let raw = cat(&[len(1, &object_meta("ev", &[])), len(2, &micro)]);
    let obj = decode_object(&envelope("events.k8s.io/v1", "Event", &raw)).unwrap();
    assert_eq!(obj["eventTime"], "2024-01-02T03:04:05.123456Z");
}

#[test]
fn packed_and_unpacked_repeated_ints() {
    let mut packed = Vec::new();
    for g in [1000u64, 2000] {
        varint(g, &mut packed);
    }
    let ctx = cat(&[int(4, 3000), len(4, &packed)]);
    let spec = cat(&[len(14, &ctx)]);
    let obj = decode_object(&envelope("v1", "Pod", &len(2, &spec))).unwrap();
    assert_eq!(
        obj["spec"]["securityContext"]["supplementalGroups"],
        json!([3000, 1000, 2000])
    );
}

#[test]
fn delete_options_and_json_content_type() {
    let raw = cat(&[s(4, "Foreground"), int(1, 0)]);
    let obj = decode_object(&envelope("v1", "DeleteOptions", &raw)).unwrap();
    assert_eq!(
        obj,
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground", "gracePeriodSeconds": 0})
    );
    // An envelope may carry JSON instead of protobuf.
    let type_meta = cat(&[s(1, "v1"), s(2, "ConfigMap")]);
    let unknown = cat(&[
        len(1, &type_meta),
        len(2, br#"{"metadata":{"name":"j"}}"#),
        s(4, "application/json"),
    ]);
    let obj = decode_object(&[MAGIC, &unknown].concat()).unwrap();
    assert_eq!(obj["metadata"]["name"], "j");
    assert_eq!(obj["kind"], "ConfigMap");
}

#[test]
fn unknown_fields_are_skipped() {
    let raw = cat(&[
        len(1, &object_meta("x", &[])),
        int(99, 7),
        len(98, b"future"),
    ]);
    let obj = decode_object(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(obj["metadata"]["name"], "x");
}

#[test]
fn go_duration_strings() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    assert_eq!(go_duration(-2_000_000_000), "-2s");
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let good = envelope("v1", "ConfigMap", &len(1, &object_meta("x", &[])));
    // Every truncation of a valid body fails cleanly (or decodes a prefix
    // that happens to be complete).
    for cut in 0..good.len() {
        let _ = decode_object(&good[..cut]);
    }
    assert!(matches!(
        decode_object(b"{\"kind\":\"Pod\"}"),
        Err(ProtobufError::NoMagic)
    ));
    let truncated = decode_object(&good[..good.len() - 1]).unwrap_err();
    assert!(
        matches!(truncated, ProtobufError::Wire { .. }),
        "{truncated}"
    );
    // A string field sent as a varint names the field.
    let raw = len(1, &int(1, 5));
    let err = decode_object(&envelope("v1", "ConfigMap", &raw)).unwrap_err();
    assert!(err.to_string().contains("metadata.name"), "{err}");
    // Invalid UTF-8 in a string.
    let raw = len(1, &len(1, &[0xff, 0xfe]));
    assert!(decode_object(&envelope("v1", "ConfigMap", &raw)).is_err());
    // Garbage after the magic.
    let garbage = [MAGIC, &[0xff; 16][..]].concat();
    assert!(decode_object(&garbage).is_err());
    let err = decode_object(&envelope("example.com/v1", "Widget", &[])).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    assert!(err.to_string().contains("Widget"), "{err}");
}

#[test]
fn hostile_nesting_is_bounded() {
    // JSONSchemaProps.not nests JSONSchemaProps: 200 levels deep.
    let mut props = s(1, "leaf");
    for _ in 0..200 {
        props = len(28, &props);
    }
    let validation = len(1, &props);
    let version = cat(&[s(1, "v1"), len(4, &validation)]);
    let spec = cat(&[s(1, "example.com"), len(7, &version)]);
    let raw = cat(&[
        len(1, &object_meta("widgets.example.com", &[])),
        len(2, &spec),
    ]);
    let err = decode_object(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &raw,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("deeper than"), "{err}");
}
