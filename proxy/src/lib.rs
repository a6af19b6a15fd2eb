//! Service proxy: turns Services and EndpointSlices into load balancing on a node.
//!
//! The service model, the eBPF backend and the iptables backend land here
//! (issues 6 and 7); until then the crate only names its modes.

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
