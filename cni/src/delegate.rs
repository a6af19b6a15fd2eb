//! Delegated IPAM: when `ipam.type` names another plugin (e.g. the reference
//! `host-local`), it is found in `CNI_PATH` and executed per the spec — same
//! `CNI_*` environment, the same network config on stdin, the result on
//! stdout — from inside the node namespace.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::errors::{from_err, CniError, Code};
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
    /// The plugin does not speak the spec version a command needs.
    #[error("IPAM plugin {plugin} supports CNI versions {versions} but {command} needs 1.1.0; upgrade it (containernetworking-plugins 1.5 or later implements GC and STATUS) or use \"ipam\": {{\"type\": \"skiff\"}}")]
    TooOld {
        /// The plugin name.
        plugin: String,
        /// The command.
        command: String,
        /// What its VERSION reported.
        versions: String,
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

impl DelegateError {
    /// The CNI error a runtime sees: a delegate's well-known spec code (1–99,
    /// e.g. 1 when it does not speak the config's version, 11 try again,
    /// 50/51 from STATUS) is kept, with skiff's message naming the plugin;
    /// its own codes (100+) and every other failure are 104.
    pub fn to_cni(&self) -> CniError {
        let code = match self {
            DelegateError::Failed { code, .. } => Code::from_spec(*code).unwrap_or(Code::Delegate),
            _ => Code::Delegate,
        };
        from_err(code, self)
    }
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
    let netns = att.netns.clone().unwrap_or_default().into_os_string();
    let env = vec![
        ("CNI_CONTAINERID", att.container_id.clone().into()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", att.ifname.clone().into()),
        ("CNI_ARGS", att.args.clone().into()),
    ];
    exec_with(node, plugin, command, &att.cni_path, env, stdin)
}

/// Runs a network-level command (GC, STATUS) of `plugin`: per the spec only
/// `CNI_COMMAND` and `CNI_PATH` are set, and the config goes on stdin. A
/// plugin whose VERSION does not list 1.1.0 is refused with a clear error
/// instead of being sent a command it does not know.
pub fn exec_network(
    node: &Netns,
    plugin: &str,
    command: &str,
    cni_path: &[PathBuf],
    stdin: &[u8],
) -> Result<Option<Value>, DelegateError> {
    let asked = br#"{"cniVersion":"1.1.0"}"#;
    let versions = exec_with(node, plugin, "VERSION", cni_path, Vec::new(), asked)?
        .and_then(|v| v.get("supportedVersions").cloned())
        .unwrap_or(Value::Null);
    let speaks_1_1 = versions
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v == "1.1.0"));
    if !speaks_1_1 {
        return Err(DelegateError::TooOld {
            plugin: plugin.to_string(),
            command: command.to_string(),
            versions: versions.to_string(),
        });
    }
    exec_with(node, plugin, command, cni_path, Vec::new(), stdin)
}

fn exec_with(
    node: &Netns,
    plugin: &str,
    command: &str,
    cni_path: &[PathBuf],
    env: Vec<(&str, OsString)>,
    stdin: &[u8],
) -> Result<Option<Value>, DelegateError> {
    let bin = find(plugin, cni_path)?;
    let out = node.run(|| run(&bin, command, cni_path, &env, stdin))?;
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
    cni_path: &[PathBuf],
    env: &[(&str, OsString)],
    stdin: &[u8],
) -> std::io::Result<std::process::Output> {
    let path = std::env::join_paths(cni_path).unwrap_or_default();
    let mut cmd = Command::new(bin);
    cmd.env_remove("CNI_CONTAINERID")
        .env_remove("CNI_NETNS")
        .env_remove("CNI_IFNAME")
        .env_remove("CNI_ARGS")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)?;
    }
    child.wait_with_output()
}
