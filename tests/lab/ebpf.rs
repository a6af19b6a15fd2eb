//! What the behaviour suite needs to run against `skiff proxy --mode ebpf`.
//!
//! The socket load balancer works per cgroup: only processes in the node's
//! cgroup v2 subtree have their connect()/sendmsg() to a ClusterIP
//! translated. So in ebpf mode every client "inside the cluster" (a pod or the
//! node itself) runs as a short helper process that joins the node's cgroup
//! and then enters the namespace; clients outside the nodes (underlay
//! clients) stay in-process and reach NodePorts and LoadBalancer IPs through
//! the tc programs like any outside machine.
//!
//! Each proxy gets its own cgroup and pin directory named after its node
//! namespace (unique per test), removed when the [`EbpfNode`] guard drops:
//! processes left in the cgroup are killed by PID, the programs detached and
//! their pins removed.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sockets::Reply;
use super::{Node, Ns};

/// Node namespace name → the cgroup its pods and the node's own clients join.
static CGROUPS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The cgroup a client in namespace `ns` joins, if its node runs the eBPF
/// data plane: the node's namespace itself and its pods (`<node>-<pod>`).
pub fn cgroup_for(ns: &str) -> Option<PathBuf> {
    let map = CGROUPS.lock().expect("cgroup registry");
    map.as_ref()?.iter().find_map(|(node, cg)| {
        (ns == node || ns.strip_prefix(node.as_str())?.starts_with('-')).then(|| cg.clone())
    })
}

/// The pin directory of the proxy of `node` in ebpf mode.
pub fn pin_dir(node: &Node) -> PathBuf {
    skiff_proxy::ebpf::EbpfConfig::default_pin_dir(node.ns.name())
}

/// The eBPF resources of one lab node's proxy; removed on drop.
pub struct EbpfNode {
    node_ns: String,
    cgroup: PathBuf,
    /// The proxy's pin directory.
    pub pin_dir: PathBuf,
}

impl EbpfNode {
    /// Creates the node's cgroup (below the cgroup v2 root) and registers it
    /// for the node's clients.
    pub fn new(node: &Node) -> EbpfNode {
        let name = format!("skiff-{}", node.ns.name());
        let cgroup = skiff_proxy::ebpf::ensure_subtree(Path::new(&name)).expect("node cgroup");
        let pin_dir = pin_dir(node);
        CGROUPS
            .lock()
            .expect("cgroup registry")
            .get_or_insert_with(HashMap::new)
            .insert(node.ns.name().to_string(), cgroup.clone());
        EbpfNode {
            node_ns: node.ns.name().to_string(),
            cgroup,
            pin_dir,
        }
    }

    /// `skiff proxy` arguments selecting this cgroup and pin directory.
    pub fn proxy_args(&self) -> Vec<String> {
        vec![
            "--ebpf-cgroup".into(),
            format!("skiff-{}", self.node_ns),
            "--ebpf-pin-dir".into(),
            self.pin_dir.display().to_string(),
        ]
    }

    /// Requires the proxy to run the eBPF data plane (not the iptables
    /// fallback): its socket programs and tc programs are attached, pinned.
    pub fn assert_attached(&self) {
        let links: Vec<String> = std::fs::read_dir(self.pin_dir.join("links"))
            .map(|rd| {
                rd.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            links.iter().any(|l| l == "skiff_connect4")
                && links.iter().any(|l| l == "tc-eth0-ingress"),
            "eBPF programs not attached: {links:?}"
        );
    }

    /// The cgroup's path.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

impl Drop for EbpfNode {
    fn drop(&mut self) {
        if let Some(map) = CGROUPS.lock().map(|mut m| m.take()).ok().flatten() {
            let rest: HashMap<String, PathBuf> = map
                .into_iter()
                .filter(|(node, _)| *node != self.node_ns)
                .collect();
            if let Ok(mut m) = CGROUPS.lock() {
                *m = Some(rest);
            }
        }
        let _ = skiff_proxy::ebpf::detach_and_unpin(&self.pin_dir);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs =
                std::fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
            if std::fs::remove_dir(&self.cgroup).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A command that joins `cgroup`, enters `ns` and runs python3 `script`
/// with `args`. The shell joins the cgroup before `ip netns exec`, which
/// remounts /sys in its own mount namespace.
fn python(cgroup: &Path, ns: &Ns, script: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(concat!(
            r#"echo $$ > "$0/cgroup.procs" && ns=$1 && py=$2 && shift 2 && "#,
            r#"exec ip netns exec "$ns" python3 -c "$py" "$@""#
        ))
        .arg(cgroup)
        .arg(ns.name())
        .arg(script)
        .args(args);
    cmd
}

/// Parses a helper's answer: `OK <reply>` or `ERR <errno>`.
fn answer(line: &str) -> io::Result<Reply> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("OK ") {
        return Reply::parse(rest)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, rest.to_string()));
    }
    match line
        .strip_prefix("ERR ")
        .and_then(|n| n.parse::<i32>().ok())
    {
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other(format!("client helper said {line:?}"))),
    }
}

/// Reports an OSError's errno; a timeout has none and counts as ETIMEDOUT.
const PY_ERRNO: &str = "def err(e):\n print('ERR %d' % (e.errno or 110), flush=True)\n";

/// One TCP request from `ns`, by a helper process in `cgroup`.
pub fn tcp_request(ns: &Ns, cgroup: &Path, addr: SocketAddr) -> io::Result<Reply> {
    let script = format!(
        "import socket, sys\n{PY_ERRNO}\
         host, port = sys.argv[1], int(sys.argv[2])\n\
         try:\n s = socket.create_connection((host, port), timeout=2)\n s.settimeout(2)\n data = b''\n\
         \x20while True:\n  d = s.recv(4096)\n  if not d: break\n  data += d\n\
         \x20print('OK ' + data.decode().strip(), flush=True)\n\
         except OSError as e:\n err(e)\n"
    );
    let out = python(
        cgroup,
        ns,
        &script,
        &[addr.ip().to_string(), addr.port().to_string()],
    )
    .stdin(Stdio::null())
    .output()?;
    answer(&String::from_utf8_lossy(&out.stdout))
}

/// A long-lived UDP socket in `ns` (one flow for all its requests), held by
/// a helper process in `cgroup` that is killed by PID on drop.
pub struct UdpHelper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl UdpHelper {
    /// Starts the helper with its socket bound to an ephemeral port.
    pub fn new(ns: &Ns, cgroup: &Path) -> UdpHelper {
        let script = format!(
            "import socket, sys\n{PY_ERRNO}\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 0))\ns.settimeout(0.5)\n\
             for line in sys.stdin:\n host, port = line.split()\n\
             \x20try:\n  s.sendto(b'ping', (host, int(port)))\n  d, a = s.recvfrom(512)\n\
             \x20 print('OK ' + d.decode().strip(), flush=True)\n\
             \x20except OSError as e:\n  err(e)\n"
        );
        let mut child = python(cgroup, ns, &script, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("UDP client helper");
        let stdin = child.stdin.take().expect("helper stdin");
        let stdout = BufReader::new(child.stdout.take().expect("helper stdout"));
        UdpHelper {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one datagram to `addr` and waits briefly for the reply.
    pub fn request(&mut self, addr: SocketAddr) -> io::Result<Reply> {
        writeln!(self.stdin, "{} {}", addr.ip(), addr.port())?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        answer(&line)
    }
}

impl Drop for UdpHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
