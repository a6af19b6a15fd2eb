//! skiff-cni delegating IPAM to a real `host-local` that speaks spec 1.1.0
//! (Debian sid's containernetworking-plugins, unpacked by scripts/setup.sh):
//! ADD/CHECK/DEL/GC/STATUS go to it, GC frees the allocations of stale
//! attachments in its data dir (even those of an ADD killed mid-way), and its
//! failures reach the runtime with the spec's codes. The plugin runs with its
//! whole process inside a node namespace made by the test.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cni_support::*;
use serde_json::{json, Value};

/// The addresses host-local holds in `dir/<network>`, each with its owner
/// (`<containerID>/<ifname>`, from the file host-local writes per address).
fn held(dir: &Path, network: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir.join(network)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.parse::<std::net::IpAddr>().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut lines = text.lines().map(str::trim);
            let owner = format!("{}/{}", lines.next()?, lines.next().unwrap_or(""));
            Some((name, owner))
        })
        .collect();
    out.sort();
    out
}

fn owners(held: &[(String, String)]) -> Vec<&str> {
    held.iter().map(|(_, o)| o.as_str()).collect()
}

fn inv(cmd: &str, cid: &str, pod: Option<&NetnsGuard>, dir: &str) -> Invocation {
    let mut i = Invocation::skiff(cmd, cid, pod);
    i.cni_path = format!("{}:{dir}", plugin_bin().parent().unwrap().display());
    i
}

