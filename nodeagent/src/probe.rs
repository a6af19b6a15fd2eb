//! Liveness, readiness and startup probes (exec through `runc exec`, httpGet
//! and tcpSocket from sockets made in the node's network namespace) with the
//! upstream defaults: period 10 s, timeout 1 s, success 1, failure 3.
//! Each probe of a running container is a task that writes its verdict into
//! [`ProbeStatus`]; the pod worker reads it on every sync.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::task::JoinHandle;

use crate::runtime::runc::Runc;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// The verdicts of one container's probes.
#[derive(Debug, Default)]
pub struct ProbeStatus {
    /// Startup probe passed (or there is none).
    pub started: AtomicBool,
    /// Readiness probe passing (or there is none).
    pub ready: AtomicBool,
    /// Liveness or startup probe failed: the container must be restarted.
    pub failed: AtomicBool,
    /// Which probe failed, for the event and status message.
    pub failed_by: std::sync::OnceLock<String>,
    /// Failed readiness probe attempts so far (each is an Unhealthy event).
    pub readiness_failures: AtomicU32,
}

/// Where probes go.
#[derive(Debug, Clone)]
pub struct Target {
    pub runc: Runc,
    pub runc_id: String,
    pub pod_ip: Option<IpAddr>,
    pub node_netns: Option<PathBuf>,
    pub ports: Vec<ContainerPort>,
}

/// Running probe tasks of a container; dropped = stopped.
#[derive(Debug, Default)]
pub struct ProbeTasks(Vec<JoinHandle<()>>);

impl Drop for ProbeTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn port_of(port: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Host header, path and extra headers of an HTTP probe.
type HttpGet = (String, String, Vec<(String, String)>);

/// Connects from the node namespace and optionally sends an HTTP GET.
fn connect_probe(
    netns: Option<PathBuf>,
    addr: SocketAddr,
    timeout: Duration,
    http: Option<HttpGet>,
) -> bool {
    let attempt = move || -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        let Some((host, path, headers)) = http else {
            return true;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let mut req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        if stream.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            match stream.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .is_some_and(|c| (200..400).contains(&c))
    };
    match netns {
        Some(p) => match skiff_cni::Netns::open(p) {
            Ok(ns) => ns.run(attempt).unwrap_or(false),
            Err(_) => false,
        },
        None => attempt(),
    }
}

/// Runs `probe` once.
pub async fn run_once(probe: &Probe, t: &Target) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return matches!(t.runc.exec(&t.runc_id, &cmd, timeout).await, Ok(o) if o.exit_code == 0);
    }
    let (host, port, http) = if let Some(h) = &probe.http_get {
        let Some(port) = port_of(&h.port, &t.ports) else {
            return false;
        };
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        (h.host.clone(), port, Some((path, headers)))
    } else if let Some(s) = &probe.tcp_socket {
        let Some(port) = port_of(&s.port, &t.ports) else {
            return false;
        };
        (s.host.clone(), port, None)
    } else {
        // gRPC probes are not supported: treat as passing rather than killing the pod.
        return true;
    };
    let ip = host.and_then(|h| h.parse::<IpAddr>().ok()).or(t.pod_ip);
    let Some(ip) = ip else { return false };
    let addr = SocketAddr::new(ip, port);
    let http = http.map(|(path, headers)| (addr.to_string(), path, headers));
    let netns = t.node_netns.clone();
    tokio::task::spawn_blocking(move || connect_probe(netns, addr, timeout, http))
        .await
        .unwrap_or(false)
}

/// Starts the probe tasks of a container; sets the defaults for absent probes.
pub fn start(
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    target: Target,
    status: Arc<ProbeStatus>,
) -> ProbeTasks {
    status.started.store(startup.is_none(), Ordering::SeqCst);
    status.ready.store(readiness.is_none(), Ordering::SeqCst);
    let mut tasks = Vec::new();
    for (kind, probe) in [
        (Kind::Startup, startup),
        (Kind::Liveness, liveness),
        (Kind::Readiness, readiness),
    ] {
        if let Some(p) = probe {
            tasks.push(tokio::spawn(probe_loop(
                kind,
                p,
                target.clone(),
                status.clone(),
            )));
        }
    }
    ProbeTasks(tasks)
}

async fn probe_loop(kind: Kind, probe: Probe, target: Target, status: Arc<ProbeStatus>) {
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let (mut ok_run, mut fail_run) = (0, 0);
    loop {
        if kind != Kind::Startup && !status.started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if run_once(&probe, &target).await {
            ok_run += 1;
            fail_run = 0;
        } else {
            fail_run += 1;
            ok_run = 0;
            if kind == Kind::Readiness {
                status.readiness_failures.fetch_add(1, Ordering::SeqCst);
            }
        }
        match kind {
            Kind::Startup if ok_run >= 1 => {
                status.started.store(true, Ordering::SeqCst);
                return;
            }
            Kind::Startup | Kind::Liveness if fail_run >= failure_threshold => {
                let _ = status.failed_by.set(match kind {
                    Kind::Startup => "Startup probe failed".into(),
                    _ => "Liveness probe failed".into(),
                });
                status.failed.store(true, Ordering::SeqCst);
                return;
            }
            Kind::Readiness if ok_run >= success_threshold => {
                status.ready.store(true, Ordering::SeqCst)
            }
            Kind::Readiness if fail_run >= failure_threshold => {
                status.ready.store(false, Ordering::SeqCst)
            }
            _ => {}
        }
        tokio::time::sleep(period).await;
    }
}
