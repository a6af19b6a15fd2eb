//! `runc` with the agent's own `--root`, so agents (and tests) on one machine
//! never see each other's containers. Creation goes through the shim
//! ([`super::shim`]); everything else is a plain runc command.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

/// Errors of runc commands.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// runc could not be started.
    #[error("running runc {args}: {source}; is runc installed (apt-get install runc)?")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    /// runc answered with an error.
    #[error("runc {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    /// runc printed something we cannot read.
    #[error("runc {args} printed unreadable JSON: {source}")]
    Parse {
        args: String,
        #[source]
        source: serde_json::Error,
    },
    /// The command did not finish in time.
    #[error("runc {args} did not finish within {timeout:?}")]
    Timeout { args: String, timeout: Duration },
}

/// `runc state` / `runc list` output for one container.
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    #[serde(default)]
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// A runc binary with its state root.
#[derive(Debug, Clone)]
pub struct Runc {
    bin: PathBuf,
    root: PathBuf,
}

/// Output of `runc exec`.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub output: String,
}

impl Runc {
    /// runc from `PATH` with state under `root`.
    pub fn new(root: PathBuf) -> Runc {
        Runc {
            bin: PathBuf::from("runc"),
            root,
        }
    }

    /// The state root (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `runc create` command line the shim runs.
    pub fn create_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Vec<String> {
        vec![
            self.bin.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "create".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            id.into(),
        ]
    }

    async fn run(&self, args: &[&str], timeout: Duration) -> Result<Vec<u8>, RuncError> {
        let label = args.join(" ");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| RuncError::Timeout {
                args: label.clone(),
                timeout,
            })?
            .map_err(|source| RuncError::Spawn {
                args: label.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuncError::Failed {
                args: label,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// `runc start`.
    pub async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.run(&["start", id], Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// `runc kill [--all] id SIGNAL`.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuncError> {
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, signal]);
        self.run(&args, Duration::from_secs(10)).await.map(drop)
    }

    /// `runc delete --force id`; a container that is already gone is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        match self
            .run(&["delete", "--force", id], Duration::from_secs(30))
            .await
        {
            Err(RuncError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    /// `runc state id`; `None` when runc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<State>, RuncError> {
        match self.run(&["state", id], Duration::from_secs(10)).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| RuncError::Parse {
                    args: format!("state {id}"),
                    source,
                }),
            Err(RuncError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `runc list`: every container under our root.
    pub async fn list(&self) -> Result<Vec<State>, RuncError> {
        let out = self
            .run(&["list", "--format", "json"], Duration::from_secs(10))
            .await?;
        if out.iter().all(u8::is_ascii_whitespace) || out.starts_with(b"null") {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&out).map_err(|source| RuncError::Parse {
            args: "list".into(),
            source,
        })
    }

    /// The `runc exec` command of an interactive exec (`kubectl exec`) in
    /// container `id`, running `process` (an OCI process, see
    /// [`Runc::exec_process`]); the caller wires up stdio. runc writes the
    /// process's host PID to `pid_file`. With a terminal (`process.terminal`)
    /// runc copies between it and its own stdio, which should then be a
    /// terminal too (runc takes its window size on SIGWINCH).
    pub fn exec_command(&self, id: &str, process: &Path, pid_file: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("exec")
            .arg("--process")
            .arg(process)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .kill_on_drop(true);
        cmd
    }

    /// The OCI process for running `command` in container `id`: the
    /// container's own process (user, env, cwd, capabilities) with `command`
    /// as args and, with `terminal`, a terminal of `size` (columns, rows) so
    /// the process sees the right size from its first instruction.
    pub async fn exec_process(
        &self,
        id: &str,
        command: &[String],
        terminal: bool,
        size: Option<(u16, u16)>,
    ) -> Result<serde_json::Value, RuncError> {
        let label = format!("exec {id}");
        let state = self.state(id).await?.ok_or_else(|| RuncError::Failed {
            args: label.clone(),
            stderr: format!("container {id} does not exist"),
        })?;
        let config =
            std::fs::read(state.bundle.join("config.json")).map_err(|e| RuncError::Failed {
                args: label.clone(),
                stderr: format!("reading {}/config.json: {e}", state.bundle.display()),
            })?;
        let config: serde_json::Value =
            serde_json::from_slice(&config).map_err(|source| RuncError::Parse {
                args: label,
                source,
            })?;
        let mut process = config["process"].clone();
        process["args"] = serde_json::json!(command);
        process["terminal"] = serde_json::json!(terminal);
        match size.filter(|_| terminal) {
            Some((width, height)) => {
                process["consoleSize"] = serde_json::json!({"width": width, "height": height})
            }
            None => {
                if let Some(p) = process.as_object_mut() {
                    p.remove("consoleSize");
                }
            }
        }
        Ok(process)
    }

    /// `runc exec id cmd…` with a deadline; returns exit code and combined output.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuncError> {
        let label = format!("exec {id} {}", command.join(" "));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["exec", id])
            .args(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| RuncError::Timeout {
                args: label.clone(),
                timeout,
            })?
            .map_err(|source| RuncError::Spawn {
                args: label.clone(),
                source,
            })?;
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(ExecOutput {
            exit_code: out.status.code().unwrap_or(-1),
            output,
        })
    }
}
