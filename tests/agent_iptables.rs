//! The node agent with its embedded proxy in iptables mode and a chosen
//! iptables implementation (`--proxy-mode iptables --iptables-backend nft`):
//! the service rules land in nftables, none in the legacy tables, and a
//! ClusterIP answers from the node through them.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{run_web_backend, wait_for, AgentNode};
use common::{StoreKind, TestServer};

#[test]
fn iptables_backend_nft_writes_nftables_rules() {
    let server = TestServer::start(StoreKind::Redb);
    let name = format!("si{}-nft", std::process::id() % 10_000);
    let node = AgentNode::start_with(
        &server,
        &name,
        &[
            "--proxy-mode",
            "iptables",
            "--iptables-backend",
            "nft",
            "--cluster-cidr",
            "10.244.0.0/16",
        ],
    );
    let cluster_ip = run_web_backend(&server, "nftweb", "ClusterIP", "via-nft");
    // As in tests/agent.rs: the lab node has no default route, so give the
    // service range one onto the node bridge for the OUTPUT DNAT to apply.
    node.netns
        .exec(&["ip", "route", "replace", "10.96.0.0/12", "dev", "skiff0"]);
    let body = wait_for(
        "the ClusterIP answering through the agent's nft rules",
        Duration::from_secs(60),
        || node.http_get(&format!("http://{cluster_ip}:80/")),
    );
    assert_eq!(body.trim(), "via-nft from backend");

    // The rules are nftables rules: nft itself lists the service chains
    // with the ClusterIP, and the legacy tables hold no Kubernetes chain.
    let ruleset = node.netns.exec(&["nft", "list", "table", "ip", "nat"]);
    assert!(
        ruleset.contains("chain KUBE-SERVICES") && ruleset.contains(&cluster_ip),
        "no service rules in nftables:\n{ruleset}"
    );
    let legacy = node.netns.exec(&["iptables-legacy-save", "-t", "nat"]);
    assert!(
        !legacy.contains("KUBE-"),
        "legacy tables hold service rules:\n{legacy}"
    );
    let log = node.log();
    assert!(
        log.contains("chosen with --iptables-backend"),
        "the proxy did not log the chosen implementation:\n{log}"
    );
}
