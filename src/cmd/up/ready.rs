//! Waiting for the cluster to come up: the API server answering with the
//! admin kubeconfig it wrote, then every node Ready with its podCIDR.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;

use super::state::UpState;
use super::supervise::{check_children, Supervised};

/// How long each stage may take.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits for the server's kubeconfig and a successful request.
pub async fn wait_for_api(kubeconfig: &Path, children: &mut [Supervised]) -> Result<kube::Client> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no kubeconfig yet");
    loop {
        check_children(children)?;
        if kubeconfig.exists() {
            match client(kubeconfig).await {
                Ok(c) => match c.apiserver_version().await {
                    Ok(_) => return Ok(c),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() > deadline {
            bail!("the API server did not answer in {READY_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Whether `node` is Ready and has its podCIDR.
fn is_ready(node: &Node) -> bool {
    let has_cidr = node
        .spec
        .as_ref()
        .is_some_and(|s| s.pod_cidr.as_ref().is_some_and(|c| !c.is_empty()));
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    has_cidr && ready
}

pub async fn wait_nodes_ready(
    client: &kube::Client,
    state: &UpState,
    children: &mut [Supervised],
) -> Result<()> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        check_children(children)?;
        let nodes = api.list(&ListParams::default()).await?;
        let ready: Vec<&str> = nodes
            .items
            .iter()
            .filter(|n| is_ready(n))
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let missing: Vec<&str> = state
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| !ready.contains(n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nodes not Ready after {READY_TIMEOUT:?}: {}; see the logs in {}",
                missing.join(", "),
                state.data_dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
