//! `paths` of a group-version document: every operation upstream publishes
//! for a resource, named as upstream names them (`listCoreV1NamespacedPod`),
//! with the `x-kubernetes-action` and `x-kubernetes-group-version-kind`
//! extensions and the query parameters clients probe for (`fieldValidation`
//! on every POST, PUT and PATCH).

use serde_json::{json, Map, Value};

use super::schemas::{kind_schema_name, names, REF_PREFIX};
use crate::apiserver::registry::{Resource, Subresource};

/// Response content types for objects.
const OBJECT_TYPES: &[&str] = &["application/json", "application/yaml"];
/// Response content types for watches.
const WATCH_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json;stream=watch",
];
/// Request content types of PATCH, one per patch flavour.
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// `CoreV1`, `AppsV1`, `DiscoveryV1`, `AutoscalingV2`: the group-version
/// part of upstream operation ids.
fn gv_camel(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut out: String = group.split('.').map(capitalize).collect();
    out.push_str(&capitalize(version));
    out
}

/// `core_v1`, `apps_v1`, `autoscaling_v2`: upstream's operation tags.
fn tag(group: &str, version: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut parts = group.split('.');
    let mut out = parts.next().unwrap_or_default().to_string();
    out.extend(parts.map(capitalize));
    format!("{out}_{version}")
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{REF_PREFIX}{name}")})
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
           "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn pretty() -> Value {
    query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed.",
    )
}

