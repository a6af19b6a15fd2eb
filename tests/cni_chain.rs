//! skiff-cni as the first plugin of a conflist followed by the reference
//! `portmap`, `bandwidth` and `tuning` plugins (Debian's
//! containernetworking-plugins), driven the way libcni does it: `name` and
//! `cniVersion` copied into each plugin, `runtimeConfig` from capabilities,
//! `prevResult` chained on ADD and the ADD result passed to CHECK and DEL.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use cni_support::*;
use serde_json::{json, Map, Value};

struct Chain<'a> {
    list: Value,
    runtime: Value,
    node: &'a NetnsGuard,
    pod: &'a NetnsGuard,
    cid: &'a str,
}

impl Chain<'_> {
    fn plugin_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut c = self.list["plugins"][i].clone();
        c["name"] = self.list["name"].clone();
        c["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = c.get("capabilities").and_then(Value::as_object) {
            let rc: Map<String, Value> = caps
                .iter()
                .filter(|(k, on)| {
                    on.as_bool() == Some(true) && self.runtime.get(k.as_str()).is_some()
                })
                .map(|(k, _)| (k.clone(), self.runtime[k.as_str()].clone()))
                .collect();
            if !rc.is_empty() {
                c["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    fn run(&self, i: usize, command: &str, prev: Option<&Value>) -> Run {
        let conf = self.plugin_conf(i, prev);
        let ty = conf["type"].as_str().unwrap().to_string();
        let mut inv = Invocation::skiff(command, self.cid, Some(self.pod));
        if ty != "skiff" {
            inv.bin = PathBuf::from(REF_CNI_DIR).join(&ty);
        }
        let r = inv.run_in(self.node, &conf.to_string());
        assert_eq!(r.status, Some(0), "{ty} {command} failed: {r:?}");
        r
    }

    fn plugins(&self) -> usize {
        self.list["plugins"].as_array().unwrap().len()
    }

    fn add(&self) -> Value {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins() {
            prev = Some(self.run(i, "ADD", prev.as_ref()).json());
        }
        prev.unwrap()
    }

    /// CHECK in order, leaving out plugin types in `skip`.
    fn check(&self, result: &Value, skip: &[&str]) {
        for i in 0..self.plugins() {
            if !skip.contains(&self.list["plugins"][i]["type"].as_str().unwrap_or("")) {
                self.run(i, "CHECK", Some(result));
            }
        }
    }

    fn del(&self, result: &Value) {
        for i in (0..self.plugins()).rev() {
            self.run(i, "DEL", Some(result));
        }
    }
}

#[test]
fn first_in_a_chain_with_portmap_bandwidth_and_tuning() {
    let p = unique("chain");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let ext = NetnsGuard::new(&format!("{p}-ext"));
    node.exec(&[
        "ip",
        "link",
        "add",
        "ext0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ext.name(),
    ]);
    node.exec(&["ip", "addr", "add", "192.168.91.1/24", "dev", "ext0"]);
    node.exec(&["ip", "link", "set", "ext0", "up"]);
    ext.exec(&["ip", "addr", "add", "192.168.91.2/24", "dev", "eth0"]);
    ext.exec(&["ip", "link", "set", "eth0", "up"]);
    let data = tempfile::tempdir().unwrap();

    let mut first = skiff_conf("1.0.0", "chain", "skc0", &["10.87.1.0/24"], data.path());
    first.as_object_mut().unwrap().remove("cniVersion");
    first.as_object_mut().unwrap().remove("name");
    let chain = Chain {
        list: json!({
            "cniVersion": "1.0.0",
            "name": "chain",
            "plugins": [
                first,
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}},
                {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
            ],
        }),
        runtime: json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                          "egressRate": 100_000_000, "egressBurst": 1_000_000},
        }),
        node: &node,
        pod: &pod,
        cid: "chained",
    };

    let result = chain.add();
    // Our interfaces and address survived every later plugin.
    assert_eq!(result["cniVersion"], "1.0.0");
    let pod_ip = result_ip(&result, true);
    assert!(pod_ip.starts_with("10.87.1."), "{result}");
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(host.starts_with("sk"), "{result}");

    // tuning wrote the pod sysctl, bandwidth shaped the host veth, portmap forwards.
    assert_eq!(
        pod.exec(&["cat", "/proc/sys/net/core/somaxconn"]).trim(),
        "512"
    );
    let qdisc = node.exec(&["tc", "qdisc", "show", "dev", &host]);
    assert!(
        qdisc.contains("tbf") || qdisc.contains("ingress"),
        "{qdisc}"
    );
    assert!(node.nat_rules().contains("18080"), "portmap rules missing");
    let listener = pod
        .netns()
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .expect("listen in the pod");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("echo");
    });
    let addr: SocketAddr = "192.168.91.1:18080".parse().unwrap();
    let mut client = ext
        .netns()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .expect("connect through portmap");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).expect("echo through portmap");
    assert_eq!(&echo, b"hello");
    server.join().unwrap();

    // The reference portmap's CHECK looks for IPv6 rules it never created
    // (containernetworking/plugins#819), so it is left out here.
    chain.check(&result, &["portmap"]);
    chain.del(&result);
    // DEL twice through the whole chain is still fine.
    chain.del(&result);
    assert_eq!(node.links(), vec!["lo", "ext0", "skc0"]);
    assert!(
        !node.nat_rules().contains("18080"),
        "portmap rules left behind"
    );
    assert_eq!(allocations(data.path(), "chain"), 0);
}
