//! Raw HTTPS requests to the API server through the `curl` binary, for tests
//! that check status codes and Status bodies exactly as a client sees them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process;

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// No Authorization header at all.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
}

/// A request to send with [`send`].
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub body: Option<&'a [u8]>,
    pub auth: Auth<'a>,
}

/// The status and body of a response; `status` is 0 when no response came
/// (connection refused or reset), with curl's complaint in `body`.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body as JSON; panics with the raw body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("response ({}) is not JSON: {e}\n{}", self.status, self.body)
        })
    }

    /// Panics unless this is a `Status` object with the given code and reason;
    /// returns the Status for further checks.
    pub fn expect_status(&self, code: u16, reason: &str) -> Value {
        assert_eq!(
            self.status, code,
            "expected HTTP {code} ({reason}), got {}: {}",
            self.status, self.body
        );
        let status = self.json();
        assert_eq!(
            status["kind"], "Status",
            "not a Status object: {}",
            self.body
        );
        assert_eq!(
            status["apiVersion"], "v1",
            "Status apiVersion: {}",
            self.body
        );
        assert_eq!(status["status"], "Failure", "Status.status: {}", self.body);
        assert_eq!(status["code"], code, "Status.code: {}", self.body);
        assert_eq!(status["reason"], reason, "Status.reason: {}", self.body);
        status
    }
}

/// Sends one request to `base` (e.g. `https://127.0.0.1:6443`), trusting only `ca`.
pub fn send(base: &str, ca: &Path, req: Request<'_>) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "60"])
        .arg("--cacert")
        .arg(ca)
        .args(["--request", req.method])
        // The status code goes on a line of its own after the body.
        .args(["--write-out", "\n%{http_code}"]);
    if let Auth::Bearer(token) = req.auth {
        cmd.arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    if let Some(content_type) = req.content_type {
        cmd.arg("--header")
            .arg(format!("Content-Type: {content_type}"));
    }
    if req.body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("{base}{}", req.path));
    let done = process::run(cmd, req.body, Duration::from_secs(90));
    let out = String::from_utf8_lossy(&done.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    let status = code.trim().parse().unwrap_or(0);
    if status == 0 {
        return Response {
            status,
            body: String::from_utf8_lossy(&done.stderr).into_owned(),
        };
    }
    Response {
        status,
        body: body.to_owned(),
    }
}
