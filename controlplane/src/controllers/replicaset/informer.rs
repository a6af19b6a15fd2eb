//! A watch that feeds a reflector cache and reports each change together with
//! the object's previous cached state, like client-go's informer handlers
//! (`OnAdd`, `OnUpdate(old, new)`, `OnDelete`). The replicaset and
//! deployment controllers map these changes to the objects they reconcile.
//!
//! After a relist (a watch that expired with 410 Gone), objects that were in
//! the cache but not in the new list are reported as deleted, so
//! expectations waiting for those deletions are not left hanging.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{stream, Stream, StreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// One change to a watched cache.
#[derive(Debug)]
pub(crate) enum Change<K> {
    /// An object was added (`old` is `None`) or updated.
    Applied {
        /// The cached state before this event.
        old: Option<Arc<K>>,
        /// The new state.
        new: Arc<K>,
    },
    /// An object was deleted; its last known state.
    Deleted(Arc<K>),
}

/// Watches `api`, keeps `writer`'s cache current and yields each change.
/// Every object is first passed through `trim`, which drops what the
/// controller never reads (as client-go's informer transforms), so a large
/// cache holds only that. Watch errors are logged and retried with backoff;
/// the stream never ends on its own.
pub(crate) fn changes<K>(
    api: Api<K>,
    mut writer: Writer<K>,
    trim: fn(&mut K),
) -> impl Stream<Item = Change<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let reader = writer.as_reader();
    let mut relisted: Option<HashSet<ObjectRef<K>>> = None;
    watcher(api, watcher::Config::default())
        .default_backoff()
        // No controller reads field ownership; as upstream's informers
        // (`TrimManagedFields`), the cache does not keep it: it is often a
        // third of a pod.
        .modify(move |obj| {
            obj.meta_mut().managed_fields = None;
            trim(obj);
        })
        .filter_map(|event| async move {
            match event {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), "watch failed, retrying: {e}");
                    None
                }
            }
        })
        .flat_map(move |event| {
            let mut out = Vec::new();
            match &event {
                Event::Init => relisted = Some(HashSet::new()),
                Event::InitApply(obj) => {
                    let key = ObjectRef::from_obj(obj);
                    let old = reader.get(&key);
                    if let Some(seen) = relisted.as_mut() {
                        seen.insert(key);
                    }
                    out.push(Change::Applied {
                        old,
                        new: Arc::new(obj.clone()),
                    });
                }
                Event::Apply(obj) => {
                    let old = reader.get(&ObjectRef::from_obj(obj));
                    out.push(Change::Applied {
                        old,
                        new: Arc::new(obj.clone()),
                    });
                }
                Event::Delete(obj) => {
                    out.push(Change::Deleted(Arc::new(obj.clone())));
                }
                Event::InitDone => {
                    // The cache still holds the previous list until this event is applied.
                    if let Some(seen) = relisted.take() {
                        out.extend(
                            reader
                                .state()
                                .into_iter()
                                .filter(|o| !seen.contains(&ObjectRef::from_obj(o.as_ref())))
                                .map(Change::Deleted),
                        );
                    }
                }
            }
            writer.apply_watcher_event(&event);
            stream::iter(out)
        })
}

/// `namespace/name` of an object, the key of queues and expectations.
pub(crate) fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A `trim` for [`changes`] that keeps the whole object.
pub(crate) fn keep_all<K>(_: &mut K) {}
