//! The real kubectl against `skiff server`, on both stores: what a user types
//! and what they see. Each scenario starts its own server.

mod common;
#[path = "kubectl/imperative.rs"]
mod imperative;
#[path = "kubectl/list_manifest.rs"]
mod list_manifest;
#[path = "kubectl/lists.rs"]
mod lists;
#[path = "kubectl/mutate.rs"]
mod mutate;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{StoreKind, TestServer};
use imperative::imperative_create_commands;
use list_manifest::apply_a_list_manifest;
use lists::lists_longer_than_a_page;
use mutate::{apply_twice_then_delete, finalizer_holds_deletion, patch_all_three_types};
use serde_json::Value;

/// How long a watch may take to show a change.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs each scenario once per store: `redb::<name>` and `etcd::<name>`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[test] fn $name() { super::$name(super::StoreKind::Redb) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name(super::StoreKind::Etcd) })*
        }
    };
}

on_both_stores!(
    apply_examples_and_get,
    selectors,
    watch_sees_changes,
    scale_label_annotate,
    patch_all_three_types,
    apply_twice_then_delete,
    finalizer_holds_deletion,
    api_resources_and_short_names,
    imperative_create_commands,
    lists_longer_than_a_page,
    apply_a_list_manifest,
);

/// The objects in tests/kubectl/manifests/ (the API scenarios' own manifests), as `kubectl apply` names them.
const EXAMPLE_OBJECTS: &[&str] = &[
    "deployment.apps/my-app",
    "horizontalpodautoscaler.autoscaling/my-app",
    "pod/busybox",
    "pod/shared-volume",
    "pod/web",
    "service/my-app",
];

fn start_with_examples(store: StoreKind) -> TestServer {
    let server = TestServer::start(store);
    let out = server.kubectl_ok(&["apply", "-f", "tests/kubectl/manifests/"]);
    for object in EXAMPLE_OBJECTS {
        assert!(
            out.lines().any(|l| l.trim() == format!("{object} created")),
            "`kubectl apply -f tests/kubectl/manifests/` should print '{object} created':\n{out}"
        );
    }
    server
}

/// The whitespace-separated cells of the table row whose first cell is `name`.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

