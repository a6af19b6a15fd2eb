//! The benchmark's lab: a node namespace with a pod bridge, a backend pod
//! answering one line per TCP connection, and a client pod; everything is
//! deleted when [`Namespaces`] drops (also when the run fails midway).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use skiff_bench::netlab::exchanges;
pub use skiff_bench::netlab::netns_path;
use skiff_bench::stats::percentile;

/// Network namespaces deleted on drop (also when the run fails midway).
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn add(&mut self, name: &str) -> Result<()> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        self.0.push(name.to_string());
        exec(name, &["ip", "link", "set", "lo", "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn exec(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// A node namespace with a pod bridge, one backend pod and one client pod.
pub fn build_lab(ns: &mut Namespaces, prefix: &str) -> Result<(String, String, String)> {
    let node = format!("{prefix}-node");
    let backend = format!("{prefix}-backend");
    let client = format!("{prefix}-client");
    for n in [&node, &backend, &client] {
        ns.add(n)?;
    }
    exec(&node, &["ip", "link", "add", "cbr0", "type", "bridge"])?;
    exec(
        &node,
        &["ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0"],
    )?;
    exec(&node, &["ip", "link", "set", "cbr0", "up"])?;
    // Routes for service addresses must exist; the default points at the bridge.
    exec(&node, &["ip", "route", "add", "default", "dev", "cbr0"])?;
    exec(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    exec(
        &node,
        &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
    )?;
    for (pod, host, port) in [(&backend, 2, "p2"), (&client, 9, "p9")] {
        exec(
            &node,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ],
        )?;
        exec(&node, &["ip", "link", "set", port, "master", "cbr0"])?;
        exec(&node, &["ip", "link", "set", port, "up"])?;
        exec(
            pod,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.244.1.{host}/24"),
                "dev",
                "eth0",
            ],
        )?;
        exec(pod, &["ip", "link", "set", "eth0", "up"])?;
        exec(pod, &["ip", "route", "add", "default", "via", "10.244.1.1"])?;
    }
    Ok((node, backend, client))
}

/// p50 and p99 of connect + read-one-reply from `client` to `addr`.
pub fn latency(client: &str, addr: SocketAddr, n: usize) -> Result<(Duration, Duration)> {
    let samples = exchanges(client, addr, n)?;
    let mut sorted = samples;
    sorted.sort_unstable();
    Ok((percentile(&sorted, 0.5), percentile(&sorted, 0.99)))
}
