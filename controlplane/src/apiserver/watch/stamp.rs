//! Stamping the resourceVersion into a stored object's JSON without decoding it.
//!
//! Objects are stored without `metadata.resourceVersion` (the store's
//! revision is authoritative) and served with it. For a watch event of a
//! kind served as stored, decoding the whole object into a `Value` only to
//! add one field and encode it again was most of the cost of an event; this
//! scans the bytes once and inserts `"resourceVersion":"N"` as the first
//! member of the top-level `metadata` object. Anything unexpected (no
//! top-level `metadata` object, a resourceVersion already there, malformed
//! JSON) returns `None` and the caller takes the decoding path.

/// `raw` with `"resourceVersion":"<revision>"` added to its top-level `metadata`.
pub fn resource_version(raw: &[u8], revision: i64) -> Option<Vec<u8>> {
    let open = metadata_object(raw)?;
    if has_member(raw, open, b"resourceVersion")? {
        return None;
    }
    let field = format!("\"resourceVersion\":\"{revision}\"");
    let empty = raw.get(open + 1) == Some(&b'}');
    let mut out = Vec::with_capacity(raw.len() + field.len() + 1);
    out.extend_from_slice(&raw[..=open]);
    out.extend_from_slice(field.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&raw[open + 1..]);
    Some(out)
}

/// One step of a scan through compact JSON: structure outside strings.
struct Scanner<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    /// The end (exclusive) of the string starting at `pos` (a quote).
    fn string_end(&self, start: usize) -> Option<usize> {
        let mut i = start + 1;
        while i < self.raw.len() {
            match self.raw[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }

    /// Calls `member(key, value_start)` for each member of the object whose
    /// `{` is at `pos`, skipping nested values; stops early when it returns
    /// `Some`. Expects compact JSON (no whitespace), as serde_json writes it.
    fn members<T>(
        &mut self,
        mut member: impl FnMut(&[u8], usize) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.raw.get(self.pos) != Some(&b'{') {
            return None;
        }
        self.pos += 1;
        loop {
            match self.raw.get(self.pos)? {
                b'}' => return Some(None),
                b',' => self.pos += 1,
                b'"' => {
                    let end = self.string_end(self.pos)?;
                    let key = &self.raw[self.pos + 1..end - 1];
                    if self.raw.get(end) != Some(&b':') {
                        return None;
                    }
                    let value = end + 1;
                    if let Some(found) = member(key, value) {
                        return Some(Some(found));
                    }
                    self.pos = self.value_end(value)?;
                }
                _ => return None,
            }
        }
    }

    /// The end (exclusive) of the value starting at `start`.
    fn value_end(&self, start: usize) -> Option<usize> {
        match self.raw.get(start)? {
            b'"' => self.string_end(start),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut i = start;
                while i < self.raw.len() {
                    match self.raw[i] {
                        b'"' => {
                            i = self.string_end(i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                None
            }
            _ => {
                let len = self.raw[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']'))?;
                Some(start + len)
            }
        }
    }
}

/// Offset of the `{` of the top-level `metadata` object.
fn metadata_object(raw: &[u8]) -> Option<usize> {
    let mut scan = Scanner { raw, pos: 0 };
    scan.members(|key, value| {
        (key == b"metadata" && raw.get(value) == Some(&b'{')).then_some(value)
    })?
}

/// Whether the object at `open` has a member named `name`.
fn has_member(raw: &[u8], open: usize, name: &[u8]) -> Option<bool> {
    let mut scan = Scanner { raw, pos: open };
    Some(
        scan.members(|key, _| (key == name).then_some(()))?
            .is_some(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn stamped(v: &Value, revision: i64) -> Option<Value> {
        let raw = serde_json::to_vec(v).unwrap();
        resource_version(&raw, revision).map(|b| serde_json::from_slice(&b).expect("valid JSON"))
    }

    #[test]
    fn adds_the_revision_and_keeps_everything_else() {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"metadata": "{\"x\":\"}"}, "annotations": {"a\\\"": "]"}},
            "spec": {"containers": [{"name": "c", "args": ["{", "\"metadata\":{"]}]},
            "status": {"phase": "Pending"},
        });
        let mut want = pod.clone();
        want["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(stamped(&pod, 42), Some(want));
    }

    #[test]
    fn empty_metadata_gets_just_the_revision() {
        let obj = json!({"kind": "X", "metadata": {}});
        assert_eq!(
            stamped(&obj, 7),
            Some(json!({"kind": "X", "metadata": {"resourceVersion": "7"}}))
        );
    }

    #[test]
    fn only_the_top_level_metadata_counts() {
        let nested = json!({"spec": {"metadata": {"name": "template"}}});
        assert_eq!(stamped(&nested, 3), None);
        let obj = json!({"a": {"metadata": {}}, "metadata": {"name": "n"}, "z": 1});
        let got = stamped(&obj, 3).unwrap();
        assert_eq!(
            got["metadata"],
            json!({"name": "n", "resourceVersion": "3"})
        );
        assert_eq!(got["a"], json!({"metadata": {}}));
    }

    #[test]
    fn declines_what_it_cannot_stamp_safely() {
        let with_rv = json!({"metadata": {"name": "n", "resourceVersion": "1"}});
        assert_eq!(stamped(&with_rv, 3), None);
        assert_eq!(resource_version(b"{\"metadata\":{\"name\":\"n\"", 1), None);
        assert_eq!(resource_version(b"{ \"metadata\": {}}", 1), None);
        assert_eq!(resource_version(b"[]", 1), None);
    }
}
