//! Removing a `skiff up` cluster from its [`UpState`], in an order that lets
//! each step succeed: agents first (so nothing recreates pods), then their
//! runc containers (the per-container shims exit with them), mounts under the
//! data directory (pod namespaces, rootfs overlays, volumes), the nodes'
//! `skiff-<node>` cgroups and `/sys/fs/bpf/skiff/<node>` pins, the server,
//! and last the namespaces, which take every link and iptables rule with them.
//!
//! Every step is best effort and idempotent: it runs after crashes, possibly
//! twice, and reports what it could not remove instead of stopping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};

use super::lab;
use super::processes;
use super::state::UpState;

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long container shims get to exit by themselves.
const SHIM_GRACE: Duration = Duration::from_secs(5);
/// How long cgroups may stay busy while the last processes in them exit.
const CGROUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Removes everything `state` records; returns what could not be removed.
pub fn teardown(state: &UpState) -> Vec<String> {
    let mut problems = Vec::new();
    for node in &state.nodes {
        if let Some(pid) = node.agent_pid {
            processes::stop(pid, &node.data_dir, STOP_GRACE);
        }
    }
    for node in &state.nodes {
        delete_containers(&node.data_dir.join("runc"));
    }
    // The agents' per-container shims exit once their container is gone.
    processes::stop_all_under(&state.data_dir.join("nodes"), SHIM_GRACE);
    unmount_under(&state.data_dir, &mut problems);
    let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
    remove_cgroups(&names, &mut problems);
    for name in &names {
        let pins = skiff_proxy::ebpf::EbpfConfig::default_pin_dir(name);
        if let Err(e) = skiff_proxy::ebpf::detach_and_unpin(&pins) {
            problems.push(format!("bpffs pins {}: {e}", pins.display()));
        }
    }
    if let Some(pid) = state.server_pid {
        processes::stop(pid, &state.server_dir, STOP_GRACE);
    }
    for ns in names.iter().copied().chain(state.underlay_netns.as_deref()) {
        if let Err(e) = lab::delete_netns(ns) {
            problems.push(format!("network namespace {ns}: {e:#}"));
        }
    }
    for dir in [state.server_dir.clone(), state.data_dir.join("nodes")] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    for file in ["admin.kubeconfig", "busybox.tar"] {
        let _ = std::fs::remove_file(state.data_dir.join(file));
    }
    problems
}

/// `runc delete --force` of every container under `root`.
fn delete_containers(root: &Path) {
    if !root.exists() {
        return;
    }
    let listed = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output();
    let Ok(out) = listed else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let id = id.trim();
        if id.is_empty() {
            continue;
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id])
            .output();
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes spaces and tabs as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

fn unmount_under(dir: &Path, problems: &mut Vec<String>) {
    // Stacked mounts on one point need one umount each; a few rounds do.
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    for m in mounts_under(dir) {
        problems.push(format!("mount {} is still there", m.display()));
    }
}

/// Every cgroup hierarchy's mount point (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Removes `skiff-<node>` (and everything below) in every hierarchy,
/// retrying while the last container processes exit.
fn remove_cgroups(nodes: &[&str], problems: &mut Vec<String>) {
    let dirs: Vec<PathBuf> = cgroup_mounts()
        .into_iter()
        .flat_map(|m| {
            nodes
                .iter()
                .map(move |n| m.join(skiff_proxy::ebpf::node_cgroup(n)))
        })
        .collect();
    let deadline = Instant::now() + CGROUP_TIMEOUT;
    loop {
        for d in &dirs {
            rmdir_tree(d);
        }
        let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for d in left {
                problems.push(format!("cgroup {} is still busy", d.display()));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// cgroup directories are removed bottom-up with rmdir (their files cannot be unlinked).
fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
