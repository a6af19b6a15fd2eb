//! `DIR/up.state`: everything `skiff up` created, written as it goes, so that
//! `skiff down` — from another shell, or after `skiff up` crashed — removes
//! exactly that: the recorded processes (by PID), the nodes' runc containers,
//! mounts under DIR, cgroups, bpffs pins and the namespaces.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The file name under the data directory.
const FILE: &str = "up.state";

/// What one `skiff up` created.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpState {
    /// `--data-dir` (absolute).
    pub data_dir: PathBuf,
    /// `--prefix`: every namespace, node and cgroup name starts with it.
    pub prefix: String,
    /// The `skiff up` process.
    pub up_pid: u32,
    /// Its start time (see `processes::start_time`), telling it from a later
    /// process that got the same PID.
    pub up_start_time: u64,
    /// The `skiff server` process, once started.
    pub server_pid: Option<u32>,
    /// The `skiff server` data directory.
    pub server_dir: PathBuf,
    /// The underlay namespace, once its creation was attempted.
    pub underlay_netns: Option<String>,
    /// The nodes, each recorded before anything of it is created.
    pub nodes: Vec<NodeState>,
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeState {
    /// Node name, also the name of its network namespace.
    pub name: String,
    /// The node's underlay address (its InternalIP).
    pub address: Option<IpAddr>,
    /// The agent's `--data-dir` (images, pods, runc root).
    pub data_dir: PathBuf,
    /// The agent process, once started.
    pub agent_pid: Option<u32>,
}

impl UpState {
    /// `DIR/up.state`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Reads the state of `data_dir`; `None` when no cluster is recorded there.
    pub fn load(data_dir: &Path) -> Result<Option<UpState>> {
        let path = UpState::path(data_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a skiff up state file", path.display()))?;
        Ok(Some(state))
    }

    /// Writes the state (to a temporary file renamed over the old one, so a
    /// crash never leaves half a file).
    pub fn save(&self) -> Result<()> {
        let path = UpState::path(&self.data_dir);
        let tmp = path.with_extension("state.tmp");
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Removes the state file (the cluster is gone).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(UpState::path(&self.data_dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing up.state"),
        }
    }

    /// The node named `name`.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = UpState {
            data_dir: dir.path().to_path_buf(),
            prefix: "t".into(),
            up_pid: 42,
            up_start_time: 7,
            server_pid: Some(43),
            server_dir: dir.path().join("server"),
            underlay_netns: Some("t-underlay".into()),
            nodes: vec![NodeState {
                name: "t-node1".into(),
                address: Some("192.168.77.11".parse().unwrap()),
                data_dir: dir.path().join("nodes/t-node1"),
                agent_pid: None,
            }],
        };
        assert!(UpState::load(dir.path()).unwrap().is_none());
        state.save().unwrap();
        let back = UpState::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.nodes[0].name, "t-node1");
        assert_eq!(back.server_pid, Some(43));
        back.remove().unwrap();
        assert!(UpState::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_foreign_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(UpState::path(dir.path()), b"{\"x\": 1}").unwrap();
        let err = UpState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a skiff up state file"), "{err}");
    }
}
