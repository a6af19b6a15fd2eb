//! An IPv6 corner of the lab for the iptables data plane: one node namespace
//! with an IPv6 pod bridge and pod namespaces on it, IPv6 TCP/UDP servers,
//! and the data plane driven in-process from Service/EndpointSlice objects
//! (the test API server hands out IPv4 ClusterIPs only).
//!
//! ```text
//!  <p>-n1   bridge cbr0 fd00:10:244:1::1/64, IPv6 forwarding, bridge-nf-call-ip6tables,
//!           default route to a veth up0 (the "uplink"; its peer up1 stays in the node)
//!   └─ <p>-n1-<pod>  eth0 fd00:10:244:1::<h>, default via fd00:10:244:1::1
//! ```

use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use skiff_proxy::iptables::{Backend, BackendChoice, Family, Iptables, RuleOptions};
use skiff_proxy::model::{self, BuildInput, NodeInfo, ServiceMap};
use skiff_proxy::Dataplane;

use super::sockets::{tcp_server_on, udp_server_on, Server};
use super::{unique, Ns};

/// The pod network of the IPv6 lab.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";

/// A node namespace with an IPv6 pod bridge.
pub struct Node6 {
    /// Node name (the `nodeName` of its endpoints).
    pub name: String,
    /// Its namespace.
    pub ns: Ns,
}

/// A pod on a [`Node6`].
pub struct Pod6 {
    /// Its address.
    pub ip: Ipv6Addr,
    /// Its namespace.
    pub ns: Ns,
}

fn pod_ip(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, host)
}

impl Node6 {
    /// Creates the node `n1` under a unique prefix made from `label`.
    pub fn new(label: &str) -> Node6 {
        let ns = Ns::new(&format!("{}-n1", unique(label)));
        ns.exec(&["ip", "link", "add", "cbr0", "type", "bridge"]);
        ns.exec(&["ip", "link", "set", "cbr0", "up"]);
        // nodad: the addresses are usable at once instead of after DAD.
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", pod_ip(1)),
            "dev",
            "cbr0",
            "nodad",
        ]);
        // Service addresses need a route out of the node to be DNATed at all.
        // Not back out of cbr0: a packet leaving by the interface it came in
        // on makes IPv6 forwarding send the pod a redirect (before the
        // FORWARD hook), and the pod would then look the ClusterIP up on-link.
        ns.exec(&[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ns.exec(&["ip", "link", "set", "up0", "up"]);
        ns.exec(&["ip", "link", "set", "up1", "up"]);
        ns.exec(&["ip", "-6", "route", "add", "default", "dev", "up0"]);
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        // Pod-to-service replies on one bridge must pass ip6tables for the reverse NAT.
        ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1");
        Node6 {
            name: "n1".into(),
            ns,
        }
    }

    /// Adds pod `<node>-<name>` at fd00:10:244:1::<host>.
    pub fn add_pod(&self, name: &str, host: u16) -> Pod6 {
        let ns = Ns::new(&format!("{}-{name}", self.ns.name()));
        let port = format!("p{host}");
        self.ns.veth(&port, &ns, "eth0");
        self.ns
            .exec(&["ip", "link", "set", &port, "master", "cbr0"]);
        let ip = pod_ip(host);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &pod_ip(1).to_string(),
        ]);
        Pod6 { ip, ns }
    }
}

/// Serves TCP on `[::]:port` in `ns`: one reply line per connection.
pub fn tcp6_server(ns: &Ns, port: u16, name: &str) -> Server {
    tcp_server_on(ns, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, name)
}

/// Serves UDP on `[::]:port` in `ns`: one reply per datagram.
pub fn udp6_server(ns: &Ns, port: u16, name: &str) -> Server {
    udp_server_on(ns, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, name)
}

/// One UDP request from a fresh socket in `ns`: the reply's text.
pub fn udp6_request(ns: &Ns, addr: SocketAddr) -> io::Result<String> {
    let socket = ns.run(|| UdpSocket::bind(("::", 0)))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    socket.send_to(b"ping", addr)?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// One TCP request from `ns`: the reply's text.
pub fn tcp6_request(ns: &Ns, addr: SocketAddr) -> io::Result<String> {
    let mut conn =
        ns.run(|| std::net::TcpStream::connect_timeout(&addr, super::sockets::CLIENT_TIMEOUT))?;
    conn.set_read_timeout(Some(super::sockets::CLIENT_TIMEOUT))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

/// An IPv6 single-stack Service in `default`. `ports`: (name, protocol, port).
pub fn service6(name: &str, cluster_ip: &str, ports: &[(&str, &str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| json!({"name": n, "protocol": proto, "port": port}))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ipFamilies": ["IPv6"], "ports": ports},
    })
}

/// An IPv6 EndpointSlice for `service` with ready endpoints on `node`.
pub fn slice6(service: &str, ports: &[(&str, &str, u16)], ips: &[Ipv6Addr], node: &str) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| json!({"name": n, "protocol": proto, "port": port}))
        .collect();
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({
        "metadata": {"name": format!("{service}-v6"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv6",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// The service map the proxy on `node` builds from these objects.
pub fn service_map(node: &str, services: &[Value], slices: &[Value]) -> ServiceMap {
    let services: Vec<Service> = services
        .iter()
        .map(|v| serde_json::from_value(v.clone()).expect("Service"))
        .collect();
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|v| serde_json::from_value(v.clone()).expect("EndpointSlice"))
        .collect();
    let node = NodeInfo {
        name: node.into(),
        ..NodeInfo::default()
    };
    model::build(&BuildInput {
        services: services.iter().collect(),
        slices: slices.iter().collect(),
        node: &node,
    })
}

/// The IPv6 iptables data plane of `node`, removed on drop.
pub struct Proxy6 {
    dp: Iptables,
    applied: ServiceMap,
}

impl Proxy6 {
    /// An `ip6tables` data plane for `node` with `choice` (`auto` resolved as the proxy does).
    pub fn new(node: &Node6, choice: BackendChoice) -> Proxy6 {
        let netns = node.ns.netns();
        let (backend, _) = choice.resolve(&netns).expect("resolve iptables backend");
        let options = RuleOptions {
            cluster_cidrs: vec![CLUSTER_CIDR6.parse().expect("CIDR")],
            masquerade_all: false,
        };
        Proxy6 {
            dp: Iptables::new(netns, options, vec![Family::V6], backend),
            applied: ServiceMap::default(),
        }
    }

    /// The implementation in use.
    pub fn backend(&self) -> Backend {
        self.dp.backend()
    }

    /// Syncs `map` the way the runner does: full the first time, then partial.
    pub fn sync(&mut self, map: ServiceMap) {
        let mut changes = model::diff(&self.applied, &map);
        if self.applied.ports.is_empty() {
            changes.full = true;
        }
        self.dp.sync(&map, &changes).expect("ip6tables sync");
        self.applied = map;
    }
}

impl Drop for Proxy6 {
    fn drop(&mut self) {
        let _ = self.dp.cleanup();
    }
}
