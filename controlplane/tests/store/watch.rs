//! Watches on both stores: history replay then live changes, and a start
//! revision older than the kept history answered with Gone.

use super::{next_event, value, Fixture, REDB_HISTORY};
use skiff_controlplane::store::{Event, EventKind, KeyValue, StoreError};

pub async fn watch_replays_history_then_follows_live_changes(fx: &Fixture) {
    let store = &fx.store;
    let a1 = store
        .create("/registry/pods/default/a", value("a1"))
        .await
        .expect("create a");
    let a2 = store
        .update(&a1.key, value("a2"), a1.mod_revision)
        .await
        .expect("update a");
    let b = store
        .create("/registry/pods/default/b", value("b"))
        .await
        .expect("create b");
    store
        .create("/registry/services/default/a", value("svc"))
        .await
        .expect("create service");

    let mut watch = store
        .watch("/registry/pods/", a1.mod_revision)
        .await
        .expect("watch");
    let replayed = next_event(&mut watch).await;
    assert_eq!(
        replayed,
        Event {
            kind: EventKind::Put,
            kv: a2.clone(),
            prev: Some(a1.clone())
        }
    );
    let replayed = next_event(&mut watch).await;
    assert_eq!(
        replayed,
        Event {
            kind: EventKind::Put,
            kv: b,
            prev: None
        }
    );

    let deleted = store.delete(&a2.key, None).await.expect("delete a");
    store
        .create("/registry/services/default/b", value("svc"))
        .await
        .expect("create service");
    let c = store
        .create("/registry/pods/default/c", value("c"))
        .await
        .expect("create c");

    let live = next_event(&mut watch).await;
    let expected_kv = KeyValue {
        mod_revision: deleted.mod_revision,
        ..a2.clone()
    };
    assert_eq!(
        live,
        Event {
            kind: EventKind::Delete,
            kv: expected_kv,
            prev: Some(a2)
        }
    );
    assert_eq!(
        live.kv, deleted,
        "the Delete event carries what delete() returned"
    );
    let live = next_event(&mut watch).await;
    assert_eq!(
        live,
        Event {
            kind: EventKind::Put,
            kv: c,
            prev: None
        }
    );
}

pub async fn watch_from_a_compacted_revision_is_gone(fx: &Fixture) {
    let store = &fx.store;
    let mut revisions = Vec::new();
    for i in 0..REDB_HISTORY + 4 {
        let kv = store
            .create(
                &format!("/registry/leases/kube-node-lease/n{i}"),
                value("renew"),
            )
            .await
            .expect("create");
        revisions.push(kv.mod_revision);
    }
    let (first, last) = (revisions[0], revisions[revisions.len() - 1]);
    let expected_oldest = fx.forget_history_before(last).await;

    match store.watch("/registry/leases/", first).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (first, expected_oldest));
        }
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }

    let mut recent = store
        .watch("/registry/leases/", last - 1)
        .await
        .expect("watch inside the window");
    assert_eq!(next_event(&mut recent).await.kv.mod_revision, last);
}
