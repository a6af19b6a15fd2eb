//! Concurrency and crash recovery: 110 plugin processes adding pods to one
//! node at once get 110 distinct addresses and DEL leaves nothing behind; a
//! plugin killed (SIGKILL, by PID) in the middle of ADD is cleaned up by DEL
//! and by GC.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};

use cni_support::*;
use serde_json::json;

#[test]
fn one_hundred_ten_concurrent_adds_then_dels_leak_nothing() {
    const PODS: usize = 110;
    let p = unique("scale");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..PODS)
        .map(|i| NetnsGuard::new(&format!("{p}-p{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let mut conf = skiff_conf(
        "1.1.0",
        "scale",
        "sks0",
        &["10.83.0.0/24", "fd00:83::/64"],
        data.path(),
    );
    conf["ipMasq"] = json!(true);
    let text = conf.to_string();

    // Start every ADD before waiting for any of them.
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            Invocation::skiff("ADD", &format!("c{i}"), Some(pod)).spawn_in(&node, &text)
        })
        .collect();
    let results: Vec<_> = children
        .into_iter()
        .map(|c| finish(c).ok().json())
        .collect();
    let v4: HashSet<String> = results.iter().map(|r| result_ip(r, true)).collect();
    let v6: HashSet<String> = results.iter().map(|r| result_ip(r, false)).collect();
    assert_eq!(v4.len(), PODS, "duplicate IPv4 addresses handed out");
    assert_eq!(v6.len(), PODS, "duplicate IPv6 addresses handed out");
    assert_eq!(allocations(data.path(), "scale"), 2 * PODS);
    assert_eq!(node.links().len(), PODS + 2);
    assert!(pods[0].ping(&result_ip(&results[PODS - 1], true)));

    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            Invocation::skiff("DEL", &format!("c{i}"), Some(pod)).spawn_in(&node, &text)
        })
        .collect();
    for c in children {
        finish(c).ok();
    }
    assert_eq!(allocations(data.path(), "scale"), 0);
    assert_eq!(node.links(), vec!["lo", "sks0"]);
    assert!(!node.nat_rules().contains("skiff/"));
    for pod in &pods {
        assert_eq!(pod.links(), vec!["lo"]);
    }
    let mut files: Vec<String> = std::fs::read_dir(data.path().join("scale"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    // Only the lock file (which also holds the round-robin pointers) remains.
    assert_eq!(files, vec!["lock"], "stray files in the IPAM store");
}

/// Starts an ADD that pauses at `stage`, waits until it says so, then SIGKILLs it.
fn kill_mid_add(node: &NetnsGuard, pod: &NetnsGuard, cid: &str, stage: &str, conf: &str) {
    let mut inv = Invocation::skiff("ADD", cid, Some(pod));
    inv.extra_env
        .push(("SKIFF_CNI_TEST_PAUSE_AT".into(), stage.into()));
    let mut child = inv.spawn_in(node, conf);
    let mut line = String::new();
    let stderr = child.stderr.take().expect("stderr");
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("read stderr");
    assert!(
        line.contains(&format!("paused at {stage}")),
        "unexpected stderr: {line:?}"
    );
    // Child::kill sends SIGKILL to this PID only.
    child.kill().expect("SIGKILL the plugin");
    let status = child.wait().expect("reap");
    assert!(!status.success());
}

#[test]
fn killed_mid_add_is_repaired_by_del() {
    let p = unique("kdel");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let data = tempfile::tempdir().unwrap();
    let mut conf = skiff_conf("1.1.0", "kdel", "skk0", &["10.84.1.0/24"], data.path());
    conf["ipMasq"] = json!(true);
    let text = conf.to_string();

    kill_mid_add(&node, &pod, "c1", "ipam", &text);
    assert_eq!(
        allocations(data.path(), "kdel"),
        1,
        "the allocation is recorded before anything else"
    );
    Invocation::skiff("DEL", "c1", Some(&pod))
        .run_in(&node, &text)
        .ok();
    assert_eq!(allocations(data.path(), "kdel"), 0);

    kill_mid_add(&node, &pod, "c1", "veth", &text);
    assert_eq!(
        node.links().len(),
        3,
        "veth left by the killed ADD: {:?}",
        node.links()
    );
    assert_eq!(pod.links(), vec!["lo", "eth0"]);
    // A retried ADD refuses the leftover, DEL clears it, and ADD then works.
    assert_eq!(
        Invocation::skiff("ADD", "c1", Some(&pod))
            .run_in(&node, &text)
            .code(),
        101
    );
    Invocation::skiff("DEL", "c1", Some(&pod))
        .run_in(&node, &text)
        .ok();
    assert_eq!(node.links(), vec!["lo", "skk0"]);
    assert_eq!(pod.links(), vec!["lo"]);
    assert_eq!(allocations(data.path(), "kdel"), 0);
    Invocation::skiff("ADD", "c1", Some(&pod))
        .run_in(&node, &text)
        .ok();
    Invocation::skiff("DEL", "c1", Some(&pod))
        .run_in(&node, &text)
        .ok();
    assert!(!node.nat_rules().contains("skiff/"));
}

#[test]
fn killed_mid_add_is_repaired_by_gc() {
    let p = unique("kgc");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..3)
        .map(|i| NetnsGuard::new(&format!("{p}-pod{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let conf = skiff_conf("1.1.0", "kgc", "skq0", &["10.85.1.0/24"], data.path());
    let text = conf.to_string();

    Invocation::skiff("ADD", "live", Some(&pods[0]))
        .run_in(&node, &text)
        .ok();
    kill_mid_add(&node, &pods[1], "dead1", "ipam", &text);
    kill_mid_add(&node, &pods[2], "dead2", "veth", &text);
    assert_eq!(allocations(data.path(), "kgc"), 3);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "live", "ifname": "eth0"}]);
    Invocation::skiff("GC", "", None)
        .run_in(&node, &gc.to_string())
        .ok();
    assert_eq!(allocations(data.path(), "kgc"), 1);
    assert_eq!(node.links().len(), 3, "{:?}", node.links());
    assert_eq!(pods[2].links(), vec!["lo"]);
    assert_eq!(pods[0].links(), vec!["lo", "eth0"]);
}
