//! Strategic merge patch, server side, as `strategicpatch.StrategicMergeMapPatch`
//! (merging parallel lists, ignoring unmatched nulls).
//!
//! Maps merge recursively and `null` deletes a key. Lists follow
//! [`list_strategy`]: merged by key, merged as a set of scalars, or replaced.
//! Directives: `$patch: replace|delete|merge` on maps and as list items,
//! `$retainKeys`, `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`.
//! Directive keys never reach the result, not even inside values that are new
//! to the object (upstream copies those verbatim; we clean them).
//!
//! Without `$setElementOrder`, item order follows upstream's `normalizeElementOrder`:
//! patch items keep the patch's order, server-only items keep theirs, and the two
//! are interleaved by their positions in the original list, so an item new to the
//! list comes *before* the server-only items (kubectl always sends `$setElementOrder`
//! for lists it changes, so this matters only for hand-written patches).

use serde_json::{Map, Value};

use super::{list_strategy, ListStrategy, PatchError};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList";

/// Merges `patch` into `original` (the whole object of `kind`).
pub(super) fn merge(
    kind: &str,
    original: Map<String, Value>,
    patch: Map<String, Value>,
) -> Result<Map<String, Value>, PatchError> {
    Merger {
        kind,
        path: Vec::new(),
    }
    .merge_map(original, patch)
}

struct Merger<'a> {
    kind: &'a str,
    /// Field names from the root to the value being merged (no list indices).
    path: Vec<String>,
}

