//! How the index keys names: labels in wire form, lowercased, without the
//! root label, so a name is one small allocation shared by every place that
//! holds it, and a lookup builds its key on the stack.

use std::borrow::Borrow;
use std::sync::Arc;

use hickory_proto::rr::Name;

/// A name as the index keys it: its labels in wire form, lowercased, without
/// the root label. One allocation per name, shared by the names table, the
/// records filed under it and the records pointing at it (PTR, SRV, CNAME
/// targets): with 10k Services the index holds 40k names, and a `Name` is
/// 80 bytes inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(pub(crate) Arc<[u8]>);

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Key {
    /// The name these key bytes were made from, lowercased.
    pub(crate) fn name_of(mut rest: &[u8]) -> Name {
        let mut labels = Vec::new();
        while let Some((&len, tail)) = rest.split_first() {
            let (label, tail) = tail.split_at(usize::from(len).min(tail.len()));
            labels.push(label);
            rest = tail;
        }
        let mut name = Name::from_labels(labels).unwrap_or_default();
        name.set_fqdn(true);
        name
    }

    pub(crate) fn name(&self) -> Name {
        Key::name_of(&self.0)
    }
}

/// The key bytes of a name, built on the stack so a lookup allocates nothing.
pub(crate) struct Wire {
    buf: [u8; 256],
    len: usize,
}

impl Wire {
    pub(crate) fn of(name: &Name) -> Wire {
        let mut wire = Wire {
            buf: [0; 256],
            len: 0,
        };
        for label in name.iter() {
            // Names are at most 255 bytes on the wire; a longer one (never
            // built by hickory) is cut rather than overflowing.
            let Some(slot) = wire.buf.get_mut(wire.len..wire.len + 1 + label.len()) else {
                break;
            };
            // Labels are at most 63 bytes: the length fits in one byte.
            slot[0] = label.len() as u8;
            for (to, from) in slot[1..].iter_mut().zip(label) {
                *to = from.to_ascii_lowercase();
            }
            wire.len += 1 + label.len();
        }
        wire
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The key of the parent name (`None` for the root).
pub(crate) fn parent(key: &[u8]) -> Option<&[u8]> {
    key.get(1 + usize::from(*key.first()?)..)
}

/// Whether `key` is `zone` or a name below it.
pub(crate) fn is_under(mut key: &[u8], zone: &[u8]) -> bool {
    // Bounded: every step drops one label.
    loop {
        if key == zone {
            return true;
        }
        if key.len() <= zone.len() {
            return false;
        }
        match parent(key) {
            Some(up) => key = up,
            None => return false,
        }
    }
}
