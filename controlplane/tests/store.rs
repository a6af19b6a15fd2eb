//! Behaviour of the `Store` contract, run against both backends.
//!
//! Every scenario is one async fn taking a `Fixture`; the `on_both_backends!`
//! macro runs it once on a fresh redb file and once on a fresh etcd server
//! (the Debian `etcd` binary, see `support::etcd`). Scenarios only use the
//! trait, so both backends must agree on everything a caller can observe.

mod support;
#[path = "store/watch.rs"]
mod watch;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_controlplane::store::{EtcdStore, Event, RedbStore, Store, StoreError, WatchStream};
use support::etcd::EtcdServer;
use tempfile::TempDir;
use watch::{
    watch_from_a_compacted_revision_is_gone, watch_replays_history_then_follows_live_changes,
};

/// The redb watch window in these tests: small, so the compaction scenario can outrun it.
const REDB_HISTORY: usize = 16;

/// A fresh store plus whatever keeps its backend alive.
struct Fixture {
    // Declared first so it is dropped before the server or directory under it.
    store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Redb { _dir: TempDir },
    Etcd { server: EtcdServer },
}

impl Fixture {
    async fn redb() -> Fixture {
        let dir = TempDir::new().expect("temporary directory");
        let store = RedbStore::open_with_history(&dir.path().join("store.redb"), REDB_HISTORY)
            .expect("open redb");
        Fixture {
            store: Arc::new(store),
            backend: Backend::Redb { _dir: dir },
        }
    }

    async fn etcd() -> Fixture {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .expect("etcd start task");
        let store = EtcdStore::connect(&server.endpoints())
            .await
            .expect("connect to etcd");
        Fixture {
            store: Arc::new(store),
            backend: Backend::Etcd { server },
        }
    }