/// The header line of a table, as its column names separated by whitespace.
fn header(table: &str) -> String {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The set of `kind/name` lines of `-o name` output.
fn names(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn jsonpath(server: &TestServer, object: &str, path: &str) -> String {
    server.kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
}

fn apply_examples_and_get(store: StoreKind) {
    let server = start_with_examples(store);

    // Default table output.
    let pods = server.kubectl_ok(&["get", "pods"]);
    assert_eq!(header(&pods), "NAME READY STATUS RESTARTS AGE", "{pods}");
    assert_eq!(row(&pods, "web")[1..4], ["0/2", "Pending", "0"], "{pods}");
    assert_eq!(
        row(&pods, "shared-volume")[1..4],
        ["0/2", "Pending", "0"],
        "{pods}"
    );
    assert_eq!(
        row(&pods, "busybox")[1..4],
        ["0/1", "Pending", "0"],
        "{pods}"
    );

    let wide = server.kubectl_ok(&["get", "pods", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES",
        "{wide}"
    );
    // Nothing is scheduled yet: no IP, no node.
    assert_eq!(row(&wide, "web")[5..7], ["<none>", "<none>"], "{wide}");

    let deploy = server.kubectl_ok(&["get", "deployments"]);
    assert_eq!(
        header(&deploy),
        "NAME READY UP-TO-DATE AVAILABLE AGE",
        "{deploy}"
    );
    assert_eq!(row(&deploy, "my-app")[1], "0/3", "{deploy}");
    let deploy_wide = server.kubectl_ok(&["get", "deploy", "my-app", "-o", "wide"]);
    let cells = row(&deploy_wide, "my-app");
    assert_eq!(
        cells[5..],
        [
            "nginx,app",
            "localhost/nginx:latest,localhost/my-app:latest",
            "app=my-app"
        ],
        "{deploy_wide}"
    );

    let svc = server.kubectl_ok(&["get", "services"]);
    assert_eq!(
        header(&svc),
        "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE",
        "{svc}"
    );
    let cells = row(&svc, "my-app");
    assert_eq!(cells[1], "ClusterIP", "{svc}");
    assert!(
        cells[2].starts_with("10."),
        "ClusterIP from the 10.96.0.0/12 service CIDR expected:\n{svc}"
    );
    assert_eq!(cells[3..5], ["<none>", "80/TCP,3000/TCP"], "{svc}");

    let hpa = server.kubectl_ok(&["get", "hpa"]);
    assert_eq!(
        header(&hpa),
        "NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE",
        "{hpa}"
    );
    assert_eq!(row(&hpa, "my-app")[1], "Deployment/my-app", "{hpa}");

    // `all` is a category: pods, services, deployments (and friends).
    let all = server.kubectl_ok(&["get", "all", "-o", "name"]);
    let all = names(&all);
    for object in [
        "pod/web",
        "pod/busybox",
        "service/my-app",
        "deployment.apps/my-app",
    ] {
        assert!(
            all.contains(object),
            "`kubectl get all` lacks {object}: {all:?}"
        );
    }

    // Across namespaces, and the namespaces that exist from the start.
    let every = server.kubectl_ok(&["get", "pods", "-A"]);
    assert_eq!(row(&every, "default")[1], "busybox", "{every}");
    let ns = server.kubectl_ok(&["get", "namespaces"]);
    assert_eq!(header(&ns), "NAME STATUS AGE", "{ns}");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(row(&ns, name)[1], "Active", "{ns}");
    }

    // -o yaml: the stored object with server-set metadata and defaults.
    let yaml = server.kubectl_ok(&["get", "pod", "web", "-o", "yaml"]);
    let pod: Value = serde_yaml::from_str(&yaml).expect("kubectl -o yaml prints YAML");
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], "web");
    assert_eq!(pod["metadata"]["namespace"], "default");
    for field in ["uid", "resourceVersion", "creationTimestamp"] {
        assert!(
            pod["metadata"][field]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "metadata.{field} missing:\n{yaml}"
        );
    }
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .expect("spec.containers")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(containers, ["nginx", "app"], "{yaml}");
    assert_eq!(pod["spec"]["restartPolicy"], "Always", "{yaml}");
    assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst", "{yaml}");
    assert_eq!(pod["spec"]["schedulerName"], "default-scheduler", "{yaml}");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30, "{yaml}");
    let nginx = &pod["spec"]["containers"][0];
    assert_eq!(
        nginx["imagePullPolicy"], "Always",
        "':latest' pulls Always:\n{yaml}"
    );
    assert_eq!(
        nginx["terminationMessagePath"], "/dev/termination-log",
        "{yaml}"
    );
    assert_eq!(nginx["ports"][0]["protocol"], "TCP", "{yaml}");
    assert_eq!(pod["status"]["phase"], "Pending", "{yaml}");

    // -o json: a List of every pod.
    let json = server.kubectl_ok(&["get", "pods", "-o", "json"]);
    let list: Value = serde_json::from_str(&json).expect("kubectl -o json prints JSON");
    assert_eq!(list["kind"], "List", "{json}");
    let listed: BTreeSet<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    // Besides the example pods there may be the Deployment's, once a
    // controller makes them.
    for name in ["busybox", "shared-volume", "web"] {
        assert!(listed.contains(name), "pod {name} missing: {json}");
    }
    for name in &listed {
        assert!(
            ["busybox", "shared-volume", "web"].contains(&name.as_str())
                || name.starts_with("my-app-"),
            "unexpected pod {name}: {json}"
        );
    }

    // Defaults a Deployment and a Service get.
    let deploy: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "deploy", "my-app", "-o", "json"]))
            .expect("deployment JSON");
    assert_eq!(
        deploy["spec"]["strategy"]["type"], "RollingUpdate",
        "{deploy}"
    );
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%",
        "{deploy}"
    );
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], "25%",
        "{deploy}"
    );
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10, "{deploy}");
    assert_eq!(deploy["spec"]["progressDeadlineSeconds"], 600, "{deploy}");
    assert_eq!(deploy["metadata"]["generation"], 1, "{deploy}");
    let svc: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "svc", "my-app", "-o", "json"]))
            .expect("service JSON");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP", "{svc}");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], 3000, "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http", "{svc}");
}

