//! Events expire `--event-ttl` after their last write, as with
//! kube-apiserver's flag (which attaches a fresh etcd lease to every Event
//! write): an Event nobody updates is deleted by the first sweep after the
//! TTL, while one updated meanwhile (its count went up) stays until the TTL
//! has passed since that update. Without expiry every Event ever recorded
//! stays in the store.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use common::{StoreKind, TestServer};
use serde_json::json;

/// The TTL the server runs with; it sweeps every TTL / 4.
const TTL: Duration = Duration::from_secs(12);
/// Stored times have whole-second precision, so an Event may go up to a
/// second before the TTL has passed by this test's clock.
const PRECISION: Duration = Duration::from_secs(1);

fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    jiff::Timestamp::from_second(i64::try_from(secs).expect("fits"))
        .expect("valid time")
        .to_string()
}

fn event(name: &str) -> String {
    let now = rfc3339(SystemTime::now());
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Tested", "message": name, "type": "Normal",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })
    .to_string()
}

fn exists(server: &TestServer, name: &str) -> bool {
    let out = server.kubectl(&["get", "event", name, "-o", "name"]);
    if out.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound"), "kubectl get event {name}: {err}");
    false
}

/// Polls until `name` is gone; panics after `within`.
fn wait_gone(server: &TestServer, name: &str, within: Duration) -> Instant {
    let start = Instant::now();
    while exists(server, name) {
        assert!(
            start.elapsed() < within,
            "event {name} still there after {within:?}; server log:\n{}",
            server.log()
        );
        sleep(Duration::from_millis(250));
    }
    Instant::now()
}

#[test]
fn events_expire_ttl_after_their_last_write() {
    let ttl = format!("{}s", TTL.as_secs());
    let server = TestServer::start_with_args(
        StoreKind::Redb,
        &["--event-ttl", &ttl, "--disable-controllers", "scheduler"],
    );
    let created = Instant::now();
    server.kubectl_stdin_ok(&["create", "-f", "-"], &event("untouched"));
    server.kubectl_stdin_ok(&["create", "-f", "-"], &event("updated"));
    sleep(TTL * 3 / 4);
    let patch = json!({"count": 2, "lastTimestamp": rfc3339(SystemTime::now())}).to_string();
    let updated = Instant::now();
    server.kubectl_ok(&["patch", "event", "updated", "--type=merge", "-p", &patch]);
    assert!(exists(&server, "untouched"), "deleted before its TTL");

    // The first sweep after the TTL takes the Event nobody updated...
    let gone = wait_gone(&server, "untouched", TTL);
    assert!(
        gone.duration_since(created) + PRECISION >= TTL,
        "deleted before its TTL"
    );
    // ...but not the one updated three quarters of a TTL later,
    assert!(
        exists(&server, "updated"),
        "an Event was deleted less than the TTL after its last update"
    );
    // which goes once its update is older than the TTL.
    let gone = wait_gone(&server, "updated", TTL);
    assert!(
        gone.duration_since(updated) + PRECISION >= TTL,
        "deleted before its TTL"
    );
}
