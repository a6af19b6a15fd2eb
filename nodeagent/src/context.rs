//! What every pod worker shares: the API client, the node's runtime pieces
//! and the directory layout under `--data-dir`.

use std::net::IpAddr;
use std::path::PathBuf;

use kube::Client;
use skiff_cni::{NetConf, Netns};

use crate::image::ImageStore;
use crate::runtime::cgroup::NodeCgroups;
use crate::runtime::runc::Runc;
use crate::sandbox::DnsSettings;

/// Shared state of the agent.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub runc: Runc,
    pub cgroups: NodeCgroups,
    pub images: ImageStore,
    /// The node's network namespace; `None` = the agent's own.
    pub node_netns: Option<PathBuf>,
    pub netconf: NetConf,
    pub dns: DnsSettings,
    pub host_ip: IpAddr,
    /// Where pod and container events go.
    pub events: crate::events::Recorder,
    /// argv prefix that runs the shim (`skiff agent`); shim flags are appended.
    pub shim_command: Vec<String>,
}

impl Ctx {
    /// `<data-dir>/pods/<uid>`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }

    /// `<data-dir>/logs`.
    pub fn log_root(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// A handle on the node's network namespace.
    pub fn node_netns(&self) -> Result<Netns, skiff_cni::netns::NetnsError> {
        match &self.node_netns {
            Some(p) => Netns::open(p),
            None => Ok(Netns::current()),
        }
    }
}
