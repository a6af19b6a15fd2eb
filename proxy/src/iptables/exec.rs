//! Running `iptables-restore` / `iptables-save` / `iptables` in the proxy's
//! network namespace: the command is spawned from a short-lived thread that
//! entered the namespace (skiff-cni's [`Netns::run`]), so the proxy process
//! itself never leaves the namespace it started in.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use skiff_cni::Netns;

use super::backend::Backend;
use super::rules::Family;

/// How many copies of one jump rule cleanup removes at most.
const MAX_DUPLICATES: usize = 16;

/// Errors running the iptables tools.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The namespace could not be entered.
    #[error("entering the proxy's network namespace: {0}")]
    Netns(#[from] skiff_cni::netns::NetnsError),
    /// The program could not be started.
    #[error("running {program} failed; is the iptables package installed?")]
    Spawn {
        /// Which program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with an error.
    #[error("{program} {args} exited with {status}: {stderr}")]
    Failed {
        /// Which program.
        program: String,
        /// Its arguments.
        args: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// How long the tools wait for the xtables lock (it is shared by
/// every namespace, and a large legacy restore holds it for seconds).
const LOCK_WAIT_SECS: &str = "30";

/// The iptables tools of one family and implementation, run in one namespace.
pub struct Tools<'a> {
    /// Where to run.
    pub netns: &'a Netns,
    /// Which family.
    pub family: Family,
    /// Which implementation (`iptables-legacy*` or `iptables-nft*`).
    pub backend: Backend,
}

impl Tools<'_> {
    /// `base` is `iptables`, `iptables-save` or `iptables-restore`.
    fn program(&self, base: &str) -> String {
        let family = match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let suffix = base.strip_prefix("iptables").unwrap_or(base);
        format!("{family}-{}{suffix}", self.backend.as_str())
    }

    fn run(&self, base: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, ExecError> {
        let program = self.program(base);
        let out = self.netns.run(|| {
            let mut child = Command::new(&program)
                .args(args)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A tool that stops reading has failed; its exit status and
                // stderr below say why, not the broken pipe.
                if let Err(e) = pipe.write_all(data) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(e);
                    }
                }
            }
            child.wait_with_output()
        })?;
        out.map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })
    }

    fn checked(
        &self,
        base: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, ExecError> {
        let out = self.run(base, args, stdin)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                program: self.program(base),
                args: args.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Applies a transaction with `iptables-restore --noflush`.
    pub fn restore(&self, input: &str) -> Result<(), ExecError> {
        self.checked(
            "iptables-restore",
            &["-w", LOCK_WAIT_SECS, "--noflush"],
            Some(input.as_bytes()),
        )
        .map(drop)
    }

    /// `iptables-save -t <table>`.
    pub fn save(&self, table: &str) -> Result<String, ExecError> {
        let out = self.checked("iptables-save", &["-t", table], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Deletes `rule` from `chain` of `table` if it is there.
    pub fn remove_jump(&self, table: &str, chain: &str, rule: &[&str]) -> Result<(), ExecError> {
        let mut delete = vec!["-w", LOCK_WAIT_SECS, "-t", table, "-D", chain];
        delete.extend_from_slice(rule);
        // A rule inserted more than once (by hand, or a crashed older run) goes too.
        for _ in 0..MAX_DUPLICATES {
            if !self.run("iptables", &delete, None)?.status.success() {
                break;
            }
        }
        Ok(())
    }
}