impl Merger<'_> {
    fn merge_map(
        &mut self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
    ) -> Result<Map<String, Value>, PatchError> {
        if let Some(directive) = patch.remove(DIRECTIVE) {
            match directive.as_str() {
                Some("replace") => return self.fresh_map(patch),
                Some("delete") => return Ok(Map::new()),
                Some("merge") => {}
                _ => {
                    return Err(self.bad_directive(format!(
                        "unknown {DIRECTIVE} value {directive} in a map; expected replace, delete or merge"
                    )))
                }
            }
        }
        self.retain_keys(&mut original, &mut patch)?;
        self.set_element_orders(&mut original, &mut patch)?;

        for (key, value) in patch {
            let (field, delete_list) = match key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
                Some(rest) => (self.directive_field(&key, rest)?, true),
                None if key.starts_with('$') => {
                    return Err(self.bad_directive(format!("unknown directive {key:?}")))
                }
                None => (key, false),
            };
            if delete_list && !value.is_array() {
                return Err(self.bad_directive(format!(
                    "{DELETE_PRIMITIVE_PREFIX}/{field} must be a list of the values to delete"
                )));
            }
            if value.is_null() {
                original.remove(&field);
                continue;
            }
            self.path.push(field.clone());
            match original.get_mut(&field) {
                // Deleting from a list that is not there is a no-op.
                None if delete_list => {}
                None => {
                    let value = self.fresh(value)?;
                    original.insert(field, value);
                }
                Some(slot) => {
                    *slot = match (std::mem::take(slot), value) {
                        (Value::Object(o), Value::Object(p)) => {
                            Value::Object(self.merge_map(o, p)?)
                        }
                        (Value::Array(o), Value::Array(p)) => {
                            Value::Array(self.merge_list(o, p, delete_list)?)
                        }
                        (o, _) if delete_list => o,
                        (_, p) => self.fresh(p)?,
                    };
                }
            }
            self.path.pop();
        }
        Ok(original)
    }

    /// `$retainKeys`: drop every key of `original` not listed.
    fn retain_keys(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Result<(), PatchError> {
        let Some(list) = patch.remove(RETAIN_KEYS) else {
            return Ok(());
        };
        let keep: Vec<String> = match list {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(self.bad_directive(format!(
                        "{RETAIN_KEYS} must list field names, found {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(self.bad_directive(format!(
                    "{RETAIN_KEYS} must be a list of field names, found {other}"
                )))
            }
        };
        let kept = |k: &str| keep.iter().any(|r| r == k);
        for (k, v) in patch.iter() {
            let directive =
                k.starts_with(DELETE_PRIMITIVE_PREFIX) || k.starts_with(SET_ORDER_PREFIX);
            if !v.is_null() && !directive && !kept(k) {
                return Err(self.bad_directive(format!(
                    "the patch sets {k:?}, which is missing from {RETAIN_KEYS}"
                )));
            }
        }
        original.retain(|k, _| kept(k));
        Ok(())
    }

    /// `$setElementOrder/<field>`: merge that field's list now and order the result
    /// by the directive (items it does not name keep their place among the rest).
    fn set_element_orders(
        &mut self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Result<(), PatchError> {
        let keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ORDER_PREFIX))
            .cloned()
            .collect();
        for key in keys {
            let Some(order) = patch.remove(&key) else {
                continue;
            };
            let field = self.directive_field(&key, &key[SET_ORDER_PREFIX.len()..])?;
            let Value::Array(order) = order else {
                return Err(self.bad_directive(format!("{key} must be a list")));
            };
            self.path.push(field.clone());
            let merge_key = match self.strategy() {
                // Upstream has no order for replaced lists; the patch list wins as sent.
                ListStrategy::Replace => {
                    self.path.pop();
                    continue;
                }
                ListStrategy::MergeByKey(k) => Some(k),
                ListStrategy::MergePrimitives => None,
            };
            let original_list = match original.get(&field) {
                None => None,
                Some(Value::Array(items)) => Some(items.clone()),
                Some(_) => {
                    return Err(self.unmergeable(format!("{key} names a field that is not a list")))
                }
            };
            let patch_list = match patch.remove(&field) {
                None => None,
                Some(Value::Array(items)) => Some(items),
                Some(other) => {
                    return Err(
                        self.unmergeable(format!("{key} is sent with a non-list value {other}"))
                    )
                }
            };
            let order_ids = self.identities(&order, merge_key)?;
            if let Some(items) = &patch_list {
                self.check_order(items, &order_ids, merge_key, &key)?;
            }
            let (merged, server_order) = match (original_list, patch_list) {
                (Some(o), None) => (o.clone(), o),
                (None, Some(p)) => (self.fresh_list(p)?, Vec::new()),
                (Some(o), Some(p)) => (self.merge_list(o.clone(), p, false)?, o),
                (None, None) => {
                    self.path.pop();
                    continue;
                }
            };
            let server_ids = lenient_identities(&server_order, merge_key);
            let sorted = normalize_order(merged, &order_ids, &server_ids, merge_key);
            original.insert(field, Value::Array(sorted));
            self.path.pop();
        }
        Ok(())
    }

    /// Upstream's `validatePatchWithSetOrderList`: the patch list, minus deletions and
    /// other directive items, must be a subsequence of the `$setElementOrder` list.
    fn check_order(
        &self,
        patch: &[Value],
        order_ids: &[Value],
        merge_key: Option<&'static str>,
        directive: &str,
    ) -> Result<(), PatchError> {
        let mut wanted = order_ids.iter();
        for item in patch {
            if item.as_object().is_some_and(|m| m.contains_key(DIRECTIVE)) {
                continue;
            }
            let id = self.identity(item, merge_key)?;
            if !wanted.any(|w| w == id) {
                return Err(self.bad_directive(format!(
                    "the order of the patch list does not match {directive}"
                )));
            }
        }
        Ok(())
    }

    fn merge_list(
        &mut self,
        original: Vec<Value>,
        patch: Vec<Value>,
        delete_list: bool,
    ) -> Result<Vec<Value>, PatchError> {
        let merge_key = match self.strategy() {
            ListStrategy::Replace if delete_list => return Ok(delete_from(original, &patch)),
            ListStrategy::Replace => return self.fresh_list(patch),
            ListStrategy::MergeByKey(k) => Some(k),
            ListStrategy::MergePrimitives => None,
        };
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        if !self.items_are_objects(&original, &patch)? {
            if delete_list {
                return Ok(delete_from(original, &patch));
            }
            let patch_ids = lenient_identities(&patch, merge_key);
            let server_ids = lenient_identities(&original, merge_key);
            let mut merged = original;
            for item in patch {
                if !merged.contains(&item) {
                    merged.push(item);
                }
            }
            return Ok(normalize_order(merged, &patch_ids, &server_ids, merge_key));
        }
        if delete_list {
            return Err(self.bad_directive(format!(
                "{DELETE_PRIMITIVE_PREFIX} applies to lists of scalars, this list holds objects"
            )));
        }
        let Some(key) = merge_key else {
            return Err(self.unmergeable("a list of objects needs a merge key".into()));
        };
        let (mut merged, patch) = self.special_items(original, patch, key)?;
        let patch_ids = self.identities(&patch, Some(key))?;
        let server_ids = lenient_identities(&merged, Some(key));
        for (item, id) in patch.into_iter().zip(&patch_ids) {
            let found = merged
                .iter()
                .position(|o| identity(o, Some(key)) == Some(id));
            match (found, item) {
                (Some(i), Value::Object(p)) => {
                    if let Value::Object(o) = std::mem::take(&mut merged[i]) {
                        merged[i] = Value::Object(self.merge_map(o, p)?);
                    }
                }
                (_, item) => merged.push(self.fresh(item)?),
            }
        }
        Ok(normalize_order(merged, &patch_ids, &server_ids, Some(key)))
    }

    /// Handles `$patch` items of a keyed list: `delete` removes the original items
    /// with that key, `replace` makes the other patch items the whole list, `merge`
    /// is the default anyway. Returns the original and the plain patch items.
    fn special_items(
        &mut self,
        mut original: Vec<Value>,
        patch: Vec<Value>,
        key: &'static str,
    ) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Some(directive) = item.get(DIRECTIVE) else {
                plain.push(item);
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let id = self.identity(&item, Some(key))?;
                    original.retain(|o| identity(o, Some(key)) != Some(id));
                }
                Some("replace") => replace = true,
                Some("merge") => {}
                _ => {
                    return Err(self.bad_directive(format!(
                        "unknown {DIRECTIVE} value {directive} in a list item; expected delete, replace or merge"
                    )))
                }
            }
        }
        if replace {
            return Ok((self.fresh_list(plain)?, Vec::new()));
        }
        Ok((original, plain))
    }

    /// A value with nothing to merge into: directives applied against nothing,
    /// nulls dropped.
    fn fresh(&mut self, value: Value) -> Result<Value, PatchError> {
        Ok(match value {
            Value::Object(map) => Value::Object(self.fresh_map(map)?),
            Value::Array(items) => Value::Array(self.fresh_list(items)?),
            scalar => scalar,
        })
    }

    fn fresh_map(&mut self, patch: Map<String, Value>) -> Result<Map<String, Value>, PatchError> {
        self.merge_map(Map::new(), patch)
    }

    /// List items with nothing to merge into; `$patch` items (delete, replace
    /// markers) have nothing to act on and are dropped.
    fn fresh_list(&mut self, items: Vec<Value>) -> Result<Vec<Value>, PatchError> {
        items
            .into_iter()
            .filter(|item| item.get(DIRECTIVE).is_none())
            .map(|item| self.fresh(item))
            .collect()
    }

    /// True if every item of both lists is an object, false if every item is a
    /// scalar; mixed lists and lists of lists cannot be merged.
    fn items_are_objects(&self, a: &[Value], b: &[Value]) -> Result<bool, PatchError> {
        let mut items = a.iter().chain(b);
        let Some(first) = items.next() else {
            return Ok(false);
        };
        if first.is_array() {
            return Err(self.unmergeable("lists of lists cannot be merged".into()));
        }
        let first_kind = std::mem::discriminant(first);
        if let Some(other) = items.find(|v| std::mem::discriminant(*v) != first_kind) {
            return Err(self.unmergeable(format!(
                "list items are not all of the same type ({first} and {other})"
            )));
        }
        Ok(first.is_object())
    }

    fn identity<'v>(
        &self,
        item: &'v Value,
        key: Option<&'static str>,
    ) -> Result<&'v Value, PatchError> {
        identity(item, key).ok_or_else(|| PatchError::MissingMergeKey {
            path: self.path_string(),
            key: key.unwrap_or_default(),
            item: item.to_string(),
        })
    }

    fn identities(
        &self,
        items: &[Value],
        key: Option<&'static str>,
    ) -> Result<Vec<Value>, PatchError> {
        items
            .iter()
            .map(|item| self.identity(item, key).cloned())
            .collect()
    }

    fn directive_field(&self, key: &str, rest: &str) -> Result<String, PatchError> {
        match rest.strip_prefix('/') {
            Some(field) if !field.is_empty() => Ok(field.to_string()),
            _ => Err(self.bad_directive(format!(
                "{key:?} must have the form <directive>/<field name>"
            ))),
        }
    }

    fn strategy(&self) -> ListStrategy {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        list_strategy(self.kind, &path)
    }

    fn path_string(&self) -> String {
        if self.path.is_empty() {
            "the object root".to_string()
        } else {
            self.path.join(".")
        }
    }

    fn bad_directive(&self, message: String) -> PatchError {
        PatchError::BadDirective {
            path: self.path_string(),
            message,
        }
    }

    fn unmergeable(&self, message: String) -> PatchError {
        PatchError::Unmergeable {
            path: self.path_string(),
            message,
        }
    }
}

