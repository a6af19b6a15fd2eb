//! Supervising the cluster's processes once they run: a server or agent that
//! exits is started again (after a pause growing with its restarts, its new
//! PID recorded in `up.state`) until Ctrl-C or SIGTERM. While the cluster is
//! still starting, an exit is an error instead.

use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Result};

use super::processes::{self, Spec};
use super::state::UpState;

/// A supervised child process and how to start it again.
pub struct Supervised {
    pub spec: Spec,
    pub child: Child,
    /// Index into `state.nodes`, or `None` for the server.
    pub node: Option<usize>,
    pub restarts: u32,
}

/// Fails with the log tail of a child that exited while the cluster starts.
pub fn check_children(children: &mut [Supervised]) -> Result<()> {
    for c in children.iter_mut() {
        if let Some(status) = c.child.try_wait()? {
            bail!(
                "{} exited with {status} while the cluster was starting; {}:\n{}",
                c.spec.name,
                c.spec.log.display(),
                processes::log_tail(&c.spec.log, 30)
            );
        }
    }
    Ok(())
}

/// Restarts a server or agent that exits (after a pause growing with its
/// restarts) until Ctrl-C or SIGTERM.
pub async fn supervise(state: &mut UpState, children: &mut [Supervised]) -> Result<()> {
    let signal = crate::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for c in children.iter_mut() {
            let Some(status) = c.child.try_wait()? else {
                continue;
            };
            c.restarts += 1;
            let pause = Duration::from_secs(u64::from(c.restarts.min(10)));
            eprintln!(
                "skiff up: {} exited with {status}; restarting it in {pause:?} (log {})",
                c.spec.name,
                c.spec.log.display()
            );
            tokio::select! {
                _ = &mut signal => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
            c.child = c.spec.spawn()?;
            let pid = Some(c.child.id());
            match c.node {
                Some(i) => state.nodes[i].agent_pid = pid,
                None => state.server_pid = pid,
            }
            state.save()?;
        }
    }
}
