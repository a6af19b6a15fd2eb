//! Clients the end-to-end tests run against a cluster: a bounded request
//! loop from the underlay namespace (the "outside" of the nodes), and a
//! line-by-line TCP client in a node namespace that keeps one connection open.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// GETs of `urls` from namespace `netns` (curl, 3 s each), in turn, one
/// every 100 ms until `stop` is set, bounded at 1500 requests. A request
/// fails unless its body starts with `expect`. Returns `(answered, failures)`.
pub fn request_loop(
    netns: String,
    urls: Vec<String>,
    expect: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u32, Vec<String>)> {
    thread::spawn(move || {
        let mut answered = 0;
        let mut failures = Vec::new();
        for i in 0..1500usize {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let url = &urls[i % urls.len()];
            let out = Command::new("ip")
                .args(["netns", "exec", &netns, "curl", "-sf", "-m", "3", url])
                .output();
            match out {
                Ok(o) if o.status.success() && o.stdout.starts_with(expect.as_bytes()) => {
                    answered += 1
                }
                Ok(o) => failures.push(format!(
                    "{url}: {} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout)
                )),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
            thread::sleep(Duration::from_millis(100));
        }
        (answered, failures)
    })
}

/// A TCP client in node namespace `node`, talking line by line to `addr`.
pub struct LineClient {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl LineClient {
    /// Connects from `node`'s namespace (python3 sockets, 10 s timeouts).
    pub fn connect(node: &str, ip: &str, port: u16) -> LineClient {
        // Retries the connect for a while: the proxies program a new
        // Service shortly after its endpoints appear.
        const SCRIPT: &str = "import socket, sys, time\n\
            for attempt in range(60):\n\
            \x20   try:\n\
            \x20       s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n\
            \x20       break\n\
            \x20   except OSError as e:\n\
            \x20       error = e\n\
            \x20       time.sleep(0.5)\n\
            else:\n\
            \x20   print('connect failed:', error, flush=True)\n\
            \x20   sys.exit(1)\n\
            print('connected', flush=True)\n\
            for line in sys.stdin:\n\
            \x20   s.sendall(line.encode())\n\
            \x20   data = b''\n\
            \x20   while not data.endswith(b'\\n'):\n\
            \x20       chunk = s.recv(100)\n\
            \x20       if not chunk:\n\
            \x20           print('closed', flush=True)\n\
            \x20           sys.exit(1)\n\
            \x20       data += chunk\n\
            \x20   print(data.decode().strip(), flush=True)\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", node, "python3", "-c", SCRIPT, ip])
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the python client");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = LineClient { child, lines };
        assert_eq!(client.next_line(Duration::from_secs(60)), "connected");
        client
    }

    fn next_line(&mut self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|_| "<no answer>".into())
    }

    /// Sends `text` and returns the echoed line.
    pub fn round_trip(&mut self, text: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the python client");
        self.next_line(Duration::from_secs(15))
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
