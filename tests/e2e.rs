//! End to end: `skiff up` builds a 3-node cluster in network namespaces, the
//! example app (`kubectl apply -f examples/`) runs across the nodes, and
//! what a user checks with kubectl, wget from pods and curl from outside the
//! nodes holds through scaling, crashes, rolling updates, agent restarts and
//! the loss of a node. Each test pays for a whole cluster, so each groups
//! several checks; the guard asserts that `skiff down` leaves nothing behind.

mod common;
mod e2e_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use e2e_support::clients::{request_loop, LineClient};
use e2e_support::workload::{
    cluster_ip, exec, fetch_from_pod, page_of, pod_pids, ready_pods, start_probes, wait_for,
    wait_service_follows, ReadyPod,
};
use e2e_support::Cluster;

/// The example app's pods.
const WEB: &str = "app=web";
/// The NodePort examples/web.yaml fixes.
const NODE_PORT: u16 = 30080;

fn apply_examples(cluster: &Cluster) {
    let out = cluster.kubectl_ok(&["apply", "-f", "examples/"]);
    for object in [
        "deployment.apps/client created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == object),
            "`kubectl apply -f examples/` should print {object:?}:\n{out}"
        );
    }
    for deploy in ["web", "client"] {
        cluster.kubectl_ok(&[
            "rollout",
            "status",
            &format!("deployment/{deploy}"),
            "--timeout=180s",
        ]);
    }
}

/// A headless Service over the example app's pods.
const HEADLESS: &str = "apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8080}]
";

fn nodeport_url(cluster: &Cluster, node: usize) -> String {
    format!("http://{}:{NODE_PORT}/", cluster.node_address(node))
}

/// Waits until the NodePort of node 1 answers only with `pods`' pages: the
/// proxies follow the endpoints within moments, and from then on 10
/// requests in a row reach no other pod.
fn nodeport_serves_only(cluster: &Cluster, pods: &[ReadyPod]) {
    nodeport_serves_only_via(cluster, 1, pods);
}

fn nodeport_serves_only_via(cluster: &Cluster, node: usize, pods: &[ReadyPod]) {
    let pages: BTreeSet<String> = pods.iter().map(page_of).collect();
    let url = nodeport_url(cluster, node);
    let mut last = Vec::new();
    let converged = (0..30).any(|_| {
        last = (0..10)
            .map(|_| cluster.get_from_underlay(&url).unwrap_or_default())
            .filter(|p| !pages.contains(p))
            .collect();
        if !last.is_empty() {
            thread::sleep(Duration::from_secs(1));
        }
        last.is_empty()
    });
    assert!(
        converged,
        "{url} still answers {last:?}, not only from {pages:?}"
    );
}

/// The examples apply and answer: pod → ClusterIP → pods on other nodes,
/// DNS names (svc, svc.ns, FQDN, headless), pod → pod across nodes, NodePort
/// from the underlay; then scale 3 → 10 → 2,
/// a deleted pod is replaced and a killed container is restarted, with the
/// Service following every change.
#[test]
fn example_app_across_nodes_scales_and_heals() {
    example_app(&["--proxy-mode", "iptables"]);
}

/// The same with the eBPF data plane in every agent (`skiff up`'s default):
/// socket load balancing for ClusterIPs, tc programs on the node interfaces
/// for the NodePort.
#[test]
fn example_app_across_nodes_scales_and_heals_ebpf() {
    example_app(&[]);
}

