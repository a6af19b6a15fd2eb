//! Columns and cells of the policy-like kinds: RBAC, networking, disruption
//! budgets, priority classes, quotas, limit ranges and storage.

use jiff::Timestamp;
use serde_json::Value;

use super::columns::{col, wide, AGE, NAME};
use super::{age, at, format_label_selector, list, name, scalar, text, Cells, Column};

const CREATED_AT: Column = Column {
    name: "Created At",
    ty: "date",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
};

/// NAME, CREATED AT: roles, cluster roles and limit ranges.
pub(super) const CREATED: &[Column] = &[NAME, CREATED_AT];

pub(super) fn created(obj: &Value, _now: Timestamp) -> Cells {
    vec![
        name(obj),
        at(obj, &["metadata", "creationTimestamp"]).clone(),
    ]
}

pub(super) const BINDING: &[Column] = &[
    NAME,
    col(
        "Role",
        "string",
        "RoleRef is the reference to the role the binding grants.",
    ),
    AGE,
    wide("Users", "string", "Users in the binding"),
    wide("Groups", "string", "Groups in the binding"),
    wide(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the binding",
    ),
];

pub(super) fn binding(obj: &Value, now: Timestamp) -> Cells {
    let role = format!(
        "{}/{}",
        text(obj, &["roleRef", "kind"]),
        text(obj, &["roleRef", "name"])
    );
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in list(obj, &["subjects"]) {
        let subject_name = text(s, &["name"]);
        match text(s, &["kind"]) {
            "User" => users.push(subject_name.to_string()),
            "Group" => groups.push(subject_name.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{subject_name}", text(s, &["namespace"]))),
            _ => {}
        }
    }
    vec![
        name(obj),
        role.into(),
        age(obj, now),
        users.join(", ").into(),
        groups.join(", ").into(),
        sas.join(", ").into(),
    ]
}

pub(super) const INGRESS: &[Column] = &[
    NAME,
    col("Class", "string", "The name of the IngressClass resource."),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];

pub(super) fn ingress(obj: &Value, now: Timestamp) -> Cells {
    let class = match text(obj, &["spec", "ingressClassName"]) {
        "" => "<none>",
        c => c,
    };
    let hosts: Vec<&str> = list(obj, &["spec", "rules"])
        .iter()
        .map(|r| text(r, &["host"]))
        .filter(|h| !h.is_empty())
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else {
        hosts.join(",")
    };
    let address: Vec<&str> = list(obj, &["status", "loadBalancer", "ingress"])
        .iter()
        .map(|i| match text(i, &["ip"]) {
            "" => text(i, &["hostname"]),
            ip => ip,
        })
        .collect();
    let ports = if list(obj, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(obj),
        class.into(),
        hosts.into(),
        address.join(",").into(),
        ports.into(),
        age(obj, now),
    ]
}

pub(super) const INGRESS_CLASS: &[Column] = &[
    NAME,
    col(
        "Controller",
        "string",
        "Controller that is responsible for handling this class",
    ),
    col(
        "Parameters",
        "string",
        "A reference to a resource with additional parameters",
    ),
    AGE,
];

pub(super) fn ingress_class(obj: &Value, now: Timestamp) -> Cells {
    let params = at(obj, &["spec", "parameters"]);
    let params = if params.is_object() {
        let group = match text(params, &["apiGroup"]) {
            "" => String::new(),
            g => format!(".{g}"),
        };
        format!(
            "{}{group}/{}",
            text(params, &["kind"]),
            text(params, &["name"])
        )
    } else {
        "<none>".into()
    };
    vec![
        name(obj),
        text(obj, &["spec", "controller"]).into(),
        params.into(),
        age(obj, now),
    ]
}

pub(super) const NETWORK_POLICY: &[Column] = &[
    NAME,
    col(
        "Pod-Selector",
        "string",
        "Selector of the pods the policy applies to",
    ),
    AGE,
];

pub(super) fn network_policy(obj: &Value, now: Timestamp) -> Cells {
    vec![
        name(obj),
        format_label_selector(at(obj, &["spec", "podSelector"])).into(),
        age(obj, now),
    ]
}

pub(super) const PDB: &[Column] = &[
    NAME,
    col(
        "Min Available",
        "string",
        "The minimum number of pods that must be available",
    ),
    col(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable",
    ),
    col(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time",
    ),
    AGE,
];

fn or_na(v: &Value) -> Value {
    match scalar(v) {
        s if s.is_empty() => "N/A".into(),
        s => s.into(),
    }
}

pub(super) fn pdb(obj: &Value, now: Timestamp) -> Cells {
    vec![
        name(obj),
        or_na(at(obj, &["spec", "minAvailable"])),
        or_na(at(obj, &["spec", "maxUnavailable"])),
        at(obj, &["status", "disruptionsAllowed"])
            .as_i64()
            .unwrap_or(0)
            .into(),
        age(obj, now),
    ]
}

pub(super) const PRIORITY_CLASS: &[Column] = &[
    NAME,
    col("Value", "integer", "The value of this priority class."),
    col(
        "Global-Default",
        "boolean",
        "Whether this is the global default priority class.",
    ),
    AGE,
    col(
        "PreemptionPolicy",
        "string",
        "The policy for preempting pods with lower priority.",
    ),
];

pub(super) fn priority_class(obj: &Value, now: Timestamp) -> Cells {
    vec![
        name(obj),
        at(obj, &["value"]).as_i64().unwrap_or(0).into(),
        at(obj, &["globalDefault"])
            .as_bool()
            .unwrap_or(false)
            .into(),
        age(obj, now),
        text(obj, &["preemptionPolicy"]).into(),
    ]
}

pub(super) const RESOURCE_QUOTA: &[Column] = &[
    NAME,
    AGE,
    col("Request", "string", "Request represents a minimum amount of cpu/memory that a container may consume."),
    col("Limit", "string", "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
];

pub(super) fn resource_quota(obj: &Value, now: Timestamp) -> Cells {
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    if let Some(hard) = at(obj, &["spec", "hard"]).as_object() {
        for (resource, quantity) in hard {
            let used = match scalar(at(obj, &["status", "used", resource])) {
                u if u.is_empty() => "0".to_string(),
                u => u,
            };
            let cell = format!("{resource}: {used}/{}", scalar(quantity));
            if resource.starts_with("limits.") {
                limits.push(cell);
            } else {
                requests.push(cell);
            }
        }
    }
    vec![
        name(obj),
        age(obj, now),
        requests.join(", ").into(),
        limits.join(", ").into(),
    ]
}

fn access_modes(modes: &[Value]) -> String {
    let short: Vec<&str> = modes
        .iter()
        .map(|m| match m.as_str().unwrap_or("") {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    short.join(",")
}

pub(super) const PVC: &[Column] = &[
    NAME,
    col("Status", "string", "Phase of the claim"),
    col(
        "Volume",
        "string",
        "The binding reference to the PersistentVolume backing this claim.",
    ),
    col(
        "Capacity",
        "string",
        "Actual resources of the underlying volume.",
    ),
    col(
        "Access Modes",
        "string",
        "AccessModes contains the desired access modes the volume should have.",
    ),
    col(
        "StorageClass",
        "string",
        "Name of the StorageClass required by the claim.",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a raw block device.",
    ),
];

pub(super) fn pvc(obj: &Value, now: Timestamp) -> Cells {
    vec![
        name(obj),
        text(obj, &["status", "phase"]).into(),
        text(obj, &["spec", "volumeName"]).into(),
        scalar(at(obj, &["status", "capacity", "storage"])).into(),
        access_modes(list(obj, &["status", "accessModes"])).into(),
        text(obj, &["spec", "storageClassName"]).into(),
        age(obj, now),
        text(obj, &["spec", "volumeMode"]).into(),
    ]
}

pub(super) const PV: &[Column] = &[
    NAME,
    col("Capacity", "string", "Capacity of the volume."),
    col(
        "Access Modes",
        "string",
        "AccessModes contains all ways the volume can be mounted.",
    ),
    col(
        "Reclaim Policy",
        "string",
        "What happens to the volume when released from its claim.",
    ),
    col("Status", "string", "Phase of the volume."),
    col("Claim", "string", "The claim bound to the volume."),
    col(
        "StorageClass",
        "string",
        "Name of the StorageClass the volume belongs to.",
    ),
    col("Reason", "string", "Why the volume is in its phase."),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "Whether the volume is a filesystem or a raw block device.",
    ),
];

pub(super) fn pv(obj: &Value, now: Timestamp) -> Cells {
    let claim = at(obj, &["spec", "claimRef"]);
    let claim = if claim.is_object() {
        format!("{}/{}", text(claim, &["namespace"]), text(claim, &["name"]))
    } else {
        String::new()
    };
    vec![
        name(obj),
        scalar(at(obj, &["spec", "capacity", "storage"])).into(),
        access_modes(list(obj, &["spec", "accessModes"])).into(),
        text(obj, &["spec", "persistentVolumeReclaimPolicy"]).into(),
        text(obj, &["status", "phase"]).into(),
        claim.into(),
        text(obj, &["spec", "storageClassName"]).into(),
        text(obj, &["status", "reason"]).into(),
        age(obj, now),
        text(obj, &["spec", "volumeMode"]).into(),
    ]
}

pub(super) const STORAGE_CLASS: &[Column] = &[
    NAME,
    col(
        "Provisioner",
        "string",
        "Provisioner indicates the type of the provisioner.",
    ),
    col(
        "ReclaimPolicy",
        "string",
        "Dynamically provisioned volumes get this reclaim policy.",
    ),
    col(
        "VolumeBindingMode",
        "string",
        "When volumes are provisioned and bound.",
    ),
    col(
        "AllowVolumeExpansion",
        "string",
        "Whether the class allows volume expansion.",
    ),
    AGE,
];

pub(super) fn storage_class(obj: &Value, now: Timestamp) -> Cells {
    let default = text(
        obj,
        &[
            "metadata",
            "annotations",
            "storageclass.kubernetes.io/is-default-class",
        ],
    ) == "true";
    let shown = if default {
        format!("{} (default)", text(obj, &["metadata", "name"]))
    } else {
        text(obj, &["metadata", "name"]).to_string()
    };
    vec![
        shown.into(),
        text(obj, &["provisioner"]).into(),
        text(obj, &["reclaimPolicy"]).into(),
        text(obj, &["volumeBindingMode"]).into(),
        at(obj, &["allowVolumeExpansion"])
            .as_bool()
            .unwrap_or(false)
            .to_string()
            .into(),
        age(obj, now),
    ]
}
