//! The scheduler (in progress).

use std::sync::Arc;

use crate::controllers::Context;

/// Runs the scheduler until the process ends.
pub async fn run(_ctx: Arc<Context>) {}
