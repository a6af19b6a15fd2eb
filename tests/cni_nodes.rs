//! Pods on two nodes reach each other over host-gw and over VXLAN. The nodes
//! are namespaces joined through an "underlay" namespace holding a bridge;
//! the node-to-node routes come from the library API the node agent uses
//! ([`HostGw`], [`Vxlan`]), and node1's pod is attached in-process with
//! [`skiff_cni::add`] while node2's goes through the plugin binary.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::net::IpAddr;

use cni_support::*;
use serde_json::json;
use skiff_cni::{Attachment, HostGw, NetConf, RemoteNode, Vxlan, VxlanConfig};

struct Node {
    ns: NetnsGuard,
    pod: NetnsGuard,
    ips: Vec<IpAddr>,
    cidrs: Vec<skiff_cni::ipnetwork::IpNetwork>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Joins `node` to the underlay bridge as `192.168.90.<n>` / `fd00:90::<n>`.
fn wire(under: &NetnsGuard, node: &NetnsGuard, n: u8) {
    let port = format!("n{n}");
    under.exec(&[
        "ip",
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        node.name(),
    ]);
    under.exec(&["ip", "link", "set", &port, "master", "ul", "up"]);
    node.exec(&[
        "ip",
        "addr",
        "add",
        &format!("192.168.90.{n}/24"),
        "dev",
        "ul0",
    ]);
    node.exec(&[
        "ip",
        "addr",
        "add",
        &format!("fd00:90::{n}/64"),
        "dev",
        "ul0",
        "nodad",
    ]);
    node.exec(&["ip", "link", "set", "ul0", "up"]);
}

fn remote(n: &Node, name: &str, mac: Option<[u8; 6]>) -> RemoteNode {
    RemoteNode {
        name: name.into(),
        node_ips: n.ips.clone(),
        pod_cidrs: n.cidrs.clone(),
        vtep_mac: mac,
    }
}

#[test]
fn pods_on_two_nodes_talk_over_host_gw_and_vxlan() {
    let p = unique("nodes");
    let under = NetnsGuard::new(&format!("{p}-under"));
    under.exec(&["ip", "link", "add", "ul", "type", "bridge"]);
    under.exec(&["ip", "link", "set", "ul", "up"]);
    let data = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for n in 1..=2u8 {
        let node = Node {
            ns: NetnsGuard::new(&format!("{p}-node{n}")),
            pod: NetnsGuard::new(&format!("{p}-pod{n}")),
            ips: vec![
                format!("192.168.90.{n}").parse().unwrap(),
                format!("fd00:90::{n}").parse().unwrap(),
            ],
            cidrs: vec![
                format!("10.86.{n}.0/24").parse().unwrap(),
                format!("fd00:86:{n}::/64").parse().unwrap(),
            ],
        };
        wire(&under, &node.ns, n);
        nodes.push(node);
    }
    let conf = |n: usize| {
        let mut c = skiff_conf(
            "1.1.0",
            "multi",
            "skiff0",
            &[
                &nodes[n].cidrs[0].to_string(),
                &nodes[n].cidrs[1].to_string(),
            ],
            &data.path().join(format!("node{n}")),
        );
        c["ipMasq"] = json!(true);
        c["clusterCIDRs"] = json!(["10.86.0.0/16", "fd00:86::/48"]);
        c.to_string()
    };

    // node1: the in-process API, as the node agent calls it.
    let rt = rt();
    let conf1 = NetConf::parse(conf(0).as_bytes()).unwrap();
    let att = Attachment {
        container_id: "pod1".into(),
        ifname: "eth0".into(),
        netns: Some(nodes[0].pod.path()),
        ..Attachment::default()
    };
    let r1 = rt
        .block_on(skiff_cni::add(&conf1, &att, &nodes[0].ns.netns()))
        .unwrap();
    assert_eq!(r1.ips.len(), 2);
    // node2: the plugin binary inside the node namespace.
    let r2 = Invocation::skiff("ADD", "pod2", Some(&nodes[1].pod))
        .run_in(&nodes[1].ns, &conf(1))
        .ok()
        .json();
    let (to_v4, to_v6) = (result_ip(&r2, true), result_ip(&r2, false));
    let pod1 = &nodes[0].pod;
    assert!(
        pod1.unreachable(&to_v4),
        "pods must not reach each other before nodes are connected"
    );

    // host-gw: a route per remote pod CIDR via the remote node's address.
    rt.block_on(async {
        let gw1 = HostGw::new(&nodes[0].ns.netns()).unwrap();
        let gw2 = HostGw::new(&nodes[1].ns.netns()).unwrap();
        gw1.add_node(&remote(&nodes[1], "node2", None))
            .await
            .unwrap();
        gw2.sync(&[remote(&nodes[0], "node1", None)]).await.unwrap();
    });
    let routes = nodes[0].ns.exec(&["ip", "route"]);
    assert!(
        routes.contains("10.86.2.0/24 via 192.168.90.2 dev ul0 proto 83"),
        "{routes}"
    );
    assert!(
        pod1.ping(&to_v4),
        "host-gw: pod1 cannot reach pod2 over IPv4"
    );
    assert!(
        pod1.ping(&to_v6),
        "host-gw: pod1 cannot reach pod2 over IPv6"
    );
    rt.block_on(async {
        HostGw::new(&nodes[0].ns.netns())
            .unwrap()
            .sync(&[])
            .await
            .unwrap();
        HostGw::new(&nodes[1].ns.netns())
            .unwrap()
            .remove_node(&remote(&nodes[0], "node1", None))
            .await
            .unwrap();
    });
    assert!(!nodes[0].ns.exec(&["ip", "route"]).contains("proto 83"));
    assert!(
        pod1.unreachable(&to_v4),
        "routes removed, traffic must stop"
    );

    // VXLAN: one device per node; route, neighbour and FDB entry per remote node.
    rt.block_on(async {
        let mut devs = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut cfg = VxlanConfig::new(
                format!("192.168.90.{}", i + 1).parse().unwrap(),
                n.cidrs.clone(),
            );
            cfg.underlay = Some("ul0".into());
            devs.push(Vxlan::ensure(&n.ns.netns(), &cfg).await.unwrap());
        }
        devs[0]
            .add_node(&remote(&nodes[1], "node2", Some(devs[1].mac())))
            .await
            .unwrap();
        devs[1]
            .add_node(&remote(&nodes[0], "node1", Some(devs[0].mac())))
            .await
            .unwrap();
    });
    let fdb = nodes[0]
        .ns
        .exec(&["bridge", "fdb", "show", "dev", "skiff.vxlan"]);
    assert!(fdb.contains("dst 192.168.90.2"), "{fdb}");
    assert!(nodes[0]
        .ns
        .exec(&["ip", "neigh", "show", "dev", "skiff.vxlan"])
        .contains("10.86.2.0"));
    assert!(pod1.ping(&to_v4), "vxlan: pod1 cannot reach pod2 over IPv4");
    assert!(pod1.ping(&to_v6), "vxlan: pod1 cannot reach pod2 over IPv6");
    // The pod→pod traffic stayed inside the cluster CIDR: no masquerading.
    let reply = nodes[1].pod.exec(&["ip", "neigh"]);
    assert!(!reply.contains("192.168.90."), "{reply}");
    rt.block_on(async {
        let mut cfg = VxlanConfig::new("192.168.90.1".parse().unwrap(), nodes[0].cidrs.clone());
        cfg.underlay = Some("ul0".into());
        let dev = Vxlan::ensure(&nodes[0].ns.netns(), &cfg).await.unwrap();
        dev.remove_node(&remote(&nodes[1], "node2", None))
            .await
            .unwrap();
        assert!(
            pod1.unreachable(&to_v4),
            "vxlan entries removed, traffic must stop"
        );
        dev.delete().await.unwrap();
    });
    assert!(!nodes[0].ns.links().contains(&"skiff.vxlan".to_string()));

