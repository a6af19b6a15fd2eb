//! `kubectl attach` end to end: kubectl → `skiff server` (pods/attach) → the
//! node agent's `/attach` → the container's output as its shim records it,
//! over the websocket channel protocol. Output only: `-i` gets a clear error.

mod agent_support;
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use agent_support::{wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

/// How long kubectl attach may take to connect and to end.
const TIMEOUT: Duration = Duration::from_secs(60);

fn node_name(test: &str) -> String {
    format!("sa{}-{test}", std::process::id() % 10_000)
}

/// A pod whose container says `waiting` twice a second until `/tmp/go`
/// exists, then writes `final-err` to stderr and `final-out` to stdout, and
/// exits.
fn talker(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    stdin: true
    command: ["sh", "-c", "while [ ! -f /tmp/go ]; do echo waiting; sleep 0.5; done; echo final-err >&2; sleep 0.5; echo final-out"]
"#
    )
}

/// kubectl attach running in the background: stdout line by line, stderr
/// collected; killed by its PID when dropped.
struct Attached {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Attached {
    fn start(server: &TestServer, args: &[&str]) -> Attached {
        let mut cmd = server.kubectl_command(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl attach");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Attached {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for a stdout line equal to `want`.
    fn wait_for(&mut self, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line == want;
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "kubectl attach printed no {want:?}; stdout so far: {:?}",
            self.seen
        );
    }

    /// Waits for kubectl to exit by itself; its exit code and stderr.
    fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl attach did not end after the container exited; stdout: {:?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(100));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn attach_streams_the_containers_output_until_it_exits() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("out"));
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &talker("talker"));
    wait_running(&server, "talker");

    // stdin needs the shim to keep the container's input open: it does not,
    // and the error says so.
    let err = server.kubectl_fails(&["attach", "-i", "talker", "-c", "main"]);
    assert!(err.contains("attaching to stdin is not supported"), "{err}");

    let mut attached = Attached::start(&server, &["attach", "talker", "-c", "main"]);
    // New output arrives while attached...
    attached.wait_for("waiting");
    server.kubectl_ok(&["exec", "talker", "--", "touch", "/tmp/go"]);
    // ...on its own stream, and the attach ends with the container.
    attached.wait_for("final-out");
    let (code, stderr) = attached.wait_exit();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("final-err"), "{stderr}");

    // A completed pod cannot be attached to.
    agent_support::wait_for("talker to succeed", TIMEOUT, || {
        let phase = agent_support::pod_json(&server, "talker")?["status"]["phase"].clone();
        (phase == "Succeeded").then_some(())
    });
    let err = server.kubectl_fails(&["attach", "talker", "-c", "main"]);
    assert!(err.contains("completed pod"), "{err}");
}
