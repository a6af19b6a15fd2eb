//! The agent pulls pod images from a registry: Debian's `docker-registry` on
//! loopback (plain HTTP, listed with `--insecure-registry`) holding the
//! project's busybox image, anonymous with imagePullPolicy Always, and behind
//! htpasswd basic auth where only an imagePullSecret lets the pod start;
//! the Pulling / Pulled / Failed / BackOff events tell the story.

mod agent_support;
mod common;
mod image_support;

use std::path::Path;
use std::time::Duration;

use agent_support::{pod_json, wait_for, wait_running, AgentNode};
use common::{StoreKind, TestServer};
use image_support::{build_busybox, skiff_image_ok, Registry};

fn node_name(test: &str) -> String {
    format!("rg{}-{test}", std::process::id() % 10_000)
}

/// Pushes the busybox image to `target` (plus `--username/--password` flags).
fn push(dir: &Path, target: &str, extra: &[&str]) {
    let archive = build_busybox(dir, "busybox.tar", "localhost/busybox:latest", "oci");
    let mut args = vec![
        "push",
        archive.to_str().expect("utf-8"),
        target,
        "--insecure",
    ];
    args.extend_from_slice(extra);
    skiff_image_ok(&args);
}

fn pod_manifest(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret
        .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
{secrets}  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    command: ["sh", "-c", "echo pulled-and-running; sleep 3600"]
"#
    )
}

/// The waiting reason of the pod's first container, if it is waiting.
fn waiting_reason(server: &TestServer, name: &str) -> Option<String> {
    pod_json(server, name)?["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn pod_image_is_pulled_from_the_local_registry_with_pull_policy_always() {
    let dir = tempfile::Builder::new()
        .prefix("skiff-agent-registry-")
        .tempdir()
        .expect("temp dir");
    let registry = Registry::start();
    let image = format!("{}/busybox:pulled", registry.host());
    push(dir.path(), &image, &[]);
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start_with(
        &server,
        &node_name("anon"),
        &["--insecure-registry", &registry.host()],
    );
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_manifest("from-registry", &image, None),
    );
    let pod = wait_running(&server, "from-registry");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["image"], image.as_str(), "{status}");
    let image_id = status["imageID"].as_str().unwrap_or_default();
    assert!(
        image_id.starts_with(&format!("{}/busybox@sha256:", registry.host())),
        "imageID is not the registry digest: {status}"
    );
    let logs = wait_for(
        "the pulled container's output",
        Duration::from_secs(30),
        || {
            let out = server.kubectl(&["logs", "from-registry"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("pulled-and-running").then_some(text)
        },
    );
    assert_eq!(logs.trim(), "pulled-and-running");
    let reasons = event_messages(&server, "from-registry");
    assert!(
        reasons.contains(&("Pulling".to_string(), format!("Pulling image \"{image}\""))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(r, m)| r == "Pulled"
            && m.starts_with(&format!("Successfully pulled image \"{image}\" in "))),
        "{reasons:?}"
    );

    // A tag the registry does not have: ErrImagePull, then ImagePullBackOff.
    let missing = format!("{}/busybox:nosuch", registry.host());
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_manifest("missing-tag", &missing, None),
    );
    wait_for(
        "ImagePullBackOff for a missing tag",
        Duration::from_secs(60),
        || {
            (waiting_reason(&server, "missing-tag").as_deref() == Some("ImagePullBackOff"))
                .then_some(())
        },
    );
    // Events are written asynchronously to the status: wait for them.
    let wanted_backoff = (
        "BackOff".to_string(),
        format!("Back-off pulling image \"{missing}\""),
    );
    let failed_prefix = format!("Failed to pull image \"{missing}\": ");
    wait_for("Failed and BackOff events", Duration::from_secs(20), || {
        let reasons = event_messages(&server, "missing-tag");
        (reasons.contains(&wanted_backoff)
            && reasons
                .iter()
                .any(|(r, m)| r == "Failed" && m.starts_with(&failed_prefix)))
        .then_some(())
    });
}

/// (reason, message) of the events about pod `name`.
fn event_messages(server: &TestServer, name: &str) -> Vec<(String, String)> {
    let out = server.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("event list JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn basic_auth_registry_pull_needs_the_image_pull_secret() {
    let dir = tempfile::Builder::new()
        .prefix("skiff-agent-registry-auth-")
        .tempdir()
        .expect("temp dir");
    let registry = Registry::start_with_auth("puller", "s3cret-pw");
    let image = format!("{}/private/busybox:1.0", registry.host());
    push(
        dir.path(),
        &image,
        &["--username", "puller", "--password", "s3cret-pw"],
    );
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start_with(
        &server,
        &node_name("auth"),
        &["--insecure-registry", &registry.host()],
    );
    // Without credentials the pull is refused.
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_manifest("no-secret", &image, None),
    );
    wait_for(
        "an image pull error without the secret",
        Duration::from_secs(60),
        || {
            waiting_reason(&server, "no-secret")
                .filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        },
    );
    server.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", registry.host()),
        "--docker-username=puller",
        "--docker-password=s3cret-pw",
    ]);
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_manifest("with-secret", &image, Some("regcred")),
    );
    let pod = wait_running(&server, "with-secret");
    assert!(
        pod["status"]["containerStatuses"][0]["imageID"]
            .as_str()
            .is_some_and(|id| id.contains("@sha256:")),
        "{}",
        pod["status"]
    );
    // The pod without the secret is still not running.
    let other = pod_json(&server, "no-secret").expect("pod no-secret");
    assert_ne!(other["status"]["phase"], "Running", "{}", other["status"]);
}
