//! Node-local cluster DNS inside `skiff agent`, end to end: a real `skiff
//! server`, a node namespace with the agent, and pods that look names up
//! through the resolv.conf the agent gives them (nameserver 169.254.20.10,
//! the cluster search path). What a pod sees comes back through
//! `kubectl logs`.

mod agent_support;
mod common;

use std::time::{Duration, Instant};

use agent_support::{wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("sd{}-{test}", std::process::id() % 10_000)
}

/// `kubectl logs POD` once some line satisfies `pred`; returns that line.
fn log_line(server: &TestServer, pod: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = server.kubectl(&["logs", pod, "--tail", "40"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().rev().find(|l| pred(l)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in the logs of pod {pod}; they end with:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn jsonpath(server: &TestServer, args: &[&str], path: &str) -> String {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    let path = format!("jsonpath={path}");
    all.extend_from_slice(&["-o", &path]);
    server.kubectl_ok(&all).trim().to_string()
}

/// A web pod (hostname `web0` under the headless Service), a ClusterIP
/// Service and a headless one over it.
fn web_manifest() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  hostname: web0
  subdomain: web-headless
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
"#
    )
}

/// A pod that, every half second, prints one line per name: `Q <name>:
/// <nslookup output on one line>`, and per host `GET <host>: <body>` of
/// `http://<host>/` (wget: the libc resolver, with ndots and the search path),
/// and `K: <nslookup output>` asking the kube-dns ClusterIP for `kubernetes`.
fn client_manifest(names: &[&str], hosts: &[&str]) -> String {
    let names = names.join(" ");
    let hosts = hosts.join(" ");
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: lookup
    image: {BUSYBOX}
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      i=0
      while [ $i -lt 600 ]; do
        for n in {names}; do echo "Q $n: $(nslookup $n 2>&1 | tr '\n\t' '  ')"; done
        echo "K: $(nslookup kubernetes.default.svc.cluster.local 10.96.0.10 2>&1 | tr '\n\t' '  ')"
        for h in {hosts}; do echo "GET $h: $(wget -qO- http://$h/ 2>&1 | tr '\n' ' ')"; done
        i=$((i+1))
        sleep 0.5
      done
"#
    )
}

/// The addresses (`Address: A` lines after the `Name:`) in one `Q` line.
fn answers(line: &str) -> Vec<String> {
    let Some((_, after_name)) = line.split_once("Name:") else {
        return Vec::new();
    };
    after_name
        .split("Address:")
        .skip(1)
        .filter_map(|a| a.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn pods_resolve_services_by_short_name_namespace_fqdn_and_headless() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("svc"));
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &web_manifest());
    let web = wait_running(&server, "web");
    let web_ip = web["status"]["podIP"].as_str().expect("podIP").to_string();
    let cluster_ip = jsonpath(&server, &["service", "web"], "{.spec.clusterIP}");
    assert!(
        cluster_ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{cluster_ip}"
    );

    // busybox nslookup applies the search path only to names without a dot;
    // the libc resolver (wget below) applies it as ndots:5 says.
    let names = [
        "web",
        "web.default.svc.cluster.local",
        "web-headless",
        "web0.web-headless.default.svc.cluster.local",
    ];
    let hosts = ["web", "web.default", "web.default.svc.cluster.local"];
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &client_manifest(&names, &hosts));
    wait_running(&server, "client");

    for name in &names[..2] {
        let prefix = format!("Q {name}:");
        let line = log_line(&server, "client", &format!("an answer for {name}"), |l| {
            l.starts_with(&prefix) && !answers(l).is_empty()
        });
        assert_eq!(answers(&line), vec![cluster_ip.clone()], "{line}");
        assert!(
            line.contains("Name: web.default.svc.cluster.local"),
            "the answer names the FQDN: {line}"
        );
    }
    // Headless: the ready endpoint itself, by Service and by hostname.
    for name in &names[2..] {
        let prefix = format!("Q {name}:");
        let line = log_line(&server, "client", &format!("an answer for {name}"), |l| {
            l.starts_with(&prefix) && !answers(l).is_empty()
        });
        assert_eq!(answers(&line), vec![web_ip.clone()], "{line}");
    }
    // Fetches by name: libc's resolver in the container, then the ClusterIP
    // through the agent's proxy.
    for host in hosts {
        let prefix = format!("GET {host}:");
        let get = log_line(
            &server,
            "client",
            &format!("a page fetched from {host}"),
            |l| l.starts_with(&prefix) && l.contains("hello"),
        );
        assert_eq!(get.trim(), format!("{prefix} hello from web0"), "{get}");
    }
    // The kube-dns Service: no selector, its ClusterIP held by the node.
    let kube_dns = jsonpath(
        &server,
        &["service", "kube-dns", "-n", "kube-system"],
        "{.spec.clusterIP}",
    );
    assert_eq!(kube_dns, "10.96.0.10");
    let kubernetes_ip = jsonpath(&server, &["service", "kubernetes"], "{.spec.clusterIP}");
    let line = log_line(&server, "client", "an answer from 10.96.0.10", |l| {
        l.starts_with("K:") && !answers(l).is_empty()
    });
    assert!(line.contains("Address: 10.96.0.10:53"), "{line}");
    assert_eq!(answers(&line), vec![kubernetes_ip], "{line}");
    // Both iptables implementations (the proxy may pick legacy): the web
    // Service's rules are there, none for the node-local kube-dns address.
    let nat = node.netns.nat_rules();
    assert!(
        nat.contains(&cluster_ip),
        "no rules for web ({cluster_ip}):\n{nat}"
    );
    assert!(
        !nat.contains("10.96.0.10"),
        "the proxy must leave the node-local kube-dns address alone:\n{nat}"
    );
    // The same server over TCP, from the node itself.
    let tcp = node.netns.try_exec(&[
        "dig",
        "+tcp",
        "+short",
        "+time=3",
        "+tries=1",
        "@169.254.20.10",
        "web.default.svc.cluster.local",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&tcp.stdout).trim(),
        cluster_ip,
        "dig +tcp: {tcp:?}"
    );
    assert!(
        node.log().contains("starting node-local DNS"),
        "{}",
        node.log()
    );
}