fn with_prev(conf: &Value, prev: &Value) -> String {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn host_local_1_1_spec_gets_every_command_and_gc_frees_its_stale_allocations() {
    let sid = sid_cni_dir();
    // The binary under test really is a host-local that speaks 1.1.0.
    let version = Command::new(Path::new(sid).join("host-local"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.contains("\"1.1.0\""), "{version}");

    let p = unique("hl9");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..5)
        .map(|i| NetnsGuard::new(&format!("{p}-p{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "hl9net", "type": "skiff", "bridge": "skh9",
        "ipam": {"type": "host-local",
                 "ranges": [[{"subnet": "10.87.1.0/24", "rangeStart": "10.87.1.10", "rangeEnd": "10.87.1.13"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data.path()},
    });
    let text = conf.to_string();

    // ADD: three pods get host-local's addresses, recorded in its data dir.
    let mut results = Vec::new();
    for (i, pod) in pods.iter().take(3).enumerate() {
        let r = inv("ADD", &format!("c{i}"), Some(pod), sid)
            .run_in(&node, &text)
            .ok()
            .json();
        assert_eq!(r["ips"][0]["gateway"], "10.87.1.1", "{r}");
        results.push(r);
    }
    let ips: Vec<String> = results.iter().map(|r| result_ip(r, true)).collect();
    assert_eq!(ips, ["10.87.1.10", "10.87.1.11", "10.87.1.12"]);
    assert_eq!(
        owners(&held(data.path(), "hl9net")),
        ["c0/eth0", "c1/eth0", "c2/eth0"]
    );
    assert!(pods[0].ping(&ips[2]), "pod c0 cannot reach pod c2");

    // CHECK goes to host-local too: it knows c0, and not an attachment it never saw.
    inv("CHECK", "c0", Some(&pods[0]), sid)
        .run_in(&node, &with_prev(&conf, &results[0]))
        .ok();
    let unknown =
        inv("CHECK", "c9", Some(&pods[0]), sid).run_in(&node, &with_prev(&conf, &results[0]));
    assert_eq!(unknown.code(), 104, "{unknown:?}");
    assert!(
        unknown.stdout.contains("host-local") && unknown.stdout.contains("c9"),
        "{unknown:?}"
    );

    // STATUS is host-local's answer (it accepts ADDs: one address is free).
    inv("STATUS", "", None, sid).run_in(&node, &text).ok();

    // An ADD killed after host-local allocated (runtime crash): .13 is held.
    let mut killed = inv("ADD", "c3", Some(&pods[3]), sid);
    killed
        .extra_env
        .push((skiff_cni::plugin::PAUSE_ENV.into(), "ipam".into()));
    let mut child = killed.spawn_in(&node, &text);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !owners(&held(data.path(), "hl9net")).contains(&"c3/eth0") {
        assert!(
            Instant::now() < deadline,
            "host-local never allocated for c3"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // The range is full now: ADD fails with host-local's reason, and leaves
    // no link and no allocation behind.
    let full = inv("ADD", "c4", Some(&pods[4]), sid).run_in(&node, &text);
    assert_eq!(full.code(), 104, "{full:?}");
    let msg = full.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("host-local") && msg.contains("no IP addresses available in range set"),
        "{msg}"
    );
    assert_eq!(pods[4].links(), vec!["lo"]);
    assert_eq!(held(data.path(), "hl9net").len(), 4);

    // Pod c1's interface vanishes without a DEL (its veth pair goes with it).
    pods[1].exec(&["ip", "link", "del", "eth0"]);

    // GC keeps c0 and c2; host-local frees c1's and the killed ADD's addresses.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "c0", "ifname": "eth0"},
        {"containerID": "c2", "ifname": "eth0"},
    ]);
    inv("GC", "", None, sid).run_in(&node, &gc.to_string()).ok();
    assert_eq!(
        held(data.path(), "hl9net"),
        [
            ("10.87.1.10".to_string(), "c0/eth0".to_string()),
            ("10.87.1.12".to_string(), "c2/eth0".to_string()),
        ]
    );
    // The killed ADD's host veth (if it got that far) is gone; the kept pods work.
    assert!(pods[0].ping(&ips[2]), "GC broke a valid attachment");

    // The freed addresses are handed out again.
    let r4 = inv("ADD", "c4", Some(&pods[4]), sid)
        .run_in(&node, &text)
        .ok()
        .json();
    assert!(
        ["10.87.1.11", "10.87.1.13"].contains(&result_ip(&r4, true).as_str()),
        "{r4}"
    );

    // DEL everything: host-local holds nothing, the node keeps only its bridge.
    for (cid, pod) in [("c0", &pods[0]), ("c2", &pods[2]), ("c4", &pods[4])] {
        inv("DEL", cid, Some(pod), sid).run_in(&node, &text).ok();
    }
    assert!(held(data.path(), "hl9net").is_empty());
    assert_eq!(node.links(), vec!["lo", "skh9"]);
    // Nothing stale is left for a GC that keeps nothing.
    gc["cni.dev/valid-attachments"] = json!([]);
    inv("GC", "", None, sid).run_in(&node, &gc.to_string()).ok();
    assert!(held(data.path(), "hl9net").is_empty());
}

#[test]
fn delegate_failures_reach_the_runtime_with_spec_codes() {
    let sid = sid_cni_dir();
    let p = unique("hlf");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "hlfnet", "type": "skiff", "bridge": "skhf0",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.87.2.0/24"}]],
                 "dataDir": data.path()},
    });
    let text = conf.to_string();

    // Bookworm's host-local 1.1.1 does not speak 1.1.0: its code 1 (with the
    // versions it supports) is what the runtime gets, naming host-local.
    let old = inv("ADD", "c1", Some(&pod), REF_CNI_DIR).run_in(&node, &text);
    assert_eq!(old.code(), 1, "{old:?}");
    let msg = old.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("host-local") && msg.contains("plugin supports") && msg.contains("1.0.0"),
        "{msg}"
    );
    assert_eq!(pod.links(), vec!["lo"]);
    // GC and STATUS are not sent to it; the error says what to upgrade.
    let st = inv("STATUS", "", None, REF_CNI_DIR).run_in(&node, &text);
    assert_eq!(st.code(), 104, "{st:?}");
    assert!(st.stdout.contains("upgrade"), "{st:?}");

    // host-local's own codes (999) become 104 with its message.
    let mut asked = inv("ADD", "c2", Some(&pod), sid);
    asked
        .extra_env
        .push(("CNI_ARGS".into(), "IP=10.87.9.9".into()));
    let r = asked.run_in(&node, &text);
    assert_eq!(r.code(), 104, "{r:?}");
    assert!(
        r.stdout
            .contains("failed to allocate all requested IPs: 10.87.9.9"),
        "{r:?}"
    );
    assert_eq!(pod.links(), vec!["lo"]);
    assert!(held(data.path(), "hlfnet").is_empty());

    // A data dir that cannot be created: an I/O error (5) before host-local
    // is even asked, nothing half-made.
    let mut bad = conf.clone();
    bad["ipam"]["dataDir"] = json!("/proc/skiff-no-such-dir");
    let r = inv("ADD", "c3", Some(&pod), sid).run_in(&node, &bad.to_string());
    assert_eq!(r.code(), 5, "{r:?}");
    assert!(r.stdout.contains("dataDir"), "{r:?}");
    assert_eq!(pod.links(), vec!["lo"]);

    // After all that, a good ADD and DEL still work and leave nothing.
    inv("ADD", "c4", Some(&pod), sid).run_in(&node, &text).ok();
    inv("DEL", "c4", Some(&pod), sid).run_in(&node, &text).ok();
    assert!(held(data.path(), "hlfnet").is_empty());
    assert_eq!(pod.links(), vec!["lo"]);
}
