//! `skiff down`: removes the cluster `skiff up` recorded in `DIR/up.state`.
//! A running `skiff up` is asked to stop (SIGTERM) and tears down itself;
//! when it is gone (crashed, killed), everything recorded is removed here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::up;

/// How long a running `skiff up` gets to tear down by itself.
const UP_EXIT_TIMEOUT: Duration = Duration::from_secs(90);

/// Arguments of `skiff down`.
#[derive(clap::Args)]
pub struct Args {
    /// The `--data-dir` the cluster was started with.
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
}

pub async fn run(args: Args) -> Result<()> {
    let dir = match args.data_dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "skiff down: {} does not exist; nothing to do",
                args.data_dir.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("{}", args.data_dir.display())),
    };
    let Some(state) = up::State::load(&dir)? else {
        println!(
            "skiff down: no cluster recorded in {} (no up.state); nothing to do",
            dir.display()
        );
        return Ok(());
    };
    if up::is_running(&state) {
        println!("skiff down: asking skiff up (pid {}) to stop", state.up_pid);
        if let Ok(pid) = i32::try_from(state.up_pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let waited = tokio::task::spawn_blocking({
            let state = state.clone();
            move || up::wait_stopped(&state, UP_EXIT_TIMEOUT)
        })
        .await?;
        if waited && up::State::load(&dir)?.is_none() {
            println!("skiff down: the cluster in {} is gone", dir.display());
            return Ok(());
        }
    }
    // skiff up is gone (or gave up): remove what it recorded from here.
    let Some(state) = up::State::load(&dir)? else {
        return Ok(());
    };
    let problems = tokio::task::spawn_blocking({
        let state = state.clone();
        move || up::teardown(&state)
    })
    .await?;
    if !problems.is_empty() {
        bail!(
            "could not remove everything (run skiff down again):\n  {}",
            problems.join("\n  ")
        );
    }
    state.remove()?;
    println!("skiff down: the cluster in {} is gone", dir.display());
    Ok(())
}