fn example_app(up_flags: &[&str]) {
    let cluster = Cluster::up(3, up_flags);
    assert!(
        cluster.up_output().contains("export KUBECONFIG="),
        "skiff up should say how to use the cluster:\n{}",
        cluster.up_output()
    );
    apply_examples(&cluster);
    let web = wait_service_follows(&cluster, WEB, "web", 3);
    let probes = start_probes(&cluster);
    let vip = cluster_ip(&cluster, "web");

    // Pod → ClusterIP: every answer is a web pod's page, and every probe
    // reaches pods on other nodes than its own.
    let pages: BTreeSet<String> = web.iter().map(page_of).collect();
    for (probe, node) in &probes {
        let lines = fetch_from_pod(&cluster, probe, &format!("http://{vip}/"), 15);
        assert_eq!(lines.len(), 15, "{probe}: {lines:?}");
        for l in &lines {
            assert!(pages.contains(l), "{probe} got {l:?}, not one of {pages:?}");
        }
        assert!(
            lines.iter().any(|l| !l.ends_with(&format!(" on {node}"))),
            "{probe} on {node} only reached pods on its own node: {lines:?}"
        );
    }

    // Cluster DNS from a pod: the Service's short name, name.namespace and
    // FQDN reach the ClusterIP; a headless Service's name is its pods' IPs.
    cluster.kubectl_stdin_ok(&["apply", "-f", "-"], HEADLESS);
    let (probe, _) = &probes[0];
    for name in ["web", "web.default", "web.default.svc.cluster.local"] {
        let lines = fetch_from_pod(&cluster, probe, &format!("http://{name}/"), 3);
        for l in &lines {
            assert!(pages.contains(l), "http://{name}/ from {probe}: {l:?}");
        }
    }
    let pod_ips: BTreeSet<String> = web.iter().map(|p| p.ip.clone()).collect();
    wait_for(
        "the headless Service's name to resolve to the pod IPs",
        Duration::from_secs(60),
        || {
            let out = exec(
                &cluster,
                probe,
                "nslookup web-headless.default.svc.cluster.local",
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let ips: BTreeSet<String> = text
                .lines()
                .skip_while(|l| !l.starts_with("Name:"))
                .filter_map(|l| l.strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect();
            (ips == pod_ips).then_some(())
        },
    );
    let lines = fetch_from_pod(&cluster, probe, "http://web-headless:8080/", 3);
    for l in &lines {
        assert!(pages.contains(l), "http://web-headless:8080/: {l:?}");
    }

    // Pod → pod across nodes, by pod IP.
    for pod in &web {
        let (probe, _) = probes
            .iter()
            .find(|(_, n)| *n != pod.node)
            .expect("a probe on another node");
        let lines = fetch_from_pod(&cluster, probe, &format!("http://{}:8080/", pod.ip), 1);
        assert_eq!(lines, vec![page_of(pod)], "{probe} → {}", pod.name);
    }

    // NodePort from outside the nodes, through every node.
    for i in 1..=cluster.nodes {
        let page = cluster
            .get_from_underlay(&nodeport_url(&cluster, i))
            .unwrap_or_else(|| panic!("NodePort {NODE_PORT} on node {i} did not answer"));
        assert!(pages.contains(&page), "node {i} answered {page:?}");
    }

    // Scale 3 → 10 → 2: the endpoints are exactly the ready pods each time,
    // and the NodePort only ever answers with the remaining pods.
    cluster.kubectl_ok(&["scale", "deployment/web", "--replicas=10"]);
    let ten = wait_service_follows(&cluster, WEB, "web", 10);
    let nodes: BTreeSet<&str> = ten.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "10 replicas should use all 3 nodes: {ten:?}"
    );
    cluster.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]);
    let two = wait_service_follows(&cluster, WEB, "web", 2);
    nodeport_serves_only(&cluster, &two);

    // A deleted pod is replaced by a new one, and the Service follows.
    let victim = two[0].clone();
    cluster.kubectl_ok(&["delete", "pod", &victim.name, "--wait=false"]);
    let replaced = wait_for(
        "the deleted pod's replacement",
        Duration::from_secs(120),
        || {
            let pods = wait_service_follows(&cluster, WEB, "web", 2);
            pods.iter().all(|p| p.name != victim.name).then_some(pods)
        },
    );
    assert!(
        replaced.iter().any(|p| p.name == two[1].name),
        "{replaced:?}"
    );

    // A container whose process dies is restarted in the same pod.
    let target = replaced[0].clone();
    kill_pod_processes(&target);
    wait_for(
        &format!("{} restarted and Ready", target.name),
        Duration::from_secs(120),
        || {
            let pod = cluster.kubectl_json(&["get", "pod", &target.name]);
            let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0);
            let ready = ready_pods(&cluster, WEB)
                .iter()
                .any(|p| p.name == target.name);
            (restarts >= 1 && ready).then_some(())
        },
    );
    let (probe, _) = &probes[0];
    let lines = fetch_from_pod(&cluster, probe, &format!("http://{}:8080/", target.ip), 1);
    assert_eq!(lines, vec![page_of(&target)], "restarted {}", target.name);
}

