//! Delegated IPAM: when `ipam.type` names another plugin (e.g. the reference
//! `host-local`), it is found in `CNI_PATH` and executed per the spec — same
//! `CNI_*` environment, the same network config on stdin, the result on
//! stdout — from inside the node namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::netns::{Netns, NetnsError};
use crate::Attachment;

/// Errors running a delegated plugin.
#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    /// The plugin is not in any `CNI_PATH` directory.
    #[error("IPAM plugin {plugin:?} was not found in CNI_PATH ({path}); install it there or use \"ipam\": {{\"type\": \"skiff\"}}")]
    NotFound {
        /// The plugin name.
        plugin: String,
        /// The searched directories.
        path: String,
    },
    /// Entering the node namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The plugin could not be started.
    #[error("starting IPAM plugin {path} failed")]
    Spawn {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The plugin returned a CNI error.
    #[error("IPAM plugin {plugin} failed with code {code}: {msg}")]
    Failed {
        /// The plugin name.
        plugin: String,
        /// Its error code.
        code: i64,
        /// Its message (and details).
        msg: String,
    },
    /// The plugin printed something that is not JSON.
    #[error("IPAM plugin {plugin} printed output that is not JSON: {output:?}")]
    BadOutput {
        /// The plugin name.
        plugin: String,
        /// What it printed (truncated).
        output: String,
    },
}

/// Finds `plugin` in `cni_path`.
pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf, DelegateError> {
    cni_path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| DelegateError::NotFound {
            plugin: plugin.to_string(),
            path: cni_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Runs `plugin` with `command`; returns its parsed stdout (`None` if empty).
pub fn exec(
    node: &Netns,
    plugin: &str,
    command: &str,
    att: &Attachment,
    stdin: &[u8],
) -> Result<Option<Value>, DelegateError> {
    let bin = find(plugin, &att.cni_path)?;
    let out = node.run(|| run(&bin, command, att, stdin))?;
    let out = out.map_err(|source| DelegateError::Spawn {
        path: bin.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        Some(
            serde_json::from_str(&text).map_err(|_| DelegateError::BadOutput {
                plugin: plugin.to_string(),
                output: text.chars().take(200).collect(),
            })?,
        )
    };
    if !out.status.success() {
        let (code, msg) = match &parsed {
            Some(v) => (
                v.get("code").and_then(Value::as_i64).unwrap_or(-1),
                [v.get("msg"), v.get("details")]
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(": "),
            ),
            None => (-1, String::from_utf8_lossy(&out.stderr).trim().to_string()),
        };
        return Err(DelegateError::Failed {
            plugin: plugin.to_string(),
            code,
            msg,
        });
    }
    Ok(parsed)
}

fn run(
    bin: &Path,
    command: &str,
    att: &Attachment,
    stdin: &[u8],
) -> std::io::Result<std::process::Output> {
    let path = std::env::join_paths(&att.cni_path).unwrap_or_default();
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", att.netns.as_deref().unwrap_or(Path::new("")))
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_ARGS", &att.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)?;
    }
    child.wait_with_output()
}