    /// Makes every revision before `last - 1` unwatchable and returns the
    /// oldest revision a watch may now start after: etcd compacts at
    /// `last - 1`; redb needs nothing, its small window has already moved on.
    async fn forget_history_before(&self, last: i64) -> i64 {
        match &self.backend {
            Backend::Etcd { server } => {
                let mut client = etcd_client::Client::connect(server.endpoints(), None)
                    .await
                    .expect("etcd client");
                let options = etcd_client::CompactionOptions::new().with_physical();
                client
                    .compact(last - 1, Some(options))
                    .await
                    .expect("etcd compact");
                last - 2
            }
            Backend::Redb { .. } => last - i64::try_from(REDB_HISTORY).expect("small window"),
        }
    }
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&super::Fixture::redb().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(&super::Fixture::etcd().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    create_then_get_and_refuse_duplicates,
    update_compares_the_revision,
    delete_returns_the_last_value_and_checks_the_revision,
    list_is_ordered_isolated_by_prefix_and_paginated,
    revisions_are_global_and_strictly_increasing,
    watch_replays_history_then_follows_live_changes,
    watch_from_a_compacted_revision_is_gone,
    concurrent_creates_all_succeed_with_distinct_revisions,
);

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn next_event(watch: &mut WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("no watch event within 10s")
        .expect("watch ended early")
        .expect("watch failed")
}

async fn create_then_get_and_refuse_duplicates(fx: &Fixture) {
    let store = &fx.store;
    let key = "/registry/pods/default/web-0";
    assert_eq!(store.get(key).await.expect("get"), None);

    let created = store.create(key, value("v1")).await.expect("create");
    assert_eq!(created.key, key);
    assert_eq!(created.value, value("v1"));
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(store.get(key).await.expect("get"), Some(created.clone()));

    match store.create(key, value("v2")).await {
        Err(StoreError::AlreadyExists(k)) => assert_eq!(k, key),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store.get(key).await.expect("get"),
        Some(created),
        "failed create changed the key"
    );
}

async fn update_compares_the_revision(fx: &Fixture) {
    let store = &fx.store;
    let key = "/registry/configmaps/default/settings";
    let v1 = store.create(key, value("v1")).await.expect("create");
    let v2 = store
        .update(key, value("v2"), v1.mod_revision)
        .await
        .expect("update");
    assert_eq!(v2.value, value("v2"));
    assert_eq!(v2.create_revision, v1.create_revision);
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(store.get(key).await.expect("get"), Some(v2.clone()));

    let stale = store.update(key, value("v3"), v1.mod_revision).await;
    match &stale {
        Err(StoreError::Conflict {
            key: k,
            expected,
            actual,
        }) => {
            assert_eq!(
                (k.as_str(), *expected, *actual),
                (key, v1.mod_revision, v2.mod_revision)
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let message = stale.expect_err("conflict").to_string();
    assert!(
        message.contains(&v1.mod_revision.to_string())
            && message.contains(&v2.mod_revision.to_string()),
        "conflict message should name both revisions: {message}"
    );
    assert_eq!(
        store.get(key).await.expect("get"),
        Some(v2),
        "stale update changed the key"
    );

    match store
        .update("/registry/configmaps/default/missing", value("x"), 1)
        .await
    {
        Err(StoreError::NotFound(k)) => assert_eq!(k, "/registry/configmaps/default/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn delete_returns_the_last_value_and_checks_the_revision(fx: &Fixture) {
    let store = &fx.store;
    let key = "/registry/secrets/default/token";
    let created = store.create(key, value("secret")).await.expect("create");

    match store.delete(key, Some(created.mod_revision + 100)).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(
                (expected, actual),
                (created.mod_revision + 100, created.mod_revision)
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(
        store.get(key).await.expect("get").is_some(),
        "conflicting delete removed the key"
    );

    let deleted = store
        .delete(key, Some(created.mod_revision))
        .await
        .expect("delete");
    assert_eq!(deleted.value, value("secret"));
    assert_eq!(deleted.create_revision, created.create_revision);
    assert!(
        deleted.mod_revision > created.mod_revision,
        "delete must get a new revision"
    );
    assert_eq!(
        store.current_revision().await.expect("revision"),
        deleted.mod_revision
    );
    assert_eq!(store.get(key).await.expect("get"), None);

    match store.delete(key, None).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, key),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let again = store.create(key, value("new")).await.expect("re-create");
    let removed = store.delete(key, None).await.expect("unconditional delete");
    assert_eq!(removed.value, value("new"));
    assert_eq!(removed.create_revision, again.create_revision);
}

async fn list_is_ordered_isolated_by_prefix_and_paginated(fx: &Fixture) {
    let store = &fx.store;
    for name in ["c", "a", "e", "b", "d"] {
        store
            .create(&format!("/registry/pods/a/{name}"), value(name))
            .await
            .expect("create");
    }
    store
        .create("/registry/pods/ab/x", value("other"))
        .await
        .expect("create sibling");
    store
        .create("/registry/pods/a", value("exact"))
        .await
        .expect("create parent");
    let last = store
        .create("/registry/services/a/x", value("svc"))
        .await
        .expect("create service");

    let all = store
        .list("/registry/pods/a/", None, 0)
        .await
        .expect("list");
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/registry/pods/a/a",
            "/registry/pods/a/b",
            "/registry/pods/a/c",
            "/registry/pods/a/d",
            "/registry/pods/a/e"
        ]
    );
    assert!(!all.more);
    assert_eq!(all.revision, last.mod_revision);
    assert_eq!(all.items[0].value, value("a"));

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list("/registry/pods/a/", after.as_deref(), 2)
            .await
            .expect("page");
        assert!(page.items.len() <= 2);
        after = page.items.last().map(|kv| kv.key.clone());
        pages.push(
            page.items
                .iter()
                .map(|kv| kv.key.clone())
                .collect::<Vec<_>>(),
        );
        if !page.more {
            break;
        }
    }
    assert_eq!(pages.len(), 3, "5 keys in pages of 2: {pages:?}");
    assert_eq!(pages.concat(), keys);

    let tail = store
        .list("/registry/pods/a/", Some("/registry/pods/a/d"), 0)
        .await
        .expect("tail");
    assert_eq!(tail.items.len(), 1);
    assert_eq!(tail.items[0].key, "/registry/pods/a/e");
    assert!(!tail.more);

    let exact = store
        .list("/registry/pods/a/e", None, 1)
        .await
        .expect("exact page");
    assert_eq!((exact.items.len(), exact.more), (1, false));

    let empty = store
        .list("/registry/nodes/", None, 0)
        .await
        .expect("empty list");
    assert!(empty.items.is_empty() && !empty.more);

    let past_the_end = store
        .list("/registry/pods/a/", Some("/registry/pods/b"), 0)
        .await
        .expect("list past the end");
    assert!(past_the_end.items.is_empty() && !past_the_end.more);
    let before_the_start = store
        .list("/registry/pods/a/", Some("/registry/pods/"), 1)
        .await
        .expect("list from before the prefix");
    assert_eq!(before_the_start.items[0].key, "/registry/pods/a/a");
}

async fn revisions_are_global_and_strictly_increasing(fx: &Fixture) {
    let store = &fx.store;
    let start = store.current_revision().await.expect("revision");
    let a = store
        .create("/registry/pods/ns1/a", value("a"))
        .await
        .expect("create a");
    let b = store
        .create("/registry/services/ns2/b", value("b"))
        .await
        .expect("create b");
    let a2 = store
        .update(&a.key, value("a2"), a.mod_revision)
        .await
        .expect("update a");
    assert!(
        start < a.mod_revision
            && a.mod_revision < b.mod_revision
            && b.mod_revision < a2.mod_revision
    );
    assert_eq!(
        store.current_revision().await.expect("revision"),
        a2.mod_revision
    );
    assert_eq!(
        store
            .get(&b.key)
            .await
            .expect("get b")
            .map(|kv| kv.mod_revision),
        Some(b.mod_revision)
    );

    // A failed write consumes no revision: the next success is exactly one later.
    assert!(store.create(&a.key, value("dup")).await.is_err());
    assert!(store
        .update(&b.key, value("stale"), a.mod_revision)
        .await
        .is_err());
    assert_eq!(
        store.current_revision().await.expect("revision"),
        a2.mod_revision
    );
    let c = store
        .create("/registry/pods/ns1/c", value("c"))
        .await
        .expect("create c");
    assert_eq!(c.mod_revision, a2.mod_revision + 1);
}

async fn concurrent_creates_all_succeed_with_distinct_revisions(fx: &Fixture) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&fx.store);
            tokio::spawn(async move {
                store
                    .create(&format!("/registry/configmaps/load/cm-{i:03}"), value("x"))
                    .await
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.expect("task").expect("create").mod_revision);
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "two creates shared a revision");
    assert_eq!(revisions[199] - revisions[0], 199, "revisions have gaps");

    let listed = fx
        .store
        .list("/registry/configmaps/load/", None, 0)
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 200);
}

