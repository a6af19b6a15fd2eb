//! Watch events encoded once and shared by every watcher.
//!
//! A write reaches each open watch on its prefix as its own store event; the
//! object in it is the same for all of them. Without sharing, a burst of
//! writes watched by N clients is decoded and serialised N times. This cache
//! keeps the served JSON of recent (store, served version, revision, key)
//! objects so only the first watcher pays; later watchers copy the bytes.
//! It owns nothing else: selector matching and event types stay per watcher.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use axum::body::Bytes;

/// Encoded objects kept: watchers of one resource read the same events
/// within a few hundred of each other; one further behind than this
/// re-encodes, which is only slower. (4096 pinned ~10 MiB of 2.5 KB pods.)
const CAPACITY: usize = 1024;

/// What identifies one encoded object.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// The store (servers in one process each have their own revisions).
    pub store: usize,
    /// The served resource version (its registry entry's address).
    pub resource: usize,
    /// The revision of the event.
    pub revision: i64,
    /// The object's store key.
    pub key: String,
}

struct Entry {
    /// The stored bytes the encoding was made from, compared on every hit so
    /// a reused address can never serve another object's bytes.
    raw: Bytes,
    encoded: Bytes,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<ObjectId, Entry>,
    order: VecDeque<ObjectId>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The served JSON of `raw` under `id`, from the cache or made by `encode`
/// (None when the object cannot be decoded; that is not cached).
pub fn object(id: ObjectId, raw: &Bytes, encode: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
    if let Some(hit) = lookup(&id, raw) {
        return Some(hit);
    }
    let encoded = encode()?;
    // A poisoned lock only means another watcher panicked mid-insert; the
    // map is still consistent enough to skip caching.
    if let Ok(mut c) = cache().lock() {
        if c.entries.len() >= CAPACITY {
            if let Some(oldest) = c.order.pop_front() {
                c.entries.remove(&oldest);
            }
        }
        let entry = Entry {
            raw: raw.clone(),
            encoded: encoded.clone(),
        };
        if c.entries.insert(id.clone(), entry).is_none() {
            c.order.push_back(id);
        }
    }
    Some(encoded)
}

fn lookup(id: &ObjectId, raw: &Bytes) -> Option<Bytes> {
    let c = cache().lock().ok()?;
    let e = c.entries.get(id)?;
    (e.raw == *raw).then(|| e.encoded.clone())
}

/// A watch event line `{"type":…,"object":…}` around an encoded object.
pub fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(object.len() + kind.len() + 24);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    b.extend_from_slice(object);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(store: usize, revision: i64) -> ObjectId {
        ObjectId {
            store,
            resource: 1,
            revision,
            key: "/registry/pods/default/p".into(),
        }
    }

    #[test]
    fn second_watcher_reuses_the_first_encoding() {
        let raw = Bytes::from_static(b"{\"a\":1}");
        let first = object(id(usize::MAX - 1, 7), &raw, || {
            Some(Bytes::from_static(b"X"))
        });
        let second = object(id(usize::MAX - 1, 7), &raw, || {
            Some(Bytes::from_static(b"Y"))
        });
        assert_eq!(first.as_deref(), Some(&b"X"[..]));
        assert_eq!(second.as_deref(), Some(&b"X"[..]));
    }

    #[test]
    fn different_bytes_under_the_same_id_are_encoded_afresh() {
        let a = Bytes::from_static(b"{\"a\":1}");
        let b = Bytes::from_static(b"{\"a\":2}");
        object(id(usize::MAX - 2, 7), &a, || Some(Bytes::from_static(b"A")));
        let got = object(id(usize::MAX - 2, 7), &b, || Some(Bytes::from_static(b"B")));
        assert_eq!(got.as_deref(), Some(&b"B"[..]));
    }

    #[test]
    fn event_line_is_a_json_watch_event() {
        let line = event_line("MODIFIED", br#"{"kind":"Pod"}"#);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "MODIFIED");
        assert_eq!(v["object"]["kind"], "Pod");
        assert!(line.ends_with(b"\n"));
    }
}
