//! `kubectl exec` end to end: kubectl → `skiff server` (pods/exec) → the
//! node agent's `/exec` → `runc exec` in the container, over the websocket
//! channel protocol (`v5.channel.k8s.io`).

mod agent_support;
mod common;

use std::process::{Command, Output};
use std::time::Duration;

use agent_support::{wait_running, AgentNode, BUSYBOX};
use common::http::{Auth, Request};
use common::{process, repo_root, StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("sx{}-{test}", std::process::id() % 10_000)
}

/// A pod with two containers that differ in their `WHO` variable.
fn two_container_pod(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: first
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    env: [{{name: WHO, value: first-container}}]
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
  - name: second
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    env: [{{name: WHO, value: second-container}}]
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
    )
}

/// Runs kubectl under `script`, which gives it a terminal of 45 rows and 123
/// columns, feeding `input` to that terminal.
fn kubectl_in_terminal(server: &TestServer, args: &[&str], input: &str) -> Output {
    let cmd = server.kubectl_command(args);
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect();
    let mut script = Command::new("script");
    script.current_dir(repo_root()).args([
        "-qec",
        &format!("stty cols 123 rows 45; {}", line.join(" ")),
        "/dev/null",
    ]);
    process::run(script, Some(input.as_bytes()), Duration::from_secs(60))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_streams_output_exit_code_stdin_and_picks_containers() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("exec"));
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &two_container_pod("duo"));
    wait_running(&server, "duo");

    // stdout and stderr arrive on their own streams; the exit code is kubectl's.
    let out = server.kubectl(&[
        "exec",
        "duo",
        "-c",
        "first",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(text(&out.stdout), "out\n", "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // -c picks the container: each sees its own environment.
    let second = server.kubectl_ok(&["exec", "duo", "-c", "second", "--", "sh", "-c", "echo $WHO"]);
    assert_eq!(second.trim(), "second-container");
    let first = server.kubectl_ok(&["exec", "duo", "-c", "first", "--", "sh", "-c", "echo $WHO"]);
    assert_eq!(first.trim(), "first-container");
    // Without -c kubectl defaults to the first container.
    let default = server.kubectl_ok(&["exec", "duo", "--", "sh", "-c", "echo $WHO"]);
    assert_eq!(default.trim(), "first-container");

    // stdin is passed through and its end reaches the process (cat exits).
    let input = "line one\nline two\n";
    let echoed =
        server.kubectl_stdin_ok(&["exec", "-i", "duo", "-c", "second", "--", "cat"], input);
    assert_eq!(echoed, input);
    let counted = server.kubectl_stdin_ok(
        &["exec", "-i", "duo", "--", "sh", "-c", "wc -l; echo done"],
        "a\nb\nc\n",
    );
    assert_eq!(
        counted.split_whitespace().collect::<Vec<_>>(),
        ["3", "done"]
    );

    // The exec runs in the pod's network and filesystem, not the node's.
    let hostname = server.kubectl_ok(&["exec", "duo", "--", "hostname"]);
    assert_eq!(hostname.trim(), "duo");

    // The official Python client (its own websocket code) gets the same.
    let py = common::expect_success(
        "exec_scenario.py",
        server.python("exec_scenario.py", &["duo", "second"]),
    );
    assert!(py.contains("exec_scenario ok"), "{py}");

    // Output larger than one websocket message arrives complete.
    let big = server.kubectl_ok(&["exec", "duo", "--", "sh", "-c", "seq 1 20000"]);
    assert_eq!(big.lines().count(), 20000);
    assert_eq!(big.lines().last(), Some("20000"));
}

#[test]
fn exec_errors_name_what_is_missing() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("err"));
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &two_container_pod("solo"));
    wait_running(&server, "solo");

    let err = server.kubectl_fails(&["exec", "nosuch", "--", "true"]);
    assert!(err.contains(r#"pods "nosuch" not found"#), "{err}");

    let err = server.kubectl_fails(&["exec", "solo", "-c", "third", "--", "true"]);
    assert!(err.contains("third"), "{err}");

    // A command that does not exist in the image fails with a non-zero code.
    let out = server.kubectl(&["exec", "solo", "--", "/no/such/binary"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such file or directory")
            || text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // Without a token the API server refuses the exec.
    let resp = server.send(Request {
        method: "GET",
        path: "/api/v1/namespaces/default/pods/solo/exec?command=true&stdout=true",
        content_type: None,
        body: None,
        auth: Auth::None,
    });
    assert_eq!(resp.status, 401, "{}", resp.body);
    // A plain request (no upgrade) gets a Status saying what is needed.
    let resp = server.get("/api/v1/namespaces/default/pods/solo/exec?command=true&stdout=true");
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(
        resp.body.contains("Upgrade request required"),
        "{}",
        resp.body
    );
}

#[test]
fn exec_with_a_terminal() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("tty"));
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &two_container_pod("term"));
    wait_running(&server, "term");

    // -it: the process gets a terminal sized like kubectl's own, from its
    // first instruction on and still after runc settled.
    let out = kubectl_in_terminal(
        &server,
        &[
            "exec",
            "-it",
            "term",
            "--",
            "sh",
            "-c",
            "tty; stty size; sleep 1; stty size",
        ],
        "",
    );
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert_eq!(shown.matches("45 123").count(), 2, "{shown}");

    // -it: an interactive shell reads what is typed and its exit code comes back.
    let out = kubectl_in_terminal(
        &server,
        &["exec", "-it", "term", "-c", "second", "--", "sh"],
        "echo sum=$((6*7)) $WHO\nexit 5\n",
    );
    let shown = text(&out.stdout);
    assert!(shown.contains("sum=42 second-container"), "{shown}");
    assert_eq!(out.status.code(), Some(5), "{shown}");
}
