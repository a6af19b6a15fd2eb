//! Upgrades over pinned state: a map pinned by an older build with another
//! layout is replaced on load (not reused as it is), the programs left
//! attached by the old build are replaced by this build's, and traffic flows
//! through the new maps.

mod proxy_ebpf_support;

use std::process::Command;

use proxy_ebpf_support::{
    endpoint, http_server, map_of, service, unique, veth, wait_until, Netns, Plane,
};
use skiff_proxy::ebpf::{map_layouts, pinned_layout, EbpfDataplane};
use skiff_proxy::model::{Changes, Protocol};
use skiff_proxy::Dataplane;

const CLIENT_IP: &str = "10.78.0.1";
const BACKEND_IP: &str = "10.78.0.2";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The id of the bpf_link pinned at `pin` (`bpftool link show pinned`).
fn link_id(pin: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool link show: {e}: {}", text(&out)));
    v["id"].as_u64().expect("link id")
}

/// The connections counted for `frontend` in the status view.
fn connections(plane: &mut Plane, frontend: &str) -> u64 {
    let status = plane.dp().status().expect("status").to_string();
    status
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(frontend)?
                .strip_prefix(" ClusterIP connections=")
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no line for {frontend}: {status}"))
}

#[test]
fn a_pinned_map_with_an_old_layout_is_replaced_and_traffic_flows() {
    let mut plane = Plane::new("lay");
    let client = Netns::new(&unique("layc"));
    let backend = Netns::new(&unique("layb"));
    veth(&client, CLIENT_IP, &backend, BACKEND_IP);
    let _web = http_server(&backend, 8080, "backend-a");
    wait_until("the backend HTTP server", || {
        client
            .run_in_cgroup(
                None,
                &format!("timeout 2 busybox wget -qO- http://{BACKEND_IP}:8080/"),
            )
            .status
            .success()
    });
    let web = service(
        "web",
        "10.96.0.30",
        80,
        Protocol::Tcp,
        vec![endpoint(BACKEND_IP, 8080, false)],
    );
    let map = map_of(&[], vec![web]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    let get = |plane: &Plane| {
        client.run_in_cgroup(
            Some(&plane.cgroup),
            "timeout 3 busybox wget -qO- http://10.96.0.30/",
        )
    };
    assert_eq!(text(&get(&plane)), "backend-a");
    assert_eq!(connections(&mut plane, "10.96.0.30:80/tcp"), 1);

    // A restart of the same build keeps the attached links as they are.
    let connect4 = plane.cfg.pin_dir.join("links").join("skiff_connect4");
    let before = link_id(&connect4);
    plane.dp = None;
    plane.dp = Some(EbpfDataplane::new(plane.cfg.clone()).expect("restart"));
    assert_eq!(link_id(&connect4), before, "same build: link kept");

    // An older build ran here: its per-service counters were 24 bytes, and
    // its programs stay attached (links pinned) while no proxy runs.
    plane.dp = None;
    let pin = plane.cfg.pin_dir.join("SKIFF_COUNTERS");
    std::fs::remove_file(&pin).expect("unpin the counters");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "24",
            "entries",
            "65536",
            "name",
            "SKIFF_COUNTERS",
        ])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {}", text(&out));
    assert_eq!(pinned_layout(&pin).expect("old pin").value_size, 24);

    // The new build starts on that pin directory.
    plane.dp = Some(EbpfDataplane::new(plane.cfg.clone()).expect("load over the old pins"));
    let want = map_layouts()
        .expect("this build's layouts")
        .into_iter()
        .find_map(|(name, l)| (name == "SKIFF_COUNTERS").then_some(l))
        .expect("the counters map");
    assert_eq!(want.value_size, 32, "four u64 counters");
    assert_eq!(
        pinned_layout(&pin).expect("new pin"),
        want,
        "the pin has this build's layout"
    );
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    assert_eq!(text(&get(&plane)), "backend-a", "traffic after the upgrade");
    assert_eq!(text(&get(&plane)), "backend-a");
    // Counted by this build's programs in the new map: the old programs,
    // which used the old map, are no longer attached.
    assert_eq!(connections(&mut plane, "10.96.0.30:80/tcp"), 2);
    assert_ne!(
        link_id(&connect4),
        before,
        "the old program's link replaced"
    );
    let links = skiff_proxy::ebpf::SOCK_PROGRAMS
        .iter()
        .filter(|n| plane.cfg.pin_dir.join("links").join(n).exists())
        .count();
    assert_eq!(links, 8, "every socket program pinned again");
}
