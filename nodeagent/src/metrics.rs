//! Resource usage of the node's pods for `kubectl top` and autoscaling,
//! read from their cgroups: CPU time (`cpuacct.usage` on cgroup v1 hosts,
//! `cpu.stat` `usage_usec` on v2) and memory working set (usage minus
//! inactive file pages, as upstream's kubelet). A sampler reads every
//! [`SAMPLE_EVERY`]; CPU usage is the rate between the last two readings.
//! Served on the agent's endpoint as `/stats/summary`, shaped like the
//! kubelet's Summary API (the fields metrics-server reads). Read-only: it
//! never creates or changes a cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::runtime::cgroup::NodeCgroups;

/// How often the cgroups are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Cumulative CPU time and current memory of one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use minus inactive file pages, in bytes.
    pub working_set: u64,
}

/// One reading of a cgroup.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    time: jiff::Timestamp,
    usage: Usage,
}

/// The last two readings of a cgroup.
#[derive(Debug, Clone, Copy)]
struct Series {
    previous: Option<Reading>,
    latest: Reading,
}

impl Series {
    /// CPU usage between the last two readings, in nanocores.
    fn nano_cores(&self) -> Option<u64> {
        let prev = self.previous?;
        let secs = self.latest.at.duration_since(prev.at).as_secs_f64();
        let used = self.latest.usage.cpu_ns.checked_sub(prev.usage.cpu_ns)?;
        (secs > 0.0).then(|| (used as f64 / secs) as u64)
    }

    fn to_json(self) -> (Value, Value) {
        let time = self.latest.time.to_string();
        let mut cpu = json!({
            "time": time,
            "usageCoreNanoSeconds": self.latest.usage.cpu_ns,
        });
        if let (Some(n), Some(prev)) = (self.nano_cores(), self.previous) {
            cpu["usageNanoCores"] = n.into();
            let window = self.latest.at.duration_since(prev.at).as_secs().max(1);
            cpu["window"] = format!("{window}s").into();
        }
        let memory = json!({"time": time, "workingSetBytes": self.latest.usage.working_set});
        (cpu, memory)
    }
}

/// Reads a file of one number.
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A value of a flat-keyed file such as `cpu.stat` or `memory.stat`.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU time of the cgroup at `dir` (v1 `cpuacct` or v2).
fn read_cpu(dir: &Path) -> Option<u64> {
    read_number(&dir.join("cpuacct.usage"))
        .or_else(|| read_key(&dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000))
}

/// Memory working set of the cgroup at `dir` (v1 `memory` or v2).
fn read_memory(dir: &Path) -> Option<u64> {
    let stat = dir.join("memory.stat");
    if let Some(usage) = read_number(&dir.join("memory.usage_in_bytes")) {
        let inactive = read_key(&stat, "total_inactive_file").unwrap_or(0);
        return Some(usage.saturating_sub(inactive));
    }
    let current = read_number(&dir.join("memory.current"))?;
    Some(current.saturating_sub(read_key(&stat, "inactive_file").unwrap_or(0)))
}

/// Usage of the cgroup that is `rel` below the CPU and memory roots.
fn read_usage(cpu_root: &Path, mem_root: &Path, rel: &Path) -> Option<Usage> {
    let cpu_ns = read_cpu(&cpu_root.join(rel))?;
    Some(Usage {
        cpu_ns,
        working_set: read_memory(&mem_root.join(rel)).unwrap_or(0),
    })
}