fn list_params() -> Vec<Value> {
    vec![
        query("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        query("continue", "string", "The continue option should be set when retrieving more results from the server."),
        query("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields. Defaults to everything."),
        query("labelSelector", "string", "A selector to restrict the list of returned objects by their labels. Defaults to everything."),
        query("limit", "integer", "limit is a maximum number of responses to return for a list call."),
        query("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        query("resourceVersionMatch", "string", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
        query("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
        query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        query("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
    ]
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut params = vec![
        query("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid values are: All."),
        query("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict."),
    ];
    if patch {
        params.push(query("force", "boolean", "Force is going to \"force\" Apply requests. It must be unset for non-apply patch requests."));
    }
    params
}

fn delete_params() -> Vec<Value> {
    vec![
        query("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid values are: All."),
        query("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted."),
        query("ignoreStoreReadErrorWithClusterBreakingPotential", "boolean", "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error."),
        query("orphanDependents", "boolean", "Deprecated: please use the PropagationPolicy."),
        query("propagationPolicy", "string", "Whether and how garbage collection will be performed: Orphan, Background or Foreground."),
    ]
}

fn log_params() -> Vec<Value> {
    vec![
        query("container", "string", "The container for which to stream logs. Defaults to only container if there is one container in the pod."),
        query("follow", "boolean", "Follow the log stream of the pod. Defaults to false."),
        query("insecureSkipTLSVerifyBackend", "boolean", "insecureSkipTLSVerifyBackend indicates that the apiserver should not confirm the validity of the serving certificate of the backend it is connecting to."),
        query("limitBytes", "integer", "If set, the number of bytes to read from the server before terminating the log output."),
        query("previous", "boolean", "Return previous terminated container logs. Defaults to false."),
        query("sinceSeconds", "integer", "A relative time in seconds before the current time from which to show logs."),
        query("stream", "string", "Specify which container log stream to return to the client. Acceptable values are \"All\", \"Stdout\" and \"Stderr\"."),
        query("tailLines", "integer", "If set, the number of lines from the end of the logs to show."),
        query("timestamps", "boolean", "If true, add an RFC3339 or RFC3339Nano timestamp at the beginning of every line of log output. Defaults to false."),
    ]
}

fn content(types: &[&str], schema: &Value) -> Value {
    let map: Map<String, Value> = types
        .iter()
        .map(|t| (t.to_string(), json!({"schema": schema})))
        .collect();
    Value::Object(map)
}

/// One operation. `gvk` is the kind the body or response carries.
struct Op<'a> {
    action: &'a str,
    id: String,
    description: String,
    gvk: (&'a str, &'a str, &'a str),
    params: Vec<Value>,
    body: Option<(&'a [&'a str], Value)>,
    responses: Vec<(&'a str, &'a str)>,
    response: (&'a [&'a str], Value),
}

impl Op<'_> {
    fn into_value(self, tag: &str) -> Value {
        let mut responses = Map::new();
        for (code, description) in self.responses {
            responses.insert(
                code.into(),
                json!({"description": description,
                       "content": content(self.response.0, &self.response.1)}),
            );
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        let mut op = json!({
            "tags": [tag],
            "description": self.description,
            "operationId": self.id,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": {
                "group": self.gvk.0, "kind": self.gvk.2, "version": self.gvk.1,
            },
        });
        if !self.params.is_empty() {
            op["parameters"] = Value::Array(self.params);
        }
        if let Some((types, schema)) = self.body {
            op["requestBody"] = json!({"content": content(types, &schema), "required": true});
        }
        op
    }
}

/// Adds every path of `r` to `paths`.
pub(super) fn add_resource(paths: &mut Map<String, Value>, r: &Resource) {
    let Some(schema) = kind_schema_name(r.group, r.version, r.kind) else {
        return;
    };
    let gv = gv_camel(r.group, r.version);
    let tag = tag(r.group, r.version);
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let (scope, ns_segment) = if r.namespaced {
        ("Namespaced", "/namespaces/{namespace}")
    } else {
        ("", "")
    };
    let kind = r.kind;
    let gvk = (r.group, r.version, kind);
    let object = schema_ref(&schema);
    let list = schema_ref(&format!("{schema}List"));
    let watch_event = schema_ref(names::WATCH_EVENT);
    let scoped = |name: bool| {
        let mut params = Vec::new();
        if name {
            params.push(path_param("name", &format!("name of the {kind}")));
        }
        if r.namespaced {
            params.push(path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            ));
        }
        params.push(pretty());
        params
    };
    let collection_path = format!("{prefix}{ns_segment}/{}", r.plural);
    let item_path = format!("{collection_path}/{{name}}");

    let mut collection = Map::new();
    collection.insert(
        "get".into(),
        Op {
            action: "list",
            id: format!("list{gv}{scope}{kind}"),
            description: format!("list or watch objects of kind {kind}"),
            gvk,
            params: list_params(),
            body: None,
            responses: vec![("200", "OK")],
            response: (WATCH_TYPES, list.clone()),
        }
        .into_value(&tag),
    );
    collection.insert(
        "post".into(),
        Op {
            action: "post",
            id: format!("create{gv}{scope}{kind}"),
            description: format!("create a {kind}"),
            gvk,
            params: write_params(false),
            body: Some((&["*/*"], object.clone())),
            responses: vec![("200", "OK"), ("201", "Created"), ("202", "Accepted")],
            response: (OBJECT_TYPES, object.clone()),
        }
        .into_value(&tag),
    );
    // Upstream offers no deletecollection of namespaces.
    if r.plural != "namespaces" {
        let mut params = list_params();
        params.extend(delete_params());
        collection.insert(
            "delete".into(),
            Op {
                action: "deletecollection",
                id: format!("delete{gv}Collection{scope}{kind}"),
                description: format!("delete collection of {kind}"),
                gvk,
                params,
                body: Some((&["*/*"], schema_ref(names::DELETE_OPTIONS))),
                responses: vec![("200", "OK")],
                response: (OBJECT_TYPES, schema_ref(names::STATUS)),
            }
            .into_value(&tag),
        );
    }
    collection.insert("parameters".into(), Value::Array(scoped(false)));
    paths.insert(collection_path, Value::Object(collection));

    let mut item = Map::new();
    item.insert(
        "get".into(),
        Op {
            action: "get",
            id: format!("read{gv}{scope}{kind}"),
            description: format!("read the specified {kind}"),
            gvk,
            params: vec![],
            body: None,
            responses: vec![("200", "OK")],
            response: (OBJECT_TYPES, object.clone()),
        }
        .into_value(&tag),
    );
    item.insert(
        "put".into(),
        Op {
            action: "put",
            id: format!("replace{gv}{scope}{kind}"),
            description: format!("replace the specified {kind}"),
            gvk,
            params: write_params(false),
            body: Some((&["*/*"], object.clone())),
            responses: vec![("200", "OK"), ("201", "Created")],
            response: (OBJECT_TYPES, object.clone()),
        }
        .into_value(&tag),
    );
    item.insert(
        "patch".into(),
        Op {
            action: "patch",
            id: format!("patch{gv}{scope}{kind}"),
            description: format!("partially update the specified {kind}"),
            gvk,
            params: write_params(true),
            body: Some((PATCH_TYPES, schema_ref(names::PATCH))),
            responses: vec![("200", "OK"), ("201", "Created")],
            response: (OBJECT_TYPES, object.clone()),
        }
        .into_value(&tag),
    );
    item.insert(
        "delete".into(),
        Op {
            action: "delete",
            id: format!("delete{gv}{scope}{kind}"),
            description: format!("delete a {kind}"),
            gvk,
            params: delete_params(),
            body: Some((&["*/*"], schema_ref(names::DELETE_OPTIONS))),
            responses: vec![("200", "OK"), ("202", "Accepted")],
            response: (OBJECT_TYPES, object.clone()),
        }
        .into_value(&tag),
    );
    item.insert("parameters".into(), Value::Array(scoped(true)));
    paths.insert(item_path.clone(), Value::Object(item));

    for sub in r.subresources {
        let mut ops = Map::new();
        let suffix = capitalize(sub.name());
        match sub {
            Subresource::Status | Subresource::Scale => {
                let (sub_gvk, body) = if *sub == Subresource::Scale {
                    let scale = kind_schema_name("autoscaling", "v1", "Scale").unwrap_or_default();
                    (("autoscaling", "v1", "Scale"), schema_ref(&scale))
                } else {
                    (gvk, object.clone())
                };
                let what = sub.name();
                for (method, verb, description) in [
                    (
                        "get",
                        "read",
                        format!("read {what} of the specified {kind}"),
                    ),
                    (
                        "put",
                        "replace",
                        format!("replace {what} of the specified {kind}"),
                    ),
                    (
                        "patch",
                        "patch",
                        format!("partially update {what} of the specified {kind}"),
                    ),
                ] {
                    let (params, req, responses) = match method {
                        "get" => (vec![], None, vec![("200", "OK")]),
                        "put" => (
                            write_params(false),
                            Some((&["*/*"][..], body.clone())),
                            vec![("200", "OK"), ("201", "Created")],
                        ),
                        _ => (
                            write_params(true),
                            Some((PATCH_TYPES, schema_ref(names::PATCH))),
                            vec![("200", "OK"), ("201", "Created")],
                        ),
                    };
                    ops.insert(
                        method.into(),
                        Op {
                            action: method,
                            id: format!("{verb}{gv}{scope}{kind}{suffix}"),
                            description,
                            gvk: sub_gvk,
                            params,
                            body: req,
                            responses,
                            response: (OBJECT_TYPES, body.clone()),
                        }
                        .into_value(&tag),
                    );
                }
            }
            Subresource::Finalize => {
                ops.insert(
                    "put".into(),
                    Op {
                        action: "put",
                        id: format!("replace{gv}{scope}{kind}{suffix}"),
                        description: format!("replace finalize of the specified {kind}"),
                        gvk,
                        params: write_params(false),
                        body: Some((&["*/*"], object.clone())),
                        responses: vec![("200", "OK"), ("201", "Created")],
                        response: (OBJECT_TYPES, object.clone()),
                    }
                    .into_value(&tag),
                );
            }
            Subresource::Binding => {
                let binding = kind_schema_name("", "v1", "Binding").unwrap_or_default();
                ops.insert(
                    "post".into(),
                    Op {
                        action: "post",
                        id: format!("create{gv}{scope}{kind}{suffix}"),
                        description: format!("create binding of a {kind}"),
                        gvk: ("", "v1", "Binding"),
                        params: write_params(false),
                        body: Some((&["*/*"], schema_ref(&binding))),
                        responses: vec![("200", "OK"), ("201", "Created"), ("202", "Accepted")],
                        response: (OBJECT_TYPES, schema_ref(&binding)),
                    }
                    .into_value(&tag),
                );
            }
            Subresource::Eviction => {
                let eviction = kind_schema_name("policy", "v1", "Eviction").unwrap_or_default();
                ops.insert(
                    "post".into(),
                    Op {
                        action: "post",
                        id: format!("create{gv}{scope}{kind}{suffix}"),
                        description: format!("create eviction of a {kind}"),
                        gvk: ("policy", "v1", "Eviction"),
                        params: write_params(false),
                        body: Some((&["*/*"], schema_ref(&eviction))),
                        responses: vec![("200", "OK"), ("201", "Created"), ("202", "Accepted")],
                        response: (OBJECT_TYPES, schema_ref(&eviction)),
                    }
                    .into_value(&tag),
                );
            }
            Subresource::Log => {
                ops.insert(
                    "get".into(),
                    Op {
                        action: "get",
                        id: format!("read{gv}{scope}{kind}{suffix}"),
                        description: format!("read log of the specified {kind}"),
                        gvk,
                        params: log_params(),
                        body: None,
                        responses: vec![("200", "OK")],
                        response: (&["text/plain"], json!({"type": "string"})),
                    }
                    .into_value(&tag),
                );
            }
        }
        ops.insert("parameters".into(), Value::Array(scoped(true)));
        paths.insert(format!("{item_path}/{}", sub.name()), Value::Object(ops));
    }

    let watch = |action: &str, id: String, description: String, params: Vec<Value>| {
        let op = Op {
            action,
            id,
            description,
            gvk,
            params: list_params(),
            body: None,
            responses: vec![("200", "OK")],
            response: (WATCH_TYPES, watch_event.clone()),
        }
        .into_value(&tag);
        json!({"get": op, "parameters": params})
    };
    paths.insert(
        format!("{prefix}/watch{ns_segment}/{}", r.plural),
        watch(
            "watchlist",
            format!("watch{gv}{scope}{kind}List"),
            format!("watch individual changes to a list of {kind}. deprecated: use the 'watch' parameter with a list operation instead."),
            scoped(false),
        ),
    );
    paths.insert(
        format!("{prefix}/watch{ns_segment}/{}/{{name}}", r.plural),
        watch(
            "watch",
            format!("watch{gv}{scope}{kind}"),
            format!("watch changes to an object of kind {kind}. deprecated: use the 'watch' parameter with a list operation instead, filtered to a single item with the 'fieldSelector' parameter."),
            scoped(true),
        ),
    );
    if r.namespaced {
        paths.insert(
            format!("{prefix}/watch/{}", r.plural),
            watch(
                "watchlist",
                format!("watch{gv}{kind}ListForAllNamespaces"),
                format!("watch individual changes to a list of {kind}. deprecated: use the 'watch' parameter with a list operation instead."),
                vec![pretty()],
            ),
        );
        let all = Op {
            action: "list",
            id: format!("list{gv}{kind}ForAllNamespaces"),
            description: format!("list or watch objects of kind {kind}"),
            gvk,
            params: list_params(),
            body: None,
            responses: vec![("200", "OK")],
            response: (WATCH_TYPES, list),
        }
        .into_value(&tag);
        paths.insert(
            format!("{prefix}/{}", r.plural),
            json!({"get": all, "parameters": [pretty()]}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_follow_upstream() {
        assert_eq!(gv_camel("", "v1"), "CoreV1");
        assert_eq!(gv_camel("discovery.k8s.io", "v1"), "DiscoveryV1");
        assert_eq!(
            gv_camel("rbac.authorization.k8s.io", "v1"),
            "RbacAuthorizationV1"
        );
        assert_eq!(tag("", "v1"), "core_v1");
        assert_eq!(tag("autoscaling", "v2"), "autoscaling_v2");
        assert_eq!(
            tag("rbac.authorization.k8s.io", "v1"),
            "rbacAuthorization_v1"
        );
    }
}
