//! What survives a restart, a graceful one and a `kill -9` in the middle of
//! a burst of writes: every object the server acknowledged, on both stores.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{http, Auth, Request, StoreKind, TestServer};
use serde_json::{json, Value};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
/// Creates in the crash test, the client threads issuing them, and how many
/// must have been acknowledged before the server is killed.
const CREATES: usize = 1000;
const WORKERS: usize = 16;
const KILL_AFTER_ACKS: usize = 200;
/// Upper bound for the whole burst, should the server stall.
const BURST_TIMEOUT: Duration = Duration::from_secs(300);

/// kind/namespace/name → (uid, resourceVersion) of every object kubectl lists.
fn snapshot(server: &TestServer) -> BTreeMap<String, (String, String)> {
    let out = server.kubectl_ok(&[
        "get",
        "namespaces,pods,services,deployments,hpa,configmaps,secrets",
        "-A",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("kubectl -o json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            let meta = &item["metadata"];
            let key = format!(
                "{}/{}/{}",
                item["kind"].as_str().unwrap_or_default(),
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default()
            );
            let uid = meta["uid"].as_str().unwrap_or_default().to_owned();
            let rv = meta["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (key, (uid, rv))
        })
        .collect()
}

fn revision(rv: &str) -> u64 {
    rv.parse()
        .unwrap_or_else(|_| panic!("resourceVersion {rv:?} is not the store revision"))
}

fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"name": name},
    })
}

fn restart_keeps_every_object(store: StoreKind) {
    let mut server = TestServer::start(store);
    server.kubectl_ok(&["apply", "-f", "tests/kubectl/manifests/"]);
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: team-a\n\
         stringData:\n  password: hunter2\n",
    );
    for i in 0..20 {
        let response = server.send_json("POST", CONFIGMAPS, &configmap(&format!("keep-{i}")));
        assert_eq!(response.status, 201, "{}", response.body);
    }
    server.kubectl_ok(&["label", "pod", "web", "survives=restart"]);
    let before = snapshot(&server);
    assert!(
        before.len() >= 30,
        "too few objects to be meaningful: {before:?}"
    );

    server.restart();
    let after = snapshot(&server);
    assert_survived(&before, &after, "a restart");
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "secret",
            "creds",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "aHVudGVyMg==",
        "secret data must survive"
    );

    // The revision keeps counting up from where it was.
    let newest = before
        .values()
        .map(|(_, rv)| revision(rv))
        .max()
        .unwrap_or(0);
    let created = server.send_json("POST", CONFIGMAPS, &configmap("after-restart"));
    assert_eq!(created.status, 201, "{}", created.body);
    let rv = created.json()["metadata"]["resourceVersion"]
        .as_str()
        .map(revision)
        .expect("resourceVersion");
    assert!(
        rv > newest,
        "new resourceVersion {rv} not above {newest} after restart"
    );

    // And a second restart, after a kill -9 this time.
    server.kill9();
    server.restart();
    let again = snapshot(&server);
    assert_survived(&after, &again, "kill -9 and a restart");
    assert!(
        again.contains_key("ConfigMap/default/after-restart"),
        "{again:?}"
    );
}

/// Every object of `before` is in `after` with the same uid; objects no
/// controller writes (ConfigMaps, Secrets) keep their resourceVersion too.
/// Controllers may add objects or update status in between.
fn assert_survived(
    before: &BTreeMap<String, (String, String)>,
    after: &BTreeMap<String, (String, String)>,
    what: &str,
) {
    for (key, (uid, rv)) in before {
        let Some((uid_after, rv_after)) = after.get(key) else {
            panic!("{key} is gone after {what}; now there are {after:#?}");
        };
        assert_eq!(uid, uid_after, "{key} has a new uid after {what}");
        if key.starts_with("ConfigMap/") || key.starts_with("Secret/") {
            assert_eq!(
                rv, rv_after,
                "{key} changed its resourceVersion across {what}"
            );
        }
    }
}

fn kill9_during_creates_keeps_acknowledged(store: StoreKind) {
    let mut server = TestServer::start(store);
    let base = server.base_url();
    let ca = server.ca();
    let token = server.token().to_owned();

    let next = AtomicUsize::new(0);
    let acked = Mutex::new(BTreeSet::new());
    let acked_count = AtomicUsize::new(0);
    let unanswered = AtomicUsize::new(0);
    let unexpected = Mutex::new(Vec::new());

    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= CREATES {
                    break;
                }
                let name = format!("crash-{i:04}");
                let body = configmap(&name).to_string();
                let response = http::send(
                    &base,
                    &ca,
                    Request {
                        method: "POST",
                        path: CONFIGMAPS,
                        content_type: Some("application/json"),
                        body: Some(body.as_bytes()),
                        auth: Auth::Bearer(&token),
                    },
                );
                match response.status {
                    201 => {
                        acked.lock().expect("lock").insert(name);
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    0 => {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => unexpected
                        .lock()
                        .expect("lock")
                        .push(format!("{name}: {} {}", response.status, response.body)),
                }
            });
        }
        let deadline = Instant::now() + BURST_TIMEOUT;
        while acked_count.load(Ordering::SeqCst) < KILL_AFTER_ACKS
            && next.load(Ordering::SeqCst) < CREATES
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(2));
        }
        server.kill9();
    });

    let unexpected = unexpected.into_inner().expect("lock");
    assert!(
        unexpected.is_empty(),
        "creates answered with something other than 201: {unexpected:#?}"
    );
    let acked = acked.into_inner().expect("lock");
    println!(
        "{store:?}: {} of {CREATES} creates acknowledged, {} unanswered at kill -9",
        acked.len(),
        unanswered.load(Ordering::SeqCst)
    );
    assert!(
        acked.len() >= KILL_AFTER_ACKS,
        "only {} creates were acknowledged before the kill",
        acked.len()
    );
    assert!(
        unanswered.load(Ordering::SeqCst) > 0,
        "all {CREATES} creates finished before the kill; the crash hit no write in flight"
    );

    server.restart();
    let listed = server.get(CONFIGMAPS);
    assert_eq!(listed.status, 200, "{}", listed.body);
    let present: BTreeSet<String> = listed.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|cm| cm["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates are gone after kill -9 + restart: {lost:?}",
        lost.len(),
        acked.len()
    );

    // The store is healthy: a write after recovery works and reads back.
    let created = server.send_json("POST", CONFIGMAPS, &configmap("after-crash"));
    assert_eq!(created.status, 201, "{}", created.body);
    let read = server.get(&format!("{CONFIGMAPS}/after-crash"));
    assert_eq!(read.status, 200, "{}", read.body);
}

#[test]
fn restart_keeps_every_object_redb() {
    restart_keeps_every_object(StoreKind::Redb);
}

#[test]
fn restart_keeps_every_object_etcd() {
    restart_keeps_every_object(StoreKind::Etcd);
}

#[test]
fn kill9_during_creates_keeps_acknowledged_redb() {
    kill9_during_creates_keeps_acknowledged(StoreKind::Redb);
}

#[test]
fn kill9_during_creates_keeps_acknowledged_etcd() {
    kill9_during_creates_keeps_acknowledged(StoreKind::Etcd);
}
