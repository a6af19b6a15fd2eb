//! The controllers' own runtime: the scheduler and the controllers run on
//! worker threads of their own, not on the threads that serve clients.
//!
//! Upstream runs kube-scheduler and kube-controller-manager as processes of
//! their own. Here they share the server's process. On one runtime, the
//! work a create triggers (the scheduler's status patch or binding, its
//! Event, the controllers' cache updates) ran on the same two worker
//! threads as the next request, and tokio does not preempt a task: the
//! request waited in the run queue until that work yielded. On threads of
//! their own, the kernel's scheduler shares the cores between the two
//! preemptively. The requests the controllers make go through the
//! in-process client, which serves each on a task spawned on the caller's
//! runtime, so their handling runs on these threads too; only the commit is
//! shared (the store's one writer thread).
//!
//! Measured with `apiserver-bench --pods 3000 --serial-creates 3000`
//! (creates from one client, every pod triggering the scheduler's status
//! patch and Event): p99 create latency 3.6–4.0 ms against 5.6–5.8 ms on
//! one runtime, p50 1.8 against 2.4 ms.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// A runtime for the controllers. Dropping it stops them without waiting.
pub struct ControllerRuntime {
    runtime: Option<Runtime>,
}

impl ControllerRuntime {
    /// Starts the worker threads (as many as the machine has cores).
    pub fn new() -> io::Result<ControllerRuntime> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("skiff-controllers")
            .enable_all()
            .build()?;
        Ok(ControllerRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `start` (which spawns the controllers) inside this runtime, so
    /// that everything it spawns, directly or later, lands here.
    pub fn enter<T>(&self, start: impl FnOnce() -> T) -> T {
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        let _entered = runtime.enter();
        start()
    }
}

impl Drop for ControllerRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which must not
        // happen on a thread of another runtime (the server's).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
