//! The service proxy embedded in the agent (`skiff agent --proxy-mode`): the
//! same loop as `skiff proxy`, for this node's name and namespace. A proxy
//! that fails is logged and does not stop the agent.

use std::path::PathBuf;

use ipnetwork::IpNetwork;
pub use skiff_proxy::iptables::BackendChoice;
pub use skiff_proxy::Mode;

/// Settings of the embedded proxy.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Data plane (`None`: no proxy).
    pub mode: Option<Mode>,
    /// Pod network(s): ClusterIP traffic from elsewhere is masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// iptables implementation in iptables mode (`--iptables-backend`).
    pub iptables_backend: BackendChoice,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            mode: Some(Mode::Iptables),
            cluster_cidrs: Vec::new(),
            iptables_backend: BackendChoice::Auto,
        }
    }
}

/// The proxy's configuration for node `node_name` programming `netns`.
pub fn config(
    node_name: &str,
    netns: Option<PathBuf>,
    mode: Mode,
    settings: &ProxySettings,
) -> skiff_proxy::Config {
    let mut config = skiff_proxy::Config::new(node_name, mode);
    config.netns = netns;
    config.cluster_cidrs = settings.cluster_cidrs.clone();
    config.iptables_backend = settings.iptables_backend;
    config
}

/// Starts the proxy as a task when `settings.mode` asks for one. It runs for
/// the life of the agent; if it stops with an error, the error is logged and
/// the agent goes on.
pub fn spawn(
    client: kube::Client,
    node_name: &str,
    netns: Option<PathBuf>,
    settings: &ProxySettings,
) -> Option<tokio::task::JoinHandle<()>> {
    let mode = settings.mode?;
    let config = config(node_name, netns, mode, settings);
    Some(tokio::spawn(async move {
        tracing::info!(node = %config.node_name, ?mode, "starting the service proxy");
        match skiff_proxy::run(client, config, std::future::pending()).await {
            Ok(()) => tracing::info!("service proxy stopped"),
            Err(e) => tracing::error!("service proxy failed (the agent keeps running): {e}"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_node_netns_cluster_cidr_and_iptables_backend() {
        let cidr: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let settings = ProxySettings {
            mode: Some(Mode::Iptables),
            cluster_cidrs: vec![cidr],
            iptables_backend: "nft".parse().unwrap(),
        };
        let c = config(
            "n1",
            Some(PathBuf::from("/var/run/netns/n1")),
            Mode::Iptables,
            &settings,
        );
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.mode, Mode::Iptables);
        assert_eq!(
            c.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/n1"))
        );
        assert_eq!(c.cluster_cidrs, vec![cidr]);
        assert_eq!(
            c.iptables_backend,
            BackendChoice::Fixed(skiff_proxy::iptables::Backend::Nft)
        );
        assert!(!c.masquerade_all);
    }

    #[tokio::test]
    async fn no_mode_starts_nothing() {
        let settings = ProxySettings {
            mode: None,
            ..ProxySettings::default()
        };
        // A client that is never used: no proxy task is created.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        assert!(spawn(client, "n1", None, &settings).is_none());
    }
}