#[test]
fn a_new_service_is_answered_and_a_deleted_one_is_gone() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("new"));
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &client_manifest(&["late", "outside.example"], &[]),
    );
    wait_running(&server, "client");
    let missing = log_line(&server, "client", "NXDOMAIN for late", |l| {
        l.starts_with("Q late:")
    });
    assert!(answers(&missing).is_empty(), "{missing}");
    assert!(missing.contains("NXDOMAIN"), "{missing}");
    // Names outside the cluster go upstream; the lab node has no route to
    // the host's resolvers, so they fail at once instead of hanging the
    // lookups after them.
    let outside = log_line(&server, "client", "an answer for outside.example", |l| {
        l.starts_with("Q outside.example:")
    });
    assert!(outside.contains("SERVFAIL"), "{outside}");

    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  ports: [{port: 80}]\n",
    );
    let cluster_ip = jsonpath(&server, &["service", "late"], "{.spec.clusterIP}");
    let line = log_line(&server, "client", "an answer for late", |l| {
        l.starts_with("Q late:") && !answers(l).is_empty()
    });
    assert_eq!(answers(&line), vec![cluster_ip], "{line}");

    server.kubectl_ok(&["delete", "service", "late"]);
    // Lines printed after the delete reach NXDOMAIN again (the TTL is 5 s,
    // and the node-local server answers from its index, not a cache).
    wait_for("late to be gone", Duration::from_secs(30), || {
        let out = server.kubectl(&["logs", "client", "--tail", "4"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .any(|l| l.starts_with("Q late:") && l.contains("NXDOMAIN"))
            .then_some(())
    });
}

#[test]
fn node_local_dns_none_adds_nothing_to_the_node_and_pods_ask_kube_dns() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start_with(&server, &node_name("none"), &["--node-local-dns", "none"]);
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: conf}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: cat
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /etc/resolv.conf; sleep 3600"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(&server, "conf");
    let line = log_line(&server, "conf", "the nameserver line", |l| {
        l.starts_with("nameserver")
    });
    assert_eq!(line.trim(), "nameserver 10.96.0.10");
    assert!(
        !node.netns.links().iter().any(|l| l == "skiff-dns"),
        "{:?}",
        node.netns.links()
    );
    assert!(!node.log().contains("starting node-local DNS"));
}

/// `skiff agent --dns-autopath`: the node-local server knows the asking pod's
/// namespace from its address, so the first query of a search-path walk
/// (`web.other` typed in namespace default) comes back as the Service behind
/// a CNAME, in one round trip.
#[test]
fn dns_autopath_answers_a_pods_search_walk_with_a_cname() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start_with(&server, &node_name("ap"), &["--dns-autopath"]);
    server.kubectl_ok(&["create", "namespace", "other"]);
    server.kubectl_stdin_ok(
        &["apply", "-n", "other", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n",
    );
    let cluster_ip = jsonpath(
        &server,
        &["service", "web", "-n", "other"],
        "{.spec.clusterIP}",
    );
    let walk = "web.other.default.svc.cluster.local";
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &client_manifest(&[walk], &[]));
    wait_running(&server, "client");
    let line = log_line(&server, "client", &format!("an answer for {walk}"), |l| {
        l.starts_with(&format!("Q {walk}:")) && !answers(l).is_empty()
    });
    assert!(
        line.contains("canonical name = web.other.svc.cluster.local"),
        "{line}"
    );
    assert_eq!(answers(&line), vec![cluster_ip], "{line}");
}
