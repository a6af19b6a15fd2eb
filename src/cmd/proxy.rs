//! `skiff proxy`.

use anyhow::{bail, Result};

/// Arguments of `skiff proxy`.
#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    bail!("`skiff proxy` is not implemented yet (tracked in issue 6)")
}
