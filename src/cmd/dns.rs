//! `skiff dns`.

use anyhow::{bail, Result};

/// Arguments of `skiff dns`.
#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    bail!("`skiff dns` is not implemented yet (tracked in issue 8)")
}
