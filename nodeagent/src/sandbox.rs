//! Pod sandboxes: the network, IPC and UTS namespaces all containers of a pod
//! share, held by bind mounts under `<data-dir>/pods/<uid>/ns/` (no pause
//! process), the pod's interface from the CNI library (in-process ADD/DEL in
//! the node's network namespace), and the `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` files bind-mounted into every container.
//!
//! Namespaces are created on a dedicated short-lived thread that unshares and
//! then exits, so no agent thread ever changes namespace.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::{Deserialize, Serialize};
use skiff_cni::{Attachment, NetConf, Netns};

/// Errors setting up or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file of the sandbox.
    #[error("sandbox file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// unshare/mount/sethostname failed.
    #[error("creating the pod namespaces failed at {step}: {source}; the agent must run as root")]
    Namespace {
        step: String,
        #[source]
        source: nix::Error,
    },
    /// The CNI library failed.
    #[error("CNI {op} for pod {pod} failed: {message}")]
    Cni {
        op: &'static str,
        pod: String,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// DNS settings the agent writes into pods.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// The node-local DNS address (`--cluster-dns`).
    pub nameserver: String,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
}

/// What a created sandbox has, persisted as `sandbox.json` for adoption after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Pod addresses from CNI ADD, IPv4 first (the node's IP for hostNetwork).
    pub ips: Vec<IpAddr>,
    /// The pod runs in the node's network and UTS namespaces (no CNI).
    #[serde(default)]
    pub host_network: bool,
}

/// The node's network, which hostNetwork pods join instead of getting their own.
#[derive(Debug, Clone)]
pub struct HostNet {
    /// The node's network namespace file (`/proc/self/ns/net` without `--netns`).
    pub netns: PathBuf,
    /// The node's InternalIP, the pod's IP.
    pub ip: IpAddr,
}

/// Whether the pod asks for the node's network namespace.
pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The sandbox paths of one pod.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    pub dir: PathBuf,
}

impl SandboxPaths {
    /// The paths of the pod whose directory is `pod_dir`.
    pub fn new(pod_dir: &Path) -> SandboxPaths {
        SandboxPaths {
            dir: pod_dir.to_path_buf(),
        }
    }
    pub fn netns(&self) -> PathBuf {
        self.dir.join("ns/net")
    }
    pub fn ipcns(&self) -> PathBuf {
        self.dir.join("ns/ipc")
    }
    pub fn utsns(&self) -> PathBuf {
        self.dir.join("ns/uts")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("etc/hosts")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("etc/hostname")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("etc/resolv.conf")
    }
    fn info(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }

