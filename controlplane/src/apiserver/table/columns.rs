//! Columns and cells of the non-workload kinds: services, endpoints, nodes,
//! namespaces, config, events, endpoint slices and leases.

use jiff::Timestamp;
use serde_json::Value;

use super::{age, at, count, format_labels, int, list, name, since, text, Cells, Column};

pub(super) const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

pub(super) const fn wide(
    name: &'static str,
    ty: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

/// The NAME column.
pub(super) const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
    priority: 0,
};

/// The AGE column.
pub(super) const AGE: Column = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// Columns of kinds without a printer of their own.
pub(super) const DEFAULT: &[Column] = &[NAME, AGE];

/// NAME, AGE.
pub(super) fn default(obj: &Value, now: Timestamp) -> Cells {
    vec![name(obj), age(obj, now)]
}

pub(super) const SERVICE: &[Column] = &[
    NAME,
    col("Type", "string", "type determines how the Service is exposed."),
    col("Cluster-IP", "string", "clusterIP is the IP address of the service."),
    col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "string", "The list of ports that are exposed by this service."),
    AGE,
    wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector."),
];

pub(super) fn service(svc: &Value, now: Timestamp) -> Cells {
    let spec = &svc["spec"];
    let ty = match text(spec, &["type"]) {
        "" => "ClusterIP",
        t => t,
    };
    let cluster_ip = list(spec, &["clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| spec["clusterIP"].as_str())
        .filter(|ip| !ip.is_empty())
        .unwrap_or("<none>");
    let ports: Vec<String> = list(spec, &["ports"])
        .iter()
        .map(|p| {
            let protocol = match text(p, &["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            match int(p, &["nodePort"]) {
                0 => format!("{}/{protocol}", int(p, &["port"])),
                node_port => format!("{}:{node_port}/{protocol}", int(p, &["port"])),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        name(svc),
        ty.into(),
        cluster_ip.into(),
        external_ip(svc, ty).into(),
        ports.into(),
        age(svc, now),
        format_labels(&spec["selector"]).into(),
    ]
}

/// EXTERNAL-IP as upstream's `getServiceExternalIP` for wide output.
fn external_ip(svc: &Value, ty: &str) -> String {
    let external: Vec<&str> = list(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ClusterIP" | "NodePort" if !external.is_empty() => external.join(","),
        "ClusterIP" | "NodePort" => "<none>".into(),
        "LoadBalancer" => {
            let mut lb: Vec<&str> = list(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .map(|i| match text(i, &["ip"]) {
                    "" => text(i, &["hostname"]),
                    ip => ip,
                })
                .filter(|s| !s.is_empty())
                .collect();
            lb.sort_unstable();
            lb.dedup();
            lb.extend(external);
            if lb.is_empty() {
                "<pending>".into()
            } else {
                lb.join(",")
            }
        }
        "ExternalName" => text(svc, &["spec", "externalName"]).into(),
        _ => "<unknown>".into(),
    }
}

pub(super) const ENDPOINTS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

pub(super) fn endpoints(ep: &Value, now: Timestamp) -> Cells {
    vec![name(ep), format_endpoints(ep).into(), age(ep, now)]
}

/// Up to three `ip:port` pairs, then "+ N more...".
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = list(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut shown: Vec<String> = Vec::new();
    let mut total = 0;
    for ss in subsets {
        let addresses = list(ss, &["addresses"]);
        let ports = list(ss, &["ports"]);
        if ports.is_empty() {
            total += addresses.len();
            for a in addresses.iter().take(MAX.saturating_sub(shown.len())) {
                shown.push(text(a, &["ip"]).to_string());
            }
            continue;
        }
        for port in ports {
            total += addresses.len();
            for a in addresses.iter().take(MAX.saturating_sub(shown.len())) {
                shown.push(join_host_port(text(a, &["ip"]), int(port, &["port"])));
            }
        }
    }
    more(shown, total, MAX, "")
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `a,b,c + N more...`; `empty` when nothing is shown.
fn more(shown: Vec<String>, total: usize, max: usize, empty: &str) -> String {
    let joined = shown.join(",");
    if total > max {
        format!("{joined} + {} more...", total - max)
    } else if joined.is_empty() {
        empty.into()
    } else {
        joined
    }
}

pub(super) const NODE: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", "List of addresses reachable to the node."),
    wide("External-IP", "string", "List of addresses reachable to the node."),
    wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

pub(super) fn node(node: &Value, now: Timestamp) -> Cells {
    let mut status: Vec<&str> = Vec::new();
    if let Some(ready) = list(node, &["status", "conditions"])
        .iter()
        .find(|c| text(c, &["type"]) == "Ready")
    {
        status.push(if text(ready, &["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if at(node, &["spec", "unschedulable"]).as_bool() == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = Vec::new();
    if let Some(labels) = at(node, &["metadata", "labels"]).as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if k == "kubernetes.io/role" {
                if let Some(role) = v.as_str().filter(|r| !r.is_empty()) {
                    roles.push(role);
                }
            }
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |ty: &str| -> Value {
        list(node, &["status", "addresses"])
            .iter()
            .find(|a| text(a, &["type"]) == ty)
            .map(|a| text(a, &["address"]))
            .unwrap_or("<none>")
            .into()
    };
    let info = |field: &str| -> Value {
        match text(node, &["status", "nodeInfo", field]) {
            "" => "<unknown>".into(),
            v => v.into(),
        }
    };
    vec![
        name(node),
        status.join(",").into(),
        roles.into(),
        age(node, now),
        text(node, &["status", "nodeInfo", "kubeletVersion"]).into(),
        address("InternalIP"),
        address("ExternalIP"),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ]
}

pub(super) const NAMESPACE: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

pub(super) fn namespace(ns: &Value, now: Timestamp) -> Cells {
    let phase = match text(ns, &["status", "phase"]) {
        "" => "Active",
        p => p,
    };
    vec![name(ns), phase.into(), age(ns, now)]
}

pub(super) const CONFIG_MAP: &[Column] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

pub(super) fn config_map(cm: &Value, now: Timestamp) -> Cells {
    let data = count(cm, &["data"]) + count(cm, &["binaryData"]);
    vec![name(cm), data.into(), age(cm, now)]
}

pub(super) const SECRET: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

pub(super) fn secret(secret: &Value, now: Timestamp) -> Cells {
    let ty = match text(secret, &["type"]) {
        "" => "Opaque",
        t => t,
    };
    vec![
        name(secret),
        ty.into(),
        count(secret, &["data"]).into(),
        age(secret, now),
    ]
}

pub(super) const SERVICE_ACCOUNT: &[Column] = &[
    NAME,
    col("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
    AGE,
];

pub(super) fn service_account(sa: &Value, now: Timestamp) -> Cells {
    vec![name(sa), count(sa, &["secrets"]).into(), age(sa, now)]
}

pub(super) const EVENT: &[Column] = &[
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
    wide("Source", "string", "The component reporting this event."),
    col("Message", "string", "A human-readable description of the status of this operation."),
    wide("First Seen", "string", "The time at which the event was first recorded."),
    wide("Count", "string", "The number of times this event has occurred."),
    Column {
        priority: 1,
        ..NAME
    },
];

pub(super) fn event(ev: &Value, now: Timestamp) -> Cells {
    let mut first = since(&ev["firstTimestamp"], now);
    if ev["firstTimestamp"].as_str().is_none() {
        first = since(&ev["eventTime"], now);
    }
    let mut last = since(&ev["lastTimestamp"], now);
    if ev["lastTimestamp"].as_str().is_none() {
        last = first.clone();
    }
    let mut count = int(ev, &["count"]);
    if ev["series"].is_object() {
        last = since(at(ev, &["series", "lastObservedTime"]), now);
        count = int(ev, &["series", "count"]);
    } else if count == 0 {
        count = 1;
    }
    let kind = text(ev, &["involvedObject", "kind"]).to_lowercase();
    let target = match text(ev, &["involvedObject", "name"]) {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = first_non_empty(ev, &["source", "component"], "reportingComponent");
    let instance = first_non_empty(ev, &["source", "host"], "reportingInstance");
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last.into(),
        text(ev, &["type"]).into(),
        text(ev, &["reason"]).into(),
        target.into(),
        text(ev, &["involvedObject", "fieldPath"]).into(),
        source.into(),
        text(ev, &["message"]).trim().into(),
        first.into(),
        count.into(),
        name(ev),
    ]
}

/// The legacy `source` field, or the events.k8s.io field that replaced it.
fn first_non_empty<'a>(ev: &'a Value, legacy: &[&str], field: &str) -> &'a str {
    match text(ev, legacy) {
        "" => text(ev, &[field]),
        v => v,
    }
}

pub(super) const ENDPOINT_SLICE: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

pub(super) fn endpoint_slice(slice: &Value, now: Timestamp) -> Cells {
    const MAX: usize = 3;
    let port_list = list(slice, &["ports"]);
    let ports: Vec<String> = port_list
        .iter()
        .take(MAX)
        .map(|p| match (&p["port"], p["name"].as_str()) {
            (Value::Number(n), _) => n.to_string(),
            (_, Some(name)) => name.to_string(),
            _ => "*".to_string(),
        })
        .collect();
    let addresses: Vec<&str> = list(slice, &["endpoints"])
        .iter()
        .flat_map(|e| list(e, &["addresses"]))
        .filter_map(Value::as_str)
        .collect();
    let shown = addresses.iter().take(MAX).map(|a| a.to_string()).collect();
    vec![
        name(slice),
        text(slice, &["addressType"]).into(),
        more(ports, port_list.len(), MAX, "<unset>").into(),
        more(shown, addresses.len(), MAX, "<unset>").into(),
        age(slice, now),
    ]
}

pub(super) const LEASE: &[Column] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

pub(super) fn lease(lease: &Value, now: Timestamp) -> Cells {
    vec![
        name(lease),
        text(lease, &["spec", "holderIdentity"]).into(),
        age(lease, now),
    ]
}
