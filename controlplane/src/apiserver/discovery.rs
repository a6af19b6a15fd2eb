//! Legacy (non-aggregated) API discovery documents: `/api`, `/apis`,
//! `/apis/<group>`, the per-group-version resource lists and `/version`.
//!
//! Everything here is derived from [`registry::RESOURCES`]; this module owns
//! the document shapes only. It does not route requests or negotiate content
//! types: clients asking for aggregated discovery get these legacy documents
//! and client-go falls back to them.

use serde_json::{json, Map, Value};

use super::registry::{self, Resource, Subresource};

/// Verbs of a top-level resource.
const RESOURCE_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaces lack `deletecollection`, as upstream: deleting every namespace
/// in one call is not something the API offers.
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The Kubernetes version this server speaks.
pub const KUBERNETES_MINOR: &str = "37";

/// `/api`: the core group's versions and the address clients should use.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

/// `/apis`: every named group with its versions, preferred version first.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = registry::groups()
        .into_iter()
        .map(|(group, versions)| group_body(group, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one group's versions, or None for a group we do not serve.
pub fn api_group(group: &str) -> Option<Value> {
    let (name, versions) = registry::groups().into_iter().find(|(g, _)| *g == group)?;
    let mut body = group_body(name, &versions);
    let obj = body.as_object_mut()?;
    obj.insert("kind".into(), "APIGroup".into());
    obj.insert("apiVersion".into(), "v1".into());
    Some(body)
}

fn group_body(group: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions.first().copied().unwrap_or("v1")),
    })
}

/// `/api/v1` (group `""`) and `/apis/<group>/<version>`: the APIResourceList,
/// or None when no resource is served in that group-version.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<Value> = Vec::new();
    for r in registry::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(resource_entry(r));
        for sub in r.subresources {
            resources.push(subresource_entry(r, *sub));
        }
    }
    if group.is_empty() && version == "v1" {
        resources.extend(core_endpoints());
    }
    if resources.is_empty() {
        return None;
    }
    resources.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Core endpoints served beside the registry's verbs, listed as upstream
/// lists them: `pods/exec` and `pods/attach` (podexec.rs upgrades the
/// request to a stream) and the older `namespaces/{ns}/bindings` a scheduler
/// may post a Binding to.
fn core_endpoints() -> [Value; 3] {
    [
        json!({"name": "pods/exec", "singularName": "", "namespaced": true,
            "kind": "PodExecOptions", "verbs": ["create", "get"]}),
        json!({"name": "pods/attach", "singularName": "", "namespaced": true,
            "kind": "PodAttachOptions", "verbs": ["create", "get"]}),
        json!({"name": "bindings", "singularName": "binding", "namespaced": true,
            "kind": "Binding", "verbs": ["create"]}),
    ]
}

fn resource_entry(r: &Resource) -> Value {
    let verbs = if r.group.is_empty() && r.plural == "namespaces" {
        NAMESPACE_VERBS
    } else {
        RESOURCE_VERBS
    };
    let mut entry = Map::new();
    entry.insert("name".into(), r.plural.into());
    entry.insert("singularName".into(), r.singular.into());
    entry.insert("namespaced".into(), r.namespaced.into());
    entry.insert("kind".into(), r.kind.into());
    entry.insert("verbs".into(), json!(verbs));
    if !r.short_names.is_empty() {
        entry.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        entry.insert("categories".into(), json!(r.categories));
    }
    Value::Object(entry)
}

fn subresource_entry(r: &Resource, sub: Subresource) -> Value {
    let name = format!("{}/{}", r.plural, sub.name());
    // singularName is required by some clients (the Python model rejects
    // null), and upstream leaves it empty for subresources.
    let mut entry = json!({
        "name": name,
        "singularName": "",
        "namespaced": r.namespaced,
        "kind": r.kind,
    });
    let (verbs, kind): (&[&str], &str) = match sub {
        Subresource::Status => (&["get", "patch", "update"], r.kind),
        Subresource::Scale => (&["get", "patch", "update"], "Scale"),
        Subresource::Binding => (&["create"], "Binding"),
        Subresource::Log => (&["get"], r.kind),
        Subresource::Finalize => (&["update"], r.kind),
        Subresource::Eviction => (&["create"], "Eviction"),
    };
    entry["kind"] = kind.into();
    entry["verbs"] = json!(verbs);
    if sub == Subresource::Scale {
        entry["group"] = "autoscaling".into();
        entry["version"] = "v1".into();
    }
    if sub == Subresource::Eviction {
        // kubectl drain looks for exactly this entry (group and version set)
        // before it evicts instead of deleting.
        entry["group"] = "policy".into();
        entry["version"] = "v1".into();
    }
    entry
}