    /// The saved sandbox info, if the sandbox was completed earlier.
    pub fn load(&self) -> Option<SandboxInfo> {
        let text = std::fs::read_to_string(self.info()).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The pod's hostname: spec.hostname or the pod name, at most 63 characters.
pub fn pod_hostname(pod: &Pod) -> String {
    let spec_host = pod.spec.as_ref().and_then(|s| s.hostname.clone());
    let name = spec_host.unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let trimmed: String = name.chars().take(63).collect();
    trimmed.trim_end_matches(['-', '.']).to_string()
}

/// Creates the pod's namespaces with `hostname` set in its UTS namespace; with
/// `host_netns` (hostNetwork) the node's network namespace and the agent's UTS
/// namespace are bind-mounted instead and only IPC is new.
fn create_namespaces(
    paths: &SandboxPaths,
    hostname: Option<&str>,
    host_netns: Option<&Path>,
) -> Result<(), SandboxError> {
    let ns_dir = paths.dir.join("ns");
    std::fs::create_dir_all(&ns_dir).map_err(io(&ns_dir))?;
    let targets = [
        ("net", paths.netns()),
        ("ipc", paths.ipcns()),
        ("uts", paths.utsns()),
    ];
    for (_, t) in &targets {
        File::create(t).map_err(io(t))?;
    }
    let hostname = hostname.map(str::to_string);
    let host_netns = host_netns.map(Path::to_path_buf);
    let ns = |step: &str| {
        let step = step.to_string();
        move |source| SandboxError::Namespace { step, source }
    };
    std::thread::spawn(move || -> Result<(), SandboxError> {
        // This thread alone moves into the new namespaces and ends right after.
        // The UTS namespace is joined from the agent's own (before unshare) for hostNetwork.
        let host_uts = PathBuf::from("/proc/self/ns/uts");
        let flags = if host_netns.is_some() {
            CloneFlags::CLONE_NEWIPC
        } else {
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS
        };
        unshare(flags).map_err(ns("unshare"))?;
        if let Some(h) = &hostname {
            nix::unistd::sethostname(h).map_err(ns("sethostname"))?;
        }
        for (kind, target) in &targets {
            let source = match (*kind, &host_netns) {
                ("net", Some(node)) => node.clone(),
                ("uts", Some(_)) => host_uts.clone(),
                _ => PathBuf::from(format!("/proc/thread-self/ns/{kind}")),
            };
            mount(
                Some(&source),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(ns(&format!("bind-mounting {}", target.display())))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| SandboxError::Namespace {
        step: "namespace thread panicked".into(),
        source: nix::Error::EINVAL,
    })?
}

/// Brings `lo` up inside the pod namespace.
async fn loopback_up(pod_ns: &Netns) -> Result<(), String> {
    use futures::TryStreamExt;
    let h = pod_ns.netlink().map_err(|e| e.to_string())?;
    let mut links = h.link().get().match_name("lo").execute();
    if let Some(link) = links.try_next().await.map_err(|e| e.to_string())? {
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(link.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn attachment(uid: &str, netns: Option<PathBuf>) -> Attachment {
    Attachment {
        container_id: uid.to_string(),
        ifname: "eth0".into(),
        netns,
        args: String::new(),
        cni_path: Vec::new(),
    }
}

/// Creates the sandbox of `pod` (idempotent: a completed sandbox is reused).
pub async fn create(
    paths: &SandboxPaths,
    pod: &Pod,
    conf: &NetConf,
    node: &Netns,
    dns: &DnsSettings,
    host: &HostNet,
) -> Result<SandboxInfo, SandboxError> {
    if let Some(info) = paths.load() {
        return Ok(info);
    }
    if is_host_network(pod) {
        return create_host_network(paths, pod, dns, host);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    let hostname = pod_hostname(pod);
    // A half-made sandbox from a crash is removed and made again.
    teardown_namespaces(paths);
    create_namespaces(paths, Some(&hostname), None)?;
    let pod_ns = Netns::open(paths.netns()).map_err(|e| SandboxError::Cni {
        op: "ADD",
        pod: pod_name.clone(),
        message: e.to_string(),
    })?;
    loopback_up(&pod_ns)
        .await
        .map_err(|message| SandboxError::Cni {
            op: "ADD (loopback)",
            pod: pod_name.clone(),
            message,
        })?;
    let result = skiff_cni::add(conf, &attachment(&uid, Some(paths.netns())), node)
        .await
        .map_err(|e| SandboxError::Cni {
            op: "ADD",
            pod: pod_name.clone(),
            message: e.to_string(),
        })?;
    let mut ips: Vec<IpAddr> = result.ips.iter().map(|c| c.address.ip()).collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    let info = SandboxInfo {
        ips,
        host_network: false,
    };
    write_etc_files(paths, pod, &hostname, &info, dns)?;
    let text = serde_json::to_vec(&info).unwrap_or_default();
    std::fs::write(paths.info(), text).map_err(io(&paths.info()))?;
    Ok(info)
}

/// A hostNetwork sandbox: the node's network and UTS namespaces bind-mounted
/// in place of new ones (only IPC is the pod's own), the node's IP, no CNI.
fn create_host_network(
    paths: &SandboxPaths,
    pod: &Pod,
    dns: &DnsSettings,
    host: &HostNet,
) -> Result<SandboxInfo, SandboxError> {
    teardown_namespaces(paths);
    create_namespaces(paths, None, Some(&host.netns))?;
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| pod_hostname(pod));
    let info = SandboxInfo {
        ips: vec![host.ip],
        host_network: true,
    };
    write_etc_files(paths, pod, &hostname, &info, dns)?;
    let text = serde_json::to_vec(&info).unwrap_or_default();
    std::fs::write(paths.info(), text).map_err(io(&paths.info()))?;
    Ok(info)
}

/// Writes /etc/hosts, /etc/hostname and /etc/resolv.conf of the pod.
fn write_etc_files(
    paths: &SandboxPaths,
    pod: &Pod,
    hostname: &str,
    info: &SandboxInfo,
    dns: &DnsSettings,
) -> Result<(), SandboxError> {
    let etc = paths.dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(io(&etc))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let fqdn = spec
        .subdomain
        .as_ref()
        .map(|sub| format!("{hostname}.{sub}.{ns}.svc.{}", dns.cluster_domain));
    for ip in &info.ips {
        match &fqdn {
            Some(f) => hosts.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    for alias in spec.host_aliases.iter().flatten() {
        hosts.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    std::fs::write(paths.hosts(), hosts).map_err(io(&paths.hosts()))?;
    std::fs::write(paths.hostname(), format!("{hostname}\n")).map_err(io(&paths.hostname()))?;
    let resolv = resolv_conf(pod, dns);
    std::fs::write(paths.resolv_conf(), resolv).map_err(io(&paths.resolv_conf()))
}

/// The pod's resolv.conf per dnsPolicy and dnsConfig.
pub fn resolv_conf(pod: &Pod, dns: &DnsSettings) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        // Upstream: a hostNetwork pod resolves like its node unless it asks
        // for ClusterFirstWithHostNet.
        "ClusterFirst" if spec.host_network == Some(true) => "Default",
        p => p,
    };
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "None" => (vec![], vec![], vec![]),
            "Default" => host_resolv(),
            _ => {
                let d = &dns.cluster_domain;
                (
                    vec![dns.nameserver.clone()],
                    vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
                    vec!["ndots:5".into()],
                )
            }
        };
    if let Some(cfg) = &spec.dns_config {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        search.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The node's own resolver settings (dnsPolicy Default).
fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut s, mut q, mut o) = (vec![], vec![], vec![]);
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => s.extend(words.map(str::to_string)),
            Some("search") => q.extend(words.map(str::to_string)),
            Some("options") => o.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    (s, q, o)
}

/// Unmounts and removes the namespace files (idempotent).
fn teardown_namespaces(paths: &SandboxPaths) {
    for p in [paths.netns(), paths.ipcns(), paths.utsns()] {
        let _ = umount2(&p, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&p);
    }
}

/// Removes the sandbox: CNI DEL (frees the IP), namespaces, files. Idempotent.
pub async fn remove(
    paths: &SandboxPaths,
    uid: &str,
    conf: &NetConf,
    node: &Netns,
) -> Result<(), SandboxError> {
    let netns = paths.netns();
    let ns_arg = netns.exists().then(|| netns.clone());
    // A hostNetwork pod has no CNI attachment; its ns/net is the node's.
    if !paths.load().is_some_and(|i| i.host_network) {
        skiff_cni::del(conf, &attachment(uid, ns_arg), node)
            .await
            .map_err(|e| SandboxError::Cni {
                op: "DEL",
                pod: uid.to_string(),
                message: e.to_string(),
            })?;
    }
    teardown_namespaces(paths);
    let _ = std::fs::remove_file(paths.info());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cluster_first_resolv_conf_searches_namespace() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "web"},
            "spec": {"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}}
        }));
        let dns = DnsSettings {
            nameserver: "169.254.20.10".into(),
            cluster_domain: "cluster.local".into(),
        };
        assert_eq!(
            resolv_conf(&p, &dns),
            "search web.svc.cluster.local svc.cluster.local cluster.local\nnameserver 169.254.20.10\noptions ndots:2\n"
        );
    }

    #[test]
    fn none_policy_uses_dns_config_only() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "web"},
            "spec": {"containers": [], "dnsPolicy": "None",
                     "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["x.test"]}}
        }));
        let dns = DnsSettings {
            nameserver: "169.254.20.10".into(),
            cluster_domain: "cluster.local".into(),
        };
        assert_eq!(resolv_conf(&p, &dns), "search x.test\nnameserver 1.2.3.4\n");
    }
}
