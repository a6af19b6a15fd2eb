//! The policy-like kinds (RBAC, networking, policy, scheduling, quotas,
//! limit ranges, volumes, storage classes) through the real kubectl: apply,
//! table output, imperative `kubectl create`, `api-resources`, validation
//! errors, delete. Scenarios that store objects run on both stores;
//! discovery does not touch the store and runs once.

mod common;

use common::{StoreKind, TestServer};

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
    apply_get_and_delete_every_policy_kind,
    imperative_create_forms,
    malformed_objects_get_422_naming_the_field,
);

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: team}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-reader}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
- nonResourceURLs: ["/healthz"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read-pods, namespace: team}
subjects:
- {kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}
- {kind: ServiceAccount, name: bot, namespace: team}
roleRef: {kind: Role, name: pod-reader, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: read-nodes}
subjects:
- {kind: Group, name: ops, apiGroup: rbac.authorization.k8s.io}
roleRef: {kind: ClusterRole, name: node-reader, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: skiff}
spec: {controller: skiff.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: team}
spec:
  ingressClassName: skiff
  rules:
  - host: web.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: web, port: {number: 80}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-other, namespace: team}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: team}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: important}
value: 100000
description: for the important pods
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: team}
spec:
  hard: {pods: "10", limits.cpu: "4"}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 500m}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: disk-1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath: {path: /tmp/skiff-pv}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: team}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local
  resources: {requests: {storage: 1Gi}}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
"#;

/// What `kubectl apply` prints for each object of [`MANIFEST`].
const APPLIED: &[&str] = &[
    "namespace/team",
    "role.rbac.authorization.k8s.io/pod-reader",
    "clusterrole.rbac.authorization.k8s.io/node-reader",
    "rolebinding.rbac.authorization.k8s.io/read-pods",
    "clusterrolebinding.rbac.authorization.k8s.io/read-nodes",
    "ingressclass.networking.k8s.io/skiff",
    "ingress.networking.k8s.io/web",
    "networkpolicy.networking.k8s.io/deny-other",
    "poddisruptionbudget.policy/web",
    "priorityclass.scheduling.k8s.io/important",
    "resourcequota/compute",
    "limitrange/defaults",
    "persistentvolume/disk-1",
    "persistentvolumeclaim/data",
    "storageclass.storage.k8s.io/local",
];

/// The whitespace-separated cells of the row whose first cell is `name`.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

/// kubectl's `kind "name" deleted` for `kind/name`.
fn deleted_line(object: &str) -> String {
    let (kind, name) = object.split_once('/').unwrap_or((object, ""));
    format!("{kind} \"{name}\" deleted")
}

