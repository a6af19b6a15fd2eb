//! `skiff up`.

use anyhow::{bail, Result};

/// Arguments of `skiff up`.
#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<()> {
    bail!("`skiff up` is not implemented yet (tracked in issue 9)")
}