/// Subdirectory names of `dir`.
fn subdirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Reads the node's cgroup and every pod and container cgroup below it.
/// Keys: `""` for the node, `<uid>` for a pod, `<uid>/<container>` for a
/// container (restarts of one container are added up).
pub fn scan(cpu_root: &Path, mem_root: &Path) -> HashMap<String, Usage> {
    let mut out = HashMap::new();
    if let Some(u) = read_usage(cpu_root, mem_root, Path::new("")) {
        out.insert(String::new(), u);
    }
    for pod in subdirs(cpu_root) {
        let Some(uid) = pod.strip_prefix("pod-") else {
            continue;
        };
        let Some(u) = read_usage(cpu_root, mem_root, Path::new(&pod)) else {
            continue;
        };
        out.insert(uid.to_string(), u);
        for id in subdirs(&cpu_root.join(&pod)) {
            let Some(name) = container_name(uid, &id) else {
                continue;
            };
            if let Some(u) = read_usage(cpu_root, mem_root, &Path::new(&pod).join(&id)) {
                let e = out.entry(format!("{uid}/{name}")).or_default();
                e.cpu_ns += u.cpu_ns;
                e.working_set += u.working_set;
            }
        }
    }
    out
}

/// The container name in a runc ID `<uid>-<name>-<attempt>`.
fn container_name<'a>(uid: &str, id: &'a str) -> Option<&'a str> {
    let (name, attempt) = id.strip_prefix(uid)?.strip_prefix('-')?.rsplit_once('-')?;
    attempt.parse::<u32>().ok()?;
    Some(name)
}

/// Namespace and name of each pod UID, from the log directories
/// (`<ns>_<name>_<uid>`, see [`crate::logs::pod_dir`]).
fn pod_names(log_root: &Path) -> HashMap<String, (String, String)> {
    std::fs::read_dir(log_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let dir = e.file_name().to_string_lossy().into_owned();
            let mut parts = dir.splitn(3, '_');
            let (ns, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
            Some((uid.to_string(), (ns.to_string(), name.to_string())))
        })
        .collect()
}

/// The sampler and its readings.
pub struct Metrics {
    node: String,
    cgroups: NodeCgroups,
    log_root: PathBuf,
    series: Mutex<HashMap<String, Series>>,
}