    // Pods leave: the in-process DEL on node1, the binary on node2.
    rt.block_on(skiff_cni::del(&conf1, &att, &nodes[0].ns.netns()))
        .unwrap();
    Invocation::skiff("DEL", "pod2", Some(&nodes[1].pod))
        .run_in(&nodes[1].ns, &conf(1))
        .ok();
    assert_eq!(pod1.links(), vec!["lo"]);
    assert!(!nodes[0].ns.nat_rules().contains("skiff/"));
}

/// Joins `node` to the underlay bridge with only an IPv6 address, `fd00:91::<n>`.
fn wire_v6_only(under: &NetnsGuard, node: &NetnsGuard, n: u8) {
    let port = format!("n{n}");
    under.exec(&[
        "ip",
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        node.name(),
    ]);
    under.exec(&["ip", "link", "set", &port, "master", "ul", "up"]);
    node.exec(&[
        "ip",
        "addr",
        "add",
        &format!("fd00:91::{n}/64"),
        "dev",
        "ul0",
        "nodad",
    ]);
    node.exec(&["ip", "link", "set", "ul0", "up"]);
}

#[test]
fn pods_talk_over_vxlan_with_an_ipv6_underlay() {
    let p = unique("vx6");
    let under = NetnsGuard::new(&format!("{p}-under"));
    under.exec(&["ip", "link", "add", "ul", "type", "bridge"]);
    under.exec(&["ip", "link", "set", "ul", "up"]);
    let data = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for n in 1..=2u8 {
        let node = Node {
            ns: NetnsGuard::new(&format!("{p}-node{n}")),
            pod: NetnsGuard::new(&format!("{p}-pod{n}")),
            ips: vec![format!("fd00:91::{n}").parse().unwrap()],
            cidrs: vec![
                format!("10.87.{n}.0/24").parse().unwrap(),
                format!("fd00:87:{n}::/64").parse().unwrap(),
            ],
        };
        wire_v6_only(&under, &node.ns, n);
        nodes.push(node);
    }
    let conf = |n: usize| {
        let cidrs = [nodes[n].cidrs[0].to_string(), nodes[n].cidrs[1].to_string()];
        skiff_conf(
            "1.1.0",
            "vx6",
            "skiff0",
            &[&cidrs[0], &cidrs[1]],
            &data.path().join(format!("node{n}")),
        )
        .to_string()
    };
    let mut results = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let r = Invocation::skiff("ADD", &format!("pod{i}"), Some(&n.pod))
            .run_in(&n.ns, &conf(i))
            .ok()
            .json();
        results.push(r);
    }
    let (to_v4, to_v6) = (result_ip(&results[1], true), result_ip(&results[1], false));
    let pod1 = &nodes[0].pod;
    assert!(pod1.unreachable(&to_v4), "nodes are not connected yet");

    let rt = rt();
    let devs: Vec<Vxlan> = rt.block_on(async {
        let mut devs = Vec::new();
        for n in &nodes {
            let mut cfg = VxlanConfig::new(n.ips[0], n.cidrs.clone());
            cfg.underlay = Some("ul0".into());
            devs.push(Vxlan::ensure(&n.ns.netns(), &cfg).await.unwrap());
        }
        for (i, j) in [(0, 1), (1, 0)] {
            let peer = remote(&nodes[j], &format!("node{}", j + 1), Some(devs[j].mac()));
            devs[i].add_node(&peer).await.unwrap();
        }
        devs
    });
    let link = nodes[0]
        .ns
        .exec(&["ip", "-d", "link", "show", "skiff.vxlan"]);
    assert!(link.contains("local fd00:91::1"), "{link}");
    let fdb = nodes[0]
        .ns
        .exec(&["bridge", "fdb", "show", "dev", "skiff.vxlan"]);
    assert!(fdb.contains("dst fd00:91::2"), "{fdb}");
    // The underlay has no IPv4 at all, so these packets crossed it in IPv6.
    assert!(
        pod1.ping(&to_v4),
        "vxlan/IPv6: pod1 cannot reach pod2 over IPv4"
    );
    assert!(
        pod1.ping(&to_v6),
        "vxlan/IPv6: pod1 cannot reach pod2 over IPv6"
    );

    rt.block_on(async {
        // A node with only an IPv4 address cannot be reached over this underlay.
        let v4_only = RemoteNode {
            name: "node9".into(),
            node_ips: vec!["192.168.91.9".parse().unwrap()],
            pod_cidrs: vec!["10.87.9.0/24".parse().unwrap()],
            vtep_mac: Some([0x0a, 0, 0, 0, 0, 9]),
        };
        let err = devs[0].add_node(&v4_only).await.unwrap_err().to_string();
        assert!(err.contains("node9 has no IPv6 node address"), "{err}");

        let peer = remote(&nodes[1], "node2", Some(devs[1].mac()));
        devs[0].remove_node(&peer).await.unwrap();
    });
    let fdb = nodes[0]
        .ns
        .exec(&["bridge", "fdb", "show", "dev", "skiff.vxlan"]);
    assert!(!fdb.contains("fd00:91::2"), "{fdb}");
    assert!(
        pod1.unreachable(&to_v4),
        "vxlan entries removed, traffic must stop"
    );
    rt.block_on(async {
        for d in devs {
            d.delete().await.unwrap();
        }
    });
    for (i, n) in nodes.iter().enumerate() {
        Invocation::skiff("DEL", &format!("pod{i}"), Some(&n.pod))
            .run_in(&n.ns, &conf(i))
            .ok();
        assert_eq!(n.pod.links(), vec!["lo"]);
        assert!(!n.ns.links().contains(&"skiff.vxlan".to_string()));
    }
}
