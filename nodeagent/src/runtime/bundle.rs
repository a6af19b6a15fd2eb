//! OCI runtime bundles: the `config.json` runc runs a container from. The
//! container joins the pod sandbox's network, IPC and UTS namespaces by path
//! (no pause process) and gets its own mount, PID and cgroup namespaces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

/// The capability set containers get by default (containerd's, which the
/// kubelet uses unless securityContext says otherwise).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The assembled spec does not match the OCI schema (a bug in the agent).
    #[error("the OCI runtime spec for container {id} is invalid: {source}")]
    Spec {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    /// Writing config.json failed.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Everything runc needs to know about one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerPlan {
    /// runc container ID.
    pub id: String,
    /// Merged rootfs (overlay) path.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub mounts: Vec<BindMount>,
    /// Sandbox namespaces (bind-mounted ns files).
    pub netns: PathBuf,
    pub ipcns: PathBuf,
    pub utsns: PathBuf,
    pub cgroups_path: String,
    pub annotations: BTreeMap<String, String>,
    /// memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in millicores (→ CFS quota).
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (→ shares).
    pub cpu_request_millis: Option<i64>,
}

fn capabilities(plan: &ContainerPlan) -> Vec<String> {
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let drop: Vec<String> = plan.drop_capabilities.iter().map(|c| norm(c)).collect();
    let all_dropped = drop.iter().any(|c| c == "CAP_ALL");
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !all_dropped && !drop.contains(c))
        .collect();
    for c in &plan.add_capabilities {
        let c = norm(c);
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// The OCI spec of `plan`.
pub fn spec(plan: &ContainerPlan) -> Result<Spec, BundleError> {
    let caps = capabilities(plan);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &plan.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.readonly { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": options,
        }));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = plan.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(req) = plan.cpu_request_millis {
        // The kubelet's conversion: 1 CPU = 1024 shares, at least 2.
        cpu.insert("shares".into(), json!((req * 1024 / 1000).max(2)));
    }
    if let Some(limit) = plan.cpu_limit_millis {
        cpu.insert("quota".into(), json!((limit * 100).max(1000)));
        cpu.insert("period".into(), json!(100_000));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    let masked: Vec<&str> = if plan.privileged {
        vec![]
    } else {
        vec![
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
        ]
    };
    let readonly: Vec<&str> = if plan.privileged {
        vec![]
    } else {
        vec![
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]
    };
    let value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": plan.uid, "gid": plan.gid, "additionalGids": plan.additional_gids},
            "args": plan.args,
            "env": plan.env,
            "cwd": if plan.cwd.is_empty() { "/" } else { plan.cwd.as_str() },
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": !plan.privileged,
        },
        "root": {"path": plan.rootfs, "readonly": plan.readonly_rootfs},
        "mounts": mounts,
        "annotations": plan.annotations,
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "mount"},
                {"type": "cgroup"},
                {"type": "network", "path": plan.netns},
                {"type": "ipc", "path": plan.ipcns},
                {"type": "uts", "path": plan.utsns},
            ],
            "cgroupsPath": plan.cgroups_path,
            "resources": resources,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    serde_json::from_value(value).map_err(|source| BundleError::Spec {
        id: plan.id.clone(),
        source,
    })
}

/// Writes `<dir>/config.json` for `plan`.
pub fn write(dir: &Path, plan: &ContainerPlan) -> Result<(), BundleError> {
    let path = dir.join("config.json");
    spec(plan)?
        .save(&path)
        .map_err(|source| BundleError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_joins_sandbox_namespaces_and_applies_limits() {
        let plan = ContainerPlan {
            id: "c1".into(),
            rootfs: "/r".into(),
            args: vec!["sh".into()],
            netns: "/ns/net".into(),
            ipcns: "/ns/ipc".into(),
            utsns: "/ns/uts".into(),
            memory_limit: Some(64 << 20),
            cpu_limit_millis: Some(500),
            drop_capabilities: vec!["NET_RAW".into()],
            add_capabilities: vec!["NET_ADMIN".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(spec(&plan).unwrap()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/ns/net"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_NET_ADMIN"));
        assert!(!caps.iter().any(|c| c == "CAP_NET_RAW"));
    }
}
