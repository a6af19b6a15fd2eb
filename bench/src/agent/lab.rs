//! The benchmark's node: a network namespace for `skiff agent`, and a guard
//! that removes what the agent leaves (runc containers, mounts under its data
//! dir, its `skiff-<node>` cgroups, its eBPF pins) and the namespace, also
//! after an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::run;

/// The node namespace and everything the agent leaves under its data dir;
/// removed on drop (after the agent, declared later, has been killed).
pub struct Lab {
    netns: String,
    node: String,
    agent_dir: PathBuf,
}

impl Lab {
    pub fn new(node: &str, agent_dir: &Path) -> Result<Lab> {
        let lab = Lab {
            netns: node.to_string(),
            node: node.to_string(),
            agent_dir: agent_dir.to_path_buf(),
        };
        run(Command::new("ip").args(["netns", "add", &lab.netns]))?;
        run(
            Command::new("ip").args(["netns", "exec", &lab.netns, "ip", "link", "set", "lo", "up"])
        )?;
        Ok(lab)
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let root = self.agent_dir.join("runc");
        let listed = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
            {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        let prefix = self.agent_dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
        std::thread::sleep(Duration::from_millis(200));
        for root in cgroup_mounts() {
            rmdir_tree(&root.join(format!("skiff-{}", self.node)));
        }
        // The agent's eBPF proxy pins maps and links so a restarted agent
        // resumes; the benchmark's node is gone for good.
        let _ = skiff_proxy::ebpf::detach_and_unpin(
            &skiff_proxy::ebpf::EbpfConfig::default_pin_dir(&self.node),
        );
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

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

fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
