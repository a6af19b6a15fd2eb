//! skiff-cni as a runtime sees it: every command, every error code, result
//! versions, delegated IPAM — the binary runs with its whole process inside a
//! node namespace made by the test, pods are namespaces attached to it.

#[path = "cni_support/mod.rs"]
mod cni_support;

use std::process::Command;

use cni_support::*;
use serde_json::{json, Value};

fn with_prev(conf: &Value, prev: &Value) -> String {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c.to_string()
}

#[test]
fn add_check_del_dual_stack_pods_with_masquerade() {
    let p = unique("ops");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod1 = NetnsGuard::new(&format!("{p}-pod1"));
    let pod2 = NetnsGuard::new(&format!("{p}-pod2"));
    let data = tempfile::tempdir().unwrap();
    let mut conf = skiff_conf(
        "1.1.0",
        "dual",
        "skiff0",
        &["10.77.1.0/24", "fd00:77:1::/64"],
        data.path(),
    );
    conf["ipMasq"] = json!(true);
    conf["clusterCIDRs"] = json!(["10.77.0.0/16", "fd00:77::/48"]);
    conf["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]});
    let text = conf.to_string();

    let r1 = Invocation::skiff("ADD", "pod1", Some(&pod1))
        .run_in(&node, &text)
        .ok()
        .json();
    // pod2 joins without hairpin mode.
    let mut no_hairpin = conf.clone();
    no_hairpin["hairpinMode"] = json!(false);
    let r2 = Invocation::skiff("ADD", "pod2", Some(&pod2))
        .run_in(&node, &no_hairpin.to_string())
        .ok()
        .json();
    assert_eq!(r1["cniVersion"], "1.1.0");
    let ifaces = r1["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3);
    assert_eq!(ifaces[0]["name"], "skiff0");
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pod1.path().display().to_string());
    assert_eq!(ifaces[2]["mtu"], 1400);
    assert_eq!(r1["ips"].as_array().unwrap().len(), 2);
    assert_eq!(r1["ips"][0]["interface"], 2);
    assert_eq!(r1["ips"][0]["gateway"], "10.77.1.1");
    assert_eq!(r1["dns"]["nameservers"][0], "10.96.0.10");
    let (ip2_v4, ip2_v6) = (result_ip(&r2, true), result_ip(&r2, false));
    assert_ne!(result_ip(&r1, true), ip2_v4);

    // Pod interface as configured; traffic flows pod → pod and pod → gateway.
    let link = pod1.exec(&["ip", "-d", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(pod1
        .exec(&["ip", "-4", "route"])
        .contains("default via 10.77.1.1 dev eth0"));
    assert!(pod1
        .exec(&["ip", "-6", "route"])
        .contains("default via fd00:77:1::1 dev eth0"));
    assert!(pod1.ping(&ip2_v4), "pod1 cannot reach pod2 over IPv4");
    assert!(pod1.ping(&ip2_v6), "pod1 cannot reach pod2 over IPv6");
    assert!(pod1.ping("10.77.1.1"), "pod1 cannot reach its gateway");

    // Node side: bridge port with hairpin, forwarding on, tagged masquerade rules.
    let host = ifaces[1]["name"].as_str().unwrap();
    let port = node.exec(&["ip", "-d", "link", "show", host]);
    assert!(
        port.contains("master skiff0") && port.contains("hairpin on"),
        "{port}"
    );
    let port2 = node.exec(&[
        "ip",
        "-d",
        "link",
        "show",
        r2["interfaces"][1]["name"].as_str().unwrap(),
    ]);
    assert!(
        port2.contains("master skiff0") && port2.contains("hairpin off"),
        "{port2}"
    );
    assert_eq!(
        node.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    let nat = node.nat_rules();
    assert!(
        nat.contains("skiff/dual/pod1/eth0") && nat.contains("! -d 10.77.0.0/16"),
        "{nat}"
    );
    let nat6 = node.exec(&["ip6tables-save", "-t", "nat"]);
    assert!(nat6.contains("skiff/dual/pod1/eth0"), "{nat6}");

    // CHECK passes against the ADD result, and notices a removed address.
    Invocation::skiff("CHECK", "pod1", Some(&pod1))
        .run_in(&node, &with_prev(&conf, &r1))
        .ok();
    pod1.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/24", result_ip(&r1, true)),
        "dev",
        "eth0",
    ]);
    let bad = Invocation::skiff("CHECK", "pod1", Some(&pod1)).run_in(&node, &with_prev(&conf, &r1));
    assert_eq!(bad.code(), 105, "{bad:?}");
    assert!(
        bad.json()["msg"].as_str().unwrap().contains("missing"),
        "{bad:?}"
    );

    // DEL twice (idempotent), then nothing of either pod is left.
    for _ in 0..2 {
        Invocation::skiff("DEL", "pod1", Some(&pod1))
            .run_in(&node, &with_prev(&conf, &r1))
            .ok();
    }
    Invocation::skiff("DEL", "pod2", Some(&pod2))
        .run_in(&node, &text)
        .ok();
    let gone =
        Invocation::skiff("CHECK", "pod1", Some(&pod1)).run_in(&node, &with_prev(&conf, &r1));
    assert_eq!(gone.code(), 3, "{gone:?}");
    assert_eq!(node.links(), vec!["lo", "skiff0"]);
    assert_eq!(pod1.links(), vec!["lo"]);
    assert!(!node.nat_rules().contains("skiff/"));
    assert!(!node
        .exec(&["ip6tables-save", "-t", "nat"])
        .contains("skiff/"));
    assert_eq!(allocations(data.path(), "dual"), 0);
}

#[test]
fn results_come_in_every_requested_version() {
    let p = unique("ver");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let data = tempfile::tempdir().unwrap();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = skiff_conf(version, "ver", "skv0", &["10.78.1.0/24"], data.path()).to_string();
        let r = Invocation::skiff("ADD", "c1", Some(&pod))
            .run_in(&node, &conf)
            .ok()
            .json();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{version}: {r}"
        );
        assert_eq!(
            r["interfaces"][0].get("mtu").is_some(),
            version == "1.1.0",
            "{version}: {r}"
        );
        Invocation::skiff("DEL", "c1", Some(&pod))
            .run_in(&node, &conf)
            .ok();
    }
    let v = Invocation::skiff("VERSION", "", None)
        .run_in(&node, r#"{"cniVersion":"1.0.0"}"#)
        .ok()
        .json();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn every_error_code_with_an_actionable_message() {
    let p = unique("err");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let data = tempfile::tempdir().unwrap();
    // A /30 holds exactly one pod address next to its gateway.
    let conf = skiff_conf("1.1.0", "err", "ske0", &["10.79.1.0/30"], data.path());
    let text = conf.to_string();
    let add =
        |cid: &str, stdin: &str| Invocation::skiff("ADD", cid, Some(&pod)).run_in(&node, stdin);
    let msg = |r: &Run| r.json()["msg"].as_str().unwrap().to_string();

    let r = add("c1", &text.replace("1.1.0", "0.2.0"));
    assert_eq!(r.code(), 1);
    assert!(
        r.json()["details"].as_str().unwrap().contains("1.1.0"),
        "{r:?}"
    );
    let r = add("c1", &text.replace("\"hairpinMode\"", "\"hairpinMod\""));
    assert_eq!(r.code(), 2);
    assert!(msg(&r).contains("hairpinMod"), "{r:?}");
    let mut no_netns = Invocation::skiff("ADD", "c1", None);
    no_netns.netns = None;
    let r = no_netns.run_in(&node, &text);
    assert_eq!(r.code(), 4);
    assert!(msg(&r).contains("CNI_NETNS"), "{r:?}");
    let blocker = data.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let mut io = conf.clone();
    io["ipam"]["dataDir"] = json!(blocker);
    assert_eq!(add("c1", &io.to_string()).code(), 5);
    let r = add("c1", "{\"cniVersion\": ");
    assert_eq!(r.code(), 6);
    let r = add("c1", &text.replace("10.79.1.0/30", "10.79.1.0/40"));
    assert_eq!(r.code(), 7);
    assert!(msg(&r).contains("10.79.1.0/40"), "{r:?}");
    let r = Invocation::skiff("CHECK", "nobody", Some(&pod))
        .run_in(&node, &with_prev(&conf, &json!({"cniVersion":"1.1.0"})));
    assert_eq!(r.code(), 3, "{r:?}");

    // 11: another process holds the store lock past our timeout.
    std::fs::create_dir_all(data.path().join("err")).unwrap();
    let lock = data.path().join("err").join("lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "20"])
        .spawn()
        .expect("flock(1)");
    // Wait until flock(1) holds the lock: a non-blocking attempt then fails
    // with the chosen exit code 99.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(&lock)
        .arg("true")
        .status()
        .expect("flock -n")
        .code()
        != Some(99)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "flock(1) never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut busy = Invocation::skiff("ADD", "c1", Some(&pod));
    busy.extra_env
        .push(("SKIFF_CNI_LOCK_TIMEOUT_MS".into(), "300".into()));
    let r = busy.run_in(&node, &text);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(r.code(), 11, "{r:?}");

    // 100 when the range is full, and STATUS then says 50.
    let first = add("c1", &text).ok().json();
    let r = add("c2", &text);
    assert_eq!(r.code(), 100);
    assert!(msg(&r).contains("10.79.1.1-10.79.1.2"), "{r:?}");
    let status = Invocation::skiff("STATUS", "", None).run_in(&node, &text);
    assert_eq!(status.code(), 50);

    // 101 when the pod already has the interface; the failed ADD leaves nothing.
    let bigger = skiff_conf("1.1.0", "err", "ske0", &["10.79.2.0/24"], data.path()).to_string();
    let links_before = node.links();
    let r = add("c3", &bigger);
    assert_eq!(r.code(), 101, "{r:?}");
    assert!(msg(&r).contains("eth0 already exists"), "{r:?}");
    assert_eq!(node.links(), links_before);
    assert_eq!(allocations(data.path(), "err"), 1);

    // 51 when pods are attached but the bridge is gone.
    Invocation::skiff("DEL", "c1", Some(&pod))
        .run_in(&node, &with_prev(&conf, &first))
        .ok();
    Invocation::skiff("STATUS", "", None)
        .run_in(&node, &bigger)
        .ok();
    let pod2 = NetnsGuard::new(&format!("{p}-pod2"));
    Invocation::skiff("ADD", "c4", Some(&pod2))
        .run_in(&node, &bigger)
        .ok();
    node.exec(&["ip", "link", "del", "ske0"]);
    assert_eq!(
        Invocation::skiff("STATUS", "", None)
            .run_in(&node, &bigger)
            .code(),
        51
    );
    // Unknown command and CNI_ARGS keys are environment errors too.
    assert_eq!(
        Invocation::skiff("FROB", "c4", Some(&pod2))
            .run_in(&node, &bigger)
            .code(),
        4
    );
    let mut args = Invocation::skiff("DEL", "c4", Some(&pod2));
    args.extra_env.push(("CNI_ARGS".into(), "FOO=bar".into()));
    assert_eq!(args.run_in(&node, &bigger).code(), 4);
    args.extra_env
        .push(("CNI_ARGS".into(), "FOO=bar;IgnoreUnknown=1".into()));
    args.run_in(&node, &bigger).ok();
    assert_eq!(allocations(data.path(), "err"), 0);
}

#[test]
fn del_works_without_netns_and_after_the_pod_is_gone() {
    let p = unique("gone");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let data = tempfile::tempdir().unwrap();
    let conf = skiff_conf("1.0.0", "gone", "skg0", &["10.80.1.0/24"], data.path()).to_string();
    {
        let pod = NetnsGuard::new(&format!("{p}-pod"));
        Invocation::skiff("ADD", "c1", Some(&pod))
            .run_in(&node, &conf)
            .ok();
        assert_eq!(node.links().len(), 3);
    }
    // The pod namespace is deleted before DEL, as a crashed runtime may do.
    let mut del = Invocation::skiff("DEL", "c1", None);
    del.netns = None;
    del.run_in(&node, &conf).ok();
    del.run_in(&node, &conf).ok();
    assert_eq!(node.links(), vec!["lo", "skg0"]);
    assert_eq!(allocations(data.path(), "gone"), 0);
}

#[test]
fn gc_removes_everything_not_listed_as_valid() {
    let p = unique("gc");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..3)
        .map(|i| NetnsGuard::new(&format!("{p}-pod{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let mut conf = skiff_conf("1.1.0", "gcnet", "skgc0", &["10.81.1.0/24"], data.path());
    conf["ipMasq"] = json!(true);
    for (i, pod) in pods.iter().enumerate() {
        Invocation::skiff("ADD", &format!("c{i}"), Some(pod))
            .run_in(&node, &conf.to_string())
            .ok();
    }
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    Invocation::skiff("GC", "", None)
        .run_in(&node, &conf.to_string())
        .ok();
    assert_eq!(allocations(data.path(), "gcnet"), 1);
    assert_eq!(node.links().len(), 3, "{:?}", node.links());
    let nat = node.nat_rules();
    assert!(
        nat.contains("skiff/gcnet/c1/") && !nat.contains("skiff/gcnet/c0/"),
        "{nat}"
    );
    assert!(pods[0].links() == vec!["lo"] && pods[1].links().len() == 2);
    conf["cni.dev/valid-attachments"] = json!([]);
    Invocation::skiff("GC", "", None)
        .run_in(&node, &conf.to_string())
        .ok();
    assert_eq!(allocations(data.path(), "gcnet"), 0);
    assert_eq!(node.links(), vec!["lo", "skgc0"]);
    assert!(!node.nat_rules().contains("skiff/"));
}

#[test]
fn delegates_ipam_to_reference_host_local() {
    let p = unique("hl");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "hlnet", "type": "skiff", "bridge": "skh0",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.82.1.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data.path()},
    });
    let r = Invocation::skiff("ADD", "c1", Some(&pod))
        .run_in(&node, &conf.to_string())
        .ok()
        .json();
    let ip = result_ip(&r, true);
    assert!(ip.starts_with("10.82.1."), "{r}");
    assert!(
        data.path().join("hlnet").join(&ip).is_file(),
        "host-local did not record {ip}"
    );
    assert!(node
        .exec(&["ip", "addr", "show", "skh0"])
        .contains("10.82.1.1/24"));
    Invocation::skiff("CHECK", "c1", Some(&pod))
        .run_in(&node, &with_prev(&conf, &r))
        .ok();
    // A failed ADD (interface exists) hands the address back to host-local.
    let r2 = Invocation::skiff("ADD", "c2", Some(&pod)).run_in(&node, &conf.to_string());
    assert_eq!(r2.code(), 101);
    Invocation::skiff("DEL", "c1", Some(&pod))
        .run_in(&node, &conf.to_string())
        .ok();
    let left: Vec<_> = std::fs::read_dir(data.path().join("hlnet"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "host-local still holds {left:?}");
    // A missing IPAM plugin is reported by name.
    let mut missing = conf.clone();
    missing["ipam"]["type"] = json!("no-such-ipam");
    let r = Invocation::skiff("ADD", "c3", Some(&pod)).run_in(&node, &missing.to_string());
    assert_eq!(r.code(), 104);
    assert!(r.stdout.contains("no-such-ipam"), "{r:?}");
}

#[test]
fn static_ips_from_cni_args_and_runtime_config() {
    let p = unique("st");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pods: Vec<NetnsGuard> = (0..3)
        .map(|i| NetnsGuard::new(&format!("{p}-pod{i}")))
        .collect();
    let data = tempfile::tempdir().unwrap();
    let conf = skiff_conf("1.1.0", "static", "skst0", &["10.83.1.0/24"], data.path());
    let with_args = |cmd: &str, cid: &str, pod: &NetnsGuard, args: &str| {
        let mut inv = Invocation::skiff(cmd, cid, Some(pod));
        inv.extra_env.push((
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAME=x;{args}"),
        ));
        inv.run_in(&node, &conf.to_string())
    };

    // CNI_ARGS IP= (host-local's convention).
    let r1 = with_args("ADD", "c1", &pods[0], "IP=10.83.1.50")
        .ok()
        .json();
    assert_eq!(r1["ips"][0]["address"], "10.83.1.50/24", "{r1}");
    assert!(pods[0]
        .exec(&["ip", "-4", "addr", "show", "eth0"])
        .contains("10.83.1.50/24"));
    // The `ips` capability: runtimeConfig {"ips": [...]}.
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.83.1.60/24"]});
    let r2 = Invocation::skiff("ADD", "c2", Some(&pods[1]))
        .run_in(&node, &rc.to_string())
        .ok()
        .json();
    assert_eq!(r2["ips"][0]["address"], "10.83.1.60/24", "{r2}");
    assert!(
        pods[0].ping("10.83.1.60"),
        "static pods cannot reach each other"
    );

    // Refused requests name the address and the reason, and leave nothing behind.
    let taken = with_args("ADD", "c3", &pods[2], "IP=10.83.1.50");
    assert_eq!(taken.code(), 107, "{taken:?}");
    let msg = taken.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("10.83.1.50") && msg.contains("already allocated to container c1"),
        "{msg}"
    );
    let gateway = with_args("ADD", "c3", &pods[2], "IP=10.83.1.1");
    assert_eq!(gateway.code(), 107, "{gateway:?}");
    assert!(gateway.stdout.contains("gateway"), "{gateway:?}");
    let mut outside = conf.clone();
    outside["runtimeConfig"] = json!({"ips": ["10.99.0.5/24"]});
    let r = Invocation::skiff("ADD", "c3", Some(&pods[2])).run_in(&node, &outside.to_string());
    assert_eq!(r.code(), 7, "{r:?}");
    let msg = r.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("10.99.0.5") && msg.contains("outside") && msg.contains("10.83.1.0/24"),
        "{msg}"
    );
    let bad = with_args("ADD", "c3", &pods[2], "IP=10.83.1.999");
    assert_eq!(bad.code(), 4, "{bad:?}");
    assert_eq!(allocations(data.path(), "static"), 2);
    assert_eq!(pods[2].links(), vec!["lo"]);

    // Once c1 is gone its address can be requested again.
    Invocation::skiff("DEL", "c1", Some(&pods[0]))
        .run_in(&node, &conf.to_string())
        .ok();
    let r3 = with_args("ADD", "c3", &pods[2], "IP=10.83.1.50")
        .ok()
        .json();
    assert_eq!(r3["ips"][0]["address"], "10.83.1.50/24", "{r3}");
    for (cid, pod) in [("c2", &pods[1]), ("c3", &pods[2])] {
        Invocation::skiff("DEL", cid, Some(pod))
            .run_in(&node, &conf.to_string())
            .ok();
    }
    assert_eq!(allocations(data.path(), "static"), 0);
}

/// A CNI 1.1.0 IPAM plugin (a shell script) that logs how it was called,
/// answers STATUS with code 50 once `full` exists next to it, and ADD with
/// code 11 (try again later) while `busy` does.
fn fake_ipam(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display();
    let script = format!(
        r#"#!/bin/sh
conf=$(cat)
printf 'cmd=%s cid=%s ifname=%s netns=%s\n%s\n' "$CNI_COMMAND" "${{CNI_CONTAINERID-unset}}" "${{CNI_IFNAME-unset}}" "${{CNI_NETNS-unset}}" "$conf" >> {d}/log
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
ADD) if [ -e {d}/busy ]; then echo '{{"cniVersion":"1.1.0","code":11,"msg":"pool p1 is being resized"}}'; exit 1; fi
    echo '{{"cniVersion":"1.1.0","ips":[{{"address":"10.84.1.7/24","gateway":"10.84.1.1"}}]}}' ;;
STATUS) if [ -e {d}/full ]; then echo '{{"cniVersion":"1.1.0","code":50,"msg":"pool p1 is full"}}'; exit 1; fi ;;
esac
"#
    );
    let path = dir.join("fake-ipam");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn gc_and_status_pass_through_to_delegated_ipam() {
    let p = unique("dg");
    let node = NetnsGuard::new(&format!("{p}-node"));
    let pod = NetnsGuard::new(&format!("{p}-pod"));
    let dir = tempfile::tempdir().unwrap();
    fake_ipam(dir.path());
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "dgnet", "type": "skiff", "bridge": "skdg0",
        "ipam": {"type": "fake-ipam", "pool": "p1", "dataDir": dir.path()},
    });
    let inv = |cmd: &str, cid: &str, pod: Option<&NetnsGuard>| {
        let mut i = Invocation::skiff(cmd, cid, pod);
        i.cni_path = format!("{}:{}", i.cni_path, dir.path().display());
        i
    };
    let r = inv("ADD", "c1", Some(&pod))
        .run_in(&node, &conf.to_string())
        .ok()
        .json();
    assert_eq!(r["ips"][0]["address"], "10.84.1.7/24", "{r}");
    assert!(log().contains("cmd=ADD cid=c1 ifname=eth0"), "{}", log());

    // STATUS: passed through with only CNI_COMMAND/CNI_PATH, and the
    // delegate's "not available" comes back as code 50 with its message.
    inv("STATUS", "", None)
        .run_in(&node, &conf.to_string())
        .ok();
    assert!(
        log().contains("cmd=STATUS cid=unset ifname=unset netns=unset"),
        "{}",
        log()
    );
    std::fs::write(dir.path().join("full"), "").unwrap();
    let st = inv("STATUS", "", None).run_in(&node, &conf.to_string());
    assert_eq!(st.code(), 50, "{st:?}");
    assert!(st.stdout.contains("pool p1 is full"), "{st:?}");

    // GC: the delegate gets the config with the valid list; skiff removes the
    // stale veth itself.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "other", "ifname": "eth0"}]);
    inv("GC", "", None).run_in(&node, &gc.to_string()).ok();
    let calls = log();
    let at = calls
        .find("cmd=GC cid=unset ifname=unset netns=unset\n")
        .unwrap_or_else(|| panic!("no GC call: {calls}"));
    let sent: Value = serde_json::from_str(calls[at..].lines().nth(1).expect("GC stdin")).unwrap();
    assert_eq!(
        sent["cni.dev/valid-attachments"][0]["containerID"], "other",
        "{sent}"
    );
    assert_eq!(sent["ipam"]["pool"], "p1");
    assert_eq!(pod.links(), vec!["lo"]);
    // ... and sends the delegate the DEL for the stale attachment, as a
    // delegate's GC may do nothing.
    assert!(
        calls[at..].contains("cmd=DEL cid=c1 ifname=eth0 netns=\n"),
        "{calls}"
    );

    // A delegate's well-known code (11: try again later) is passed through.
    std::fs::write(dir.path().join("busy"), "").unwrap();
    let busy = inv("ADD", "c2", Some(&pod)).run_in(&node, &conf.to_string());
    assert_eq!(busy.code(), 11, "{busy:?}");
    assert!(busy.stdout.contains("pool p1 is being resized"), "{busy:?}");
    assert_eq!(pod.links(), vec!["lo"]);

    // A delegate that predates 1.1.0 (Debian's host-local 1.1.1) is not sent
    // a command it does not know; the error says what to upgrade.
    let mut old = conf.clone();
    old["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.84.2.0/24"}]],
                         "dataDir": dir.path()});
    let st = inv("STATUS", "", None).run_in(&node, &old.to_string());
    assert_eq!(st.code(), 104, "{st:?}");
    let msg = st.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("host-local") && msg.contains("STATUS needs 1.1.0"),
        "{msg}"
    );
}
