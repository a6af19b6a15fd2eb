//! One run of the `skiff-cni` binary: read `CNI_*` from the environment and
//! the network config from stdin, run the command, and produce what the spec
//! wants on stdout — a result, nothing, or an error object — plus the exit
//! status. Kept apart from `main` so tests can drive it without a process.

use std::path::PathBuf;

use serde_json::json;

use crate::config::{peek_version, NetConf};
use crate::errors::{CniError, Code};
use crate::netns::Netns;
use crate::plugin::Attachment;
use crate::version::{CniVersion, SUPPORTED};
use crate::{check, gc, plugin};

/// What the binary prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (may be empty).
    pub stdout: String,
    /// Whether to exit 0.
    pub success: bool,
}

/// `CNI_ARGS` keys skiff understands; others need `IgnoreUnknown=1`.
const KNOWN_ARGS: [&str; 6] = [
    "IgnoreUnknown",
    "IP",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Runs one CNI command described by `env` (a `CNI_*` lookup) and `stdin`,
/// with the node side in `node`.
pub async fn invoke(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], node: &Netns) -> Outcome {
    match invoke_blocking(env, stdin, node) {
        Ok(done) => done,
        Err(pending) => pending.run(node).await,
    }
}

/// Runs the command if it needs no async runtime — VERSION, ADD, and any
/// command that fails before it starts — else hands it back to be run by
/// [`Pending::run`]. The plugin binary starts a runtime only for the latter.
pub fn invoke_blocking(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    node: &Netns,
) -> Result<Outcome, Pending> {
    let version = peek_version(stdin)
        .filter(|v| CniVersion::parse(v).is_ok())
        .unwrap_or_else(|| CniVersion::V1_1_0.as_str().to_string());
    let step = match prepare(env, stdin) {
        Ok(Step::Add(conf, att)) => {
            plugin::add_blocking(&conf, &att, node).map(|r| r.to_json(conf.cni_version).to_string())
        }
        Ok(Step::Version(reply)) => Ok(reply),
        Ok(step) => {
            return Err(Pending {
                version,
                step: Box::new(step),
            })
        }
        Err(e) => Err(e),
    };
    Ok(outcome(step, &version))
}

/// A parsed command that needs the async runtime (DEL, CHECK, STATUS, GC).
pub struct Pending {
    version: String,
    step: Box<Step>,
}

impl Pending {
    /// Runs the command.
    pub async fn run(self, node: &Netns) -> Outcome {
        let r = match *self.step {
            Step::Version(reply) => Ok(reply),
            Step::Add(conf, att) => plugin::add(&conf, &att, node)
                .await
                .map(|r| r.to_json(conf.cni_version).to_string()),
            Step::Del(conf, att) => plugin::del(&conf, &att, node).await.map(|()| String::new()),
            Step::Check(conf, att) => check::check(&conf, &att, node)
                .await
                .map(|()| String::new()),
            Step::Status(conf, path) => {
                gc::status(&conf, node, &path).await.map(|()| String::new())
            }
            Step::Gc(conf, path) => gc::gc(&conf, node, &path).await.map(|_| String::new()),
        };
        outcome(r, &self.version)
    }
}

fn outcome(r: Result<String, CniError>, version: &str) -> Outcome {
    match r {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => Outcome {
            stdout: e.to_json(version).to_string(),
            success: false,
        },
    }
}

/// A validated command with what it needs.
enum Step {
    Version(String),
    Add(NetConf, Attachment),
    Del(NetConf, Attachment),
    Check(NetConf, Attachment),
    Status(NetConf, Vec<PathBuf>),
    Gc(NetConf, Vec<PathBuf>),
}

fn prepare(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Step, CniError> {
    let command = env("CNI_COMMAND").filter(|c| !c.is_empty()).ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            "CNI_COMMAND is not set: skiff-cni is a CNI plugin, run it from a container runtime (ADD, DEL, CHECK, STATUS, GC or VERSION)",
        )
    })?;
    if command == "VERSION" {
        return Ok(Step::Version(version_reply(stdin)));
    }
    let known = ["ADD", "DEL", "CHECK", "STATUS", "GC"];
    if !known.contains(&command.as_str()) {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_COMMAND {command:?} is unknown; use one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    Ok(match command.as_str() {
        "STATUS" => Step::Status(conf, cni_path(env)),
        "GC" => Step::Gc(conf, cni_path(env)),
        "ADD" => Step::Add(conf, attachment(env, &command)?),
        "DEL" => Step::Del(conf, attachment(env, &command)?),
        _ => Step::Check(conf, attachment(env, &command)?),
    })
}

