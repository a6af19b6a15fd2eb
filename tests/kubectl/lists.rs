//! Lists longer than one store page (500 objects): whole, filtered and in
//! pages, through the API and through kubectl. The server answers a whole
//! list as a body streamed page by page, so these check that every page
//! arrives, in key order, inside one valid JSON document.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::common::{StoreKind, TestServer};

/// ConfigMaps created: more than two store pages.
const COUNT: usize = 1100;
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

fn name(i: usize) -> String {
    format!("bulk-{i:04}")
}

/// Names of a list response's items, in the order they came.
fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items array in {list}"))
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .expect("item name")
                .to_string()
        })
        .collect()
}

/// Fails naming the count and the first difference, not 1,100 names.
fn assert_names(got: &[String], expected: &[String], what: &str) {
    let first_difference = got.iter().zip(expected).position(|(g, e)| g != e);
    assert!(
        got.len() == expected.len() && first_difference.is_none(),
        "{what}: {} items, expected {}; first difference at index {first_difference:?}",
        got.len(),
        expected.len()
    );
}

fn list(server: &TestServer, query: &str) -> Value {
    let response = server.get(&format!("{CONFIGMAPS}?{query}"));
    assert_eq!(response.status, 200, "list ?{query}: {}", response.body);
    let list = response.json();
    assert_eq!(list["kind"], "ConfigMapList", "{query}");
    assert_eq!(list["apiVersion"], "v1", "{query}");
    list
}

pub fn lists_longer_than_a_page(store: StoreKind) {
    let server = TestServer::start(store);
    // A YAML stream of documents (one JSON object each), not a `kind: List`.
    let manifest: Vec<String> = (0..COUNT)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name(i), "labels": {
                    "bulk": "yes", "half": if i % 2 == 0 { "even" } else { "odd" },
                }},
                "data": {"index": i.to_string()},
            })
            .to_string()
        })
        .collect();
    server.kubectl_stdin_ok(&["create", "-f", "-"], &manifest.join("\n---\n"));
    let all: Vec<String> = (0..COUNT).map(name).collect();

    // Whole: every object once, in key order, with the list's revision.
    let whole = list(&server, "labelSelector=bulk%3Dyes");
    assert_names(&item_names(&whole), &all, "whole list");
    assert!(
        whole["metadata"]["continue"].is_null(),
        "{}",
        whole["metadata"]
    );
    let revision = whole["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string();
    assert_eq!(whole["items"][700]["data"]["index"], "700");
    assert!(whole["items"][700]["metadata"]["resourceVersion"].is_string());

    // Filtered: the matches of all three store pages.
    let even = list(&server, "labelSelector=bulk%3Dyes,half%3Deven");
    let expected: Vec<String> = (0..COUNT).step_by(2).map(name).collect();
    assert_names(&item_names(&even), &expected, "filtered list");

    // In pages of 500: continue tokens until the last page, one revision.
    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "labelSelector=bulk%3Dyes&limit=500".to_string();
    loop {
        let page = list(&server, &query);
        assert_eq!(page["metadata"]["resourceVersion"], revision.as_str());
        let names = item_names(&page);
        sizes.push(names.len());
        paged.extend(names);
        match page["metadata"]["continue"].as_str() {
            Some(token) => query = format!("labelSelector=bulk%3Dyes&limit=500&continue={token}"),
            None => break,
        }
    }
    assert_eq!(sizes, [500, 500, 100]);
    assert_names(&paged, &all, "pages");

    // kubectl, unchunked (one streamed response) and in its default chunks.
    for chunk in ["--chunk-size=0", "--chunk-size=500"] {
        let out = server.kubectl_ok(&["get", "configmaps", "-l", "bulk=yes", "-o", "name", chunk]);
        let got: BTreeSet<&str> = out.lines().collect();
        assert_eq!(got.len(), COUNT, "kubectl get {chunk}");
        assert!(got.contains("configmap/bulk-1099"), "kubectl get {chunk}");
    }
}
