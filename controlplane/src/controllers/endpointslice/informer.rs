//! Watch-fed caches, as client-go's informers: a `kube` watcher keeps a
//! reflector store current, and a callback sees every change together with
//! the object's previous state, after the store has it. Shared with the node
//! lifecycle controller.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;

/// One change the callback sees.
pub enum Change<'a, K> {
    /// An object was added or modified; `old` is its previous cached state.
    Applied {
        /// The cached state before this change, if the object was known.
        old: Option<Arc<K>>,
        /// The new state.
        new: &'a K,
    },
    /// An object was deleted (its last state).
    Deleted(&'a K),
    /// A (re)list finished and replaced the whole store; deletions that
    /// happened while the watch was down show only through this.
    Resynced,
}

/// Runs the watch until the process ends, feeding `writer` and `on_change`.
pub async fn run<K, F>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    mut on_change: F,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: FnMut(Change<'_, K>),
{
    let reader = writer.as_reader();
    // Field ownership is never read here; the cache does not keep it.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(
                    "watch of {} failed, retrying with backoff (is the API server reachable?): {e}",
                    K::plural(&())
                );
                continue;
            }
        };
        let old = match &event {
            watcher::Event::Apply(obj) => reader.get(&ObjectRef::from_obj(obj)),
            _ => None,
        };
        writer.apply_watcher_event(&event);
        match &event {
            watcher::Event::Apply(obj) => on_change(Change::Applied { old, new: obj }),
            watcher::Event::Delete(obj) => on_change(Change::Deleted(obj)),
            watcher::Event::InitDone => on_change(Change::Resynced),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}
