//! Node-local cluster DNS embedded in the agent (`skiff agent
//! --node-local-dns`): [`skiff_dns`] answering on UDP and TCP port 53 of
//! addresses held by a dummy interface (`skiff-dns`; a bridge without ports on
//! kernels built without the dummy driver) in the node's network namespace,
//! as NodeLocal DNSCache does. The same link holds the `kube-dns` Service's
//! ClusterIP when the API marks that Service node-local, so clients that ask
//! 10.96.0.10 are answered on the node too. Pods reach both through their
//! default route to the node bridge: the node delivers them locally.
//!
//! Every socket — the listeners and those forwarding to upstream resolvers —
//! is opened in the node namespace, so the upstreams are whatever the node
//! can reach. A DNS server that fails is logged and started again; it never
//! stops the agent. This module owns only the `skiff-dns` link and its
//! addresses; routes and rules of the node belong to others.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use rtnetlink::{LinkBridge, LinkDummy, LinkUnspec};
use skiff_cni::netlink::{self, NetlinkError};
use skiff_cni::netns::NetnsError;
use skiff_cni::Netns;
use skiff_proxy::model::NODE_LOCAL_LABEL;

/// The dummy interface holding the DNS addresses in the node namespace.
pub const LINK: &str = skiff_proxy::model::NODE_LOCAL_DNS_LINK;

/// errno of a link kind the kernel was built without.
const EOPNOTSUPP: i32 = 95;

/// Longest wait between two starts of a failing DNS server.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Settings of the embedded DNS server.
#[derive(Debug, Clone)]
pub struct NodeDnsSettings {
    /// Addresses answered on port 53 (`--node-local-dns`); empty: no DNS
    /// server. The `kube-dns` ClusterIP is added when the API has one marked
    /// node-local.
    pub addresses: Vec<IpAddr>,
    /// The cluster zone (`--cluster-domain`).
    pub zone: String,
    /// Answer pods' search-path walks in one query (`--dns-autopath`).
    pub autopath: bool,
}

/// Errors setting up the node's DNS addresses.
#[derive(Debug, thiserror::Error)]
pub enum NodeDnsError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("link {LINK} was created in {ns} but cannot be found there")]
    LinkMissing { ns: String },
}

/// Sockets opened inside the node's network namespace.
#[derive(Debug)]
pub struct NodeSockets {
    netns: Arc<Netns>,
}

impl NodeSockets {
    /// Sockets for `netns`.
    pub fn new(netns: Arc<Netns>) -> NodeSockets {
        NodeSockets { netns }
    }

    fn inside<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.netns.run(f).map_err(io::Error::other)?
    }
}

impl skiff_dns::Sockets for NodeSockets {
    fn udp(&self, local: SocketAddr) -> io::Result<std::net::UdpSocket> {
        self.inside(move || std::net::UdpSocket::bind(local))
    }

    fn listen(&self, local: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.inside(move || std::net::TcpListener::bind(local))
    }

    fn tcp(&self, remote: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        self.inside(move || match remote {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })
    }
}

/// Creates the `skiff-dns` dummy link in `netns` (if missing), sets it up
/// and gives it each of `addresses` as a host address.
pub async fn ensure_link(netns: &Netns, addresses: &[IpAddr]) -> Result<(), NodeDnsError> {
    let ns = netns.describe();
    let h = netns.netlink()?;
    let failed = |op: &str, source| NetlinkError {
        op: op.to_string(),
        ns: ns.clone(),
        source,
    };
    let existing = netlink::link_by_name(&h, LINK)
        .await
        .map_err(|e| failed("looking up link skiff-dns", e))?;
    let link = match existing {
        Some(link) => link,
        None => {
            let mut added = h
                .link()
                .add(LinkDummy::new(LINK).up().build())
                .execute()
                .await;
            if matches!(&added, Err(e) if netlink::errno(e) == Some(EOPNOTSUPP)) {
                // Kernels built without the dummy driver: a bridge without
                // ports holds local addresses just as well.
                added = h
                    .link()
                    .add(LinkBridge::new(LINK).up().build())
                    .execute()
                    .await;
            }
            match added {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => return Err(failed("creating link skiff-dns", e).into()),
            }
            netlink::link_by_name(&h, LINK)
                .await
                .map_err(|e| failed("looking up link skiff-dns", e))?
                .ok_or_else(|| NodeDnsError::LinkMissing { ns: ns.clone() })?
        }
    };
    let index = link.header.index;
    if !netlink::is_up(&link) {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| failed("setting link skiff-dns up", e))?;
    }
    for ip in addresses {
        let host = IpNetwork::new(*ip, if ip.is_ipv4() { 32 } else { 128 })
            .expect("a host prefix is valid for its family");
        netlink::add_address(&h, index, host, &ns).await?;
    }
    Ok(())
}