impl Metrics {
    /// Metrics of node `node`'s cgroups; pods are named from `log_root`.
    pub fn new(node: &str, cgroups: NodeCgroups, log_root: PathBuf) -> Metrics {
        Metrics {
            node: node.to_string(),
            cgroups,
            log_root,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Where CPU and memory are read: the v1 `cpuacct` and `memory`
    /// hierarchies on hybrid hosts (they have per-container cgroups; they
    /// appear with the node's first pod), else the v2 subtree.
    fn roots(&self) -> (PathBuf, PathBuf) {
        let existing = |p: Option<PathBuf>| p.filter(|p| p.is_dir());
        let v2 = self.cgroups.node_v2().unwrap_or_default();
        let cpu = existing(self.cgroups.node_v1("cpuacct")).unwrap_or_else(|| v2.clone());
        let memory = existing(self.cgroups.node_v1("memory")).unwrap_or(v2);
        (cpu, memory)
    }

    /// Takes one reading of every cgroup.
    pub async fn sample(&self) {
        let (cpu_root, mem_root) = self.roots();
        let usage = scan(&cpu_root, &mem_root);
        let (at, time) = (Instant::now(), jiff::Timestamp::now());
        let mut series = self.series.lock().await;
        series.retain(|k, _| usage.contains_key(k));
        for (key, usage) in usage {
            let latest = Reading { at, time, usage };
            let previous = series.get(&key).map(|s| s.latest);
            series.insert(key, Series { previous, latest });
        }
    }

    /// Samples forever.
    pub async fn run(self: std::sync::Arc<Self>) {
        loop {
            self.sample().await;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// The Summary document: the node and every pod with its containers.
    pub async fn summary(&self) -> Value {
        let names = pod_names(&self.log_root);
        let series = self.series.lock().await;
        let mut node = json!({"nodeName": self.node});
        if let Some(s) = series.get("") {
            let (cpu, memory) = s.to_json();
            node["cpu"] = cpu;
            node["memory"] = memory;
        }
        let mut pods: Vec<Value> = series
            .iter()
            .filter(|(k, _)| !k.is_empty() && !k.contains('/'))
            .filter_map(|(uid, s)| {
                let (ns, name) = names.get(uid)?;
                let (cpu, memory) = s.to_json();
                let prefix = format!("{uid}/");
                let mut containers: Vec<Value> = series
                    .iter()
                    .filter_map(|(k, c)| {
                        let cname = k.strip_prefix(&prefix)?;
                        let (cpu, memory) = c.to_json();
                        Some(json!({"name": cname, "cpu": cpu, "memory": memory}))
                    })
                    .collect();
                containers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Some(json!({
                    "podRef": {"name": name, "namespace": ns, "uid": uid},
                    "cpu": cpu,
                    "memory": memory,
                    "containers": containers,
                }))
            })
            .collect();
        pods.sort_by_key(|p| p["podRef"]["name"].as_str().map(str::to_string));
        json!({"node": node, "pods": pods})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn reads_v1_and_v2_cgroup_files() {
        let dir = std::env::temp_dir().join(format!("skiff-metrics-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (v1cpu, v1mem, v2) = (dir.join("cpuacct"), dir.join("memory"), dir.join("v2"));
        let uid = "0b9c-11";
        write(&v1cpu.join("cpuacct.usage"), "5000\n");
        write(&v1mem.join("memory.usage_in_bytes"), "900\n");
        write(
            &v1mem.join("memory.stat"),
            "cache 1\ntotal_inactive_file 100\n",
        );
        write(&v1cpu.join(format!("pod-{uid}/cpuacct.usage")), "3000\n");
        for (attempt, ns) in [(0, "1000"), (1, "2000")] {
            let id = format!("{uid}-web-{attempt}");
            write(&v1cpu.join(format!("pod-{uid}/{id}/cpuacct.usage")), ns);
            write(
                &v1mem.join(format!("pod-{uid}/{id}/memory.usage_in_bytes")),
                "50",
            );
        }
        let got = scan(&v1cpu, &v1mem);
        assert_eq!(
            got[""],
            Usage {
                cpu_ns: 5000,
                working_set: 800
            }
        );
        assert_eq!(got[uid].cpu_ns, 3000);
        assert_eq!(
            got[&format!("{uid}/web")],
            Usage {
                cpu_ns: 3000,
                working_set: 100
            }
        );

        write(
            &v2.join(format!("pod-{uid}/cpu.stat")),
            "usage_usec 7\nuser_usec 5\n",
        );
        write(&v2.join(format!("pod-{uid}/memory.current")), "4096");
        write(
            &v2.join(format!("pod-{uid}/memory.stat")),
            "active_file 1\ninactive_file 96\n",
        );
        let got = scan(&v2, &v2);
        assert_eq!(
            got[uid],
            Usage {
                cpu_ns: 7000,
                working_set: 4000
            }
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn cpu_rate_is_the_difference_over_time() {
        let start = Instant::now();
        let reading = |secs: u64, cpu_ns: u64| Reading {
            at: start + Duration::from_secs(secs),
            time: jiff::Timestamp::UNIX_EPOCH,
            usage: Usage {
                cpu_ns,
                working_set: 0,
            },
        };
        let s = Series {
            previous: Some(reading(0, 1_000_000_000)),
            latest: reading(4, 3_000_000_000),
        };
        assert_eq!(s.nano_cores(), Some(500_000_000));
        let first = Series {
            previous: None,
            latest: reading(4, 1),
        };
        assert_eq!(first.nano_cores(), None);
        assert!(first.to_json().0.get("usageNanoCores").is_none());
    }

    #[test]
    fn container_names_come_from_runc_ids() {
        assert_eq!(container_name("u-1", "u-1-my-app-3"), Some("my-app"));
        assert_eq!(container_name("u-1", "u-2-app-0"), None);
        assert_eq!(container_name("u-1", "u-1-app-x"), None);
    }
}