/// The first line of a table with runs of spaces collapsed.
fn header(table: &str) -> String {
    let first = table.lines().next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn apply_get_and_delete_every_policy_kind(store: StoreKind) {
    let server = TestServer::start(store);
    let out = server.kubectl_stdin_ok(&["apply", "-f", "-"], MANIFEST);
    for object in APPLIED {
        assert!(
            out.lines().any(|l| l.trim() == format!("{object} created")),
            "apply should print '{object} created':\n{out}"
        );
    }
    // Applying again changes nothing.
    let again = server.kubectl_stdin_ok(&["apply", "-f", "-"], MANIFEST);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");

    let get = |args: &[&str]| {
        let mut all = vec!["-n", "team", "get"];
        all.extend_from_slice(args);
        server.kubectl_ok(&all)
    };
    let roles = get(&["role"]);
    assert_eq!(header(&roles), "NAME CREATED AT", "{roles}");
    assert!(row(&roles, "pod-reader")[1].ends_with('Z'), "{roles}");

    let bindings = get(&["rolebinding", "-o", "wide"]);
    assert_eq!(
        header(&bindings),
        "NAME ROLE AGE USERS GROUPS SERVICEACCOUNTS",
        "{bindings}"
    );
    let r = row(&bindings, "read-pods");
    assert_eq!(r[1], "Role/pod-reader");
    assert_eq!(r[3], "jane");
    assert_eq!(r[4], "team/bot");

    let crb = get(&["clusterrolebinding", "read-nodes"]);
    assert_eq!(row(&crb, "read-nodes")[1], "ClusterRole/node-reader");

    let ing = get(&["ing"]);
    assert_eq!(header(&ing), "NAME CLASS HOSTS ADDRESS PORTS AGE", "{ing}");
    let r = row(&ing, "web");
    assert_eq!(&r[1..4], ["skiff", "web.example.com", "80"], "{ing}");

    let netpol = get(&["netpol"]);
    assert_eq!(row(&netpol, "deny-other")[1], "app=web", "{netpol}");

    let pdb = get(&["pdb"]);
    assert_eq!(
        header(&pdb),
        "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE"
    );
    assert_eq!(&row(&pdb, "web")[1..4], ["2", "N/A", "0"], "{pdb}");

    let pc = get(&["pc", "important"]);
    assert_eq!(&row(&pc, "important")[1..3], ["100000", "false"], "{pc}");

    let quota = get(&["quota"]);
    assert_eq!(header(&quota), "NAME AGE REQUEST LIMIT");
    let line = quota.lines().nth(1).unwrap_or("");
    assert!(
        line.contains("pods: 0/10") && line.contains("limits.cpu: 0/4"),
        "{quota}"
    );

    let limits = get(&["limits"]);
    assert!(limits.contains("defaults"), "{limits}");

    let pvc = get(&["pvc"]);
    let r = row(&pvc, "data");
    assert!(r.contains(&"local".to_string()), "{pvc}");
    let pv = get(&["pv"]);
    assert_eq!(&row(&pv, "disk-1")[1..4], ["1Gi", "RWO", "Retain"], "{pv}");
    let sc = get(&["sc"]);
    assert_eq!(
        &row(&sc, "local")[1..5],
        [
            "(default)",
            "kubernetes.io/no-provisioner",
            "Retain",
            "WaitForFirstConsumer"
        ],
        "{sc}"
    );
    let ic = get(&["ingressclass"]);
    assert_eq!(row(&ic, "skiff")[1], "skiff.dev/ingress", "{ic}");

    // Namespaced kinds live in their namespace; cluster-scoped ones don't.
    let other = server.kubectl_ok(&["-n", "default", "get", "role,pdb,netpol", "-o", "name"]);
    assert_eq!(other.trim(), "", "{other}");
    let cluster = server.kubectl_ok(&["-n", "default", "get", "clusterrole,pc,sc", "-o", "name"]);
    assert_eq!(
        cluster.lines().collect::<Vec<_>>(),
        [
            "clusterrole.rbac.authorization.k8s.io/node-reader",
            "priorityclass.scheduling.k8s.io/important",
            "storageclass.storage.k8s.io/local"
        ]
    );

    // Everything but the namespace (whose deletion would take its contents).
    let objects = MANIFEST.split_once("---").map_or("", |(_, rest)| rest);
    let deleted = server.kubectl_stdin_ok(&["delete", "-f", "-"], objects);
    for object in &APPLIED[1..] {
        assert!(
            deleted
                .lines()
                .any(|l| l.starts_with(&deleted_line(object))),
            "delete should print '{}':\n{deleted}",
            deleted_line(object)
        );
    }
    let gone = server.kubectl_fails(&["get", "clusterrole", "node-reader"]);
    assert!(gone.contains("not found"), "{gone}");
    let left = server.kubectl_ok(&[
        "-n",
        "team",
        "get",
        "role,rolebinding,ing,netpol,pdb,quota,limits,pvc,pv,sc,pc,ingressclass",
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "{left}");
}

fn imperative_create_forms(store: StoreKind) {
    let server = TestServer::start(store);
    server.kubectl_ok(&["create", "namespace", "team"]);
    let run = |args: &[&str]| {
        let mut all = vec!["-n", "team", "create"];
        all.extend_from_slice(args);
        server.kubectl_ok(&all).trim().to_owned()
    };
    assert_eq!(
        run(&[
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,services"
        ]),
        "role.rbac.authorization.k8s.io/reader created"
    );
    assert_eq!(
        run(&["clusterrole", "viewer", "--verb=get", "--resource=nodes"]),
        "clusterrole.rbac.authorization.k8s.io/viewer created"
    );
    assert_eq!(
        run(&[
            "rolebinding",
            "reader-jane",
            "--role=reader",
            "--user=jane",
            "--serviceaccount=team:bot"
        ]),
        "rolebinding.rbac.authorization.k8s.io/reader-jane created"
    );
    assert_eq!(
        run(&[
            "clusterrolebinding",
            "viewers",
            "--clusterrole=viewer",
            "--group=ops"
        ]),
        "clusterrolebinding.rbac.authorization.k8s.io/viewers created"
    );
    assert_eq!(
        run(&["pdb", "web", "--selector=app=web", "--max-unavailable=1"]),
        "poddisruptionbudget.policy/web created"
    );
    assert_eq!(
        run(&[
            "priorityclass",
            "high",
            "--value=1000",
            "--description=high"
        ]),
        "priorityclass.scheduling.k8s.io/high created"
    );
    assert_eq!(
        run(&["quota", "small", "--hard=pods=5,services=2"]),
        "resourcequota/small created"
    );
    assert_eq!(
        run(&["ingress", "site", "--rule=site.example.com/*=web:80"]),
        "ingress.networking.k8s.io/site created"
    );

    let json = |kind: &str, name: &str| -> serde_json::Value {
        let out = server.kubectl_ok(&["-n", "team", "get", kind, name, "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{kind} {name}: {e}\n{out}"))
    };
    let role = json("role", "reader");
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"]),
        "{role}"
    );
    assert_eq!(
        role["rules"][0]["resources"],
        serde_json::json!(["pods", "services"]),
        "{role}"
    );
    let rb = json("rolebinding", "reader-jane");
    assert_eq!(rb["roleRef"]["name"], "reader", "{rb}");
    assert_eq!(rb["subjects"].as_array().map(Vec::len), Some(2), "{rb}");
    let pdb = json("pdb", "web");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app"], "web",
        "{pdb}"
    );
    let pc = json("priorityclass", "high");
    assert_eq!(pc["value"], 1000, "{pc}");
    let quota = json("quota", "small");
    assert_eq!(quota["spec"]["hard"]["pods"], "5", "{quota}");
    let ing = json("ingress", "site");
    let path = &ing["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(ing["spec"]["rules"][0]["host"], "site.example.com", "{ing}");
    assert_eq!(path["pathType"], "Prefix", "{ing}");
    assert_eq!(path["backend"]["service"]["name"], "web", "{ing}");
    assert_eq!(path["backend"]["service"]["port"]["number"], 80, "{ing}");
}

#[test]
fn api_resources_lists_the_kinds() {
    let server = TestServer::start(StoreKind::Redb);
    let out = server.kubectl_ok(&["api-resources"]);
    let expect: &[(&str, &str, &str, &str, &str)] = &[
        ("roles", "", "rbac.authorization.k8s.io/v1", "true", "Role"),
        (
            "clusterroles",
            "",
            "rbac.authorization.k8s.io/v1",
            "false",
            "ClusterRole",
        ),
        (
            "rolebindings",
            "",
            "rbac.authorization.k8s.io/v1",
            "true",
            "RoleBinding",
        ),
        (
            "clusterrolebindings",
            "",
            "rbac.authorization.k8s.io/v1",
            "false",
            "ClusterRoleBinding",
        ),
        (
            "ingresses",
            "ing",
            "networking.k8s.io/v1",
            "true",
            "Ingress",
        ),
        (
            "ingressclasses",
            "",
            "networking.k8s.io/v1",
            "false",
            "IngressClass",
        ),
        (
            "networkpolicies",
            "netpol",
            "networking.k8s.io/v1",
            "true",
            "NetworkPolicy",
        ),
        (
            "poddisruptionbudgets",
            "pdb",
            "policy/v1",
            "true",
            "PodDisruptionBudget",
        ),
        (
            "priorityclasses",
            "pc",
            "scheduling.k8s.io/v1",
            "false",
            "PriorityClass",
        ),
        ("resourcequotas", "quota", "v1", "true", "ResourceQuota"),
        ("limitranges", "limits", "v1", "true", "LimitRange"),
        (
            "persistentvolumeclaims",
            "pvc",
            "v1",
            "true",
            "PersistentVolumeClaim",
        ),
        ("persistentvolumes", "pv", "v1", "false", "PersistentVolume"),
        (
            "storageclasses",
            "sc",
            "storage.k8s.io/v1",
            "false",
            "StorageClass",
        ),
    ];
    for (plural, short, api_version, namespaced, kind) in expect {
        let cells = row(&out, plural);
        let want: Vec<&str> = [*plural, *short, *api_version, *namespaced, *kind]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells, want, "{out}");
    }
}