#[tokio::test]
async fn redb_writes_survive_reopen_and_the_revision_continues() {
    let dir = TempDir::new().expect("temporary directory");
    let path = dir.path().join("store.redb");
    let (kept, last) = {
        let store = RedbStore::open(&path).expect("open");
        for i in 0..50 {
            store
                .create(
                    &format!("/registry/pods/default/p{i:02}"),
                    value(&format!("pod {i}")),
                )
                .await
                .expect("create");
        }
        let p00 = store
            .get("/registry/pods/default/p00")
            .await
            .expect("get")
            .expect("p00");
        let kept = store
            .update(&p00.key, value("updated"), p00.mod_revision)
            .await
            .expect("update");
        store
            .delete("/registry/pods/default/p49", None)
            .await
            .expect("delete");

        match RedbStore::open(&path) {
            Err(StoreError::Backend(message)) => {
                assert!(
                    message.contains(&path.display().to_string()),
                    "error should name the file: {message}"
                );
            }
            Err(other) => panic!("expected Backend, got {other:?}"),
            Ok(_) => panic!("the same file opened twice"),
        }
        (kept, store.current_revision().await.expect("revision"))
    };

    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), last);
    let listed = store
        .list("/registry/pods/default/", None, 0)
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 49);
    assert_eq!(listed.items[1].value, value("pod 1"));
    assert_eq!(store.get(&kept.key).await.expect("get"), Some(kept));
    assert_eq!(
        store.get("/registry/pods/default/p49").await.expect("get"),
        None
    );

    // History is in memory only: before the reopen is gone, after it is live.
    assert!(matches!(
        store.watch("/registry/", last - 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store
        .watch("/registry/", last)
        .await
        .expect("watch from the reopen revision");
    let next = store
        .create("/registry/pods/default/after", value("x"))
        .await
        .expect("create");
    assert_eq!(next.mod_revision, last + 1);
    assert_eq!(next_event(&mut watch).await.kv, next);
}

#[tokio::test]
async fn etcd_connect_failure_names_the_endpoints() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    match EtcdStore::connect(std::slice::from_ref(&endpoint)).await {
        Err(StoreError::Backend(message)) => {
            assert!(
                message.contains(&endpoint),
                "error should name the endpoint: {message}"
            );
        }
        Err(other) => panic!("expected Backend, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}