/// SIGKILL to every process of `pod`'s containers, from the host.
fn kill_pod_processes(pod: &ReadyPod) {
    let pids = pod_pids(&pod.node, &pod.uid);
    assert!(!pids.is_empty(), "no processes found for {pod:?}");
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// An echo server (busybox nc) behind a ClusterIP Service `echo:9000`.
const ECHO: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: echo
          image: localhost/busybox:latest
          imagePullPolicy: IfNotPresent
          command: [nc, -ll, -p, '9000', -e, cat]
          ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 9000, targetPort: 9000}]
";

/// Waits until `node`'s agent has a PID other than `old` and the node is Ready.
fn wait_agent_back(cluster: &Cluster, node: &str, old: u32) {
    wait_for(
        &format!("{node}'s agent restarted and Ready"),
        Duration::from_secs(90),
        || {
            (cluster.agent_pid(node) != old && cluster.ready_nodes().iter().any(|n| n == node))
                .then_some(())
        },
    );
}

/// A rolling update of `web` under a constant request loop through the
/// NodePort of every node, from the underlay: no request fails, and every
/// pod is new afterwards.
fn rolling_update_loses_no_request(cluster: &Cluster) {
    let before = wait_service_follows(cluster, WEB, "web", 3);
    // The proxies program the NodePort shortly after the endpoints exist.
    for i in 1..=cluster.nodes {
        wait_for(
            &format!("NodePort {NODE_PORT} on node {i}"),
            Duration::from_secs(60),
            || cluster.get_from_underlay(&nodeport_url(cluster, i)),
        );
    }

    // Rolling update under load: zero failed requests.
    let stop = Arc::new(AtomicBool::new(false));
    let urls = (1..=cluster.nodes)
        .map(|i| nodeport_url(cluster, i))
        .collect();
    let requests = request_loop(cluster.underlay(), urls, "hello from web-", stop.clone());
    thread::sleep(Duration::from_secs(2));
    cluster.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    cluster.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    let after = wait_service_follows(cluster, WEB, "web", 3);
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = requests.join().expect("request loop");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout: {failures:#?}",
        failures.len(),
        answered as usize + failures.len()
    );
    assert!(
        answered >= 20,
        "only {answered} requests during the rollout"
    );
    let old: BTreeSet<&str> = before.iter().map(|p| p.name.as_str()).collect();
    assert!(
        after.iter().all(|p| !old.contains(p.name.as_str())),
        "every pod is new after the rollout: {before:?} → {after:?}"
    );
}