fn malformed_objects_get_422_naming_the_field(store: StoreKind) {
    let server = TestServer::start(store);
    let cases = [
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad, namespace: default}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n",
            "rules[0].verbs: Required value: verbs must contain at least one value",
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\nroleRef: {kind: Role, name: x, apiGroup: rbac.authorization.k8s.io}\n",
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
        ),
        (
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad, namespace: default}\nspec: {minAvailable: 1, maxUnavailable: 1}\n",
            "minAvailable and maxUnavailable cannot be both set",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad, namespace: default}\nspec:\n  rules:\n  - http:\n      paths:\n      - path: /\n        backend: {service: {name: web, port: {number: 80}}}\n",
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
        ),
        (
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: bad}\nvalue: 2000000000\n",
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000",
        ),
    ];
    for (manifest, message) in cases {
        let err = server.kubectl_stdin(&["apply", "-f", "-"], manifest);
        let stderr = String::from_utf8_lossy(&err.stderr);
        assert!(!err.status.success(), "{manifest} should be rejected");
        assert!(stderr.contains("is invalid"), "{stderr}");
        assert!(stderr.contains(message), "want {message:?} in:\n{stderr}");
    }
    // Changing a binding's roleRef is refused; the binding keeps its role.
    let binding = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: rb, namespace: default}\nroleRef: {kind: ClusterRole, name: ROLE, apiGroup: rbac.authorization.k8s.io}\n";
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &binding.replace("ROLE", "view"));
    let err = server.kubectl_stdin(&["apply", "-f", "-"], &binding.replace("ROLE", "edit"));
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("cannot change roleRef"), "{stderr}");
    let table = server.kubectl_ok(&["get", "rolebinding", "rb"]);
    assert_eq!(row(&table, "rb")[1], "ClusterRole/view", "{table}");
}