/// What identifies a list item: its merge key's value for objects of keyed lists,
/// the item itself otherwise.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match (item, key) {
        (Value::Object(map), Some(key)) => map.get(key),
        _ => Some(item),
    }
}

/// Identities of `items`, skipping items without one (only stored data can lack it).
fn lenient_identities(items: &[Value], key: Option<&str>) -> Vec<Value> {
    items
        .iter()
        .filter_map(|item| identity(item, key).cloned())
        .collect()
}

fn delete_from(original: Vec<Value>, to_delete: &[Value]) -> Vec<Value> {
    original
        .into_iter()
        .filter(|v| !to_delete.contains(v))
        .collect()
}

/// Upstream `normalizeElementOrder`: items named in `wanted` (the patch list or
/// `$setElementOrder`) take that order, the others keep the server's order, and
/// the two runs are interleaved by their positions in the server's list.
fn normalize_order(
    merged: Vec<Value>,
    wanted: &[Value],
    server: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let position = |order: &[Value], item: &Value| {
        identity(item, key).and_then(|id| order.iter().position(|o| o == id))
    };
    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|item| position(wanted, item).is_some());
    patched.sort_by_key(|item| position(wanted, item).unwrap_or(usize::MAX));
    server_only.sort_by_key(|item| position(server, item).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patched.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (position(server, l), position(server, r)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        out.extend(if take_left { left.next() } else { right.next() });
    }
    out
}