/// `/version`: the version.Info document `kubectl version` prints.
pub fn version_info() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "emulationMajor": "1",
        "emulationMinor": KUBERNETES_MINOR,
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-skiff"),
        "gitCommit": option_env!("SKIFF_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": option_env!("SKIFF_BUILD_DATE").unwrap_or("1970-01-01T00:00:00Z"),
        // Clients print these fields verbatim and some require them present.
        "goVersion": concat!("skiff ", env!("CARGO_PKG_VERSION")),
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, arch),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &Value) -> Vec<&str> {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn every_registry_resource_is_discoverable_with_short_names() {
        for r in registry::RESOURCES {
            let list = resource_list(r.group, r.version).expect("group-version served");
            assert_eq!(list["groupVersion"], r.api_version());
            let entry = list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == r.plural)
                .unwrap_or_else(|| panic!("{} missing", r.qualified()));
            assert_eq!(entry["kind"], r.kind);
            assert_eq!(entry["namespaced"], r.namespaced);
            assert_eq!(entry["singularName"], r.singular);
            let short: Vec<&str> = entry["shortNames"]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(short, r.short_names);
            for sub in r.subresources {
                let name = format!("{}/{}", r.plural, sub.name());
                assert!(names(&list).contains(&name.as_str()), "{name} missing");
            }
        }
    }

    #[test]
    fn core_list_has_pod_subresources_with_their_kinds() {
        let list = resource_list("", "v1").unwrap();
        let find = |n: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap()
        };
        assert_eq!(find("pods")["verbs"], json!(RESOURCE_VERBS));
        assert_eq!(
            find("pods/status")["verbs"],
            json!(["get", "patch", "update"])
        );
        assert_eq!(find("pods/binding")["kind"], "Binding");
        assert_eq!(find("pods/binding")["verbs"], json!(["create"]));
        assert_eq!(find("pods/log")["kind"], "Pod");
        assert_eq!(find("pods/exec")["kind"], "PodExecOptions");
        assert_eq!(find("pods/exec")["verbs"], json!(["create", "get"]));
        assert_eq!(find("bindings")["verbs"], json!(["create"]));
        assert_eq!(find("pods")["categories"], json!(["all"]));
        assert!(find("configmaps").get("categories").is_none());
    }

    #[test]
    fn scale_subresource_names_autoscaling_v1() {
        let list = resource_list("apps", "v1").unwrap();
        let scale = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["version"], "v1");
        assert_eq!(scale["kind"], "Scale");
    }

    #[test]
    fn groups_prefer_the_first_registered_version() {
        let list = api_group_list();
        let autoscaling = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "autoscaling")
            .unwrap();
        assert_eq!(autoscaling["preferredVersion"]["version"], "v2");
        assert_eq!(autoscaling["versions"][1]["groupVersion"], "autoscaling/v1");
        assert!(list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["name"] != ""));

        let apps = api_group("apps").unwrap();
        assert_eq!(apps["kind"], "APIGroup");
        assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
        assert!(api_group("nope.example.com").is_none());
        assert!(resource_list("apps", "v1beta1").is_none());
    }

    #[test]
    fn api_versions_and_version_info() {
        let api = api_versions("10.0.0.1:6443");
        assert_eq!(api["versions"], json!(["v1"]));
        assert_eq!(
            api["serverAddressByClientCIDRs"][0]["serverAddress"],
            "10.0.0.1:6443"
        );
        let v = version_info();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "37");
        assert_eq!(v["gitVersion"], "v1.37.0-skiff");
        assert!(v["platform"].as_str().unwrap().contains('/'));
    }
}
