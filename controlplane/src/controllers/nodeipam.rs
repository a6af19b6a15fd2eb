//! The nodeipam controller (in progress).

use std::sync::Arc;

use super::Context;

/// Runs the controller until the process ends.
pub async fn run(_ctx: Arc<Context>) {}
