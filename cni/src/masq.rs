//! The `ipMasq` rule: one `nat POSTROUTING` rule per pod address,
//! `-s <pod>/32 ! -o <bridge> ! -d <cluster CIDR> -j MASQUERADE`, tagged with the comment
//! `skiff/<network>/<container>/<ifname>` so the plugin can find exactly the
//! rules it owns. Rules are added with `iptables-restore --noflush` (one exec,
//! atomic) and removed by reading `iptables-save` and deleting the tagged lines
//! verbatim, which makes DEL and GC idempotent. Everything runs inside the
//! node namespace (see [`Netns::run`]).
//!
//! `! -o <bridge>` matters on nodes with `br_netfilter`: bridged pod-to-pod
//! frames then traverse `nat POSTROUTING` too, and IPv6 neighbour discovery
//! (to multicast, outside any cluster CIDR) would otherwise be masqueraded
//! and lost.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use crate::config::AttachmentId;
use crate::netns::{Netns, NetnsError};

/// Errors managing masquerade rules.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// Entering the node namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The iptables tools are missing.
    #[error("{tool} is not installed (looked in PATH, /usr/sbin, /sbin); install iptables or set ipMasq to false")]
    NotInstalled {
        /// The program looked for.
        tool: &'static str,
    },
    /// Running a tool failed.
    #[error("running {tool} failed")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

/// The comment tagging `id`'s rules in `network`.
pub fn comment(network: &str, id: &AttachmentId) -> String {
    format!("skiff/{network}/{}/{}", id.container_id, id.ifname)
}

fn tools(v4: bool) -> (&'static str, &'static str) {
    if v4 {
        ("iptables-save", "iptables-restore")
    } else {
        ("ip6tables-save", "ip6tables-restore")
    }
}

fn find(tool: &'static str) -> Result<PathBuf, MasqError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(MasqError::NotInstalled { tool })
}

fn run(
    node: &Netns,
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, MasqError> {
    let bin = find(tool)?;
    let out = node.run(|| -> std::io::Result<std::process::Output> {
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        child.wait_with_output()
    })?;
    let out = out.map_err(|source| MasqError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(MasqError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds the masquerade rule for each `(pod address, excluded destination)`
/// of a pod behind `bridge`.
pub fn add(
    node: &Netns,
    network: &str,
    bridge: &str,
    id: &AttachmentId,
    addrs: &[(IpNetwork, IpNetwork)],
) -> Result<(), MasqError> {
    let tag = comment(network, id);
    for v4 in [true, false] {
        let rules: Vec<String> = addrs
            .iter()
            .filter(|(a, _)| a.is_ipv4() == v4)
            .map(|(a, exclude)| {
                let host = if v4 { 32 } else { 128 };
                format!(
                    "-A POSTROUTING -s {}/{host} ! -o {bridge} ! -d {exclude} -m comment --comment {tag} -j MASQUERADE",
                    a.ip()
                )
            })
            .collect();
        if rules.is_empty() {
            continue;
        }
        let input = format!("*nat\n{}\nCOMMIT\n", rules.join("\n"));
        run(node, tools(v4).1, &["-w", "--noflush"], Some(&input))?;
    }
    Ok(())
}

/// A tagged rule found in `iptables-save` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedRule {
    /// Its owner.
    pub owner: AttachmentId,
    /// The rule as `iptables-save` printed it (`-A POSTROUTING …`).
    pub line: String,
}

/// Finds the rules tagged for `network` in `iptables-save -t nat` output.
pub fn parse_rules(network: &str, save: &str) -> Vec<TaggedRule> {
    let prefix = format!("skiff/{network}/");
    save.lines()
        .filter(|l| l.starts_with("-A POSTROUTING "))
        .filter_map(|l| {
            let (_, rest) = l.split_once("--comment ")?;
            let tag = rest.trim_start_matches('"').split(['"', ' ']).next()?;
            let owner = tag.strip_prefix(&prefix)?;
            let (cid, ifname) = owner.split_once('/')?;
            Some(TaggedRule {
                owner: AttachmentId {
                    container_id: cid.to_string(),
                    ifname: ifname.to_string(),
                },
                line: l.to_string(),
            })
        })
        .collect()
}

/// Lists `network`'s rules of both families.
pub fn list(node: &Netns, network: &str) -> Result<Vec<TaggedRule>, MasqError> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        let save = run(node, tools(v4).0, &["-t", "nat"], None)?;
        out.extend(parse_rules(network, &save));
    }
    Ok(out)
}

/// Removes `network`'s rules whose owner `doomed` selects; returns how many.
pub fn remove(
    node: &Netns,
    network: &str,
    doomed: impl Fn(&AttachmentId) -> bool,
) -> Result<usize, MasqError> {
    let mut removed = 0;
    for v4 in [true, false] {
        let (save_tool, restore_tool) = tools(v4);
        let save = run(node, save_tool, &["-t", "nat"], None)?;
        let mut seen = HashSet::new();
        let lines: Vec<String> = parse_rules(network, &save)
            .into_iter()
            .filter(|r| doomed(&r.owner) && seen.insert(r.line.clone()))
            .map(|r| format!("-D{}", &r.line[2..]))
            .collect();
        if lines.is_empty() {
            continue;
        }
        let input = format!("*nat\n{}\nCOMMIT\n", lines.join("\n"));
        run(node, restore_tool, &["-w", "--noflush"], Some(&input))?;
        removed += lines.len();
    }
    Ok(removed)
}

/// Whether the iptables tools for masquerading are installed.
pub fn available() -> bool {
    find("iptables-save").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_this_networks_tagged_rules() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n\
            -A POSTROUTING -s 10.0.0.5/32 ! -d 10.0.0.0/16 -m comment --comment skiff/n1/c1/eth0 -j MASQUERADE\n\
            -A POSTROUTING -s 10.0.0.6/32 ! -d 10.0.0.0/16 -m comment --comment \"skiff/n1/c2/eth0\" -j MASQUERADE\n\
            -A POSTROUTING -s 10.1.0.6/32 -m comment --comment skiff/n2/c3/eth0 -j MASQUERADE\n\
            -A POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n";
        let rules = parse_rules("n1", save);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].owner.container_id, "c1");
        assert_eq!(rules[1].owner.container_id, "c2");
        assert!(parse_rules("n", save).is_empty());
    }
}
