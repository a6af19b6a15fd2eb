//! Service proxy: turns Services and EndpointSlices into load balancing on a node.
//!
//! - [`model`]: the pure service model. Services, EndpointSlices and the Node
//!   become a [`model::ServiceMap`] (one entry per service port, endpoints
//!   already chosen for this node), and [`model::diff`] yields [`model::Changes`].
//! - [`dataplane`]: the [`Dataplane`] trait every backend implements —
//!   `sync(&ServiceMap, &Changes)`, called from one blocking thread, with
//!   `changes.full` meaning "rewrite everything".

pub mod conntrack;
pub mod dataplane;
pub mod ebpf;
pub mod health;
pub mod iptables;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod watch;

pub use dataplane::{Dataplane, DataplaneError, SyncStats};
pub use runner::{run, run_with, Config, RunError};

/// How the proxy programs the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Socket-level and tc load balancing with eBPF programs.
    Ebpf,
    /// kube-proxy compatible iptables chains.
    Iptables,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ebpf" => Ok(Mode::Ebpf),
            "iptables" => Ok(Mode::Iptables),
            other => Err(format!(
                "unknown proxy mode {other:?}: expected ebpf or iptables"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_rejects_unknown() {
        assert_eq!("ebpf".parse::<Mode>(), Ok(Mode::Ebpf));
        assert_eq!("iptables".parse::<Mode>(), Ok(Mode::Iptables));
        assert!("ipvs".parse::<Mode>().unwrap_err().contains("ipvs"));
    }
}