fn version_reply(stdin: &[u8]) -> String {
    let asked = peek_version(stdin)
        .filter(|v| CniVersion::parse(v).is_ok())
        .unwrap_or_else(|| CniVersion::V1_1_0.as_str().to_string());
    json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
    .to_string()
}

fn required(
    env: &dyn Fn(&str) -> Option<String>,
    key: &str,
    command: &str,
) -> Result<String, CniError> {
    env(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            format!("{key} is required for {command} but is not set"),
        )
    })
}

fn cni_path(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    env("CNI_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn attachment(env: &dyn Fn(&str) -> Option<String>, command: &str) -> Result<Attachment, CniError> {
    let container_id = required(env, "CNI_CONTAINERID", command)?;
    let ifname = required(env, "CNI_IFNAME", command)?;
    let netns = if command == "DEL" {
        env("CNI_NETNS").filter(|v| !v.is_empty())
    } else {
        Some(required(env, "CNI_NETNS", command)?)
    };
    let args = env("CNI_ARGS").unwrap_or_default();
    check_args(&args)?;
    let cni_path = cni_path(env);
    let att = Attachment {
        container_id,
        ifname,
        netns: netns.map(PathBuf::from),
        args,
        cni_path,
    };
    att.validate(command != "DEL")?;
    Ok(att)
}

/// Validates `CNI_ARGS` (`K=V;K=V`): well-formed, and only known keys unless
/// `IgnoreUnknown` is set.
pub fn check_args(args: &str) -> Result<(), CniError> {
    let mut pairs = Vec::new();
    for part in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_ARGS entry {part:?} is not KEY=VALUE"),
            )
        })?;
        pairs.push((k, v));
    }
    let ignore = pairs.iter().any(|(k, v)| {
        *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    if !ignore {
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !KNOWN_ARGS.contains(k)) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_ARGS key {k:?} is unknown to skiff-cni; add IgnoreUnknown=1 to pass it anyway"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(invoke(&env, stdin.as_bytes(), &Netns::current()))
    }

    fn code(o: &Outcome) -> i64 {
        serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["code"]
            .as_i64()
            .unwrap()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"skiff","ipam":{"type":"skiff","ranges":[[{"subnet":"10.9.0.0/24"}]],"dataDir":"/nonexistent"}}"#;

    #[test]
    fn version_lists_every_supported_version() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert!(o.success);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn environment_errors_are_code_4() {
        assert_eq!(code(&run_with(&[], CONF)), 4);
        assert_eq!(code(&run_with(&[("CNI_COMMAND", "FROB")], CONF)), 4);
        let o = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ],
            CONF,
        );
        assert_eq!(code(&o), 4);
        assert!(o.stdout.contains("CNI_NETNS"), "{}", o.stdout);
        let o = run_with(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "bad/id"),
                ("CNI_IFNAME", "eth0"),
            ],
            CONF,
        );
        assert_eq!(code(&o), 4);
    }

    #[test]
    fn error_objects_carry_the_config_version() {
        let o = run_with(&[("CNI_COMMAND", "ADD")], "{oops");
        assert_eq!(code(&o), 6);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let o = run_with(&[("CNI_COMMAND", "STATUS")], CONF);
        assert_eq!(code(&o), 1, "STATUS on a 1.0.0 config: {}", o.stdout);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn cni_args_rules() {
        assert!(check_args("").is_ok());
        assert!(check_args("K8S_POD_NAME=a;K8S_POD_NAMESPACE=b").is_ok());
        assert!(check_args("FOO=1").is_err());
        assert!(check_args("FOO=1;IgnoreUnknown=1").is_ok());
        assert!(check_args("FOO").is_err());
    }
}