/// With short node timeouts: a rolling update under a constant request loop
/// loses no request; an established connection through a ClusterIP survives
/// a restart of the agents on both ends; a node whose agent stops goes
/// NotReady and its pods come back on the other nodes; NodePort connections
/// keep a backend that leaves the Service (as in eBPF mode).
#[test]
fn rolling_update_agent_restart_and_node_loss() {
    let cluster = Cluster::up(
        3,
        &[
            // This scenario covers the iptables data plane end to end (the
            // eBPF one has `rolling_update_ebpf`); its held connection's
            // client runs with `ip netns exec`, outside the node's cgroup.
            "--proxy-mode",
            "iptables",
            "--server-arg=--node-monitor-grace-period=10s",
            "--server-arg=--default-toleration-seconds=5",
        ],
    );
    apply_examples(&cluster);
    rolling_update_loses_no_request(&cluster);

    // An established connection through a ClusterIP survives agent restarts,
    // both on the client's node (whose proxy rules translated it) and on
    // the server's.
    cluster.kubectl_stdin_ok(&["apply", "-f", "-"], ECHO);
    cluster.kubectl_ok(&["rollout", "status", "deployment/echo", "--timeout=120s"]);
    let echo = wait_service_follows(&cluster, "app=echo", "echo", 1);
    let server_node = echo[0].node.clone();
    let client_node = cluster
        .node_names()
        .into_iter()
        .find(|n| *n != server_node)
        .expect("another node");
    let mut conn = LineClient::connect(&client_node, &cluster_ip(&cluster, "echo"), 9000);
    assert_eq!(conn.round_trip("before"), "before");
    for node in [&client_node, &server_node] {
        let pid = cluster.agent_pid(node);
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        wait_agent_back(&cluster, node, pid);
        // Give the restarted agent's proxy time for its first full sync.
        thread::sleep(Duration::from_secs(3));
        assert_eq!(
            conn.round_trip(&format!("after restarting {node}")),
            format!("after restarting {node}")
        );
    }
    drop(conn);

    // Node loss: stop the agent of a node running web pods (SIGSTOP, so
    // skiff up does not restart it); the node goes NotReady and its pods
    // are replaced on the other nodes.
    let web = wait_service_follows(&cluster, WEB, "web", 3);
    let lost = web[0].node.clone();
    let pid = cluster.agent_pid(&lost);
    let _ = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status();
    let started = Instant::now();
    wait_for(&format!("{lost} NotReady"), Duration::from_secs(90), || {
        (!cluster.ready_nodes().contains(&lost)).then_some(())
    });
    let moved = wait_for(
        "3 ready web pods on the remaining nodes",
        Duration::from_secs(180),
        || {
            let pods = wait_service_follows(&cluster, WEB, "web", 3);
            pods.iter().all(|p| p.node != lost).then_some(pods)
        },
    );
    let survivor = (1..=cluster.nodes)
        .find(|i| format!("{}-node{i}", cluster.prefix) != lost)
        .expect("a surviving node");
    nodeport_serves_only_via(&cluster, survivor, &moved);
    eprintln!("pods moved off {lost} after {:?}", started.elapsed());
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    wait_for(
        &format!("{lost} Ready again"),
        Duration::from_secs(90),
        || cluster.ready_nodes().contains(&lost).then_some(()),
    );
    connections_outlive_their_backends_removal(&cluster);
}

/// The NodePort of `HOLD`.
const HOLD_PORT: u16 = 30090;

/// Pods answering each line with their name, serving for a minute after
/// deletion (a preStop pause; nc as PID 1 ignores SIGTERM), behind a NodePort.
const HOLD: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: hold}
spec:
  replicas: 1
  selector: {matchLabels: {app: hold}}
  template:
    metadata: {labels: {app: hold}}
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: hold
          image: localhost/busybox:latest
          imagePullPolicy: IfNotPresent
          command: [nc, -ll, -p, '9000', -e, sh, -c, 'while read l; do echo \"$POD_NAME $l\"; done']
          env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
          ports: [{containerPort: 9000}]
          lifecycle: {preStop: {exec: {command: [sleep, '60']}}}
---
apiVersion: v1
kind: Service
metadata: {name: hold}
spec:
  type: NodePort
  selector: {app: hold}
  ports: [{port: 9000, targetPort: 9000, nodePort: 30090}]
";