/// Upstream resolvers for the node: the nameservers of `resolv_conf` except
/// loopback ones (in a node namespace they are not the host's resolver) and
/// our own addresses (a forwarding loop).
pub fn upstreams(resolv_conf: &str, ours: &[IpAddr]) -> Vec<SocketAddr> {
    skiff_dns::upstream::from_resolv_conf(resolv_conf)
        .into_iter()
        .filter(|s| !s.ip().is_loopback() && !s.ip().is_unspecified() && !ours.contains(&s.ip()))
        .collect()
}

/// The DNS server's configuration for `settings`, with sockets from `netns`.
pub fn config(
    settings: &NodeDnsSettings,
    netns: Arc<Netns>,
    resolv_conf: &str,
) -> skiff_dns::Config {
    skiff_dns::Config {
        listen: settings
            .addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect(),
        zone: settings.zone.clone(),
        upstreams: Some(upstreams(resolv_conf, &settings.addresses)),
        sockets: Arc::new(NodeSockets::new(netns)),
        autopath: settings.autopath,
        ..skiff_dns::Config::default()
    }
}

/// Starts the DNS server as a task when `settings` has addresses. It runs for
/// the life of the agent, started again with backoff when it fails.
pub fn spawn(
    client: kube::Client,
    netns: Option<PathBuf>,
    settings: &NodeDnsSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    if settings.addresses.is_empty() {
        return None;
    }
    let settings = settings.clone();
    Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match serve(client.clone(), netns.as_deref(), &settings).await {
                Ok(()) => return,
                Err(e) => tracing::error!(
                    "node-local DNS on {:?} failed, retrying in {backoff:?} (the agent keeps running): {e}",
                    settings.addresses
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }))
}

/// The ClusterIP of `kube-system/kube-dns` when the Service is marked as
/// answered on every node (label [`NODE_LOCAL_LABEL`]); the agent then holds
/// that address too, and the service proxy leaves it alone.
async fn kube_dns_ip(client: &kube::Client) -> Option<IpAddr> {
    let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), "kube-system");
    let svc = match api.get_opt("kube-dns").await {
        Ok(svc) => svc?,
        Err(e) => {
            tracing::warn!("cannot read the kube-system/kube-dns Service: {e}");
            return None;
        }
    };
    let labels = svc.metadata.labels.as_ref()?;
    if labels.get(NODE_LOCAL_LABEL).map(String::as_str) != Some("true") {
        return None;
    }
    svc.spec?.cluster_ip?.parse().ok()
}

/// Errors of one run of the embedded server.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Setup(#[from] NodeDnsError),
    #[error(transparent)]
    Dns(#[from] skiff_dns::DnsError),
}

async fn serve(
    client: kube::Client,
    netns: Option<&std::path::Path>,
    settings: &NodeDnsSettings,
) -> Result<(), ServeError> {
    let netns = Arc::new(match netns {
        Some(p) => Netns::open(p).map_err(NodeDnsError::from)?,
        None => Netns::current(),
    });
    let mut settings = settings.clone();
    if let Some(ip) = kube_dns_ip(&client).await {
        if !settings.addresses.contains(&ip) {
            settings.addresses.push(ip);
        }
    }
    ensure_link(&netns, &settings.addresses).await?;
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let config = config(&settings, netns.clone(), &resolv_conf);
    tracing::info!(
        listen = ?config.listen,
        upstreams = ?config.upstreams,
        ns = %netns.describe(),
        "starting node-local DNS"
    );
    skiff_dns::run(client, config, std::future::pending()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_own_nameservers_are_not_upstreams() {
        let ours: Vec<IpAddr> = vec!["169.254.20.10".parse().unwrap()];
        let text = "nameserver 127.0.0.53\nnameserver 169.254.20.10\nnameserver ::1\nnameserver 192.0.2.53\nsearch example.org\n";
        assert_eq!(
            upstreams(text, &ours),
            vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn config_listens_on_every_address_and_never_reads_resolv_conf_itself() {
        let settings = NodeDnsSettings {
            addresses: vec![
                "169.254.20.10".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ],
            zone: "example.local".into(),
            autopath: true,
        };
        let c = config(
            &settings,
            Arc::new(Netns::current()),
            "nameserver 127.0.0.1\n",
        );
        assert_eq!(
            c.listen,
            vec![
                "169.254.20.10:53".parse::<SocketAddr>().unwrap(),
                "10.96.0.10:53".parse().unwrap()
            ]
        );
        assert_eq!(c.zone, "example.local");
        assert!(c.autopath);
        // Only a loopback nameserver: nothing is forwarded, rather than
        // falling back to resolv.conf inside the DNS server.
        assert_eq!(c.upstreams, Some(Vec::new()));
    }

    #[tokio::test]
    async fn no_address_starts_nothing() {
        let settings = NodeDnsSettings {
            addresses: Vec::new(),
            zone: "cluster.local".into(),
            autopath: false,
        };
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        assert!(spawn(client, None, &settings).is_none());
    }
}
