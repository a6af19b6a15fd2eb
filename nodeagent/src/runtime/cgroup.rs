//! cgroups of the node's pods. On hybrid hosts runc places containers in the
//! cgroup v1 hierarchies under `skiff-<node>/pod-<uid>/<container>`; the agent
//! additionally moves each container's init into the node's cgroup v2 subtree
//! `<v2>/skiff-<node>/pod-<uid>`, where the socket-LB eBPF programs attach.
//! Only directories under `skiff-<node>` are ever created or removed.

use std::path::{Path, PathBuf};

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file operation failed.
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup layout of one node.
#[derive(Debug, Clone)]
pub struct NodeCgroups {
    /// `skiff-<node>`, relative to each hierarchy's root.
    parent: String,
    /// The cgroup v2 mount (`/sys/fs/cgroup/unified` on hybrid hosts), if any.
    v2: Option<PathBuf>,
    /// The cgroup v1 hierarchy mounts.
    v1: Vec<PathBuf>,
}

impl NodeCgroups {
    /// Reads `/proc/mounts` and creates the node's v2 subtree.
    pub fn detect(node: &str) -> Result<NodeCgroups, CgroupError> {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut v2 = None;
        let mut v1 = Vec::new();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, path, "cgroup2", ..] => v2 = Some(PathBuf::from(path)),
                [_, path, "cgroup", ..] => v1.push(PathBuf::from(path)),
                _ => {}
            }
        }
        let cg = NodeCgroups {
            parent: skiff_proxy::ebpf::node_cgroup(node),
            v2,
            v1,
        };
        if let Some(root) = cg.node_v2() {
            mkdir(&root)?;
        }
        Ok(cg)
    }

    /// The node's cgroup v2 subtree (where eBPF programs attach).
    pub fn node_v2(&self) -> Option<PathBuf> {
        self.v2.as_ref().map(|v2| v2.join(&self.parent))
    }

    /// The OCI `cgroupsPath` of a container.
    pub fn container_path(&self, pod_uid: &str, container_id: &str) -> String {
        format!("/{}/pod-{pod_uid}/{container_id}", self.parent)
    }

    /// Moves `pid` into the pod's v2 cgroup (between `runc create` and `runc start`).
    pub fn enter_v2(&self, pod_uid: &str, pid: i32) -> Result<(), CgroupError> {
        let Some(node) = self.node_v2() else {
            return Ok(());
        };
        // A v1-only (runc) hierarchy on a v2 host is not hybrid: runc did it already.
        if self.v1.is_empty() {
            return Ok(());
        }
        let dir = node.join(format!("pod-{pod_uid}"));
        mkdir(&dir)?;
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Io {
            path: procs,
            source,
        })
    }

    /// The file counting a container's OOM kills (`oom_kill N`): the v1
    /// `memory.oom_control` where runc enforces the memory limit on hybrid
    /// hosts, else the v2 `memory.events`.
    pub fn oom_counter(&self, pod_uid: &str, container_id: &str) -> Option<PathBuf> {
        let rel = format!("pod-{pod_uid}/{container_id}");
        match self.node_v1("memory") {
            Some(node) => Some(node.join(rel).join("memory.oom_control")),
            None => self
                .node_v2()
                .map(|node| node.join(rel).join("memory.events")),
        }
    }

    /// The pod's v1 cgroup directory in `controller` (e.g. `memory`, `cpuacct`).
    pub fn pod_v1(&self, pod_uid: &str, controller: &str) -> Option<PathBuf> {
        self.node_v1(controller)
            .map(|node| node.join(format!("pod-{pod_uid}")))
    }

    /// The node's v1 cgroup directory (`skiff-<node>`) in `controller`.
    pub fn node_v1(&self, controller: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .find(|m| {
                m.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == controller))
            })
            .map(|m| m.join(&self.parent))
    }

    /// Removes the pod's cgroup directories (children first). Directories that
    /// still hold processes stay; the caller retries after killing them.
    pub fn remove_pod(&self, pod_uid: &str) -> Result<(), CgroupError> {
        let pod = format!("pod-{pod_uid}");
        let mut roots: Vec<PathBuf> = self.v1.iter().map(|m| m.join(&self.parent)).collect();
        roots.extend(self.node_v2());
        let mut first_err = None;
        for root in roots {
            let dir = root.join(&pod);
            if let Err(e) = remove_tree(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether any cgroup directory of the pod is left.
    pub fn pod_exists(&self, pod_uid: &str) -> bool {
        let pod = format!("pod-{pod_uid}");
        self.v1
            .iter()
            .map(|m| m.join(&self.parent))
            .chain(self.node_v2())
            .any(|root| root.join(&pod).exists())
    }
}

/// The `oom_kill` count in a `memory.oom_control` / `memory.events` file.
pub fn oom_kills(counter: &Path) -> Option<u64> {
    std::fs::read_to_string(counter)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// rmdir of a cgroup tree, deepest first (cgroup dirs are removed with rmdir, not unlink).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