fn selectors(store: StoreKind) {
    // Only the stand-alone pods, so that no controller adds pods of its own.
    let server = TestServer::start(store);
    server.kubectl_ok(&[
        "apply",
        "-f",
        "tests/kubectl/manifests/pod-web.yaml",
        "-f",
        "tests/kubectl/manifests/pod-busybox.yaml",
        "-f",
        "tests/kubectl/manifests/pod-shared-volume.yaml",
    ]);
    let pods_where = |args: &[&str]| {
        let mut all = vec!["get", "pods", "-o", "name"];
        all.extend_from_slice(args);
        names(&server.kubectl_ok(&all))
    };

    assert_eq!(pods_where(&["-l", "app=web"]), set(&["pod/web"]));
    assert_eq!(pods_where(&["-l", "app==web"]), set(&["pod/web"]));
    assert_eq!(
        pods_where(&["-l", "app!=web"]),
        set(&["pod/busybox", "pod/shared-volume"])
    );
    assert_eq!(
        pods_where(&["-l", "app in (web,busybox)"]),
        set(&["pod/busybox", "pod/web"])
    );
    assert_eq!(
        pods_where(&["-l", "app notin (web,busybox)"]),
        set(&["pod/shared-volume"])
    );
    assert_eq!(pods_where(&["-l", "tier"]), set(&["pod/web"]));
    assert_eq!(
        pods_where(&["-l", "!tier"]),
        set(&["pod/busybox", "pod/shared-volume"])
    );
    assert_eq!(
        pods_where(&["-l", "app=web,tier=frontend"]),
        set(&["pod/web"])
    );
    assert_eq!(pods_where(&["-l", "app=web,tier=backend"]), set(&[]));

    assert_eq!(
        pods_where(&["--field-selector", "metadata.name=busybox"]),
        set(&["pod/busybox"])
    );
    assert_eq!(
        pods_where(&["--field-selector", "metadata.name!=busybox"]),
        set(&["pod/shared-volume", "pod/web"])
    );
    assert_eq!(
        pods_where(&["--field-selector", "metadata.namespace=default"]),
        set(&["pod/busybox", "pod/shared-volume", "pod/web"])
    );
    assert_eq!(
        pods_where(&["--field-selector", "status.phase=Pending"]),
        set(&["pod/busybox", "pod/shared-volume", "pod/web"])
    );
    assert_eq!(
        pods_where(&["--field-selector", "spec.nodeName="]),
        set(&["pod/busybox", "pod/shared-volume", "pod/web"])
    );
    assert_eq!(
        pods_where(&["--field-selector", "status.phase=Running"]),
        set(&[])
    );
    assert_eq!(
        pods_where(&["-l", "app", "--field-selector", "metadata.name=web"]),
        set(&["pod/web"])
    );

    // What a user sees when nothing matches.
    let out = server.kubectl(&["get", "pods", "--field-selector", "status.phase=Running"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No resources found in default namespace."),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unsupported field is rejected, not silently ignored.
    let err = server.kubectl_fails(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(err.contains("spec.bogus"), "{err}");
}

fn watch_sees_changes(store: StoreKind) {
    let server = start_with_examples(store);

    // A plain watch: the table, then a row per change.
    let mut deploy_watch = server.kubectl_stream(&["get", "deploy", "my-app", "-w"]);
    deploy_watch.wait_for_line("the initial my-app row", WATCH_TIMEOUT, |l| {
        l.starts_with("my-app ") && l.contains("0/3")
    });
    server.kubectl_ok(&["scale", "deployment", "my-app", "--replicas=4"]);
    deploy_watch.wait_for_line("my-app scaled to 4", WATCH_TIMEOUT, |l| {
        l.starts_with("my-app ") && l.contains("0/4")
    });
    deploy_watch.stop();

    // With event types.
    let mut pod_watch = server.kubectl_stream(&["get", "pods", "--watch", "--output-watch-events"]);
    pod_watch.wait_for_line("the existing web pod", WATCH_TIMEOUT, |l| {
        cells(l)[..2] == ["ADDED", "web"]
    });
    server.kubectl_ok(&["label", "pod", "web", "watched=yes"]);
    pod_watch.wait_for_line("web MODIFIED", WATCH_TIMEOUT, |l| {
        cells(l)[..2] == ["MODIFIED", "web"]
    });
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: watched\nspec:\n  containers:\n  \
         - name: c\n    image: localhost/busybox:latest\n",
    );
    pod_watch.wait_for_line("watched ADDED", WATCH_TIMEOUT, |l| {
        cells(l)[..2] == ["ADDED", "watched"]
    });
    server.kubectl_ok(&["delete", "pod", "watched"]);
    pod_watch.wait_for_line("watched DELETED", WATCH_TIMEOUT, |l| {
        cells(l)[..2] == ["DELETED", "watched"]
    });
    pod_watch.stop();
}

/// The first two whitespace-separated cells of a line (padded with "").
fn cells(line: &str) -> [&str; 2] {
    let mut it = line.split_whitespace();
    [it.next().unwrap_or(""), it.next().unwrap_or("")]
}

fn scale_label_annotate(store: StoreKind) {
    let server = start_with_examples(store);

    let out = server.kubectl_ok(&["scale", "deployment", "my-app", "--replicas=5"]);
    assert_eq!(out.trim(), "deployment.apps/my-app scaled");
    assert_eq!(jsonpath(&server, "deploy/my-app", "{.spec.replicas}"), "5");
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.generation}"),
        "2"
    );
    let deploy = server.kubectl_ok(&["get", "deploy", "my-app"]);
    assert_eq!(row(&deploy, "my-app")[1], "0/5", "{deploy}");
    // The precondition form fails when the current count differs.
    let err = server.kubectl_fails(&[
        "scale",
        "deployment",
        "my-app",
        "--current-replicas=3",
        "--replicas=1",
    ]);
    assert!(err.contains("Expected replicas to be 3, was 5"), "{err}");

    let out = server.kubectl_ok(&["label", "pod", "web", "env=prod"]);
    assert_eq!(out.trim(), "pod/web labeled");
    assert_eq!(
        names(&server.kubectl_ok(&["get", "pods", "-l", "env=prod", "-o", "name"])),
        set(&["pod/web"])
    );
    let err = server.kubectl_fails(&["label", "pod", "web", "env=dev"]);
    assert!(err.contains("--overwrite is false"), "{err}");
    server.kubectl_ok(&["label", "pod", "web", "env=dev", "--overwrite"]);
    assert_eq!(
        jsonpath(&server, "pod/web", "{.metadata.labels.env}"),
        "dev"
    );
    let out = server.kubectl_ok(&["label", "pod", "web", "env-"]);
    assert_eq!(out.trim(), "pod/web unlabeled");
    assert_eq!(jsonpath(&server, "pod/web", "{.metadata.labels.env}"), "");
    // Labels show up as columns with -L.
    let shown = server.kubectl_ok(&["get", "pods", "-L", "tier"]);
    assert_eq!(
        row(&shown, "web").last().map(String::as_str),
        Some("frontend"),
        "{shown}"
    );

    let out = server.kubectl_ok(&["annotate", "pod", "web", "owner=team-a"]);
    assert_eq!(out.trim(), "pod/web annotated");
    assert_eq!(
        jsonpath(&server, "pod/web", "{.metadata.annotations.owner}"),
        "team-a"
    );
    let out = server.kubectl_ok(&["annotate", "deploy", "my-app", "note=hello world"]);
    assert_eq!(out.trim(), "deployment.apps/my-app annotated");
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.annotations.note}"),
        "hello world"
    );
    // Metadata-only changes do not bump the generation.
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.generation}"),
        "2"
    );
}

