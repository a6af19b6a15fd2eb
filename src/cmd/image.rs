//! `skiff image`.

use anyhow::{bail, Result};

/// Arguments of `skiff image`.
#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    bail!("`skiff image` is not implemented yet (tracked in issue 5)")
}
