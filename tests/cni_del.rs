//! DEL returns when the kernel has removed the pod's link, not when its RCU
//! teardown ends: the plugin binary hands the request to a helper copy of
//! itself, in-process callers to a thread. These tests check what a runtime
//! and an operator see: everything is gone when DEL returns, the helper does
//! not outlive the deletion, and a refused deletion is an error.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::time::{Duration, Instant};

use cni_support::*;

/// PIDs of helper processes deleting `link` (found by their environment).
fn helpers_for(link: &str) -> Vec<u32> {
    let want = format!("{}={link}", skiff_cni::unlink::HELPER_ENV);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn del_leaves_nothing_and_its_helper_finishes() {
    let p = unique("del");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..3)
        .map(|i| NetnsGuard::new(&format!("{p}-p{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let conf = skiff_conf("1.1.0", "delnet", "skd0", &["10.85.0.0/24"], data.path()).to_string();
    for (i, pod) in pods.iter().enumerate() {
        Invocation::skiff("ADD", &format!("c{i}"), Some(pod))
            .run_in(&node, &conf)
            .ok();
    }
    let host_links: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("sk") && l != "skd0")
        .collect();
    assert_eq!(host_links.len(), 3, "{host_links:?}");

    for (i, pod) in pods.iter().enumerate() {
        let run = Invocation::skiff("DEL", &format!("c{i}"), Some(pod)).run_in(&node, &conf);
        let run = run.ok();
        assert_eq!(run.stdout, "", "DEL prints nothing on success");
        // Gone on both sides the moment DEL returns.
        assert_eq!(pod.links(), vec!["lo"]);
        assert_eq!(allocations(data.path(), "delnet"), 2 - i);
    }
    assert_eq!(node.links(), vec!["lo", "skd0"]);

    // The helpers finish the kernel's teardown and exit (reaped by init).
    let deadline = Instant::now() + Duration::from_secs(20);
    for link in &host_links {
        while !helpers_for(link).is_empty() {
            assert!(Instant::now() < deadline, "helper for {link} still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // DEL again: nothing left to delete is success.
    Invocation::skiff("DEL", "c0", Some(&pods[0]))
        .run_in(&node, &conf)
        .ok();
}

#[test]
fn in_process_unlink_deletes_reports_absence_and_refusal() {
    let p = unique("unl");
    let node = NetnsGuard::new(&format!("{p}-node"));
    node.exec(&["ip", "link", "add", "skunl0", "type", "bridge"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = node.netns();
    assert!(rt
        .block_on(skiff_cni::unlink::delete(&ns, "skunl0"))
        .unwrap());
    assert_eq!(node.links(), vec!["lo"]);
    assert!(!rt
        .block_on(skiff_cni::unlink::delete(&ns, "skunl0"))
        .unwrap());
    // The kernel refuses to delete the loopback device: an error, not success.
    let e = rt
        .block_on(skiff_cni::unlink::delete(&ns, "lo"))
        .unwrap_err();
    assert!(e.to_string().contains("deleting link lo"), "{e}");
    assert_eq!(node.links(), vec!["lo"]);
}