fn api_resources_and_short_names(store: StoreKind) {
    let server = TestServer::start(store);
    let out = server.kubectl_ok(&["api-resources"]);
    assert_eq!(
        header(&out),
        "NAME SHORTNAMES APIVERSION NAMESPACED KIND",
        "{out}"
    );
    let expected: &[&[&str]] = &[
        &["pods", "po", "v1", "true", "Pod"],
        &["services", "svc", "v1", "true", "Service"],
        &["endpoints", "ep", "v1", "true", "Endpoints"],
        &["namespaces", "ns", "v1", "false", "Namespace"],
        &["nodes", "no", "v1", "false", "Node"],
        &["configmaps", "cm", "v1", "true", "ConfigMap"],
        &["secrets", "v1", "true", "Secret"],
        &["deployments", "deploy", "apps/v1", "true", "Deployment"],
        &["replicasets", "rs", "apps/v1", "true", "ReplicaSet"],
        &["daemonsets", "ds", "apps/v1", "true", "DaemonSet"],
        &["statefulsets", "sts", "apps/v1", "true", "StatefulSet"],
        &[
            "endpointslices",
            "discovery.k8s.io/v1",
            "true",
            "EndpointSlice",
        ],
        &["leases", "coordination.k8s.io/v1", "true", "Lease"],
        &["jobs", "batch/v1", "true", "Job"],
        &[
            "horizontalpodautoscalers",
            "hpa",
            "autoscaling/v2",
            "true",
            "HorizontalPodAutoscaler",
        ],
    ];
    for want in expected {
        assert_eq!(
            row(&out, want[0]),
            *want,
            "api-resources row for {}:\n{out}",
            want[0]
        );
    }
    for name in ["serviceaccounts", "events"] {
        row(&out, name);
    }
    let cluster_scoped = server.kubectl_ok(&["api-resources", "--namespaced=false", "-o", "name"]);
    let cluster_scoped = names(&cluster_scoped);
    assert!(
        cluster_scoped.contains("namespaces") && cluster_scoped.contains("nodes"),
        "{cluster_scoped:?}"
    );
    assert!(!cluster_scoped.contains("pods"), "{cluster_scoped:?}");
    let apps = names(&server.kubectl_ok(&["api-resources", "--api-group=apps", "-o", "name"]));
    for name in [
        "deployments.apps",
        "replicasets.apps",
        "daemonsets.apps",
        "statefulsets.apps",
    ] {
        assert!(apps.contains(name), "{apps:?}");
    }

    // Every short name resolves.
    server.kubectl_ok(&["get", "po,svc,ep,cm,deploy,rs,ds,sts,hpa"]);
    server.kubectl_ok(&["get", "ns,no"]);
    let versions = server.kubectl_ok(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "autoscaling/v1",
        "autoscaling/v2",
        "batch/v1",
        "coordination.k8s.io/v1",
        "discovery.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == gv),
            "api-versions lacks {gv}:\n{versions}"
        );
    }
    let version = server.kubectl_ok(&["version", "-o", "json"]);
    let version: Value = serde_json::from_str(&version).expect("version JSON");
    assert!(
        version["serverVersion"]["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "{version}"
    );
}
