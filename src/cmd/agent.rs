//! `skiff agent`.

use anyhow::{bail, Result};

/// Arguments of `skiff agent`.
#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    bail!("`skiff agent` is not implemented yet (tracked in issue 5)")
}