/// Connections from the underlay through the NodePort of the pod's own node
/// (local backend) and of another node (SNAT to a remote backend) keep
/// their pod after it is deleted and leaves the Service, as long as it
/// serves them; new connections reach its replacement.
fn connections_outlive_their_backends_removal(cluster: &Cluster) {
    cluster.kubectl_stdin_ok(&["apply", "-f", "-"], HOLD);
    cluster.kubectl_ok(&["rollout", "status", "deployment/hold", "--timeout=120s"]);
    let old = wait_service_follows(cluster, "app=hold", "hold", 1).remove(0);
    let own = (1..=cluster.nodes)
        .find(|i| format!("{}-node{i}", cluster.prefix) == old.node)
        .expect("the pod's node");
    let connect =
        |i: usize| LineClient::connect(&cluster.underlay(), &cluster.node_address(i), HOLD_PORT);
    let mut held: Vec<(usize, LineClient)> = [own, own % cluster.nodes + 1]
        .into_iter()
        .map(|i| (i, connect(i)))
        .collect();
    for (_, conn) in &mut held {
        assert_eq!(conn.round_trip("before"), format!("{} before", old.name));
    }
    cluster.kubectl_ok(&["delete", "pod", &old.name, "--wait=false"]);
    let new = wait_for("the replacement pod", Duration::from_secs(120), || {
        let pods = wait_service_follows(cluster, "app=hold", "hold", 1);
        (pods[0].name != old.name).then(|| pods[0].name.clone())
    });
    for (i, _) in &held {
        // The old pod left this node's NodePort: a new connection only
        // reaches the replacement.
        wait_for(
            &format!("node {i} balancing to {new}"),
            Duration::from_secs(30),
            || (connect(*i).round_trip("new") == format!("{new} new")).then_some(()),
        );
    }
    for (i, conn) in &mut held {
        assert_eq!(
            conn.round_trip("after"),
            format!("{} after", old.name),
            "a connection through node {i}'s NodePort lost its terminating backend"
        );
    }
}

/// A rolling update with the eBPF data plane: the NodePort's tc programs
/// and their connection table follow the endpoints without a failed request,
/// and established connections keep a backend that leaves the Service.
#[test]
fn rolling_update_ebpf() {
    let cluster = Cluster::up(3, &[]);
    apply_examples(&cluster);
    rolling_update_loses_no_request(&cluster);
    connections_outlive_their_backends_removal(&cluster);
}

/// `skiff up` refuses bad flags and a second cluster on the same directory;
/// after `skiff up` is killed with SIGKILL, `skiff down` still removes
/// everything (the guard checks).
#[test]
fn up_refuses_conflicts_and_down_cleans_up_after_a_crash() {
    let skiff = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(args)
            .output()
            .expect("run skiff");
        assert!(!out.status.success(), "skiff {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = skiff(&["up", "--nodes", "0"]);
    assert!(err.contains("--nodes must be between 1 and 20"), "{err}");
    let err = skiff(&["up", "--nodes", "21"]);
    assert!(err.contains("--nodes must be between 1 and 20"), "{err}");
    let err = skiff(&["up", "--prefix", "Bad_Name"]);
    assert!(err.contains("--prefix"), "{err}");

    let mut cluster = Cluster::up(1, &[]);
    let dir = cluster.data_dir();
    let dir_arg = dir.display().to_string();
    let err = skiff(&[
        "up",
        "--nodes",
        "1",
        "--data-dir",
        &dir_arg,
        "--listen",
        "127.0.0.1:1",
    ]);
    assert!(
        err.contains("already up") && err.contains("skiff down"),
        "{err}"
    );

    // Another directory with the same prefix: refused before it touches
    // anything of the running cluster.
    let other = tempfile::tempdir().expect("tempdir");
    let other_arg = other.path().display().to_string();
    let prefix = cluster.prefix.clone();
    let err = skiff(&[
        "up",
        "--nodes",
        "1",
        "--data-dir",
        &other_arg,
        "--prefix",
        &prefix,
    ]);
    assert!(
        err.contains("already exists") && err.contains("--prefix"),
        "{err}"
    );
    assert!(
        !other.path().join("up.state").exists(),
        "a refused skiff up leaves no state"
    );
    assert_eq!(
        cluster.ready_nodes().len(),
        1,
        "the first cluster is intact"
    );

    // A crash of skiff up leaves its processes and namespaces; a new
    // skiff up points at skiff down, which removes them.
    let mut up = cluster.take_up_child().expect("skiff up child");
    up.kill().expect("kill -9 skiff up");
    up.wait().expect("reap skiff up");
    let err = skiff(&["up", "--nodes", "1", "--data-dir", &dir_arg]);
    assert!(
        err.contains("is gone") && err.contains("skiff down"),
        "{err}"
    );
    let out = cluster.down();
    assert!(
        out.status.success(),
        "skiff down after a crash: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The guard's drop runs skiff down again (a no-op now) and checks that
    // nothing is left.
}
