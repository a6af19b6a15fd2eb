//! What a `skiff up` cluster could leave behind on the machine, looked up
//! from the outside (not from its state file): network namespaces and root
//! namespace links with the cluster's prefix, `skiff-<prefix>...` cgroups in
//! every hierarchy, bpffs pins under /sys/fs/bpf/skiff, mounts and runc state
//! under the data directory, and processes started for it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything of cluster `prefix` (data dir `dir`) still present, described.
pub fn find(prefix: &str, dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            left.push(format!("network namespace {name}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output();
    if let Ok(out) = links {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(prefix) {
                left.push(format!("root namespace link: {line}"));
            }
        }
    }
    for mount in cgroup_mounts() {
        for e in std::fs::read_dir(&mount).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("skiff-{prefix}")) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    for e in std::fs::read_dir(skiff_proxy::ebpf::PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            left.push(format!("bpffs pins {}", e.path().display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if Path::new(m).starts_with(dir) {
            left.push(format!("mount {m}"));
        }
    }
    let nodes = dir.join("nodes");
    if nodes.exists() {
        left.push(format!("agent data (runc state) {}", nodes.display()));
    }
    left.extend(processes_mentioning(dir));
    left
}

/// Every cgroup hierarchy's mount point.
fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Live processes with an argument under `dir` (server, agents, shims).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a.starts_with(needle)) {
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("process {name}: {shown}"));
        }
    }
    found
}
